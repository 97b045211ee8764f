import numpy as np
import pytest

from conftest import shared_path
from engine_server.io.flowfiles import read_flo, read_pgm, write_flo, write_pgm


def test_flo_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 5, (7, 11, 2)).astype(np.float32)
    write_flo(tmp_path / "a.flo", flow)
    assert (tmp_path / "a.flo").stat().st_size == 12 + 7 * 11 * 2 * 4
    back = read_flo(tmp_path / "a.flo")
    assert back.dtype == np.float32 and back.shape == (7, 11, 2)
    np.testing.assert_array_equal(back, flow)
    back[0, 0] = 1.0  # the result is a writable array of its own


def test_flo_header_is_middlebury(tmp_path):
    write_flo(tmp_path / "a.flo", np.zeros((3, 5, 2), np.float32))
    head = (tmp_path / "a.flo").read_bytes()[:12]
    assert head[:4] == b"PIEH"
    assert np.frombuffer(head[:4], "<f4")[0] == np.float32(202021.25)
    assert tuple(np.frombuffer(head[4:], "<i4")) == (5, 3)  # width, height


def test_flo_bad_tag_names_file(tmp_path):
    path = tmp_path / "bad.flo"
    path.write_bytes(b"XXXX" + np.array([2, 2], "<i4").tobytes() + bytes(32))
    with pytest.raises(ValueError, match="bad.flo"):
        read_flo(path)


def test_flo_truncated_names_file(tmp_path):
    path = tmp_path / "short.flo"
    write_flo(path, np.ones((4, 4, 2), np.float32))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="short.flo.*truncated"):
        read_flo(path)
    path.write_bytes(b"PIEH\x01")
    with pytest.raises(ValueError, match="short.flo"):
        read_flo(path)


def test_flo_absurd_size(tmp_path):
    path = tmp_path / "huge.flo"
    path.write_bytes(b"PIEH" + np.array([-3, 1 << 30], "<i4").tobytes())
    with pytest.raises(ValueError, match="huge.flo.*size"):
        read_flo(path)


def test_pgm_round_trip_and_header(tmp_path):
    mask = np.arange(6 * 9, dtype=np.uint8).reshape(6, 9) * 4
    write_pgm(tmp_path / "m.pgm", mask)
    data = (tmp_path / "m.pgm").read_bytes()
    assert data.startswith(b"P5\n9 6\n255\n") and len(data) == len(b"P5\n9 6\n255\n") + 54
    np.testing.assert_array_equal(read_pgm(tmp_path / "m.pgm"), mask)


def test_pgm_rejects_wrong_input(tmp_path):
    with pytest.raises(ValueError):
        write_pgm(tmp_path / "x.pgm", np.zeros((3, 3), np.float32))
    (tmp_path / "p2.pgm").write_bytes(b"P2\n2 2\n255\n0 0 0 0\n")
    with pytest.raises(ValueError, match="p2.pgm"):
        read_pgm(tmp_path / "p2.pgm")
    (tmp_path / "cut.pgm").write_bytes(b"P5\n4 4\n255\n" + bytes(10))
    with pytest.raises(ValueError, match="cut.pgm.*truncated"):
        read_pgm(tmp_path / "cut.pgm")


def test_reference_files_round_trip_byte_for_byte(tmp_path):
    """Our writers produce exactly the bytes of the reference pipeline's files."""
    pgm = shared_path("ruder_example", "reliable_1_2.pgm")
    flo = shared_path("ruder_example", "forward_1_2.flo")
    mask = read_pgm(pgm)
    assert mask.shape == (350, 450)
    write_pgm(tmp_path / "r.pgm", mask)
    assert (tmp_path / "r.pgm").read_bytes() == pgm.read_bytes()
    flow = read_flo(flo)
    assert flow.shape == (350, 450, 2)
    write_flo(tmp_path / "f.flo", flow)
    assert (tmp_path / "f.flo").read_bytes() == flo.read_bytes()
