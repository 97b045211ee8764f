"""Speed benchmark: the reference's flat schedule beside the coarse-to-fine pyramid, in one run.

    python -m engine_server.bench speed                                   # CPU, Sintel at 384 px wide
    python -m engine_server.bench speed --device cuda --size 1280x720 --clip-sizes 1280x720,1920x1080

Table 1, MPI-Sintel alley_1 (4 frames, temporal mode, J = 1,2,4), the same frames and iteration counts
for every row, early stop off so that each schedule runs its whole budget: seconds per frame, the mean
total loss at full resolution (the figure the pyramid must reach: within 5 % of the reference's in at
most 25 % of its time), first- and last-frame style loss, e_stab against ground-truth flow, peak GPU
memory. One row per schedule and precision; the last row is the default run (pyramid, early stop on).
Table 2 (``--sweep N,N,...``), the contract by iteration count on Sintel's first frame (``--init``, per
frame, automatic precision): the loss and time of a flat run of N iterations beside the pyramid's for the
same N; then both schedules with early stop at the largest N, as users run them.
Table 3, a real clip at production sizes with the defaults (pyramid, early stop, automatic precision):
seconds per frame end to end (flow included), how long the optimization waited for flow, peak GPU
memory, and the process's resident memory after the second and the last frame (flat means no frame is
kept). Needs ../shared/data beside the project.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from ..io.frames import open_frames
from ..metrics import stability_error
from ..options import INITS
from ..pipeline import Progress, StylizeOptions, Stylizer
from .common import DATA, parse_size, resident_mib, sintel, table
from .head import Head


class Timed:
    """Runs a stylizer over frames; records wall time, time spent waiting for flow, peak memory."""

    def __init__(self, styles, options: StylizeOptions):
        self.flow_wait = 0.0
        self._flow_started = None
        self.stylizer = Stylizer(styles, options, progress=self._progress)
        self.cuda = self.stylizer.device.type == "cuda"

    def _progress(self, p: Progress) -> None:
        now = time.perf_counter()
        if p.stage == "flow":
            self._flow_started = now
        elif self._flow_started is not None:  # the first event after the flow stage ends the wait
            self.flow_wait += now - self._flow_started
            self._flow_started = None

    def run(self, frames, on_frame=None):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        results = []
        for result in self.stylizer.run(frames):
            results.append(result if on_frame is None else on_frame(result))
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None
        return results, seconds, peak


def schedule_table(args, styles) -> None:
    frames, flows, masks, size = sintel(args.size, args.width)
    precisions = args.precisions.split(",")
    common = dict(mode="temporal", device=args.device, iterations=args.iterations,
                  first_iterations=args.first_iterations, long_term=(1, 2, 4), init=args.init)
    schedules = ("pyramid",) if args.skip_reference else ("reference", "pyramid")
    runs = [(f"{schedule}", precision, dict(schedule=schedule, precision=precision, early_stop=False))
            for precision in precisions for schedule in schedules]
    runs.append(("pyramid, early stop", "auto", dict(schedule="pyramid", precision="auto", early_stop=True)))
    if args.cuda_graphs:
        runs.append(("pyramid, early stop, CUDA graphs", "auto",
                     dict(schedule="pyramid", precision="auto", early_stop=True, cuda_graphs=True)))
    rows, baseline = [], None
    for label, precision, extra in runs:
        timed = Timed(styles, StylizeOptions(**common, **extra))
        results, seconds, peak = timed.run(frames)
        loss = float(np.mean([r.losses["total"] for r in results]))
        baseline = baseline or (loss, seconds)
        e_stab = stability_error([r.image for r in results], flows, masks)
        rows.append([label, timed.stylizer.precision, f"{seconds / len(results):.2f}",
                     f"{seconds / baseline[1]:.2f}", f"{loss:.5g}", f"{loss / baseline[0]:.3f}",
                     f"{results[0].losses['style']:.4g}", f"{results[-1].losses['style']:.4g}", f"{e_stab:.4f}",
                     "-" if peak is None else f"{peak:.0f}"])
        print(f"  {label} ({timed.stylizer.precision}): {seconds:.1f} s", file=sys.stderr)
    print(f"\nSchedules: MPI-Sintel alley_1, 4 frames at {size[0]}x{size[1]}, temporal mode J=1,2,4, "
          f"iterations {args.first_iterations}/{args.iterations}, device {device_name(args.device)}")
    print(table(rows, ["schedule", "precision", "s/frame", "time / first row", "loss (full size)",
                       "loss / first row", "style loss first", "style loss last", "e_stab", "peak GPU MiB"]))


def sweep_table(args, styles) -> None:
    frames, _, _, size = sintel(args.size, args.width)
    first = frames[:1]
    common = dict(mode="per-frame", device=args.device, precision="auto", init=args.init)

    def once(schedule: str, n: int, early_stop: bool = False):
        (result,) = Stylizer(styles, StylizeOptions(**common, schedule=schedule, early_stop=early_stop,
                                                     first_iterations=n)).run(first)
        return result.losses["total"], result.seconds

    rows, flat = [], {}
    for n in args.sweep:
        flat[n] = once("reference", n)
        loss, seconds = once("pyramid", n)
        rows.append([str(n), f"{flat[n][0]:.5g}", f"{loss:.5g}", f"{loss / flat[n][0]:.3f}", f"{flat[n][1]:.1f}",
                     f"{seconds:.1f}", f"{seconds / flat[n][1]:.2f}"])
        print(f"  sweep N={n}: {rows[-1][3]} of the flat loss in {rows[-1][6]} of its time", file=sys.stderr)
    longest = max(args.sweep)
    stopped = []
    for name in ("reference", "pyramid"):
        loss, seconds = once(name, longest, early_stop=True)
        stopped.append([name, f"{loss:.5g}", f"{loss / flat[longest][0]:.3f}", f"{seconds:.1f}",
                        f"{seconds / flat[longest][1]:.2f}"])
    print(f"\nContract by iteration count: MPI-Sintel alley_1 frame 1 at {size[0]}x{size[1]}, per frame, "
          f"init {args.init}, early stop off, device {device_name(args.device)}")
    print(table(rows, ["N", "flat loss", "pyramid loss", "pyramid / flat", "flat s", "pyramid s",
                       "pyramid time / flat"]))
    print(f"\nThe same frame with early stop (as users run it), N = {longest}, against the flat run of N:")
    print(table(stopped, ["schedule", "loss", "loss / flat", "s", "time / flat"]))


def clip_table(args, styles) -> None:
    header = ["size", "frames", "precision", "CUDA graphs", "s/frame (all in)", "flow wait s/frame", "peak GPU MiB",
              "host MiB after frame 2", "host MiB at the end"]
    print(f"\nProduction sizes: {args.clip.name}, temporal mode, pyramid, early stop, "
          f"iterations {2 * args.clip_iterations}/{args.clip_iterations}, device {device_name(args.device)}")
    print(table([], header), flush=True)
    graph_settings = (False, True) if args.cuda_graphs else (False,)
    runs = [(size, graphs) for size in args.clip_sizes for graphs in graph_settings]
    for size, graphs in runs:
        which = args.clip_sizes.index(size)
        count = args.clip_frames[min(which, len(args.clip_frames) - 1)]
        frames = Head(open_frames(args.clip, size[0]), count, size)  # decoded as the run asks, as the CLI does
        count = len(frames)
        options = StylizeOptions(mode="temporal", device=args.device, iterations=args.clip_iterations,
                                 first_iterations=2 * args.clip_iterations, cuda_graphs=graphs, init=args.init)
        timed = Timed(styles, options)
        resident = {}

        def on_frame(result, resident=resident):
            resident[result.index] = resident_mib()
            return result.index  # keep no image: the table measures the engine's memory, not ours

        _, seconds, peak = timed.run(frames, on_frame)
        later = [r for i, r in resident.items() if i >= 2]
        row = [f"{size[0]}x{size[1]}", str(count), timed.stylizer.precision, "on" if graphs else "off",
               f"{seconds / count:.2f}",
               f"{timed.flow_wait / max(1, count - 1):.3f}", "-" if peak is None else f"{peak:.0f}",
               _mib(resident.get(2)), _mib(later[-1] if later else None)]
        print(table([row], header).splitlines()[-1], flush=True)  # one row as soon as it is measured


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def device_name(device: str) -> str:
    if device == "cpu" or not torch.cuda.is_available():
        return f"cpu ({torch.get_num_threads()} torch threads)"
    return torch.cuda.get_device_name()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_server.bench speed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=384, help="Sintel processing width (default 384: two pyramid levels)")
    parser.add_argument("--size", type=parse_size, help="exact Sintel processing size WxH, e.g. 1280x720")
    parser.add_argument("--iterations", type=int, default=100, help="later frames (default 100)")
    parser.add_argument("--first-iterations", type=int, default=200, help="first frame (default 200)")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32,bf16 (default fp32)")
    parser.add_argument("--style", default=str(DATA / "styles" / "starry_night.jpg"))
    parser.add_argument("--init", choices=INITS, default=StylizeOptions.init,
                        help=f"as stylize's --init (default {StylizeOptions.init})")
    parser.add_argument("--clip", type=lambda p: DATA / "video" / p if "/" not in p else p,
                        default=DATA / "video" / "big_buck_bunny.mp4")
    parser.add_argument("--clip-sizes", type=lambda t: [parse_size(s) for s in t.split(",") if s], default=[],
                        help="comma-separated WxH sizes for the clip table (default: none)")
    parser.add_argument("--clip-frames", type=lambda t: [int(n) for n in t.split(",")], default=[24],
                        help="frames per clip size, comma-separated (default 24); the last repeats")
    parser.add_argument("--clip-iterations", type=int, default=1000, help="later frames (first: twice)")
    parser.add_argument("--sweep", type=lambda t: [int(n) for n in t.split(",")], default=[],
                        help="comma-separated iteration counts for the contract-by-N table (default: none)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also run the default schedule with --cuda-graphs (a row in each table)")
    parser.add_argument("--skip-reference", action="store_true",
                        help="leave the reference schedule's rows out of the schedules table (ratios are then "
                             "against the first pyramid row)")
    parser.add_argument("--skip-schedules", action="store_true", help="leave out the schedules table")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"error: the benchmark needs the shared test data at {DATA}", file=sys.stderr)
        return 2
    from pathlib import Path
    args.clip = Path(args.clip)
    styles = [args.style]
    if not args.skip_schedules:
        schedule_table(args, styles)
    if args.sweep:
        sweep_table(args, styles)
    if args.clip_sizes:
        clip_table(args, styles)
    return 0
