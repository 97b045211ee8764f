"""The Python API on tiny synthetic clips: order, progress, cancel, resume, modes."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine_server import Cancelled, InputError, StylizeOptions, Stylizer, stylize


def moving_clip(n=3, w=40, h=32):
    """A textured pattern translating 1 px per frame to the right."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 255, (h, w + n, 3)).astype(np.uint8)
    base = np.asarray(np.clip(base.astype(float) * 0.5 + 64, 0, 255), np.uint8)
    return [np.ascontiguousarray(base[:, n - t: n - t + w]) for t in range(n)]


def style_image():
    img = np.zeros((32, 32, 3), np.uint8)
    img[::4] = (250, 180, 20)
    img[:, ::6] = (20, 60, 200)
    return img


FAST = dict(iterations=3, first_iterations=4, device="cpu")


def test_yields_every_frame_in_order_with_progress():
    events = []
    results = list(stylize(moving_clip(3), [style_image()], progress=events.append, **FAST))
    assert [r.index for r in results] == [1, 2, 3]
    assert all(r.image.shape == (32, 40, 3) and r.image.dtype == np.uint8 for r in results)
    assert [r.iterations for r in results] == [4, 3, 3]
    assert all(r.losses["temporal"] > 0 for r in results[1:]) and results[0].losses["temporal"] == 0
    stages = {e.stage for e in events}
    assert {"setup", "flow", "optimize", "done"} <= stages
    optimizing = [e for e in events if e.stage == "optimize"]
    assert len(optimizing) == 10 and all(e.loss > 0 for e in optimizing)
    assert optimizing[0].eta is None and all(e.eta is not None for e in optimizing[1:])  # timed from iteration 1
    assert optimizing[-1].eta == pytest.approx(0.0)


def test_the_first_eta_does_not_count_the_setup():
    """Issue 12.7: the first ETA was 3x too long, the setup's seconds counted as if every frame had them."""
    import time

    events = []

    def slow_setup(event):  # one second of setup (loading the network, style targets) before any iteration
        if event.stage == "setup":
            time.sleep(1.0)
        events.append(event)

    list(stylize(moving_clip(3), [style_image()], progress=slow_setup, **FAST))
    second = [e for e in events if e.stage == "optimize"][1]
    assert second.eta < 1.0, second.eta  # about 8 iterations of a few ms left, not 8 x the setup


def test_per_frame_mode_has_no_temporal_term():
    results = list(stylize(moving_clip(2), [style_image()], mode="per-frame", **FAST))
    assert [r.iterations for r in results] == [4, 4]
    assert all(r.losses["temporal"] == 0 for r in results)


def test_multipass_yields_frames_after_the_last_pass():
    events = []
    results = list(stylize(moving_clip(3), [style_image()], mode="multipass", passes=3,
                           progress=events.append, iterations=2, device="cpu"))
    assert sorted(r.index for r in results) == [1, 2, 3]
    assert [r.index for r in results] == [1, 2, 3]  # odd number of passes ends going forward
    assert all(r.iterations == 6 for r in results)
    passes = {e.pass_index for e in events if e.stage == "optimize"}
    assert passes == {1, 2, 3}
    # the temporal loss joins from the middle pass: present in the last pass for frames with a neighbour
    assert results[1].losses["temporal"] > 0


def test_cancel_keeps_finished_frames():
    finished = []
    stop = lambda: len(finished) >= 1
    with pytest.raises(Cancelled):
        for result in stylize(moving_clip(3), [style_image()], cancel=stop, **FAST):
            finished.append(result)
    assert [r.index for r in finished] == [1]


