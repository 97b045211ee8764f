"""The wire protocol's decoder: valid messages round-trip, anything else is a ProtocolError naming the fault."""
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_process import clip, png
from vse_style_shared.protocol import (
    ERROR_CODES, PROTOCOL_VERSION, Limits, ProtocolError, error_header, from_ranges, pack, png_size, to_ranges,
    unpack,
)

FRAME_PNG = png(clip(1, 36, 24)[0])
JOB = {"frame_count": 2, "width": 36, "height": 24, "styles": ["a.png"], "weights": [[1.0], [0.5]],
       "options": {"iterations": 3, "mode": "temporal", "long_term": [1, 2]}, "name": "shot 1"}

VALID_REQUESTS = [
    ({"type": "hello", "client": "test", "protocol": PROTOCOL_VERSION}, []),
    ({"type": "ping"}, []),
    ({"type": "submit", "job": JOB}, [b"style bytes"]),
    ({"type": "submit", "job": {**JOB, "options": {"mode": "fast"}}}, [b"style bytes"]),
    ({"type": "submit", "job": {**JOB, "options": {"mode": "fast-per-frame", "init": "fast"}}}, [b"style bytes"]),
    ({"type": "upload", "job": "j1", "index": 1, "encoding": "png", "width": 36, "height": 24}, [FRAME_PNG]),
    ({"type": "upload", "job": "j1", "index": 2, "encoding": "raw", "width": 36, "height": 24}, [bytes(36 * 24 * 3)]),
    ({"type": "attach", "job": "j1", "since": 3}, []),
    ({"type": "detach", "job": "j1"}, []),
    ({"type": "status", "job": "j1"}, []),
    ({"type": "list_jobs"}, []),
    ({"type": "list_jobs", "after": "j1", "limit": 10, "token": "a-client-secret-token"}, []),
    ({"type": "delete_job", "job": "j1"}, []),
    ({"type": "fetch", "job": "j1", "start": 1, "end": 4, "encoding": "raw"}, []),
    ({"type": "cancel", "job": "j1"}, []),
    ({"type": "continue_job", "job": "j1"}, []),
    ({"type": "preview", "encoding": "png", "width": 36, "height": 24, "styles": ["a.png", "b.jpg"],
      "weights": [1.0, 0.25], "options": {"style_scale": 1.5, "preserve_colors": True}}, [FRAME_PNG, b"a", b"b"]),
]
PREVIEW = VALID_REQUESTS[-1][0]


def with_id(header, request_id=7):
    return {**header, "id": request_id}


@pytest.mark.parametrize("header,blobs", VALID_REQUESTS,
                         ids=[h["type"] + str(i) for i, (h, _) in enumerate(VALID_REQUESTS)])
def test_valid_requests_round_trip(header, blobs):
    message = unpack(pack(with_id(header), blobs))
    assert message.type == header["type"] and message.id == 7
    assert message.header == {"v": PROTOCOL_VERSION, **with_id(header)}
    assert [bytes(b) for b in message.blobs] == [bytes(b) for b in blobs]


def test_replies_and_events_decode_on_the_client_side():
    frame = pack({"type": "frame", "job": "j", "index": 1, "encoding": "png", "width": 36, "height": 24}, [FRAME_PNG])
    assert unpack(frame, direction="reply").type == "frame"
    status = {"type": "job_status", "job": "j", "state": "running", "frame_count": 3, "received": 3, "finished": 1}
    assert unpack(pack(status), direction="reply").header["state"] == "running"
    previewed = {"type": "previewed", "width": 36, "height": 24, "encoding": "png", "seconds": 0.2}
    assert unpack(pack(previewed, [FRAME_PNG]), direction="reply").header["seconds"] == 0.2
    with pytest.raises(ProtocolError):  # the painted frame must be the PNG the header describes
        unpack(pack({**previewed, "width": 40}, [FRAME_PNG]), direction="reply")
    with pytest.raises(ProtocolError) as err:  # a reply type is not a request
        unpack(pack(status), direction="request")
    assert err.value.code == "unknown_type"


