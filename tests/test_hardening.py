"""Issue 10: no client can crash the engine, starve it, or touch another client's job.

Each test reproduces one defect found by attacking a loopback engine and checks the fix; all traffic
stays on loopback, bounded in count and time. Engines are real subprocesses (tests/engine_process.py).
"""
import json
import os
import time

import numpy as np
import pytest
import zmq

from engine_process import TINY, clip, png
from engine_server.serve.jobs import Job, JobStore
from engine_server.serve.retention import DAY, Retention, expired
from test_server import TOKEN, collect, exchange, run_cli, submit_clip, with_token
from vse_style_shared.client import EngineError
from vse_style_shared.protocol import pack, unpack

JOB = {"frame_count": 2, "width": 36, "height": 24, "styles": ["s.png"], "weights": [[1.0]] * 2,
       "options": {**TINY, "mode": "per-frame"}}


@pytest.fixture(scope="module")
def engine(module_engines):
    return module_engines.start("hardening")


def raw_dealer(address, **options):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in options.items():
        sock.setsockopt(getattr(zmq, option), value)
    sock.connect(address)
    return sock


def replies(sock, wait=0.5):
    """Every message that arrives within ``wait`` seconds of the last one."""
    got = []
    while sock.poll(int(wait * 1000)):
        got.append(unpack(sock.recv_multipart(), direction="reply"))
    return got


def submit_raw(sock, token=TOKEN):
    reply = exchange(sock, with_token(pack({"type": "submit", "id": 1, "job": JOB}, [png(clip(1)[0])]), token))
    assert reply.type == "accepted", reply.header
    return reply.header["job"]


# -- 2. ownership --------------------------------------------------------------------------------------

def test_only_its_owner_sees_or_touches_a_job(engine):
    """Issue 10.2: any client could list, upload over, cancel and fetch every job."""
    with engine.client() as owner, engine.client() as intruder:
        job = submit_clip(owner, clip(2, seed=3), options={**TINY, "mode": "per-frame"})
        assert owner.token != intruder.token, "two clients are two owners"
        assert [j["job"] for j in intruder.list_jobs()] == []
        for call in (lambda: intruder.status(job), lambda: intruder.cancel(job), lambda: intruder.fetch(job, 1, 2),
                     lambda: intruder.attach(job), lambda: intruder.delete_job(job)):
            with pytest.raises(EngineError) as refused:
                call()
            assert refused.value.code == "unknown_job"  # the same answer as for a job that does not exist
        upload = intruder.resume_upload(job, [png(clip(1)[0])] * 2)
        while not upload.tick(0.1, block=True):
            pass
        assert upload.state == "failed" and upload.error.code == "unknown_job"
        session = owner.open_session(job)
        frames = collect(session)
        assert session.state == "done" and sorted(frames) == [1, 2]
        # the owner from another process: the same token reaches the job
        with engine.client(token=owner.token) as again:
            assert again.status(job)["state"] == "done" and [j["job"] for j in again.list_jobs()] == [job]


def test_a_submit_names_its_owner(engine):
    sock = raw_dealer(engine.address)
    try:
        sock.send_multipart(pack({"type": "submit", "id": 1, "job": JOB}, [png(clip(1)[0])]))  # no token
        [reply] = replies(sock)
        assert (reply.header["code"], reply.header["field"]) == ("bad_field", "token")
    finally:
        sock.close()


def test_delete_job_removes_it_and_its_files(engine):
    with engine.client() as client:
        running = submit_clip(client, clip(3, seed=8), options={"first_iterations": 2, "iterations": 2000})
        session = client.open_session(running)
        collect(session, stop=lambda got: len(got) >= 1)  # mid-job
        waiting = submit_clip(client, clip(2, seed=9), options={**TINY, "mode": "per-frame"})
        for job in (running, waiting):
            assert (engine.jobs_dir / job).is_dir()
            client.delete_job(job)
            with pytest.raises(EngineError, match="no job"):
                client.status(job)
        assert client.list_jobs() == []
        def left():
            return [p for p in engine.jobs_dir.iterdir() if running in p.name or waiting in p.name]

        deadline = time.monotonic() + 30
        while left() and time.monotonic() < deadline:  # the files go on the engine's I/O thread
            time.sleep(0.1)
        assert not left()
        assert client.ping()["running"] is None


