"""The stylize options as command-line arguments: shared by ``stylize`` and ``submit``, so both take
the same options and mean the same by them."""
from __future__ import annotations

import argparse

from .options import INITS, MODES, PRECISIONS, SCHEDULES, StylizeOptions


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _distances(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of frame distances") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} needs frame distances >= 1")
    return values


def add_stylize_options(parser: argparse.ArgumentParser) -> None:
    """INPUT, --style, --out and the engine options: shared by ``stylize`` and ``submit``."""
    parser.add_argument("input", metavar="INPUT", help="video file, directory of images (name order) or glob")
    parser.add_argument("--style", action="append", required=True, metavar="IMAGE",
                        help="style image (repeatable)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--width", type=positive_int, metavar="PX",
                        help="processing width (default: frame width)")
    parser.add_argument("--iterations", type=positive_int, metavar="N",
                        help="iterations per later frame (multipass: per pass); default 1000 (multipass 100)")
    parser.add_argument("--first-iterations", type=positive_int, metavar="N",
                        help="iterations for the first frame (every frame in per-frame mode); "
                             "default 2x --iterations")
    parser.add_argument("--mode", choices=MODES, default="temporal",
                        help="temporal (Ruder et al., default), per-frame, multipass; fast: the feed-forward "
                             "network (Ghiasi et al.) stabilized along the flow, seconds for a whole strip; "
                             "fast-per-frame: the raw network on each frame")
    parser.add_argument("--schedule", choices=SCHEDULES, default="pyramid",
                        help="pyramid: coarse to fine, about 22 %% of the time of the flat run that the iteration "
                             "counts name (default); reference: the flat full-size schedule")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="VGG's arithmetic: bf16 (mixed precision, the default on CUDA) or fp32 "
                             "(the default on the CPU)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="CUDA: record each level's iteration once and replay it (fewer kernel launches; "
                             "off by default until measured on GPUs)")
    parser.add_argument("--style-keyframes", metavar="FILE.json", help="per style, {frame: weight} keyframes")
    parser.add_argument("--preserve-colors", action="store_true",
                        help="transfer luminance only, keep the content's colours")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=positive_int, default=15,
                        help="multipass: number of passes (default 15)")
    parser.add_argument("--flow", choices=("dis", "farneback", "raft"), default="dis",
                        help="optical flow method")
    parser.add_argument("--long-term", type=_distances, default=(1, 2, 4), metavar="J",
                        help="frame distances of the temporal constraints (default 1,2,4)")
    parser.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    parser.add_argument("--init", choices=INITS, default=StylizeOptions.init,
                        help="where the optimization starts on a shot's first frame (and, later, on the pixels "
                             "the flow cannot carry over): fast (the feed-forward network's painting, which "
                             "saves iterations; the default), content (the reference's start) or noise")
    parser.add_argument("--content-weight", type=float, default=5.0)
    parser.add_argument("--style-weight", type=float, default=1e2)
    parser.add_argument("--temporal-weight", type=float, default=1e3)
    parser.add_argument("--tv-weight", type=float, default=1e-3)
    parser.add_argument("--style-scale", type=float, default=1.0,
                        help="size of the painting's strokes: the style image's side relative to the frame's "
                             "(the reference's meaning; default 1)")
    parser.add_argument("--no-early-stop", action="store_true", help="always run every iteration")
    parser.add_argument("--resume", action="store_true",
                        help="keep frames already in DIR (frame_000001.png onwards) and continue after them")
    parser.add_argument("--video", metavar="OUT.mp4", help="also write the result as an mp4")
    parser.add_argument("--fps", type=float, default=24.0, help="frame rate of --video (default 24)")


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    """--ray and its options: ``stylize`` across the workers of a Ray cluster."""
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run the temporal mode across Ray workers: 'local' (a Ray runtime on this machine) or "
                             "a cluster's address (ray start --head prints it; 'auto' finds one on this machine)")
    parser.add_argument("--workers", type=positive_int, metavar="N",
                        help="--ray: workers (default: one per GPU of the cluster; on CPUs, 1)")
    parser.add_argument("--chunk-frames", type=positive_int, metavar="N",
                        help="--ray: frames per chunk of a long shot (default: each shot shared out over the workers)")
    parser.add_argument("--seam-frames", type=positive_int, metavar="N",
                        help="--ray: frames over which one chunk's chain hands over to the next one's (default 6)")


def options_from_args(args) -> StylizeOptions:
    return StylizeOptions(
        mode=args.mode, schedule=args.schedule, width=args.width, iterations=args.iterations, first_iterations=args.first_iterations,
        passes=args.passes, content_weight=args.content_weight, style_weight=args.style_weight,
        temporal_weight=args.temporal_weight, tv_weight=args.tv_weight, long_term=args.long_term,
        optimizer=args.optimizer, early_stop=not args.no_early_stop, init=args.init,
        style_scale=args.style_scale, preserve_colors=args.preserve_colors, flow=args.flow,
        device=args.device, seed=args.seed, precision=args.precision, cuda_graphs=args.cuda_graphs,
    )