def expect(frames, code, field=None, limits=Limits()):
    with pytest.raises(ProtocolError) as err:
        unpack(frames, limits)
    assert err.value.code == code, err.value.message
    if field is not None:
        assert err.value.field == field
    assert err.value.header()["type"] == "error"
    return err.value


def test_each_kind_of_fault_is_named():
    expect([b"\xc1"], "bad_message")
    expect([msgpack.packb([1, 2])], "bad_message")
    expect([], "bad_message")
    expect([msgpack.packb({"type": "ping"})], "bad_field", "v")
    expect(pack({"v": PROTOCOL_VERSION + 1, "type": "ping"}), "version_mismatch", "v")
    expect(pack({"type": "teleport", "id": 1}), "unknown_type", "type")
    expect(pack({"type": "ping", "id": [1]}), "bad_field", "id")
    expect(pack({"type": "ping", "id": "x" * 300}), "bad_field", "id")
    expect(pack({"type": "status", "id": 1}), "bad_field", "job")
    expect(pack({"type": "status", "job": "x" * 65}), "bad_field", "job")
    error = expect(pack({"type": "submit", "id": 9, "job": {**JOB, "weights": [[1.0], [-1.0]]}}, [b"s"]),
                   "bad_field", "job.weights[1][0]")
    assert error.id == 9 and error.header()["id"] == 9
    expect(pack({"type": "submit", "job": {**JOB, "weights": [[1.0]]}}, [b"s"]), "bad_field", "job.weights")
    expect(pack({"type": "submit", "job": {**JOB, "options": {"warp": 1}}}, [b"s"]), "bad_field", "job.options.warp")
    expect(pack({"type": "submit", "job": {**JOB, "options": {"iterations": 0}}}, [b"s"]), "bad_field",
           "job.options.iterations")
    expect(pack({"type": "submit", "job": {**JOB, "width": 8}}, [b"s"]), "bad_field", "job.width")
    expect(pack({"type": "submit", "job": JOB}, []), "bad_message")
    expect(pack({"type": "submit", "job": JOB}, [b""]), "bad_field", "styles[0]")
    upload = {"type": "upload", "job": "j", "index": 1, "encoding": "png", "width": 36, "height": 24}
    expect(pack(upload, [b"not a png at all, not at all"]), "bad_field", "frame")
    expect(pack({**upload, "width": 40}, [FRAME_PNG]), "bad_field", "frame")  # IHDR says 36x24
    expect(pack({**upload, "encoding": "raw"}, [bytes(100)]), "bad_field", "frame")
    expect(pack({**upload, "index": 0}, [FRAME_PNG]), "bad_field", "index")
    expect(pack({**upload, "index": True}, [FRAME_PNG]), "bad_field", "index")
    expect(pack({"type": "fetch", "job": "j", "start": 5, "end": 4}), "bad_field", "end")
    styles = [b"a", b"b"]
    expect(pack({**PREVIEW, "weights": [1.0]}, [FRAME_PNG, *styles]), "bad_field", "weights")
    expect(pack({**PREVIEW, "weights": [1.0, -1.0]}, [FRAME_PNG, *styles]), "bad_field", "weights")
    expect(pack({**PREVIEW, "options": {"iterations": 5}}, [FRAME_PNG, *styles]), "bad_field", "options.iterations")
    expect(pack({**PREVIEW, "options": {"style_scale": 0}}, [FRAME_PNG, *styles]), "bad_field", "options.style_scale")
    expect(pack(PREVIEW, [FRAME_PNG, b"a"]), "bad_message")
    expect(pack(PREVIEW, [b"no png", *styles]), "bad_field", "frame")
    expect(pack(PREVIEW, [FRAME_PNG, b"", b"b"]), "bad_field", "styles[0]")


