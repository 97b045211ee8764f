"""Per-frame style weights from keyframes.

A keyframes file maps each style to ``{frame: weight}`` with 1-based frame numbers (the numbers of the
output files). Between keys the weight is interpolated linearly; before the first key and after the
last the nearest key's weight holds. Styles the file does not mention keep weight 1.

    {"starry_night.jpg": {"1": 1.0, "48": 0.0}, "wave.jpg": {"1": 0.0, "48": 1.0}}

A style may be named by the path given on the command line, its file name, or its file name without
extension.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import InputError


def interpolate(keys: dict[int, float], frame_count: int) -> np.ndarray:
    """Weights for frames 1..frame_count from {frame: weight} keys."""
    if not keys:
        return np.ones(frame_count, dtype=np.float64)
    frames = sorted(keys)
    return np.interp(np.arange(1, frame_count + 1), frames, [keys[f] for f in frames])


def parse_keys(raw: object, where: str) -> dict[int, float]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{where}: expected a non-empty object {{frame: weight}}")
    keys = {}
    for frame, weight in raw.items():
        try:
            number = int(frame)
            value = float(weight)
        except (TypeError, ValueError):
            raise InputError(f"{where}: key {frame!r}: {weight!r} is not frame: weight") from None
        if number < 1 or not math.isfinite(value) or value < 0:
            raise InputError(f"{where}: key {frame!r}: {weight!r} needs a frame >= 1 and a weight >= 0")
        keys[number] = value
    return keys


def style_aliases(style: str) -> set[str]:
    path = Path(style)
    return {style, path.name, path.stem}


def load_style_weights(path: str | Path | None, styles: list[str], frame_count: int) -> np.ndarray:
    """(frame_count, len(styles)) weights from a keyframes JSON file (None: all weights 1)."""
    weights = np.ones((frame_count, len(styles)), dtype=np.float64)
    if path is None:
        return weights
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"--style-keyframes {path}: cannot read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"--style-keyframes {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"--style-keyframes {path}: expected an object {{style: {{frame: weight}}}}")
    for name, raw_keys in data.items():
        matches = [i for i, style in enumerate(styles) if name in style_aliases(style)]
        if not matches:
            raise InputError(f"--style-keyframes {path}: style {name!r} was not given with --style")
        keys = parse_keys(raw_keys, f"--style-keyframes {path}: style {name!r}")
        for index in matches:
            weights[:, index] = interpolate(keys, frame_count)
    return weights
