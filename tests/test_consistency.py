import math

import numpy as np
import pytest

from conftest import shared_path
from engine_server.motion.consistency import (
    certainty,
    check_files,
    reliability,
    to_uint8,
    unsmoothed_reliability,
)
from engine_server.io.flowfiles import read_flo, read_pgm, write_flo


def constant_flow(h, w, u, v):
    flow = np.empty((h, w, 2), np.float32)
    flow[..., 0] = u
    flow[..., 1] = v
    return flow


def test_translation_with_exact_inverse():
    h, w = 40, 50
    forward = constant_flow(h, w, 3.0, -3.0)
    backward = constant_flow(h, w, -3.0, 3.0)
    raw = unsmoothed_reliability(forward, backward)
    # q = p + (3, -3) must keep floor(q) and floor(q) + 1 inside: x + 4 < w and y - 3 >= 0.
    expected = np.full((h, w), 255.0, np.float32)
    expected[:, w - 4:] = 0
    expected[:3, :] = 0
    np.testing.assert_array_equal(raw, expected)

    rel = reliability(forward, backward)
    assert rel.dtype == np.float32 and rel.shape == (h, w)
    np.testing.assert_allclose(rel[5:, : w - 6], 255.0, atol=1e-3)  # 2 px from the band: untouched
    assert np.all(rel[:3, :] < 128) and np.all(rel[:, w - 4:] < 128)
    assert np.all(rel[0, :] == 0) and np.all(rel[:, w - 1] == 0)
    np.testing.assert_allclose(certainty(forward, backward), rel / 255.0, rtol=1e-6)


def square_scene(h=48, w=64, y0=16, x0=16, size=16, shift=6):
    """A square moving right by `shift` over a static background, flows built by hand."""
    forward = np.zeros((h, w, 2), np.float32)
    forward[y0:y0 + size, x0:x0 + size, 0] = shift  # frame 1 -> 2: the square moves
    backward = np.zeros((h, w, 2), np.float32)
    backward[y0:y0 + size, x0 + shift:x0 + shift + size, 0] = -shift  # frame 2 -> 1
    return forward, backward


def test_occluded_background_is_zero():
    y0, x0, size, shift = 16, 16, 16, 6
    forward, backward = square_scene(y0=y0, x0=x0, size=size, shift=shift)
    rows = slice(y0, y0 + size)

    # Frame 1 background that the square covers in frame 2.
    covered = (rows, slice(x0 + size, x0 + size + shift))
    raw = unsmoothed_reliability(forward, backward)
    assert np.all(raw[covered] == -255)
    c = certainty(forward, backward)
    assert np.all(c[covered] == 0)
    assert np.all(c[y0 + 3:y0 + size - 3, x0 + 3:x0 + size - 3] == pytest.approx(1.0, abs=1e-5))  # the square
    assert c[40, 5] == pytest.approx(1.0, abs=1e-5)  # static background far away

    # Frame 2 background uncovered by the square (checked the other way round).
    uncovered = (rows, slice(x0, x0 + shift))
    assert np.all(unsmoothed_reliability(backward, forward)[uncovered] == -255)
    assert np.all(certainty(backward, forward)[uncovered] == 0)