def test_size_limits():
    small = Limits(max_message_bytes=1000, max_header_bytes=100)
    expect(pack({"type": "ping", "pad": "x" * 200}), "too_large", limits=small)
    upload = {"type": "upload", "job": "j", "index": 1, "encoding": "raw", "width": 20, "height": 20}
    expect(pack(upload, [bytes(20 * 20 * 3)]), "too_large", limits=small)
    expect(pack({**upload, "width": 9000}, [b""]), "bad_field", "width")
    assert Limits().as_dict()["max_message_bytes"] >= 4096 * 2160 * 3  # a raw DCI 4K frame fits in one


def test_what_a_job_may_ask_of_the_engine_is_capped():
    """Issue 10.3: 8192x8192 frames, 100000 iterations and style_scale 16 were accepted."""
    def submit(**changes):
        options = changes.pop("options", {})
        return pack({"type": "submit", "job": {**JOB, **changes, "options": options}}, [b"s"])

    limits = Limits()
    expect(submit(width=8192, height=8192), "bad_field", "job.width")
    expect(submit(options={"iterations": limits.max_iterations + 1}), "bad_field", "job.options.iterations")
    expect(submit(options={"first_iterations": 100_000}), "bad_field", "job.options.first_iterations")
    expect(submit(options={"passes": limits.max_passes + 1}), "bad_field", "job.options.passes")
    big = {"width": 1920, "height": 1080}
    error = expect(submit(**big, options={"style_scale": 16}), "bad_field", "job.options.style_scale")
    assert "at most 2.0" in error.message  # says what would be accepted at this size
    unpack(submit(**big, options={"style_scale": 2.0}), limits)
    unpack(submit(**big, options={"style_scale": 16, "mode": "fast"}), limits)  # the network caps its own size
    styles = [f"s{i}" for i in range(limits.max_styles)]
    frames = limits.max_weights // len(styles) + 1
    expect(submit(frame_count=frames, styles=styles, weights=[[1.0] * len(styles)] * frames), "bad_field",
           "job.weights")
    preview = {"type": "preview", "encoding": "raw", "width": 8192, "height": 8192, "styles": ["a"], "weights": [1.0]}
    expect(pack(preview, [b"", b"s"]), "bad_field", "width")


def test_a_token_is_a_string_of_bounded_length():
    unpack(pack({"type": "ping", "token": "t" * 16}))
    expect(pack({"type": "ping", "token": "short"}), "bad_field", "token")
    expect(pack({"type": "ping", "token": 12345678901234567890}), "bad_field", "token")
    expect(pack({"type": "ping", "token": "t" * 257}), "bad_field", "token")


def test_errors_never_echo_long_input():
    error = expect(pack({"type": "x" * 100_000}), "unknown_type", "type")
    assert len(error.message) < 200
    error = expect(pack({"type": "submit", "job": {**JOB, "options": {"k" * 100_000: 1}}}, [b"s"]), "bad_field")
    assert len(error.message) < 200 and len(error.field) < 100


def test_helpers():
    assert png_size(FRAME_PNG) == (36, 24) and png_size(b"\x89PNG") is None
    assert to_ranges({1, 2, 3, 7, 9, 10}) == [[1, 3], [7, 7], [9, 10]]
    assert from_ranges([[1, 3], [7, 7], "junk", [5, 4]]) == {1, 2, 3, 7}
    assert error_header("bad_field", "m", "f", 3) == {"v": PROTOCOL_VERSION, "type": "error", "code": "bad_field", "message": "m",
                                                       "field": "f", "id": 3}
    assert set(ERROR_CODES) >= {"bad_message", "bad_field", "too_large", "unknown_job"}


# -- fuzzing -----------------------------------------------------------------------------------------

mp_ints = st.integers(min_value=-2**63, max_value=2**64 - 1)  # what msgpack can carry
msgpack_values = st.recursive(
    st.none() | st.booleans() | mp_ints | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.integers(-1000, 1000), children, max_size=5),
    max_leaves=30)
junk_values = msgpack_values | st.sampled_from([-1, 0, 2**64 - 1, -2**63, 1e308, float("nan"), float("inf"), "",
                                                 "x" * 300, [], {}, True])
