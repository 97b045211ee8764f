"""One frame through the arbitrary-style network: style vectors, their per-frame blend, the brush scale.

Blending follows Ghiasi et al. (section 4.3): a keyframed mix of paintings is the weighted mean of their
style vectors, and a strength below 1 interpolates toward the content frame's own style vector (the
painting fades into the photograph's own look rather than into a grey average). The weights mean what
they mean in the optimization modes: normalized by their sum, strength min(1, sum).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..style import color
from ..style.targets import image_tensor, tensor_image
from .ghiasi import ArbitraryStyleNetwork

MIN_SIDE = 64        # the network's input is never smaller than this on its short side
MAX_PIXELS = 4096 * 4096  # nor larger than this (a very small --style-scale would ask for it)


def to_unit(rgb: np.ndarray, device) -> torch.Tensor:
    """HxWx3 uint8 -> (1, 3, H, W) float32 in [0, 1], the network's range (the optimization's is 0..255)."""
    return image_tensor(rgb, device) / 255.0


def network_size(frame_size: tuple[int, int], style_scale: float) -> tuple[int, int]:
    """The size the network paints at: the frame's divided by the brush scale, so that a style scale of
    2 paints strokes twice as large on the frame (the network's strokes have a fixed size in its pixels)."""
    width, height = frame_size
    factor = 1.0 / style_scale
    factor = max(factor, MIN_SIDE / min(width, height))
    factor = min(factor, (MAX_PIXELS / (width * height)) ** 0.5)
    return max(1, round(width * factor)), max(1, round(height * factor))


class FeedForwardStylizer:
    """The trained network with the clip's paintings encoded once."""

    def __init__(self, network: ArbitraryStyleNetwork, styles: list[np.ndarray], device: torch.device,
                 style_scale: float = 1.0, preserve_colors: bool = False):
        self.network = network
        self.device = device
        self.style_scale = style_scale
        self.preserve_colors = preserve_colors
        self.vectors = torch.cat([network.style_vector(to_unit(style, device)) for style in styles])  # (S, 100)

    def vector_for(self, weights: np.ndarray, content: torch.Tensor) -> torch.Tensor:
        """(1, 100): the frame's blend of the styles' vectors; toward the content's own where the
        strength (the weights' sum) is below 1."""
        weights = np.asarray(weights, dtype=np.float64)
        total = float(weights.sum())
        strength = min(1.0, total)
        mix = torch.as_tensor(weights / total if total > 0 else weights, dtype=torch.float32, device=self.device)
        vector = (mix[:, None] * self.vectors).sum(0, keepdim=True)
        if strength < 1.0:
            own = self.network.style_vector(content)
            vector = strength * vector + (1.0 - strength) * own
        return vector

    @torch.inference_mode()
    def stylize(self, content: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
        """content (1, 3, H, W) in [0, 1] -> the network's painting of it, same size, in [0, 1]."""
        height, width = content.shape[-2:]
        vector = self.vector_for(weights, content)
        size = network_size((width, height), self.style_scale)
        if size[0] < width:
            small = F.interpolate(content, size=(size[1], size[0]), mode="area")
        elif size[0] > width:
            small = F.interpolate(content, size=(size[1], size[0]), mode="bilinear", align_corners=False)
        else:
            small = content
        painted = self.network(small, vector)
        if size != (width, height):
            painted = F.interpolate(painted, size=(height, width), mode="bilinear", align_corners=False)
        return painted.clamp(0.0, 1.0)

    def finish(self, painted: torch.Tensor, content_rgb: np.ndarray) -> np.ndarray:
        """The output frame: uint8 RGB, with the content's colours put back when they are preserved."""
        rgb = np.clip(np.round(tensor_image(painted * 255.0)), 0, 255).astype(np.uint8)
        return color.recombine(rgb, content_rgb) if self.preserve_colors else rgb
