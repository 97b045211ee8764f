"""Seams between two chunks of one shot: the earlier chunk's chain runs on for a window of frames past the
seam, and over that window its frames (``carried``) hand over to the later chunk's own (``fresh``).

Two temporal chains of one shot are each steady, but they differ everywhere (their strokes started from
different frames), so cutting from one to the other shows a jump. Spread over w frames, each frame pair
carries 1/(w + 1) of it. A plain cross-fade would do that, but averaging two unrelated brush-stroke
textures halves their contrast: the window looks washed out. The blend here keeps the strokes' contrast:
the low frequencies (colour layout, which the chains share) are cross-faded, the high frequencies (the
strokes) are mixed and then scaled back to the local contrast the two chains have, as Heitz & Neyret's
variance-preserving blending of textures ("High-Performance By-Example Noise using a Histogram-Preserving
Blending Operator", HPG 2018). Where the chains agree the gain is 1 and this is a plain cross-fade.

``python -m engine_server.bench scale`` measures it: e_stab of the pairs across seams beside the pairs
inside chunks, and how far the window's frames are from the painting's style beside the chunks' frames.
"""
from __future__ import annotations

import cv2
import numpy as np

DEFAULT_WINDOW = 6          # frames past a seam the earlier chunk also runs
STROKE_FRACTION = 1 / 64    # the low-pass's sigma, in frame widths times the style scale (strokes scale so)
MAX_GAIN = 2.0              # contrast is restored up to this factor (two unrelated textures need sqrt(2))


def share(position: int, window: int) -> float:
    """How much of window frame ``position`` (0-based) the later chunk's chain decides."""
    return (position + 1) / (window + 1)


def stroke_sigma(width: int, style_scale: float = 1.0) -> float:
    return max(0.75, width * style_scale * STROKE_FRACTION)


def blend(carried: np.ndarray, fresh: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """(1 - alpha) of ``carried`` and alpha of ``fresh`` (HxWx3 uint8), strokes at full contrast."""
    a, b = carried.astype(np.float32), fresh.astype(np.float32)
    low_a, low_b = cv2.GaussianBlur(a, (0, 0), sigma), cv2.GaussianBlur(b, (0, 0), sigma)
    high_a, high_b = a - low_a, b - low_b
    mixed = (1.0 - alpha) * high_a + alpha * high_b

    def local_energy(high: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur((high * high).mean(axis=2), (0, 0), sigma)

    wanted = (1.0 - alpha) * local_energy(high_a) + alpha * local_energy(high_b)
    gain = np.sqrt(wanted / np.maximum(local_energy(mixed), 1e-6))
    gain = np.clip(gain, 1.0, MAX_GAIN)[..., None]
    out = (1.0 - alpha) * low_a + alpha * low_b + gain * mixed
    return np.clip(out, 0, 255).round().astype(np.uint8)


def repair(carried: np.ndarray, fresh: np.ndarray, position: int, window: int, style_scale: float = 1.0) -> np.ndarray:
    """The output of the seam window's frame ``position``, from both chains' outputs of that frame."""
    return blend(carried, fresh, share(position, window), stroke_sigma(carried.shape[1], style_scale))
