"""Temporal constraints: warped earlier outputs, masks, initialization, flow computed ahead."""
import numpy as np
import torch

from engine_server.motion import temporal
from engine_server.motion.flow import DISFlow


def shifted_clip(n=5, shift=2):
    rng = np.random.default_rng(7)
    base = rng.integers(0, 255, (40, 60 + n * shift, 3)).astype(np.uint8)
    base = np.asarray(base // 2 + 60, np.uint8)
    return [np.ascontiguousarray(base[:, n * shift - t * shift: n * shift - t * shift + 60]) for t in range(n)]


def test_warped_previous_output_lands_on_the_current_frame():
    clip = shifted_clip(2)
    pair = temporal.pair_flow(DISFlow(), clip[0], clip[1])
    earlier = torch.from_numpy(clip[0].astype(np.float32).transpose(2, 0, 1))[None]
    [(warped, mask)] = temporal.constraints([(pair, earlier)], "cpu")
    current = clip[1].astype(np.float32).transpose(2, 0, 1)[None]
    trusted = mask[0, 0].numpy() > 0.9
    assert trusted.mean() > 0.7  # most of the frame is visible in both
    error = np.abs(warped.numpy() - current).mean(axis=1)[0]
    assert error[trusted].mean() < 3.0
    # the band that entered from the left (x < 2) has no source in the earlier frame: not trusted
    assert mask[0, 0, 5:-5, :2].max() < 0.5


def test_initialization_fills_untrusted_pixels_from_content():
    content = torch.full((1, 3, 2, 2), 10.0)
    warped = torch.full((1, 3, 2, 2), 50.0)
    mask = torch.tensor([[[[1.0, 0.0], [0.5, 1.0]]]])
    init = temporal.initialization(content, warped, mask)
    assert init[0, 0].tolist() == [[50.0, 10.0], [30.0, 50.0]]


def test_stylized_fill_carries_the_style_change_onto_the_new_content():
    """Pixels the flow cannot carry start from the new content plus what the style did to the previous
    frame there (not the raw content): with a 2 px shift, the change lands 2 px over."""
    content = torch.full((1, 3, 4, 6), 100.0)
    previous_content = torch.full((1, 3, 4, 6), 80.0)
    previous_output = previous_content.clone()
    previous_output[..., 3] += 40.0  # the style brightened column 3 of the previous frame
    flow = np.zeros((4, 6, 2), np.float32)
    flow[..., 0] = 1.0  # current pixel x shows what the previous frame had at x + 1
    fill = temporal.stylized_fill(content, previous_output, previous_content, flow)
    assert fill[0, 0, 1].tolist() == [100.0, 100.0, 140.0, 100.0, 100.0, 100.0]
    mask = torch.zeros((1, 1, 4, 6))
    assert torch.equal(temporal.initialization(content, previous_output, mask, fill), fill)
    assert float(temporal.stylized_fill(content + 200, previous_output, previous_content, flow).max()) == 255.0


def test_flow_ahead_gives_the_same_pairs_in_background():
    clip = shifted_clip(5)
    now = temporal.FlowAhead(DISFlow(), clip, (1, 2, 4), background=False)
    ahead = temporal.FlowAhead(DISFlow(), clip, (1, 2, 4), background=True, workers=2)
    try:
        for index in range(1, 5):
            a, b = now.pairs(index), ahead.pairs(index)
            assert [j for j, _ in a] == [j for j, _ in b] == [j for j in (1, 2, 4) if index - j >= 0]
            for (_, pa), (_, pb) in zip(a, b):
                assert np.array_equal(pa.b_to_a, pb.b_to_a) and np.array_equal(pa.certainty_on_b, pb.certainty_on_b)
        assert not ahead.pending  # nothing computed past the last frame
    finally:
        ahead.close()
