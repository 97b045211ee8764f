"""Benchmark: per-frame vs temporal vs multipass, in one process, on the same frames.

    python -m engine_server.bench modes                                  # CPU-sized defaults
    python -m engine_server.bench modes --device cuda --size 1280x720     # the GPU table

Table 1, MPI-Sintel alley_1 (4 frames, ground-truth flow): e_stab (lower is steadier), seconds per
frame, first- and last-frame style loss, and peak GPU memory on CUDA. e_stab warps each output back
onto the previous frame with the ground-truth forward flow and compares on pixels visible in both:
the ground-truth occlusion map where Sintel provides one (pair 2->3), else pixels whose flow stays in
the frame and whose colour agrees after warping (photometric error < 12/255).
Table 2, style over a long shot: the temporal mode's style loss on the first and the last frame of a
longer real clip, next to a fresh per-frame run on those two frames alone. A fading style would show
as a last-frame ratio well above the first frame's.
Table 3, style on fast motion: a handheld clip taken every k-th frame, so that much of each frame is
new (the untrusted share is 1 - the mean short-term certainty). Each frame's style loss in the temporal
mode beside a per-frame run of the same frame from scratch; the goal is at most 1.10.
Needs ../shared/data beside the project.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..io.frames import open_frames
from ..metrics import stability_error
from ..motion.flow import make_flow
from ..motion.temporal import pair_flow
from ..options import INITS
from ..pipeline import StylizeOptions
from .common import DATA, parse_size, run_mode, sintel, table

def sintel_table(args, styles: list[str], common: dict) -> None:
    """Table 1: the three modes on the same Sintel frames, scored with ground-truth flow."""
    frames, flows, masks, size = sintel(args.size, args.width)
    modes = {
        "per-frame": StylizeOptions(mode="per-frame", **common),
        "temporal": StylizeOptions(mode="temporal", **common),
        "multipass": StylizeOptions(mode="multipass", device=args.device, passes=args.passes,
                                    iterations=args.pass_iterations, init=args.init),
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
          f"init {args.init}, torch threads {torch.get_num_threads()}")
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


def fast_motion_table(args, styles: list[str], common: dict) -> None:
    """Table 3: is the temporal mode as stylized as per-frame where the flow carries little over?"""
    clip = open_frames(args.fast_clip, args.fast_width)
    picked = range(0, min(len(clip), args.fast_stride * args.fast_frames), args.fast_stride)
    frames = [clip[i] for i in picked]
    flow = make_flow("dis")
    untrusted = [pair_flow(flow, a, b).untrusted_share for a, b in zip(frames, frames[1:])]
    temporal, temporal_s, _ = run_mode(styles, frames, StylizeOptions(mode="temporal", **common))
    per_frame, per_frame_s, _ = run_mode(styles, frames, StylizeOptions(mode="per-frame", **common))
    rows, ratios = [], []
    for i, (ours, fresh) in enumerate(zip(temporal, per_frame)):
        ratio = ours.losses["style"] / fresh.losses["style"]
        if i:
            ratios.append(ratio)
        rows.append([str(i + 1), f"{untrusted[i - 1]:.2f}" if i else "-", f"{ours.iterations}",
                     f"{ours.losses['style']:.4g}", f"{fresh.losses['style']:.4g}", f"{ratio:.3f}"])
    count = len(frames)
    print(f"\nStyle on fast motion: {Path(args.fast_clip).name}, one frame in {args.fast_stride}, {count} "
          f"frames at {clip.size[0]}x{clip.size[1]}, iterations {args.first_iterations}/{args.iterations}, init {args.init}; "
          f"temporal {temporal_s / count:.2f} s/frame, per-frame {per_frame_s / count:.2f}; later frames' "
          f"temporal / per-frame style loss: mean {sum(ratios) / len(ratios):.3f}, worst {max(ratios):.3f} "
          f"(goal <= 1.10)")
    print(table(rows, ["frame", "untrusted share", "temporal iterations", "style loss, temporal",
                       "style loss, per-frame", "temporal / per-frame"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_server.bench modes", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=224, help="processing width (CPU default 224)")
    parser.add_argument("--size", type=parse_size, help="exact processing size WxH, e.g. 1280x720")
    parser.add_argument("--iterations", type=int, default=75)
    parser.add_argument("--first-iterations", type=int, default=150)
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--pass-iterations", type=int, default=40)
    parser.add_argument("--style", default=str(DATA / "styles" / "starry_night.jpg"))
    parser.add_argument("--init", choices=INITS, default=StylizeOptions.init,
                        help=f"as stylize's --init (default {StylizeOptions.init})")
    parser.add_argument("--long-clip", default=str(DATA / "video" / "big_buck_bunny.mp4"))
    parser.add_argument("--long-frames", type=int, default=24)
    parser.add_argument("--long-width", type=int, default=160)
    parser.add_argument("--fast-clip", default=str(DATA / "video" / "cup.mp4"))
    parser.add_argument("--fast-stride", type=int, default=6, help="take every k-th frame of --fast-clip")
    parser.add_argument("--fast-frames", type=int, default=6)
    parser.add_argument("--fast-width", type=int, default=192)
    parser.add_argument("--skip-long", action="store_true", help="leave out the long-shot table")
    parser.add_argument("--skip-fast", action="store_true", help="leave out the fast-motion table")
    parser.add_argument("--skip-sintel", action="store_true", help="leave out the Sintel table")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"error: the benchmark needs the shared test data at {DATA}", file=sys.stderr)
        return 2

    styles = [args.style]
    common = dict(device=args.device, iterations=args.iterations, first_iterations=args.first_iterations,
                  init=args.init)
    if not args.skip_sintel:
        sintel_table(args, styles, common)
    if not args.skip_long:
        long_shot_table(args, styles, common)
    if not args.skip_fast:
        fast_motion_table(args, styles, common)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
