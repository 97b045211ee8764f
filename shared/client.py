"""Client of the engine server, used by the Blender add-on and by scripts (protocol: PROTOCOL.md).

Pure Python on pyzmq + msgpack (no numpy, no cv2, no torch), so it runs inside Blender.

Blocking, for scripts::

    client = EngineClient("tcp://127.0.0.1:5555", timeout=10)
    client.hello()                                     # EngineUnavailable if nobody answers in 10 s
    job = client.submit(["f1.png", "f2.png"], [("starry.jpg", style_bytes)], None,
                        {"iterations": 200}, width=320, height=180)
    session = client.open_session(job)
    status = session.wait(on_event=print)              # every frame event carries its PNG bytes

Non-blocking, for the add-on (call from a ``bpy.app.timers`` callback; each call does a bounded
amount of work and returns)::

    upload = client.start_submit(frames, styles, weights, options, width, height)
    upload.tick(0.005)          # until upload.finished; then upload.job_id or upload.error
    session = client.open_session(upload.job_id)
    for event in session.tick(0.005): ...              # progress / frame / job_status / unreachable

A job belongs to the client that submitted it: to its ``token`` (``client.token``, made fresh per
client unless one is passed), or to its CURVE key on an engine with keys. Keep the token with the job
id to reach the job from another process later: ``EngineClient(address, token=saved_token)``, or pass
``token=`` to a single call (the add-on keeps one per job record).

An ``EngineClient`` and its sessions and uploads share one DEALER socket and must be used from one
thread. ZeroMQ reconnects by itself; a session that hears nothing pings, reports an ``unreachable``
event once the engine has been silent for ``timeout`` seconds, and when the engine answers again (or
turns out to have restarted) it attaches again and fetches every frame it missed.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import zmq
import zmq.auth

from .protocol import (
    FINAL_STATES, PROTOCOL_VERSION, TOKEN_CHARS, Limits, Message, ProtocolError, from_ranges, pack, png_size, unpack,
)

log = logging.getLogger(__name__)

__all__ = ["EngineClient", "EngineError", "EngineUnavailable", "Frame", "JobSession", "Preview", "Upload"]

PREVIEW_WAIT = 60.0  # seconds a preview may take on a busy CPU engine before the client gives up


class EngineUnavailable(ConnectionError):
    """The engine did not answer in time (not running, unreachable, or the CURVE keys are wrong)."""


class EngineError(RuntimeError):
    """The engine refused a request: ``code`` (PROTOCOL.md), ``field`` at fault, ``message``."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(f"{message} [{code}{', field ' + field if field else ''}]")
        self.code, self.message, self.field = code, message, field

    @classmethod
    def from_header(cls, header: dict) -> "EngineError":
        return cls(str(header.get("code")), str(header.get("message")), header.get("field"))


@dataclass
class Frame:
    """A finished frame: ``data`` is the PNG file (or raw RGB) as a zero-copy buffer."""

    job: str
    index: int
    data: memoryview
    encoding: str = "png"
    width: int = 0
    height: int = 0
    losses: dict = field(default_factory=dict)
    seconds: float | None = None
    iterations: int | None = None

    @classmethod
    def from_message(cls, message: Message) -> "Frame":
        h = message.header
        return cls(h["job"], h["index"], message.blobs[0], h["encoding"], h["width"], h["height"],
                   h.get("losses") or {}, h.get("seconds"), h.get("iterations"))


def _fields(message: Message) -> dict:
    return {k: v for k, v in message.header.items() if k not in ("v", "id")}


def _key_pair(value, what: str) -> tuple[bytes, bytes | None]:
    """A CURVE key from a certificate file path, a (public, secret) pair or a 40-character Z85 key."""
    if isinstance(value, tuple):
        return value
    if isinstance(value, (str, bytes)) and len(value) == 40 and not os.path.exists(value):
        key = value.encode() if isinstance(value, str) else value
        return key, None
    try:
        return zmq.auth.load_certificate(value)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what} {value}: not a readable ZeroMQ certificate ({exc})") from None


