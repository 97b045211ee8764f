"""`make demo`: stylize a short clip offline on the CPU with the embedded engine, in a few minutes.

Everything comes from installed packages, nothing is downloaded: the clip is a camera panning and
zooming over scikit-image's photograph of Chelsea the cat, and the styles are two of its textures
(a stained tissue sample and a brick wall) keyframed to crossfade over the clip. The run goes
through the same code path as ``python -m engine_server stylize`` and writes, under ``--out``:
``input/`` (the clip), ``styles/``, ``keyframes.json``, ``stylized/frame_*.png``, ``stylized/report.json``,
``input.mp4`` and ``stylized.mp4``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from . import cli
from .io.frames import write_frame, write_video


def camera_clip(photo: np.ndarray, frames: int, size: tuple[int, int]) -> list[np.ndarray]:
    """A virtual camera moving over a photo: pan left to right while zooming in slightly."""
    h, w = photo.shape[:2]
    out_w, out_h = size
    clip = []
    for t in np.linspace(0.0, 1.0, frames):
        zoom = 1.0 + 0.15 * t
        crop_w = w * 0.7 / zoom
        crop_h = crop_w * out_h / out_w
        cx = crop_w / 2 + (w - crop_w) * (0.2 + 0.6 * t)
        cy = h / 2 - 0.05 * h * t
        scale = out_w / crop_w
        matrix = np.array([[scale, 0, out_w / 2 - cx * scale], [0, scale, out_h / 2 - cy * scale]])
        clip.append(cv2.warpAffine(photo, matrix, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))
    return clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="output folder (default out/)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--iterations", type=int, default=40, help="per later frame (default 40)")
    parser.add_argument("--first-iterations", type=int, default=100)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    try:
        import skimage.data
    except ImportError:
        print("error: the demo needs scikit-image (pip install scikit-image)", file=sys.stderr)
        return 2

    out = Path(args.out)
    size = (args.width, int(round(args.width * 2 / 3)))
    clip = camera_clip(skimage.data.chelsea(), args.frames, size)
    for i, frame in enumerate(clip, start=1):
        write_frame(out / "input", i, frame)
    write_video(clip, out / "input.mp4", fps=12)

    styles = {"tissue": skimage.data.immunohistochemistry(), "brick": skimage.data.brick()}
    style_paths = []
    for name, image in styles.items():
        path = out / "styles" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        style_paths.append(str(path))
    keyframes = {"tissue": {"1": 1.0, str(args.frames): 0.0}, "brick": {"1": 0.0, str(args.frames): 1.0}}
    (out / "keyframes.json").write_text(json.dumps(keyframes, indent=2))

    print(f"stylizing {args.frames} frames at {size[0]}x{size[1]} on the CPU/GPU ({args.device}); "
          f"{args.first_iterations} iterations for the first frame, {args.iterations} for the others",
          file=sys.stderr)
    argv = [
        "stylize", str(out / "input"), "--out", str(out / "stylized"),
        "--style", style_paths[0], "--style", style_paths[1],
        "--style-keyframes", str(out / "keyframes.json"),
        "--iterations", str(args.iterations), "--first-iterations", str(args.first_iterations),
        "--device", args.device, "--video", str(out / "stylized.mp4"), "--fps", "12",
    ]
    code = cli.main(argv)
    if code == 0:
        print(f"demo done: {out / 'stylized'} (frames, report.json) and {out / 'stylized.mp4'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
