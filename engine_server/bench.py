"""Benchmark: per-frame vs temporal vs multipass, in one process, on the same frames.

    python -m engine_server.bench                                  # CPU-sized defaults
    python -m engine_server.bench --device cuda --size 1280x720     # the GPU table

Table 1, MPI-Sintel alley_1 (4 frames, ground-truth flow): e_stab (lower is steadier), seconds per
frame, first- and last-frame style loss, and peak GPU memory on CUDA. e_stab warps each output back
onto the previous frame with the ground-truth forward flow and compares on pixels visible in both:
the ground-truth occlusion map where Sintel provides one (pair 2->3), else pixels whose flow stays in
the frame and whose colour agrees after warping (photometric error < 12/255).
Table 2, style over a long shot: the temporal mode's style loss on the first and the last frame of a
longer real clip, next to a fresh per-frame run on those two frames alone. A fading style would show
as a last-frame ratio well above the first frame's.
Needs ../shared/data beside the project.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from .io.flowfiles import read_flo
from .io.frames import open_frames, read_image, resize
from .metrics import inside_mask, stability_error
from .motion.warp import warp_numpy
from .pipeline import StylizeOptions, Stylizer

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def scale_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = flow.shape[:2]
    known = np.all(np.abs(flow) < 1e9, axis=2)
    flow = np.where(known[..., None], flow, 0.0).astype(np.float32)
    resized = cv2.resize(flow, size, interpolation=cv2.INTER_LINEAR)
    resized[..., 0] *= size[0] / w
    resized[..., 1] *= size[1] / h
    return resized


def sintel(size: tuple[int, int] | None, width: int):
    folder = DATA / "flow" / "sintel_alley_1"
    frames = [read_image(folder / f"frame_{i:04d}.png") for i in range(1, 5)]
    if size is None:
        size = (width, round(frames[0].shape[0] * width / frames[0].shape[1]))
    frames = [resize(f, size) for f in frames]
    flows, masks = [], []
    for i in range(1, 4):
        flow = scale_flow(read_flo(folder / f"flow_{i:04d}_to_{i + 1:04d}.flo"), size)
        mask = inside_mask(flow)
        occlusion = folder / f"occlusion_{i:04d}_to_{i + 1:04d}.png"
        if occlusion.exists():
            occluded = cv2.resize(cv2.imread(str(occlusion), cv2.IMREAD_GRAYSCALE), size,
                                  interpolation=cv2.INTER_NEAREST) > 127
            mask *= ~occluded
        else:
            error = np.abs(frames[i - 1].astype(np.float32) - warp_numpy(frames[i], flow)).mean(axis=2)
            mask *= error < 12
        flows.append(flow)
        masks.append(mask)
    return frames, flows, masks, size


def run_mode(styles, frames, options: StylizeOptions):
    stylizer = Stylizer(styles, options)
    if stylizer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    results = sorted(stylizer.run(frames), key=lambda r: r.index)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if stylizer.device.type == "cuda" else None
    return results, seconds, peak


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def sintel_table(args, styles: list[str], common: dict) -> None:
    """Table 1: the three modes on the same Sintel frames, scored with ground-truth flow."""
    frames, flows, masks, size = sintel(args.size, args.width)
    modes = {
        "per-frame": StylizeOptions(mode="per-frame", **common),
        "temporal": StylizeOptions(mode="temporal", **common),
        "multipass": StylizeOptions(mode="multipass", device=args.device, passes=args.passes,
                                    iterations=args.pass_iterations),
    }
    rows = []
    for name, options in modes.items():
        results, seconds, peak = run_mode(styles, frames, options)
        e_stab = stability_error([r.image for r in results], flows, masks)
        row = [name, f"{e_stab:.4f}", f"{seconds / len(results):.2f}",
               f"{results[0].losses['style']:.4g}", f"{results[-1].losses['style']:.4g}"]
        if peak is not None:
            row.append(f"{peak:.0f}")
        rows.append(row)
        print(f"  {name}: done in {seconds:.1f} s", file=sys.stderr)
    header = ["mode", "e_stab", "s/frame", "style loss first", "style loss last"]
    if rows and len(rows[0]) > len(header):
        header.append("peak GPU MiB")
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(f"\nMPI-Sintel alley_1, 4 frames at {size[0]}x{size[1]}, device {device}, "
          f"iterations {args.first_iterations}/{args.iterations} (multipass {args.passes}x{args.pass_iterations}), "
          f"torch threads {torch.get_num_threads()}")
    print(table(rows, header))


def long_shot_table(args, styles: list[str], common: dict) -> None:
    """Table 2: does the temporal mode's style fade over a long shot?"""
    clip = open_frames(args.long_clip, args.long_width)
    count = min(args.long_frames, len(clip))
    long_frames = [clip[i] for i in range(count)]
    temporal, seconds, _ = run_mode(styles, long_frames, StylizeOptions(mode="temporal", **common))
    ends = [long_frames[0], long_frames[-1]]
    per_frame, _, _ = run_mode(styles, ends, StylizeOptions(mode="per-frame", **common))
    rows = []
    for label, ours, fresh in (("1", temporal[0], per_frame[0]), (str(count), temporal[-1], per_frame[1])):
        ratio = ours.losses["style"] / fresh.losses["style"]
        rows.append([label, f"{ours.losses['style']:.4g}", f"{fresh.losses['style']:.4g}", f"{ratio:.3f}"])
    change = temporal[-1].losses["style"] / temporal[0].losses["style"] - 1
    print(f"\nStyle over a long shot: {Path(args.long_clip).name}, {count} frames at "
          f"{clip.size[0]}x{clip.size[1]}, temporal mode {seconds / count:.2f} s/frame; "
          f"its style loss changed {100 * change:+.1f} % from frame 1 to frame {count}")
    print(table(rows, ["frame", "style loss, temporal", "style loss, per-frame on that frame alone",
                       "temporal / per-frame"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=224, help="processing width (CPU default 224)")
    parser.add_argument("--size", type=parse_size, help="exact processing size WxH, e.g. 1280x720")
    parser.add_argument("--iterations", type=int, default=75)
    parser.add_argument("--first-iterations", type=int, default=150)
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--pass-iterations", type=int, default=40)
    parser.add_argument("--style", default=str(DATA / "styles" / "starry_night.jpg"))
    parser.add_argument("--long-clip", default=str(DATA / "video" / "big_buck_bunny.mp4"))
    parser.add_argument("--long-frames", type=int, default=24)
    parser.add_argument("--long-width", type=int, default=160)
    parser.add_argument("--skip-long", action="store_true", help="leave out the long-shot table")
    parser.add_argument("--skip-sintel", action="store_true", help="leave out the Sintel table")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"error: the benchmark needs the shared test data at {DATA}", file=sys.stderr)
        return 2

    styles = [args.style]
    common = dict(device=args.device, iterations=args.iterations, first_iterations=args.first_iterations)
    if not args.skip_sintel:
        sintel_table(args, styles, common)
    if not args.skip_long:
        long_shot_table(args, styles, common)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
