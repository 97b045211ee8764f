"""Frames to the workers as their chains ask for them, so a chunk is never shipped whole.

Shipping a chunk's frames with the call would put them all in Ray's object store and in the worker's
memory at once: for a ten-minute 720p strip on two workers, 20 GB each. Instead the driver's frames stay
with one :class:`FrameFeed` (a Ray actor on the driver's machine, where the video or image files are), and
each worker reads its chunk through :class:`FedFrames`, which fetches a few frames ahead and keeps the last
few. Memory on every side stays a few frames per worker however long the strip.

Neither class imports Ray: :mod:`.cluster` makes the feed an actor and hands ``FedFrames`` a fetch call.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import numpy as np

from ..io.frames import FrameSource

FETCH_FRAMES = 8   # one request to the feed brings the frame asked for and the next ones a chain reads
KEEP_FRAMES = 16   # covers the look-backs (long-term partners, colour reference aside) and the flows ahead


class FrameFeed:
    """The strip's frames on the driver's machine. Each chunk reads through a reader of its own, so
    chunks far apart in a video each decode in order instead of reopening it at every request. Threaded:
    every worker's requests are served at once."""

    def __init__(self, source: FrameSource):
        self.source = source
        self._readers: dict[int, FrameSource] = {}
        self._lock = threading.Lock()
        self.served: dict[int, list[int]] = {}  # chunk number -> [frames handed out, largest request]

    def frames(self, chunk: int, start: int, stop: int) -> list[np.ndarray]:
        """Frames ``start .. stop - 1`` of the strip (0-based), for ``chunk``'s chain."""
        with self._lock:
            reader = self._readers.get(chunk)
            if reader is None:
                reader = self._readers[chunk] = self.source.reader()
            served = self.served.setdefault(chunk, [0, 0])
            served[0] += stop - start
            served[1] = max(served[1], stop - start)
        return [reader[i] for i in range(start, stop)]

    def release(self, chunk: int) -> None:
        """A chunk's chain has ended: its reader (and the decoder it holds) goes."""
        with self._lock:
            reader = self._readers.pop(chunk, None)
        if reader is not None and reader is not self.source and hasattr(reader, "close"):
            reader.close()

    def stats(self) -> dict[int, list[int]]:
        with self._lock:
            return {chunk: list(served) for chunk, served in self.served.items()}


class FedFrames(FrameSource):
    """One chunk's frames on its worker (0-based within the chunk), fetched ``FETCH_FRAMES`` at a time
    from the feed; the last ``KEEP_FRAMES`` are kept. Thread-safe (flows ahead are read on threads)."""

    def __init__(self, fetch: Callable[[int, int], list[np.ndarray]], count: int, size: tuple[int, int]):
        super().__init__([], tuple(size), [f"frame {i + 1}" for i in range(count)])
        self._fetch, self._count = fetch, count
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"frame {index} of a {self._count}-frame chunk")
        with self._lock:
            if index not in self._kept:
                stop = min(self._count, index + FETCH_FRAMES)
                for offset, frame in enumerate(self._fetch(index, stop)):
                    self._kept[index + offset] = frame
                    self._kept.move_to_end(index + offset)
                while len(self._kept) > KEEP_FRAMES:
                    self._kept.popitem(last=False)
            self._kept.move_to_end(index)
            return self._kept[index]
