"""Scene cuts: detected on real footage, and the frame after one carries nothing of the shot before."""
import glob

import cv2
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


def grey(frame):
    return np.repeat(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def test_cuts_in_black_and_white_footage_and_to_and_from_black_are_found(shots):
    """Hue and saturation see every grey pixel alike: the brightness histogram has to tell these apart."""
    sintel, bunny = shots
    within = [cut_between(grey(s[i]), grey(s[i + 1])) for s in (sintel, bunny) for i in range(len(s) - 1)]
    assert not any(test.is_cut for test in within), within
    black = np.zeros_like(bunny[0])
    across = [cut_between(grey(sintel[-1]), grey(bunny[0])), cut_between(grey(bunny[0]), black),
              cut_between(black, grey(sintel[0])), cut_between(np.full_like(black, 30), grey(bunny[0]))]
    assert all(test.is_cut for test in across), across


def test_a_fade_to_black_is_not_a_cut(shots):
    _, bunny = shots
    to_and_fro = bunny + bunny[::-1] + bunny  # the fixture's three frames, as a camera moving back and forth
    fade = [(frame * (1 - step / 8)).astype(np.uint8) for step, frame in enumerate(to_and_fro)]  # 9 frames to 0
    tests = [cut_between(fade[i], fade[i + 1]) for i in range(len(fade) - 2)]  # the last step is to black
    assert not any(test.is_cut for test in tests), tests


def _count_calls(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def test_a_resumed_run_still_sees_a_cut_among_the_frames_it_carries_on_from(shots, monkeypatch):
    """Two frames of one shot, three of another; frames 1-4 were finished before the run stopped. Frame 5's
    long-term partner 4 frames back (frame 1) is across the cut: it must not hold frame 5."""
    from engine_server import pipeline

    sintel, bunny = shots
    frames = sintel[:2] + bunny
    done = {i + 1: frame for i, frame in enumerate(frames[:4])}  # the earlier run's images: any will do
    held = []
    _count_calls(monkeypatch, pipeline.temporal, "constraints", held)
    options = StylizeOptions(mode="temporal", first_iterations=2, iterations=1, device="cpu", long_term=(1, 2, 4))
    (last,) = list(Stylizer([bunny[0]], options).run(frames, done=done))
    assert last.index == 5 and not last.cut
    assert [len(pairs) for pairs, _device in held] == [2]  # frames 4 and 3, not frame 1


def test_multipass_carries_nothing_across_a_cut(shots, monkeypatch):
    from engine_server import pipeline

    sintel, bunny = shots
    carried = []
    _count_calls(monkeypatch, pipeline.temporal, "warped_onto", carried)
    options = StylizeOptions(mode="multipass", passes=3, iterations=1, device="cpu")
    results = list(Stylizer([bunny[0]], options).run(sintel[:2] + bunny[:2]))
    assert [r.cut for r in sorted(results, key=lambda r: r.index)] == [False, False, True, False]
    # pass 2 (backward) and pass 3 (forward) each carry a result along the two pairs within the shots
    assert len(carried) == 4
