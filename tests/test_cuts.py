"""Scene cuts: detected on real footage, and the frame after one carries nothing of the shot before."""
import glob

import numpy as np
import pytest

from engine_server import StylizeOptions, Stylizer
from engine_server.io.frames import open_frames, read_image, resize
from engine_server.motion.cuts import detect_cut
from engine_server.motion.flow import DISFlow
from engine_server.motion.temporal import pair_flow

WIDTH, HEIGHT = 96, 54


@pytest.fixture(scope="module")
def shots(request):
    from conftest import shared_path

    sintel_dir = shared_path("flow", "sintel_alley_1")
    sintel = [resize(read_image(f, "frame"), (WIDTH, HEIGHT)) for f in sorted(glob.glob(str(sintel_dir / "frame_*.png")))]
    bunny = open_frames(str(shared_path("video", "big_buck_bunny.mp4")), WIDTH)
    bunny = [resize(bunny[i], (WIDTH, HEIGHT)) for i in range(3)]
    return sintel[:3], bunny


def cut_between(a, b):
    pair = pair_flow(DISFlow(), a, b)
    return detect_cut(a, b, pair.b_to_a, pair.certainty_on_b)


def test_cut_detected_between_shots_not_within(shots):
    sintel, bunny = shots
    within = [cut_between(s[i], s[i + 1]) for s in (sintel, bunny) for i in range(len(s) - 1)]
    assert not any(test.is_cut for test in within), within
    across = [cut_between(sintel[-1], bunny[0]), cut_between(bunny[0], sintel[0])]
    assert all(test.is_cut for test in across), across


def test_frame_after_a_cut_starts_afresh(shots):
    sintel, bunny = shots
    style = np.zeros((48, 48, 3), np.uint8)
    style[::4] = (250, 180, 20)
    style[:, ::6] = (20, 60, 200)
    options = dict(mode="temporal", first_iterations=5, iterations=2, device="cpu", long_term=(1, 2))
    joined = list(Stylizer([style], StylizeOptions(**options)).run(sintel + bunny))
    alone = list(Stylizer([style], StylizeOptions(**options)).run(bunny))
    assert [r.cut for r in joined] == [False, False, False, True, False, False]
    after_cut = joined[3]
    assert after_cut.losses["temporal"] == 0  # no constraint reaches across the cut (not even j = 2)
    assert after_cut.iterations == alone[0].iterations  # first-frame budget
    # exactly what the second shot gives on its own: nothing of the first shot was carried over
    assert np.abs(after_cut.image.astype(int) - alone[0].image.astype(int)).max() <= 1
    assert joined[4].losses["temporal"] > 0  # and the new shot's own chain starts again
