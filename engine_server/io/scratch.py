"""Arrays a run needs again much later, kept in files instead of memory.

Multi-pass revisits every frame of the clip in each of its passes; its state (each frame, its current
result, the flows and masks between neighbours) is as large as the clip, so it lives in a temporary folder
that is removed when the run ends, and memory holds only the frame being optimized. The scale-out uses
the same folder, given nowhere else to stage its workers' frames.

A resumable scratch has a fixed name and outlives a run that did not end (killed, stopped, cancelled):
with the position its run marked, a later run of the same job continues where it stopped.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


PREFIX = ".vse-style-scratch-"
STATE = "state.json"  # a resumable scratch's fingerprint and position


class Scratch:
    """``put(key, array)`` / ``get(key)`` through ``.npy`` files in a temporary folder under ``parent``
    (None: the system's temporary folder; put it on a disk, not a RAM-backed /tmp, for long clips).

    The folder's name carries the process id: folders that a killed run left behind (their process is
    gone) are removed when the next one starts in the same place. ``resumable``: a fixed folder name under
    ``parent`` instead, kept unless ``close()`` is called (see :meth:`resume_point`)."""

    def __init__(self, parent: str | os.PathLike | None = None, resumable: str | None = None):
        parent = Path(parent if parent is not None else tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        remove_left_behind(parent)
        self.resumable = resumable is not None
        if self.resumable:
            self._folder = None
            self.path = parent / resumable
            self.path.mkdir(exist_ok=True)
        else:
            self._folder = tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
            self.path = Path(self._folder.name)

    def _file(self, key: str) -> Path:
        return self.path / f"{key}.npy"

    def put(self, key: str, array: np.ndarray) -> None:
        np.save(self._file(key), np.ascontiguousarray(array), allow_pickle=False)

    def get(self, key: str) -> np.ndarray:
        return np.load(self._file(key), allow_pickle=False)

    def __contains__(self, key: str) -> bool:
        return self._file(key).is_file()

    def resume_point(self, fingerprint: str) -> tuple:
        """Where an earlier run of the same work (``fingerprint``) stopped, as it marked it; () when there
        is none, after clearing whatever another run left."""
        try:
            state = json.loads((self.path / STATE).read_text())
            if state["fingerprint"] == fingerprint:
                return tuple(state["position"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir()
        return ()

    def mark(self, fingerprint: str, position: tuple) -> None:
        """Record how far the run has come (written whole: a kill leaves the last mark or this one)."""
        part = self.path / (STATE + ".part")
        part.write_text(json.dumps({"fingerprint": fingerprint, "position": list(position)}))
        os.replace(part, self.path / STATE)

    def close(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()
        else:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_left_behind(parent: Path) -> None:
    """Remove scratch folders in ``parent`` whose process no longer runs."""
    for folder in parent.glob(f"{PREFIX}*"):
        pid = folder.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
