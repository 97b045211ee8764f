"""Backward warping with known translations."""
import numpy as np
import torch

from engine_server.motion.warp import flow_to_tensor, warp, warp_numpy


def test_integer_translation_is_exact_inside():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (20, 30, 3)).astype(np.float32)
    flow = np.zeros((20, 30, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3, -2  # sample at (x + 3, y - 2)
    out = warp_numpy(img, flow)
    assert np.allclose(out[2:, :-3], img[:-2, 3:], atol=1e-3)


def test_half_pixel_shift_interpolates_bilinearly():
    img = np.zeros((4, 4), np.float32)
    img[:, 2] = 10.0
    flow = np.zeros((4, 4, 2), np.float32)
    flow[..., 0] = 0.5
    out = warp_numpy(img, flow)
    assert np.allclose(out[:, 1], 5.0) and np.allclose(out[:, 2], 5.0)


def test_warp_keeps_gradients_and_batch():
    img = torch.rand(2, 3, 8, 8, requires_grad=True)
    out = warp(img, flow_to_tensor(np.ones((8, 8, 2), np.float32), "cpu"))
    out.sum().backward()
    assert out.shape == img.shape and img.grad is not None