def test_list_jobs_comes_in_pages(engines):
    """Issue 10.5: past about 500 jobs one list_jobs reply broke the 8 MiB header limit."""
    engine = engines.start("pages", extra=["--quota-jobs", "1000"])
    sock = raw_dealer(engine.address)
    try:
        ids = sorted(submit_raw(sock) for _ in range(130))  # pages go in id order (ids start with the time)
        first = exchange(sock, pack({"type": "list_jobs", "id": 2, "limit": 50})).header
        assert [j["job"] for j in first["jobs"]] == ids[:50] and first["next"] == ids[49]
        last = exchange(sock, pack({"type": "list_jobs", "id": 3, "after": ids[99]})).header
        assert [j["job"] for j in last["jobs"]] == ids[100:] and "next" not in last
        with engine.client(token=TOKEN) as client:
            assert [j["job"] for j in client.list_jobs()] == ids  # the client gathers every page
    finally:
        sock.close()


def test_quotas_per_owner(engines):
    engine = engines.start("quota", extra=["--quota-jobs", "2"])
    sock = raw_dealer(engine.address)
    try:
        submit_raw(sock)
        submit_raw(sock)
        reply = exchange(sock, pack({"type": "submit", "id": 9, "job": JOB}, [png(clip(1)[0])]))
        assert reply.header["code"] == "quota" and "2 jobs" in reply.header["message"]
        submit_raw(sock, token="someone-else-entirely")  # another owner has a quota of its own
    finally:
        sock.close()


# -- 3. sizes a job may ask for; a job that kills the engine ----------------------------------------------

def test_a_job_the_engine_died_in_twice_fails_instead_of_looping(engines, tmp_path):
    """Issue 10.3: a job that got the engine OOM-killed was re-queued, and killed it, at every start."""
    jobs_dir = tmp_path / "jobs"
    store = JobStore(jobs_dir)
    job = store.create(JOB, [png(clip(1)[0])], "token:" + "0" * 32)
    for index in (1, 2):
        (job.input_path(index)).write_bytes(png(clip(1)[0]))
    job.state, job.unfinished_runs = "running", 2
    store.save(job)
    engine = engines.start("crashes", jobs_dir=jobs_dir)
    record = json.loads((job.dir / "job.json").read_text())
    assert record["state"] == "failed" and "stopped 2 times" in record["error"]["message"], engine.log


def test_paintings_are_brought_to_the_size_the_job_needs():
    from engine_server.style.targets import fit_style, style_pixels_needed

    assert style_pixels_needed((64, 48), 1.0, optimized=True, network=False) == 64 * 48
    assert style_pixels_needed((1920, 1080), 2.0, optimized=True, network=False) == 1920 * 1080 * 4
    assert style_pixels_needed((64, 48), 1.0, optimized=False, network=True) == 1024 * 1024
    small = np.zeros((40, 30, 3), np.uint8)
    assert fit_style(small, 64 * 48) is small, "never enlarged"
    assert fit_style(np.zeros((400, 300, 3), np.uint8), 64 * 48).shape[:2] == (64, 48)


def test_worker_decodes_each_painting_to_the_jobs_size(tmp_path):
    from engine_server.options import StylizeOptions
    from engine_server.serve.worker import Worker

    big = np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
    job = JobStore(tmp_path).create({**JOB, "width": 64, "height": 48}, [png(big), png(big[:100, :100])], "token:t")
    job.spec["styles"] = ["big.png", "small.png"]
    job.style_files.append(job.style_files[0])  # two paintings: reuse the big one's file for the test
    paintings = Worker._paintings(job, StylizeOptions(mode="per-frame", init="content"))
    assert [p.shape[0] * p.shape[1] <= 64 * 48 * 1.02 for p in paintings] == [True, True]
    for network in (StylizeOptions(mode="fast"), StylizeOptions(mode="per-frame", init="fast")):
        paintings = Worker._paintings(job, network)  # the network's style input is larger than the frame
        assert all(64 * 48 < p.shape[0] * p.shape[1] <= 1024 * 1024 * 1.02 for p in paintings)
    assert paintings[0].shape[:2] != big.shape[:2], "a 2-megapixel painting is brought down"


# -- 4. bounded memory per message and per peer -------------------------------------------------------

