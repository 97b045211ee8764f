"""Backward warping: bring an image of another frame onto the current one along the flow.

``warp(image, flow)`` samples ``image`` at ``p + flow(p)``, bilinearly, so with the backward flow
(current frame -> earlier frame) it moves the earlier output onto the current frame.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def flow_to_tensor(flow: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """HxWx2 numpy flow -> (1, H, W, 2) float tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).unsqueeze(0).to(device)


def sampling_grid(flow: torch.Tensor) -> torch.Tensor:
    """(1, H, W, 2) pixel flow -> grid_sample's normalized coordinates of p + flow(p)."""
    _, h, w, _ = flow.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=flow.device, dtype=flow.dtype),
        torch.arange(w, device=flow.device, dtype=flow.dtype),
        indexing="ij",
    )
    x = (xs + flow[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0
    y = (ys + flow[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    return torch.stack((x, y), dim=-1)


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp (N, C, H, W) ``image`` by (1, H, W, 2) ``flow``; outside the frame the border repeats.

    Pixels whose source lies outside the frame are unreliable anyway: the consistency mask is 0 there.
    ``mode`` "bicubic" blurs less than "bilinear" (it may overshoot the input's range slightly).
    """
    grid = sampling_grid(flow).expand(image.shape[0], -1, -1, -1)
    return F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)


def warp_numpy(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Same as :func:`warp` for an HxWxC (or HxW) float/uint8 numpy image; returns float32."""
    img = np.asarray(image, dtype=np.float32)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[..., None]
    tensor = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0)
    out = warp(tensor, flow_to_tensor(flow, "cpu"))[0].numpy().transpose(1, 2, 0)
    return out[..., 0] if squeeze else out
