"""Jobs on disk, so that they survive the engine: one folder per job in the jobs directory.

    JOBS/<id>/job.json                 spec, owner, state, error, timestamps, report (written atomically)
    JOBS/<id>/styles/01.png ...        the style images as the client sent them
    JOBS/<id>/input/frame_000001.png   uploaded frames (raw uploads are stored as PNG)
    JOBS/<id>/output/frame_000001.png  finished frames, each written atomically as soon as it is done
    JOBS/<id>/output/frame_000001.json that frame's seconds, iterations and losses (optional)

Every file is written under a temporary name and renamed, so a killed engine leaves either the old
file or the new one, never half of one. On start, :meth:`JobStore.scan` trusts nothing: a job.json
that does not parse or validate is skipped (and logged), a frame whose PNG header does not match the
job's size is not counted, temporary files and the folders of interrupted submits and deletes
(``.new-*``, ``.deleted-*``) are removed. The main thread owns job state; the worker only writes
output frames, the engine's I/O thread only input frames and deletions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vse_style_shared.protocol import JOB_STATES, Limits, ProtocolError, png_size, to_ranges, validate_job

from ..io.frames import encode_png, frame_filename, write_atomic

log = logging.getLogger(__name__)

DEFAULT_JOBS_DIR = str(Path.home() / ".local" / "state" / "vse-style" / "jobs")
FRAME_NAME = re.compile(r"^frame_(\d{6})\.png$")
STYLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Jobs written by an engine with larger limits must still load after a restart with smaller ones.
STORED_LIMITS = Limits(max_frames=10**7, max_side=10**6, max_styles=10**4, max_name_chars=10**4)


def token_owner(token: str) -> str:
    """The owner a client token stands for (PROTOCOL.md, Owners); only this hash is ever stored."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]


def _lock_exclusive(handle) -> None:
    """Non-blocking exclusive lock on an open file; OSError if another process holds it.
    POSIX flock, or msvcrt on Windows (where an editor may run the engine locally)."""
    if os.name == "nt":
        import msvcrt

        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


class JobsDirBusy(RuntimeError):
    """Another engine holds this jobs directory."""


@dataclass
class Job:
    id: str
    dir: Path
    spec: dict                      # the submit request's job map: frame_count, width, height, styles, weights...
    style_files: list[str]
    state: str = "uploading"
    error: dict | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    report: dict | None = None      # the engine's Stylizer.describe() once the job has started
    owner: str | None = None        # "token:<sha256>" or "key:<CURVE public key>"; None: a protocol 1 job
    unfinished_runs: int = 0        # runs the engine died in (not a clean shutdown): 2 and it fails
    received: set = field(default_factory=set)  # uploaded frame indices
    finished: set = field(default_factory=set)  # finished frame indices
    cancelling: bool = False        # memory only: cancel asked, the worker has not stopped yet
    bytes: int = 0                  # memory only: the size of the job's folder, for quotas and clean-up

    @property
    def frame_count(self) -> int:
        return self.spec["frame_count"]

    @property
    def size(self) -> tuple[int, int]:
        return self.spec["width"], self.spec["height"]

    def input_path(self, index: int) -> Path:
        return self.dir / "input" / frame_filename(index)

    def output_path(self, index: int) -> Path:
        return self.dir / "output" / frame_filename(index)

    def meta_path(self, index: int) -> Path:
        return self.output_path(index).with_suffix(".json")

    def style_paths(self) -> list[Path]:
        return [self.dir / "styles" / name for name in self.style_files]

    def frame_meta(self, index: int) -> dict:
        """seconds / iterations / losses of a finished frame ({} if unknown or unreadable)."""
        try:
            meta = json.loads(self.meta_path(index).read_text())
            return meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            return {}

    def status(self, full: bool = True) -> dict:
        """The ``job_status`` fields (PROTOCOL.md)."""
        status = {
            "job": self.id, "state": self.state, "name": self.spec.get("name"),
            "frame_count": self.frame_count, "width": self.spec["width"], "height": self.spec["height"],
            "styles": list(self.spec["styles"]), "received": len(self.received), "finished": len(self.finished),
            "received_ranges": to_ranges(self.received), "finished_ranges": to_ranges(self.finished),
            "error": self.error, "created": self.created, "updated": self.updated, "cancelling": self.cancelling,
        }
        if full:
            status["report"] = self.report
        return status

    def to_json(self) -> dict:
        return {"version": 2, "id": self.id, "spec": self.spec, "style_files": self.style_files,
                "owner": self.owner, "state": self.state, "error": self.error, "created": self.created,
                "updated": self.updated, "unfinished_runs": self.unfinished_runs, "report": self.report}