class EngineClient:
    def __init__(self, address: str, server_public_key=None, client_keys=None, timeout: float = 10.0,
                 context: zmq.Context | None = None, name: str = "vse_style_shared", token: str | None = None):
        self.address, self.timeout, self.name = address, float(timeout), name
        # Who owns the jobs this client submits (PROTOCOL.md, Owners): a fresh secret unless one is given
        # to reach jobs submitted earlier; an engine with CURVE keys goes by the client key instead.
        self.token = token or secrets.token_urlsafe(32)
        if not TOKEN_CHARS[0] <= len(self.token) <= TOKEN_CHARS[1]:
            raise ValueError(f"token: {TOKEN_CHARS[0]} to {TOKEN_CHARS[1]} characters expected")
        self.limits = Limits()
        self.welcome: dict | None = None
        self.last_heard = 0.0                 # monotonic time of the last message from the engine
        self._ids = itertools.count(1)
        self._handlers: dict[int, Callable[[Message], None]] = {}   # request id -> who gets the replies
        self._sessions: dict[str, JobSession] = {}
        self.curve = server_public_key is not None
        if client_keys is not None and not self.curve:
            raise ValueError("a client key needs the engine's public key too (server_public_key)")
        if self.curve:
            server_key = _key_pair(server_public_key, "server key")[0]
            public, secret = _key_pair(client_keys, "client key") if client_keys is not None else zmq.curve_keypair()
            if secret is None:
                raise ValueError(f"client key {client_keys}: needs the .key_secret file (public and secret key)")
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        for option, value in ((zmq.LINGER, 0), (zmq.RECONNECT_IVL, 100), (zmq.RECONNECT_IVL_MAX, 2000),
                              (zmq.HEARTBEAT_IVL, 1000), (zmq.HEARTBEAT_TIMEOUT, 5000), (zmq.SNDHWM, 1000)):
            self.socket.setsockopt(option, value)
        if self.curve:
            self.socket.curve_serverkey = server_key
            self.socket.curve_publickey, self.socket.curve_secretkey = public, secret
        try:
            self.socket.connect(address)
        except zmq.ZMQError as exc:
            self.socket.close()
            raise ValueError(f"engine address {address!r}: {exc}") from None

    # -- plumbing --------------------------------------------------------------------------------
    def _unavailable(self) -> EngineUnavailable:
        hint = (" (is it running, and are the CURVE keys the right ones?)" if self.curve else
                " (is `python -m engine_server serve` running there? one bound beyond loopback needs CURVE keys)")
        return EngineUnavailable(f"engine at {self.address} did not answer within {self.timeout:g} s{hint}")

    def _new_id(self, handler: Callable[[Message], None]) -> int:
        request_id = next(self._ids)
        self._handlers[request_id] = handler
        return request_id

    def _send(self, header: dict, blobs: Sequence = (), block: bool = True) -> bool:
        """Send one message; False if the socket is full and ``block`` is off; EngineUnavailable after timeout."""
        frames = pack({"token": self.token, **header}, blobs)  # a session's or upload's own token wins
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if not block:
                    return False
                if time.monotonic() > deadline:
                    raise self._unavailable() from None
                self._receive(0.05)  # keep reading while the engine drains our queue

    def _receive(self, wait: float) -> bool:
        """Handle one incoming message if one arrives within ``wait`` seconds."""
        if not self.socket.poll(max(0, int(wait * 1000)), zmq.POLLIN):
            return False
        frames = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        self.last_heard = time.monotonic()
        try:
            message = unpack(frames, self.limits, "reply")
        except ProtocolError as exc:
            handler = self._handlers.get(exc.id) if exc.code == "version_mismatch" else None
            if handler is None:
                log.warning("ignoring an invalid message from the engine: %s", exc)
                return True
            # an engine of another protocol version answered a request: say so rather than time out
            theirs = re.match(r"protocol version (\S+) ", exc.message)
            message = Message({"v": PROTOCOL_VERSION, "type": "error", "id": exc.id, "code": "version_mismatch",
                               "field": "protocol", "message": f"the engine speaks protocol "
                                                               f"{theirs.group(1) if theirs else '?'}, this client "
                                                               f"{PROTOCOL_VERSION}"})
        handler = self._handlers.get(message.id) if message.id is not None else None
        if handler is not None:
            handler(message)
        else:
            session = self._sessions.get(message.header.get("job"))
            if session is not None:
                session._inbox.append(message)
        return True

    def _request(self, header: dict, blobs: Sequence = (), items: str | None = None):
        """Send a request and wait for its reply; with ``items``, also collect those messages before it.
        Raises EngineError for an error reply, EngineUnavailable when the engine stays silent."""
        inbox: deque[Message] = deque()
        request_id = self._new_id(inbox.append)
        collected = []
        try:
            self._send({**header, "id": request_id}, blobs)
            last = time.monotonic()
            while True:
                while inbox:
                    message, last = inbox.popleft(), time.monotonic()
                    if message.type == "error":
                        raise EngineError.from_header(message.header)
                    if items is not None and message.type == items:
                        collected.append(message)
                        continue
                    return (message, collected) if items is not None else message
                remaining = last + self.timeout - time.monotonic()
                if remaining <= 0:
                    raise self._unavailable()
                self._receive(min(remaining, 0.5))
        finally:
            self._handlers.pop(request_id, None)

    # -- blocking calls ------------------------------------------------------------------------------
    def hello(self) -> dict:
        """Handshake: the engine's version, device and limits. EngineError on a protocol mismatch."""
        welcome = _fields(self._request({"type": "hello", "client": self.name, "protocol": PROTOCOL_VERSION}))
        if welcome["protocol"] != PROTOCOL_VERSION:
            raise EngineError("version_mismatch", f"engine speaks protocol {welcome['protocol']}, "
                                                  f"this client {PROTOCOL_VERSION}", "protocol")
        known = {k: v for k, v in welcome["limits"].items() if k in Limits.__dataclass_fields__ and isinstance(v, int)}
        self.limits = Limits(**{k: max(v, getattr(Limits(), k)) for k, v in known.items()})
        self.welcome = welcome
        return welcome

    def ping(self) -> dict:
        return _fields(self._request({"type": "ping"}))

    def status(self, job_id: str, token: str | None = None) -> dict:
        return _fields(self._request(_owned({"type": "status", "job": job_id}, token)))

    def list_jobs(self) -> list[dict]:
        """This client's jobs (its token's or its key's) in id order, which is creation order to the
        second, gathered page by page."""
        jobs, after = [], None
        while True:
            request = {"type": "list_jobs"} if after is None else {"type": "list_jobs", "after": after}
            reply = self._request(request).header
            jobs.extend(reply["jobs"])
            after = reply.get("next")
            if after is None:
                return jobs

    def estimate(self, width: int, height: int, frame_count: int, options: dict | None = None) -> dict:
        """What a job would cost on this engine before it is submitted (PROTOCOL.md, Estimates): seconds,
        seconds_per_frame, peak_bytes, available_bytes, fits, largest_width, device. The engine's first
        estimate for a method measures it (seconds); later ones are immediate."""
        timeout, self.timeout = self.timeout, max(self.timeout, 60.0)
        try:
            return _fields(self._request({"type": "estimate", "width": width, "height": height,
                                          "frame_count": frame_count, "options": dict(options or {})}))
        finally:
            self.timeout = timeout

    def continue_job(self, job_id: str, token: str | None = None) -> dict:
        """Run a cancelled or failed job again after the frames it finished; its status (``queued``)."""
        return _fields(self._request(_owned({"type": "continue_job", "job": job_id}, token)))

    def delete_job(self, job_id: str, token: str | None = None) -> None:
        """Remove a job and its files from the engine (a running job is cancelled first)."""
        self._request(_owned({"type": "delete_job", "job": job_id}, token))

    def cancel(self, job_id: str, token: str | None = None) -> dict:
        """Ask the engine to stop the job; finished frames are kept. Returns its status right away
        (state ``running`` with ``cancelling`` until the engine has stopped, within one iteration)."""
        return _fields(self._request(_owned({"type": "cancel", "job": job_id}, token)))

    def detach(self, job_id: str) -> None:
        self._request({"type": "detach", "job": job_id})

    def fetch(self, job_id: str, start: int, end: int, encoding: str = "png", token: str | None = None
              ) -> dict[int, Frame]:
        """Finished frames of ``start..end`` (1-based, inclusive) as {index: Frame}."""
        _, frames = self._request(_owned({"type": "fetch", "job": job_id, "start": start, "end": end,
                                          "encoding": encoding}, token), items="frame")
        return {m.header["index"]: Frame.from_message(m) for m in frames}

    def attach(self, job_id: str, since: int = 0, token: str | None = None) -> "JobSession":
        """A session already attached (blocks until the engine answered; EngineError if the job is unknown)."""
        session = self.open_session(job_id, since, token)
        deadline = time.monotonic() + self.timeout
        while session.status is None and session.error is None:
            if time.monotonic() > deadline:
                session.close()
                raise self._unavailable()
            events = session.tick(0.1, block=True)
            session._held.extend(events)  # handed out by the next tick()
        if session.error is not None:
            session.close()
            raise EngineError(session.error.get("code", "internal"), session.error.get("message", ""),
                              session.error.get("field"))
        return session

    def submit(self, frames: Sequence, styles: Sequence, weights=None, options: dict | None = None,
               width: int = 0, height: int = 0, name: str | None = None, encoding: str = "png",
               token: str | None = None) -> str:
        """Submit a job and upload its frames; returns the job id. See :meth:`start_submit`."""
        upload = self.start_submit(frames, styles, weights, options, width, height, name, encoding, token=token)
        return upload.wait()

    # -- non-blocking ------------------------------------------------------------------------------
    def start_submit(self, frames: Sequence, styles: Sequence, weights=None, options: dict | None = None,
                     width: int = 0, height: int = 0, name: str | None = None, encoding: str = "png",
                     window: int = 4, token: str | None = None) -> "Upload":
        """An :class:`Upload` whose ``tick()`` sends the job, then a few frames per call.

        frames: PNG file paths, bytes (PNG, or raw RGB with encoding="raw") or callables returning bytes.
        styles: (name, image file bytes) pairs or image file paths. weights: per frame, one weight per
        style (None: all 1). options: engine options (PROTOCOL.md), e.g. {"iterations": 200}.
        window: frames sent ahead of the engine's acknowledgements (bounds memory and socket queues).
        token: whose job it is (default: this client's token)."""
        style_pairs = [(os.path.basename(os.fspath(s)), _read(s)) if not isinstance(s, tuple) else s
                       for s in styles]
        if weights is None:
            weights = [[1.0] * len(style_pairs) for _ in frames]
        job = {"frame_count": len(frames), "width": width, "height": height,
               "styles": [n for n, _ in style_pairs], "weights": [[float(w) for w in row] for row in weights],
               "options": dict(options or {})}
        if name:
            job["name"] = name
        return Upload(self, list(frames), encoding, width, height, job=job, style_blobs=[b for _, b in style_pairs],
                      window=window, token=token)

    def preview(self, frame, styles: Sequence, weights=None, options: dict | None = None,
                width: int = 0, height: int = 0, encoding: str = "png") -> "Frame":
        """One frame painted by the engine's feed-forward network (PROTOCOL.md, Previews); blocking.
        The returned Frame (job "", index 0) holds the PNG. See :meth:`start_preview`."""
        preview = self.start_preview(frame, styles, weights, options, width, height, encoding)
        while not preview.tick(0.1):
            pass
        if preview.error is not None:
            raise preview.error
        return preview.result

    def start_preview(self, frame, styles: Sequence, weights=None, options: dict | None = None,
                      width: int = 0, height: int = 0, encoding: str = "png") -> "Preview":
        """A :class:`Preview` whose ``tick()`` returns True once it is answered. frame: a PNG path or
        bytes (or raw RGB with encoding="raw" and the size); styles as for :meth:`start_submit`;
        weights: one per style (None: all 1); options: ``style_scale``, ``preserve_colors``."""
        data = _read(frame)
        if encoding == "png" and not (width and height):
            size = png_size(data)
            if size is None:
                raise ValueError("preview frame: not a PNG file")
            width, height = size
        style_pairs = [(os.path.basename(os.fspath(s)), _read(s)) if not isinstance(s, tuple) else s
                       for s in styles]
        weights = [1.0] * len(style_pairs) if weights is None else [float(w) for w in weights]
        header = {"type": "preview", "encoding": encoding, "width": width, "height": height,
                  "styles": [n for n, _ in style_pairs], "weights": weights, "options": dict(options or {})}
        return Preview(self, header, [data, *(b for _, b in style_pairs)])

    def resume_upload(self, job_id: str, frames: Sequence, encoding: str = "png", window: int = 4,
                      token: str | None = None) -> "Upload":
        """An :class:`Upload` of the frames a job in state ``uploading`` still lacks (after the
        uploader vanished): ``frames`` is the whole list, only the missing indices are sent."""
        return Upload(self, list(frames), encoding, 0, 0, job_id=job_id, window=window, token=token)

    def open_session(self, job_id: str, since: int = 0, token: str | None = None) -> "JobSession":
        """Follow a job: frames with index > ``since`` that are finished, then all that follows."""
        old = self._sessions.get(job_id)
        if old is not None:
            old.close()
        return JobSession(self, job_id, since, token=token)

    def close(self) -> None:
        for session in list(self._sessions.values()):
            session.close(detach=False)
        self.socket.close(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _owned(header: dict, token: str | None) -> dict:
    """A request on behalf of ``token``'s owner (None: the client's own token)."""
    return header if token is None else {**header, "token": token}


def _read(source) -> bytes:
    if callable(source):
        return source()
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source
    with open(source, "rb") as handle:
        return handle.read()


class Preview:
    """A preview request in flight: ``tick()`` reads what arrived within its budget and returns True once
    it is answered; then ``result`` is a :class:`Frame` or ``error`` an EngineError / EngineUnavailable
    (no answer within PREVIEW_WAIT seconds)."""

    def __init__(self, client: EngineClient, header: dict, blobs: list):
        self.client = client
        self.result: Frame | None = None
        self.error: Exception | None = None
        self._inbox: deque[Message] = deque()
        self._id = client._new_id(self._inbox.append)
        self._deadline = time.monotonic() + max(client.timeout, PREVIEW_WAIT)
        try:
            client._send({**header, "id": self._id}, blobs)
        except EngineUnavailable as exc:
            self._end(error=exc)

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def tick(self, max_seconds: float = 0.005) -> bool:
        deadline = time.monotonic() + max_seconds
        while not self.done:
            if self._inbox:
                message = self._inbox.popleft()
                if message.type == "error":
                    self._end(error=EngineError.from_header(message.header))
                elif message.type == "previewed":
                    h = message.header
                    self._end(result=Frame("", 0, message.blobs[0], "png", h["width"], h["height"],
                                           seconds=h.get("seconds")))
                continue
            if time.monotonic() > self._deadline:
                self._end(error=self.client._unavailable())
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.client._receive(remaining)
        return self.done

    def cancel(self) -> None:
        """Stop waiting (the engine still paints it; its answer is ignored)."""
        self._end(error=EngineError("cancelled", "preview cancelled"))

    def _end(self, result: Frame | None = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.client._handlers.pop(self._id, None)


BUSY_PAUSE = 0.2  # seconds an upload waits after the engine answered `busy` (it was storing other uploads)


class Upload:
    """Submitting (or completing) a job without blocking: each ``tick()`` sends what fits in its time
    budget, keeping at most ``window`` frames in flight. ``state``: submitting, resuming, uploading,
    done or failed (then ``error`` holds an EngineError or EngineUnavailable)."""

    def __init__(self, client: EngineClient, frames: list, encoding: str, width: int, height: int,
                 job: dict | None = None, style_blobs: Sequence = (), job_id: str | None = None, window: int = 4,
                 token: str | None = None):
        if encoding not in ("png", "raw"):
            raise ValueError(f"encoding {encoding!r}: png or raw")
        self.client, self.frames, self.encoding, self.size = client, frames, encoding, (width, height)
        self.job_id, self.window, self.token = job_id, window, token
        self.state = "resuming" if job_id is not None else "submitting"
        self.error: Exception | None = None
        self.todo: deque[int] = deque()
        self.total = len(frames)
        self.acked: set[int] = set()
        self._job, self._style_blobs = job, list(style_blobs)
        self._in_flight: dict[int, int] = {}   # request id -> frame index
        self._asked: int | None = None         # request id of the submit / status in flight
        self._inbox: deque[Message] = deque()
        self._pending = None                   # (index, header, blob) the socket had no room for
        self._pause_until = 0.0                # after a `busy` answer: when to send again
        self._last = time.monotonic()

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def tick(self, max_seconds: float = 0.005, block: bool = False) -> bool:
        """Do at most ``max_seconds`` of work (waiting for replies only with ``block``); True when finished."""
        deadline = time.monotonic() + max_seconds
        while not self.finished:
            self._handle_replies()
            self._send_some(deadline)
            remaining = deadline - time.monotonic()
            if self.finished or remaining <= 0 or not self.client._receive(remaining if block else 0):
                break
        self._handle_replies()
        waiting = self._in_flight or self._asked
        if not self.finished and waiting and time.monotonic() - self._last > self.client.timeout:
            self._fail(self.client._unavailable())
        return self.finished

    def wait(self) -> str:
        """Block until uploaded; the job id, or raise the error."""
        while not self.tick(0.1, block=True):
            pass
        if self.error is not None:
            raise self.error
        return self.job_id

    def _fail(self, error: Exception) -> None:
        self.state, self.error = "failed", error
        self._pending = None
        for request_id in list(self._in_flight) + ([self._asked] if self._asked else []):
            self.client._handlers.pop(request_id, None)
        self._in_flight.clear()

    def _send_some(self, deadline: float) -> None:
        client = self.client
        if self.state in ("submitting", "resuming") and self._asked is None:
            request_id = client._new_id(self._inbox.append)
            if self.state == "submitting":
                header, blobs = {"type": "submit", "id": request_id, "job": self._job}, self._style_blobs
            else:
                header, blobs = {"type": "status", "id": request_id, "job": self.job_id}, ()
            if client._send(_owned(header, self.token), blobs, block=False):
                self._asked, self._last = request_id, time.monotonic()
            else:
                client._handlers.pop(request_id, None)
            return
        if time.monotonic() < self._pause_until:
            return
        while self.state == "uploading" and len(self._in_flight) < self.window and time.monotonic() < deadline:
            if self._pending is None:
                if not self.todo:
                    return
                index = self.todo[0]
                try:
                    blob = _read(self.frames[index - 1])
                except Exception as exc:  # a missing file, a render callback that failed: this upload fails
                    return self._fail(EngineError("bad_field", f"frame {index}: cannot read ({exc})",
                                                  f"frames[{index - 1}]"))
                problem = self._check(blob)
                if problem:
                    return self._fail(EngineError("bad_field", f"frame {index}: {problem}", f"frames[{index - 1}]"))
                header = {"type": "upload", "job": self.job_id, "index": index, "encoding": self.encoding,
                          "width": self.size[0], "height": self.size[1]}
                self._pending = (index, header, blob)
                self.todo.popleft()
            index, header, blob = self._pending
            request_id = client._new_id(self._inbox.append)
            if not client._send(_owned({**header, "id": request_id}, self.token), [blob], block=False):
                client._handlers.pop(request_id, None)
                return  # socket full: next tick
            if not self._in_flight:
                self._last = time.monotonic()
            self._in_flight[request_id] = index
            self._pending = None

    def _check(self, blob) -> str | None:
        width, height = self.size
        if self.encoding == "raw":
            size = memoryview(blob).nbytes
            expected = width * height * 3
            return None if size == expected else f"{size} bytes, raw {width}x{height} needs {expected}"
        found = png_size(blob)
        if found is None:
            return "not a PNG file"
        return None if found == (width, height) else f"PNG is {found[0]}x{found[1]}, the job is {width}x{height}"

    def _handle_replies(self) -> None:
        while self._inbox and not self.finished:
            message = self._inbox.popleft()
            self._last = time.monotonic()
            request_id = message.id
            self.client._handlers.pop(request_id, None)
            if message.type == "error" and message.header.get("code") == "busy" and request_id in self._in_flight:
                self.todo.appendleft(self._in_flight.pop(request_id))  # the engine is storing others: again soon
                self._pause_until = time.monotonic() + BUSY_PAUSE
                continue
            if message.type == "error":
                return self._fail(EngineError.from_header(message.header))
            if request_id == self._asked:
                self._asked = None
                if message.type == "accepted":
                    self.job_id, self.state = message.header["job"], "uploading"
                    self.todo = deque(range(1, self.total + 1))
                elif message.type == "job_status":
                    self._resume_from(message.header)
            elif request_id in self._in_flight:
                self.acked.add(self._in_flight.pop(request_id))
            if self.state == "uploading" and not self.todo and not self._in_flight and self._pending is None:
                self.state = "done"

    def _resume_from(self, status: dict) -> None:
        if status["state"] != "uploading":
            if status["state"] in ("queued", "running", "done"):
                self.state = "done"  # every frame had arrived already
                return
            return self._fail(EngineError("bad_state", f"job {self.job_id} is {status['state']}", "job"))
        if status["frame_count"] != len(self.frames):
            return self._fail(EngineError("bad_field", f"job {self.job_id} has {status['frame_count']} frames, "
                                                       f"{len(self.frames)} given", "frames"))
        self.size = (status["width"], status["height"])
        have = from_ranges(status.get("received_ranges"))
        self.todo = deque(i for i in range(1, self.total + 1) if i not in have)
        self.acked = set(have)
        self.state = "uploading"


class JobSession:
    """A job followed without blocking. ``tick()`` returns events (dicts with ``type``):

    - ``progress``: stage, frame, frame_count, iteration, iterations, loss, pass, passes, eta;
    - ``frame``: index, data (PNG bytes as a buffer), encoding, width, height, losses, seconds, iterations;
    - ``job_status``: the job's state (see ``state``, ``finished``, ``error``);
    - ``unreachable`` (the engine has been silent for ``timeout`` s) and ``reconnected``;
    - ``error``: the engine refused the session's request (e.g. unknown job).

    ``done`` is true once the job has ended and every frame it finished has been delivered."""

    def __init__(self, client: EngineClient, job_id: str, since: int = 0, heartbeat: float | None = None,
                 token: str | None = None):
        self.client, self.job, self.since, self.token = client, job_id, since, token
        self.heartbeat = heartbeat if heartbeat is not None else max(0.25, min(2.0, client.timeout / 4))
        self.state: str | None = None
        self.status: dict | None = None
        self.progress: dict | None = None
        self.error: dict | None = None
        self.finished: set[int] = set()      # frame indices delivered by this session
        self.unreachable = False
        self._inbox: deque[Message] = deque()
        self._held: list[dict] = []          # events read by attach(), not handed out yet
        self._requests: set[int] = set()
        self._instance: str | None = None
        self._fetch_asked = False
        self._fetch_id: int | None = None
        self.lost: set[int] = set()          # finished on the engine but unreadable there (after a fetch)
        self._ping_id: int | None = None
        self._last_ping = time.monotonic()
        self._opened = time.monotonic()
        client._sessions[job_id] = self
        self._attach()
        self._ping()

    # -- state -------------------------------------------------------------------------------------
    def _have(self, index: int) -> bool:
        return index <= self.since or index in self.finished

    def missing(self) -> set[int]:
        """Frames the engine says are finished that this session has not delivered."""
        expected = from_ranges((self.status or {}).get("finished_ranges"))
        return {i for i in expected if not self._have(i) and i not in self.lost}

    @property
    def done(self) -> bool:
        if self._held:
            return False  # events read by attach() still to be handed out
        if self.state == "unknown":
            return True
        return self.state in FINAL_STATES and not self._fetch_asked and not self.missing()

    # -- requests (never blocking) ------------------------------------------------------------------
    def _ask(self, header: dict) -> int | None:
        request_id = self.client._new_id(self._inbox.append)
        if self.client._send(_owned({**header, "id": request_id}, self.token), block=False):
            self._requests.add(request_id)
            return request_id
        self.client._handlers.pop(request_id, None)
        return None

    def _attach(self) -> None:
        since = self.since
        while since + 1 in self.finished:
            since += 1
        self._ask({"type": "attach", "job": self.job, "since": since})

    def _ping(self) -> None:
        if self._ping_id is not None:  # one ping outstanding at most: a dead engine costs nothing
            self.client._handlers.pop(self._ping_id, None)
            self._requests.discard(self._ping_id)
        self._last_ping = time.monotonic()
        self._ping_id = self._ask({"type": "ping"})

    # -- the loop ------------------------------------------------------------------------------------
    def tick(self, max_seconds: float = 0.005, block: bool = False) -> list[dict]:
        """Handle what has arrived, for at most ``max_seconds`` (waiting for more only with ``block``)."""
        deadline = time.monotonic() + max_seconds
        events, self._held = self._held, []
        while True:
            self._drain(events)
            remaining = deadline - time.monotonic()
            if self.done or remaining <= 0 or not self.client._receive(remaining if block else 0):
                break
        self._drain(events)
        self._heartbeat(events)
        return events

    def wait(self, on_event: Callable[[dict], None] | None = None, poll: float = 0.2) -> dict:
        """Block until done; the final status. EngineUnavailable if the engine stays silent past the timeout."""
        while not self.done:
            for event in self.tick(poll, block=True):
                if on_event is not None:
                    on_event(event)
                if event["type"] == "unreachable":
                    raise EngineUnavailable(event["message"])
        if self.state == "unknown":
            raise EngineError(self.error.get("code", "unknown_job"), self.error.get("message", ""), "job")
        return self.status

    def close(self, detach: bool = True) -> None:
        if detach:
            self.client._send(_owned({"type": "detach", "job": self.job}, self.token), block=False)
        for request_id in self._requests:
            self.client._handlers.pop(request_id, None)
        if self.client._sessions.get(self.job) is self:
            del self.client._sessions[self.job]

    def _heartbeat(self, events: list) -> None:
        if self.done:
            return
        now = time.monotonic()
        silent = now - max(self.client.last_heard, self._opened)
        if silent >= self.heartbeat and self.state in FINAL_STATES:
            self._catch_up()  # ended, quiet, and frames still missing: fetch them
        if silent >= self.heartbeat and now - self._last_ping >= self.heartbeat:
            self._ping()
        if silent >= self.client.timeout and not self.unreachable:
            self.unreachable = True
            events.append({"type": "unreachable", "job": self.job,
                           "message": f"engine at {self.client.address} silent for {silent:.0f} s"})

    def _drain(self, events: list) -> None:
        while self._inbox:
            message = self._inbox.popleft()
            if message.id is not None and message.type != "frame":
                self._requests.discard(message.id)
                self.client._handlers.pop(message.id, None)
            if self.unreachable:
                self.unreachable, self._instance = False, None  # (a pong now only records the instance)
                events.append({"type": "reconnected", "job": self.job})
                self._attach()  # the engine may have restarted and forgotten us
            getattr(self, "_on_" + message.type, self._on_other)(message, events)

    def _on_job_status(self, message: Message, events: list) -> None:
        self.status = _fields(message)
        self.state, self.error = self.status["state"], self.status.get("error")
        events.append(self.status)
        if message.id is None:  # an event; an attach reply is followed by every finished frame anyway
            self._catch_up()

    def _catch_up(self) -> None:
        """Once the job has ended, fetch finished frames that never arrived (dropped or missed)."""
        missing = self.missing()
        if self.state in FINAL_STATES and missing and not self._fetch_asked:
            self._fetch_id = self._ask({"type": "fetch", "job": self.job, "start": min(missing), "end": max(missing)})
            self._fetch_asked = self._fetch_id is not None  # if the socket was full: again at the next status

    def _on_frame(self, message: Message, events: list) -> None:
        frame = Frame.from_message(message)
        if frame.job != self.job or self._have(frame.index):
            return
        self.finished.add(frame.index)
        events.append({"type": "frame", **{k: v for k, v in frame.__dict__.items()}})

    def _on_fetched(self, message: Message, events: list) -> None:
        self._fetch_asked = False
        self.lost |= self.missing()  # asked for and not sent: the engine cannot read them

    def _on_progress(self, message: Message, events: list) -> None:
        self.progress = _fields(message)
        events.append(self.progress)

    def _on_pong(self, message: Message, events: list) -> None:
        instance = message.header.get("instance")
        attached = message.header.get("attached")
        if self._instance is not None and instance != self._instance:
            events.append({"type": "reconnected", "job": self.job, "restarted": True})
            self._attach()  # a new engine process: attach again, it sends what we missed
        elif isinstance(attached, list) and self.job not in attached and self.state not in FINAL_STATES:
            # the connection came back under a new routing id (or the engine dropped it as gone): the
            # engine no longer sends this job's events here, so attach again and get what was missed
            events.append({"type": "reconnected", "job": self.job})
            self._attach()
        self._instance = instance

    def _on_error(self, message: Message, events: list) -> None:
        error = {"code": message.header.get("code"), "message": message.header.get("message"),
                 "field": message.header.get("field")}
        if message.id is not None and message.id == self._fetch_id:
            self._on_fetched(message, events)  # the catch-up failed: what it asked for counts as lost
        if error["code"] == "unknown_job":
            self.state, self.error = "unknown", error
        events.append({"type": "error", "job": self.job, **error})

    def _on_other(self, message: Message, events: list) -> None:
        pass  # detached and the like