def test_resume_continues_from_finished_frames():
    clip = moving_clip(3)
    full = list(stylize(clip, [style_image()], **FAST))
    stylizer = Stylizer([style_image()], StylizeOptions(**FAST))
    resumed = list(stylizer.run(clip, done={1: full[0].image}))
    assert [r.index for r in resumed] == [2, 3]
    # frame 2 starts from frame 1's 8-bit image instead of its float original: nearly the same result
    # (a few grey levels: L-BFGS's first steps amplify the +-0.5 rounding), far from a fresh start
    difference = np.abs(resumed[0].image.astype(int) - full[1].image.astype(int)).mean()
    fresh = list(stylize(clip[1:2], [style_image()], **FAST))[0].image
    assert difference < 5.0 and difference < 0.2 * np.abs(fresh.astype(int) - full[1].image.astype(int)).mean()


def test_two_styles_with_per_frame_weights():
    weights = np.array([[1.0, 0.0], [0.0, 1.0]])
    results = list(stylize(moving_clip(2), [style_image(), 255 - style_image()], weights, **FAST))
    assert len(results) == 2
    with pytest.raises(InputError, match="shape"):
        list(stylize(moving_clip(2), [style_image()], np.ones((3, 1)), **FAST))


def test_preserve_colors_keeps_content_chrominance():
    clip = moving_clip(1)
    out = next(iter(stylize(clip, [style_image()], preserve_colors=True, **FAST))).image
    from engine_server.style.color import _RGB_TO_YIQ
    chroma = lambda img: (np.asarray(img, float) @ _RGB_TO_YIQ.T)[..., 1:]
    assert np.abs(chroma(out) - chroma(clip[0])).mean() < 3.0


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match="--mode"):
        Stylizer([style_image()], StylizeOptions(mode="sideways"))
    with pytest.raises(InputError, match="--style"):
        Stylizer([], StylizeOptions())


def test_a_resumed_run_reads_the_images_of_the_few_frames_it_carries_on_from():
    """Resuming after thousands of frames must not load thousands of images: only the temporal targets
    of the frames still to do (J back), or the fast mode's last frame, are read."""
    from engine_server import images_to_resume

    temporal_options = StylizeOptions(mode="temporal", long_term=(1, 2, 4))
    assert images_to_resume(temporal_options, range(1, 7), 10) == {3, 4, 5, 6}  # 7 needs 3, 5, 6; 8 needs 4
    assert images_to_resume(temporal_options, {1, 2, 3, 8, 9}, 10) == {1, 2, 3, 8, 9}  # gaps: 4-7 and 10 to do
    assert images_to_resume(temporal_options, range(1, 11), 10) == set()  # nothing left to do
    assert images_to_resume(StylizeOptions(mode="fast"), range(1, 7), 10) == {6}
    for mode in ("per-frame", "multipass", "fast-per-frame"):
        assert images_to_resume(StylizeOptions(mode=mode), range(1, 7), 10) == set()

    clip = moving_clip(5)
    options = StylizeOptions(**FAST, long_term=(1,))
    full = list(Stylizer([style_image()], options).run(clip))
    done = {1: None, 2: None, 3: full[2].image}  # only frame 3's image: frame 4's target
    resumed = list(Stylizer([style_image()], options).run(clip, done=dict(done)))
    assert [r.index for r in resumed] == [4, 5]
    with_every_image = list(Stylizer([style_image()], options).run(clip, done={i: full[i - 1].image for i in (1, 2, 3)}))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(resumed, with_every_image))
    with pytest.raises(ValueError, match=r"finished frames \[3\]"):
        list(Stylizer([style_image()], options).run(clip, done={**done, 3: None}))


