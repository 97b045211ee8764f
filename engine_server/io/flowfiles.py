"""Read and write optical flow (Middlebury .flo) and masks (binary PGM).

Both formats are what the reference pipeline (DeepFlow + consistencyChecker) exchanges, so files written
here can be compared byte for byte with its outputs.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FLO_TAG = b"PIEH"  # the float32 202021.25, little-endian
_MAX_SIDE = 1 << 16  # anything larger is a corrupt header, not a video frame

PathLike = str | os.PathLike


def read_flo(path: PathLike) -> np.ndarray:
    """Return the flow in a Middlebury .flo file as float32 HxWx2 (u, v)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 12:
        raise ValueError(f"{path}: too short for a .flo header ({len(data)} bytes)")
    if data[:4] != FLO_TAG:
        raise ValueError(f"{path}: not a .flo file (tag {data[:4]!r}, expected {FLO_TAG!r})")
    width, height = (int(v) for v in np.frombuffer(data, "<i4", count=2, offset=4))
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise ValueError(f"{path}: absurd flow size {width}x{height}")
    expected = 12 + width * height * 2 * 4
    if len(data) < expected:
        raise ValueError(f"{path}: truncated .flo, {len(data)} bytes for {width}x{height} (needs {expected})")
    flow = np.frombuffer(data, "<f4", count=width * height * 2, offset=12)
    return flow.reshape(height, width, 2).astype(np.float32)  # astype copies: writable, native order


def write_flo(path: PathLike, flow: np.ndarray) -> None:
    """Write an HxWx2 (u, v) flow as a Middlebury .flo file."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be HxWx2, got shape {flow.shape}")
    height, width = flow.shape[:2]
    header = FLO_TAG + np.array([width, height], "<i4").tobytes()
    Path(path).write_bytes(header + np.ascontiguousarray(flow, "<f4").tobytes())


def read_pgm(path: PathLike) -> np.ndarray:
    """Return a binary (P5) 8-bit PGM as uint8 HxW."""
    path = Path(path)
    data = path.read_bytes()
    # Header: magic, width, height, maxval, separated by whitespace, '#' comments allowed; then a
    # single whitespace byte before the raster.
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            end = data.find(b"\n", pos)
            pos = len(data) if end < 0 else end + 1
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ValueError(f"{path}: truncated PGM header")
        fields.append(data[start:pos])
    pos += 1
    if fields[0] != b"P5":
        raise ValueError(f"{path}: not a binary PGM (magic {fields[0]!r}, expected b'P5')")
    try:
        width, height, maxval = (int(f) for f in fields[1:])
    except ValueError:
        raise ValueError(f"{path}: bad PGM header {fields!r}") from None
    if maxval != 255:
        raise ValueError(f"{path}: only 8-bit PGM (maxval 255) is supported, got maxval {maxval}")
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise ValueError(f"{path}: absurd PGM size {width}x{height}")
    if len(data) - pos < width * height:
        raise ValueError(f"{path}: truncated PGM, {len(data) - pos} raster bytes for {width}x{height}")
    return np.frombuffer(data, np.uint8, count=width * height, offset=pos).reshape(height, width).copy()


def write_pgm(path: PathLike, mask: np.ndarray) -> None:
    """Write a uint8 HxW mask as binary PGM, with the same header layout as the reference checker."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8 HxW, got {mask.dtype} {mask.shape}")
    height, width = mask.shape
    Path(path).write_bytes(b"P5\n%d %d\n255\n" % (width, height) + np.ascontiguousarray(mask).tobytes())
