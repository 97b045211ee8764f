"""The engine's side of the wire: the ROUTER socket clients talk to, and one outbox per peer.

Every outgoing message goes through a per-peer outbox sent with NOBLOCK (ROUTER_MANDATORY on): a peer
that cannot take more (EAGAIN) keeps its backlog, capped for droppable events (progress, frames; a
client gets missed frames with ``fetch``), and a peer that has gone (EHOSTUNREACH) is forgotten. Big
replies (attach backlogs, fetches) are iterators consumed lazily, one message at a time, so a slow or
vanished client never blocks the engine or fills its memory. A peer that keeps asking without reading
(more than MAX_OUTBOX replies waiting) is dropped: its replies are discarded and its requests ignored.

Incoming messages are read part by part: libzmq caps each part (ZMQ_MAXMSGSIZE, which drops the
connection) but not their number, so a message with more parts than any request has, or more bytes in
all than ``max_message_bytes``, is discarded as it is read, never gathered. This module knows peers and
messages, not jobs: which peers watch which job is the only job-related thing it keeps.
"""
from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from vse_style_shared.protocol import Limits, Message, pack

log = logging.getLogger("engine_server.server")

MAX_EVENT_BACKLOG = 64           # droppable events queued per peer before new ones are dropped
MAX_OUTBOX = 256                 # replies waiting for one peer before it is dropped as not reading
MAX_DROPPED = 4096               # dropped peers remembered (their connections' routing ids)
FLUSH_BUDGET = 64 * 2**20        # bytes sent per loop turn, so requests keep being read
REQUESTS_PER_TURN = 64
SNDHWM = 16                      # messages libzmq queues per peer (each up to a frame): the rest wait in
RCVHWM = 16                      # the outbox, lazily, or in the peer's TCP window


class StartupError(RuntimeError):
    """The engine cannot start as asked (one line for the user; exit code 2)."""


def is_local_address(address: str) -> bool:
    """Loopback TCP, ipc:// and inproc:// may be bound without keys; anything else needs CURVE."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', interface names, host names: may be reachable from outside


@dataclass
class Incoming:
    """One request as read off the socket: its frames, or why it was discarded unread."""

    peer: bytes
    frames: list
    user_id: str | None = None   # the CURVE public key (Z85) the ZAP handler vouched for
    refused: str | None = None   # "too_large" or "bad_message": only the first frame was kept


class Outbox:
    """A peer's pending messages: iterators of multipart messages, consumed lazily."""

    def __init__(self):
        self.items: deque[Iterator[list]] = deque()
        self.head: list | None = None  # taken from an iterator, not sent yet
        self.blocked = False           # the last send found the peer's queue full

    def __len__(self) -> int:
        return len(self.items) + (self.head is not None)

    def next_message(self) -> list | None:
        while self.head is None and self.items:
            try:
                self.head = next(self.items[0], None)
            except Exception:  # e.g. a frame file that vanished: skip the rest of that reply
                log.exception("dropping a reply that could not be produced")
                self.head = None
                self.items.popleft()
                continue
            if self.head is None:
                self.items.popleft()
        return self.head


