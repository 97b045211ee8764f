"""One optimizer iteration: the frame's loss, its gradient and the optimizer's step, at a fixed image tensor.

On a GPU an iteration is a few hundred kernels. At the pyramid's coarse levels the host takes longer to
launch them than the GPU takes to run them, so the GPU idles between kernels. :class:`GraphedIteration`
records the whole iteration once as a CUDA graph and then replays it: one launch per iteration.

A recording reads and writes fixed addresses, so everything the iteration touches stays put between
replays: the image is updated in place, the objective's targets are fixed for the level, and L-BFGS keeps
all its state in preallocated tensors updated in place (:mod:`.lbfgs`). The first iterations run eagerly
on a side stream, as PyTorch's documentation asks (cuDNN picks its algorithms there, and L-BFGS takes
its special first step); they are real iterations, counted like the replayed ones.
"""
from __future__ import annotations

import logging
import warnings

import torch

from ..style.vgg import VGG19Features
from .lbfgs import LBFGS
from .objective import Objective

log = logging.getLogger(__name__)

WARMUP = 3  # eager iterations before recording (PyTorch's examples use 3 or more)


class Iteration:
    """Run eagerly: ``step()`` computes the loss at the current image, its gradient and one optimizer
    step (the image moves in place), and returns the loss at the image it started from."""

    def __init__(self, image: torch.Tensor, objective: Objective, vgg: VGG19Features,
                 lbfgs: LBFGS | None = None, adam: torch.optim.Optimizer | None = None):
        if (lbfgs is None) == (adam is None):
            raise ValueError("an iteration needs exactly one optimizer")
        self.image, self.objective, self.vgg = image, objective, vgg
        self.lbfgs, self.adam = lbfgs, adam

    def _run(self) -> torch.Tensor:
        total = self.objective.terms(self.image, self.vgg)["total"]
        (grad,) = torch.autograd.grad(total, self.image)
        if self.lbfgs is not None:
            self.lbfgs.step(self.image.data.view(-1), grad)
        else:
            self.image.grad = grad
            self.adam.step()
        return total.detach()

    def step(self) -> torch.Tensor:
        return self._run()


class GraphedIteration(Iteration):
    """The same iterations, replayed from a CUDA graph after :data:`WARMUP` eager ones (L-BFGS only).

    If recording fails (an operation that cannot be captured, or a recording that came out empty), the
    log says so once, this and every later iteration on that device stay eager: the frame is never lost
    to the speed-up, and a failing recording is not retried for every level of every frame."""

    def __init__(self, image: torch.Tensor, objective: Objective, vgg: VGG19Features, lbfgs: LBFGS):
        super().__init__(image, objective, vgg, lbfgs=lbfgs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None  # the recording's output, rewritten by every replay
        self._calls = 0
        self._stream = torch.cuda.Stream(image.device)

    @property
    def eager_only(self) -> bool:
        return self.graph is None and str(self.image.device) in _FAILED_DEVICES

    def step(self) -> torch.Tensor:
        self._calls += 1
        if self.eager_only:
            return self._run()
        if self.graph is None and self._calls <= WARMUP:
            return self._on_side_stream()
        if self.graph is None:
            outcome = self._record()
            if outcome == "failed":
                return self._run()
            if outcome == "ran":
                return self.loss
        with torch.cuda.device(self.image.device):
            self.graph.replay()
        self.lbfgs.iteration += 1  # the Python side of the step the replay took
        return self.loss.clone()  # the next replay overwrites the recording's own tensor

    def _on_side_stream(self) -> torch.Tensor:
        current = torch.cuda.current_stream(self.image.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            loss = self._run()
        current.wait_stream(self._stream)
        return loss

    def _record(self) -> str:
        """'recorded'; 'failed' (nothing ran); or 'ran': the recording came out empty because the kernels
        went to a stream that was not recording, so the iteration ran eagerly and counts."""
        graph = torch.cuda.CUDAGraph()
        iteration = self.lbfgs.iteration
        try:
            # On the image's device and the side stream made there (a stream of another device would record
            # nothing). thread_local: flow threads (RAFT runs on the GPU) may keep launching work meanwhile;
            # backward runs on this thread so that its calls are checked too. capture_begin/end rather than
            # torch.cuda.graph, whose entry synchronizes and empties the allocator's cache every time:
            # a level is recorded for every frame.
            with warnings.catch_warnings(record=True) as caught, torch.cuda.device(self.image.device), \
                    torch.cuda.stream(self._stream), torch.autograd.set_multithreading_enabled(False):
                warnings.simplefilter("always")
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    self.loss = self._run()  # recorded, not run: the replay that follows runs it
                finally:
                    graph.capture_end()
        except Exception as error:  # noqa: BLE001 - whatever stops the recording, the frame goes on eagerly
            self.lbfgs.iteration = iteration  # the recording's Python side ran; its kernels did not
            self._give_up(error)
            return "failed"
        empty = [w for w in caught if "empty" in str(w.message).lower()]
        for other in caught:
            if other not in empty:
                warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
        if empty:
            self._give_up(empty[0].message)
            return "ran"
        self.lbfgs.iteration = iteration  # the replay that follows counts the step
        self.graph = graph
        return "recorded"

    def _give_up(self, why) -> None:
        _FAILED_DEVICES.add(str(self.image.device))
        log.warning("CUDA graph recording failed on %s, iterations stay eager: %s", self.image.device, why)


_FAILED_DEVICES: set[str] = set()  # devices where a recording failed: not tried again in this process

GRAPH_MIN_ITERATIONS = 50  # a level planned shorter than this stays eager: recording costs several iterations


def make_iteration(image: torch.Tensor, objective: Objective, vgg: VGG19Features, lbfgs: LBFGS | None = None,
                   adam: torch.optim.Optimizer | None = None, cuda_graphs: bool = False,
                   planned: int | None = None) -> Iteration:
    """A graphed iteration where one can pay (asked for, L-BFGS, on CUDA, a level planned for at least
    :data:`GRAPH_MIN_ITERATIONS`, no failed recording on the device), else an eager one."""
    if (cuda_graphs and lbfgs is not None and image.device.type == "cuda"
            and (planned is None or planned >= GRAPH_MIN_ITERATIONS) and str(image.device) not in _FAILED_DEVICES):
        return GraphedIteration(image, objective, vgg, lbfgs)
    return Iteration(image, objective, vgg, lbfgs, adam)
