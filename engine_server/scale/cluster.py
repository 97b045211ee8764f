"""Scale-out on Ray: one strip's chunks on many workers, one per GPU (on a CPU machine, one per core group).

    ClusterStylizer(styles, options, address="local", workers=2).run(frames) -> FrameResult, in order

This process (the driver) plans the chunks (:mod:`.chunks`), hands them to :class:`ChunkWorker` actors as
they fall idle, blends each seam's window (:mod:`.seams`) once both chains have made it, and yields the
finished frames in input order, with progress over all workers. Ray places the actors, restarts one whose
process dies, and moves the data; the driver only decides what runs next. Workers read their chunk's frames
a few at a time from a feed on the driver's machine (:mod:`.feed`), so no chunk is ever in memory whole.

Faults: a worker that dies mid-chunk loses nothing that reached the driver. The chunk goes back in the
queue with the frames already received as its history, so its chain carries on exactly where it stopped
(the same resume the single-machine engine does). Every received frame is staged (:mod:`.staging`), so a
run stopped and started again with the same output continues after them.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import Cancelled, InputError, WorkerLost
from ..io.frames import FrameLike, FrameSource, open_frames
from ..io.scratch import Scratch
from ..options import StylizeOptions
from ..pipeline import FrameResult, Progress, images_to_resume, load_styles, per_frame_weights
from . import chunks as chunking
from . import seams
from .feed import FedFrames, FrameFeed
from .staging import FOLDER_NAME, FrameStore, Staging

RAY_MISSING = "--ray needs Ray on this machine: pip install 'vse-style-transfer[ray]' (make setup installs it)"
WAIT_SECONDS = 0.2   # how often the driver looks at cancel() while the workers run
MAX_RERUNS = 3       # a chunk whose worker dies this often more is failing for a reason of its own
RESTART_POLL = 0.5   # how often the driver asks a restarting worker whether it is back


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


def connect(address: str, workers: int | None = None) -> None:
    """``local``: a Ray runtime in this process's machine (all its cores and GPUs); anything else: the
    address of a running cluster (``ray start --head`` printed it; ``auto`` finds one on this machine)."""
    ray = import_ray()
    if ray.is_initialized():
        return
    quiet = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address == "local":
        ray.init(num_cpus=max(os.cpu_count() or 1, workers or 1), **quiet)
    else:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"--ray {address}: no Ray cluster answers there ({exc})") from None


def disconnect() -> None:
    """End this process's Ray connection (a runtime started by ``local`` with it). The engine server calls
    it from the thread that connected, before it exits: Ray's runtime left to the interpreter's exit
    aborts the process."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