def test_multipass_keeps_the_clip_on_disk_not_in_memory(tmp_path):
    """Multi-pass revisits every frame in every pass; its state (frames, results, flows, masks) lives in
    a scratch folder, so the frame arrays alive in memory do not grow with the clip, and the folder is
    gone when the run ends."""
    import gc

    def most_alive_frames(count):
        clip = moving_clip(count, w=48, h=40)
        stylizer = Stylizer([style_image()], StylizeOptions(mode="multipass", passes=2, iterations=1, device="cpu"))
        stylizer.scratch_dir = tmp_path / f"scratch-{count}"
        peak = [0]

        def count_alive(event):  # image-sized arrays and tensors anywhere in the process, the clip's own aside
            if event.stage not in ("flow", "done"):  # the second pass's flows, and the end: every frame visited
                return
            gc.collect()
            alive = sum(1 for o in gc.get_objects()
                        if type(o) in (np.ndarray, torch.Tensor) and tuple(o.shape)[-2:] in ((40, 48), (48, 3))
                        and not any(o is frame for frame in clip))
            peak[0] = max(peak[0], alive)

        stylizer.progress = count_alive
        results = list(stylizer.run(clip))
        assert [r.index for r in results] == list(range(count, 0, -1))  # an even number of passes ends backwards
        assert not any(stylizer.scratch_dir.iterdir())  # the scratch folder is removed at the end
        return peak[0]

    short, long = most_alive_frames(3), most_alive_frames(8)
    assert long <= short, f"alive frame arrays grew with the clip: {short} for 3 frames, {long} for 8"


def test_a_stopped_multipass_run_continues_where_it_stopped(tmp_path):
    """Multi-pass yields nothing before its last pass: a run stopped in pass 2 of 3 lost every pass
    (the engine re-ran the whole job after a restart or Continue). Its state now stays in the scratch
    folder and the next run of the same work goes on from the frame it stopped at."""
    options = StylizeOptions(mode="multipass", passes=3, iterations=2, device="cpu")
    clip = moving_clip(3)

    def run(stop_after=None, run_options=options):
        worked, results = [], []
        stylizer = Stylizer([style_image()], run_options, progress=lambda e: e.stage == "optimize" and (
            (e.pass_index, e.frame) in worked or worked.append((e.pass_index, e.frame))))
        stylizer.cancel = (lambda: len(worked) > stop_after) if stop_after is not None else None
        stylizer.scratch_dir = tmp_path
        try:
            results += stylizer.run(clip)
        except Cancelled:
            pass
        return worked, results

    whole_worked, whole = run()
    assert not (tmp_path / ".multipass-state").exists(), "a finished run leaves no state"
    stopped, nothing = run(stop_after=4)  # pass 1 (frames 1, 2, 3), pass 2 backwards: frame 3, then 2 stops
    assert stopped == [(1, 1), (1, 2), (1, 3), (2, 3), (2, 2)] and nothing == []
    worked, results = run()
    assert worked == [(2, 2), (2, 1), (3, 1), (3, 2), (3, 3)], "frame 2 of pass 2 again, then the rest"
    assert [r.index for r in results] == [1, 2, 3]
    for resumed, uninterrupted in zip(results, whole):
        assert np.abs(resumed.image.astype(int) - uninterrupted.image).max() <= 1
    assert not (tmp_path / ".multipass-state").exists()
    run(stop_after=4)
    other, _ = run(run_options=replace(options, iterations=3))  # other work: the state is not taken up
    assert other[:3] == [(1, 1), (1, 2), (1, 3)] and len(other) == 9


@pytest.mark.parametrize("mode", ["temporal", "per-frame"])
def test_finished_frames_are_not_kept(mode):
    """Host memory stays flat over a long run: the engine keeps no finished frame's image (only the last
    few outputs, as tensors, for the temporal constraints)."""
    import gc
    import weakref

    clip = moving_clip(8)
    resumed_image = clip[0].copy()
    refs = [weakref.ref(resumed_image)]
    resumed = {1: resumed_image}
    del resumed_image  # from here on only the engine holds the resumed frame
    stylizer = Stylizer([style_image()], StylizeOptions(mode=mode, iterations=1, first_iterations=1, device="cpu",
                                                         long_term=(1,)))
    frames = stylizer.run(clip, done=resumed)
    del resumed
    for result in frames:
        refs.append(weakref.ref(result.image))
        del result
        gc.collect()
        # The generator may still hold the frame it just yielded; nothing older may be alive.
        alive = [index for index, ref in enumerate(refs[:-1], start=1) if ref() is not None]
        assert not alive, f"frames {alive} still referenced after frame {len(refs)}"
    assert len(refs) == 8


