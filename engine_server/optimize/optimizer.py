"""Optimize one frame's image against its :class:`~.objective.Objective`.

L-BFGS (history 100, unit step, no line search, as the reference) or Adam, one iteration per step so
progress is reported and cancellation honoured between iterations. Early stop as the reference:
when the loss changed by less than 1e-4 (relative) over the last 50 iterations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import Cancelled
from ..style.vgg import VGG19Features
from .objective import Objective


@dataclass
class OptimizerSettings:
    iterations: int
    method: str = "lbfgs"           # or "adam"
    learning_rate: float = 10.0     # Adam only (pixel units, the reference's value)
    early_stop: bool = True
    tolerance: float = 1e-4
    tolerance_interval: int = 50


@dataclass
class FrameOutcome:
    image: torch.Tensor          # (1, 3, H, W), pixel units, clamped to 0..255
    losses: dict[str, float]     # unweighted terms and the weighted total at the final image
    iterations: int


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
        optimizer = torch.optim.LBFGS(
            [image], lr=1.0, max_iter=1, history_size=100, tolerance_grad=0.0, tolerance_change=0.0
        )
    elif settings.method == "adam":
        optimizer = torch.optim.Adam([image], lr=settings.learning_rate)
    else:
        raise ValueError(f"unknown optimizer {settings.method!r} (lbfgs, adam)")

    history: list[float] = []

    def closure():
        optimizer.zero_grad(set_to_none=True)
        total = objective.terms(image, vgg)["total"]
        total.backward()
        history.append(total.item())
        return total

    done = 0
    for done in range(1, settings.iterations + 1):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled")
        optimizer.step(closure)
        if on_iteration is not None:
            on_iteration(done, history[-1])
        if _converged(history, settings):
            break

    with torch.no_grad():
        image.clamp_(0.0, 255.0)
        terms = objective.terms(image, vgg)
    return FrameOutcome(image.detach(), {k: float(v) for k, v in terms.items()}, done)


def _converged(history: list[float], settings: OptimizerSettings) -> bool:
    n = settings.tolerance_interval
    if not settings.early_stop or len(history) <= n or len(history) % n:
        return False
    before, now = history[-1 - n], history[-1]
    return abs(before - now) <= settings.tolerance * abs(now)
