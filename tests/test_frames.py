"""Reading clips (video, folder, glob, arrays) and writing frames."""
import os

import cv2
import numpy as np
import pytest

from engine_server.errors import InputError
from engine_server.io.frames import (VideoFrames, finished_frames, open_frames, processing_size, write_frame,
                                     write_video)


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


def decoded_whole(path, size):
    """Every frame of the video, decoded in one go and resized as the engine does (the reference)."""
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return frames
        frames.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_AREA))


def test_a_video_is_decoded_as_frames_are_asked_for_never_held_whole(tmp_path):
    """A long clip must not sit in memory (ten minutes of 720p would be 40 GB): at most a window of
    recent frames is alive, however far the run has read, and any frame, in any order, is the right one."""
    import gc
    import weakref

    path = write_video(make_frames(3 * VideoFrames.CACHE_FRAMES, 64, 48), tmp_path / "long.mp4", fps=10)
    source = open_frames(path, width=32)
    expected = decoded_whole(path, (32, 24))
    assert isinstance(source, VideoFrames) and len(source) == len(expected) == 3 * VideoFrames.CACHE_FRAMES
    assert not source._cache  # opening counts the frames without keeping any
    refs = []
    for index in range(len(source)):  # as the temporal mode reads: the frame, then partners 1, 2 and 4 back
        refs.append(weakref.ref(source[index]))
        for back in (0, 1, 2, 4):
            if index >= back:
                assert np.array_equal(source[index - back], expected[index - back]), f"{index - back} after {index}"
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    assert alive <= VideoFrames.CACHE_FRAMES, f"{alive} decoded frames still in memory"
    for index in (0, len(source) - 1, 5, len(source) - 2, 1):  # behind the window: the video is reopened
        assert np.array_equal(source[index], expected[index])
    assert np.array_equal(source[-1], expected[-1])
    with pytest.raises(IndexError):
        source[len(source)]


def test_a_video_read_elsewhere_gets_a_decoder_of_its_own(tmp_path):
    """A reader (another chunk's position) or a pickled copy (another process) decodes on its own and
    does not count the frames again; reading one never moves the other."""
    import pickle

    path = write_video(make_frames(12, 64, 48), tmp_path / "clip.mp4", fps=10)
    source = open_frames(path, width=32)
    expected = decoded_whole(path, (32, 24))
    assert np.array_equal(source[8], expected[8])
    for other in (source.reader(), pickle.loads(pickle.dumps(source))):
        assert isinstance(other, VideoFrames) and len(other) == 12 and other.size == (32, 24)
        assert other._capture is None and not other._cache  # nothing shared, nothing decoded yet
        assert np.array_equal(other[2], expected[2])
        assert source._next == 9 and other._next == 3  # each decoder where its own reads left it
    arrays = open_frames(make_frames(2))
    assert arrays.reader() is arrays  # arrays and files are read without state


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


def test_scratch_keeps_arrays_on_disk_and_clears_what_killed_runs_left(tmp_path):
    """Multi-pass's state lives in a scratch folder: gone when the run ends, and a folder left by a run
    that was killed (its process is gone) is removed when the next run starts in the same place."""
    import subprocess
    import sys

    from engine_server.io.scratch import PREFIX, Scratch

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left_behind = tmp_path / f"{PREFIX}{int(finished.stdout)}-killed"
    (left_behind / "big").mkdir(parents=True)
    running_elsewhere = tmp_path / f"{PREFIX}{os.getppid()}-alive"  # a live process's folder is not touched
    running_elsewhere.mkdir()
    with Scratch(tmp_path) as scratch:
        array = np.arange(12, dtype=np.float32).reshape(3, 4)
        scratch.put("result-0", array)
        assert "result-0" in scratch and "result-1" not in scratch
        assert np.array_equal(scratch.get("result-0"), array)
        assert not left_behind.exists() and running_elsewhere.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [running_elsewhere.name]
