"""Scale-out on Ray (issue 11): a local Ray runtime with 2 CPUs, tiny real frames, few iterations.

The runtime starts once for the module (a few seconds); each test starts its own workers.
"""
import os
import signal
import sys
import time

import numpy as np
import pytest
import torch

from conftest import shared_path
from engine_server.errors import Cancelled, InputError
from engine_server.io.frames import frame_filename, open_frames, read_image
from engine_server.pipeline import StylizeOptions, Stylizer
from engine_server.scale import seams
from engine_server.scale.feed import FETCH_FRAMES

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (make setup installs it)")

from engine_server.scale.cluster import ClusterStylizer  # noqa: E402

TINY = dict(mode="temporal", device="cpu", iterations=3, first_iterations=6)


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bunny():
    clip = open_frames(str(shared_path("video", "big_buck_bunny.mp4")), 48)
    return [clip[i] for i in range(12)]


@pytest.fixture
def style(shared_data):
    return str(shared_data("styles", "starry_night.jpg"))


@pytest.fixture
def one_thread():
    """Workers run one torch thread; a local run to compare with does the same arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cluster(style, workers=2, chunk_frames=5, window=2, **kwargs):
    return ClusterStylizer([style], StylizeOptions(**TINY), address="local", workers=workers,
                           chunk_frames=chunk_frames, window=window, threads=1, **kwargs)


# -- the seam blend ---------------------------------------------------------------------------------

def test_seam_blend_ends_on_each_chain_and_keeps_the_strokes_contrast():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (40, 60, 3)).astype(np.uint8)
    b = rng.integers(0, 255, (40, 60, 3)).astype(np.uint8)
    assert np.abs(seams.blend(a, b, 0.0, 2.0).astype(int) - a).max() <= 1
    assert np.abs(seams.blend(a, b, 1.0, 2.0).astype(int) - b).max() <= 1
    assert np.array_equal(seams.blend(a, a, 0.5, 2.0), a)  # chains that agree: a plain cross-fade
    half = seams.blend(a, b, 0.5, 2.0).astype(np.float32)
    linear = (a.astype(np.float32) + b) / 2
    # two unrelated textures averaged lose about 1/sqrt(2) of their contrast; the blend keeps it
    assert half.std() > 0.9 * a.std() and linear.std() < 0.8 * a.std()
    assert [seams.share(i, 3) for i in range(3)] == [0.25, 0.5, 0.75]


def test_seam_repair_lowers_the_error_across_a_seam(bunny, style):
    from engine_server.bench.scale import consecutive_pairs, pair_errors

    stylizer = Stylizer([style], StylizeOptions(**TINY))
    seam, window = 5, 3
    carried = [r.image for r in stylizer.run(bunny[:seam + window])]  # the earlier chain, run on
    fresh = [r.image for r in stylizer.run(bunny[seam:])]              # the later chain
    hard_cut = carried[:seam] + fresh
    repaired = carried[:seam] + [seams.repair(carried[seam + k], fresh[k], k, window) for k in range(window)] \
        + fresh[window:]
    across = range(seam - 1, seam + window)
    pairs = consecutive_pairs(bunny)
    cut_errors, repaired_errors = pair_errors(hard_cut, pairs), pair_errors(repaired, pairs)
    # the whole jump in one pair, against the same jump spread over window + 1 pairs
    assert repaired_errors[across].max() < 0.6 * cut_errors[seam - 1]
    assert np.sqrt(repaired_errors[across].mean()) < np.sqrt(cut_errors[across].mean())


# -- frames to the workers --------------------------------------------------------------------------

def test_a_chunk_is_fed_a_few_frames_at_a_time_and_far_chunks_decode_in_order(tmp_path, monkeypatch):
    """Workers read their chunk through the feed: a chain's reads (each frame, its partners 1, 2 and 4
    back, the chunk's first frame for the colours) ask for every frame once and at most FETCH_FRAMES at a
    time, and keep at most KEEP_FRAMES alive; two chunks far apart in one video, read in turns, each
    decode in order instead of reopening the video at every request."""
    import gc
    import weakref

    from engine_server.io.frames import VideoFrames, write_video
    from engine_server.scale.feed import KEEP_FRAMES, FedFrames, FrameFeed
    from test_frames import decoded_whole, make_frames

    path = write_video(make_frames(130, 64, 48), tmp_path / "long.mp4", fps=10)
    expected = decoded_whole(path, (32, 24))
    opened = []
    real_open = VideoFrames._open
    monkeypatch.setattr(VideoFrames, "_open", staticmethod(lambda p: opened.append(p) or real_open(p)))
    feed = FrameFeed(open_frames(path, width=32))
    opened.clear()  # the count when opening
    requests = {0: [], 1: []}

    def chunk_frames(number, start, count):
        def fetch(a, b):
            requests[number].append(b - a)
            return feed.frames(number, start + a, start + b)
        return FedFrames(fetch, count, (32, 24))

    chunks = {0: (chunk_frames(0, 0, 60), 0), 1: (chunk_frames(1, 70, 60), 70)}
    refs = []
    for index in range(60):
        for number, (fed, start) in chunks.items():
            refs.append(weakref.ref(fed[index]))
            for back in (1, 2, 4, index):
                if index >= back:
                    assert np.array_equal(fed[index - back], expected[start + index - back])
    gc.collect()
    for number in chunks:
        assert sum(requests[number]) == 60 and max(requests[number]) == FETCH_FRAMES  # each frame fetched once
        assert feed.stats()[number] == [sum(requests[number]), FETCH_FRAMES]
    # of 120 frames read, alive: per chunk the worker's kept frames and the feed decoder's few ahead
    assert sum(ref() is not None for ref in refs) <= 2 * (KEEP_FRAMES + FETCH_FRAMES)
    assert len(opened) == 2, f"the video was opened {len(opened)} times for two chunks"
    feed.release(0)
    assert 0 not in feed._readers and 1 in feed._readers
    with pytest.raises(IndexError):
        chunks[0][0][60]


# -- runs on Ray ------------------------------------------------------------------------------------

def test_a_ray_run_gives_every_frame_once_in_order_like_a_local_run(ray_runtime, bunny, style, one_thread):
    events = []
    stylizer = cluster(style, progress=events.append)
    results = list(stylizer.run(bunny))
    stylizer.shutdown()
    assert [r.index for r in results] == list(range(1, len(bunny) + 1))
    assert all(r.image.shape == bunny[0].shape and r.image.dtype == np.uint8 for r in results)
    plan = stylizer.plan
    assert len(plan.chunks) == 2 and len(plan.seams) == 1
    # each chunk's frames went to its worker from the feed, each once, never the chunk in one piece
    assert stylizer.stats["fed"] == {c.number: [len(c.frames), min(len(c.frames), FETCH_FRAMES)] for c in plan.chunks}
    local = [r.image for r in Stylizer([style], StylizeOptions(**TINY)).run(bunny)]
    # the first chunk is the local run's chain: the same frames up to the seam
    for index in range(plan.seams[0].frame):
        assert np.array_equal(results[index].image, local[index]), f"frame {index + 1} differs"
    # progress over all workers: it only grows and ends with the whole strip
    done = [e.frame - 1 + e.iteration / e.iterations for e in events if e.stage == "stylize"]
    assert done == sorted(done) and done[-1] > 0.8 * len(bunny)
    assert events[-1].stage == "done" and events[-1].frames_done == events[-1].frame_count == len(bunny)


def test_a_scene_cut_is_a_chunk_boundary_without_seam(ray_runtime, bunny, style, shared_data):
    other = open_frames(str(shared_data("video", "cup.mp4")), 48)
    frames = bunny[:6] + [other[i] for i in range(6)]
    stylizer = cluster(style, chunk_frames=100)
    results = list(stylizer.run(frames))
    stylizer.shutdown()
    assert stylizer.plan.cuts == (6,) and stylizer.plan.seams == ()
    assert [r.index for r in results] == list(range(1, 13))
    assert [r.index for r in results if r.cut] == [7]


@pytest.mark.parametrize("given", [True, False], ids=["staged-in-the-folder-given", "staged-in-a-temporary-folder"])
def test_a_killed_worker_has_its_chunk_carried_on_and_nothing_recomputed(ray_runtime, bunny, style, tmp_path,
                                                                         monkeypatch, given):
    import tempfile

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    stylizer = cluster(style, staging=tmp_path / "staging" if given else None)
    stylizer.options.iterations = 12  # frames slow enough to kill a worker in the middle of its chunk
    where = stylizer.wait_ready()
    killed, staged = [], []

    def on_progress(event):
        if stylizer.stats["frames_made"] >= 2 and not killed:
            os.kill(where[0]["pid"], signal.SIGKILL)  # worker 0 runs the first chunk, the one going out
            killed.append(stylizer.stats["frames_made"])
            staged.extend(str(p) for p in (tmp_path if given else temporary).rglob("*.png"))

    stylizer.progress = on_progress
    received = [result.index for result in stylizer.run(bunny)]
    stylizer.shutdown()
    assert killed, "the worker was never killed"
    assert received == list(range(1, len(bunny) + 1))  # one frame per input frame, in order
    assert stylizer.stats["reruns"] >= 1
    # every frame made once: the rerun carried on after the frames that had arrived
    assert stylizer.stats["frames_made"] == stylizer.plan.work
    # what arrived waited on disk, never in the driver's memory; given no folder, a temporary one, now gone
    assert len(staged) >= 2 and not os.listdir(temporary)


def test_a_stopped_run_resumes_after_the_frames_that_exist(ray_runtime, bunny, style, tmp_path):
    staging = tmp_path / "staging"
    first = {}
    stylizer = cluster(style, staging=staging, cancel=lambda: len(first) >= 3)
    with pytest.raises(Cancelled):
        for result in stylizer.run(bunny):
            first[result.index] = result.image
    stylizer.shutdown()
    staged = len(os.listdir(staging / "raw")) + len(os.listdir(staging / "carried"))
    assert staged >= len(first)
    again = cluster(style, staging=staging)
    second = {r.index: r.image for r in again.run(bunny, done=dict(first))}
    again.shutdown()
    assert sorted(first) + sorted(second) == list(range(1, len(bunny) + 1))
    assert again.stats["frames_made"] == again.plan.work - staged  # staged frames are not made again
    assert not staging.exists()  # all out: the staging folder goes


def test_frames_staged_for_other_options_are_not_taken_up(ray_runtime, bunny, style, tmp_path):
    staging = tmp_path / "staging"
    first = cluster(style, staging=staging, cancel=lambda: first.stats["frames_made"] >= 4)
    with pytest.raises(Cancelled):
        list(first.run(bunny))
    assert len(os.listdir(staging / "raw")) >= 2
    other = ClusterStylizer([style], StylizeOptions(**{**TINY, "content_weight": 50.0}), address="local",
                            workers=2, chunk_frames=5, window=2, threads=1, staging=staging)
    results = list(other.run(bunny))
    other.shutdown()
    assert len(results) == len(bunny) and not any(r.resumed for r in results)
    assert other.stats["frames_made"] == other.plan.work  # everything made afresh for these options


def test_with_colours_kept_every_chunk_matches_the_paintings_to_the_strips_first_frame(ray_runtime, bunny, style,
                                                                                       one_thread):
    """As on one machine: a later chunk's chain is matched to frame 1's luminance, not its own first
    frame's, or each chunk of a shot would get other targets and the seam would show it."""
    options = StylizeOptions(**{**TINY, "preserve_colors": True})
    stylizer = ClusterStylizer([style], options, address="local", workers=2, chunk_frames=5, window=2, threads=1)
    results = list(stylizer.run(bunny))
    stylizer.shutdown()
    seam, later = stylizer.plan.seams[0], stylizer.plan.chunks[1]
    local = Stylizer([style], options)
    matched = [r.image for r in local.run(bunny[later.start:], colour_reference=bunny[0])]
    own = [r.image for r in local.run(bunny[later.start:])]
    assert not np.array_equal(matched[-1], own[-1])  # the reference makes a difference here
    for index in range(seam.frame + seam.window, len(bunny)):  # the later chain's own frames, past the window
        assert np.array_equal(results[index].image, matched[index - later.start]), f"frame {index + 1} differs"


