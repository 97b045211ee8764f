"""One frame's objective: the image that balances content, style, smoothness and temporal terms.

total = content_weight * content + style_weight * strength * style + tv_weight * tv
        + temporal_weight * sum_j temporal_j     (Gatys et al.; Ruder et al. eq. 5-7)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..motion.temporal import temporal_loss
from ..style import losses
from ..style.vgg import CONTENT_LAYERS, STYLE_LAYERS, VGG19Features

FEATURE_LAYERS = tuple(dict.fromkeys(STYLE_LAYERS + CONTENT_LAYERS))


@dataclass
class LossWeights:
    content: float = 5.0
    style: float = 1e2
    temporal: float = 1e3
    tv: float = 1e-3


@dataclass
class Objective:
    """Everything that defines one frame's loss. Targets are fixed tensors on the engine's device."""

    content_features: dict[str, torch.Tensor]
    style_grams: dict[str, torch.Tensor]  # this frame's blend of the styles' Gram matrices
    style_strength: float                 # min(1, sum of this frame's style weights)
    weights: LossWeights
    # (warped earlier output, certainty) pairs; certainties already combined closest-first
    temporal: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    temporal_weight: float | None = None  # overrides weights.temporal (multi-pass uses 5e2)

    def terms(self, image: torch.Tensor, vgg: VGG19Features) -> dict[str, torch.Tensor]:
        feats = vgg(image, FEATURE_LAYERS)
        zero = image.new_zeros(())
        terms = {
            "content": sum((losses.content_loss(feats[k], v) for k, v in self.content_features.items()), zero),
            "style": losses.style_loss(feats, self.style_grams) if self.style_grams else zero,
            "tv": losses.total_variation(image),
            "temporal": sum((temporal_loss(image, w, c) for w, c in self.temporal), zero),
        }
        temporal_weight = self.weights.temporal if self.temporal_weight is None else self.temporal_weight
        terms["total"] = (
            self.weights.content * terms["content"]
            + self.weights.style * self.style_strength * terms["style"]
            + self.weights.tv * terms["tv"]
            + temporal_weight * terms["temporal"]
        )
        return terms
