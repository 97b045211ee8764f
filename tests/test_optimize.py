"""The per-frame optimizer: loss goes down, cancel works, early stop triggers."""
import numpy as np
import pytest
import torch

from engine_server.errors import Cancelled
from engine_server.optimize.objective import LossWeights, Objective
from engine_server.optimize.optimizer import OptimizerSettings, optimize_frame
from engine_server.style.targets import StyleTargets, image_tensor
from engine_server.style.vgg import CONTENT_LAYERS, load_vgg19


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = load_vgg19("cpu")
    rng = np.random.default_rng(0)
    content = image_tensor(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8), "cpu")
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[::4] = (255, 200, 0)
    targets = StyleTargets([stripes], net, (32, 32), "cpu")
    with torch.no_grad():
        feats = net(content, CONTENT_LAYERS)
    grams, strength = targets.blend(np.array([1.0]))
    return net, content, Objective(feats, grams, strength, LossWeights())


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_loss_decreases(setup, method):
    net, content, objective = setup
    seen = []
    out = optimize_frame(content, objective, net, OptimizerSettings(8, method), lambda i, l: seen.append(l))
    assert len(seen) == 8 and out.iterations == 8
    assert out.losses["total"] < seen[0]
    assert out.image.min() >= 0 and out.image.max() <= 255


def test_cancel_between_iterations(setup):
    net, content, objective = setup
    calls = []
    with pytest.raises(Cancelled):
        optimize_frame(content, objective, net, OptimizerSettings(50), lambda i, l: calls.append(i),
                       should_stop=lambda: len(calls) >= 3)
    assert calls == [1, 2, 3]


def test_early_stop_when_loss_stalls(setup):
    net, content, _ = setup
    with torch.no_grad():
        feats = net(content, CONTENT_LAYERS)
    # pure content reconstruction from the content itself: already at the optimum, loss cannot change
    still = Objective(feats, {}, 0.0, LossWeights(tv=0.0))
    out = optimize_frame(content, still, net, OptimizerSettings(500, tolerance_interval=5))
    assert out.iterations == 6  # the first check possible: 5 + 1 evaluations


def test_the_noise_start_is_the_references_a_trace_of_noise_around_the_networks_mean_pixel(setup):
    # The reference draws randn * 0.001 in the network's input space (mean pixel subtracted).
    net, content, _ = setup
    torch.manual_seed(1)
    start = net.noise_like(torch.zeros(1, 3, 96, 96))
    seen = net.normalize(start)
    assert seen.shape == (1, 3, 96, 96)
    assert seen.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert abs(float(seen.std()) - 0.001) < 1e-4
    # in pixel units: the mean pixel, not mid-grey
    assert torch.allclose(start.mean(dim=(0, 2, 3)), net.offset.flatten(), atol=0.05)
