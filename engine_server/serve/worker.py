"""The worker: one thread per device that runs queued jobs through the engine core.

It never touches the client socket (ZeroMQ sockets belong to one thread): it reports to the main loop
over an inproc PAIR socket of its own, one msgpack header plus optional binary frames per event:

    {"event": "started" | "describe" | "progress" | "frame" | "ended" | "stopped", "job": id, ...}

The only thing it writes is output frames (atomically, PNG first known by its final name), so job
state stays with the main thread. The engine (torch, VGG weights) is imported and loaded here, lazily,
so the socket loop answers from its first second.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace

import msgpack
import zmq

from ..io.frames import encode_png, write_atomic
from .jobs import Job

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.1  # seconds: at most ~10 progress events per second per job (PROTOCOL.md)
OPTION_TYPES = {"long_term": tuple}


_serials = itertools.count(1)


@dataclass
class Ticket:
    """What the worker needs of a job: a snapshot, so the worker never reads the main thread's Job.
    ``serial`` tells one run of a job from the next (a job cancelled and continued while its first run
    was being picked up): every event carries it."""

    job: Job
    cancel: threading.Event = field(default_factory=threading.Event)
    serial: int = field(default_factory=lambda: next(_serials))

    @classmethod
    def of(cls, job: Job) -> "Ticket":
        return cls(replace(job, received=set(job.received), finished=set(job.finished)))


@dataclass(frozen=True)
class ScaleOut:
    """``serve --ray``: temporal jobs run across a Ray cluster's workers (:mod:`..scale`)."""

    address: str
    workers: int | None = None
    chunk_frames: int | None = None
    seam_frames: int | None = None