valid_messages = st.sampled_from(VALID_REQUESTS)


not_int = (st.none() | st.booleans() | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
           | st.lists(mp_ints, max_size=2))
not_str = (st.none() | st.booleans() | mp_ints | st.floats() | st.binary(max_size=8) | st.just("")
           | st.dictionaries(st.text(max_size=3), mp_ints, max_size=2))
not_map = st.none() | mp_ints | st.text(max_size=8) | st.lists(mp_ints, max_size=3)
not_list = (st.none() | mp_ints | st.floats() | st.text(max_size=8)
            | st.dictionaries(st.text(max_size=3), mp_ints, max_size=2))


@st.composite
def broken_field(draw):
    """A valid request with one field removed or given a value of the wrong type (never valid afterwards)."""
    header, blobs = draw(valid_messages)
    header = with_id(header)
    name = draw(st.sampled_from(sorted(k for k in header if k != "id")))
    optional = name in ("since", "after", "limit", "token") or (name == "encoding" and header["type"] == "fetch") \
        or (name == "options" and header["type"] == "preview")
    if draw(st.booleans()) and not optional:
        del header[name]
    else:
        original = header[name]
        junk = (not_map if isinstance(original, dict) else not_str if isinstance(original, str)
                else not_list if isinstance(original, list) else not_int)
        header[name] = draw(junk.filter(lambda v: not (optional and v is None)))
    return [msgpack.packb({"v": PROTOCOL_VERSION, **header}, use_bin_type=True), *blobs]


@st.composite
def truncated(draw):
    """A valid message cut short: its header bytes, or its frame, or its frame list."""
    header, blobs = draw(valid_messages)
    frames = pack(with_id(header), blobs)
    choice = draw(st.integers(0, 2))
    if choice == 0:
        frames[0] = frames[0][:draw(st.integers(0, len(frames[0]) - 1))]
    elif choice == 1 and len(frames) > 1:
        frames[1] = frames[1][:draw(st.integers(0, max(0, len(frames[1]) - 1)))]
        if header["type"] == "submit":  # an empty style image is the fault here; a shorter one is still valid
            frames[1] = b""
    else:
        frames = frames[:0] if len(frames) == 1 else frames[:-1]
    return frames


@st.composite
def wrong_frames(draw):
    header, blobs = draw(valid_messages)
    extra = draw(st.lists(st.binary(max_size=50), min_size=1, max_size=3))
    return pack(with_id(header), [*blobs, *extra])


random_bytes = st.lists(st.binary(max_size=200), min_size=0, max_size=4)
random_msgpack = st.lists(msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)), min_size=1, max_size=3)
nested_junk = st.dictionaries(st.sampled_from(["v", "type", "id", "job", "index", "width"]), junk_values, max_size=6) \
    .map(lambda h: [msgpack.packb(h, use_bin_type=True)])

#: messages that are always invalid requests (shared with the live-server fuzz test)
malformed_messages = st.one_of(broken_field(), truncated(), wrong_frames())
#: anything at all
arbitrary_messages = st.one_of(random_bytes, random_msgpack, nested_junk, malformed_messages)


def _decode(frames):
    try:
        return unpack(frames, Limits())
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES and exc.message
        return exc


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_messages)
def test_decoder_never_raises_anything_but_protocol_error(frames):
    result = _decode(frames)
    if not isinstance(result, ProtocolError):  # random input that happens to be a valid message
        assert result.type in ("hello", "ping", "list_jobs", "status", "detach", "cancel", "attach", "fetch",
                               "delete_job", "continue_job")


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_messages)
def test_malformed_messages_are_always_refused(frames):
    assert isinstance(_decode(frames), ProtocolError)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_huge_and_odd_buffers(tail):
    # wrong buffer types and non-byte memoryviews are refused, not crashed on
    import array

    for frames in ([None], ["text"], [memoryview(array.array("i", [1, 2, 3]))], [bytearray(tail)], [tail, 5]):
        assert isinstance(_decode(frames), ProtocolError)
