"""Colour preservation: transfer the style's luminance only and keep the content's colours.

Gatys et al., "Preserving Color in Neural Artistic Style Transfer" (2016), luminance-only variant:
the optimization runs on grey images (content luminance; style luminance matched to the content's
mean and spread), and the result's luminance is recombined with the content frame's chrominance.
"""
from __future__ import annotations

import numpy as np

# YIQ (NTSC): Y is luminance, I and Q carry the colour.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32) @ _RGB_TO_YIQ[0].astype(np.float32)


def grey_rgb(y: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(y, 0, 255)[..., None], 3, axis=2).astype(np.float32)


def content_as_grey(rgb: np.ndarray) -> np.ndarray:
    """The content frame as the optimization sees it with colours preserved."""
    return grey_rgb(luminance(rgb))


def style_as_grey(style_rgb: np.ndarray, content_rgb: np.ndarray) -> np.ndarray:
    """Style luminance with the content's mean and standard deviation, as a grey RGB image."""
    ys, yc = luminance(style_rgb), luminance(content_rgb)
    matched = (ys - ys.mean()) * (yc.std() / max(float(ys.std()), 1e-6)) + yc.mean()
    return grey_rgb(matched)


def recombine(result_rgb: np.ndarray, content_rgb: np.ndarray) -> np.ndarray:
    """Luminance of the stylized result + I and Q of the content frame -> uint8 RGB."""
    yiq = np.asarray(content_rgb, dtype=np.float64) @ _RGB_TO_YIQ.T
    yiq[..., 0] = luminance(result_rgb)
    return np.clip(yiq @ _YIQ_TO_RGB.T, 0, 255).round().astype(np.uint8)
