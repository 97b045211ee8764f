"""Optimize one frame's image against its :class:`~.objective.Objective`.

L-BFGS (history 100, unit step, no line search, as the reference; :mod:`.lbfgs`) or Adam, one iteration
per step so progress is reported and cancellation honoured between iterations. Early stop as the reference:
when the loss changed by less than 1e-4 (relative) over the last 50 iterations; with ``remaining_tolerance``
(warm starts) also when the gain still to come, extrapolated from the last windows, is that small.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..errors import Cancelled
from ..style.vgg import VGG19Features
from . import schedule
from .iteration import make_iteration
from .lbfgs import LBFGS
from .objective import Objective


@dataclass
class OptimizerSettings:
    iterations: int
    method: str = "lbfgs"           # or "adam"
    learning_rate: float = 10.0     # Adam only (pixel units, the reference's value)
    early_stop: bool = True
    tolerance: float = 1e-4
    tolerance_interval: int = 50
    history: int = 100              # L-BFGS pairs kept (the reference's 100)
    readback_interval: int | None = None  # iterations between loss read-backs; None: 1 on CPU, 10 on GPU
    max_step: float | None = 64.0   # L-BFGS: the most any pixel moves in one iteration (pixel units); see .lbfgs
    cuda_graphs: bool = False       # L-BFGS on CUDA: replay each level's iteration from a CUDA graph (.iteration)
    remaining_tolerance: float | None = None  # also stop when the gain still to come is below this share of the loss


@dataclass
class FrameOutcome:
    image: torch.Tensor          # (1, 3, H, W), pixel units, clamped to 0..255
    losses: dict[str, float]     # unweighted terms and the weighted total at the final image
    iterations: int
    levels: list[dict] = field(default_factory=list)  # per level: size and iterations run


IterationCallback = Callable[[int, float], None]


def optimize_frame(
    init: torch.Tensor,
    objective: Objective,
    vgg: VGG19Features,
    settings: OptimizerSettings,
    on_iteration: IterationCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FrameOutcome:
    image = init.detach().clone().requires_grad_(True)
    if settings.method == "lbfgs":
        lbfgs, adam = LBFGS(image.numel(), settings.history, image.device, max_step=settings.max_step), None
    elif settings.method == "adam":
        lbfgs, adam = None, torch.optim.Adam([image], lr=settings.learning_rate)
    else:
        raise ValueError(f"unknown optimizer {settings.method!r} (lbfgs, adam)")
    iteration = make_iteration(image, objective, vgg, lbfgs, adam, settings.cuda_graphs, settings.iterations)
    # Losses stay on the device and are read back in batches: on a GPU a .item() per iteration would
    # make it wait for the host every time. On the CPU there is nothing to wait for.
    readback = settings.readback_interval or (1 if image.device.type == "cpu" else 10)
    history: list[float] = []
    pending: list[torch.Tensor] = []

    done = 0
    for done in range(1, settings.iterations + 1):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled")
        pending.append(iteration.step())
        if len(pending) < readback and done < settings.iterations:
            continue
        values = torch.stack(pending + ([lbfgs.stalled.to(pending[0].dtype)] if lbfgs is not None else [])).tolist()
        stalled = lbfgs is not None and values.pop() > 0
        first = done - len(pending) + 1
        pending.clear()
        for i, value in enumerate(values):
            history.append(value)
            if on_iteration is not None:
                on_iteration(first + i, value)
        if stalled or _converged(history, settings):
            break  # a direction that is not downhill cannot make progress: the frame is as good as it gets

    with torch.no_grad():
        image.clamp_(0.0, 255.0)
        terms = objective.terms(image, vgg)
    return FrameOutcome(image.detach(), {k: float(v) for k, v in terms.items()}, done)


def seconds_per_iteration(vgg: VGG19Features, size: tuple[int, int], device: torch.device, repeats: int = 5) -> float:
    """Measured seconds of one iteration's network work (features, Gram matrices, gradient) at ``size``:
    what the pyramid's plan prices levels with on a GPU, where small levels cost more than their pixels."""
    from ..style.losses import gram
    from .objective import FEATURE_LAYERS

    image = torch.rand(1, 3, size[1], size[0], device=device).mul_(255).requires_grad_(True)

    def once() -> None:
        feats = vgg(image, FEATURE_LAYERS)
        (grad,) = torch.autograd.grad(sum(gram(f).sum() for f in feats.values()), image)
        grad.sum().item()  # wait for the device

    once()  # the first call at a size also picks the kernels (cudnn.benchmark)
    started = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - started) / repeats


def _converged(history: list[float], settings: OptimizerSettings) -> bool:
    n = settings.tolerance_interval
    if not settings.early_stop or len(history) <= n:
        return False  # checked at every read-back once a whole window exists
    before, now = history[-1 - n], history[-1]
    if abs(before - now) <= settings.tolerance * abs(now):
        return True
    tolerance = settings.remaining_tolerance
    return tolerance is not None and remaining_gain(history, n) <= tolerance * abs(now)


MIN_GAIN_RATIO = 0.5  # remaining_gain takes the per-window gain ratio as at least this


def remaining_gain(history: list[float], window: int) -> float:
    """The loss decrease still to come, extrapolated from the last two windows: a converging L-BFGS run's
    gains shrink about geometrically, by r = (gain of the last window) / (gain of the one before), so
    what remains is the last gain times r / (1 - r). r is taken as at least 1/2: a warm start's first
    iterations repair the hand-over fast, and that fast drop says nothing about how slowly the rest goes
    (without the floor, Sintel frames stopped after 23 iterations, 3 % short). Infinite while the gains
    are not shrinking."""
    if len(history) <= 2 * window:
        return float("inf")
    older, newer = history[-1 - 2 * window] - history[-1 - window], history[-1 - window] - history[-1]
    if newer <= 0 or older <= newer:
        # no gain in the last window (uphill: a unit step can climb for a while, and stopping would keep the
        # worse image), or gains still growing: nothing to extrapolate. A flat loss is the rate test's case.
        return float("inf")
    ratio = max(MIN_GAIN_RATIO, newer / older)
    return newer * ratio / (1 - ratio)


def optimize_levels(
    init: torch.Tensor,
    levels: list[schedule.Level],
    objective_at: Callable[[tuple[int, int]], Objective],
    vgg: VGG19Features,
    settings: OptimizerSettings,
    on_iteration: IterationCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FrameOutcome:
    """Coarse to fine over ``levels`` (the last one full size). Each level starts from ``init`` at its
    size plus the upsampled change the level below made, so the start image's detail is kept."""
    image = start = None
    done = 0
    report = []
    for level in levels:
        base = schedule.resize(init, level.size)
        begin = base if image is None else base + schedule.resize(image - start, level.size)

        def counted(i: int, loss: float, offset=done) -> None:
            if on_iteration is not None:
                on_iteration(offset + i, loss)

        outcome = optimize_frame(begin, objective_at(level.size), vgg, replace(settings, iterations=level.iterations),
                                 counted, should_stop)
        done += outcome.iterations
        report.append({"size": list(level.size), "iterations": outcome.iterations})
        image, start = outcome.image, base
    return FrameOutcome(outcome.image, outcome.losses, done, report)
