"""Where one optimizer iteration's time goes, level by level (figures, not tests).

    python -m engine_server.bench profile                                   # CPU, Sintel at 384 px wide
    python -m engine_server.bench profile --device cuda --size 1280x720 --precisions fp32,bf16 --kernels 15

For every level of the pyramid at the given size, and each precision, on a real frame's objective
(Sintel alley_1's first frame, Starry Night, three temporal constraints as in J = 1,2,4):

- network ms: features, Gram matrices and gradient alone, what the pyramid's cost model prices levels
  with on a GPU (``optimizer.seconds_per_iteration``);
- L-BFGS ms: one step of the optimizer (history 100) with its whole state on the device;
- eager ms: a whole iteration as the engine runs it (objective, gradient, step);
- graphed ms (CUDA): the same iteration replayed from a CUDA graph (``--cuda-graphs``); recording ms, the
  one-off cost of the iteration that records (it is re-recorded for every level of every frame), and the
  iterations a level needs to win it back; the largest pixel difference between the eager and the graphed
  images after the same iterations from the same start, beside the difference between two eager runs
  (round-off and cuDNN's own non-determinism);
- the level's cost relative to the full size by each of those timings: the pyramid's budget is spent
  by the first, the clock runs by the others.

``--kernels`` adds PyTorch's profiler table (top operators) for one full-size eager iteration.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..io.frames import read_image, resize
from ..optimize import schedule
from ..optimize.iteration import WARMUP, GraphedIteration, Iteration
from ..optimize.lbfgs import LBFGS
from ..optimize.objective import LossWeights, Objective
from ..optimize.optimizer import OptimizerSettings, seconds_per_iteration
from ..pipeline import resolve_device
from ..style.targets import StyleTargets, image_tensor
from ..style.vgg import CONTENT_LAYERS, load_vgg19
from .common import DATA, parse_size, table
from .speed import device_name

SETTINGS = OptimizerSettings(iterations=1)  # the engine's L-BFGS history and step bound


def level_problem(vgg, content_rgb: np.ndarray, style_rgb: np.ndarray, size, device, constraints: int = 3):
    """(start image, objective) of one pyramid level, built as the engine builds them."""
    content = image_tensor(resize(content_rgb, size), device)
    with torch.no_grad():
        features = vgg(content, CONTENT_LAYERS)
    grams, strength = StyleTargets([style_rgb], vgg, size, device).blend(np.array([1.0]))
    generator = torch.Generator(device="cpu").manual_seed(0)
    temporal = []
    for j in range(constraints):  # stand-ins for earlier outputs carried along the flow: same cost
        noise = torch.randn(content.shape, generator=generator).to(device)
        certainty = torch.ones_like(content[:, :1]) * (1.0 / (j + 1))
        temporal.append((content + 8.0 * noise, certainty))
    return content, Objective(features, grams, strength, LossWeights(), temporal)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(function, device: torch.device, repeats: int) -> float:
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    _sync(device)
    return (time.perf_counter() - started) / repeats * 1000


@dataclass
class Run:
    ms: float                      # per timed iteration
    recording_ms: float | None     # the iteration that recorded (graphed runs only)
    image: torch.Tensor            # after the last iteration
    iteration: Iteration
    peak_mib: float | None         # CUDA only


@dataclass
class LevelFigures:
    network_ms: float
    lbfgs_ms: float
    eager: Run
    graphed: Run | None            # None on the CPU, or when recording failed (the log says why)
    rerun_diff: float              # largest pixel difference between two eager runs from one start
    graphed_diff: float | None     # the same between the eager and the graphed run


def run_iterations(kind, start: torch.Tensor, objective: Objective, vgg, device, steps: int, repeats: int) -> Run:
    """``steps`` iterations of ``kind`` (Iteration or GraphedIteration) from ``start``, the last ``repeats``
    timed."""
    image = start.detach().clone().requires_grad_(True)
    lbfgs = LBFGS(image.numel(), SETTINGS.history, device, max_step=SETTINGS.max_step)
    iteration = kind(image, objective, vgg, lbfgs=lbfgs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    recording = None
    for call in range(1, steps - repeats + 1):
        if call == WARMUP + 1 and kind is GraphedIteration:
            recording = timed_ms(iteration.step, device, 1)
        else:
            iteration.step()
    ms = timed_ms(iteration.step, device, repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Run(ms, recording, image.detach(), iteration, peak)


def lbfgs_ms(numel: int, device, repeats: int) -> float:
    lbfgs = LBFGS(numel, SETTINGS.history, device, max_step=SETTINGS.max_step)
    x = torch.zeros(numel, device=device)
    grads = itertools.cycle([torch.randn(numel, device=device) for _ in range(2)])

    def step():
        lbfgs.step(x, next(grads))

    for _ in range(3):
        step()
    return timed_ms(step, device, repeats)


def measure_level(vgg, size, device, repeats: int, content_rgb, style_rgb) -> LevelFigures:
    start, objective = level_problem(vgg, content_rgb, style_rgb, size, device)
    steps = WARMUP + 1 + repeats  # the graphed run records at WARMUP + 1
    eager = run_iterations(Iteration, start, objective, vgg, device, steps, repeats)
    rerun = run_iterations(Iteration, start, objective, vgg, device, steps, repeats)
    graphed = None
    if device.type == "cuda":
        graphed = run_iterations(GraphedIteration, start, objective, vgg, device, steps, repeats)
        if graphed.iteration.graph is None:  # recording failed: it ran eagerly
            graphed = None
    return LevelFigures(
        network_ms=seconds_per_iteration(vgg, size, device, repeats=repeats) * 1000,
        lbfgs_ms=lbfgs_ms(start.numel(), device, repeats), eager=eager, graphed=graphed,
        rerun_diff=float((eager.image - rerun.image).abs().max()),
        graphed_diff=None if graphed is None else float((eager.image - graphed.image).abs().max()))


def profile_precision(args, device, precision: str, content_rgb, style_rgb) -> list[list[str]]:
    vgg = load_vgg19(device, precision=precision)
    sizes = schedule.pyramid_sizes(args.size)
    measured = {}
    for size in sizes:
        level = measured[size] = measure_level(vgg, size, device, args.repeats, content_rgb, style_rgb)
        print(f"  {precision} {size[0]}x{size[1]}: eager {level.eager.ms:.2f} ms"
              + ("" if level.graphed is None else f", graphed {level.graphed.ms:.2f} ms"), file=sys.stderr, flush=True)
    full = measured[sizes[-1]]
    rows = []
    for size in sizes:
        level = measured[size]
        eager, graphed = level.eager, level.graphed
        break_even = None
        if graphed is not None and eager.ms > graphed.ms:
            break_even = (graphed.recording_ms - graphed.ms) / (eager.ms - graphed.ms)
        rows.append([
            f"{size[0]}x{size[1]}", vgg.precision, f"{level.network_ms:.2f}", f"{level.lbfgs_ms:.2f}",
            f"{eager.ms:.2f}",
            _fmt(graphed and graphed.ms, ".2f"), _fmt(graphed and eager.ms / graphed.ms, ".2f"),
            _fmt(graphed and graphed.recording_ms, ".1f"), _fmt(break_even, ".0f"),
            f"{level.network_ms / full.network_ms:.3f}", f"{eager.ms / full.eager.ms:.3f}",
            _fmt(graphed and full.graphed and graphed.ms / full.graphed.ms, ".3f"),
            f"{level.rerun_diff:.3g}", _fmt(level.graphed_diff, ".3g"), _fmt(eager.peak_mib, ".0f"),
            _fmt(graphed and graphed.peak_mib, ".0f"),
        ])
    return rows


def kernel_table(args, device, precision: str, content_rgb, style_rgb) -> str:
    from torch.profiler import ProfilerActivity, profile

    vgg = load_vgg19(device, precision=precision)
    start, objective = level_problem(vgg, content_rgb, style_rgb, args.size, device)
    image = start.detach().clone().requires_grad_(True)
    iteration = Iteration(image, objective, vgg,
                          lbfgs=LBFGS(image.numel(), SETTINGS.history, device, max_step=SETTINGS.max_step))
    for _ in range(3):
        iteration.step()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            iteration.step()
        _sync(device)
    sort = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=args.kernels)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_server.bench profile", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=parse_size, help="full size WxH (default: Sintel at 384 px wide)")
    parser.add_argument("--precisions", help="comma-separated fp32,bf16 (default: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations per measurement (default 10)")
    parser.add_argument("--kernels", type=int, default=0, metavar="N",
                        help="also print the profiler's top N operators of a full-size iteration")
    parser.add_argument("--style", default=str(DATA / "styles" / "starry_night.jpg"))
    args = parser.parse_args(argv)
    frame = DATA / "flow" / "sintel_alley_1" / "frame_0001.png"
    if not frame.exists():
        print(f"error: the benchmark needs the shared test data at {DATA}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    content_rgb, style_rgb = read_image(frame), read_image(args.style, "--style")
    if args.size is None:
        height, width = content_rgb.shape[:2]
        args.size = (384, round(height * 384 / width))
    precisions = (args.precisions or ("bf16" if device.type == "cuda" else "fp32")).split(",")
    rows = []
    for precision in precisions:
        rows += profile_precision(args, device, precision, content_rgb, style_rgb)
    print(f"\nOne iteration per pyramid level at {args.size[0]}x{args.size[1]} (Sintel alley_1, Starry Night, "
          f"3 temporal constraints), {args.repeats} timed iterations, device {device_name(str(device))}")
    print(table(rows, ["level", "precision", "network ms", "L-BFGS ms", "eager ms", "graphed ms", "eager / graphed",
                       "recording ms", "iterations to win it back", "cost (network)", "cost (eager)",
                       "cost (graphed)", "rerun max |d| px",
                       "graphed max |d| px", "eager peak MiB", "graphed peak MiB"]))
    if args.kernels:
        for precision in precisions:
            print(f"\nTop operators, {precision}, three full-size eager iterations:")
            print(kernel_table(args, device, precision, content_rgb, style_rgb))
    return 0
