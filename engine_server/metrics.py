"""Temporal stability of a stylized clip (Ruder et al.'s e_stab).

For consecutive outputs O_t, O_{t+1} and a forward flow F_{t->t+1} (ground truth on MPI-Sintel),
O_{t+1} is warped back onto frame t and compared with O_t on the pixels the mask marks as visible in
both. e_stab = sqrt(mean over t of the masked mean squared difference), images scaled to [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .motion.warp import warp_numpy


def masked_mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    weights = np.asarray(mask, np.float64)[..., None] * np.ones_like(diff)
    return float((diff * weights).sum() / max(weights.sum(), 1e-12))


def stability_error(outputs: Sequence[np.ndarray], forward_flows: Sequence[np.ndarray],
                    masks: Sequence[np.ndarray]) -> float:
    """outputs: N uint8 RGB frames; forward_flows[t]: flow t -> t+1; masks[t]: HxW weights in [0, 1]."""
    if len(forward_flows) != len(outputs) - 1 or len(masks) != len(forward_flows):
        raise ValueError("need one forward flow and one mask per consecutive pair of outputs")
    errors = []
    for t, (flow, mask) in enumerate(zip(forward_flows, masks)):
        next_on_this = warp_numpy(outputs[t + 1], flow) / 255.0
        errors.append(masked_mse(outputs[t] / 255.0, next_on_this, mask))
    return float(np.sqrt(np.mean(errors)))


def inside_mask(flow: np.ndarray) -> np.ndarray:
    """1 where p + flow(p) stays inside the frame (and the flow is known), else 0."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    known = np.all(np.abs(flow) < 1e9, axis=2)
    return (known & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).astype(np.float32)


def style_distance(outputs: Sequence[np.ndarray], style: np.ndarray, vgg, device="cpu") -> float:
    """Mean over frames of the Gram style loss (Gatys et al., the optimization modes' own style term) of
    each output against ``style`` scaled to the frame's size: how far the frames are from the painting's
    style, comparable across modes on the same frames."""
    import torch

    from .style.losses import style_loss
    from .style.targets import StyleTargets, image_tensor
    from .style.vgg import STYLE_LAYERS

    size = (outputs[0].shape[1], outputs[0].shape[0])
    targets = StyleTargets([style], vgg, size, device).grams[0]
    with torch.no_grad():
        return float(np.mean([float(style_loss(vgg(image_tensor(o, device), STYLE_LAYERS), targets))
                              for o in outputs]))
