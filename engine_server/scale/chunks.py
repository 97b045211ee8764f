"""Cutting a strip for many workers: at scene cuts first (nothing carries across a cut, so no seam), then
long shots into chunks, each chunk a temporal chain of its own that starts like a first frame.

Where two chunks of one shot meet there is a seam: the earlier chunk's chain runs on for a window of frames
past it, and the two chains' outputs of those frames are blended (:mod:`.seams`). That overlap is the
earlier chunk's extra work, so chunks before a seam are planned shorter by the window and every worker of
a shot ends at about the same time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..io.frames import resize
from ..motion import cuts
from ..motion.temporal import pair_flow

PLANNING_WIDTH = 320  # cut detection needs the shots' colours and coarse motion, not their detail


@dataclass(frozen=True)
class Chunk:
    number: int        # 0-based, strip order
    start: int         # first frame, 0-based
    stop: int          # one past the last frame
    shot: int          # 0-based shot number
    seam_before: bool  # the chunk before is of the same shot: a seam at ``start``
    overlap: int = 0   # frames past ``stop`` this chunk's chain also runs, for the seam after it

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def frames(self) -> range:
        """Every frame this chunk's chain makes, the overlap past the seam included."""
        return range(self.start, self.stop + self.overlap)


@dataclass(frozen=True)
class Seam:
    """Where chunk ``after`` begins in the middle of a shot, at frame ``frame``: both chains make the
    frames ``frame .. frame + window - 1``, and their outputs are blended."""

    before: int   # chunk numbers
    after: int
    frame: int    # the later chunk's first frame, 0-based
    window: int

    @property
    def frames(self) -> range:
        return range(self.frame, self.frame + self.window)


@dataclass(frozen=True)
class Plan:
    frame_count: int
    cuts: tuple[int, ...]   # 0-based frames that start a new shot (after a scene cut)
    chunks: tuple[Chunk, ...]
    seams: tuple[Seam, ...]

    @property
    def work(self) -> int:
        """Frames to optimize in all: every frame once, and each seam's window again."""
        return self.frame_count + sum(seam.window for seam in self.seams)

    def to_dict(self) -> dict:
        return {"frame_count": self.frame_count, "cuts": list(self.cuts),
                "chunks": [[c.start, c.stop, c.overlap] for c in self.chunks]}

    @classmethod
    def from_dict(cls, saved: dict) -> "Plan":
        """A plan saved with :meth:`to_dict` (a resumed run keeps the chunks its frames were made in)."""
        cuts = set(saved["cuts"])
        chunk_list, seams, shot = [], [], 0
        for number, (start, stop, overlap) in enumerate(saved["chunks"]):
            if start in cuts:
                shot += 1
            seam_before = number > 0 and start not in cuts
            chunk_list.append(Chunk(number, start, stop, shot, seam_before, overlap))
            if seam_before:
                seams.append(Seam(number - 1, number, start, chunk_list[-2].overlap))
        return cls(saved["frame_count"], tuple(saved["cuts"]), tuple(chunk_list), tuple(seams))


def shots(frame_count: int, cut_frames) -> list[range]:
    """The runs of frames between scene cuts; ``cut_frames`` are the 0-based frames that start a shot."""
    starts = sorted({0, *(c for c in cut_frames if 0 < c < frame_count)})
    return [range(a, b) for a, b in zip(starts, starts[1:] + [frame_count])]


def split_shot(length: int, chunk_frames: int, window: int) -> list[int]:
    """Chunk lengths for a shot: as many chunks as ``chunk_frames`` calls for, each chunk followed by a
    seam shorter by the seam's ``window`` (its chain also runs the window past the seam), so all take
    about as long; a chunk is never shorter than 2 * window + 1, since then its seam would cost more than
    it saves."""
    shortest = 2 * window + 1
    count = max(1, math.ceil(length / chunk_frames))
    while count > 1 and (length + (count - 1) * window) / count - window < shortest:
        count -= 1
    if count == 1:
        return [length]
    # each chunk's work: its frames, plus the window of the seam after it (all but the last)
    share = (length + (count - 1) * window) / count
    lengths = [int(round(share * (i + 1) - window * (i + 1))) - int(round(share * i - window * i))
               for i in range(count - 1)]
    return lengths + [length - sum(lengths)]


def plan(frame_count: int, cut_frames, chunk_frames: int, window: int) -> Plan:
    """Chunks of at most about ``chunk_frames`` frames that never cross a scene cut, and their seams."""
    if chunk_frames < 1:
        raise ValueError(f"chunk length {chunk_frames}: must be at least 1")
    chunks: list[Chunk] = []
    seams: list[Seam] = []
    for shot_number, shot in enumerate(shots(frame_count, cut_frames)):
        start = shot.start
        lengths = split_shot(len(shot), chunk_frames, window)
        for i, length in enumerate(lengths):
            overlap = window if i < len(lengths) - 1 else 0
            chunk = Chunk(len(chunks), start, start + length, shot_number, seam_before=i > 0, overlap=overlap)
            if chunk.seam_before:
                seams.append(Seam(chunk.number - 1, chunk.number, start, window))
            chunks.append(chunk)
            start += length
    cut_tuple = tuple(s.start for s in shots(frame_count, cut_frames)[1:])
    return Plan(frame_count, cut_tuple, tuple(chunks), tuple(seams))


def default_chunk_frames(frame_count: int, workers: int, window: int) -> int:
    """One chunk per worker for a strip that is one shot, the seams' windows included."""
    return max(1, math.ceil((frame_count + (workers - 1) * window) / max(1, workers)))


def find_cuts(source, flow) -> list[int]:
    """0-based frames that start a new shot: the engine's own cut test (:mod:`..motion.cuts`) on each
    consecutive pair, at a planning size (cuts are decided by colours and coarse motion)."""
    width, height = source.size
    size = (min(width, PLANNING_WIDTH), max(16, round(height * min(width, PLANNING_WIDTH) / width)))
    found, previous = [], None
    for index in range(len(source)):
        current = resize(source[index], size)
        if previous is not None:
            pair = pair_flow(flow, previous, current)
            if cuts.detect_cut(previous, current, pair.b_to_a, pair.certainty_on_b).is_cut:
                found.append(index)
        previous = current
    return found