class Transport:
    """The ROUTER socket, its CURVE authentication, the peers' outboxes and who watches which job."""

    def __init__(self, bind: str, limits: Limits, curve_dir: Path | None):
        if not is_local_address(bind) and curve_dir is None:
            raise StartupError(f"refusing to bind {bind} without authentication: it may be reachable from other "
                               f"machines; create keys with `python -m engine_server keygen DIR` and pass "
                               f"--curve-dir DIR (or bind tcp://127.0.0.1:PORT)")
        self.bind, self.limits, self.curve_dir = bind, limits, curve_dir
        self.context: zmq.Context | None = None
        self.socket: zmq.Socket | None = None
        self.auth: ThreadAuthenticator | None = None
        self.outboxes: dict[bytes, Outbox] = {}
        self.watchers: dict[str, set[bytes]] = {}   # job id -> peers attached to it
        self.watching: dict[bytes, set[str]] = {}   # peer -> job ids
        self.dropped: OrderedDict[bytes, None] = OrderedDict()
        self.max_parts = limits.max_styles + 2     # the largest request: preview (frame + styles)

    # -- life cycle ----------------------------------------------------------------------------
    def open(self, context: zmq.Context) -> None:
        self.context = context
        self.socket = self.context.socket(zmq.ROUTER)
        # No ROUTER_HANDOVER: with it, a second connection that claims a routing id in use takes over
        # its replies, and libzmq aborts the whole process on that path (issue 10). Without it such a
        # connection is refused; a client that reconnects simply attaches again.
        for option, value in ((zmq.LINGER, 0), (zmq.ROUTER_MANDATORY, 1),
                              (zmq.MAXMSGSIZE, self.limits.max_message_bytes), (zmq.SNDHWM, SNDHWM),
                              (zmq.RCVHWM, RCVHWM),
                              (zmq.HEARTBEAT_IVL, 2000), (zmq.HEARTBEAT_TIMEOUT, 10000)):
            self.socket.setsockopt(option, value)
        if self.curve_dir is not None:
            self._setup_curve()
        try:
            self.socket.bind(self.bind)
        except zmq.ZMQError as exc:
            raise StartupError(f"cannot bind {self.bind}: {exc}") from None

    def _setup_curve(self) -> None:
        secret_file, allowed = self.curve_dir / "server.key_secret", self.curve_dir / "authorized_clients"
        if not secret_file.is_file() or not allowed.is_dir():
            raise StartupError(f"--curve-dir {self.curve_dir}: needs server.key_secret and authorized_clients/ "
                               f"(create them with `python -m engine_server keygen {self.curve_dir}`)")
        try:
            public, secret = zmq.auth.load_certificate(secret_file)
        except (OSError, ValueError) as exc:
            raise StartupError(f"--curve-dir {self.curve_dir}: unreadable server key ({exc})") from None
        if secret is None:
            raise StartupError(f"{secret_file}: no secret key in it")
        self.auth = ThreadAuthenticator(self.context)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(allowed))
        self.socket.curve_publickey, self.socket.curve_secretkey = public, secret
        self.socket.curve_server = True

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
        if self.auth is not None:
            self.auth.stop()

    # -- receiving -----------------------------------------------------------------------------
    def receive(self) -> Iterator[Incoming]:
        """The requests waiting now, at most REQUESTS_PER_TURN of them; dropped peers' are skipped."""
        for _ in range(REQUESTS_PER_TURN):
            try:
                routing = self.socket.recv(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            incoming = self._read_rest(routing)
            if incoming.peer not in self.dropped:
                yield incoming

    def _read_rest(self, routing: zmq.Frame) -> Incoming:
        incoming = Incoming(routing.bytes, [])
        size, more = 0, routing.more
        while more:  # libzmq hands over a multipart message only when all of it has arrived
            frame = self.socket.recv(copy=False)
            more = frame.more
            if incoming.refused:
                continue  # discard the rest unread (about 1.5 us a part)
            size += len(frame)
            incoming.frames.append(frame)
            if len(incoming.frames) > self.max_parts:
                incoming.refused, incoming.frames = "bad_message", incoming.frames[:1]  # the header: its id
            elif size > self.limits.max_message_bytes:
                incoming.refused, incoming.frames = "too_large", incoming.frames[:1]
        if incoming.frames and self.curve_dir is not None and not incoming.refused:
            incoming.user_id = incoming.frames[0].get("User-Id") or None
        return incoming

    def poll_timeout(self) -> int:
        """ms: 0 while some reply is only waiting for its turn, 10 while peers are full, else 100."""
        if any(not box.blocked for box in self.outboxes.values()):
            return 0
        return 10 if self.outboxes else 100

    # -- sending -------------------------------------------------------------------------------
    def send(self, peer: bytes, messages, droppable: bool = False) -> None:
        """Queue one multipart message (a list) or an iterator of them for ``peer`` and try to send."""
        if peer in self.dropped:
            return
        box = self.outboxes.get(peer)
        if box is None:
            box = self.outboxes[peer] = Outbox()
        elif droppable and len(box) >= MAX_EVENT_BACKLOG:
            return  # the peer is not reading: it can fetch what it missed
        elif len(box) >= MAX_OUTBOX:
            self.drop(peer, f"{MAX_OUTBOX} replies waiting")
            return
        box.items.append(iter([messages]) if isinstance(messages, list) else messages)
        self._flush(peer, FLUSH_BUDGET)

    def reply(self, peer: bytes, request: Message | None, header: dict, blobs=()) -> None:
        if request is not None and request.id is not None:
            header["id"] = request.id
        self.send(peer, pack(header, blobs))

    def _flush(self, peer: bytes, budget: int) -> int:
        box, sent = self.outboxes.get(peer), 0
        if box is not None:
            box.blocked = False
        while box is not None and sent < budget:
            message = box.next_message()
            if message is None:
                break
            try:
                self.socket.send_multipart([peer, *message], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                box.blocked = True  # the peer's queue is full: try again a little later
                return sent
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                self._forget_peer(peer)  # gone: nobody to keep anything for
                return sent
            box.head = None
            sent += sum(len(part) for part in message)
        if box is not None and not box:
            del self.outboxes[peer]
        return sent

    def flush_all(self) -> None:
        budget = FLUSH_BUDGET
        for peer in list(self.outboxes):
            budget -= self._flush(peer, max(budget, 2**20))

    def drop(self, peer: bytes, why: str) -> None:
        """Stop serving a connection: its replies are discarded and its requests ignored from now on."""
        log.warning("dropping peer %s: %s", peer.hex(), why)
        self._forget_peer(peer)
        self.dropped[peer] = None
        while len(self.dropped) > MAX_DROPPED:
            self.dropped.popitem(last=False)

    def _forget_peer(self, peer: bytes) -> None:
        log.debug("peer %s is gone", peer.hex())
        self.outboxes.pop(peer, None)
        for job_id in self.watching.pop(peer, ()):
            self.watchers.get(job_id, set()).discard(peer)

    # -- who watches which job -----------------------------------------------------------------
    def watch(self, peer: bytes, job_id: str) -> None:
        self.watchers.setdefault(job_id, set()).add(peer)
        self.watching.setdefault(peer, set()).add(job_id)

    def unwatch(self, peer: bytes, job_id: str) -> None:
        self.watchers.get(job_id, set()).discard(peer)
        self.watching.get(peer, set()).discard(job_id)

    def broadcast(self, job_id: str, header: dict, blobs=(), droppable: bool = False) -> None:
        for peer in list(self.watchers.get(job_id, ())):
            self.send(peer, pack(dict(header), blobs), droppable)
