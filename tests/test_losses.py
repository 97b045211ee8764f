"""Loss values against hand computations."""
import torch

from engine_server.motion import temporal
from engine_server.style import losses


def test_gram_matches_hand_computation():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 2)  # C=2, H=1, W=2
    # rows (1, 2) and (3, 4): F F^T = [[5, 11], [11, 25]], divided by C*H*W = 4
    expected = torch.tensor([[5.0, 11.0], [11.0, 25.0]]) / 4
    assert torch.allclose(losses.gram(f), expected)


def test_content_loss_is_mean_squared_error():
    a = torch.zeros(1, 2, 2, 2)
    b = torch.zeros(1, 2, 2, 2)
    b[0, 0, 0, 0] = 4.0
    assert losses.content_loss(a, b).item() == 16.0 / 8


def test_style_loss_sums_layers_of_gram_mse():
    f1 = torch.ones(1, 1, 2, 2)           # gram = 4 / 4 = 1
    f2 = 2 * torch.ones(1, 1, 1, 1)       # gram = 4 / 1 = 4
    targets = {"a": torch.zeros(1, 1), "b": torch.ones(1, 1)}
    value = losses.style_loss({"a": f1, "b": f2}, targets)
    assert value.item() == (1 - 0) ** 2 + (4 - 1) ** 2


def test_total_variation_per_pixel_times_reference_area():
    img = torch.zeros(1, 3, 3, 3)
    img[0, 0, 0, 1] = 2.0  # one channel, one pixel
    # pixels (0,0) and (0,1) see a horizontal difference of 2 and pixel (0,1) a vertical one of 2;
    # over the 2x2 interior: 0.5 * (4 + 4 + 4) / 4 pixels (summed over channels)
    expected = 0.5 * 12 / 4 * losses.REFERENCE_PIXELS
    assert abs(losses.total_variation(img).item() - expected) < 1e-3


def test_total_variation_does_not_grow_with_resolution():
    small = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1, 3, 1, 1)
    big = torch.nn.functional.interpolate(small, scale_factor=4, mode="nearest")
    # same picture, 16x the pixels: a per-pixel measure stays within the same order of magnitude
    ratio = losses.total_variation(big).item() / losses.total_variation(small).item()
    assert 0.05 < ratio < 1.5


def test_temporal_loss_weights_pixels_by_certainty():
    x = torch.zeros(1, 3, 1, 2)
    w = torch.ones(1, 3, 1, 2) * 3.0
    c = torch.tensor([[[[1.0, 0.0]]]])
    # only the first pixel counts: 3 channels * 9 over 6 elements
    assert temporal.temporal_loss(x, w, c).item() == 27.0 / 6


def test_closest_first_combination():
    c1 = torch.tensor([1.0, 0.0, 0.5, 0.0])
    c2 = torch.tensor([1.0, 1.0, 1.0, 0.0])
    c4 = torch.tensor([1.0, 1.0, 1.0, 1.0])
    out = temporal.closest_first([c1, c2, c4])
    assert torch.equal(out[0], c1)
    assert torch.allclose(out[1], torch.tensor([0.0, 1.0, 0.5, 0.0]))
    assert torch.allclose(out[2], torch.tensor([0.0, 0.0, 0.0, 1.0]))