class Worker(threading.Thread):
    def __init__(self, context: zmq.Context, events_address: str, device: str, vgg_weights: str = "auto",
                 scale: ScaleOut | None = None):
        super().__init__(name="engine-worker", daemon=True)
        self.context = context
        self.scale = scale
        self.events_address = events_address
        self.device = device
        self.vgg_weights = vgg_weights
        self.tickets: queue.Queue[Ticket] = queue.Queue()
        self.shutdown = threading.Event()
        self._socket = None
        self._last_progress = 0.0
        self._last_key = None
        self._serial = 0  # the ticket being run

    # -- main thread side ---------------------------------------------------------------------
    def enqueue(self, ticket: Ticket) -> None:
        self.tickets.put(ticket)

    def stop(self) -> None:
        self.shutdown.set()

    # -- worker thread ------------------------------------------------------------------------
    def run(self) -> None:
        self._socket = self.context.socket(zmq.PAIR)
        self._socket.setsockopt(zmq.LINGER, 1000)
        self._socket.connect(self.events_address)
        try:
            while not self.shutdown.is_set():
                try:
                    ticket = self.tickets.get(timeout=0.2)
                except queue.Empty:
                    continue
                if ticket.cancel.is_set():  # cancelled while queued: the main thread already said so
                    continue
                try:
                    self._run_job(ticket)
                except Exception:  # never let one job end the worker
                    log.exception("job %s: worker error", ticket.job.id)
        finally:
            self._socket.close()
            if self.scale is not None:
                from .. import ClusterStylizer

                ClusterStylizer.disconnect()  # from the thread that connected, before the process ends

    def _send(self, header: dict, blobs=()) -> None:
        header["ticket"] = self._serial
        self._socket.send_multipart([msgpack.packb(header, use_bin_type=True), *blobs], copy=False)

    def _run_job(self, ticket: Ticket) -> None:
        job = ticket.job
        self._serial = ticket.serial
        log.info("job %s: starting (%d frames %dx%d)", job.id, job.frame_count, *job.size)
        self._send({"event": "started", "job": job.id})
        try:
            state, error = self._stylize(ticket)
        except Exception as exc:  # the engine failed: the job fails, the engine goes on
            log.exception("job %s failed", job.id)  # the details stay in the engine's log
            state, error = "failed", {"code": "internal", "field": None,
                                      "message": f"the engine failed while running this job ({type(exc).__name__}); "
                                                 f"its log has the details"}
        if state == "stopped":
            log.info("job %s: interrupted by shutdown; it resumes when the engine starts again", job.id)
            self._send({"event": "stopped", "job": job.id})
            return
        log.info("job %s: %s", job.id, state)
        self._send({"event": "ended", "job": job.id, "state": state, "error": error})

    def _stylize(self, ticket: Ticket) -> tuple[str, dict | None]:
        from .. import StylizeOptions, Stylizer  # the engine's public API, loaded on the worker thread
        from ..errors import Cancelled, FlowBackendUnavailable, InputError, OutOfMemory, WeightsUnavailable, WorkerLost

        job = ticket.job
        options = {k: OPTION_TYPES.get(k, lambda v: v)(v) for k, v in (job.spec.get("options") or {}).items()}
        options = StylizeOptions(**options, device=self.device, vgg_weights=self.vgg_weights)
        self._progress_event(job.id, "setup", 0, job.frame_count, force=True)

        def stop_requested() -> bool:
            return ticket.cancel.is_set() or self.shutdown.is_set()

        stylizer = None
        try:
            paintings = self._paintings(job, options)
            if self.scale is not None and options.mode == "temporal":
                from .. import ClusterStylizer

                stylizer = ClusterStylizer(paintings, replace(options, device=self.scale_device()),
                                           self.scale.address, self.scale.workers, self.scale.chunk_frames,
                                           progress=lambda p: self._on_progress(job.id, p), cancel=stop_requested,
                                           staging=job.dir / ClusterStylizer.STAGING_FOLDER,
                                           **({"window": self.scale.seam_frames} if self.scale.seam_frames else {}))
            else:
                stylizer = Stylizer(paintings, options, progress=lambda p: self._on_progress(job.id, p),
                                    cancel=stop_requested)
                stylizer.scratch_dir = job.dir  # multipass's clip state, on the job store's disk
            self._send({"event": "describe", "job": job.id, "report": stylizer.describe()})
            # multipass yields frames only in its last pass: it resumes from its own state in the job's folder
            done = {} if options.mode == "multipass" else self._resume(job, options)
            inputs = [str(job.input_path(i)) for i in range(1, job.frame_count + 1)]
            for result in stylizer.run(inputs, job.spec["weights"], done):
                png = encode_png(result.image)
                meta = {"seconds": round(result.seconds, 3), "iterations": result.iterations,
                        "losses": {k: float(v) for k, v in result.losses.items()}}
                write_atomic(job.meta_path(result.index), json.dumps(meta).encode())
                write_atomic(job.output_path(result.index), png)  # the PNG's final name = frame finished
                self._send({"event": "frame", "job": job.id, "index": result.index, **meta}, [png])
        except Cancelled:
            return ("cancelled", None) if ticket.cancel.is_set() else ("stopped", None)
        except OutOfMemory as exc:
            return "failed", {"code": "out_of_memory", "message": str(exc), "field": None}
        except (InputError, WeightsUnavailable, FlowBackendUnavailable) as exc:
            # the engine's paths are its own business: a client sees them relative to the job's folder
            message = str(exc).replace(str(job.dir) + os.sep, "")
            return "failed", {"code": "bad_field", "message": message, "field": None}
        except WorkerLost as exc:
            return "failed", {"code": "internal", "message": str(exc), "field": None}
        finally:
            if stylizer is not None and hasattr(stylizer, "shutdown"):  # the cluster's workers go back between jobs
                try:
                    stylizer.shutdown()
                except Exception:  # the job's outcome stands; the log says what went wrong
                    log.exception("job %s: giving the Ray workers back failed", job.id)
        return "done", None

    def scale_device(self) -> str:
        """The cluster's workers pick their own GPU: 'cuda:1' on this machine means nothing there."""
        return "cpu" if self.device == "cpu" else "auto"

    @staticmethod
    def _paintings(job: Job, options) -> list:
        """The job's style images, each decoded and brought down to the size the job can use before the
        next one is read: sixteen 40-megapixel scans never sit in memory side by side."""
        from .. import fit_style, painting_pixels
        from ..io.frames import read_image

        needed = painting_pixels(job.size, options)
        return [fit_style(read_image(path, f"style {i + 1}"), needed) for i, path in enumerate(job.style_paths())]

    @staticmethod
    def _resume(job: Job, options) -> dict:
        """The job's finished frames for a resumed run: the images it reads (a few, see
        images_to_resume), None for the rest. A finished frame whose image cannot be read is made again,
        and then the frames before it that it needs are read."""
        from .. import InputError, images_to_resume
        from ..io.frames import read_image

        finished, images = set(job.finished), {}
        while True:
            unreadable = set()
            for index in images_to_resume(options, finished, job.frame_count) - images.keys():
                try:
                    images[index] = read_image(job.output_path(index), "finished frame")
                except InputError:
                    log.warning("job %s: finished frame %d unreadable, recomputing it", job.id, index)
                    unreadable.add(index)
            if not unreadable:
                break
            finished -= unreadable
        if finished:
            log.info("job %s: resuming with %d finished frames", job.id, len(finished))
        return {index: images.get(index) for index in sorted(finished)}

    def _on_progress(self, job_id: str, event) -> None:
        self._progress_event(job_id, event.stage, event.frame, event.frame_count, event.iteration,
                             event.iterations, event.loss, event.pass_index, event.pass_count, event.eta,
                             event.frames_done)

    def _progress_event(self, job_id, stage, frame, frame_count, iteration=0, iterations=0, loss=None,
                        pass_index=1, passes=1, eta=None, frames_done=0, force=False) -> None:
        # Rate-limited, but a new stage or frame always goes out so clients see every step.
        now = time.monotonic()
        key = (job_id, stage, frame, pass_index)
        if not force and key == self._last_key and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_key, self._last_progress = key, now
        self._send({"event": "progress", "job": job_id, "stage": stage, "frame": frame,
                    "frame_count": frame_count, "iteration": iteration, "iterations": iterations,
                    "loss": None if loss is None else float(loss), "pass": pass_index, "passes": passes,
                    "eta": None if eta is None else float(eta), "frames_done": frames_done})
