"""Soak benchmark: hostile and normal clients against a loopback engine while a real job runs.

    python -m engine_server.bench soak                    # 120 s of attack, 6 attackers
    python -m engine_server.bench soak --seconds 300 --attackers 8

1. An engine starts (``serve`` on --device, a temporary jobs folder) and runs a small temporal job on
   frames of ../shared/data's clip alone: the reference frames.
2. The same job is submitted again while --attackers threads send a bounded mix of hostile requests for
   --seconds: junk and malformed messages, messages over the size limits and of 200000 parts, frames
   over ZMQ_MAXMSGSIZE, decompression-bomb styles, jobs declaring 8192x8192 frames or 100000
   iterations, another client's job probed (status, attach, fetch, upload, cancel, delete), two
   connections with one routing id, floods of requests whose replies are never read, submits up to the
   quota and deletes, previews. A monitor in a process of its own pings every 50 ms.
3. Printed: requests sent and answered with an error, ping round trips (p50, p99, max) during the attack,
   the engine's RSS before / peak / after, crashes, hostile requests that reached another client's job,
   jobs lost or corrupted, and whether the attacked job's frames are byte-identical to the reference.

Goals (issue 10): ping p99 under 250 ms; peak RSS under idle + 1 GB; no crash; nothing lost or touched.
All traffic stays on loopback; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np
import zmq

from vse_style_shared.client import EngineClient, EngineError, EngineUnavailable
from vse_style_shared.protocol import pack, unpack

from ..io.frames import encode_png, open_frames, resize
from .common import DATA, parse_size, table

JOB_OPTIONS = {"mode": "temporal", "first_iterations": 60, "iterations": 40, "seed": 0}


# -- the engine process --------------------------------------------------------------------------------

def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def rss(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of a process in bytes (Linux /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)
    except OSError:
        pass


# -- the normal client ---------------------------------------------------------------------------------

def run_job(client: EngineClient, frames: list[bytes], style: tuple[str, bytes], size) -> tuple[str, dict]:
    """Submit, upload, follow to the end; (job id, {index: PNG bytes})."""
    job = client.submit(frames, [style], None, JOB_OPTIONS, *size, name="soak")
    session = client.open_session(job)
    got = {}
    deadline = time.monotonic() + 1800
    while not session.done and time.monotonic() < deadline:
        for event in session.tick(0.2, block=True):
            if event["type"] == "frame":
                got[event["index"]] = bytes(event["data"])
    if session.state != "done":
        raise RuntimeError(f"the normal job ended {session.state}: {session.status}")
    return job, got


# -- hostile clients -------------------------------------------------------------------------------------

def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1_000_000, 9)) + chunk(b"IEND", b""))


class Attacker(threading.Thread):
    """One hostile client: a random, bounded sequence of attacks until ``stop`` is set."""

    def __init__(self, number: int, address: str, victim: dict, stop: threading.Event, context: zmq.Context,
                 small_frame: bytes, style: bytes):
        super().__init__(name=f"attacker-{number}", daemon=True)
        self.address, self.victim, self.stop, self.context = address, victim, stop, context
        self.random = random.Random(number)
        self.token = f"attacker-{number}-{os.urandom(8).hex()}"
        self.small_frame, self.style = small_frame, style
        self.sent = Counter()      # requests by kind
        self.errors = Counter()    # error answers by code
        self.breaches = []         # hostile requests on the victim's job that were not refused
        self.unanswered = 0

    # plumbing
    def socket(self, **options) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            sock.setsockopt(getattr(zmq, option), value)
        sock.connect(self.address)
        return sock

    def ask(self, sock, header: dict | None, blobs=(), raw: list | None = None, wait: float = 5.0, kind="request"):
        """Send one message; the replies that come within ``wait`` s (the first one ends the wait)."""
        frames = raw if raw is not None else pack({"token": self.token, **header}, blobs)
        self.sent[kind] += 1
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            return []
        answers = []
        if sock.poll(int(wait * 1000)):
            while True:
                try:
                    message = unpack(sock.recv_multipart(flags=zmq.NOBLOCK), direction="reply")
                except zmq.Again:
                    break
                except Exception:
                    break
                answers.append(message)
                if message.type == "error":
                    self.errors[message.header.get("code")] += 1
                if not sock.poll(20):
                    break
        else:
            self.unanswered += 1
        return answers

    # attacks
    def junk(self, sock):
        choice = self.random.randrange(5)
        if choice == 0:
            self.ask(sock, None, raw=[os.urandom(self.random.randrange(1, 300))], kind="junk bytes")
        elif choice == 1:
            self.ask(sock, None, raw=[msgpack.packb([1, 2, {"x": None}])], kind="junk msgpack")
        elif choice == 2:
            self.ask(sock, {"type": "x" * 100_000}, kind="unknown type")
        elif choice == 3:
            self.ask(sock, None, raw=[msgpack.packb({"v": 99, "type": "ping", "id": 1})], kind="wrong version")
        else:  # {"x": [[[...]]]} nested 100000 deep, written by hand (msgpack itself refuses to pack it)
            self.ask(sock, None, raw=[b"\x81\xa1x" + b"\x91" * 100_000 + b"\x01"], kind="nested 100000 deep")

    def oversize(self, sock):
        choice = self.random.randrange(3)
        if choice == 0:  # every part under the frame cap, the whole over the message cap
            self.ask(sock, {"type": "ping", "id": 2}, [bytes(40 * 2**20), bytes(40 * 2**20)], kind="too large")
        elif choice == 1:
            self.ask(sock, None, raw=[pack({"type": "ping", "id": 3})[0], *([b""] * 200_000)], kind="200000 parts",
                     wait=15)
        else:  # one part over ZMQ_MAXMSGSIZE: the engine drops the connection; a new one follows
            self.ask(sock, None, raw=[pack({"type": "ping"})[0], bytes(65 * 2**20)], kind="frame over max", wait=0.5)
            return self.fresh(sock)
        return sock

    def bombs(self, sock):
        job = {"frame_count": 1, "width": 64, "height": 48, "styles": ["bomb.png"], "weights": [[1.0]]}
        choice = self.random.randrange(4)
        if choice == 0:
            self.ask(sock, {"type": "submit", "id": 4, "job": job}, [png_declaring(30000, 30000)], kind="bomb style")
        elif choice == 1:
            self.ask(sock, {"type": "submit", "id": 5, "job": {**job, "width": 8192, "height": 8192}}, [self.style],
                     kind="8192x8192 job")
        elif choice == 2:
            self.ask(sock, {"type": "submit", "id": 6, "job": {**job, "options": {"iterations": 100_000}}},
                     [self.style], kind="100000 iterations")
        else:
            self.ask(sock, {"type": "preview", "id": 7, "encoding": "png", "width": 64, "height": 48,
                            "styles": ["bomb.png"], "weights": [1.0]}, [self.small_frame, png_declaring(30000, 30000)],
                     kind="bomb preview")

    def hijack(self, sock):
        job = self.victim.get("job")
        if not job:
            return
        kind = self.random.choice(["status", "attach", "fetch", "cancel", "delete_job", "upload", "detach"])
        header = {"type": kind, "id": 8, "job": job}
        blobs = ()
        if kind == "fetch":
            header.update(start=1, end=1000)
        if kind == "upload":
            header.update(index=1, encoding="png", width=self.victim["size"][0], height=self.victim["size"][1])
            blobs = [self.victim["frame"]]
        answers = self.ask(sock, header, blobs, kind="probe another's job")
        if kind != "detach" and any(a.type != "error" or a.header.get("code") != "unknown_job" for a in answers):
            self.breaches.append((kind, [a.type for a in answers]))

    def flood(self, _sock):
        """Requests whose replies are never read: the engine must drop this peer, not buffer for it."""
        greedy = self.socket(RCVHWM=1, RCVBUF=4096, SNDHWM=0)
        hello = pack({"type": "hello", "client": "flood", "protocol": 2})  # ~0.5 kB replies: 10 MB in all
        try:
            for _ in range(20_000):
                greedy.send_multipart(hello)
            self.sent["never-read flood"] += 20_000
            time.sleep(1.0)
        finally:
            greedy.close()

    def twins(self, _sock):
        identity = os.urandom(8)
        twins = [self.socket(ROUTING_ID=identity) for _ in range(2)]
        try:
            for sock in twins:
                self.ask(sock, {"type": "ping", "id": 9}, wait=1.0, kind="two connections, one routing id")
        finally:
            for sock in twins:
                sock.close()

    def quota(self, sock):
        job = {"frame_count": 2, "width": 64, "height": 48, "styles": ["s.png"], "weights": [[1.0]] * 2}
        made = []
        for _ in range(self.random.randrange(5, 30)):
            answers = self.ask(sock, {"type": "submit", "id": 10, "job": job}, [self.style], kind="submit (no upload)")
            made += [a.header["job"] for a in answers if a.type == "accepted"]
        for job_id in made:
            self.ask(sock, {"type": "delete_job", "id": 11, "job": job_id}, kind="delete")

    def preview(self, sock):
        self.ask(sock, {"type": "preview", "id": 12, "encoding": "png", "width": 64, "height": 48,
                        "styles": ["s.png"], "weights": [1.0]}, [self.small_frame, self.style], wait=30,
                 kind="preview")

    def fresh(self, sock):
        sock.close()
        return self.socket()

    def run(self) -> None:
        attacks = [(self.junk, 30), (self.oversize, 2), (self.bombs, 10), (self.hijack, 20), (self.flood, 1),
                   (self.twins, 3), (self.quota, 2), (self.preview, 3)]
        sock = self.socket()
        try:
            while not self.stop.is_set():
                attack = self.random.choices([a for a, _ in attacks], [w for _, w in attacks])[0]
                result = attack(sock)
                if isinstance(result, zmq.Socket):
                    sock = result
                time.sleep(self.random.uniform(0.0, 0.05))
        finally:
            sock.close()


def monitor(address: str, stop, results) -> None:
    """Ping every 50 ms until ``stop`` is set; send the round trips in seconds (a missing answer counts
    as 5 s) through ``results``. Runs in a process of its own, so that the attackers' threads, which hold
    this process's interpreter lock, do not show up in the engine's figures."""
    client = EngineClient(address, timeout=5)
    round_trips, missed = [], 0
    try:
        client.ping()
        results.send("ready")
        while not stop.is_set():
            started = time.perf_counter()
            try:
                client.ping()
                round_trips.append(time.perf_counter() - started)
            except EngineUnavailable:
                missed += 1
                round_trips.append(5.0)
            time.sleep(0.05)
    finally:
        client.close()
        results.send((round_trips, missed))


# -- the run ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_server.bench soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="how long the attack lasts (default 120)")
    parser.add_argument("--attackers", type=int, default=6, help="hostile client threads (default 6)")
    parser.add_argument("--device", default="cpu", help="the engine's device (default cpu)")
    parser.add_argument("--clip", default=str(DATA / "video" / "big_buck_bunny.mp4"))
    parser.add_argument("--size", type=parse_size, default=(128, 72), help="the normal job's frame size")
    parser.add_argument("--frames", type=int, default=8, help="the normal job's frame count")
    args = parser.parse_args(argv)

    source = open_frames(args.clip)
    frames = [encode_png(resize(source[30 + i], args.size)) for i in range(args.frames)]
    style_path = DATA / "styles" / "starry_night.jpg"
    style = (style_path.name, style_path.read_bytes())
    small_frame = encode_png(resize(source[30], (64, 48)))
    address = free_address()
    with tempfile.TemporaryDirectory() as jobs:
        log = open(Path(jobs).parent / f"soak-engine-{os.getpid()}.log", "w")
        engine = subprocess.Popen([sys.executable, "-m", "engine_server", "serve", "--bind", address, "--jobs-dir",
                                   str(Path(jobs) / "jobs"), "--device", args.device, "--log-level", "warning"],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            return _soak(args, engine, address, frames, style, small_frame, log.name)
        finally:
            engine.terminate()
            engine.wait(timeout=60)
            log.close()


def _soak(args, engine, address, frames, style, small_frame, log_name) -> int:
    normal = EngineClient(address, timeout=60)
    normal.hello()
    print(f"reference run: {args.frames} frames {args.size[0]}x{args.size[1]}, {JOB_OPTIONS}", file=sys.stderr)
    started = time.perf_counter()
    reference_job, reference = run_job(normal, frames, style, args.size)
    print(f"  {time.perf_counter() - started:.1f} s", file=sys.stderr)
    idle, _ = rss(engine.pid)
    reset_peak(engine.pid)

    stop, context = threading.Event(), zmq.Context()
    victim = {"size": args.size, "frame": frames[0]}
    attackers = [Attacker(i, address, victim, stop, context, small_frame, style[1]) for i in range(args.attackers)]
    spawn = multiprocessing.get_context("spawn")
    monitor_stop, (results, sent_results) = spawn.Event(), spawn.Pipe(duplex=False)
    pinger = spawn.Process(target=monitor, args=(address, monitor_stop, sent_results), daemon=True)
    result: dict = {}

    def normal_run():
        try:
            upload = normal.start_submit(frames, [style], None, JOB_OPTIONS, *args.size, name="soak under attack")
            while not upload.tick(0.1, block=True):
                if upload.job_id:
                    victim["job"] = upload.job_id
            if upload.error is not None:
                raise upload.error
            victim["job"] = upload.job_id
            session = normal.open_session(upload.job_id)
            got = {}
            while not session.done:
                for event in session.tick(0.2, block=True):
                    if event["type"] == "frame":
                        got[event["index"]] = bytes(event["data"])
            result.update(job=upload.job_id, frames=got, state=session.state)
        except Exception as exc:  # reported below
            result["error"] = f"{type(exc).__name__}: {exc}"

    peak = [idle]

    def sample_rss():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss(engine.pid)[0])
            except OSError:
                return
            time.sleep(0.2)

    print(f"attack: {args.attackers} attackers for {args.seconds:.0f} s while the job runs again", file=sys.stderr)
    runner = threading.Thread(target=normal_run, daemon=True)
    sampler = threading.Thread(target=sample_rss, daemon=True)
    pinger.start()
    if not results.poll(120) or results.recv() != "ready":
        raise RuntimeError("the ping monitor did not start")
    for thread in (runner, sampler, *attackers):
        thread.start()
    attack_ends = time.monotonic() + args.seconds
    while time.monotonic() < attack_ends and engine.poll() is None:
        time.sleep(0.5)
    stop.set()
    monitor_stop.set()
    round_trips, missed = results.recv() if results.poll(60) else ([], -1)
    pinger.join(timeout=10)
    for thread in (sampler, *attackers):
        thread.join(timeout=60)
    crashed = engine.poll() is not None
    runner.join(timeout=None if not crashed else 5)
    time.sleep(3.0)  # let the engine settle before the last RSS reading
    after, hwm = rss(engine.pid) if not crashed else (0, 0)
    peak[0] = max(peak[0], hwm)

    lost = []
    if not crashed:
        for job, expected in ((reference_job, reference), (result.get("job"), reference)):
            if job is None:
                lost.append("the attacked job never started")
                continue
            try:
                fetched = normal.fetch(job, 1, args.frames)
            except (EngineError, EngineUnavailable) as exc:
                lost.append(f"{job}: {exc}")
                continue
            if sorted(fetched) != sorted(expected) or any(bytes(fetched[i].data) != expected[i] for i in expected):
                lost.append(f"{job}: frames missing or changed")
    normal.close()
    context.term()

    identical = result.get("frames") == reference
    times = np.array(round_trips or [float("nan")]) * 1000
    sent = sum((a.sent for a in attackers), Counter())
    errors = sum((a.errors for a in attackers), Counter())
    breaches = [b for a in attackers for b in a.breaches]
    gib = 2**30
    rows = [
        ["hostile requests sent", f"{sum(sent.values())}", ""],
        ["  answered with an error", f"{sum(errors.values())} ({', '.join(f'{k} {v}' for k, v in errors.most_common())})",
         ""],
        ["  unanswered (dropped peers, connections cut)", f"{sum(a.unanswered for a in attackers)}", ""],
        ["pings during the attack (from another process)", f"{len(round_trips)} ({missed} missed)", ""],
        ["ping p50 / p99 / max (ms)", f"{np.percentile(times, 50):.1f} / {np.percentile(times, 99):.1f} / "
                                      f"{times.max():.1f}", "p99 < 250"],
        ["engine RSS idle / peak / after (GiB)", f"{idle / gib:.2f} / {peak[0] / gib:.2f} / {after / gib:.2f}",
         f"peak < {idle / gib + 1:.2f}"],
        ["crashes", "1" if crashed else "0", "0"],
        ["probes that reached another client's job", f"{len(breaches)}", "0"],
        ["jobs lost or corrupted", f"{len(lost)}" + (f" ({'; '.join(lost)})" if lost else ""), "0"],
        ["attacked job's frames identical to the reference", f"{identical}" + (
            f" ({result.get('error') or result.get('state')})" if not identical else ""), "True"],
    ]
    print(f"\nSoak: {args.seconds:.0f} s, {args.attackers} attackers, engine on {args.device}; the normal job: "
          f"{args.frames} frames {args.size[0]}x{args.size[1]} {JOB_OPTIONS['mode']}")
    print(table(rows, ["measure", "value", "goal"]))
    print("\nhostile requests by kind: " + ", ".join(f"{k} {v}" for k, v in sent.most_common()))
    if breaches:
        print(f"breaches: {breaches[:10]}")
    print(f"engine log: {log_name}")
    ok = (not crashed and not breaches and not lost and identical and np.percentile(times, 99) < 250
          and peak[0] < idle + gib)
    return 0 if ok else 1