def test_warm_started_frames_stop_on_a_short_window(monkeypatch):
    """Later frames of a shot (warm starts) get the short early-stop window at the reference's rate;
    first frames and per-frame mode keep the reference's 1e-4 over 50 iterations."""
    from engine_server import pipeline

    seen, plans = [], []
    real = pipeline.optimize_levels

    def recording(init, levels, objective_at, vgg, settings, *rest):
        seen.append((settings.tolerance_interval, settings.tolerance, settings.remaining_tolerance))
        plans.append(levels)
        return real(init, levels, objective_at, vgg, settings, *rest)

    monkeypatch.setattr(pipeline, "optimize_levels", recording)
    clip = moving_clip(3)
    size = (clip[0].shape[1], clip[0].shape[0])
    for mode in ("temporal", "per-frame"):
        list(Stylizer([style_image()], StylizeOptions(mode=mode, iterations=20, first_iterations=20, coarsest_side=16,
                                                      device="cpu", early_stop=True, init="content")).run(clip))
    window = pipeline.WARM_STOP_WINDOW
    warm = (window, pytest.approx(1e-4 * window / 50), pipeline.WARM_REMAINING)
    cold = (50, 1e-4, None)
    assert seen == [cold, warm, warm, cold, cold, cold]
    # warm starts skip the coarse levels and spend the pyramid's budget at full size
    from engine_server.optimize.schedule import BUDGET, Level
    assert len(plans[0]) > 1 and plans[0][-1].size == size
    assert plans[1] == plans[2] == [Level(size, math.ceil(BUDGET * 20))]


def test_a_painted_start_skips_the_coarse_levels_but_keeps_the_first_frame_stop(monkeypatch):
    """--init fast starts from the network's painting, stylized at every scale: like a warm start it runs
    at full size only (a coarser level's hand-over would lose the painting's fine detail), but it is no
    nearer its optimum than a cold start, so it keeps the reference's early stop."""
    from engine_server import pipeline
    from engine_server.optimize.schedule import BUDGET, Level

    seen = []
    real = pipeline.optimize_levels

    def recording(init, levels, objective_at, vgg, settings, *rest):
        seen.append((levels, settings.tolerance_interval, settings.remaining_tolerance))
        return real(init, levels, objective_at, vgg, settings, *rest)

    monkeypatch.setattr(pipeline, "optimize_levels", recording)
    clip = moving_clip(1)
    size = (clip[0].shape[1], clip[0].shape[0])
    for init in ("fast", "content"):
        list(Stylizer([style_image()], StylizeOptions(mode="per-frame", init=init, first_iterations=20,
                                                      coarsest_side=16, device="cpu")).run(clip))
    painted, content = seen
    assert painted == ([Level(size, math.ceil(BUDGET * 20))], 50, None)
    assert len(content[0]) > 1 and content[0][-1].size == size and content[1:] == (50, None)


def test_a_warm_frame_pays_a_first_frames_share_for_the_pixels_the_flow_could_not_carry(monkeypatch):
    """Fast motion: the pixels new to the shot get their share of the first frame's budget (with the later
    count alone such frames ended 10-16 % less stylized than on their own); the reference keeps its count."""
    from engine_server import pipeline
    from engine_server.motion.flow import make_flow
    from engine_server.motion.temporal import pair_flow
    from engine_server.optimize.schedule import BUDGET, Level

    seen = []
    real = pipeline.optimize_levels

    def recording(init, levels, *rest):
        seen.append(levels)
        return real(init, levels, *rest)

    monkeypatch.setattr(pipeline, "optimize_levels", recording)
    clip = moving_clip(2, w=48, h=40)
    clip[1] = clip[1].copy()
    clip[1][:, :16] = clip[1][::-1, :16]  # a third of the frame with no match in the previous one
    untrusted = pair_flow(make_flow("dis"), clip[0], clip[1]).untrusted_share
    assert 0.2 < untrusted < 0.8
    for name in ("pyramid", "reference"):
        list(Stylizer([style_image()], StylizeOptions(mode="temporal", first_iterations=60, iterations=20,
                                                      schedule=name, coarsest_side=16, early_stop=False,
                                                      device="cpu")).run(clip))
    later = 20 + round(untrusted * 40)
    assert seen[1] == [Level((48, 40), math.ceil(BUDGET * later))] and later > 20 + 8
    assert seen[3] == [Level((48, 40), 20)]


