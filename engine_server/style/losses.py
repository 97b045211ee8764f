"""The loss terms of Gatys et al. (content, style) and the smoothness prior, each a plain function of tensors.

Ruder et al.'s temporal term lives with the temporal constraints, in :mod:`engine_server.motion.temporal`.

Normalization (so one set of weights means the same at any resolution):
- content and style terms (and the temporal term) are means over their elements, as the reference computes them
  (Torch's MSECriterion averages), so they do not grow with the frame size;
- the reference's total variation is a plain sum over pixels, which does grow with the frame size:
  ours is the per-pixel mean times the pixel count of the reference's own frames (450 x 350), so the
  default weight 1e-3 acts exactly as in the reference at that size and the same per pixel at any size.
Images are in pixel units (RGB 0..255), as the reference's.
"""
from __future__ import annotations

import torch

REFERENCE_PIXELS = 450 * 350


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of (1, C, H, W) activations, divided by C*H*W (as the reference)."""
    _, c, h, w = features.shape
    flat = features.reshape(c, h * w)
    return flat @ flat.t() / (c * h * w)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((features - target) ** 2)


def style_loss(features: dict[str, torch.Tensor], target_grams: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over the style layers of the mean squared difference of Gram matrices."""
    total = features[next(iter(target_grams))].new_zeros(())
    for layer, target in target_grams.items():
        total = total + torch.mean((gram(features[layer]) - target) ** 2)
    return total


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Half the squared neighbour differences (the reference's TV), per pixel, times REFERENCE_PIXELS."""
    dx = image[..., :-1, :-1] - image[..., :-1, 1:]
    dy = image[..., :-1, :-1] - image[..., 1:, :-1]
    per_pixel = 0.5 * (dx.pow(2) + dy.pow(2)).sum(dim=1).mean()
    return per_pixel * REFERENCE_PIXELS