def test_a_message_of_many_parts_is_discarded_as_it_is_read(engine):
    """Issue 10.4: a message of 1M empty parts stalled the main loop for 14 s."""
    sock = raw_dealer(engine.address, SNDHWM=0)
    try:
        sock.send_multipart([pack({"type": "ping", "id": 5})[0], *([b""] * 1_000_000)])
        started = time.monotonic()  # the engine sees the message once all of it has arrived
        assert sock.poll(30_000)
        seconds = time.monotonic() - started
        [reply] = [unpack(sock.recv_multipart(), direction="reply"), *replies(sock)]
        assert (reply.header["code"], reply.id) == ("bad_message", 5)
        assert seconds < 5, seconds  # was 14 s: every part became a Python object, then a memoryview
        assert exchange(sock, pack({"type": "ping", "id": 6})).type == "pong"
    finally:
        sock.close()


def test_a_peer_that_never_reads_is_dropped(engine):
    """Issue 10.4: a client sending requests and never reading its replies grew the engine by 500 MB+."""
    greedy = raw_dealer(engine.address, RCVHWM=1, RCVBUF=4096, SNDHWM=0)
    token = "a-client-that-never-reads"
    try:
        for _ in range(60):  # so that each list_jobs reply is some 25 kB
            submit_raw(greedy, token)
        listing = with_token(pack({"type": "list_jobs"}), token)
        for _ in range(2000):  # 50 MB of replies, far past the socket buffers
            greedy.send_multipart(listing)
        with engine.client() as other:
            deadline = time.monotonic() + 30
            while "dropping peer" not in engine.log and time.monotonic() < deadline:
                assert other.ping()["type"] == "pong"
                time.sleep(0.1)
        assert "dropping peer" in engine.log and "replies waiting" in engine.log
        assert len(replies(greedy, wait=1.0)) < 2000, "the rest of its replies were dropped"
    finally:
        greedy.close()


# -- 6. saved first, then changed, then answered once ---------------------------------------------------

def test_a_state_change_that_cannot_be_saved_changes_nothing_and_is_answered_once(engine):
    """Issue 10.6: with job.json unwritable the last upload got `uploaded` then `internal`, and the job was
    queued in memory but uploading on disk; a cancel was `cancelled` in memory only."""
    sock = raw_dealer(engine.address)
    try:
        job = submit_raw(sock)
        record = engine.jobs_dir / job / "job.json"
        saved = record.read_bytes()
        record.unlink()
        record.mkdir()  # job.json can no longer be replaced (even by root)
        upload = {"type": "upload", "job": job, "encoding": "png", "width": 36, "height": 24}
        assert exchange(sock, pack({**upload, "id": 2, "index": 1}, [png(clip(1)[0])])).type == "uploaded"
        sock.send_multipart(with_token(pack({**upload, "id": 3, "index": 2}, [png(clip(1)[0])])))
        answers = replies(sock)
        assert [(a.type, a.header.get("code")) for a in answers] == [("error", "internal")]
        assert "/" not in answers[0].header["message"], "no server path goes to a client"
        status = exchange(sock, pack({"type": "status", "id": 4, "job": job})).header
        assert (status["state"], status["received"]) == ("uploading", 2)
        sock.send_multipart(with_token(pack({"type": "cancel", "id": 5, "job": job})))
        assert [(a.type, a.header.get("code")) for a in replies(sock)] == [("error", "internal")]
        assert exchange(sock, pack({"type": "status", "id": 6, "job": job})).header["state"] == "uploading"
        record.rmdir()
        record.write_bytes(saved)
        assert exchange(sock, pack({"type": "cancel", "id": 7, "job": job})).header["state"] == "cancelled"
        assert json.loads(record.read_text())["state"] == "cancelled"
    finally:
        sock.close()


# -- 7. small ones ---------------------------------------------------------------------------------------

def test_a_raw_upload_is_encoded_off_the_main_loop(engine):
    """Issue 10.7: an 8192x8192 raw upload was PNG-encoded on the main thread (a 4 s stall)."""
    width, height = 2048, 1536
    sock = raw_dealer(engine.address)
    try:
        job = JOB | {"width": width, "height": height}  # two frames: it stays uploading, nothing runs
        reply = exchange(sock, pack({"type": "submit", "id": 1, "job": job}, [png(clip(1)[0])]))
        frame = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8).tobytes()
        upload = {"type": "upload", "job": reply.header["job"], "index": 1, "encoding": "raw", "width": width,
                  "height": height}
        sock.send_multipart(with_token(pack({**upload, "id": 2}, [frame])))
        sock.send_multipart(with_token(pack({"type": "ping", "id": 3})))
        answers = replies(sock, wait=10)
        assert [a.type for a in answers[:2]] == ["pong", "uploaded"], "the ping was answered while it encoded"
        sock.send_multipart(with_token(pack({"type": "cancel", "id": 4, "job": reply.header["job"]})))
        replies(sock)
    finally:
        sock.close()


