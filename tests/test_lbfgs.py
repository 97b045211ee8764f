"""The device-resident L-BFGS takes the same iterates as torch.optim.LBFGS in the reference's setting."""
import copy

import numpy as np
import pytest
import torch

from engine_server.optimize.lbfgs import LBFGS
from engine_server.optimize.objective import LossWeights, Objective
from engine_server.optimize.optimizer import OptimizerSettings, optimize_frame
from engine_server.style.targets import StyleTargets, image_tensor
from engine_server.style.vgg import CONTENT_LAYERS, load_vgg19


def torch_iterates(loss_fn, x0, steps, history):
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=history, tolerance_grad=0.0, tolerance_change=0.0)

    def closure():
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(x.detach().clone())
    return out


def our_iterates(loss_fn, x0, steps, history):
    x = x0.clone().requires_grad_(True)
    opt = LBFGS(x.numel(), history, dtype=x.dtype)
    out = []
    for _ in range(steps):
        (grad,) = torch.autograd.grad(loss_fn(x), x)
        opt.step(x.data, grad)
        out.append(x.detach().clone())
    return out, opt


def quadratic(n, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = q @ q.T / n + 0.05 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return lambda x: 0.5 * x @ a @ x - b @ x


def nonconvex(n, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, generator=g, dtype=torch.float64) * 2
    return lambda x: torch.log1p((x - c) ** 2).sum() + 0.05 * (x ** 2).sum() + 0.3 * torch.sin(x).sum()


def stripes_problem(net, size, seed, device="cpu"):
    """(content, objective): a random frame of size x size against a striped painting, in ``net``'s dtype."""
    dtype = next(net.parameters()).dtype
    rng = np.random.default_rng(seed)
    content = image_tensor(rng.integers(0, 255, (size, size, 3)).astype(np.uint8), device).to(dtype)
    stripes = np.zeros((size, size, 3), np.uint8)
    stripes[::4] = (255, 200, 0)
    grams, strength = StyleTargets([stripes], net, (size, size), device).blend(np.array([1.0]))
    with torch.no_grad():
        feats = net(content, CONTENT_LAYERS)
    return content, Objective(feats, grams, strength, LossWeights())


@pytest.mark.parametrize("problem,history,steps", [(quadratic, 5, 40), (quadratic, 100, 25), (nonconvex, 4, 40)])
def test_same_iterates_as_torch_lbfgs(problem, history, steps):
    loss_fn = problem(30, 1)
    x0 = torch.linspace(-1, 1, 30, dtype=torch.float64)
    expected = torch_iterates(loss_fn, x0, steps, history)
    got, opt = our_iterates(loss_fn, x0, steps, history)
    for i, (e, o) in enumerate(zip(expected, got)):
        assert torch.allclose(o, e, rtol=1e-7, atol=1e-9), f"iterate {i + 1} differs by {(o - e).abs().max()}"
    assert loss_fn(got[-1]) < loss_fn(x0)
    if history < steps:
        assert int(opt.count) > history  # the ring wrapped: eviction was exercised
    assert not bool(opt.stalled)


def test_rejected_curvature_pairs_are_skipped_like_torch():
    # A concave stretch makes y.s <= 0 on some steps: torch drops those pairs, and so must we.
    loss_fn = lambda x: -torch.cos(x).sum() + 0.01 * (x ** 4).sum()  # noqa: E731
    x0 = torch.full((6,), 2.5, dtype=torch.float64)
    expected = torch_iterates(loss_fn, x0, 20, 10)
    got, opt = our_iterates(loss_fn, x0, 20, 10)
    assert int(opt.count) < 19  # some pairs were rejected
    for e, o in zip(expected, got):
        assert torch.allclose(o, e, rtol=1e-7, atol=1e-9)


def test_a_direction_that_is_not_downhill_stops_the_point():
    loss_fn = quadratic(10, 2)
    x0 = torch.zeros(10, dtype=torch.float64)
    got, opt = our_iterates(loss_fn, x0, 3, 5)
    opt._inverse_hessian_times = lambda g, s_g, y_g: -g  # a broken curvature model: the direction points uphill
    x = got[-1].clone()
    (grad,) = torch.autograd.grad(loss_fn(x.requires_grad_(True)), x)
    before = x.detach().clone()
    opt.step(x.data, grad)
    assert bool(opt.stalled)
    assert torch.equal(x.detach(), before)


def test_optimize_frame_stops_when_stalled(monkeypatch):
    net = load_vgg19("cpu")
    content = image_tensor(np.random.default_rng(3).integers(0, 255, (24, 24, 3)).astype(np.uint8), "cpu")
    with torch.no_grad():
        feats = net(content, CONTENT_LAYERS)
    objective = Objective(feats, {}, 0.0, LossWeights())
    original = LBFGS.step

    def step_then_stall(self, x, grad):
        original(self, x, grad)
        if self.iteration == 4:
            self.stalled.fill_(True)

    monkeypatch.setattr(LBFGS, "step", step_then_stall)
    out = optimize_frame(content + 10.0, objective, net, OptimizerSettings(50, early_stop=False))
    assert out.iterations == 4


def test_vgg_objective_matches_torch_lbfgs():
    """The engine's real objective: the old optimizer (torch's LBFGS) and ours take the same iterates.

    In float64: unit-step L-BFGS on this objective is chaotic in its first steps (torch's own float32 and
    float64 runs part by tens of pixel values within 8 iterations), so float32 cannot tell a bug from
    round-off."""
    net = copy.deepcopy(load_vgg19("cpu")).double()
    content, objective = stripes_problem(net, 32, 0)
    loss_fn = lambda x: objective.terms(x, net)["total"]  # noqa: E731
    expected = torch_iterates(loss_fn, content, 10, 100)
    got = our_iterates(loss_fn, content, 10, 100)[0]
    for e, o in zip(expected, got):
        assert (o - e).abs().max() < 1e-6 * 255
    assert loss_fn(got[-1]) < loss_fn(content)


def test_max_step_bounds_every_move_and_still_converges():
    """The reference's unit step throws the VGG objective's pixels far out of range on its second
    iteration; with max_step no element moves more than the bound, and L-BFGS still converges."""
    net = copy.deepcopy(load_vgg19("cpu")).double()
    content, objective = stripes_problem(net, 32, 0)
    loss_fn = lambda x: objective.terms(x, net)["total"]  # noqa: E731
    unbounded = our_iterates(loss_fn, content, 3, 100)[0]
    assert float((unbounded[1] - unbounded[0]).abs().max()) > 1000  # the excursion the bound prevents

    x = content.clone().requires_grad_(True)
    opt = LBFGS(x.numel(), 100, dtype=x.dtype, max_step=16.0)
    before, losses = x.detach().clone(), []
    for _ in range(30):
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss, x)
        losses.append(float(loss.detach()))
        opt.step(x.data.view(-1), grad)
        assert float((x.detach() - before).abs().max()) <= 16.0 + 1e-9
        before = x.detach().clone()
    assert max(losses) <= losses[0] * 1.5 and losses[-1] < 0.5 * losses[0]


