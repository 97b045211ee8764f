"""The client the add-on and scripts use: timeouts, non-blocking ticks, reconnection, errors."""
import subprocess
import sys
import time

import pytest

from engine_process import PROJECT_ROOT, TINY, clip, decode, free_port, png, style_image
from vse_style_shared.client import EngineClient, EngineError, EngineUnavailable

STYLE = [("style.png", png(style_image()))]


@pytest.fixture(scope="module")
def engine(module_engines):
    return module_engines.start("client")


def test_client_module_imports_no_heavy_libraries():
    code = ("import sys, vse_style_shared.client; heavy = {'numpy', 'cv2', 'torch'} & set(sys.modules); "
            "print(sorted(heavy)); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dead_engine_gives_a_clear_error_not_a_hang():
    address = f"tcp://127.0.0.1:{free_port()}"
    with EngineClient(address, timeout=0.5) as client:
        for call in (client.hello, client.ping, client.list_jobs, lambda: client.status("x")):
            started = time.monotonic()
            with pytest.raises(EngineUnavailable) as err:
                call()
            assert 0.4 < time.monotonic() - started < 2.0
            assert address in str(err.value) and "0.5 s" in str(err.value)
        upload = client.start_submit([png(clip(1)[0])], STYLE, None, TINY, 36, 24)
        started = time.monotonic()
        while not upload.tick(0.01):
            assert time.monotonic() - started < 3
        assert upload.state == "failed" and isinstance(upload.error, EngineUnavailable)


def test_bad_address_and_keys_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="address"):
        EngineClient("nonsense://here")
    with pytest.raises(ValueError, match="not a readable"):
        EngineClient("tcp://127.0.0.1:1", server_public_key=tmp_path / "missing.key")


def test_requests_refused_by_the_engine_raise_engine_error(engine):
    with engine.client() as client:
        with pytest.raises(EngineError) as err:
            client.status("no-such-job")
        assert err.value.code == "unknown_job" and err.value.field == "job"
        with pytest.raises(EngineError) as err:
            client.submit([png(clip(1)[0])], [("bad.png", b"not an image")], None, TINY, 36, 24)
        assert (err.value.code, err.value.field) == ("bad_field", "styles[0]")
        with pytest.raises(EngineError) as err:  # caught locally, before anything is uploaded
            client.submit([png(clip(1, 48, 32)[0])], STYLE, None, TINY, 36, 24)
        assert err.value.field == "frames[0]" and "48x32" in err.value.message
        with pytest.raises(EngineError) as err:
            client.submit([png(clip(1)[0])], STYLE, None, {"iterations": -1}, 36, 24)
        assert err.value.field == "job.options.iterations"
        with pytest.raises(EngineError, match="unknown_job"):
            client.attach("no-such-job")


def test_ticks_are_bounded_and_deliver_everything(engine):
    frames = clip(3, seed=7)
    with engine.client() as client:
        upload = client.start_submit([png(f) for f in frames], STYLE, None, TINY, 36, 24, encoding="png")
        longest = 0.0
        while True:
            started = time.monotonic()
            finished = upload.tick(0.005)
            longest = max(longest, time.monotonic() - started)
            if finished:
                break
            time.sleep(0.002)
        assert upload.state == "done", upload.error
        session = client.open_session(upload.job_id)
        kinds, received = set(), {}
        deadline = time.monotonic() + 120
        while not session.done and time.monotonic() < deadline:
            started = time.monotonic()
            for event in session.tick(0.005):
                kinds.add(event["type"])
                if event["type"] == "frame":
                    received[event["index"]] = bytes(event["data"])
            longest = max(longest, time.monotonic() - started)
            time.sleep(0.01)
        assert longest < 0.1, f"a tick took {longest:.3f} s"
        assert {"progress", "frame", "job_status"} <= kinds
        assert sorted(received) == [1, 2, 3] and session.state == "done" and session.progress["frame_count"] == 3
        raw = client.fetch(upload.job_id, 1, 3, encoding="raw")
        assert all(bytes(raw[i].data) == decode(received[i]).tobytes() for i in (1, 2, 3))
        listed = {job["job"]: job for job in client.list_jobs()}
        assert listed[upload.job_id]["finished"] == 3


def test_raw_upload_is_stored_losslessly(engine):
    frame = clip(1, seed=8)[0]
    with engine.client() as client:
        job = client.submit([frame.tobytes()], STYLE, None, {**TINY, "mode": "per-frame"}, 36, 24, encoding="raw")
        assert client.open_session(job).wait()["state"] == "done"
    stored = engine.jobs_dir / job / "input" / "frame_000001.png"
    assert (decode(stored.read_bytes()) == frame).all()


def test_session_reports_unreachable_once_then_reconnects_after_restart(engines):
    first = engines.start("flaky")
    with first.client(timeout=1.5) as client:
        def unreadable():
            raise OSError("the second frame is not rendered yet")

        upload = client.start_submit([png(clip(1)[0]), unreadable], STYLE, None, TINY, 36, 24, window=1)
        while not upload.tick(0.05, block=True):
            pass
        assert upload.error.field == "frames[1]" and upload.acked == {1}  # the job waits for frame 2
        job = upload.job_id
        session = client.open_session(job)
        while session.state is None:
            session.tick(0.05, block=True)
        assert session.state == "uploading"
        first.kill()
        events = []
        started = time.monotonic()
        while time.monotonic() - started < 4:
            events += session.tick(0.05, block=True)  # never raises
        unreachable = [e for e in events if e["type"] == "unreachable"]
        assert len(unreachable) == 1 and first.address in unreachable[0]["message"] and session.unreachable
        engines.start("flaky", jobs_dir=first.jobs_dir, port=first.port)
        deadline = time.monotonic() + 30
        while session.unreachable and time.monotonic() < deadline:
            events += session.tick(0.05, block=True)
        assert not session.unreachable and any(e["type"] == "reconnected" for e in events)
        assert session.job == job and client.status(job)["job"] == job


def test_session_fetches_frames_it_missed(engine):
    with engine.client(timeout=2) as client:
        job = client.submit([png(f) for f in clip(3, seed=9)], STYLE, None, {**TINY, "mode": "per-frame"}, 36, 24)
        client.open_session(job).wait()
        session = client.open_session(job)
        deadline = time.monotonic() + 10
        while sum(m.type == "frame" for m in session._inbox) < 3:  # the attach reply and its three frames
            client._receive(0.1)
            assert time.monotonic() < deadline
        for message in [m for m in session._inbox if m.type == "frame" and m.header["index"] != 1]:
            session._inbox.remove(message)  # lost on the way (as events dropped for a slow client)
        events = []
        while not session.done:
            events += session.tick(0.1, block=True)
            assert time.monotonic() < deadline + 10
        assert sorted(e["index"] for e in events if e["type"] == "frame") == [1, 2, 3]
        assert session.missing() == set() and not session.lost