def test_keygen_creates_the_secret_key_private(tmp_path, monkeypatch):
    """Issue 10.7: the secret key was written world-readable and chmod-ed afterwards."""
    from engine_server.serve import keys

    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)  # no fixing up afterwards
    monkeypatch.setattr(type(tmp_path), "chmod", lambda *a, **k: None)
    previous = os.umask(0o022)
    try:
        files = keys.generate(tmp_path / "keys")
    finally:
        os.umask(previous)
    for name in ("server_secret", "client_secret"):
        assert files[name].stat().st_mode & 0o077 == 0, name
    assert zmq.auth.load_certificate(files["client_secret"])[1] is not None


# -- retention ---------------------------------------------------------------------------------------------

def _job(job_id, state, updated, size=0):
    job = Job(job_id, None, JOB, [], state, updated=updated)
    job.bytes = size
    return job


def test_the_clean_up_removes_old_ended_jobs_then_the_oldest_over_the_cap():
    now = 100 * DAY
    jobs = [_job("old-done", "done", now - 40 * DAY, 10), _job("old-running", "running", now - 40 * DAY, 10),
            _job("old-upload", "uploading", now - 31 * DAY, 10), _job("new-done", "done", now - DAY, 50),
            _job("newer-failed", "failed", now - 1, 50), _job("queued", "queued", now - 2 * DAY, 50)]
    assert [j.id for j in expired(jobs, Retention(keep_days=30), now)] == ["old-done", "old-upload"]
    capped = expired(jobs, Retention(keep_days=30, max_store_bytes=120), now)
    assert [j.id for j in capped] == ["old-done", "old-upload", "new-done"]  # never running or queued ones
    assert expired(jobs, Retention(keep_days=0), now) == []
    quota = Retention(quota_jobs=2, quota_bytes=100)
    assert quota.refusal(jobs[:1]) is None and "2 jobs" in quota.refusal(jobs[:2], new_job=True)
    assert "GiB" in quota.refusal(jobs[:1], adding=91)


def test_old_jobs_are_removed_when_the_engine_starts(engines, tmp_path):
    jobs_dir = tmp_path / "jobs"
    store = JobStore(jobs_dir)
    old, new = (store.create(JOB, [b"style"], "token:t") for _ in range(2))
    old.state = new.state = "done"
    store.save(old)
    store.save(new)
    record = json.loads((old.dir / "job.json").read_text())
    record["updated"] -= 10 * DAY
    (old.dir / "job.json").write_text(json.dumps(record))
    engine = engines.start("retention", jobs_dir=jobs_dir, extra=["--keep-days", "7"])
    deadline = time.monotonic() + 10  # the folder leaves first, the log line follows
    while (old.dir.exists() or "removed by the clean-up" not in engine.log) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not old.dir.exists() and new.dir.is_dir()
    assert "removed by the clean-up" in engine.log


def test_the_operator_sees_every_owners_jobs_and_deletes_with_the_engine_stopped(engines, tmp_path):
    """Issue 10.2: clients see only their own jobs; whoever runs the engine can still see them all."""
    jobs_dir = tmp_path / "jobs"
    store = JobStore(jobs_dir)
    mine, theirs = store.create(JOB, [b"style"], "token:" + "a" * 32), store.create(JOB, [b"style"], "key:Bxyz12345")
    listed = run_cli("jobs", "--jobs-dir", jobs_dir)
    assert listed.returncode == 0, listed.stderr
    assert mine.id in listed.stdout and theirs.id in listed.stdout and "token:aaaaaaaa" in listed.stdout
    engine = engines.start("operator", jobs_dir=jobs_dir)
    refused = run_cli("jobs", "--jobs-dir", jobs_dir, "--delete", mine.id)
    assert refused.returncode == 2 and "in use" in refused.stderr and mine.dir.is_dir()
    engine.kill()
    assert run_cli("jobs", "--jobs-dir", jobs_dir, "--delete", "no-such-job").returncode == 2
    deleted = run_cli("jobs", "--jobs-dir", jobs_dir, "--delete", mine.id)
    assert deleted.returncode == 0 and not mine.dir.exists() and theirs.dir.is_dir()