def test_state_is_updated_in_place_so_an_iteration_can_be_replayed():
    """A CUDA graph replays reads and writes at the addresses it recorded: from the second iteration on,
    no piece of L-BFGS state may be replaced by a new tensor, even when the ring of pairs wraps."""
    loss_fn = nonconvex(30, 2)
    x = torch.linspace(-1, 1, 30, dtype=torch.float64).requires_grad_(True)
    opt = LBFGS(x.numel(), 4, dtype=x.dtype)

    def addresses():
        return {name: value.data_ptr() for name, value in vars(opt).items() if isinstance(value, torch.Tensor)}

    first = addresses()
    assert {"S", "Y", "SY", "YY", "stamp", "count", "gamma", "stalled", "_prev_grad", "_step"} <= first.keys()
    for _ in range(14):
        (grad,) = torch.autograd.grad(loss_fn(x), x)
        opt.step(x.data, grad)
        assert addresses() == first
    assert int(opt.count) > 4  # the ring of 4 wrapped


def _stand_in_cuda(monkeypatch, graph_class):
    """CUDA's stream, device and graph calls stood in for, so the graphed iteration's control flow runs on
    the CPU; ``graph_class`` replaces torch.cuda.CUDAGraph."""
    import contextlib

    from engine_server.optimize import iteration as iteration_module

    class Stream:
        def __init__(self, *args, **kwargs):
            pass

        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", graph_class)
    monkeypatch.setattr(iteration_module, "_FAILED_DEVICES", set())
    return iteration_module


def _small_style_problem(seed):
    net = load_vgg19("cpu")
    return (net, *stripes_problem(net, 24, seed))


def _run_iterations(kind, net, content, objective, steps):
    image = content.clone().requires_grad_(True)
    lbfgs = LBFGS(image.numel(), 10, image.device, max_step=64.0)
    iteration = kind(image, objective, net, lbfgs=lbfgs)
    losses = [float(iteration.step()) for _ in range(steps)]
    return image.detach(), losses, iteration, lbfgs