def test_motion_boundary_is_zero():
    h, w = 32, 40
    forward = np.zeros((h, w, 2), np.float32)
    forward[:, w // 2:, 1] = 1.0  # right half moves down by 1 px: a sharp discontinuity at x = w/2
    backward = -forward  # exact inverse: no occlusion anywhere inside
    raw = unsmoothed_reliability(forward, backward)
    rows = slice(2, h - 2)
    # The central difference sees the step in the two columns either side of it: 0.5^2 > 0.002.
    assert np.all(raw[rows, w // 2 - 1:w // 2 + 1] == 0)
    assert np.all(raw[rows, : w // 2 - 1] == 255) and np.all(raw[rows, w // 2 + 1:-2] == 255)
    c = certainty(forward, backward)
    assert np.all(c[rows, w // 2 - 1:w // 2 + 1] < 0.5)
    assert np.all(c[2:h - 4, 5:w // 2 - 3] > 0.999)  # 2 px clear of the boundary and the bottom band


def test_occlusion_threshold_exact():
    """w = (2, 0), w^ = (-2 + d, 0): occluded iff d^2 >= 0.01 (4 + (2 - d)^2) + 0.5,
    i.e. 0.99 d^2 + 0.04 d - 0.58 >= 0, i.e. d >= 0.74548 (no motion boundary: both flows constant)."""
    d_star = (-0.04 + math.sqrt(0.04**2 + 4 * 0.99 * 0.58)) / (2 * 0.99)
    assert d_star == pytest.approx(0.74548, abs=1e-5)
    h, w = 12, 12
    forward = constant_flow(h, w, 2.0, 0.0)
    for d, expected in [(0.74, 255), (0.75, -255)]:
        raw = unsmoothed_reliability(forward, constant_flow(h, w, -2.0 + d, 0.0))
        assert raw[5, 5] == expected, d
    # Without the relative term the constant alone decides: w = 0, w^ = (d, 0), 0.99 d^2 >= 0.5.
    zero = np.zeros((h, w, 2), np.float32)
    assert unsmoothed_reliability(zero, constant_flow(h, w, 0.710, 0.0))[5, 5] == 255
    assert unsmoothed_reliability(zero, constant_flow(h, w, 0.712, 0.0))[5, 5] == -255


def linear_flow(h, w, g, x0):
    """u = g (x - x0), v = 0, and its exact inverse u^(x') = -g (x' - x0) / (1 + g)."""
    x = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    forward = np.zeros((h, w, 2), np.float32)
    forward[..., 0] = g * (x - x0)
    backward = np.zeros((h, w, 2), np.float32)
    backward[..., 0] = -g * (x - x0) / (1 + g)
    return forward, backward


def test_motion_boundary_threshold_exact():
    """|grad u|^2 = g^2 for u = g (x - x0). At x0 (u = 0) the boundary test is g^2 > 0.002
    (g > 0.04472); 5 px right of it (u = 5 g) it is g^2 > 0.25 g^2 + 0.002 (g > 0.05164)."""
    h, w, x0 = 12, 24, 8
    for g, at_x0, at_x5 in [(0.044, 255, 255), (0.045, 0, 255), (0.051, 0, 255), (0.052, 0, 0)]:
        raw = unsmoothed_reliability(*linear_flow(h, w, g, x0))
        assert (raw[6, x0], raw[6, x0 + 5]) == (at_x0, at_x5), g


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError):
        reliability(np.zeros((4, 5, 2), np.float32), np.zeros((5, 4, 2), np.float32))


RUDER_PAIRS = [
    pair
    for i in range(1, 5)
    for pair in (
        (f"backward_{i + 1}_{i}", f"forward_{i}_{i + 1}", f"reliable_{i + 1}_{i}"),
        (f"forward_{i}_{i + 1}", f"backward_{i + 1}_{i}", f"reliable_{i}_{i + 1}"),
    )
]


@pytest.mark.parametrize("checked,other,mask", RUDER_PAIRS, ids=[p[2] for p in RUDER_PAIRS])
def test_matches_reference_checker(checked, other, mask):
    flow = read_flo(shared_path("ruder_example", checked + ".flo"))
    flow_other = read_flo(shared_path("ruder_example", other + ".flo"))
    ref = read_pgm(shared_path("ruder_example", mask + ".pgm"))
    rel = reliability(flow, flow_other)
    agreement = np.mean((rel >= 128) == (ref >= 128))
    assert agreement >= 0.995, agreement
    # Measured: every byte equal. Allow a few last-bit differences from another OpenCV build.
    ours = to_uint8(rel)
    assert np.mean(ours == ref) >= 0.999
    assert np.abs(ours.astype(np.int16) - ref).mean() < 0.01


def test_check_files_writes_reliability(tmp_path):
    forward = np.zeros((30, 40, 2), np.float32)
    forward[..., 0], forward[..., 1] = 1.25, -0.5
    backward = -forward
    backward[10:20, 12:24] += (1.5, 0.5)  # a patch that fails the round trip: occluded
    write_flo(tmp_path / "b.flo", backward)
    write_flo(tmp_path / "f.flo", forward)
    mask = check_files(tmp_path / "b.flo", tmp_path / "f.flo", tmp_path / "r.pgm")
    written = read_pgm(tmp_path / "r.pgm")
    np.testing.assert_array_equal(written, mask)
    np.testing.assert_array_equal(written, to_uint8(reliability(backward, forward)))
    assert np.all(written[12:18, 14:22] == 0) and np.all(written[2:6, 5:30] == 254)


def test_check_files_reproduces_reference_file(tmp_path):
    out = tmp_path / "reliable_2_1.pgm"
    check_files(shared_path("ruder_example", "backward_2_1.flo"),
                shared_path("ruder_example", "forward_1_2.flo"), out)
    ref = shared_path("ruder_example", "reliable_2_1.pgm").read_bytes()
    data = out.read_bytes()
    assert len(data) == len(ref) and data[:15] == ref[:15]
    assert np.mean(np.frombuffer(data, np.uint8) == np.frombuffer(ref, np.uint8)) >= 0.999


def test_check_files_size_mismatch_names_file(tmp_path):
    write_flo(tmp_path / "a.flo", np.zeros((10, 12, 2), np.float32))
    write_flo(tmp_path / "b.flo", np.zeros((10, 13, 2), np.float32))
    with pytest.raises(ValueError, match="b.flo"):
        check_files(tmp_path / "a.flo", tmp_path / "b.flo", tmp_path / "r.pgm")
    assert not (tmp_path / "r.pgm").exists()
