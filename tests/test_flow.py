import os

import cv2
import numpy as np
import pytest
import torch

from conftest import shared_path
from engine_server.motion.flow import (
    DISFlow,
    FarnebackFlow,
    FlowBackendUnavailable,
    RAFTFlow,
    make_flow,
)
from engine_server.io.flowfiles import read_flo


def load_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def epe(flow, gt):
    """Mean end-point error over pixels with known ground truth (unknown is flagged > 1e9)."""
    valid = np.all(np.abs(gt) < 1e9, axis=-1)
    return float(np.linalg.norm(flow - gt, axis=-1)[valid].mean())


@pytest.fixture(scope="module")
def shifted_pair():
    from skimage import data

    # A textured quarter of the astronaut image (the flat suit and black sky leave Farneback nothing
    # to match), shifted so that a(p) = b(p + (3, -2)).
    a = np.ascontiguousarray(data.astronaut()[256:, :256])
    b = np.roll(a, shift=(-2, 3), axis=(0, 1))
    return a, b


@pytest.mark.parametrize("estimator,bound", [(DISFlow(), 0.05), (FarnebackFlow(), 0.15)],
                         ids=["dis", "farneback"])
def test_recovers_known_translation(shifted_pair, estimator, bound):
    a, b = shifted_pair
    flow = estimator(a, b)
    assert flow.shape == a.shape[:2] + (2,) and flow.dtype == np.float32
    err = np.linalg.norm(flow - np.array([3.0, -2.0], np.float32), axis=-1)[16:-16, 16:-16]
    assert err.mean() < bound  # measured: DIS 0.0003, Farneback 0.036


def test_pair_returns_both_directions(shifted_pair):
    a, b = shifted_pair
    forward, backward = DISFlow().pair(a, b)
    inner = (slice(16, -16), slice(16, -16))
    np.testing.assert_allclose(np.median(forward[inner], axis=(0, 1)), [3.0, -2.0], atol=0.05)
    np.testing.assert_allclose(np.median(backward[inner], axis=(0, 1)), [-3.0, 2.0], atol=0.05)


# (frames, ground truth, DIS bound, Farneback bound). Measured EPE on 2 cores, OpenCV 4.11:
#   sintel alley_1 1->2: zero flow 2.803, DIS 0.212, Farneback 0.756
#   rubberwhale:         zero flow 1.256, DIS 0.116, Farneback 0.368
GROUND_TRUTH = {
    "sintel_alley_1": (("frame_0001.png", "frame_0002.png"), "flow_0001_to_0002.flo", 0.30, 1.0),
    "rubberwhale": (("RubberWhale1.png", "RubberWhale2.png"), "RubberWhale.flo", 0.18, 0.5),
}


@pytest.mark.parametrize("dataset", sorted(GROUND_TRUTH))
def test_end_point_error_against_ground_truth(dataset):
    (first, second), gt_name, dis_bound, farneback_bound = GROUND_TRUTH[dataset]
    a = load_rgb(shared_path("flow", dataset, first))
    b = load_rgb(shared_path("flow", dataset, second))
    gt = read_flo(shared_path("flow", dataset, gt_name))
    assert gt.shape[:2] == a.shape[:2]
    zero = epe(np.zeros_like(gt), gt)
    dis = epe(DISFlow()(a, b), gt)
    farneback = epe(FarnebackFlow()(a, b), gt)
    assert dis < dis_bound and dis < 0.15 * zero, (dis, zero)
    assert farneback < farneback_bound and farneback < 0.4 * zero, (farneback, zero)


@pytest.fixture
def empty_hub_dir(tmp_path):
    """Point the torch hub cache at an empty folder so the result cannot depend on this machine."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield tmp_path / "hub"
    finally:
        torch.hub.set_dir(old)


def test_raft_without_weights_is_unavailable(empty_hub_dir):
    with pytest.raises(FlowBackendUnavailable, match=r"raft_large_.*\.pth"):
        make_flow("raft")


def test_raft_runs_with_cached_weights(empty_hub_dir):
    """The loading and padding path, with randomly initialized weights put where the cache would be."""
    from torchvision.models.optical_flow import Raft_Large_Weights, raft_large

    checkpoints = empty_hub_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(raft_large(weights=None).state_dict(),
               checkpoints / os.path.basename(Raft_Large_Weights.DEFAULT.url))
    estimator = make_flow("raft", device="cpu", max_side=None)
    assert isinstance(estimator, RAFTFlow) and estimator.name == "raft"
    estimator.num_flow_updates = 2  # keep the test fast; the path is the same
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)  # neither a multiple of 8 nor >= 128 high
    b = np.roll(a, 2, axis=1)
    forward, backward = estimator.pair(a, b)
    for flow in (forward, backward, estimator(a, b)):
        assert flow.shape == (100, 130, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()


def test_make_flow_names():
    assert make_flow("dis").name == "dis"
    assert make_flow("farneback").name == "farneback"
    with pytest.raises(ValueError, match="dis.*farneback.*raft"):
        make_flow("lucas-kanade")


def test_rejects_bad_frames():
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError):
        DISFlow()(a, np.zeros((20, 21, 3), np.uint8))
    with pytest.raises(ValueError):
        DISFlow()(a.astype(np.float32), a)


def test_large_frames_get_their_flow_at_a_smaller_size():
    """Downscaled runs the estimator at max_side and gives back full-size flow in full-size pixels."""
    from engine_server.motion.flow import DISFlow, Downscaled

    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.integers(0, 256, (96, 200, 3), dtype=np.uint8), (0, 0), 2)
    a, b = base[:, 8:136], base[:, 0:128]  # b is a shifted 8 px to the right: a(p) = b(p + (8, 0))
    seen = []

    class Recording(DISFlow):
        def pair(self, x, y):
            seen.append(x.shape)
            return super().pair(x, y)

    forward, backward = Downscaled(Recording(), 64).pair(a, b)
    assert seen == [(48, 64, 3)]
    assert forward.shape == backward.shape == (96, 128, 2)
    inner = (slice(16, -16), slice(24, -24))
    assert abs(float(np.median(forward[inner][..., 0])) - 8) < 1.0
    assert abs(float(np.median(backward[inner][..., 0])) + 8) < 1.0
    assert make_flow("dis").pair(a, b)[0].shape == (96, 128, 2)  # small frames: estimated as they are
