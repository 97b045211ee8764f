"""Coarse-to-fine schedule: level sizes, iteration budget, residual upsampling, per-level targets, and
the quality contract on a tiny real frame."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import shared_path
from engine_server import StylizeOptions, Stylizer
from engine_server.io.frames import read_image
from engine_server.optimize import schedule
from engine_server.optimize.objective import LossWeights, Objective
from engine_server.optimize.optimizer import OptimizerSettings, optimize_levels
from engine_server.style.targets import image_tensor
from engine_server.style.vgg import CONTENT_LAYERS, load_vgg19


@pytest.mark.parametrize("size,expected", [
    ((1280, 720), [(320, 180), (640, 360), (1280, 720)]),
    ((1920, 1080), [(240, 135), (480, 270), (960, 540), (1920, 1080)]),
    ((384, 164), [(192, 82), (384, 164)]),
    ((720, 1280), [(180, 320), (360, 640), (720, 1280)]),  # portrait: the short side decides
    ((200, 100), [(200, 100)]),                           # too small to coarsen
])
def test_pyramid_sizes(size, expected):
    assert schedule.pyramid_sizes(size) == expected


def test_coarsest_level_stays_between_64_and_255_px_on_the_short_side():
    for short in (130, 200, 300, 480, 720, 1080, 1440, 2160):
        sizes = schedule.pyramid_sizes((short * 16 // 9, short))
        assert sizes[-1] == (short * 16 // 9, short)
        if len(sizes) > 1:
            assert 64 <= min(sizes[0]) <= 255, (short, sizes)


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080), (384, 164)])
@pytest.mark.parametrize("iterations", [100, 1000, 2000])
def test_plan_spends_most_iterations_coarse_within_budget(size, iterations):
    levels = schedule.plan("pyramid", size, iterations)
    assert levels[-1].size == size and len(levels) >= 2
    assert levels[0].iterations > levels[-1].iterations  # most iterations on the cheap levels
    assert schedule.cost(levels) <= (schedule.BUDGET + 0.01) * iterations
    assert schedule.cost(levels) >= 0.15 * iterations


@pytest.mark.parametrize("size", [(1280, 720), (384, 164)])
def test_warm_starts_spend_the_budget_at_full_size(size):
    """A later frame of a shot starts stylized at every scale: one full-size level, the same budget."""
    cold = schedule.plan("pyramid", size, 1000)
    warm = schedule.plan("pyramid", size, 1000, stylized=True)
    assert warm == [schedule.Level(size, 220)]
    assert schedule.cost(warm) == pytest.approx(schedule.BUDGET * 1000)
    assert schedule.cost(warm) >= schedule.cost(cold)
    assert schedule.plan("reference", size, 1000, stylized=True) == [schedule.Level(size, 1000)]


def test_remaining_gain_extrapolates_a_geometric_descent():
    from engine_server.optimize.optimizer import remaining_gain

    floor, window = 100.0, 10
    losses = [floor + 50.0 * 0.95 ** k for k in range(45)]  # gains shrink by 0.95^10 = 0.6 per window
    assert remaining_gain(losses, window) == pytest.approx(losses[-1] - floor, rel=1e-9)
    fast = [floor + 50.0 * 0.5 ** k for k in range(21)]     # by 0.001 per window: taken as 1/2
    assert remaining_gain(fast, window) == pytest.approx(fast[-11] - fast[-1])
    assert remaining_gain(losses[:2 * window], window) == float("inf")       # two windows needed
    assert remaining_gain([100.0 - k for k in range(30)], window) == float("inf")  # not slowing down
    assert remaining_gain([100.0] * 30, window) == float("inf")  # flat: the rate test's case, not this one
    uphill = losses[:22] + [losses[12] + 5.0]  # the last window went up: go on, do not keep the worse image
    assert remaining_gain(uphill, window) == float("inf")


def test_warm_starts_stop_on_the_gain_still_to_come():
    """A geometric descent whose per-window change is still far above the rate test's threshold stops
    once less than the tolerance is left to gain; without the tolerance (first frames) it goes on."""
    from engine_server.optimize.optimizer import OptimizerSettings, _converged

    losses = [1000.0 + 500.0 * 0.95 ** k for k in range(160)]  # gains shrink by 0.6 per 10 iterations
    warm = OptimizerSettings(100, tolerance_interval=10, tolerance=2e-5, remaining_tolerance=1e-3)
    cold = OptimizerSettings(100, tolerance_interval=10, tolerance=2e-5)
    stop = next(n for n in range(21, 161) if _converged(losses[:n], warm))
    left = losses[stop - 1] - 1000.0
    assert left <= 1e-3 * losses[stop - 1] < (losses[stop - 2] - 1000.0)    # the first point with <= 0.1 % left
    assert (losses[stop - 11] - losses[stop - 1]) > 2e-5 * losses[stop - 1]  # the rate test alone would go on
    assert not any(_converged(losses[:n], cold) for n in range(21, stop + 1))
    rising = losses[:30] + [losses[19] + 50.0]
    assert not _converged(rising, warm)


def test_warm_frames_add_a_first_frames_share_for_what_changed():
    assert schedule.warm_iterations("pyramid", 1000, 2000, 0.0) == 1000
    assert schedule.warm_iterations("pyramid", 1000, 2000, 0.25) == 1250
    assert schedule.warm_iterations("pyramid", 1000, 2000, 1.2) == 2000
    assert schedule.warm_iterations("pyramid", 1000, 500, 0.5) == 1000  # never fewer than the later count
    assert schedule.warm_iterations("reference", 1000, 2000, 0.5) == 1000  # the paper's fixed count


def test_reference_schedule_is_flat():
    assert schedule.plan("reference", (1280, 720), 1000) == [schedule.Level((1280, 720), 1000)]
    with pytest.raises(ValueError):
        schedule.plan("bogus", (64, 64), 10)


def test_levels_keep_the_start_images_detail():
    """Coarse levels pass up only the change they made: an image already at its optimum (content loss
    against itself) comes back unchanged, fine detail included; plain upsampling would blur it."""
    net = load_vgg19("cpu")
    rng = np.random.default_rng(1)
    image = image_tensor(rng.integers(0, 255, (64, 96, 3)).astype(np.uint8), "cpu")
    seen = []

    def objective_at(size):
        seen.append(size)
        content = schedule.resize(image, size)
        with torch.no_grad():
            feats = net(content, CONTENT_LAYERS)
        return Objective(feats, {}, 0.0, LossWeights(tv=0.0))

    levels = schedule.plan("pyramid", (96, 64), 20, coarsest=16)
    out = optimize_levels(image, levels, objective_at, net, OptimizerSettings(20))
    assert seen == [level.size for level in levels] and len(seen) == 3
    assert [lv["size"] for lv in out.levels] == [list(level.size) for level in levels]
    assert (out.image - image).abs().max() < 0.5
    blurred = schedule.resize(schedule.resize(image, (48, 32)), (96, 64))
    assert (blurred - image).abs().mean() > 10  # the detail a plain upsampling would have lost


def test_stylizer_runs_the_levels_and_reports_them():
    rng = np.random.default_rng(2)
    frame = np.asarray(rng.integers(40, 220, (64, 96, 3)), np.uint8)
    style = np.zeros((48, 48, 3), np.uint8)
    style[::4] = (250, 180, 20)
    options = StylizeOptions(mode="per-frame", first_iterations=30, coarsest_side=16, device="cpu", init="content")
    stylizer = Stylizer([style], options)
    (result,) = list(stylizer.run([frame]))
    expected = schedule.plan("pyramid", (96, 64), 30, coarsest=16)
    assert result.schedule == "pyramid"
    assert [lv["size"] for lv in result.levels] == [list(level.size) for level in expected]
    assert all(0 < lv["iterations"] <= level.iterations for lv, level in zip(result.levels, expected))
    assert result.iterations == sum(lv["iterations"] for lv in result.levels)
    assert result.image.shape == (64, 96, 3)
    flat = Stylizer([style], StylizeOptions(mode="per-frame", first_iterations=30, schedule="reference",
                                            device="cpu"))
    (reference,) = list(flat.run([frame]))
    assert reference.levels == [{"size": [96, 64], "iterations": reference.iterations}]


def test_measured_costs_price_small_levels_by_their_time():
    """On a GPU small levels cost more than their pixel share: the plan uses measured seconds, rounded so
    that timing noise does not change it, and still spends at most the budget."""
    from engine_server.optimize import schedule

    calls = []

    def seconds(size):  # a fixed overhead per iteration plus a part proportional to the pixels
        calls.append(size)
        return 0.002 + 1e-8 * size[0] * size[1]

    cost_of = schedule.measured_cost(seconds)
    size = (1280, 720)
    measured = schedule.plan("pyramid", size, 1000, cost_of=cost_of)
    by_pixels = schedule.plan("pyramid", size, 1000)
    assert [level.size for level in measured] == [level.size for level in by_pixels]
    assert measured[0].iterations < by_pixels[0].iterations  # the coarsest level is dearer than its pixels
    assert measured[-1] == by_pixels[-1]
    assert schedule.cost(measured, cost_of) <= schedule.BUDGET * 1000 * 1.02
    assert len(calls) == len(set(calls)) == len(measured)  # each size timed once
    assert cost_of((320, 180), size) == round(20 * seconds((320, 180)) / seconds(size)) / 20


def test_the_default_reaches_the_flat_runs_loss_with_a_quarter_of_its_work():
    """Issue 8's contract: `--first-iterations N` names the loss a flat full-size run of N iterations from
    the content reaches; the defaults (pyramid, painted start) must come close with at most a quarter of
    its work. On a frame this small and N = 100 the flat run is still descending fast, so the bound is
    15 % (the 5 % goal holds from N = 300: README, Instant modes); the content start's pyramid ends at
    1.66x here, so this fails without the painted start."""
    frame = read_image(shared_path("flow", "sintel_alley_1", "frame_0001.png"))
    style = read_image(shared_path("styles", "starry_night.jpg"))
    n = 100
    # coarsest_side 20: a pyramid at 192x82, as frames of production size have
    defaults = StylizeOptions(mode="per-frame", first_iterations=n, width=192, coarsest_side=20, early_stop=False,
                              device="cpu")
    (fast,) = list(Stylizer([style], defaults).run([frame]))
    (flat,) = list(Stylizer([style], replace(defaults, schedule="reference", init="content")).run([frame]))
    assert defaults.init == "fast" and defaults.schedule == "pyramid"
    assert flat.levels == [{"size": [192, 82], "iterations": n}]
    work = schedule.cost([schedule.Level(tuple(lv["size"]), lv["iterations"]) for lv in fast.levels])
    assert work <= 0.25 * n, fast.levels
    assert fast.losses["total"] <= 1.15 * flat.losses["total"], (fast.losses, flat.losses)
