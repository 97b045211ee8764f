"""Memory benchmark: the engine's host memory over a long run, which must not grow with the clip.

    python -m engine_server.bench memory                       # cup.mp4 (217 frames) at 320 px wide
    python -m engine_server.bench memory --width 640 --frames 100 --modes temporal
    python -m engine_server.bench memory --ray 2 --modes temporal --skip-baseline   # scale-out beside one machine

Each row runs one mode over the clip the way the CLI does (the video's path, decoded as frames are asked
for) and records the process's resident memory after every frame. The baseline row runs the same job on
the clip decoded up front into a list of frames, as the engine read videos before: the difference is what
streaming saves, and it grows with the clip (ten minutes of 720p are 40 GB). Iterations are few (1 per
frame by default) because memory does not depend on them; flows, masks, warps, the painted start and the
scene-cut test all run as in a real job. Goal (issue 8): flat, i.e. no growth per frame beyond noise.

``--ray N`` adds a row for the same job in temporal mode on a local Ray runtime with N workers; its figure
is the whole process tree (the driver, Ray's processes, the workers and the feed that serves them frames),
so it starts higher, and what to read is its growth.
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ..io.frames import open_frames
from ..pipeline import StylizeOptions, Stylizer
from .common import DATA, resident_mib, table, tree_resident_mib
from .head import Head


def peak_resident_mib() -> float | None:
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident size
    except OSError:
        pass


def measure(clip_path: str, width: int, count: int, up_front: bool, style: str, options: StylizeOptions,
            frames_at: tuple[int, ...], ray_workers: int = 0) -> dict:
    """One row, in a process of its own (an earlier row's freed memory would blur this one's)."""
    source = Head(open_frames(clip_path, width), count)
    if up_front:
        source = [source[i].copy() for i in range(count)]
    gc.collect()
    reset_peak()
    if ray_workers:
        from ..scale.cluster import ClusterStylizer

        stylizer = ClusterStylizer([style], options, address="local", workers=ray_workers)
        stylizer.wait_ready()  # the workers' engines loaded before the clock starts, as in the other rows
        memory = tree_resident_mib
    else:
        stylizer, memory = Stylizer([style], options), resident_mib
    resident, peak, started = {}, 0.0, time.perf_counter()
    for result in stylizer.run(source):
        resident[result.index] = memory()
        peak = max(peak, resident[result.index] or 0.0)
        del result  # keep no image: the figure is the engine's memory, not this script's
    seconds = time.perf_counter() - started
    if ray_workers:
        stylizer.shutdown()
        stylizer.disconnect()
    # growth: the least-squares slope of resident memory from frame 10 on (the first frames warm caches up)
    later = sorted(i for i in resident if i >= min(10, count))
    slope = float(np.polyfit(later, [resident[i] for i in later], 1)[0]) if len(later) > 2 and resident[later[0]] else None
    # a process tree has no high-water mark of its own: its peak is the largest figure sampled
    return {"seconds_per_frame": seconds / max(1, len(resident)),
            "peak": peak if ray_workers else peak_resident_mib(),
            "growth": None if slope is None else slope * 100, "end": resident.get(count),
            **{f"at {i}": resident.get(i) for i in frames_at}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_server.bench memory", description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(DATA / "video" / "cup.mp4"))
    parser.add_argument("--width", type=int, default=320, help="processing width (default 320)")
    parser.add_argument("--frames", type=int, default=0, help="the first N frames (default: all)")
    parser.add_argument("--iterations", type=int, default=1, help="per frame (default 1: memory does not depend on it)")
    parser.add_argument("--modes", default="temporal,fast", help="comma-separated modes (default temporal,fast)")
    parser.add_argument("--skip-baseline", action="store_true", help="leave out the clip decoded up front")
    parser.add_argument("--ray", type=int, default=0, metavar="N",
                        help="add temporal mode on a local Ray runtime with N workers (the whole process tree)")
    parser.add_argument("--style", default=str(DATA / "styles" / "starry_night.jpg"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not DATA.is_dir() and args.clip.startswith(str(DATA)):
        print(f"error: the benchmark needs the shared test data at {DATA}", file=sys.stderr)
        return 2
    streamed = open_frames(args.clip, args.width)
    count = min(len(streamed), args.frames or len(streamed))
    streamed.close()
    frames_at = tuple(i for i in (2, 50, 100, 150, 200) if i <= count)
    decoded_mib = streamed.size[0] * streamed.size[1] * 3 * count / 2**20
    print(f"Host memory over {count} frames of {args.clip} at {streamed.size[0]}x{streamed.size[1]} "
          f"({decoded_mib:.0f} MiB decoded), {args.iterations} iteration(s) per frame, device {args.device}; "
          f"resident MiB after frame N, peak over the run, growth per 100 frames (the slope from frame 10 on); "
          f"each row in a fresh process:")
    header = ["mode", "frames read", "s/frame", *[f"after {i}" for i in frames_at], "at the end", "peak",
              "growth per 100 frames"]
    print(table([], header), flush=True)
    runs = [(mode, "as needed") for mode in args.modes.split(",")]
    if not args.skip_baseline:
        runs.insert(1, (runs[0][0], "decoded up front"))
    if args.ray:
        runs.append(("temporal", f"as needed, Ray {args.ray} workers"))
    spawn = multiprocessing.get_context("spawn")
    for mode, reading in runs:
        options = StylizeOptions(mode=mode, width=args.width, iterations=args.iterations,
                                 first_iterations=args.iterations, device=args.device)
        with ProcessPoolExecutor(1, mp_context=spawn) as fresh:
            figures = fresh.submit(measure, args.clip, args.width, count, reading == "decoded up front",
                                   args.style, options, frames_at, args.ray if "Ray" in reading else 0).result()
        mib = lambda v: "-" if v is None else f"{v:.0f}"
        row = [mode, reading, f"{figures['seconds_per_frame']:.2f}",
               *[mib(figures[f"at {i}"]) for i in frames_at], mib(figures["end"]), mib(figures["peak"]),
               "-" if figures["growth"] is None else f"{figures['growth']:+.1f}"]
        print(table([row], header).splitlines()[-1], flush=True)
    return 0
