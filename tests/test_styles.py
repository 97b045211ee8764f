"""Per-frame blends of the styles' Gram targets."""
import numpy as np
import torch

from engine_server.style.targets import StyleTargets


def make_targets(grams):
    targets = StyleTargets.__new__(StyleTargets)
    targets.grams = grams
    return targets


def test_blend_is_normalized_mix_with_capped_strength():
    a = {layer: torch.full((2, 2), 1.0) for layer in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")}
    b = {layer: torch.full((2, 2), 3.0) for layer in a}
    targets = make_targets([a, b])
    mixed, strength = targets.blend(np.array([0.25, 0.75]))
    assert strength == 1.0 and torch.allclose(mixed["relu3_1"], torch.full((2, 2), 2.5))
    mixed, strength = targets.blend(np.array([1.0, 1.0]))
    assert strength == 1.0 and torch.allclose(mixed["relu1_1"], torch.full((2, 2), 2.0))
    mixed, strength = targets.blend(np.array([0.3, 0.0]))
    assert abs(strength - 0.3) < 1e-12 and torch.allclose(mixed["relu5_1"], a["relu5_1"])
    assert targets.blend(np.array([0.0, 0.0])) == ({}, 0.0)
