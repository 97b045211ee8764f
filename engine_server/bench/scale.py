"""Scale-out benchmark: one clip on 1 and on 2 local Ray workers (issue 11's goals).

    python -m engine_server.bench scale                      # 48 frames of big_buck_bunny, 112 px wide

Both runs use the same clip, options and one torch thread per worker, so on a 2-core machine the
comparison is fair. Printed: wall time and speedup; e_stab (lower is steadier) of the frame pairs inside
chunks and of the pairs across each seam (the w + 1 pairs whose frames the seam's blend touched), beside
the pair across a seam left unrepaired (the later chunk's own first frame after the earlier chunk's last);
and the Gram style distance of the seam windows' frames beside the other frames (a blend that washed the
strokes out would show here). e_stab uses the engine's own flow (DIS, both ways) and consistency masks on
the clip, since real footage has no ground-truth flow; every row is scored the same way.
Goals: speedup >= 1.6x with 2 workers; seam e_stab <= 1.1x the inside-chunk e_stab.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..io.frames import open_frames, read_image
from ..metrics import masked_mse, style_distance
from ..motion.flow import make_flow
from ..motion.temporal import pair_flow
from ..motion.warp import warp_numpy
from ..pipeline import StylizeOptions
from .common import DATA, table


def consecutive_pairs(frames) -> list:
    """DIS flow both ways and the consistency check's masks for every consecutive pair of input frames
    (computed once: every run is scored against the same pairs)."""
    flow = make_flow("dis")
    return [pair_flow(flow, frames[t], frames[t + 1]) for t in range(len(frames) - 1)]


def pair_error(earlier: np.ndarray, later: np.ndarray, pair) -> float:
    """The masked mean squared difference of the later output warped onto the earlier one (a term of
    e_stab)."""
    later_on_earlier = warp_numpy(later, pair.a_to_b) / 255.0
    return masked_mse(earlier / 255.0, later_on_earlier, pair.certainty_on_a)


def pair_errors(outputs, pairs) -> np.ndarray:
    """Per consecutive pair of outputs, :func:`pair_error`."""
    return np.array([pair_error(outputs[t], outputs[t + 1], pair) for t, pair in enumerate(pairs)])


def e_stab(errors) -> float:
    return float(np.sqrt(np.mean(errors))) if len(errors) else float("nan")


def run_cluster(style, frames, options, workers: int, window: int, staging: Path | None = None):
    from ..scale.cluster import ClusterStylizer

    stylizer = ClusterStylizer([style], options, address="local", workers=workers, window=window, threads=1,
                               staging=staging, keep_staging=staging is not None)
    stylizer.wait_ready()  # the engine loads on each worker before the clock starts
    started = time.perf_counter()
    outputs = [r.image for r in stylizer.run(frames)]
    seconds = time.perf_counter() - started
    plan = stylizer.plan
    stylizer.shutdown()
    return outputs, seconds, plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_server.bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(DATA / "video" / "big_buck_bunny.mp4"))
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--width", type=int, default=112)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--first-iterations", type=int, default=60)
    parser.add_argument("--window", type=int, default=None, help="seam window (default: the engine's)")
    parser.add_argument("--style", default=str(DATA / "styles" / "starry_night.jpg"))
    args = parser.parse_args(argv)
    if not Path(args.clip).is_file():
        print(f"error: the benchmark needs the clip {args.clip} (../shared/data beside the project)", file=sys.stderr)
        return 2
    from ..scale import seams

    window = args.window or seams.DEFAULT_WINDOW
    clip = open_frames(args.clip, args.width)
    frames = [clip[i] for i in range(min(args.frames, len(clip)))]
    pairs = consecutive_pairs(frames)
    options = StylizeOptions(mode="temporal", device="cpu", iterations=args.iterations,
                             first_iterations=args.first_iterations)
    single, single_seconds, _ = run_cluster(args.style, frames, options, 1, window)
    print(f"  1 worker: {single_seconds:.1f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        staging = Path(folder)
        double, double_seconds, plan = run_cluster(args.style, frames, options, 2, window, staging)
        print(f"  2 workers: {double_seconds:.1f} s, chunks {[(c.start, c.stop) for c in plan.chunks]}", file=sys.stderr)
        # the seam left unrepaired: the earlier chain's last own frame, then the later chain's first
        unrepaired = [pair_error(read_image(staging / "raw" / f"{s.frame - 1:06d}.png"),
                                 read_image(staging / "raw" / f"{s.frame:06d}.png"), pairs[s.frame - 1])
                      for s in plan.seams]

    from ..style.vgg import load_vgg19

    vgg, painting = load_vgg19("cpu"), read_image(args.style)
    rows = []
    for name, outputs, seconds in (("1 worker", single, single_seconds), ("2 workers", double, double_seconds)):
        errors = pair_errors(outputs, pairs)
        across = sorted({t for s in plan.seams for t in range(s.frame - 1, s.frame + s.window)})
        inside = [t for t in range(len(errors)) if t not in across]
        window_frames = sorted({f for s in plan.seams for f in s.frames})
        others = [f for f in range(len(outputs)) if f not in window_frames]
        style_ratio = (style_distance([outputs[f] for f in window_frames], painting, vgg)
                       / style_distance([outputs[f] for f in others], painting, vgg))
        rows.append([name, f"{seconds:.1f}", f"{single_seconds / seconds:.2f}x", f"{e_stab(errors[inside]):.4f}",
                     f"{e_stab(errors[across]):.4f}", f"{e_stab(errors[across]) / e_stab(errors[inside]):.2f}",
                     f"{e_stab(unrepaired):.4f}" if name == "2 workers" else "-", f"{style_ratio:.2f}"])
    print(f"\n{Path(args.clip).name}, {len(frames)} frames at {clip.size[0]}x{clip.size[1]}, CPU, one torch thread "
          f"per worker, iterations {args.first_iterations}/{args.iterations}, seam window {window}; "
          f"2-worker chunks {[(c.start + 1, c.stop) for c in plan.chunks]}")
    print(table(rows, ["run", "wall s", "speedup", "e_stab inside chunks", "e_stab across seams",
                       "across / inside", "seam unrepaired (1 pair)", "style distance window / rest"]))
    print("(the 1-worker row scores the same frame pairs, which hold no seam there: the baseline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
