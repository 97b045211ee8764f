"""Command line: ``python -m engine_server stylize|consistency|serve|submit|keygen ...``.

Exit codes: 0 success, 2 bad input (one line on stderr naming the argument or file), 130 interrupted
(frames finished so far are kept, and ``--resume`` continues after them).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from .arguments import Parser, add_scale_options, add_stylize_options, options_from_args
from .errors import FlowBackendUnavailable, InputError, OutOfMemory, WeightsUnavailable, WorkerLost
from .io.frames import finished_frames, frame_filename, open_frames, read_image, write_frame, write_video
from .io.report import write_report
from .scale.staging import Staging
from .serve import keys, operator, server, submit  # the engine server's commands live with the service
from .style.keyframes import load_style_weights

if TYPE_CHECKING:
    from .pipeline import Progress


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m engine_server", description="Temporally consistent video style transfer.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("stylize", help="stylize a video, folder of frames or glob",
                       description="Stylize INPUT with one or more style images; writes DIR/frame_000001.png ... "
                                   "and DIR/report.json.")
    add_stylize_options(s)
    add_scale_options(s)

    c = sub.add_parser("consistency", help="reference consistency check of two .flo flows",
                       description="Write the certainty mask of FLOW_A checked against FLOW_B (0..255 PGM), "
                                   "as the reference consistencyChecker.")
    c.add_argument("flow_a", metavar="FLOW_A.flo")
    c.add_argument("flow_b", metavar="FLOW_B.flo")
    c.add_argument("out", metavar="OUT.pgm")

    server.add_parser(sub)
    submit.add_parser(sub, add_stylize_options)
    keys.add_parser(sub)
    operator.add_parser(sub)
    return parser


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
            loss = "" if event.loss is None else f" loss {event.loss:.4g}"
            self.bar.set_postfix_str(f"frame {event.frame}/{event.frame_count} it {event.iteration}{loss}",
                                     refresh=False)
        elif event.stage == "stylize" and event.iterations > 1:  # a scale-out run: work over all workers
            self.bar.n = min(self.bar.total, event.frame - 1)  # frames' worth of work done, whole ones
            self.bar.refresh()
        elif event.stage == "stylize":  # the fast modes: one event per finished frame
            self.bar.update(1)
            self.current = None
        elif event.stage == "done":
            self.bar.update(self.bar.total - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def run_stylize(args) -> int:
    # torch loads here: the other commands start without it
    from .pipeline import MULTIPASS_STATE, Stylizer, images_to_resume

    options = options_from_args(args)
    if args.ray and options.mode != "temporal":
        raise InputError(f"--ray runs the temporal mode; --mode {options.mode} runs on one machine (leave out --ray)")
    for name in ("workers", "chunk_frames", "seam_frames"):
        if getattr(args, name) is not None and not args.ray:
            raise InputError(f"--{name.replace('_', '-')} shares a run out over Ray workers: it needs --ray ADDRESS")
    out_dir = Path(args.out)
    source = open_frames(args.input, options.width)
    weights = load_style_weights(args.style_keyframes, args.style, len(source))
    if args.ray:
        from .scale.cluster import ClusterStylizer  # Ray is imported only when asked for

        if not args.resume:  # frames staged by an earlier run are only taken up by --resume
            Staging(out_dir / ClusterStylizer.STAGING_FOLDER).remove()
        stylizer = ClusterStylizer(args.style, options, address=args.ray, workers=args.workers,
                                   chunk_frames=args.chunk_frames, staging=out_dir / ClusterStylizer.STAGING_FOLDER,
                                   **({"window": args.seam_frames} if args.seam_frames else {}))
    else:
        stylizer = Stylizer(args.style, options)
        stylizer.scratch_dir = out_dir  # multipass keeps its clip state beside the frames, on the same disk
        if not args.resume:  # a state an interrupted multipass run left is only taken up by --resume
            shutil.rmtree(out_dir / MULTIPASS_STATE, ignore_errors=True)
    done = {}  # finished frames; only the few whose images the run reads are loaded (None: not read)
    if args.resume:
        finished = range(1, finished_frames(out_dir, len(source)) + 1)
        needed = images_to_resume(options, finished, len(source))
        done = {i: read_image(out_dir / frame_filename(i), "finished frame") if i in needed else None
                for i in finished}
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
    if args.ray:
        bar.bar.n = 0  # its events count the work of all workers, finished frames included
    stylizer.progress = bar
    started = time.perf_counter()
    finished = set(done)
    try:
        for result in stylizer.run(source, weights, done):
            write_frame(out_dir, result.index, result.image)
            finished.add(result.index)
            report["frames"].append({"index": result.index, "seconds": round(result.seconds, 3),
                                     "iterations": result.iterations, "schedule": result.schedule,
                                     "levels": result.levels, "cut": result.cut,
                                     "losses": {k: float(v) for k, v in result.losses.items()}})
            if result.cut:
                report["cuts"] = sorted({*report.get("cuts", []), result.index})
            write_report(report_path, report)
        report["status"] = "done"
    except KeyboardInterrupt:
        report["status"] = "interrupted"
        print(f"interrupted: {len(finished)} finished frames kept in {out_dir} (--resume continues)", file=sys.stderr)
        return 130
    finally:
        bar.close()
        if args.ray:
            try:
                stylizer.shutdown()
            except Exception as exc:  # never in the way of the frames and the report
                print(f"warning: giving the Ray workers back failed: {exc}", file=sys.stderr)
            report.update(stylizer.describe())  # with the plan: the chunks, the cuts
        report["seconds"] = round(time.perf_counter() - started, 3)
        report["frames"].sort(key=lambda f: f["index"])
        write_report(report_path, report)
    if args.video:  # read back from disk one at a time: the run kept no finished images
        write_video((read_image(out_dir / frame_filename(i), "frame") for i in sorted(finished)), args.video, args.fps)
    print(f"wrote {len(finished)} frames to {out_dir}", file=sys.stderr)
    return 0


def run_consistency(args) -> int:
    from .motion.consistency import check_files

    check_files(args.flow_a, args.flow_b, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "keygen", "submit", "jobs"):
        return {"serve": server.run_serve, "keygen": keys.run_keygen, "submit": submit.run_submit,
                "jobs": operator.run_jobs}[args.command](args)
    try:
        if args.command == "stylize":
            return run_stylize(args)
        return run_consistency(args)
    except (InputError, WeightsUnavailable, FlowBackendUnavailable, OutOfMemory) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerLost as exc:
        print(f"error: {exc} (--resume continues)", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        if args.command == "consistency":  # unreadable or mismatched .flo files
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
