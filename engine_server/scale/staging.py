"""Frames a scale-out run holds between the workers and the in-order output: each chunk's chain outputs
of its own frames (``raw``) and of the window past the seam after it (``carried``), which the seam blends
with the next chunk's.

They live on disk as PNGs (written atomically), so a long strip at 1080p does not pile up in the driver's
memory while an early chunk is still running (the frames of every later chunk wait for it), and a run
stopped and started again takes up every frame a worker finished instead of recomputing it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..io.frames import encode_png, read_image, write_atomic

FOLDER_NAME = ".chunks"  # beside the output frames (stylize --ray) or in the job's folder (serve --ray)


class FrameStore:
    """0-based frame index -> RGB uint8 image, on disk under ``folder/kind``."""

    def __init__(self, folder: Path, kind: str):
        self.folder = Path(folder) / kind
        self._indices: set[int] = set()
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(self.folder):
            if name.endswith(".png") and name[:-4].isdigit():
                self._indices.add(int(name[:-4]))

    def _path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.png"

    def __contains__(self, index: int) -> bool:
        return index in self._indices

    def __len__(self) -> int:
        return len(self._indices)

    def put(self, index: int, image: np.ndarray) -> None:
        write_atomic(self._path(index), encode_png(image))
        self._indices.add(index)

    def get(self, index: int) -> np.ndarray:
        return read_image(self._path(index), "staged frame")


class Staging:
    """The staging folder of one output: the plan it was made for, and both frame stores."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._open()

    def _open(self) -> None:
        self.raw = FrameStore(self.folder, "raw")
        self.carried = FrameStore(self.folder, "carried")

    def saved_plan(self) -> dict | None:
        if not (self.folder / "plan.json").exists():
            return None
        try:
            return json.loads((self.folder / "plan.json").read_text())
        except (OSError, ValueError):
            return None

    def save_plan(self, plan: dict) -> None:
        write_atomic(self.folder / "plan.json", json.dumps(plan).encode())

    def clear(self) -> None:
        """Start afresh: staged frames of another run are none of this one's."""
        self.remove()
        self._open()

    def remove(self) -> None:
        """Once every frame is out, the staged ones are no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