def test_long_term_distances_without_the_previous_frame(monkeypatch):
    """--long-term 2 alone: frame 2 has no earlier frame to be held to (it used to fail reading the missing
    pair), frame 3 is held to frame 1. Every later frame still starts from the previous output and is
    tested for a cut, as the reference warm-starts from frame t-1 whatever J is (they used to start cold
    on a later frame's budget, with no cut test)."""
    from engine_server import pipeline

    starts, tests = [], []
    monkeypatch.setattr(pipeline.temporal, "initialization",
                        lambda *a, real=pipeline.temporal.initialization: starts.append(1) or real(*a))
    monkeypatch.setattr(pipeline.cuts, "detect_cut",
                        lambda *a, real=pipeline.cuts.detect_cut: tests.append(1) or real(*a))
    results = list(stylize(moving_clip(3), [style_image()], long_term=(2,), **FAST))
    assert [r.index for r in results] == [1, 2, 3]
    assert results[1].losses["temporal"] == 0 and results[2].losses["temporal"] > 0
    assert len(starts) == 2 and len(tests) == 2


def test_warm_start_window_stops_a_converged_frame_early():
    """From an image at its optimum, the warm-start window stops after one window, not 50 iterations."""
    from engine_server.optimize.objective import LossWeights, Objective
    from engine_server.optimize.optimizer import OptimizerSettings, optimize_frame
    from engine_server.pipeline import WARM_STOP_WINDOW
    from engine_server.style.targets import image_tensor
    from engine_server.style.vgg import CONTENT_LAYERS, load_vgg19

    net = load_vgg19("cpu")
    content = image_tensor(moving_clip(1)[0], "cpu")
    with torch.no_grad():
        still = Objective(net(content, CONTENT_LAYERS), {}, 0.0, LossWeights(tv=0.0))
    reference = optimize_frame(content, still, net, OptimizerSettings(200))
    warm = optimize_frame(content, still, net, OptimizerSettings(200, tolerance_interval=WARM_STOP_WINDOW,
                                                                 tolerance=1e-4 * WARM_STOP_WINDOW / 50))
    assert reference.iterations == 51 and warm.iterations == WARM_STOP_WINDOW + 1


def test_running_out_of_memory_says_what_to_change(monkeypatch):
    """Issue 12.4: a 12-megapixel strip failed with a raw allocator message."""
    from engine_server import OutOfMemory
    from engine_server.pipeline import _Run

    def allocation_fails(self):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3072151040 bytes")
        yield  # a generator, like the real one

    monkeypatch.setattr(_Run, "single_pass", allocation_fails)
    stylizer = Stylizer([style_image()], StylizeOptions(mode="per-frame", iterations=1, first_iterations=1))
    with pytest.raises(OutOfMemory) as failure:
        list(stylizer.run(moving_clip(2)))
    assert "ran out of memory stylizing 40x32 frames" in str(failure.value) and "20 px" in str(failure.value)
    assert "allocate" not in str(failure.value)

    def another_bug(self):
        raise RuntimeError("shapes do not match")
        yield

    monkeypatch.setattr(_Run, "single_pass", another_bug)
    with pytest.raises(RuntimeError, match="shapes do not match"):  # anything else passes through as it was
        list(stylizer.run(moving_clip(2)))
