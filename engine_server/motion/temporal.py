"""Temporal constraints: flow -> masks -> warped earlier outputs for one frame.

For a pair (earlier frame e, current frame t) the backward flow t -> e warps e's output onto t; its
certainty comes from checking it against the forward flow e -> t (reference makeOptFlow.sh:
reliable_t_e = check(backward_t_e, forward_e_t)).
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property

import numpy as np
import torch

from .consistency import certainty
from .warp import flow_to_tensor, warp


class PairFlow:
    """Flows between two frames a and b, and the certainty of warping each onto the other.

    A certainty is computed when first asked for: a single pass only ever warps a onto b.
    """

    def __init__(self, a_to_b: np.ndarray, b_to_a: np.ndarray):
        self.a_to_b = a_to_b  # forward flow, warps b's image onto a
        self.b_to_a = b_to_a  # backward flow, warps a's image onto b

    @cached_property
    def certainty_on_a(self) -> np.ndarray:
        """HxW in [0, 1]: check(a_to_b, b_to_a)."""
        return certainty(self.a_to_b, self.b_to_a)

    @cached_property
    def certainty_on_b(self) -> np.ndarray:
        """HxW in [0, 1]: check(b_to_a, a_to_b)."""
        return certainty(self.b_to_a, self.a_to_b)

    @property
    def untrusted_share(self) -> float:
        """The share of b that a cannot be carried onto (1 - the mean certainty on b): what is new in b."""
        return 1.0 - float(np.mean(self.certainty_on_b))


def pair_flow(estimator, frame_a: np.ndarray, frame_b: np.ndarray) -> PairFlow:
    return PairFlow(*estimator.pair(frame_a, frame_b))


def mask_tensor(mask: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None].to(device)


def warped_onto(earlier_output: torch.Tensor, flow_to_earlier: np.ndarray) -> torch.Tensor:
    """Earlier output (1, 3, H, W) brought onto the current frame by the flow current -> earlier."""
    return warp(earlier_output, flow_to_tensor(flow_to_earlier, earlier_output.device))


def constraints(
    pairs: list[tuple[PairFlow, torch.Tensor]], device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(warped earlier output, combined certainty)] for pairs (earlier -> current) closest first.

    Each PairFlow has a = earlier frame, b = current frame.
    """
    warped = [warped_onto(output, pair.b_to_a) for pair, output in pairs]
    masks = closest_first([mask_tensor(pair.certainty_on_b, device) for pair, _ in pairs])
    return list(zip(warped, masks))


def temporal_loss(image: torch.Tensor, warped: torch.Tensor, certainty: torch.Tensor) -> torch.Tensor:
    """Mean over pixels and channels of c * (x - warped)^2; certainty is (1, 1, H, W) in [0, 1]."""
    return torch.mean(certainty * (image - warped) ** 2)


def closest_first(certainties: list[torch.Tensor]) -> list[torch.Tensor]:
    """Long-term mask combination: c_j <- max(0, c_j - sum of the certainties of closer frames).

    ``certainties`` are ordered from the closest frame to the farthest, so each pixel is constrained
    by the nearest earlier frame in which it was visible.
    """
    combined, seen = [], None
    for c in certainties:
        combined.append(c if seen is None else torch.clamp(c - seen, min=0.0))
        seen = c if seen is None else seen + c
    return combined


def initialization(content: torch.Tensor, warped_previous: torch.Tensor, mask: torch.Tensor,
                   fill: torch.Tensor | None = None) -> torch.Tensor:
    """The previous output warped, with disoccluded / unreliable pixels taken from ``fill`` (something
    already stylized, see :func:`stylized_fill`), or from the content frame when there is none."""
    return mask * warped_previous + (1.0 - mask) * (content if fill is None else fill)


def stylized_fill(content: torch.Tensor, previous_output: torch.Tensor, previous_content: torch.Tensor,
                  flow_to_previous: np.ndarray) -> torch.Tensor:
    """A stylized start for pixels the flow cannot carry over: the new content plus what the style did to
    the previous frame (its output minus its content), brought over by the same flow.

    Where the flow is wrong (disocclusions) the change comes from a neighbouring region of the same shot,
    so the start has the painting's strokes and palette shifts on the new frame's own structure, instead
    of the raw photograph that a short warm-start budget would leave barely stylized.
    """
    flow = flow_to_tensor(flow_to_previous, content.device)
    change = warp(previous_output - previous_content, flow)
    return (content + change).clamp(0.0, 255.0)


class FlowAhead:
    """The flows of frame t's pairs (t - j, t), j in ``distances``.

    With ``background`` (on CUDA, where the CPU is otherwise idle while the GPU optimizes) the pairs of
    the next few frames are computed on worker threads during this frame's optimization, one frame per
    thread; OpenCV releases the GIL. On a CPU-only machine that would only compete with torch for the
    same cores.
    """

    def __init__(self, estimator, source, distances, background: bool, workers: int | None = None):
        self.estimator = estimator
        self.source = source
        self.distances = sorted(distances)
        self.workers = workers or max(1, min(4, (os.cpu_count() or 2) // 4))
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="flow-ahead") if background else None
        self.pending: dict[int, Future] = {}

    def _compute(self, index: int) -> list[tuple[int, PairFlow]]:
        current = self.source[index]
        pairs = [(j, pair_flow(self.estimator, self.source[index - j], current))
                 for j in self.distances if index - j >= 0]
        for _, pair in pairs:
            pair.certainty_on_b  # the mask a single pass uses, computed here, off the critical path
        return pairs

    def pairs(self, index: int) -> list[tuple[int, PairFlow]]:
        """[(distance j, PairFlow with a = frame t - j, b = frame t)], closest first."""
        future = self.pending.pop(index, None)
        result = future.result() if future is not None else self._compute(index)
        if self.pool is not None:
            for ahead in range(index + 1, min(len(self.source), index + 1 + self.workers)):
                if ahead not in self.pending:
                    self.pending[ahead] = self.pool.submit(self._compute, ahead)
        return result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
