"""The engine core: frames -> flow -> masks -> optimize -> frames, in three modes.

- ``per-frame``: each frame on its own from the content frame, no temporal loss (the baseline);
- ``temporal``: Ruder et al.'s single pass: each frame starts from the previous output warped along
  the flow and is held to the warped outputs of frames t-j, j in J (short- and long-term losses);
- ``multipass``: Ruder et al.'s multi-pass algorithm, alternating directions, blending neighbours.

:func:`stylize` is the Python API; :class:`Stylizer` is the same with its set-up kept for reuse.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import Cancelled, InputError
from .io.frames import FrameLike, FrameSource, open_frames, read_image, to_rgb8
from .motion import temporal
from .motion.flow import make_flow
from .optimize.objective import LossWeights, Objective
from .optimize.optimizer import OptimizerSettings, optimize_frame
from .options import StylizeOptions
from .style import color
from .style.targets import StyleTargets, image_tensor, tensor_image
from .style.vgg import CONTENT_LAYERS, load_vgg19

@dataclass
class Progress:
    """One progress event: where the run is and how long the rest should take."""

    stage: str              # "setup", "flow", "optimize", "done"
    frame: int              # 1-based frame being worked on (0 during setup)
    frame_count: int
    iteration: int = 0
    iterations: int = 0
    loss: float | None = None
    pass_index: int = 1
    pass_count: int = 1
    frames_done: int = 0
    elapsed: float = 0.0
    eta: float | None = None  # seconds


@dataclass
class FrameResult:
    index: int               # 1-based, input order
    image: np.ndarray        # HxWx3 uint8 RGB at processing size
    seconds: float
    losses: dict[str, float]
    iterations: int
    resumed: bool = False    # taken over from an earlier run, not recomputed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one frame size per clip: let cuDNN pick its fastest kernels
    return device


def load_styles(styles: Sequence[FrameLike]) -> list[np.ndarray]:
    if not styles:
        raise InputError("--style: at least one style image is needed")
    return [to_rgb8(s, f"style {i + 1}") if isinstance(s, np.ndarray) else read_image(s, "--style")
            for i, s in enumerate(styles)]


def per_frame_weights(weights, frame_count: int, style_count: int) -> np.ndarray:
    """(frames, styles) array; None means weight 1 for every style on every frame."""
    if weights is None:
        return np.ones((frame_count, style_count))
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim == 1 and style_count == 1:
        array = array[:, None]
    if array.shape != (frame_count, style_count):
        raise InputError(f"style weights: expected shape ({frame_count}, {style_count}), got {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise InputError("style weights: must be finite and >= 0")
    return array


class Stylizer:
    """Loaded network and styles; :meth:`run` stylizes one clip and yields frames as they finish."""

    def __init__(
        self,
        styles: Sequence[FrameLike],
        options: StylizeOptions | None = None,
        progress: Callable[[Progress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ):
        self.options = options or StylizeOptions()
        self.options.validate()
        self.device = resolve_device(self.options.device)
        self.style_images = load_styles(styles)
        self.vgg = load_vgg19(self.device, self.options.vgg_weights)
        self.flow = make_flow(self.options.flow, device=self.device) if self.options.mode != "per-frame" else None
        self.progress = progress
        self.cancel = cancel
        opts = self.options
        self.weights = LossWeights(opts.content_weight, opts.style_weight, opts.temporal_weight, opts.tv_weight)

    # -- what the report needs -------------------------------------------------------------------
    def describe(self) -> dict:
        first, later = self.options.resolved_iterations()
        return {
            "options": asdict(self.options),
            "iterations": {"first": first, "later": later},
            "device": str(self.device),
            "weights_source": {"name": self.vgg.source.name, "path": self.vgg.source.path},
            "flow": getattr(self.flow, "name", None),
            "torch": torch.__version__,
        }

    # -- the run ---------------------------------------------------------------------------------
    def run(
        self,
        frames: FrameSource | str | Sequence[FrameLike],
        weights=None,
        done: dict[int, np.ndarray] | None = None,
    ) -> Iterator[FrameResult]:
        """Yield each frame as it finishes (1-based index). ``done`` maps indices of frames an earlier
        run finished (their RGB images) so a resumed run continues after them."""
        source = frames if isinstance(frames, FrameSource) else open_frames(frames, self.options.width)
        count = len(source)
        style_weights = per_frame_weights(weights, count, len(self.style_images))
        torch.manual_seed(self.options.seed)
        np.random.seed(self.options.seed)
        run = _Run(self, source, style_weights, dict(done or {}))
        if self.options.mode == "multipass":
            yield from run.multipass()
        else:
            yield from run.single_pass()


class _Run:
    """State of one clip: the frames, style targets and outputs so far."""

    def __init__(self, stylizer: Stylizer, source: FrameSource, style_weights: np.ndarray, done: dict):
        self.s = stylizer
        self.opts = stylizer.options
        self.source = source
        self.count = len(source)
        self.style_weights = style_weights
        self.done = done
        self.started = time.perf_counter()
        self.first_iterations, self.later_iterations = self.opts.resolved_iterations()
        self.iterations_done = 0
        self.colour_reference = source[0] if self.opts.preserve_colors else None
        self._emit(Progress("setup", 0, self.count))
        self.targets = StyleTargets(
            stylizer.style_images, stylizer.vgg, source.size, stylizer.device,
            self.opts.style_scale, self.colour_reference,
        )

    # -- helpers ---------------------------------------------------------------------------------
    def _emit(self, event: Progress) -> None:
        if self.s.progress is not None:
            event.elapsed = time.perf_counter() - self.started
            self.s.progress(event)

    def _stopped(self) -> bool:
        return self.s.cancel is not None and bool(self.s.cancel())

    def content_space(self, rgb: np.ndarray) -> np.ndarray:
        """The frame as the optimization sees it (grey when colours are preserved)."""
        return color.content_as_grey(rgb) if self.opts.preserve_colors else rgb

    def to_output(self, image: torch.Tensor, content_rgb: np.ndarray) -> np.ndarray:
        result = tensor_image(image)
        if self.opts.preserve_colors:
            return color.recombine(result, content_rgb)
        return np.clip(result, 0, 255).round().astype(np.uint8)

    def objective(self, index: int, content: torch.Tensor, constraints=(), temporal_weight=None) -> Objective:
        with torch.no_grad():
            content_feats = self.s.vgg(content, CONTENT_LAYERS)
        grams, strength = self.targets.blend(self.style_weights[index])
        return Objective(content_feats, grams, strength, self.s.weights, list(constraints), temporal_weight)

    def optimize(self, index, init, objective, iterations, total_work, pass_index=1, pass_count=1):
        settings = OptimizerSettings(
            iterations, self.opts.optimizer, self.opts.learning_rate,
            early_stop=self.opts.early_stop and self.opts.mode != "multipass",
        )
        frames_done = len(self.done)

        def on_iteration(i: int, loss: float) -> None:
            self.iterations_done += 1
            elapsed = time.perf_counter() - self.started
            rate = elapsed / self.iterations_done
            remaining = max(0, total_work - self.iterations_done)
            self._emit(Progress("optimize", index + 1, self.count, i, iterations, loss,
                                pass_index, pass_count, frames_done, eta=rate * remaining))

        return optimize_frame(init, objective, self.s.vgg, settings, on_iteration, self._stopped)

    def first_image(self, content: torch.Tensor) -> torch.Tensor:
        if self.opts.init == "noise":
            # The reference's noise init: small noise around mid-grey, in pixel units.
            return 127.5 + 0.001 * 255.0 * torch.randn_like(content)
        return content

    # -- single pass: per-frame and temporal -----------------------------------------------------
    def single_pass(self) -> Iterator[FrameResult]:
        temporal_mode = self.opts.mode == "temporal"
        flows = temporal.FlowAhead(self.s.flow, self.source, self.opts.long_term,
                                   background=self.s.device.type == "cuda") if temporal_mode else None
        try:
            yield from self._single_pass(flows)
        finally:
            if flows is not None:
                flows.close()

    def _single_pass(self, flows: temporal.FlowAhead | None) -> Iterator[FrameResult]:
        device = self.s.device
        outputs: dict[int, torch.Tensor] = {}  # optimization-space results still needed as targets
        keep = max(self.opts.long_term) if flows is not None else 0
        todo = [i for i in range(self.count) if i + 1 not in self.done]
        total_work = sum(self._iterations_for(i) for i in todo)
        for index in range(self.count):
            if index + 1 in self.done:
                outputs[index] = image_tensor(self.content_space(self.done[index + 1]), device)
                outputs.pop(index - keep, None)
                continue
            if self._stopped():
                raise Cancelled("cancelled")
            started = time.perf_counter()
            rgb = self.source[index]
            content = image_tensor(self.content_space(rgb), device)
            constraints, init = [], None
            if flows is not None and index > 0:
                self._emit(Progress("flow", index + 1, self.count))
                earlier = flows.pairs(index)
                constraints = temporal.constraints([(pair, outputs[index - j]) for j, pair in earlier], device)
                if earlier[0][0] == 1:
                    warped_prev, mask = constraints[0]
                    init = temporal.initialization(content, warped_prev, mask)
            if init is None:
                init = self.first_image(content)
            outcome = self.optimize(index, init, self.objective(index, content, constraints),
                                    self._iterations_for(index), total_work)
            outputs[index] = outcome.image
            outputs.pop(index - keep, None)
            result = FrameResult(index + 1, self.to_output(outcome.image, rgb),
                                 time.perf_counter() - started, outcome.losses, outcome.iterations)
            self.done[index + 1] = result.image
            yield result
        self._emit(Progress("done", self.count, self.count, frames_done=self.count))

    def _iterations_for(self, index: int) -> int:
        if self.opts.mode == "per-frame" or index == 0:
            return self.first_iterations
        return self.later_iterations

    # -- multi-pass ------------------------------------------------------------------------------
    def multipass(self) -> Iterator[FrameResult]:
        """Ruder et al.'s multi-pass: passes alternate direction; from pass 2 each frame starts from
        (x + c * warp(x_n)) / (1 + c) with x_n its neighbour in the pass direction; the temporal loss
        joins from the middle pass on with its own weight."""
        opts, device, count = self.opts, self.s.device, self.count
        passes, iterations = opts.passes, self.later_iterations
        temporal_from = passes // 2 + 1
        contents = [image_tensor(self.content_space(self.source[i]), "cpu") for i in range(count)]
        pairs: dict[int, temporal.PairFlow] = {}  # pairs[i]: frames i and i + 1
        results: list[torch.Tensor | None] = [None] * count
        seconds = [0.0] * count
        total_work = passes * count * iterations
        for pass_index in range(1, passes + 1):
            forward = pass_index % 2 == 1
            order = range(count) if forward else range(count - 1, -1, -1)
            for index in order:
                if self._stopped():
                    raise Cancelled("cancelled")
                started = time.perf_counter()
                content = contents[index].to(device)
                neighbour = index - 1 if forward else index + 1
                constraint = None
                if pass_index > 1 and 0 <= neighbour < count:
                    pair_index = min(index, neighbour)
                    if pair_index not in pairs:
                        self._emit(Progress("flow", index + 1, count, pass_index=pass_index, pass_count=passes))
                        pairs[pair_index] = temporal.pair_flow(
                            self.s.flow, self.source[pair_index], self.source[pair_index + 1])
                    pair = pairs[pair_index]
                    # forward pass: neighbour is frame a of the pair, we are b; backward: the opposite
                    flow, mask = (pair.b_to_a, pair.certainty_on_b) if forward else (pair.a_to_b, pair.certainty_on_a)
                    constraint = (temporal.warped_onto(results[neighbour].to(device), flow),
                                  temporal.mask_tensor(mask, device))
                if pass_index == 1:
                    init = self.first_image(content)
                elif constraint is not None:
                    warped, mask = constraint
                    init = (results[index].to(device) + mask * warped) / (1.0 + mask)
                else:
                    init = results[index].to(device)
                use_temporal = constraint is not None and pass_index >= temporal_from
                objective = self.objective(index, content, [constraint] if use_temporal else [],
                                           temporal_weight=opts.multipass_temporal_weight)
                outcome = self.optimize(index, init, objective, iterations, total_work, pass_index, passes)
                results[index] = outcome.image.cpu()
                seconds[index] += time.perf_counter() - started
                if pass_index == passes:
                    rgb = self.source[index]
                    yield FrameResult(index + 1, self.to_output(outcome.image, rgb), seconds[index],
                                      outcome.losses, outcome.iterations * passes)
        self._emit(Progress("done", count, count, frames_done=count, pass_index=passes, pass_count=passes))


def stylize(
    frames: str | Sequence[FrameLike],
    styles: Sequence[FrameLike],
    weights=None,
    options: StylizeOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **option_overrides,
) -> Iterator[FrameResult]:
    """Stylize a clip; yields :class:`FrameResult` as each frame finishes.

    frames: a video path, folder, glob, or a list of image paths / HxWx3 arrays.
    styles: style image paths or arrays. weights: None (1 everywhere) or (frames, styles) array.
    progress: called with :class:`Progress` events. cancel: polled between iterations; when it
    returns True the run raises :class:`Cancelled` (frames already yielded stay yours).
    Keyword overrides set :class:`StylizeOptions` fields, e.g. ``mode="per-frame", width=320``.
    """
    opts = replace(options or StylizeOptions(), **option_overrides)
    return Stylizer(styles, opts, progress, cancel).run(frames, weights)
