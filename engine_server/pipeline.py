"""The engine core: frames -> flow -> masks -> optimize -> frames, in three modes.

- ``per-frame``: each frame on its own from the content frame, no temporal loss (the baseline);
- ``temporal``: Ruder et al.'s single pass: each frame starts from the previous output warped along
  the flow and is held to the warped outputs of frames t-j, j in J (short- and long-term losses);
- ``multipass``: Ruder et al.'s multi-pass algorithm, alternating directions, blending neighbours;
- ``fast-per-frame``: Ghiasi et al.'s feed-forward network on each frame (no optimization);
- ``fast``: the same, each output stabilized along the flow against the previous one.

:func:`stylize` is the Python API; :class:`Stylizer` is the same with its set-up kept for reuse.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import Cancelled, InputError, out_of_memory
from .feedforward.stabilize import FlowStabilizer
from .feedforward.stylizer import FeedForwardStylizer, to_unit
from .feedforward.weights import load_arbitrary_style_network
from .io.frames import FrameLike, FrameSource, open_frames, read_image, to_rgb8
from .io.scratch import Scratch
from .motion import cuts, temporal
from .motion.flow import make_flow
from .optimize.objective import LossWeights, Objective
from .optimize import schedule
from .optimize.optimizer import FrameOutcome, OptimizerSettings, optimize_levels, seconds_per_iteration
from .options import FAST_MODES, StylizeOptions
from .style import color
from .style.targets import StyleTargets, fit_style, image_tensor, style_pixels_needed, tensor_image
from .style.vgg import CONTENT_LAYERS, load_vgg19

WARM_STOP_WINDOW = 10  # iterations: the early-stop window of warm-started frames
WARM_REMAINING = 1e-3  # warm-started frames stop when less than this share of the loss is still to gain
MULTIPASS_STATE = ".multipass-state"  # multipass's resumable state, a folder under Stylizer.scratch_dir

@dataclass
class Progress:
    """One progress event: where the run is and how long the rest should take."""

    stage: str              # "setup", "flow", "optimize", "stylize" (fast modes), "done"
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
    iterations: int          # over all levels
    resumed: bool = False    # taken over from an earlier run, not recomputed
    schedule: str = "reference"
    levels: list[dict] = field(default_factory=list)  # per level: size and iterations run
    cut: bool = False        # a scene cut before this frame: it started afresh, like a first frame


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' is mixed precision (bf16 convolutions, float32 losses) on CUDA and float32 on the CPU, where
    bfloat16 convolutions are no faster."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one frame size per clip: let cuDNN pick its fastest kernels
        # TF32 tensor cores for the float32 matrix products (Gram matrices, fp32 convolutions): 10 mantissa
        # bits are plenty for a loss that is itself an average over millions of terms.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def load_styles(styles: Sequence[FrameLike]) -> list[np.ndarray]:
    if not styles:
        raise InputError("--style: at least one style image is needed")
    return [to_rgb8(s, f"style {i + 1}") if isinstance(s, np.ndarray) else read_image(s, "--style")
            for i, s in enumerate(styles)]


def painting_pixels(frame_size: tuple[int, int], options: StylizeOptions) -> int:
    """The most pixels of a painting that a run with ``options`` on frames of ``frame_size`` can use
    (larger paintings are brought down to it, with :func:`fit_style`, before anything else is done)."""
    fast = options.mode in FAST_MODES
    return style_pixels_needed(frame_size, options.style_scale, optimized=not fast,
                               network=fast or options.init == "fast")


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


def images_to_resume(options: StylizeOptions, finished, frame_count: int) -> set[int]:
    """The finished frames (1-based) whose images a resumed run may read: in temporal mode those up to
    ``max(long_term)`` frames before a frame still to do (its temporal targets; the same frames a Ray
    chunk may carry on from), in ``fast`` mode the one just before (the stabilizer carries on from it).
    A caller resuming a long run passes the images of these and None for the rest, so resuming after
    thousands of frames reads a handful."""
    reach = {"temporal": max(options.long_term), "fast": 1}.get(options.mode, 0)
    finished = set(finished)
    return {i for i in finished if any(i + d <= frame_count and i + d not in finished for d in range(1, reach + 1))}


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
        self.precision = resolve_precision(self.options.precision, self.device)
        mode = self.options.mode
        self.fast = mode in FAST_MODES
        self.vgg = None if self.fast else load_vgg19(self.device, self.options.vgg_weights, self.precision)
        self.network = load_arbitrary_style_network(self.device) if self.fast or self.options.init == "fast" else None
        self.flow = make_flow(self.options.flow, device=self.device) if mode not in ("per-frame", "fast-per-frame") else None
        self.progress = progress
        self.cancel = cancel
        self.scratch_dir = None  # where multipass keeps the clip's state while it runs (None: the system's temp)
        opts = self.options
        self.weights = LossWeights(opts.content_weight, opts.style_weight, opts.temporal_weight, opts.tv_weight)

    # -- what the report needs -------------------------------------------------------------------
    def describe(self) -> dict:
        first, later = self.options.resolved_iterations()
        return {
            "options": asdict(self.options),
            "iterations": {"first": first, "later": later},
            "device": str(self.device),
            "precision": self.precision if self.vgg is not None else "fp32",
            "weights_source": ({"name": self.vgg.source.name, "path": self.vgg.source.path}
                               if self.vgg is not None else None),
            "network": self.network.source if self.network is not None else None,
            "flow": getattr(self.flow, "name", None),
            "torch": torch.__version__,
        }

    # -- the run ---------------------------------------------------------------------------------
    def run(
        self,
        frames: FrameSource | str | Sequence[FrameLike],
        weights=None,
        done: dict[int, np.ndarray] | None = None,
        colour_reference: np.ndarray | None = None,
    ) -> Iterator[FrameResult]:
        """Yield each frame as it finishes (1-based index). ``done`` maps indices of frames an earlier
        run finished to their RGB images, so a resumed run continues after them; an image the run will
        not read (see :func:`images_to_resume`) may be None. ``colour_reference``: with preserve_colors,
        the frame the paintings' luminance is matched to (default the first; a chunk of a longer strip
        passes the strip's, so all its chunks share one target)."""
        source = frames if isinstance(frames, FrameSource) else open_frames(frames, self.options.width)
        count = len(source)
        style_weights = per_frame_weights(weights, count, len(self.style_images))
        torch.manual_seed(self.options.seed)
        np.random.seed(self.options.seed)
        try:
            run = _Run(self, source, style_weights, dict(done or {}), colour_reference)
            del done  # the run holds each earlier image only until it has been used
            if self.fast:
                yield from run.fast()
            elif self.options.mode == "multipass":
                yield from run.multipass()
            else:
                yield from run.single_pass()
        except (RuntimeError, MemoryError) as exc:  # an allocator's message becomes one that says what to do
            oom = out_of_memory(exc, source.size, self.device)
            if oom is None:
                raise
            raise oom from exc


