"""Stabilizing a feed-forward network's frames along the flow.

Run frame by frame, the network paints each frame afresh: its strokes on a wall that does not move
change from one frame to the next (flicker). Each new painting P_t is reconciled with the previous
output O_{t-1} carried onto frame t by the backward flow (W = warp(O_{t-1})), weighted by that flow's
consistency mask c_t (1 where it can be trusted, 0 at disocclusions, motion boundaries and outside the
frame):

    base   = blur(P_t) + keep * c_t * (blur(W) - blur(P_t))          colours and shapes: a plain blend
    detail = [d(P_t) + keep * c_t * (d(W) - d(P_t))] * g             strokes: blended, then brought back
                                                                     to the inputs' own contrast
    O_t    = base + detail,   d(x) = x - blur(x)

Where the flow is trusted, ``keep`` of the old painting stays and 1 - keep of the new one comes in, so
each frame's strokes decay geometrically (keep^k after k frames): a wrong warp cannot leave a lasting
ghost, and new content arrives at full strength where the flow cannot carry anything. Averaging two
paintings whose strokes differ washes their texture out (the style fades, measurably: the Gram style
loss rose 15-40 % at keep 0.7 on Sintel); the gain g restores the local energy of the strokes to the
mix of the two inputs' energies. The warp is bicubic: bilinear resampling, compounded frame after
frame, blurs the strokes as well. A scene cut (:mod:`engine_server.motion.cuts`) starts afresh.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

from ..motion import cuts, temporal
from ..motion.warp import flow_to_tensor, warp

KEEP = 0.75           # share of the previous output kept where the flow is trusted (bench fast)
DETAIL_SIGMA = 1.0    # px: the strokes' band, whose contrast is restored after blending
MAX_GAIN = 2.0


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    size = 2 * round(3 * sigma) + 1
    return gaussian_blur(x, [size, size], [sigma, sigma])


def texture_blend(old: torch.Tensor, new: torch.Tensor, weight: torch.Tensor, sigma: float = DETAIL_SIGMA) -> torch.Tensor:
    """``new + weight * (old - new)`` with the fine detail's local contrast kept at the weighted mix of
    the two inputs' (see the module's note); weight is (1, 1, H, W) in [0, 1]."""
    old_base, new_base = _blur(old, sigma), _blur(new, sigma)
    old_detail, new_detail = old - old_base, new - new_base
    detail = new_detail + weight * (old_detail - new_detail)
    energy = lambda d: _blur(d.pow(2).mean(1, keepdim=True), sigma)
    wanted = energy(new_detail) + weight * (energy(old_detail) - energy(new_detail))
    gain = torch.sqrt(wanted / (energy(detail) + 1e-8)).clamp(max=MAX_GAIN)
    return (new_base + weight * (old_base - new_base) + gain * detail).clamp(0.0, 1.0)


class FlowStabilizer:
    """Holds the previous frame and output of the current shot; :meth:`__call__` stabilizes the next."""

    def __init__(self, keep: float = KEEP):
        if not 0.0 <= keep < 1.0:
            raise ValueError(f"keep {keep}: expected a share in [0, 1)")
        self.keep = keep
        self.previous: tuple[np.ndarray, torch.Tensor] | None = None  # (frame RGB uint8, output)

    def reset(self) -> None:
        self.previous = None

    def remember(self, frame: np.ndarray, output: torch.Tensor) -> None:
        """Make (frame, output) the previous pair (e.g. a frame an earlier run finished)."""
        self.previous = (frame, output)

    def __call__(self, frame: np.ndarray, painted: torch.Tensor,
                 pair: temporal.PairFlow | None) -> tuple[torch.Tensor, bool]:
        """(output, cut) for ``frame`` (uint8 RGB) whose fresh painting is ``painted`` (1, 3, H, W) in
        [0, 1]; ``pair`` holds the flows between the previous frame (a) and this one (b), or None."""
        cut = False
        output = painted
        if self.previous is not None and pair is not None:
            previous_frame, previous_output = self.previous
            cut = cuts.detect_cut(previous_frame, frame, pair.b_to_a, pair.certainty_on_b).is_cut
            if not cut and self.keep > 0:
                warped = warp(previous_output, flow_to_tensor(pair.b_to_a, painted.device), mode="bicubic")
                trust = temporal.mask_tensor(pair.certainty_on_b, painted.device)
                output = texture_blend(warped, painted, self.keep * trust)
        self.previous = (frame, output)
        return output, cut
