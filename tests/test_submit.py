"""``python -m engine_server submit``: same options and same files as ``stylize``, on a running engine."""
import json
import subprocess
import sys
import time

import pytest

from engine_process import PROJECT_ROOT, clip, free_port, style_image
from engine_server.io.frames import write_frame


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine_server", *map(str, args)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def engine(module_engines):
    return module_engines.start("submit")


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("material")
    for i, frame in enumerate(clip(3, 40, 28, seed=9)):
        write_frame(folder / "clip", i + 1, frame)
    for kind in (0, 1):
        write_frame(folder, kind + 1, style_image(kind))
    styles = [folder / "style_a.png", folder / "style_b.png"]
    (folder / "frame_000001.png").rename(styles[0])
    (folder / "frame_000002.png").rename(styles[1])
    keys = folder / "keys.json"
    keys.write_text(json.dumps({"style_a": {"1": 1.0, "3": 0.0}, "style_b": {"1": 0.0, "3": 1.0}}))
    options = ["--style", styles[0], "--style", styles[1], "--style-keyframes", keys, "--width", 32,
               "--iterations", 2, "--first-iterations", 3, "--device", "cpu"]
    return folder, options


@pytest.fixture(scope="module")
def both_runs(engine, material, tmp_path_factory):
    folder, options = material
    out = tmp_path_factory.mktemp("runs")
    local = run_cli("stylize", folder / "clip", *options, "--out", out / "local")
    remote = run_cli("submit", folder / "clip", *options, "--out", out / "remote", "--server", engine.address)
    return local, remote, out


def test_submit_writes_the_same_files_as_stylize(both_runs):
    local, remote, out = both_runs
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    names = sorted(p.name for p in (out / "local").glob("frame_*.png"))
    assert names == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]
    assert names == sorted(p.name for p in (out / "remote").glob("frame_*.png"))
    for name in names:
        assert (out / "local" / name).read_bytes() == (out / "remote" / name).read_bytes(), name
    mine, theirs = (json.loads((out / d / "report.json").read_text()) for d in ("local", "remote"))
    assert set(mine) <= set(theirs) and {"server", "job"} <= set(theirs)
    for key in ("frame_count", "size", "options", "iterations", "weights_source", "flow", "status"):
        assert mine[key] == theirs[key], key
    assert theirs["status"] == "done" and theirs["options"]["width"] == 32
    assert [f["index"] for f in theirs["frames"]] == [1, 2, 3]
    assert all(f["iterations"] == m["iterations"] and f["losses"] == m["losses"]
               for f, m in zip(theirs["frames"], mine["frames"]))
    assert "upload" in remote.stderr and "frame" in remote.stderr  # progress bars


def test_resume_reattaches_and_fetches_only_what_is_missing(engine, both_runs, material):
    _, _, out = both_runs
    folder, options = material
    remote = out / "remote"
    job = json.loads((remote / "report.json").read_text())["job"]
    kept = {i: (remote / f"frame_00000{i}.png").stat().st_mtime_ns for i in (1, 2)}
    lost = (remote / "frame_000003.png").read_bytes()
    (remote / "frame_000003.png").unlink()
    with engine.client() as client:
        jobs_before = len(client.list_jobs())
        result = run_cli("submit", folder / "clip", *options, "--out", remote, "--server", engine.address, "--resume")
        assert result.returncode == 0, result.stderr
        assert len(client.list_jobs()) == jobs_before  # no new job: the old one was reattached
    assert (remote / "frame_000003.png").read_bytes() == lost
    assert all((remote / f"frame_00000{i}.png").stat().st_mtime_ns == t for i, t in kept.items())
    report = json.loads((remote / "report.json").read_text())
    assert report["job"] == job and report["status"] == "done" and [f["index"] for f in report["frames"]] == [1, 2, 3]


def one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_unreachable_engine_is_one_line_and_no_hang(material, tmp_path):
    folder, options = material
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_cli("submit", folder / "clip", *options, "--out", tmp_path / "out", "--server", address,
                     "--timeout", 1)
    assert time.monotonic() - started < 30
    line = one_line_error(result)
    assert address in line and "did not answer" in line


@pytest.mark.parametrize("case", ["missing input", "bad option", "wrong device", "bad style"])
def test_bad_input_exits_2_with_one_line(engine, material, tmp_path, case):
    folder, options = material
    args = [folder / "clip", *options]
    if case == "missing input":
        args[0] = tmp_path / "nope.mp4"
    elif case == "bad option":
        args += ["--style-scale", 100]  # a number in (0, 16]: refused before anything is uploaded
    elif case == "wrong device":
        args[args.index("--device") + 1] = "cuda"
    else:
        (tmp_path / "style.png").write_text("not an image")
        args += ["--style", tmp_path / "style.png"]
    result = run_cli("submit", *args, "--out", tmp_path / "out", "--server", engine.address)
    line = one_line_error(result)
    expected = {"missing input": "nope.mp4", "bad option": "style-scale", "wrong device": "cpu",
                "bad style": "style.png"}[case]
    assert expected in line


def test_resume_finishes_an_interrupted_upload(engine, material, tmp_path):
    from engine_server.io.frames import open_frames
    from engine_server.io.frames import encode_png

    folder, options = material
    source = open_frames(folder / "clip", 32)

    def interrupted():
        raise OSError("interrupted")

    # what a submit stopped during its upload leaves behind: a job waiting for frames, named in report.json
    with engine.client() as client:
        upload = client.start_submit([encode_png(source[0]), interrupted, interrupted],
                                     [(p.name, p.read_bytes()) for p in options[1:4:2]], None,
                                     {"iterations": 2, "first_iterations": 3}, *source.size, window=1)
        while not upload.tick(0.1, block=True):
            pass
        assert client.status(upload.job_id)["state"] == "uploading"
        token = client.token
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"job": upload.job_id}))
    (out / ".engine-token").write_text("another-clients-token")
    result = run_cli("submit", folder / "clip", *options, "--out", out, "--server", engine.address, "--resume")
    assert result.returncode == 2 and "not known to the engine" in result.stderr, "only its owner reaches a job"
    (out / ".engine-token").write_text(token)
    result = run_cli("submit", folder / "clip", *options, "--out", out, "--server", engine.address, "--resume")
    assert result.returncode == 0, result.stderr
    assert (out / ".engine-token").read_text() == token and (out / ".engine-token").stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in out.glob("frame_*.png")) == [f"frame_00000{i}.png" for i in (1, 2, 3)]
    report = json.loads((out / "report.json").read_text())
    assert report["job"] == upload.job_id and report["status"] == "done"
