"""A view of a clip's first frames, for the benchmarks.

A module of its own that imports no torch: a scale-out run pickles its frame source to the feed's
process (:mod:`engine_server.scale.feed`), which would otherwise load torch only to read frames.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..io.frames import FrameSource


class Head(FrameSource):
    """The first ``count`` frames of a source, read only as they are asked for (a benchmark measuring
    memory must not hold the clip itself), brought to ``size`` when given."""

    def __init__(self, source: FrameSource, count: int, size: tuple[int, int] | None = None):
        super().__init__([], size or source.size, source.names[:count])
        self.source, self.count = source, min(count, len(source))

    def __len__(self) -> int:
        return self.count

    def reader(self) -> "Head":
        return Head(self.source.reader(), self.count, self.size)

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(index)
        frame = self.source[index]
        return frame if frame.shape[:2] == (self.size[1], self.size[0]) else cv2.resize(
            frame, self.size, interpolation=cv2.INTER_AREA)
