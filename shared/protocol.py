"""Wire protocol v2: message types, validation and multipart framing (see PROTOCOL.md beside this file).

Pure Python with msgpack only, so Blender's Python can import it. A message is a list of frames: one
msgpack header (a map with ``v``, ``type`` and, for requests and replies, ``id``) followed by binary frames.

    frames = pack({"type": "ping", "id": 7})
    message = unpack(frames, Limits())          # raises ProtocolError naming what is wrong
    message.header["type"], message.blobs
"""
from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import msgpack

PROTOCOL_VERSION = 2  # 2: owners (token / CURVE key), delete_job, continue_job, paginated list_jobs, job limits
ENCODINGS = ("png", "raw")
JOB_STATES = ("uploading", "queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
ERROR_CODES = ("bad_message", "bad_field", "unknown_type", "version_mismatch", "too_large", "unknown_job",
               "bad_state", "busy", "quota", "internal")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the last chunk of every PNG file: a cheap check for truncated uploads
MIN_SIDE = 16
TOKEN_CHARS = (16, 256)  # a client's secret: long enough not to be guessed, short enough to carry on every request


@dataclass(frozen=True)
class Limits:
    """Bounds every engine enforces (and reports in ``welcome.limits``)."""

    max_message_bytes: int = 64 * 2**20   # one frame of a message (a raw 4096x2160 frame is 26.5 MB)
    max_header_bytes: int = 8 * 2**20
    max_frames: int = 100_000
    max_side: int = 8192
    max_frame_pixels: int = 4096 * 2160   # width x height of a job's frames (DCI 4K)
    max_styles: int = 16
    max_name_chars: int = 256
    max_style_pixels: int = 40_000_000  # width x height a style image may declare (an 8000x5000 scan)
    max_iterations: int = 10_000        # per frame; the reference's longest schedule is 2000
    max_passes: int = 100
    max_weights: int = 400_000          # frame_count x styles numbers in a job's weights (job.json stays small)

    def as_dict(self) -> dict:
        return asdict(self)


class ProtocolError(ValueError):
    """An invalid message: ``code`` from ERROR_CODES, ``field`` the field at fault (or None)."""

    def __init__(self, code: str, message: str, field: str | None = None, id: Any = None):
        super().__init__(message)
        self.code, self.message, self.field, self.id = code, message, field, id

    def header(self) -> dict:
        return error_header(self.code, self.message, self.field, self.id)


def error_header(code: str, message: str, field: str | None = None, id: Any = None) -> dict:
    header = {"v": PROTOCOL_VERSION, "type": "error", "code": code, "message": message, "field": field}
    if id is not None:
        header["id"] = id
    return header


@dataclass
class Message:
    header: dict
    blobs: list = field(default_factory=list)  # bytes / memoryview / zmq.Frame buffers

    @property
    def type(self) -> str:
        return self.header["type"]

    @property
    def id(self):
        return self.header.get("id")


# -- framing -------------------------------------------------------------------------------------

def pack(header: dict, blobs: Sequence = ()) -> list:
    """Frames of one message: the msgpack header, then the binary frames untouched (no copies)."""
    header = {"v": PROTOCOL_VERSION, **header}
    return [msgpack.packb(header, use_bin_type=True), *blobs]


def _buffer(frame) -> memoryview:
    """bytes, bytearray, memoryview or zmq.Frame -> memoryview without copying."""
    view = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)  # zmq.Frame has .buffer
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")  # byte-wise view of any contiguous buffer (TypeError if not contiguous)
    return view