class JobStore:
    """The jobs directory. Not thread-safe: only the engine's main thread calls it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock_handle = None

    def lock(self) -> None:
        """Hold the directory for this process (released by the kernel even on kill -9)."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / ".lock", "w")
        try:
            _lock_exclusive(handle)
        except OSError:
            handle.close()
            raise JobsDirBusy(f"jobs directory {self.root} is in use by another engine") from None
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    # -- creating and updating -----------------------------------------------------------------
    def new_id(self) -> str:
        # time first so ids sort by creation; random part so two engines' ids never collide
        return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"

    def create(self, spec: dict, style_blobs: list, owner: str | None) -> Job:
        """A new job folder, built under a temporary name and renamed into place in one step; nothing is
        left behind when any step fails (a full disk, no file descriptors)."""
        job_id = self.new_id()
        temp = self.root / f".new-{job_id}"
        try:
            for sub in ("styles", "input", "output"):
                (temp / sub).mkdir(parents=True)
            style_files = []
            for i, (name, blob) in enumerate(zip(spec["styles"], style_blobs)):
                suffix = Path(name).suffix.lower()
                filename = f"{i + 1:02d}{suffix if suffix in STYLE_SUFFIXES else '.img'}"
                (temp / "styles" / filename).write_bytes(blob)
                style_files.append(filename)
            job = Job(job_id, self.root / job_id, spec, style_files, owner=owner)
            write_atomic(temp / "job.json", json.dumps(job.to_json()).encode())
            os.rename(temp, job.dir)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        job.bytes = folder_bytes(job.dir)
        return job

    def save(self, job: Job) -> None:
        job.updated = time.time()
        write_atomic(job.dir / "job.json", json.dumps(job.to_json()).encode())

    def detach_folder(self, job: Job) -> Path:
        """Take a deleted job's folder out of the store at once (a rename); its files are removed by
        :func:`remove_folder`, off the main thread, or by the next :meth:`scan`."""
        gone = self.root / f".deleted-{job.id}"
        os.rename(job.dir, gone)
        return gone

    # -- loading -----------------------------------------------------------------------------------
    def scan(self, tidy: bool = True) -> list[Job]:
        """Every valid job in the directory, oldest first; invalid ones are logged and left alone.
        ``tidy`` (the engine, holding the lock) also removes what interrupted writes left behind."""
        jobs = []
        if not self.root.is_dir():
            return jobs
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith("."):
                if tidy and entry.name.startswith((".new-", ".deleted-")) and entry.is_dir():  # a submit or a
                    shutil.rmtree(entry, ignore_errors=True)                                  # delete cut short
                continue
            if not entry.is_dir():
                continue
            try:
                jobs.append(self.load(entry, tidy))
            except Exception as exc:  # whatever is in a folder (even JSON nested too deep), never stop here
                log.warning("ignoring job folder %s: %s", entry, f"{type(exc).__name__}: {exc}"[:200])
        jobs.sort(key=lambda j: j.created)
        return jobs

    def load(self, folder: Path, tidy: bool = True) -> Job:
        data = json.loads((folder / "job.json").read_text())
        if not isinstance(data, dict) or data.get("id") != folder.name:
            raise ValueError("job.json does not describe this folder")
        spec = data["spec"]
        validate_job(spec, STORED_LIMITS)
        state = data["state"]
        if state not in JOB_STATES:
            raise ValueError(f"unknown state {state!r}")
        style_files = data["style_files"]
        if (not isinstance(style_files, list) or len(style_files) != len(spec["styles"])
                or not all(isinstance(n, str) and "/" not in n and (folder / "styles" / n).is_file()
                           for n in style_files)):
            raise ValueError("style files missing")
        error, report, owner = data.get("error"), data.get("report"), data.get("owner")
        runs = data.get("unfinished_runs", 0)
        job = Job(folder.name, folder, spec, style_files, state,
                  error if isinstance(error, dict) else None,
                  float(data["created"]), float(data["updated"]),
                  report if isinstance(report, dict) else None,
                  owner if isinstance(owner, str) else None,
                  runs if isinstance(runs, int) and not isinstance(runs, bool) else 0)
        job.received = self._valid_frames(folder / "input", job, tidy)
        job.finished = self._valid_frames(folder / "output", job, tidy)
        job.bytes = folder_bytes(folder)
        return job

    @staticmethod
    def _valid_frames(folder: Path, job: Job, tidy: bool = True) -> set[int]:
        """Indices of frame files whose PNG header has the job's size; temporary files are removed."""
        found = set()
        if not folder.is_dir():
            return found
        for entry in folder.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                if tidy:
                    entry.unlink(missing_ok=True)
                continue
            match = FRAME_NAME.match(entry.name)
            if not match or not 1 <= int(match.group(1)) <= job.frame_count:
                continue
            try:
                with open(entry, "rb") as handle:
                    head = handle.read(24)
            except OSError:
                continue
            if png_size(head) == job.size:
                found.add(int(match.group(1)))
            else:
                log.warning("ignoring %s: not a %dx%d PNG", entry, *job.size)
        return found


# -- file work for the engine's I/O thread (no job state touched) ------------------------------------

def store_input(path: Path, blob, encoding: str, size: tuple[int, int]) -> int:
    """Write an uploaded frame as PNG (raw RGB is encoded first); returns the bytes now on disk."""
    if encoding == "raw":
        width, height = size
        blob = encode_png(np.frombuffer(blob, np.uint8).reshape(height, width, 3))
    write_atomic(path, blob)
    return len(blob) if isinstance(blob, bytes) else memoryview(blob).nbytes


def remove_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    """Bytes of the files in a job folder (one level of sub-folders: styles, input, output)."""
    total = 0
    for entry in os.scandir(folder):
        try:
            if entry.is_dir(follow_symlinks=False):
                total += sum(e.stat().st_size for e in os.scandir(entry.path) if e.is_file(follow_symlinks=False))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat().st_size
        except OSError:
            pass
    return total
