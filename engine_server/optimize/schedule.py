"""Where a frame's iterations are spent: the reference's flat schedule, or coarse-to-fine.

``reference``: every iteration at full resolution (2000 on the first frame, 1000 on later ones).

``pyramid`` (the default): the frame is optimized on a resolution pyramid, halving down to a coarsest level
whose short side is 64 to 255 px (1080p: 135, 720p: 180), coarse levels first.
The iteration count N that a command line asks for keeps its meaning, "the loss a flat run of N full-size
iterations reaches": the levels share a budget of 22 % of that run's cost, counted in
full-size iterations (an iteration at half size costs a quarter). The full-size level gets 12 % of N
iterations and the coarser levels split the rest of the budget evenly, so the coarsest, cheapest level
runs the most iterations. Each level starts from the level below, upsampled as a residual (the start
image's own detail plus the upsampled change the coarser level made), so a warm start's fine detail
survives the trip through the coarse levels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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


def plan(schedule: str, size: tuple[int, int], iterations: int, coarsest: int | None = None) -> list[Level]:
    """The levels one frame runs, coarsest first; the last is always the full size."""
    if schedule == "reference":
        return [Level(size, iterations)]
    if schedule != "pyramid":
        raise ValueError(f"unknown schedule {schedule!r} (pyramid, reference)")
    sizes = pyramid_sizes(size, coarsest)
    if len(sizes) == 1:
        return [Level(size, iterations)]
    full_pixels = size[0] * size[1]
    full = max(1, math.ceil(FULL_SIZE_SHARE * iterations))
    share = (BUDGET - FULL_SIZE_SHARE) * iterations / (len(sizes) - 1)  # full-size iterations per level
    levels = []
    for level_size in sizes[:-1]:
        cost = level_size[0] * level_size[1] / full_pixels
        levels.append(Level(level_size, max(1, min(4 * iterations, round(share / cost)))))
    return levels + [Level(size, full)]


def cost(levels: list[Level]) -> float:
    """The levels' work in full-size iterations (compute grows with the pixel count)."""
    full = levels[-1].size[0] * levels[-1].size[1]
    return sum(level.iterations * level.size[0] * level.size[1] / full for level in levels)


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) to (width, height): area averaging down (no aliasing), bilinear up."""
    height, width = image.shape[-2:]
    if (width, height) == tuple(size):
        return image
    if size[0] <= width and size[1] <= height:
        return F.interpolate(image, size=(size[1], size[0]), mode="area")
    return F.interpolate(image, size=(size[1], size[0]), mode="bilinear", align_corners=False)
