"""Where a frame's iterations are spent: the reference's flat schedule, or coarse-to-fine.

``reference``: every iteration at full resolution (2000 on the first frame, 1000 on later ones).

``pyramid`` (the default): the frame is optimized on a resolution pyramid, halving down to a coarsest level
whose short side is 64 to 255 px (1080p: 135, 720p: 180), coarse levels first.
The iteration count N that a command line asks for keeps its meaning, "the loss a flat run of N full-size
iterations reaches": the levels share a budget of 22 % of that run's cost, counted in
full-size iterations (an iteration at half size costs a quarter). The full-size level gets 12 % of N
iterations and the coarser levels split the rest of the budget evenly, so the coarsest, cheapest level
runs the most iterations. Each level starts from the level below, upsampled as a residual (the start
image's own detail plus the upsampled change the coarser level made).

A start stylized at every scale already (a later frame of a shot, begun from the previous output
carried along the flow, or the network's painting with ``--init fast``) skips the coarse levels and
spends the same budget at full size:
the hand-over from a coarser level costs more fine detail than it buys (measured on Sintel: a full-size
result taken down and back up has 5x its loss, and warm frames ended 0.2-0.6 % lower without the coarse
levels, with e_stab 2 % lower).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

BUDGET = 0.22           # of the flat run's cost, in full-size iterations
FULL_SIZE_SHARE = 0.12  # of N, at full size
MIN_LEVEL_SIDE = 16


@dataclass(frozen=True)
class Level:
    size: tuple[int, int]   # (width, height)
    iterations: int


def coarsest_side(short_side: int) -> int:
    """Halving stops before the short side drops below this: a quarter of it, kept within 64..128, so the
    coarsest level's short side lands in 64..255 px (VGG's relu5_1 then still sees 4..16 cells)."""
    return max(64, min(128, short_side // 4))


def pyramid_sizes(size: tuple[int, int], coarsest: int | None = None) -> list[tuple[int, int]]:
    """Level sizes, coarsest first, ending with ``size``: halve while the short side stays >= coarsest."""
    width, height = size
    floor = coarsest or coarsest_side(min(width, height))
    sizes = [(width, height)]
    factor = 2
    while min(width, height) / factor >= floor and min(width, height) / factor >= MIN_LEVEL_SIDE:
        sizes.append((max(MIN_LEVEL_SIDE, round(width / factor)), max(MIN_LEVEL_SIDE, round(height / factor))))
        factor *= 2
    return sizes[::-1]


CostModel = Callable[[tuple[int, int], tuple[int, int]], float]


def pixel_cost(level_size: tuple[int, int], full_size: tuple[int, int]) -> float:
    """An iteration's cost relative to one at full size: its pixel count (true on a CPU)."""
    return level_size[0] * level_size[1] / (full_size[0] * full_size[1])


def plan(schedule: str, size: tuple[int, int], iterations: int, coarsest: int | None = None,
         cost_of: CostModel = pixel_cost, stylized: bool = False) -> list[Level]:
    """The levels one frame runs, coarsest first; the last is always the full size. ``stylized``: the
    frame starts from an image already stylized at every scale (the previous output carried along the
    flow, or the feed-forward network's painting): one full-size level with the pyramid's budget, where
    there is a pyramid, because a coarser level's hand-over would throw away the fine detail it has.

    ``cost_of`` prices an iteration at a level relative to one at full size. On a GPU small levels cost
    more than their pixel share (fixed per-kernel costs), so the engine measures it (see
    :func:`measured_cost`)."""
    if schedule == "reference":
        return [Level(size, iterations)]
    if schedule != "pyramid":
        raise ValueError(f"unknown schedule {schedule!r} (pyramid, reference)")
    sizes = pyramid_sizes(size, coarsest)
    if len(sizes) == 1:  # too small to coarsen: the flat schedule
        return [Level(size, iterations)]
    if stylized:
        return [Level(size, max(1, math.ceil(BUDGET * iterations)))]
    full = max(1, math.ceil(FULL_SIZE_SHARE * iterations))
    share = (BUDGET - FULL_SIZE_SHARE) * iterations / (len(sizes) - 1)  # full-size iterations per level
    levels = []
    for level_size in sizes[:-1]:
        cost = cost_of(level_size, size)
        levels.append(Level(level_size, max(1, min(4 * iterations, round(share / cost)))))
    return levels + [Level(size, full)]


def warm_iterations(schedule: str, later: int, first: int, untrusted: float) -> int:
    """A warm-started frame's N: the later frames' count, plus the first frame's extra for the share of
    the frame the flow could not carry over (those pixels are new to the shot). On fast motion half a
    frame can be new; with the later count alone it ended 10-16 % less stylized than the same frame
    stylized on its own. The reference schedule keeps the paper's fixed count."""
    if schedule == "reference":
        return later
    return later + round(min(1.0, max(0.0, untrusted)) * max(0, first - later))


def cost(levels: list[Level], cost_of: CostModel = pixel_cost) -> float:
    """The levels' work in full-size iterations."""
    return sum(level.iterations * cost_of(level.size, levels[-1].size) for level in levels)


def measured_cost(iteration_seconds: Callable[[tuple[int, int]], float]) -> CostModel:
    """A cost model from measured seconds per iteration at each size (cached per size)."""
    seconds: dict[tuple[int, int], float] = {}

    def cost_of(level_size: tuple[int, int], full_size: tuple[int, int]) -> float:
        for wanted in (level_size, full_size):
            if wanted not in seconds:
                seconds[wanted] = iteration_seconds(wanted)
        # rounded to 1/20, so that timing noise does not give two runs of one command different plans
        return min(1.0, max(0.05, round(20 * seconds[level_size] / seconds[full_size]) / 20))

    return cost_of


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) to (width, height): area averaging down (no aliasing), bilinear up."""
    height, width = image.shape[-2:]
    if (width, height) == tuple(size):
        return image
    if size[0] <= width and size[1] <= height:
        return F.interpolate(image, size=(size[1], size[0]), mode="area")
    return F.interpolate(image, size=(size[1], size[0]), mode="bilinear", align_corners=False)