@dataclass
class Layout:
    """How many workers, and what each asks Ray for."""

    workers: int
    gpus_per_worker: float
    cpus_per_worker: int
    device: str

    @classmethod
    def choose(cls, options: StylizeOptions, workers: int | None, threads: int | None = None) -> "Layout":
        """One worker per GPU of the cluster; on CPUs, the cores shared out (``threads`` each, if given)."""
        ray = import_ray()
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        gpus = int(sum(node.get("GPU", 0) for node in nodes))
        if options.device != "cpu" and gpus > 0:
            if workers is not None and workers > gpus:
                raise InputError(f"--workers {workers}: the Ray cluster has {gpus} GPUs (one worker each)")
            count = workers or gpus
            # a worker's CPUs must fit beside its GPU on one machine: the scarcest GPU machine decides
            per_gpu = min(int(n.get("CPU", 1) // n["GPU"]) for n in nodes if n.get("GPU", 0) > 0)
            return cls(count, 1.0, threads or max(1, min(4, per_gpu)), "cuda")
        if options.device.startswith("cuda"):
            raise InputError(f"--device {options.device}: the Ray cluster has no GPUs")
        cpus = int(sum(node.get("CPU", 0) for node in nodes)) or 1
        count = workers or 1
        if count > cpus:
            raise InputError(f"--workers {count}: the Ray cluster has {cpus} CPUs and no GPUs")
        biggest = int(max(node.get("CPU", 1) for node in nodes)) if nodes else 1
        return cls(count, 0.0, threads or max(1, min(biggest, cpus // count)), "cpu")


class ChunkWorker:
    """One Ray actor: the engine loaded once, then the chunks the driver hands out.

    The paintings come with every call (a reference into Ray's object store, nothing copied on the same
    machine), not with the constructor, so a worker Ray restarts after a crash needs nothing kept for it."""

    def __init__(self, options: dict, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.options = StylizeOptions(**options)
        self.stylizer = None

    def load(self, styles: list[np.ndarray]) -> dict:
        """Load the engine (once); says where this worker runs."""
        if self.stylizer is None:
            from ..pipeline import Stylizer

            self.stylizer = Stylizer(styles, self.options)
        return {"host": os.uname().nodename, "pid": os.getpid(), "device": str(self.stylizer.device)}

    def chunk(self, styles: list[np.ndarray], feed, number: int, frames: range, size: tuple[int, int],
              weights: np.ndarray, done: dict[int, np.ndarray | None], colour_reference: np.ndarray | None):
        """Yields each frame of chunk ``number`` as it finishes (indices relative to the chunk, 1-based).
        ``frames``: the strip's frames it makes, read from ``feed`` as the chain asks for them. ``done``:
        the frames it already made, with the images of the last few (its chain carries on from them).
        ``colour_reference``: the strip's first frame when colours are preserved (every chunk matches the
        paintings to it, as one machine does), else None."""
        import ray

        self.load(styles)
        start = frames.start
        fed = FedFrames(lambda a, b: ray.get(feed.frames.remote(number, start + a, start + b)), len(frames), size)
        yield from self.stylizer.run(fed, weights, done, colour_reference)


class ClusterStylizer:
    """The temporal mode across Ray workers: the same results interface as :class:`Stylizer`."""

    def __init__(self, styles: Sequence[FrameLike], options: StylizeOptions | None = None,
                 address: str = "local", workers: int | None = None, chunk_frames: int | None = None,
                 progress: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None,
                 staging: str | os.PathLike | None = None, window: int = seams.DEFAULT_WINDOW,
                 threads: int | None = None, keep_staging: bool = False):
        self.options = options or StylizeOptions()
        self.options.validate()
        if self.options.mode != "temporal":
            raise InputError(f"--ray runs the temporal mode (chunks and seams); --mode {self.options.mode} "
                             "runs on one machine")
        if workers is not None and workers < 1:
            raise InputError(f"--workers {workers}: must be at least 1")
        if chunk_frames is not None and chunk_frames < 1:
            raise InputError(f"--chunk-frames {chunk_frames}: must be at least 1")
        self.style_images = load_styles(styles)
        self.address, self.chunk_frames, self.window = address, chunk_frames, window
        self.progress, self.cancel, self.staging_folder = progress, cancel, staging
        self.keep_staging = keep_staging  # the benchmark reads both chains' frames of each seam
        connect(address, workers)
        self.layout = Layout.choose(self.options, workers, threads)
        self.plan: chunking.Plan | None = None
        # of the last run: what the workers sent, chunks rerun, and the feed's [frames handed out, largest
        # request] for each chunk
        self.stats = {"frames_made": 0, "reruns": 0, "fed": {}}
        self._workers: list = []
        self.styles_ref = None

    STAGING_FOLDER = FOLDER_NAME

    def describe(self) -> dict:
        first, later = self.options.resolved_iterations()
        window = max((s.window for s in self.plan.seams), default=self.window) if self.plan is not None else self.window
        return {"options": asdict(self.options), "iterations": {"first": first, "later": later},
                "device": self.layout.device, "ray": {"address": self.address, **asdict(self.layout),
                                                      "seam_frames": window},
                "plan": None if self.plan is None else self.plan.to_dict()}

    def fingerprint(self, source: FrameSource) -> str:
        """What staged frames were made from: a staged folder from another run is not this one's to take."""
        digest = hashlib.sha256(json.dumps([asdict(self.options), list(source.size), len(source)],
                                           sort_keys=True, default=str).encode())
        for image in self.style_images:
            digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    # -- the plan ------------------------------------------------------------------------------
    def make_plan(self, source: FrameSource, staging: Staging) -> chunking.Plan:
        """The saved plan of a staged run being resumed, else cuts found now and chunks cut from them."""
        saved = staging.saved_plan()
        fingerprint = self.fingerprint(source)
        if saved is not None and saved.get("fingerprint") == fingerprint:
            return chunking.Plan.from_dict(saved)
        staging.clear()  # made for other frames, styles or options
        from ..motion.flow import make_flow

        cuts = chunking.find_cuts(source, make_flow(self.options.flow, device="cpu"))
        chunk_frames = self.chunk_frames or chunking.default_chunk_frames(len(source), self.layout.workers,
                                                                          self.window)
        chunk_plan = chunking.plan(len(source), cuts, chunk_frames, self.window)
        staging.save_plan({**chunk_plan.to_dict(), "fingerprint": fingerprint})
        return chunk_plan

    # -- the run -------------------------------------------------------------------------------
    def run(self, frames: FrameSource | str | Sequence[FrameLike], weights=None,
            done: dict[int, np.ndarray] | None = None) -> Iterator[FrameResult]:
        """Yield every frame not in ``done`` (1-based index -> finished image) in order."""
        source = frames if isinstance(frames, FrameSource) else open_frames(frames, self.options.width)
        style_weights = per_frame_weights(weights, len(source), len(self.style_images))
        # Given no folder, the frames wait in a temporary one (removed with the run, however it ends): in
        # memory, a later chunk's frames would pile up for as long as the first chunk runs.
        temporary = Scratch() if self.staging_folder is None else None
        try:
            staging = Staging(self.staging_folder if temporary is None else temporary.path)
            self.plan = self.make_plan(source, staging)
            self.stats = {"frames_made": 0, "reruns": 0, "fed": {}}
            run = _Run(self, source, style_weights, staging, dict(done or {}))
            try:
                yield from run.frames()
            finally:
                if run.close():  # chunks still running cannot be cancelled on their workers: the workers go
                    self.shutdown()
            if not self.keep_staging:
                staging.remove()
        finally:
            if temporary is not None:
                temporary.close()

    def start_workers(self) -> list:
        ray = import_ray()
        if not self._workers:
            actor = ray.remote(ChunkWorker).options(
                num_cpus=self.layout.cpus_per_worker, num_gpus=self.layout.gpus_per_worker,
                max_restarts=-1, max_task_retries=0)
            options = asdict(replace(self.options, device=self.layout.device))
            self.styles_ref = ray.put(self.style_images)  # once into the object store, for every call
            self._workers = [actor.remote(options, self.layout.cpus_per_worker) for _ in range(self.layout.workers)]
        return self._workers

    def wait_ready(self) -> list[dict]:
        """Start the workers and wait until each has loaded the engine; says where each one runs."""
        workers = self.start_workers()
        return import_ray().get([worker.load.remote(self.styles_ref) for worker in workers])

    def shutdown(self) -> None:
        """Give the workers and their GPUs back (the workers stay between runs of this object, the engine
        loaded; a Ray runtime started here stays for the next one in this process)."""
        ray = import_ray()
        workers, self._workers = self._workers, []
        for worker in workers:
            try:
                ray.kill(worker)
            except Exception:  # already gone with its machine: nothing to give back
                pass

    disconnect = staticmethod(disconnect)


def engine_error(exc) -> BaseException:
    """The engine's own exception inside a worker's RayTaskError (bad input, out of memory)."""
    cause = exc.as_instanceof_cause()
    return getattr(cause, "cause", None) or cause


@dataclass
class _Task:
    chunk: chunking.Chunk
    generator: object     # the worker's stream of finished frames
    worker: int


class _Run:
    """One strip on the cluster: what is done, what runs where, what goes out next."""

    def __init__(self, owner: ClusterStylizer, source: FrameSource, weights: np.ndarray, staging: Staging,
                 done: dict[int, np.ndarray]):
        self.owner, self.source, self.weights, self.staging = owner, source, weights, staging
        self.plan = owner.plan
        self.count = len(source)
        self.history = max(owner.options.long_term)
        self.cuts = set(self.plan.cuts)
        # 0-based frames the caller already has; of their images only those a chain may carry on from (the
        # rule a resume on one machine follows)
        self.finished = {index - 1 for index in done}
        self.finished_images = {i - 1: done[i] for i in images_to_resume(owner.options, done, self.count)}
        self.reruns: dict[int, int] = {}  # chunk number -> times its worker died under it
        self.seam_at = {f: (seam, f - seam.frame) for seam in self.plan.seams for f in seam.frames}
        self.next_out = 0
        self.started = time.perf_counter()
        self.clock: tuple[float, int] | None = None
        self.tasks: list[_Task] = []
        self.idle: list[int] = []
        # workers whose process died: the probe sent (a call answered once Ray has restarted it), or when
        # to send the next one; they get no chunk until one is answered
        self.restarting: dict[int, object] = {}
        self.results: dict[int, FrameResult] = {}  # what the workers said of each frame (images staged)
        self.feed = None  # the strip's frames, for the workers (started with the run)
        self.colour_reference = source[0] if owner.options.preserve_colors else None

    # -- what is there ---------------------------------------------------------------------------
    def store_of(self, chunk: chunking.Chunk, index: int) -> FrameStore:
        """A chunk's own frames are ``raw``; the window past its end is ``carried``."""
        return self.staging.raw if index < chunk.stop else self.staging.carried

    def chain_output(self, chunk: chunking.Chunk, index: int) -> np.ndarray | None:
        """Frame ``index`` as ``chunk``'s chain made it (a finished frame outside every seam's window is
        that very image)."""
        store = self.store_of(chunk, index)
        if index in store:
            return store.get(index)
        if index in self.finished_images and index not in self.seam_at:
            return self.finished_images[index]
        return None

    def has_chain_output(self, chunk: chunking.Chunk, index: int) -> bool:
        return index in self.store_of(chunk, index) or (index in self.finished and index not in self.seam_at)

    def needed(self, chunk: chunking.Chunk, index: int) -> bool:
        """Does the output still need ``chunk``'s chain output of ``index``?"""
        return index not in self.finished and index >= self.next_out and not self.has_chain_output(chunk, index)

    def has_final(self, index: int) -> bool:
        if index in self.seam_at:  # both chains' outputs, to blend
            return index in self.staging.carried and index in self.staging.raw
        return index in self.staging.raw

    def final_output(self, index: int) -> np.ndarray:
        if index in self.seam_at:
            seam, position = self.seam_at[index]
            return seams.repair(self.staging.carried.get(index), self.staging.raw.get(index), position,
                                seam.window, self.owner.options.style_scale)
        return self.staging.raw.get(index)

    def work_done(self) -> int:
        made = 0
        for chunk in self.plan.chunks:
            made += sum(1 for i in chunk.frames if i in self.finished or self.has_chain_output(chunk, i))
        return made

    # -- what runs next ------------------------------------------------------------------------
    def pending_chunks(self) -> list[chunking.Chunk]:
        running = {t.chunk.number for t in self.tasks}
        return [c for c in self.plan.chunks
                if c.number not in running and any(self.needed(c, i) for i in c.frames)]

    def start_chunk(self, worker_number: int, chunk: chunking.Chunk) -> _Task:
        """The chunk's chain, carrying on after the frames it already made (a rerun, or a resumed run)."""
        resume = chunk.start
        while resume < chunk.frames.stop and self.has_chain_output(chunk, resume):
            resume += 1
        done: dict[int, np.ndarray | None] = {}
        for i in range(chunk.start, resume):  # only the last few images are read: the long-term history
            done[i - chunk.start + 1] = self.chain_output(chunk, i) if i >= resume - self.history else None
        worker = self.owner.start_workers()[worker_number]
        generator = worker.chunk.remote(self.owner.styles_ref, self.feed, chunk.number, chunk.frames,
                                        self.source.size, self.weights[chunk.frames.start:chunk.frames.stop], done,
                                        self.colour_reference)
        return _Task(chunk, generator, worker_number)

    def dispatch(self) -> None:
        """Idle workers take the chunks in strip order (the output needs the early ones first)."""
        while self.idle:
            pending = self.pending_chunks()
            if not pending:
                return
            self.tasks.append(self.start_chunk(self.idle.pop(0), pending[0]))

    # -- the loop ------------------------------------------------------------------------------
    def start_feed(self) -> None:
        """The feed runs on this machine (where the frames are), served to every worker at once."""
        ray = import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.feed = ray.remote(FrameFeed).options(num_cpus=0, max_concurrency=self.owner.layout.workers + 2,
                                                  scheduling_strategy=here).remote(self.source)

    def frames(self) -> Iterator[FrameResult]:
        ray = import_ray()
        self.idle = list(range(len(self.owner.start_workers())))
        self.start_feed()
        while True:
            yield from self.ready_frames()
            if self.next_out >= self.count:
                self.owner.stats["fed"] = ray.get(self.feed.stats.remote())
                if self.owner.progress is not None:  # the whole strip, as the single-machine engine ends
                    self.owner.progress(Progress("done", self.count, self.count, frames_done=self.count,
                                                 elapsed=time.perf_counter() - self.started))
                return
            self.dispatch()
            self.emit()
            if not self.tasks and not self.restarting:
                raise RuntimeError(f"scale-out: frame {self.next_out + 1} is in no chunk left to run")
            if self.owner.cancel is not None and self.owner.cancel():
                raise Cancelled("cancelled")  # the workers go at once (run's finally): what they sent is staged
            self.probe_restarting()
            probes = {ref: worker for worker, ref in self.restarting.items() if not isinstance(ref, float)}
            waiting = [t.generator for t in self.tasks] + list(probes)
            ready = ray.wait(waiting, num_returns=1, timeout=WAIT_SECONDS)[0] if waiting else []
            if not waiting:
                time.sleep(WAIT_SECONDS)
            for ref in ready:
                if ref in probes:
                    self.answered(probes[ref], ref)
                else:
                    self.receive(next(t for t in self.tasks if t.generator is ref))

    def receive(self, task: _Task) -> None:
        ray = import_ray()
        try:
            result: FrameResult = ray.get(next(task.generator))
        except StopIteration:
            result = None
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            # The worker's process (or its machine, with the frames it held) died. Ray restarts the worker;
            # the chunk goes back in the queue and its chain carries on after the frames that arrived.
            self.lost(task, exc)
            return
        except ray.exceptions.RayTaskError as exc:  # the engine's own error (bad input, out of memory)
            raise engine_error(exc) from None
        if result is None:  # the chunk is done
            self.tasks.remove(task)
            self.idle.append(task.worker)
            self.feed.release.remote(task.chunk.number)
            return
        index = task.chunk.start + result.index - 1
        self.store_of(task.chunk, index).put(index, result.image)
        self.owner.stats["frames_made"] += 1
        if index < task.chunk.stop:
            self.results[index] = replace(result, index=index + 1, image=None)

    def lost(self, task: _Task, exc: Exception) -> None:
        number = task.chunk.number
        self.reruns[number] = self.reruns.get(number, 0) + 1
        self.owner.stats["reruns"] += 1
        if self.reruns[number] > MAX_RERUNS:
            raise WorkerLost(f"chunk {number + 1} (frames {task.chunk.start + 1}-{task.chunk.frames.stop}): its "
                             f"worker died {self.reruns[number]} times ({type(exc).__name__}); the frames made so "
                             "far are kept") from None
        try:
            import_ray().cancel(task.generator)  # a worker only unreachable for a while must not go on too
        except Exception:
            pass
        self.tasks.remove(task)
        self.restarting[task.worker] = time.monotonic()  # probed at once; idle only when it answers

    def probe_restarting(self) -> None:
        """Ask each restarting worker whose turn has come whether it is back. A chunk handed to it before
        would fail at once ("the actor is restarting") and count as one more death of that chunk."""
        now = time.monotonic()
        for worker, due in list(self.restarting.items()):
            if isinstance(due, float) and now >= due:
                self.restarting[worker] = self.owner.start_workers()[worker].load.remote(self.owner.styles_ref)

    def answered(self, worker: int, probe) -> None:
        ray = import_ray()
        try:
            ray.get(probe)
        except ray.exceptions.RayTaskError as exc:  # the engine could not load there
            raise engine_error(exc) from None
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
            self.restarting[worker] = time.monotonic() + RESTART_POLL  # not back yet
            return
        del self.restarting[worker]
        self.idle.append(worker)

    def ready_frames(self) -> Iterator[FrameResult]:
        while self.next_out < self.count and (self.next_out in self.finished or self.has_final(self.next_out)):
            index = self.next_out
            self.next_out += 1
            if index in self.finished:
                continue
            said = self.results.pop(index, None) or FrameResult(index + 1, None, 0.0, {}, 0, resumed=True)
            yield replace(said, image=self.final_output(index), cut=index in self.cuts)

    def emit(self) -> None:
        if self.owner.progress is None:
            return
        done = self.work_done()
        now = time.perf_counter()
        if self.clock is None and self.tasks:
            self.clock = (now, done)
        eta = None
        if self.clock is not None and done > self.clock[1]:
            eta = (now - self.clock[0]) / (done - self.clock[1]) * (self.plan.work - done)
        # Progress over all workers in frames' worth of work, said the way the single-machine engine says
        # it (the frame being worked on, and how far into it), so every front end reads it unchanged.
        worth = done * self.count / self.plan.work
        whole = min(self.count - 1, int(worth))
        self.owner.progress(Progress("stylize", whole + 1, self.count, iteration=round(100 * (worth - whole)),
                                     iterations=100, frames_done=self.next_out, elapsed=now - self.started,
                                     eta=eta))

    def close(self) -> bool:
        """Stop listening to the chunks still running; says whether there were any."""
        ray = import_ray()
        running, self.tasks = self.tasks, []
        for task in running:
            try:
                ray.cancel(task.generator)
            except Exception:  # already finished, or its worker is gone
                pass
        feed, self.feed = self.feed, None
        if feed is not None:
            try:
                ray.kill(feed)
            except Exception:  # its process already gone
                pass
        return bool(running)
