"""Forward-backward consistency check of optical flow: which pixels the temporal loss may trust.

A reimplementation of the reference checker of Ruder, Dosovitskiy & Brox (consistencyChecker.cpp in
manuelruder/artistic-videos), written from the facts in shared/REFERENCE.md and fitted to its outputs in
shared/data/ruder_example: it reproduces all eight example masks byte for byte.

For the checked flow w and the flow w^ in the other direction, at pixel p with q = p + w(p):
  * q's bilinear neighbourhood leaves the frame          -> 0
  * |w(p) + w^(q)|^2 >= 0.01 (|w(p)|^2 + |w^(q)|^2) + 0.5 -> -255 (occluded; negative so that the
    smoothing below spreads it outward instead of only softening its edge)
  * |grad u|^2 + |grad v|^2 > 0.01 |w(p)|^2 + 0.002       -> 0 (motion boundary)
  * otherwise                                            -> 255
then Gaussian smoothing (sigma 0.8) and clipping to 0..255.
"""
from __future__ import annotations

import numpy as np
import cv2

from ..io.flowfiles import PathLike, read_flo, write_pgm

OCCLUSION_REL = 0.01
OCCLUSION_ABS = 0.5
BOUNDARY_REL = 0.01
BOUNDARY_ABS = 0.002
SMOOTH_SIGMA = 0.8

# The reference's smoothing is documented as a recursive Gaussian, but its outputs match a sampled
# 5-tap Gaussian with mirrored borders (edge pixel repeated, OpenCV BORDER_REFLECT) exactly, which a
# recursive approximation does not (its wider kernel and border start-up cost ~1 grey level everywhere).
_SMOOTH_KERNEL = cv2.getGaussianKernel(5, SMOOTH_SIGMA).astype(np.float32)
# The reference writes its float mask by truncation, and its smoothing leaves fully reliable pixels a
# hair under 255 (they are stored as 254). Subtracting this before truncating writes the same bytes;
# every example mask allows any value in (0, 5.4e-4).
_TRUNCATION_BIAS = 2e-4


def _check_pair(flow: np.ndarray, flow_other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flow = np.asarray(flow, np.float32)
    flow_other = np.asarray(flow_other, np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be HxWx2, got shape {flow.shape}")
    if flow_other.shape != flow.shape:
        raise ValueError(f"flows differ in size: {flow.shape} and {flow_other.shape}")
    return flow, flow_other


def unsmoothed_reliability(flow: np.ndarray, flow_other: np.ndarray) -> np.ndarray:
    """The check before smoothing: float32 HxW of -255 (occluded), 0 (outside / motion boundary), 255."""
    flow, flow_other = _check_pair(flow, flow_other)
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    qx = xs + flow[..., 0]
    qy = ys + flow[..., 1]
    x0 = np.floor(qx)
    y0 = np.floor(qy)
    inside = (x0 >= 0) & (x0 + 1 < w) & (y0 >= 0) & (y0 + 1 < h)

    # Bilinear sample of the other flow at q from its four neighbours (clamped so the gather is valid
    # everywhere; pixels outside are overwritten below). Not cv2.remap: its weights are quantized to 1/32.
    x0 = np.clip(x0, 0, w - 2)
    y0 = np.clip(y0, 0, h - 2)
    ax = (qx - x0)[..., None]
    ay = (qy - y0)[..., None]
    idx = y0.astype(np.intp) * w + x0.astype(np.intp)
    other = flow_other.reshape(-1, 2)
    top = (1 - ax) * other[idx] + ax * other[idx + 1]
    bottom = (1 - ax) * other[idx + w] + ax * other[idx + w + 1]
    back = (1 - ay) * top + ay * bottom

    sq_flow = np.einsum("ijk,ijk->ij", flow, flow)
    sq_back = np.einsum("ijk,ijk->ij", back, back)
    round_trip = flow + back
    occluded = np.einsum("ijk,ijk->ij", round_trip, round_trip) >= OCCLUSION_REL * (sq_flow + sq_back) + OCCLUSION_ABS

    # Central differences [-0.5, 0, 0.5]; at the frame edge the edge pixel is repeated.
    kernel = np.array([[-0.5, 0.0, 0.5]], np.float32)
    dx = cv2.filter2D(flow, -1, kernel, borderType=cv2.BORDER_REFLECT)
    dy = cv2.filter2D(flow, -1, kernel.T, borderType=cv2.BORDER_REFLECT)
    grad = np.einsum("ijk,ijk->ij", dx, dx) + np.einsum("ijk,ijk->ij", dy, dy)
    boundary = grad > BOUNDARY_REL * sq_flow + BOUNDARY_ABS

    out = np.full((h, w), 255.0, np.float32)
    out[boundary] = 0.0
    out[occluded] = -255.0  # occlusion wins over a motion boundary, as in the reference
    out[~inside] = 0.0
    return out


def reliability(flow: np.ndarray, flow_other: np.ndarray) -> np.ndarray:
    """Reliability of `flow` checked against `flow_other` (the opposite direction): float32 HxW, 0..255."""
    raw = unsmoothed_reliability(flow, flow_other)
    smooth = cv2.sepFilter2D(raw, -1, _SMOOTH_KERNEL, _SMOOTH_KERNEL, borderType=cv2.BORDER_REFLECT)
    return np.clip(smooth, 0.0, 255.0, out=smooth)


def certainty(flow: np.ndarray, flow_other: np.ndarray) -> np.ndarray:
    """Per-pixel weight in [0, 1] for the temporal loss: reliability / 255."""
    return reliability(flow, flow_other) * np.float32(1.0 / 255.0)


def to_uint8(reliability_map: np.ndarray) -> np.ndarray:
    """The 8-bit mask the reference writes for a reliability map (truncation; fully reliable -> 254)."""
    return np.clip(np.floor(reliability_map - _TRUNCATION_BIAS), 0, 255).astype(np.uint8)


def check_files(flow_a_path: PathLike, flow_b_path: PathLike, out_pgm_path: PathLike) -> np.ndarray:
    """Check flow A against flow B and write A's mask as PGM, like the reference
    `consistencyChecker backward_j_i.flo forward_i_j.flo reliable_j_i.pgm`. Returns the uint8 mask."""
    flow_a = read_flo(flow_a_path)
    flow_b = read_flo(flow_b_path)
    if flow_a.shape != flow_b.shape:
        raise ValueError(
            f"{flow_b_path}: flow size {flow_b.shape[1]}x{flow_b.shape[0]} differs from "
            f"{flow_a_path}: {flow_a.shape[1]}x{flow_a.shape[0]}"
        )
    mask = to_uint8(reliability(flow_a, flow_b))
    write_pgm(out_pgm_path, mask)
    return mask