def test_a_cancelled_job_continues_after_the_frames_it_finished(engine):
    """Issue 12.2 on the engine's side: a cancelled job stranded its frames; continue_job runs the rest."""
    with engine.client() as client, engine.client() as other:
        job = submit_clip(client, clip(3, seed=11), options={"first_iterations": 2, "iterations": 150})
        session = client.open_session(job)
        kept = collect(session, stop=lambda got: len(got) >= 1)
        client.cancel(job)
        while session.state != "cancelled":
            collect(session, timeout=0.2)
        assert client.status(job)["finished"] < 3, "cancelled mid-job"
        with pytest.raises(EngineError, match="no job"):
            other.continue_job(job)  # only its owner
        stamp = (engine.jobs_dir / job / "output" / "frame_000001.png").stat().st_mtime_ns
        status = client.continue_job(job)
        assert status["state"] in ("queued", "running") and status["error"] is None
        with pytest.raises(EngineError) as refused:
            client.continue_job(job)
        assert refused.value.code == "bad_state"
        session = client.open_session(job, since=1)
        rest = collect(session)
        assert session.state == "done" and set(rest) | set(kept) == {1, 2, 3}
        assert (engine.jobs_dir / job / "output" / "frame_000001.png").stat().st_mtime_ns == stamp
        assert bytes(client.fetch(job, 1, 1)[1].data) == kept[1], "a finished frame is kept byte for byte"


def test_a_job_cancelled_mid_upload_continues_by_waiting_for_the_rest(engine):
    """Cancelled before its frames had all arrived, a job has nothing to run; continue_job puts it back
    to waiting for them (it was refused), and resume_upload sends only the missing ones."""
    frames = [png(f) for f in clip(2, seed=13)]
    sock = raw_dealer(engine.address)
    try:
        job = exchange(sock, pack({"type": "submit", "id": 1, "job": JOB}, [png(clip(1)[0])])).header["job"]
        upload = {"type": "upload", "job": job, "encoding": "png", "width": 36, "height": 24}
        assert exchange(sock, pack({**upload, "id": 2, "index": 1}, [frames[0]])).type == "uploaded"
    finally:
        sock.close()
    with engine.client(token=TOKEN) as client:
        assert client.cancel(job)["state"] == "cancelled"
        status = client.continue_job(job)
        assert (status["state"], status["received"]) == ("uploading", 1)
        resumed = client.resume_upload(job, frames)
        while not resumed.tick(0.05, block=True):
            pass
        assert resumed.state == "done" and resumed.acked == {1, 2}, resumed.error
        session = client.open_session(job)
        assert sorted(collect(session)) == [1, 2] and session.state == "done"
        uploaded = sorted((engine.jobs_dir / job / "input").iterdir())
        assert [p.read_bytes() for p in uploaded] == frames, "the frame sent before the cancel is kept as it was"


def test_a_cancelled_multipass_job_continues_from_the_pass_it_reached(engine):
    """Multipass finishes no frame before its last pass: a cancelled (or restarted) job's Continue ran
    every pass again. Its state stays in the job's folder and the run goes on from where it stopped."""
    def passes_optimized(events):
        return [e["pass"] for _, e in events if e["type"] == "progress" and e.get("stage") == "optimize"]

    with engine.client() as client:
        job = submit_clip(client, clip(3, seed=12), options={**TINY, "mode": "multipass", "passes": 3,
                                                             "iterations": 30})
        session, events = client.open_session(job), []
        collect(session, events=events, stop=lambda _frames: max(passes_optimized(events), default=0) >= 2)
        client.cancel(job)
        while session.state != "cancelled":
            collect(session, timeout=0.2)
        assert client.status(job)["finished"] == 0 and max(passes_optimized(events)) == 2
        client.continue_job(job)
        session, events = client.open_session(job), []
        frames = collect(session, events=events)
        assert session.state == "done" and sorted(frames) == [1, 2, 3]
        assert min(passes_optimized(events)) == 2, "the continued job started over from pass 1"
        assert not (engine.jobs_dir / job / ".multipass-state").exists(), "a finished job leaves no state"
