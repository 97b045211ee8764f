"""Reading clips (video, folder, glob, arrays) and writing frames."""
import cv2
import numpy as np
import pytest

from engine_server.errors import InputError
from engine_server.io.frames import (finished_frames, open_frames, processing_size, write_frame, write_video)


def make_frames(n, w=40, h=30):
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (h, w, 3)).astype(np.uint8) for _ in range(n)]


def test_folder_in_natural_name_order(tmp_path):
    frames = make_frames(3)
    for name, frame in zip(["f_10.png", "f_2.png", "f_1.png"], frames):
        cv2.imwrite(str(tmp_path / name), frame)
    (tmp_path / "notes.txt").write_text("not a frame")
    source = open_frames(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in source.names] == ["f_1.png", "f_2.png", "f_10.png"]
    assert np.array_equal(source[2], cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB))


def test_glob_and_processing_width(tmp_path):
    for i, frame in enumerate(make_frames(2), 1):
        cv2.imwrite(str(tmp_path / f"a{i}.png"), frame)
    source = open_frames(str(tmp_path / "a*.png"), width=32)
    assert len(source) == 2 and source.size == (32, 24) and source[0].shape == (24, 32, 3)


def test_video_file(tmp_path):
    path = write_video(make_frames(5, 64, 48), tmp_path / "clip.mp4", fps=10)
    source = open_frames(path)
    assert len(source) == 5 and source.size == (64, 48)


def test_arrays_of_any_depth():
    grey = np.zeros((20, 20), np.uint8)
    floats = np.ones((20, 20, 3), np.float32)
    source = open_frames([grey, floats])
    assert source[0].shape == (20, 20, 3) and source[1].max() == 255


@pytest.mark.parametrize("make_input, fragment", [
    (lambda p: p / "missing.mp4", "no such file or directory"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "zero frames"),
    (lambda p: (p / "bad.mp4").write_bytes(b"junk") and p / "bad.mp4", "not a readable video"),
    (lambda p: str(p / "nothing*.png"), "zero frames"),
])
def test_bad_inputs_name_the_input(tmp_path, make_input, fragment):
    target = make_input(tmp_path)
    with pytest.raises(InputError, match=fragment) as info:
        open_frames(target)
    assert str(target) in str(info.value)


def test_too_small_processing_size():
    with pytest.raises(InputError, match="too small"):
        processing_size(100, 50, 20)


def test_write_frame_names_and_resume_count(tmp_path):
    frame = make_frames(1)[0]
    for i in (1, 2, 4):
        write_frame(tmp_path, i, frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame_000001.png", "frame_000002.png", "frame_000004.png"]
    assert finished_frames(tmp_path, 5) == 2
