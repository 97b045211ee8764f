"""Command line: ``python -m engine_server stylize|consistency|serve|submit|keygen ...``.

Exit codes: 0 success, 2 bad input (one line on stderr naming the argument or file), 130 interrupted
(frames finished so far are kept, and ``--resume`` continues after them).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .errors import InputError
from .flow import FlowBackendUnavailable
from .frames import (finished_frames, frame_filename, open_frames, read_image, write_atomic, write_frame,
                     write_video)
from .keyframes import load_style_weights
from .pipeline import MODES, Progress, StylizeOptions, Stylizer
from .vgg import WeightsUnavailable


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
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
    parser.add_argument("--width", type=_positive_int, metavar="PX",
                        help="processing width (default: frame width)")
    parser.add_argument("--iterations", type=_positive_int, metavar="N",
                        help="iterations per later frame (multipass: per pass); default 1000 (multipass 100)")
    parser.add_argument("--first-iterations", type=_positive_int, metavar="N",
                        help="iterations for the first frame (every frame in per-frame mode); "
                             "default 2x --iterations")
    parser.add_argument("--mode", choices=MODES, default="temporal")
    parser.add_argument("--style-keyframes", metavar="FILE.json", help="per style, {frame: weight} keyframes")
    parser.add_argument("--preserve-colors", action="store_true",
                        help="transfer luminance only, keep the content's colours")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=_positive_int, default=15,
                        help="multipass: number of passes (default 15)")
    parser.add_argument("--flow", choices=("dis", "farneback", "raft"), default="dis",
                        help="optical flow method")
    parser.add_argument("--long-term", type=_distances, default=(1, 2, 4), metavar="J",
                        help="frame distances of the temporal constraints (default 1,2,4)")
    parser.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    parser.add_argument("--init", choices=("content", "noise"), default="content",
                        help="first-frame initialization")
    parser.add_argument("--content-weight", type=float, default=5.0)
    parser.add_argument("--style-weight", type=float, default=1e2)
    parser.add_argument("--temporal-weight", type=float, default=1e3)
    parser.add_argument("--tv-weight", type=float, default=1e-3)
    parser.add_argument("--style-scale", type=float, default=1.0)
    parser.add_argument("--no-early-stop", action="store_true", help="always run every iteration")
    parser.add_argument("--resume", action="store_true",
                        help="keep frames already in DIR (frame_000001.png onwards) and continue after them")
    parser.add_argument("--video", metavar="OUT.mp4", help="also write the result as an mp4")
    parser.add_argument("--fps", type=float, default=24.0, help="frame rate of --video (default 24)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine_server", description="Temporally consistent video style transfer.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("stylize", help="stylize a video, folder of frames or glob",
                       description="Stylize INPUT with one or more style images; writes DIR/frame_000001.png ... "
                                   "and DIR/report.json.")
    add_stylize_options(s)

    c = sub.add_parser("consistency", help="reference consistency check of two .flo flows",
                       description="Write the certainty mask of FLOW_A checked against FLOW_B (0..255 PGM), "
                                   "as the reference consistencyChecker.")
    c.add_argument("flow_a", metavar="FLOW_A.flo")
    c.add_argument("flow_b", metavar="FLOW_B.flo")
    c.add_argument("out", metavar="OUT.pgm")

    from . import keys, server, submit  # the engine server's commands live in their own modules

    server.add_parser(sub)
    submit.add_parser(sub, add_stylize_options)
    keys.add_parser(sub)
    return parser


def options_from_args(args) -> StylizeOptions:
    return StylizeOptions(
        mode=args.mode, width=args.width, iterations=args.iterations, first_iterations=args.first_iterations,
        passes=args.passes, content_weight=args.content_weight, style_weight=args.style_weight,
        temporal_weight=args.temporal_weight, tv_weight=args.tv_weight, long_term=args.long_term,
        optimizer=args.optimizer, early_stop=not args.no_early_stop, init=args.init,
        style_scale=args.style_scale, preserve_colors=args.preserve_colors, flow=args.flow,
        device=args.device, seed=args.seed,
    )


class ProgressBar:
    """tqdm bar over frames (frame-passes in multipass) with the current loss."""

    def __init__(self, total: int, initial: int, unit: str):
        self.bar = tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, dynamic_ncols=True)
        self.current = None

    def __call__(self, event: Progress) -> None:
        if event.stage == "optimize":
            key = (event.pass_index, event.frame)
            if self.current is not None and key != self.current:
                self.bar.update(1)
            self.current = key
            self.bar.set_postfix_str(f"frame {event.frame}/{event.frame_count} it {event.iteration} "
                                     f"loss {event.loss:.4g}", refresh=False)
        elif event.stage == "done":
            self.bar.update(self.bar.total - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def run_stylize(args) -> int:
    options = options_from_args(args)
    out_dir = Path(args.out)
    source = open_frames(args.input, options.width)
    weights = load_style_weights(args.style_keyframes, args.style, len(source))
    stylizer = Stylizer(args.style, options)
    done = {}
    if args.resume:
        for index in range(1, finished_frames(out_dir, len(source)) + 1):
            done[index] = read_image(out_dir / frame_filename(index), "finished frame")
    report = {"input": str(args.input), "styles": list(args.style), "frame_count": len(source),
              "size": list(source.size), **stylizer.describe(), "status": "running", "frames": []}
    report_path = out_dir / "report.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    if done and report_path.exists():
        previous = json.loads(report_path.read_text()).get("frames", [])
        report["frames"] = [f for f in previous if f.get("index", 0) in done]
    passes = options.passes if options.mode == "multipass" else 1
    bar = ProgressBar(len(source) * passes, 0 if options.mode == "multipass" else len(done),
                      "frame-pass" if passes > 1 else "frame")
    stylizer.progress = bar
    started = time.perf_counter()
    images = dict(done)
    try:
        for result in stylizer.run(source, weights, done):
            write_frame(out_dir, result.index, result.image)
            images[result.index] = result.image
            report["frames"].append({"index": result.index, "seconds": round(result.seconds, 3),
                                     "iterations": result.iterations,
                                     "losses": {k: float(v) for k, v in result.losses.items()}})
            write_report(report_path, report)
        report["status"] = "done"
    except KeyboardInterrupt:
        report["status"] = "interrupted"
        print(f"interrupted: {len(images)} finished frames kept in {out_dir} (--resume continues)", file=sys.stderr)
        return 130
    finally:
        bar.close()
        report["seconds"] = round(time.perf_counter() - started, 3)
        report["frames"].sort(key=lambda f: f["index"])
        write_report(report_path, report)
    if args.video:
        write_video([images[i] for i in sorted(images)], args.video, args.fps)
    print(f"wrote {len(images)} frames to {out_dir}", file=sys.stderr)
    return 0


def write_report(path: Path, report: dict) -> None:
    write_atomic(path, json.dumps(report, indent=2).encode())


def run_consistency(args) -> int:
    from .consistency import check_files

    check_files(args.flow_a, args.flow_b, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "keygen", "submit"):
        from . import keys, server, submit

        return {"serve": server.run_serve, "keygen": keys.run_keygen, "submit": submit.run_submit}[args.command](args)
    try:
        if args.command == "stylize":
            return run_stylize(args)
        return run_consistency(args)
    except (InputError, WeightsUnavailable, FlowBackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        if args.command == "consistency":  # unreadable or mismatched .flo files
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