class _Run:
    """State of one clip: the frames, style targets and outputs so far."""

    def __init__(self, stylizer: Stylizer, source: FrameSource, style_weights: np.ndarray, done: dict,
                 colour_reference: np.ndarray | None = None):
        self.s = stylizer
        self.opts = stylizer.options
        self.source = source
        self.count = len(source)
        self.style_weights = style_weights
        self.done = done  # images of frames an earlier run finished; each is dropped once it has been used
        self.finished = set(done)  # indices only: finished frames' images are not kept (memory stays flat)
        self.resumed = images_to_resume(self.opts, self.finished, self.count)  # the finished frames' images in use
        missing = sorted(i for i in self.resumed if done[i] is None)
        if missing:
            raise ValueError(f"resuming needs the images of finished frames {missing} (images_to_resume)")
        self.started = time.perf_counter()
        self.clock: tuple[float, float] | None = None  # (time, work done) at the first optimizer iteration
        self.first_iterations, self.later_iterations = self.opts.resolved_iterations()
        self.work_done = 0.0  # in full-size iterations, for the ETA
        self.colour_reference = None
        if self.opts.preserve_colors:
            self.colour_reference = source[0] if colour_reference is None else to_rgb8(colour_reference,
                                                                                       "colour reference")
        self._emit(Progress("setup", 0, self.count))
        needed = painting_pixels(source.size, self.opts)
        self.styles = [fit_style(style, needed) for style in stylizer.style_images]
        self.painter = None if stylizer.network is None else FeedForwardStylizer(
            stylizer.network, self.styles, stylizer.device, self.opts.style_scale, self.opts.preserve_colors)
        self.targets: dict[tuple[int, int], StyleTargets] = {}
        if stylizer.vgg is not None:
            self.targets_at(source.size)
            # A CPU's time follows the pixel count; a GPU's does not at small sizes, so it is measured there.
            self.cost_of = schedule.pixel_cost if stylizer.device.type != "cuda" else schedule.measured_cost(
                lambda size: seconds_per_iteration(stylizer.vgg, size, stylizer.device))

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

    def targets_at(self, size: tuple[int, int]) -> StyleTargets:
        """The styles' Gram targets for frames of ``size`` (each pyramid level has its own)."""
        if size not in self.targets:
            self.targets[size] = StyleTargets(self.styles, self.s.vgg, size, self.s.device,
                                              self.opts.style_scale, self.colour_reference)
        return self.targets[size]

    def objective(self, index: int, content: torch.Tensor, constraints=(), temporal_weight=None) -> Objective:
        with torch.no_grad():
            content_feats = self.s.vgg(content, CONTENT_LAYERS)
        size = (content.shape[-1], content.shape[-2])
        grams, strength = self.targets_at(size).blend(self.style_weights[index])
        return Objective(content_feats, grams, strength, self.s.weights, list(constraints), temporal_weight)

    def levels(self, iterations: int, schedule_name: str | None = None, stylized: bool = False) -> list[schedule.Level]:
        return schedule.plan(schedule_name or self.opts.schedule, self.source.size, iterations,
                             self.opts.coarsest_side, self.cost_of, stylized)

    def optimize(self, index, init, content, constraints, iterations, total_work, temporal_weight=None,
                 pass_index=1, pass_count=1, schedule_name=None, warm_start=False) -> FrameOutcome:
        """One frame on its schedule's levels; content, constraints and init are given at full size.

        A start already stylized at every scale (a warm start, or the network's painting with
        ``--init fast``) runs at full size only (:func:`schedule.plan`). A warm start (the previous
        output carried along the flow) also begins close to its optimum: its early stop looks at a
        shorter window at the reference's rate (1e-4 over 50 iterations is 2e-6 per iteration, here
        measured over 10) or stops once the gain still to come is under WARM_REMAINING of the loss
        (:func:`~.optimize.optimizer.remaining_gain`)."""
        levels = self.levels(iterations, schedule_name, self._stylized(warm_start))
        planned = sum(level.iterations for level in levels)
        settings = OptimizerSettings(
            iterations, self.opts.optimizer, self.opts.learning_rate,
            early_stop=self.opts.early_stop and self.opts.mode != "multipass", cuda_graphs=self.opts.cuda_graphs,
        )
        if warm_start:
            settings = replace(settings, tolerance_interval=WARM_STOP_WINDOW,
                               tolerance=settings.tolerance * WARM_STOP_WINDOW / settings.tolerance_interval,
                               remaining_tolerance=WARM_REMAINING)
        frames_done = len(self.finished)
        level_cost = [1.0]

        def objective_at(size: tuple[int, int]) -> Objective:
            level_cost[0] = self.cost_of(size, self.source.size)
            scaled = [(schedule.resize(warped, size), schedule.resize(mask, size)) for warped, mask in constraints]
            return self.objective(index, schedule.resize(content, size), scaled, temporal_weight)

        def on_iteration(i: int, loss: float) -> None:
            now = time.perf_counter()
            if self.clock is None:  # the rate is timed from the first iteration: setup is not work to come
                self.clock = (now, self.work_done)
            self.work_done += level_cost[0]
            timed = self.work_done - self.clock[1] - level_cost[0]  # iterations finished since the clock began
            eta = None if timed <= 0 else (now - self.clock[0]) / timed * max(0.0, total_work - self.work_done)
            self._emit(Progress("optimize", index + 1, self.count, i, planned, loss,
                                pass_index, pass_count, frames_done, eta=eta))

        return optimize_levels(init, levels, objective_at, self.s.vgg, settings, on_iteration, self._stopped)

    def first_image(self, content: torch.Tensor, rgb: np.ndarray, index: int) -> torch.Tensor:
        if self.opts.init == "noise":
            return self.s.vgg.noise_like(content)
        if self.opts.init == "fast":
            return self.painting(rgb, index)
        return content

    def painting(self, rgb: np.ndarray, index: int) -> torch.Tensor:
        """The feed-forward network's painting of a frame, as the optimization sees images (pixel units,
        grey when colours are preserved): a start that is already stylized (``--init fast``)."""
        painted = self.painter.stylize(to_unit(rgb, self.s.device), self.style_weights[index])
        if self.opts.preserve_colors:
            return image_tensor(self.content_space(tensor_image(painted * 255.0)), self.s.device)
        return painted * 255.0

    # -- fast modes: the feed-forward network ----------------------------------------------------
    def fast(self) -> Iterator[FrameResult]:
        """Each frame painted by the network in one pass; in ``fast`` mode reconciled with the previous
        output along the flow (:mod:`engine_server.feedforward.stabilize`), scene cuts starting afresh."""
        stabilizer = FlowStabilizer() if self.opts.mode == "fast" else None
        flows = temporal.FlowAhead(self.s.flow, self.source, (1,), background=self.s.device.type == "cuda") \
            if stabilizer is not None else None
        computed = 0
        try:
            for index in range(self.count):
                if index + 1 in self.finished:
                    earlier_output = self.done.pop(index + 1)
                    if index + 1 in self.resumed:  # the stabilization goes on from it
                        stabilizer.remember(self.source[index], to_unit(earlier_output, self.s.device))
                    continue
                if self._stopped():
                    raise Cancelled("cancelled")
                started = time.perf_counter()
                rgb = self.source[index]
                painted = self.painter.stylize(to_unit(rgb, self.s.device), self.style_weights[index])
                cut = False
                if stabilizer is not None:
                    has_previous = index > 0 and stabilizer.previous is not None
                    pair = flows.pairs(index)[0][1] if has_previous else None
                    painted, cut = stabilizer(rgb, painted, pair)
                self.finished.add(index + 1)
                computed += 1
                frames_done = len(self.finished)
                rate = (time.perf_counter() - self.started) / computed
                self._emit(Progress("stylize", index + 1, self.count, 1, 1, frames_done=frames_done,
                                    eta=rate * (self.count - frames_done)))
                yield FrameResult(index + 1, self.painter.finish(painted, rgb), time.perf_counter() - started,
                                  {}, 0, schedule="feed-forward", cut=cut)
        finally:
            if flows is not None:
                flows.close()
        self._emit(Progress("done", self.count, self.count, frames_done=self.count))

    # -- single pass: per-frame and temporal -----------------------------------------------------
    def single_pass(self) -> Iterator[FrameResult]:
        temporal_mode = self.opts.mode == "temporal"
        # the previous frame's pair always: it carries the start over and is the cut test, whatever J is
        flows = temporal.FlowAhead(self.s.flow, self.source, set(self.opts.long_term) | {1},
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
        todo = [i for i in range(self.count) if i + 1 not in self.finished]
        shot_start = 0
        previous_content = None  # the last computed frame's content, for the stylized fill
        total_work = sum(schedule.cost(self.levels(self._iterations_for(i), stylized=self._stylized(self._warm(i))),
                                       self.cost_of)
                         for i in todo)
        for index in range(self.count):
            if index + 1 in self.finished:
                earlier_output = self.done.pop(index + 1)
                if index + 1 in self.resumed:  # a later frame's temporal target
                    # a cut between two resumed frames (``index`` is the previous one's 1-based number),
                    # found by the earlier run, must still separate later frames' targets
                    if flows is not None and index in self.resumed and self._cut_before(index):
                        shot_start = index
                        outputs.clear()
                    outputs[index] = image_tensor(self.content_space(earlier_output), device)
                del earlier_output  # the caller's image is not kept past this point
                previous_content = None
                outputs.pop(index - keep, None)
                continue
            if self._stopped():
                raise Cancelled("cancelled")
            started = time.perf_counter()
            rgb = self.source[index]
            content = image_tensor(self.content_space(rgb), device)
            constraints, init, cut, previous = [], None, None, None
            if flows is not None and index > 0:
                self._emit(Progress("flow", index + 1, self.count))
                earlier = flows.pairs(index)  # closest first: j = 1, the previous frame's pair, always
                previous = earlier[0][1]
                cut = cuts.detect_cut(self.source[index - 1], rgb, previous.b_to_a, previous.certainty_on_b)
                if cut.is_cut:
                    shot_start = index  # nothing before the cut constrains or starts anything after it
                    outputs.clear()
                held = [(j, pair) for j, pair in earlier if j in self.opts.long_term and index - j >= shot_start]
                if held:
                    constraints = temporal.constraints([(pair, outputs[index - j]) for j, pair in held], device)
                if index - 1 >= shot_start:  # the previous output, carried along the flow, is the start
                    warped_prev, mask = constraints[0] if held[:1] and held[0][0] == 1 else \
                        temporal.constraints([(previous, outputs[index - 1])], device)[0]
                    if previous_content is None:  # the previous frame was resumed, not computed here
                        previous_content = image_tensor(self.content_space(self.source[index - 1]), device)
                    fill = self.painting(rgb, index) if self.opts.init == "fast" else temporal.stylized_fill(
                        content, outputs[index - 1], previous_content, previous.b_to_a)
                    init = temporal.initialization(content, warped_prev, mask, fill)
            warm = init is not None  # started from the previous output carried along the flow
            if init is None:
                init = self.first_image(content, rgb, index)
            first_of_shot = index == shot_start or self.opts.mode == "per-frame"
            iterations = self.first_iterations if first_of_shot else self.later_iterations
            if warm and not first_of_shot:  # pay for what changed: the new pixels get a first frame's share
                iterations = schedule.warm_iterations(self.opts.schedule, self.later_iterations,
                                                      self.first_iterations, previous.untrusted_share)
                planned_work = schedule.cost(self.levels(self.later_iterations, stylized=True), self.cost_of)
                total_work += schedule.cost(self.levels(iterations, stylized=True), self.cost_of) - planned_work
            outcome = self.optimize(index, init, content, constraints, iterations, total_work,
                                    warm_start=warm and not first_of_shot)
            previous_content = content
            outputs[index] = outcome.image
            outputs.pop(index - keep, None)
            result = FrameResult(index + 1, self.to_output(outcome.image, rgb), time.perf_counter() - started,
                                 outcome.losses, outcome.iterations, schedule=self.opts.schedule,
                                 levels=outcome.levels, cut=bool(cut is not None and cut.is_cut))
            self.finished.add(index + 1)
            yield result
        self._emit(Progress("done", self.count, self.count, frames_done=self.count))

    def _iterations_for(self, index: int) -> int:
        """The frame's iteration count as the loop below gives it, before any cut is known."""
        if self.opts.mode == "per-frame" or index == 0:
            return self.first_iterations
        return self.later_iterations

    def _warm(self, index: int) -> bool:
        """Whether the frame is expected to start from the previous output (a cut, found later, may still
        make it a first frame)."""
        return self.opts.mode != "per-frame" and index > 0

    def _cut_before(self, index: int) -> bool:
        """The cut test on the pair (index - 1, index), for frames a resumed run takes over."""
        a, b = self.source[index - 1], self.source[index]
        pair = temporal.pair_flow(self.s.flow, a, b)
        return cuts.detect_cut(a, b, pair.b_to_a, pair.certainty_on_b).is_cut

    def _stylized(self, warm: bool) -> bool:
        """Whether a frame starts from an image stylized at every scale: the previous output carried
        along the flow, or the network's painting."""
        return warm or self.opts.init == "fast"

    # -- multi-pass ------------------------------------------------------------------------------
    def multipass(self) -> Iterator[FrameResult]:
        """Ruder et al.'s multi-pass: passes alternate direction; from pass 2 each frame starts from
        (x + c * warp(x_n)) / (1 + c) with x_n its neighbour in the pass direction; the temporal loss
        joins from the middle pass on with its own weight. The clip's state (frames, results, flows and
        masks) is kept on disk (:class:`~.io.scratch.Scratch`), so memory does not grow with the clip.
        Given a ``scratch_dir``, the state outlives a run that did not end (killed, stopped, cancelled):
        the next run of the same work there continues from the last frame it finished, in its pass."""
        resumable = self.s.scratch_dir is not None
        scratch = Scratch(self.s.scratch_dir, resumable=MULTIPASS_STATE if resumable else None)
        ended = False
        try:
            yield from self._multipass(scratch)
            ended = True
        finally:
            if ended or not resumable:
                scratch.close()

    def _multipass_fingerprint(self) -> str:
        """What a multipass state belongs to: the options, paintings, weights, clip size and first frame."""
        digest = hashlib.sha256(json.dumps(asdict(self.opts), sort_keys=True, default=str).encode())
        digest.update(repr((self.count, tuple(self.source.size))).encode())
        for array in (self.style_weights, self.source[0], *self.s.style_images):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def _multipass(self, scratch: Scratch) -> Iterator[FrameResult]:
        opts, device, count = self.opts, self.s.device, self.count
        passes, iterations = opts.passes, self.later_iterations
        temporal_from = passes // 2 + 1
        seconds = [0.0] * count
        total_work = passes * count * iterations
        fingerprint = self._multipass_fingerprint()
        start = scratch.resume_point(fingerprint) or (1, 0)  # (pass, frames done in it)
        self.work_done = ((start[0] - 1) * count + start[1]) * iterations

        def frame(index: int) -> np.ndarray:  # read from the source once, in the first (forward) pass
            if f"frame-{index}" in scratch:
                return scratch.get(f"frame-{index}")
            rgb = self.source[index]
            scratch.put(f"frame-{index}", rgb)
            return rgb

        def cut_between(a: int, pass_index: int) -> bool:
            """Whether frames a and a + 1 are in different shots; the pair's flows, masks and cut test
            are computed once, in the second pass."""
            pair_key = f"pair-{a}"
            if f"{pair_key}-cut" not in scratch:
                self._emit(Progress("flow", a + 1, count, pass_index=pass_index, pass_count=passes))
                pair = temporal.pair_flow(self.s.flow, frame(a), frame(a + 1))
                cut = cuts.detect_cut(frame(a), frame(a + 1), pair.b_to_a, pair.certainty_on_b)
                for name in ("a_to_b", "b_to_a", "certainty_on_a", "certainty_on_b"):
                    scratch.put(f"{pair_key}-{name}", getattr(pair, name))
                scratch.put(f"{pair_key}-cut", np.array(cut.is_cut))
            return bool(scratch.get(f"{pair_key}-cut"))

        def toward(index: int, neighbour: int, pass_index: int) -> tuple[np.ndarray, np.ndarray] | None:
            """(flow index -> neighbour, certainty on index), or None across a scene cut."""
            pair_key = f"pair-{min(index, neighbour)}"
            if cut_between(min(index, neighbour), pass_index):
                return None
            # index is frame b of the pair when its neighbour comes before it, frame a when after
            names = ("b_to_a", "certainty_on_b") if neighbour < index else ("a_to_b", "certainty_on_a")
            return scratch.get(f"{pair_key}-{names[0]}"), scratch.get(f"{pair_key}-{names[1]}")

        def result(index: int) -> torch.Tensor:
            return torch.from_numpy(scratch.get(f"result-{index}")).to(device)

        for pass_index in range(start[0], passes + 1):
            forward = pass_index % 2 == 1
            order = range(count) if forward else range(count - 1, -1, -1)
            for step, index in enumerate(order):
                if (pass_index, step) < start:  # finished by the run that left this state
                    continue
                if self._stopped():
                    raise Cancelled("cancelled")
                started = time.perf_counter()
                rgb = frame(index)
                content = image_tensor(self.content_space(rgb), device)
                neighbour = index - 1 if forward else index + 1
                constraint = None
                carried = toward(index, neighbour, pass_index) if pass_index > 1 and 0 <= neighbour < count else None
                if carried is not None:
                    flow, mask = carried
                    constraint = (temporal.warped_onto(result(neighbour), flow), temporal.mask_tensor(mask, device))
                if pass_index == 1:
                    init = self.first_image(content, rgb, index)
                elif constraint is not None:
                    warped, mask = constraint
                    init = (result(index) + mask * warped) / (1.0 + mask)
                else:
                    init = result(index)
                use_temporal = constraint is not None and pass_index >= temporal_from
                outcome = self.optimize(index, init, content, [constraint] if use_temporal else [], iterations,
                                        total_work, opts.multipass_temporal_weight, pass_index, passes,
                                        schedule_name="reference")
                scratch.put(f"result-{index}", outcome.image.detach().cpu().numpy())
                seconds[index] += time.perf_counter() - started
                if pass_index == passes:
                    cut = passes > 1 and index > 0 and cut_between(index - 1, pass_index)
                    yield FrameResult(index + 1, self.to_output(outcome.image, rgb), seconds[index],
                                      outcome.losses, outcome.iterations * passes, cut=cut)
                scratch.mark(fingerprint, (pass_index, step + 1))  # in the last pass: once the frame was taken
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
