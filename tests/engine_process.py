"""Test helpers: engine servers as real subprocesses (so kill -9 is real) and tiny test media."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from vse_style_shared.client import EngineClient, EngineUnavailable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TINY = {"iterations": 2, "first_iterations": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Engine:
    """``python -m engine_server serve`` on a loopback port, logging to a file."""

    def __init__(self, folder: Path, jobs_dir: Path | None = None, port: int | None = None, extra=()):
        self.folder = folder
        self.jobs_dir = jobs_dir or folder / "jobs"
        self.port = port or free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.extra = list(map(str, extra))
        self.log_path = folder / f"engine-{self.port}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True, client_args: dict | None = None) -> "Engine":
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine_server", "serve", "--bind", self.address, "--jobs-dir", str(self.jobs_dir),
             "--device", "cpu", "--log-level", "debug", *self.extra],
            cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_ready(client_args or {})
        return self

    def wait_ready(self, client_args: dict, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with EngineClient(self.address, timeout=0.5, **client_args) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"engine exited with {self.process.returncode}:\n{self.log}")
                try:
                    client.ping()
                    return
                except EngineUnavailable:
                    pass
        raise RuntimeError(f"engine did not answer within {timeout} s:\n{self.log}")

    def client(self, timeout: float = 10.0, **kwargs) -> EngineClient:
        return EngineClient(self.address, timeout=timeout, **kwargs)

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


class Engines:
    """Starts engines and always stops them (fixtures call close_all, also when a test fails)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: list[Engine] = []

    def start(self, name: str = "engine", **kwargs) -> Engine:
        client_args = kwargs.pop("client_args", None)
        engine = Engine(self.folder / name, **kwargs)
        self.started.append(engine)
        return engine.start(client_args=client_args)

    def close_all(self) -> None:
        for engine in self.started:
            engine.kill()


# -- media -----------------------------------------------------------------------------------------

def clip(count: int = 3, width: int = 36, height: int = 24, seed: int = 0) -> list[np.ndarray]:
    """A tiny moving texture: each frame the previous one shifted by a pixel."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width, 3)).astype(np.uint8)
    return [np.ascontiguousarray(np.roll(base, i, axis=1)) for i in range(count)]


def png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def decode(data) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def style_image(kind: int = 0) -> np.ndarray:
    img = np.zeros((24, 24, 3), np.uint8)
    if kind == 0:
        img[::3] = (240, 200, 40)
    else:
        img[:, ::4] = (30, 90, 220)
    return img


def tree_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its contents (to prove nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".lock"}