def test_cli_stylize_with_ray(ray_runtime, bunny, style, tmp_path):
    from engine_server.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    import cv2

    for i, frame in enumerate(bunny[:8]):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    code = main(["stylize", str(folder), "--style", style, "--out", str(out), "--iterations", "2",
                 "--first-iterations", "4", "--device", "cpu", "--ray", "local", "--workers", "2",
                 "--chunk-frames", "4"])
    assert code == 0
    assert sorted(os.listdir(out)) == sorted([frame_filename(i) for i in range(1, 9)] + ["report.json"])
    assert read_image(out / frame_filename(8)).shape == bunny[0].shape


def test_bad_scale_out_requests_are_one_line_errors(ray_runtime, style, tmp_path, capsys):
    from engine_server.cli import main

    with pytest.raises(InputError, match="temporal mode"):
        ClusterStylizer([style], StylizeOptions(mode="multipass", device="cpu"))
    code = main(["stylize", "nothing", "--style", style, "--out", str(tmp_path), "--ray", "local",
                 "--mode", "multipass"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mode multipass" in err[0]


def test_serve_checks_its_scale_out_options_before_starting(tmp_path):
    import subprocess

    run = subprocess.run([sys.executable, "-m", "engine_server", "serve", "--jobs-dir", str(tmp_path), "--workers",
                          "2"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "needs --ray" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    run = subprocess.run([sys.executable, "-m", "engine_server", "serve", "--jobs-dir", str(tmp_path), "--ray",
                          "local", "--workers", "0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--workers" in run.stderr


def test_without_ray_installed_the_error_says_how_to_get_it(monkeypatch, style):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(InputError, match=r"\[ray\]"):
        ClusterStylizer([style], StylizeOptions(**TINY))


def test_serve_with_ray_runs_a_job_across_workers_for_an_unchanged_client(module_engines):
    from engine_process import TINY as SERVER_TINY, clip, png, style_image

    engine = module_engines.start("ray", extra=["--ray", "local", "--workers", "2", "--chunk-frames", "6",
                                                "--seam-frames", "2"])
    frames = clip(12)
    with engine.client(timeout=30) as client:
        job = client.submit([png(f) for f in frames], [("style.png", png(style_image(0)))],
                            [[1.0]] * len(frames), SERVER_TINY, frames[0].shape[1], frames[0].shape[0])
        session = client.open_session(job)
        received, progress = [], []
        deadline = time.monotonic() + 240
        while not session.done and time.monotonic() < deadline:
            for event in session.tick(0.1, block=True):
                if event["type"] == "frame":
                    received.append(event["index"])
                elif event["type"] == "progress":
                    progress.append(event)
        assert session.state == "done", engine.log[-3000:]
        report = session.status["report"]
        assert report["ray"]["workers"] == 2
    assert received == list(range(1, 13))  # every frame once, in order
    assert any(e["stage"] == "stylize" and e["frame_count"] == 12 for e in progress)
    assert not (engine.jobs_dir / job / ".chunks").exists()  # staged frames go once every frame is out
    assert engine.terminate() == 0  # a clean exit takes its Ray runtime down with it