def unpack(frames: Sequence, limits: Limits = Limits(), direction: str = "request") -> Message:
    """Decode and validate one message. ``direction`` is "request" (engine side), "reply" (client side:
    replies and events) or "any". Raises ProtocolError; never anything else for any input."""
    try:
        buffers = [_buffer(f) for f in frames]
    except (TypeError, ValueError, AttributeError):  # not a sequence of byte buffers at all
        raise ProtocolError("bad_message", "message frames must be byte buffers") from None
    if not buffers:
        raise ProtocolError("bad_message", "empty message")
    head = buffers[0]
    if head.nbytes > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header of {head.nbytes} bytes exceeds {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(head, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for malformed input
        raise ProtocolError("bad_message", f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_message", "header is not a map")
    request_id = header.get("id")
    if not _valid_id(request_id):
        request_id = None
    total = sum(b.nbytes for b in buffers)
    if total > limits.max_message_bytes:  # checked after the (bounded) header so the error carries the id
        raise ProtocolError("too_large", f"message of {total} bytes exceeds {limits.max_message_bytes}",
                            id=request_id)
    try:
        return _validate(header, buffers[1:], limits, direction, request_id)
    except ProtocolError as exc:
        exc.id = request_id
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:  # a validator's blind spot
        raise ProtocolError("bad_message", f"malformed message ({type(exc).__name__})", id=request_id) from None


def request_id(head, limits: Limits = Limits()):
    """The ``id`` of a request whose header frame is ``head``, if it can be read (for the error that
    refuses a message without decoding the rest of it); None otherwise."""
    try:
        view = _buffer(head)
        if view.nbytes > limits.max_header_bytes:
            return None
        header = msgpack.unpackb(view, raw=False, strict_map_key=False)
    except Exception:
        return None
    found = header.get("id") if isinstance(header, dict) else None
    return found if _valid_id(found) else None


def _validate(header: dict, blobs: list, limits: Limits, direction: str, request_id) -> Message:
    version = header.get("v")
    if not _is_int(version):
        raise ProtocolError("bad_field", "missing protocol version 'v'", "v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("version_mismatch", f"protocol version {version} is not {PROTOCOL_VERSION}", "v")
    kind = header.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_field", "missing message type", "type")
    tables = {"request": [REQUESTS], "reply": [REPLIES], "any": [REQUESTS, REPLIES]}[direction]
    schema = next((t[kind] for t in tables if kind in t), None)
    if schema is None:
        raise ProtocolError("unknown_type", f"unknown message type {clip(kind)}", "type")
    if kind in REQUESTS and direction != "reply" and "id" in header and request_id is None:
        raise ProtocolError("bad_field", f"'id' must be an int or a string of at most {MAX_ID_CHARS} characters",
                            "id")
    if kind in REQUESTS and direction != "reply" and "token" in header:
        _need(header, "token", lambda v: isinstance(v, str) and TOKEN_CHARS[0] <= len(v) <= TOKEN_CHARS[1],
              f"a string of {TOKEN_CHARS[0]} to {TOKEN_CHARS[1]} characters")
    schema(header, blobs, limits)
    return Message(header, blobs)


# -- field checks ----------------------------------------------------------------------------------

def clip(value, limit: int = 64) -> str:
    """repr() of a value from a message, shortened: errors never echo attacker-sized input back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MAX_ID_CHARS = 256  # request ids are echoed back, so they are kept short


def _valid_id(value) -> bool:
    return (_is_int(value) and -2**63 <= value < 2**64) or (isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _need(header: dict, name: str, check: Callable[[Any], bool], what: str, optional: bool = False,
          prefix: str = ""):
    if name not in header:
        if optional:
            return None
        raise ProtocolError("bad_field", f"missing field '{prefix}{name}'", prefix + name)
    value = header[name]
    if optional and value is None:
        return None
    if not check(value):
        raise ProtocolError("bad_field", f"field '{prefix}{name}' must be {what}", prefix + name)
    return value


def _string(limit: int = 4096):
    return lambda v: isinstance(v, str) and 0 < len(v) <= limit


def _int_range(low: int, high: float = math.inf):
    return lambda v: _is_int(v) and low <= v <= high


def _blobs(blobs: list, count: int, what: str):
    if len(blobs) != count:
        raise ProtocolError("bad_message", f"expected {count} binary frame(s) ({what}), got {len(blobs)}")


def _check_frame_blob(blob, encoding: str, width: int, height: int, prefix: str = ""):
    if encoding == "raw":
        expected = width * height * 3
        if blob.nbytes != expected:
            raise ProtocolError("bad_field", f"raw frame has {blob.nbytes} bytes, expected {expected} "
                                             f"({width}x{height}x3)", prefix + "frame")
    else:
        size = png_size(blob)
        if size is None:
            raise ProtocolError("bad_field", "png frame is not a PNG file (signature or IHDR missing)",
                                prefix + "frame")
        if size != (width, height):
            raise ProtocolError("bad_field", f"png frame is {size[0]}x{size[1]}, the header says {width}x{height}",
                                prefix + "frame")
        if bytes(blob[-len(PNG_END):]) != PNG_END:
            raise ProtocolError("bad_field", "png frame is truncated (no IEND chunk at its end)", prefix + "frame")


def _size_fields(header: dict, limits: Limits, prefix: str = "") -> tuple[int, int]:
    side = _int_range(MIN_SIDE, limits.max_side)
    what = f"an integer from {MIN_SIDE} to {limits.max_side}"
    return (_need(header, "width", side, what, prefix=prefix), _need(header, "height", side, what, prefix=prefix))


def _work_size(header: dict, limits: Limits, prefix: str = "") -> tuple[int, int]:
    """The frame size a job, preview or estimate asks the engine to work at: sides and pixel count."""
    width, height = _size_fields(header, limits, prefix)
    if width * height > limits.max_frame_pixels:
        raise ProtocolError("bad_field", f"frames of {width}x{height} are more than the {limits.max_frame_pixels} "
                                         f"pixels this engine takes", prefix + "width")
    return width, height


def _options(header: dict, allowed=None, prefix: str = "", where: str = "") -> dict:
    """The optional ``options`` map: names in ``allowed`` (default: every option), values as
    OPTION_CHECKS wants them; ``where`` names what a name outside ``allowed`` does not apply to."""
    options = _need(header, "options", lambda v: isinstance(v, dict), "a map", optional=True, prefix=prefix) or {}
    for key, value in options.items():
        if key not in (allowed or OPTION_CHECKS):
            raise ProtocolError("bad_field", f"option {clip(key)} does not apply to {where} (only "
                                             f"{', '.join(allowed)})" if allowed else f"unknown option {clip(key)}",
                                f"{prefix}options.{str(key)[:32]}")
        check, what = OPTION_CHECKS[key]
        if not check(value):
            raise ProtocolError("bad_field", f"option '{key}' must be {what}", f"{prefix}options.{key}")
    return options


JOB_ID = _string(64)

OPTION_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "mode": (lambda v: v in ("temporal", "per-frame", "multipass", "fast", "fast-per-frame"),
             "temporal, per-frame, multipass, fast or fast-per-frame"),
    "iterations": (_int_range(1, 100_000), "an integer from 1 to 100000"),
    "first_iterations": (_int_range(1, 100_000), "an integer from 1 to 100000"),
    "passes": (_int_range(1, 1000), "an integer from 1 to 1000"),
    "schedule": (lambda v: v in ("pyramid", "reference"), "pyramid or reference"),
    "coarsest_side": (_int_range(16, 4096), "an integer from 16 to 4096"),
    "precision": (lambda v: v in ("auto", "fp32", "bf16"), "auto, fp32 or bf16"),
    "content_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "style_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "temporal_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "multipass_temporal_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "tv_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "style_scale": (lambda v: _is_number(v) and 0 < v <= 16, "a number in (0, 16]"),
    "learning_rate": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "preserve_colors": (lambda v: isinstance(v, bool), "true or false"),
    "early_stop": (lambda v: isinstance(v, bool), "true or false"),
    "cuda_graphs": (lambda v: isinstance(v, bool), "true or false"),
    "flow": (lambda v: v in ("dis", "farneback", "raft"), "dis, farneback or raft"),
    "optimizer": (lambda v: v in ("lbfgs", "adam"), "lbfgs or adam"),
    "init": (lambda v: v in ("content", "noise", "fast"), "content, noise or fast"),
    "seed": (_int_range(0, 2**63 - 1), "an integer >= 0"),
    "long_term": (lambda v: isinstance(v, list) and 0 < len(v) <= 16 and all(_int_range(1, 1000)(j) for j in v),
                  "a list of 1 to 16 frame distances from 1 to 1000"),
}


def validate_job(job, limits: Limits) -> None:
    """The ``job`` map of a submit request."""
    if not isinstance(job, dict):
        raise ProtocolError("bad_field", "field 'job' must be a map", "job")
    count = _need(job, "frame_count", _int_range(1, limits.max_frames),
                  f"an integer from 1 to {limits.max_frames}", prefix="job.")
    width, height = _work_size(job, limits, prefix="job.")
    styles = _need(job, "styles", lambda v: isinstance(v, list) and 0 < len(v) <= limits.max_styles,
                   f"a list of 1 to {limits.max_styles} style names", prefix="job.")
    if count * len(styles) > limits.max_weights:
        raise ProtocolError("bad_field", f"{count} frames x {len(styles)} styles is more than the {limits.max_weights}"
                                         f" weights a job may carry", "job.weights")
    for i, name in enumerate(styles):
        if not _string(limits.max_name_chars)(name):
            raise ProtocolError("bad_field", f"style name {i} must be a non-empty string", f"job.styles[{i}]")
    weights = _need(job, "weights", lambda v: isinstance(v, list) and len(v) == count,
                    "a list with one entry per frame", prefix="job.")
    for f, row in enumerate(weights):
        if not isinstance(row, list) or len(row) != len(styles):
            raise ProtocolError("bad_field", f"weights of frame {f + 1} must list {len(styles)} numbers",
                                f"job.weights[{f}]")
        for s, w in enumerate(row):
            if not (_is_number(w) and w >= 0):
                raise ProtocolError("bad_field", "style weights must be finite numbers >= 0",
                                    f"job.weights[{f}][{s}]")
    options = _options(job, prefix="job.")
    _check_job_cost(options, width * height, limits)
    _need(job, "name", _string(limits.max_name_chars), "a non-empty string", optional=True, prefix="job.")


def _check_job_cost(options: dict, frame_pixels: int, limits: Limits) -> None:
    """What a job may ask of the engine beyond the options' own ranges: iterations and passes under
    the engine's caps, and paintings sized by style_scale no larger than the largest frame it takes."""
    for key, cap in (("iterations", limits.max_iterations), ("first_iterations", limits.max_iterations),
                     ("passes", limits.max_passes)):
        if key in options and options[key] > cap:
            raise ProtocolError("bad_field", f"option '{key}' is {options[key]}, this engine allows at most {cap}",
                                f"job.options.{key}")
    scale = options.get("style_scale", 1.0)
    if options.get("mode") in ("fast", "fast-per-frame"):
        return  # the network paints at frame size / style_scale, capped by the engine: no large paintings
    if frame_pixels * scale ** 2 > limits.max_frame_pixels:
        largest = math.sqrt(limits.max_frame_pixels / frame_pixels)
        raise ProtocolError("bad_field", f"option 'style_scale' {scale:g} would size the paintings at "
                                         f"{frame_pixels * scale ** 2 / 1e6:.1f} MP; at this frame size it may be at "
                                         f"most {largest:.2f}", "job.options.style_scale")


# -- requests (client -> engine) -------------------------------------------------------------------

def _hello(h, blobs, limits):
    _need(h, "client", _string(256), "a non-empty string")
    _need(h, "protocol", _is_int, "an integer")
    _blobs(blobs, 0, "none")


def _no_fields(h, blobs, limits):
    _blobs(blobs, 0, "none")


def _job_only(h, blobs, limits):
    _need(h, "job", JOB_ID, "a job id")
    _blobs(blobs, 0, "none")


def _submit(h, blobs, limits):
    validate_job(h.get("job"), limits)
    _blobs(blobs, len(h["job"]["styles"]), "one style image per style name")
    for i, blob in enumerate(blobs):
        if blob.nbytes == 0:
            raise ProtocolError("bad_field", f"style image {i} is empty", f"styles[{i}]")


def _frame_message(h, blobs, limits):
    """An ``upload`` request or a ``frame`` event: one frame of a job, with its index and size."""
    _need(h, "job", JOB_ID, "a job id")
    _need(h, "index", _int_range(1, limits.max_frames), f"an integer from 1 to {limits.max_frames}")
    encoding = _need(h, "encoding", lambda v: v in ENCODINGS, "png or raw")
    width, height = _size_fields(h, limits)
    _blobs(blobs, 1, "the frame")
    _check_frame_blob(blobs[0], encoding, width, height)


PREVIEW_OPTIONS = ("style_scale", "preserve_colors")  # what changes a feed-forward painting of one frame


def _preview(h, blobs, limits):
    """One frame painted by the feed-forward network, answered at once; nothing is kept on the engine."""
    encoding = _need(h, "encoding", lambda v: v in ENCODINGS, "png or raw")
    width, height = _work_size(h, limits)
    styles = _need(h, "styles", lambda v: isinstance(v, list) and 0 < len(v) <= limits.max_styles,
                   f"a list of 1 to {limits.max_styles} style names")
    for i, name in enumerate(styles):
        if not _string(limits.max_name_chars)(name):
            raise ProtocolError("bad_field", f"style name {i} must be a non-empty string", f"styles[{i}]")
    _need(h, "weights", lambda v: isinstance(v, list) and len(v) == len(styles)
          and all(_is_number(w) and w >= 0 for w in v), f"a list of {len(styles)} finite numbers >= 0")
    _options(h, PREVIEW_OPTIONS, where="a preview")
    _blobs(blobs, 1 + len(styles), "the frame, then one style image per style name")
    _check_frame_blob(blobs[0], encoding, width, height)
    for i, blob in enumerate(blobs[1:]):
        if blob.nbytes == 0:
            raise ProtocolError("bad_field", f"style image {i} is empty", f"styles[{i}]")


def _estimate(h, blobs, limits):
    """What a job of this size and these options would cost on the engine, before it is submitted."""
    _work_size(h, limits)
    _need(h, "frame_count", _int_range(1, limits.max_frames), f"an integer from 1 to {limits.max_frames}")
    _options(h)
    _blobs(blobs, 0, "none")


def _attach(h, blobs, limits):
    _need(h, "job", JOB_ID, "a job id")
    _need(h, "since", _int_range(0, limits.max_frames), "an integer >= 0", optional=True)
    _blobs(blobs, 0, "none")


LIST_PAGE = 100  # jobs per list_jobs reply unless the client asks for fewer


def _list_jobs(h, blobs, limits):
    _need(h, "after", JOB_ID, "a job id", optional=True)
    _need(h, "limit", _int_range(1, LIST_PAGE), f"an integer from 1 to {LIST_PAGE}", optional=True)
    _blobs(blobs, 0, "none")


def _fetch(h, blobs, limits):
    _need(h, "job", JOB_ID, "a job id")
    start = _need(h, "start", _int_range(1, limits.max_frames), "an integer >= 1")
    _need(h, "end", _int_range(start, limits.max_frames), f"an integer from start ({start}) on")
    _need(h, "encoding", lambda v: v in ENCODINGS, "png or raw", optional=True)
    _blobs(blobs, 0, "none")


REQUESTS: dict[str, Callable] = {
    "hello": _hello, "ping": _no_fields, "submit": _submit, "upload": _frame_message, "attach": _attach,
    "detach": _job_only, "status": _job_only, "list_jobs": _list_jobs, "fetch": _fetch, "cancel": _job_only,
    "delete_job": _job_only, "continue_job": _job_only, "preview": _preview, "estimate": _estimate,
}


# -- replies and events (engine -> client) ----------------------------------------------------------

def _welcome(h, blobs, limits):
    _need(h, "engine", _string(), "a string")
    _need(h, "protocol", _is_int, "an integer")
    _need(h, "device", _string(), "a string")
    _need(h, "limits", lambda v: isinstance(v, dict), "a map")


def _pong(h, blobs, limits):
    _need(h, "time", _is_number, "a number")


def _job_status_fields(h, prefix=""):
    _need(h, "job", JOB_ID, "a job id", prefix=prefix)
    _need(h, "state", lambda v: v in JOB_STATES, "a job state", prefix=prefix)
    for name in ("frame_count", "received", "finished"):
        _need(h, name, _int_range(0), "an integer >= 0", prefix=prefix)
    _need(h, "error", lambda v: isinstance(v, dict), "a map", optional=True, prefix=prefix)


def _job_status(h, blobs, limits):
    _job_status_fields(h)


def _jobs(h, blobs, limits):
    _need(h, "next", JOB_ID, "a job id", optional=True)
    jobs = _need(h, "jobs", lambda v: isinstance(v, list), "a list")
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise ProtocolError("bad_field", "each job must be a map", f"jobs[{i}]")
        _job_status_fields(job, prefix=f"jobs[{i}].")


def _progress(h, blobs, limits):
    _need(h, "job", JOB_ID, "a job id")
    _need(h, "stage", _string(64), "a string")
    _need(h, "frame", _int_range(0), "an integer >= 0")
    _need(h, "frame_count", _int_range(0), "an integer >= 0")


def _previewed(h, blobs, limits):
    width, height = _size_fields(h, limits)
    _need(h, "seconds", _is_number, "a number")
    _blobs(blobs, 1, "the painted frame")
    _check_frame_blob(blobs[0], "png", width, height)


def _error(h, blobs, limits):
    _need(h, "code", _string(64), "an error code")
    _need(h, "message", _string(65536), "a string")


REPLIES: dict[str, Callable] = {
    "welcome": _welcome, "pong": _pong, "accepted": _job_only, "detached": _job_only, "deleted": _job_only,
    "uploaded": lambda h, b, l: (_need(h, "job", JOB_ID, "a job id"), _need(h, "index", _int_range(1), "an index")),
    "job_status": _job_status, "jobs": _jobs, "frame": _frame_message, "progress": _progress,
    "fetched": lambda h, b, l: (_need(h, "job", JOB_ID, "a job id"),
                                _need(h, "indices", lambda v: isinstance(v, list), "a list")),
    "previewed": _previewed, "error": _error,
    "estimated": lambda h, b, l: (_need(h, "seconds", _is_number, "a number"),
                                  _need(h, "peak_bytes", _int_range(0), "an integer >= 0"),
                                  _need(h, "fits", lambda v: isinstance(v, bool), "true or false")),
}


# -- frames ------------------------------------------------------------------------------------------

def raw_frame_bytes(width: int, height: int) -> int:
    return width * height * 3


def png_size(blob) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk without decoding it; None if ``blob`` is not a PNG."""
    head = bytes(_buffer(blob)[:24])
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def sniff_encoding(blob) -> str:
    """"png" if the bytes start with the PNG signature, else "raw"."""
    return "png" if bytes(_buffer(blob)[:8]) == PNG_SIGNATURE else "raw"


# -- index sets ----------------------------------------------------------------------------------------

def to_ranges(indices) -> list[list[int]]:
    """{1, 2, 3, 7} -> [[1, 3], [7, 7]]: how job_status lists received and finished frames compactly."""
    ranges: list[list[int]] = []
    for index in sorted(indices):
        if ranges and index == ranges[-1][1] + 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return ranges


def from_ranges(ranges, limit: int = 10**7) -> set[int]:
    """Inverse of :func:`to_ranges`; malformed entries are skipped, at most ``limit`` indices."""
    indices: set[int] = set()
    for item in ranges if isinstance(ranges, list) else ():
        if (isinstance(item, (list, tuple)) and len(item) == 2 and all(_is_int(v) for v in item)
                and 1 <= item[0] <= item[1] and len(indices) + item[1] - item[0] < limit):
            indices.update(range(item[0], item[1] + 1))
    return indices
