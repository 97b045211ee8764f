"""Style targets: each painting's Gram matrices, computed once, blended per frame by its weights.

Blending Gram matrices (rather than images) makes a keyframed move from one painting to another a
smooth path through style space. The blend is normalized by the sum of the weights; the style term's
strength is min(1, sum): one style keyed from 0 to 1 fades in, two styles crossfading keep their
strength, two styles both at 1 are an even mix at full strength.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import color
from ..io.frames import resize
from .losses import gram
from .vgg import STYLE_LAYERS, VGG19Features


def image_tensor(rgb: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """HxWx3 (uint8 or float, 0..255) -> (1, 3, H, W) float32 tensor on ``device``."""
    array = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1))
    return torch.from_numpy(array).unsqueeze(0).to(device)


def tensor_image(tensor: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) tensor in pixel units -> HxWx3 float32 numpy array."""
    return tensor.detach()[0].permute(1, 2, 0).float().cpu().numpy()


def scale_to_area(style: np.ndarray, area: float) -> np.ndarray:
    """Rescale the style image to ``area`` pixels, keeping its aspect ratio."""
    h, w = style.shape[:2]
    factor = math.sqrt(area / (h * w))
    return resize(style, (max(16, round(w * factor)), max(16, round(h * factor))))


NETWORK_STYLE_PIXELS = 1024 * 1024  # the feed-forward predictor sees a 256 px square: keep 4x that


def style_pixels_needed(frame_size: tuple[int, int], style_scale: float, optimized: bool, network: bool) -> int:
    """The most pixels of a painting a job can use: the optimization sizes it to the frame's area times
    style_scale squared, the feed-forward network needs NETWORK_STYLE_PIXELS."""
    optimization = frame_size[0] * frame_size[1] * style_scale ** 2 if optimized else 0
    return max(round(optimization), NETWORK_STYLE_PIXELS if network else 0, 16 * 16)


def fit_style(style: np.ndarray, pixels: int) -> np.ndarray:
    """A painting no larger than ``pixels`` (area-averaged down, never up), so a 40-megapixel scan costs a
    job what its frames need and no more."""
    h, w = style.shape[:2]
    return scale_to_area(style, pixels) if h * w > pixels else style


class StyleTargets:
    def __init__(
        self,
        styles: list[np.ndarray],
        vgg: VGG19Features,
        frame_size: tuple[int, int],
        device: torch.device | str,
        style_scale: float = 1.0,
        luminance_of: np.ndarray | None = None,
    ):
        """``luminance_of``: a content frame whose luminance statistics grey styles are matched to
        (colour preservation); None keeps the styles' colours."""
        self.grams: list[dict[str, torch.Tensor]] = []
        # The reference sizes the style like the content frame, its side times style_scale (so its area
        # times style_scale squared): 0.5 makes the painting's strokes half as large on the frame.
        area = frame_size[0] * frame_size[1] * style_scale ** 2
        with torch.no_grad():
            for style in styles:
                scaled = scale_to_area(style, area)
                if luminance_of is not None:
                    scaled = color.style_as_grey(scaled, luminance_of)
                feats = vgg(image_tensor(scaled, device), STYLE_LAYERS)
                self.grams.append({layer: gram(feats[layer]) for layer in STYLE_LAYERS})

    def blend(self, weights: np.ndarray) -> tuple[dict[str, torch.Tensor], float]:
        """(blended Gram targets, strength) for one frame's style weights."""
        weights = np.asarray(weights, dtype=np.float64)
        total = float(weights.sum())
        if total <= 0:
            return {}, 0.0
        mix = weights / total
        blended = {
            layer: sum(float(m) * g[layer] for m, g in zip(mix, self.grams) if m > 0) for layer in STYLE_LAYERS
        }
        return blended, min(1.0, total)
