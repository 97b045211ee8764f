"""Frames in and out: videos, folders, globs and arrays become RGB uint8 frames at processing size.

Outputs are written atomically (hidden temporary name, then rename), so a killed run never leaves a
half-written frame that a resumed run would trust. The engine server's job store uses the same helpers.
"""
from __future__ import annotations

import copy
import glob
import itertools
import operator
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence, Union

import cv2
import numpy as np

from ..errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp", ".exr"}
MIN_SIDE = 16  # VGG19 pools four times before relu5_1

FrameLike = Union[str, os.PathLike, np.ndarray]


def natural_key(path: str) -> list:
    """Name order in which frame_2 comes before frame_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", os.path.basename(path))]


def processing_size(width: int, height: int, target_width: int | None) -> tuple[int, int]:
    """(w, h) to process at: the frame's own size, or target_width with the aspect ratio kept."""
    if target_width is None:
        size = (width, height)
    else:
        size = (int(target_width), max(1, int(round(height * target_width / width))))
    if min(size) < MIN_SIDE:
        raise InputError(f"processing size {size[0]}x{size[1]} is too small (each side needs at least {MIN_SIDE} px)")
    return size


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    shrinking = size[0] < rgb.shape[1]
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def to_rgb8(image: np.ndarray, name: str) -> np.ndarray:
    """Any HxW / HxWx{1,3,4} uint8/uint16/float array -> HxWx3 uint8 RGB."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise InputError(f"{name}: expected an HxW or HxWx3 image, got shape {img.shape}")
    if img.dtype == np.uint16:
        img = (img / 257.0).round()
    elif img.dtype.kind == "f":
        img = np.clip(img, 0.0, 1.0) * 255.0 if img.max(initial=0) <= 1.0 else np.clip(img, 0, 255)
    img = img.astype(np.uint8)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def read_image(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, or raise InputError naming it."""
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"{what} {path}: no such file")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{what} {path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class FrameSource(Sequence):
    """Frames at processing size, in order; image files are read when asked for."""

    def __init__(self, items: list, size: tuple[int, int], names: list[str]):
        self._items = items  # numpy frames or file paths
        self.size = size
        self.names = names

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> np.ndarray:
        item = self._items[index]
        frame = read_image(item, "frame") if isinstance(item, str) else item
        return resize(frame, self.size)

    def reader(self) -> "FrameSource":
        """A source of the same frames to read from independently of this one (another thread's or
        chunk's position in a video). Files and arrays are read without state: this very one."""
        return self


class VideoFrames(FrameSource):
    """A video's frames at processing size, decoded when asked for: a clip is never held whole (ten
    minutes of 720p would be 40 GB).

    Frames are decoded in order and the last CACHE_FRAMES asked for are kept, which covers how the engine
    reads (the current frame, its long-term partners a few frames back, flows computed a few frames ahead
    on threads). A frame older than that reopens the video and decodes up to it. Thread-safe.
    """

    CACHE_FRAMES = 16

    def __init__(self, path: str, width: int | None):
        capture = self._open(path)
        try:  # the first frame gives the size; grabbing the rest (decoded, not converted) counts them
            ok, bgr = capture.read()
            if not ok:
                raise InputError(f"INPUT {path}: no frames could be decoded")
            size = processing_size(bgr.shape[1], bgr.shape[0], width)  # a bad width fails before the count
            count = 1
            while capture.grab():
                count += 1
        finally:
            capture.release()
        super().__init__([], size, [f"{path}#{i + 1}" for i in range(count)])
        self.path = path
        self._count = count
        self._capture: cv2.VideoCapture | None = None
        self._next = 0  # the frame the open capture decodes next
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _open(path: str) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            raise InputError(f"INPUT {path}: not a readable video")
        return capture

    def __len__(self) -> int:
        return self._count

    def reader(self) -> "VideoFrames":
        """The same video with a decoder and cache of its own (frames counted once, not again)."""
        return copy.copy(self)

    # Pickled (to another process) or copied without the decoder, the cache or the lock: the copy opens
    # its own decoder when a frame is first asked for.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_capture", "_next", "_cache", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._capture, self._next = None, 0
        self._cache = OrderedDict()
        self._lock = threading.Lock()

    def __getitem__(self, index: int) -> np.ndarray:
        index = operator.index(index)
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"frame {index} of a {self._count}-frame video")
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
            return self._decode_up_to(index)

    def _decode_up_to(self, index: int) -> np.ndarray:
        if self._capture is None or index < self._next:
            if self._capture is not None:
                self._capture.release()
            self._capture, self._next = self._open(self.path), 0
        while self._next <= index:
            wanted = self._next > index - self.CACHE_FRAMES  # frames before these are only skipped
            ok, bgr = self._capture.read() if wanted else (self._capture.grab(), None)
            if not ok:
                raise InputError(f"INPUT {self.path}: frame {self._next + 1} could not be decoded")
            if wanted:
                self._cache[self._next] = resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.size)
                self._cache.move_to_end(self._next)
                while len(self._cache) > self.CACHE_FRAMES:
                    self._cache.popitem(last=False)
            self._next += 1
        return self._cache[index]

    def close(self) -> None:
        """Let the decoder go (a later frame asked for opens it again)."""
        with self._lock:
            if self._capture is not None:
                self._capture.release()
            self._capture, self._next = None, 0
            self._cache.clear()