def test_iterations_fall_back_to_eager_when_recording_fails(monkeypatch, caplog):
    """A recording that fails half-way (its Python side ran, its kernels did not) leaves the frame going
    on eagerly with the same iterates and iteration count, says so once, and is not tried again."""
    capturing = {"on": False, "recordings": 0}

    class Recording:
        def capture_begin(self, **options):
            capturing["on"], capturing["recordings"] = True, capturing["recordings"] + 1

        def capture_end(self):
            capturing["on"] = False

    original = LBFGS.step

    def step(self, x, grad):
        if capturing["on"]:
            self.iteration += 1
            raise RuntimeError("operation not permitted when stream is capturing")
        original(self, x, grad)

    iteration_module = _stand_in_cuda(monkeypatch, Recording)
    monkeypatch.setattr(LBFGS, "step", step)
    net, content, objective = _small_style_problem(5)
    steps = iteration_module.WARMUP + 4
    eager_image, eager_losses, _, eager_lbfgs = _run_iterations(iteration_module.Iteration, net, content,
                                                                objective, steps)
    with caplog.at_level("WARNING"):
        image, losses, graphed, lbfgs = _run_iterations(iteration_module.GraphedIteration, net, content,
                                                        objective, steps)
        again = _run_iterations(iteration_module.GraphedIteration, net, content, objective, steps)
    assert graphed.eager_only and graphed.graph is None
    assert caplog.text.count("CUDA graph recording failed") == 1 and capturing["recordings"] == 1
    assert lbfgs.iteration == eager_lbfgs.iteration == steps
    assert losses == eager_losses and again[1] == eager_losses
    assert torch.equal(image, eager_image)
    assert eager_losses[-1] < eager_losses[0]


def test_a_recording_that_came_out_empty_counts_as_an_eager_iteration(monkeypatch, caplog):
    """When the kernels went to a stream that was not recording (PyTorch only warns that the graph is
    empty), the iteration ran eagerly: it counts once, and the rest stay eager."""
    import warnings

    class EmptyRecording:
        def capture_begin(self, **options):
            pass

        def capture_end(self):
            warnings.warn("The CUDA Graph is empty. This usually means that the graph was attempted to be "
                          "captured on wrong device or stream.")

    iteration_module = _stand_in_cuda(monkeypatch, EmptyRecording)
    net, content, objective = _small_style_problem(7)
    steps = iteration_module.WARMUP + 3
    eager_image, eager_losses, _, _ = _run_iterations(iteration_module.Iteration, net, content, objective, steps)
    with caplog.at_level("WARNING"):
        image, losses, graphed, lbfgs = _run_iterations(iteration_module.GraphedIteration, net, content,
                                                        objective, steps)
    assert graphed.graph is None and graphed.eager_only and "is empty" in caplog.text
    assert lbfgs.iteration == steps
    assert losses == eager_losses and torch.equal(image, eager_image)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
def test_graphed_iterations_match_eager_ones_on_cuda():
    from engine_server.optimize.iteration import WARMUP, GraphedIteration, Iteration

    net = copy.deepcopy(load_vgg19("cpu")).cuda()
    content, objective = stripes_problem(net, 64, 9, "cuda")
    steps = WARMUP + 20
    eager = _run_iterations(Iteration, net, content, objective, steps)
    graphed = _run_iterations(GraphedIteration, net, content, objective, steps)
    assert graphed[2].graph is not None
    assert graphed[3].iteration == eager[3].iteration == steps
    assert len(set(graphed[1][WARMUP:])) > 10  # the replays move the image
    assert np.allclose(graphed[1], eager[1], rtol=1e-3)
    assert float((graphed[0] - eager[0]).abs().max()) < 1.0


def test_cuda_graphs_are_ignored_where_they_cannot_run():
    """Asked for on the CPU or with Adam, graphs are not used, and the frame is optimized as without."""
    from engine_server.optimize.iteration import Iteration, make_iteration

    net, content, objective = _small_style_problem(6)
    image = content.clone().requires_grad_(True)
    assert type(make_iteration(image, objective, net, LBFGS(image.numel(), 5), cuda_graphs=True)) is Iteration
    adam = torch.optim.Adam([image], lr=1.0)
    assert type(make_iteration(image, objective, net, adam=adam, cuda_graphs=True)) is Iteration
    plain = optimize_frame(content + 10.0, objective, net, OptimizerSettings(6, early_stop=False))
    asked = optimize_frame(content + 10.0, objective, net, OptimizerSettings(6, early_stop=False, cuda_graphs=True))
    assert torch.equal(plain.image, asked.image) and plain.iterations == asked.iterations == 6