def _image_files(paths: list[str], width: int | None, label: str) -> FrameSource:
    if not paths:
        raise InputError(f"INPUT {label}: zero frames (no image files found)")
    first = read_image(paths[0], "frame")
    size = processing_size(first.shape[1], first.shape[0], width)
    return FrameSource(list(paths), size, list(paths))


def open_frames(source: str | os.PathLike | Sequence[FrameLike], width: int | None = None) -> FrameSource:
    """A video file, a folder of images (name order), a glob, or a list of paths / arrays."""
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if os.path.isdir(text):
            files = [os.path.join(text, n) for n in os.listdir(text) if Path(n).suffix.lower() in IMAGE_SUFFIXES]
            return _image_files(sorted(files, key=natural_key), width, text)
        if os.path.isfile(text):
            if Path(text).suffix.lower() in IMAGE_SUFFIXES:
                return _image_files([text], width, text)
            return VideoFrames(text, width)
        if glob.has_magic(text):
            files = [p for p in glob.glob(text) if os.path.isfile(p)]
            return _image_files(sorted(files, key=natural_key), width, text)
        raise InputError(f"INPUT {text}: no such file or directory")
    items = list(source)
    if not items:
        raise InputError("frames: zero frames given")
    if all(isinstance(item, (str, os.PathLike)) for item in items):
        return _image_files([str(item) for item in items], width, "frames")
    arrays = [to_rgb8(item, f"frame {i + 1}") if isinstance(item, np.ndarray) else read_image(item, "frame")
              for i, item in enumerate(items)]
    size = processing_size(arrays[0].shape[1], arrays[0].shape[0], width)
    return FrameSource(arrays, size, [f"frame {i + 1}" for i in range(len(arrays))])


def frame_filename(index: int) -> str:
    """1-based output name: frame_000001.png."""
    return f"frame_{index:06d}.png"


def write_atomic(path: str | os.PathLike, data) -> None:
    """Write bytes (or any buffer) to ``path`` via a hidden temporary name and a rename."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)  # a full disk leaves no half-written hidden file behind
        raise


def encode_png(rgb: np.ndarray, level: int | None = None) -> bytes:
    """RGB uint8 -> PNG file bytes."""
    params = [] if level is None else [cv2.IMWRITE_PNG_COMPRESSION, level]
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError("PNG encoding failed")
    return data.tobytes()


def image_problem(blob, max_pixels: int) -> str | None:
    """Why an image file cannot be taken, judged from its header alone (no pixels decoded, so a small
    file that declares a gigapixel image costs nothing): 'not a readable image' or its declared size
    past ``max_pixels``; None when it may be decoded."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(blob))) as image:  # parses the header only
                width, height = image.size
    except Image.DecompressionBombError:
        return f"declares more than {max_pixels} pixels"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return "not a readable image"
    if width * height > max_pixels:
        return f"declares {width}x{height} pixels, more than the {max_pixels} allowed"
    return None


def decode_image(blob) -> np.ndarray | None:
    """Image file bytes -> HxWx3 uint8 RGB, or None if they are not a readable image."""
    bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_frame(out_dir: str | os.PathLike, index: int, rgb: np.ndarray) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / frame_filename(index)
    write_atomic(final, encode_png(rgb))
    return final


def finished_frames(out_dir: str | os.PathLike, count: int) -> int:
    """How many frames 1..k already exist, contiguously, in ``out_dir`` (for resuming)."""
    done = 0
    while done < count and (Path(out_dir) / frame_filename(done + 1)).is_file():
        done += 1
    return done


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 24.0) -> Path:
    """Write RGB frames as an mp4 (MPEG-4 Part 2, which OpenCV's bundled FFmpeg always has). ``frames``
    may be a generator, so a long clip never has to be in memory at once."""
    path = Path(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"could not open {path} for writing")
    try:
        for frame in itertools.chain([first], frames):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
