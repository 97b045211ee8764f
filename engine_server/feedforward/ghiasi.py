"""Ghiasi et al. 2017, "Exploring the structure of a real-time, arbitrary neural artistic stylization
network", as released by Magenta in its mobile form (a MobileNetV2 style predictor distilled from the
paper's Inception-v3 one, and a narrow transformer).

- :class:`StylePredictor` P: a painting (256x256, RGB in [0, 1]) -> a 100-number style vector S.
- :class:`StyleTransformer` T: a content frame (any size, RGB in [0, 1]) and S -> the stylized frame.
  A convolutional encoder (``contract``), five residual blocks and an upsampling decoder (``expand``);
  every normalization after the encoder is a conditional instance normalization whose scale and shift
  are linear functions of S (``StyleNorm``), which is how one network paints in any style.

Each convolution carries its TensorFlow scope (``scope``), the name its weights have in the released
graph; :mod:`engine_server.feedforward.weights` fills them from there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STYLE_VECTOR_SIZE = 100
STYLE_IMAGE_SIZE = 256  # the predictor's input side
INSTANCE_NORM_EPS = 1e-5


class ScopedConv(nn.Conv2d):
    """A convolution that knows its TensorFlow scope (where its weights live in the released graph)."""

    def __init__(self, scope: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, groups=groups, bias=True)
        self.scope = scope


# -- the style prediction network P ----------------------------------------------------------------

class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, 1x1 linear projection; a skip when shapes allow.
    Batch normalization is folded into the convolutions' biases in the released weights."""

    def __init__(self, scope: str, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ScopedConv(f"{scope}/expand", in_channels, hidden, 1) if expansion != 1 else None
        self.depthwise = ScopedConv(f"{scope}/depthwise", hidden, hidden, 3, stride, groups=hidden)
        self.project = ScopedConv(f"{scope}/project", hidden, out_channels, 1)
        self.stride = stride
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = F.relu6(self.depthwise(same_padding(y, self.stride)))
        y = self.project(y)
        return x + y if self.skip else y


def same_padding(x: torch.Tensor, stride: int, kernel: int = 3) -> torch.Tensor:
    """TensorFlow's SAME padding for a ``kernel`` convolution: the extra row and column go last."""
    total = [max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
             for size in x.shape[-2:]]
    return F.pad(x, (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2))


# MobileNetV2 (width 1.0): (expansion t, output channels c, repeats n, first stride s), as in its paper
MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]


class StylePredictor(nn.Module):
    """P: painting -> style vector S, MobileNetV2's features averaged over the image, then a 1x1
    bottleneck to 100 numbers."""

    def __init__(self):
        super().__init__()
        self.stem = ScopedConv("MobilenetV2/Conv", 3, 32, 3, stride=2)
        blocks, channels = [], 32
        for t, c, n, s in MOBILENET_V2:
            for repeat in range(n):
                index = len(blocks)
                scope = "MobilenetV2/expanded_conv" + (f"_{index}" if index else "")
                blocks.append(InvertedResidual(scope, channels, c, s if repeat == 0 else 1, t))
                channels = c
        self.blocks = nn.Sequential(*blocks)
        self.head = ScopedConv("MobilenetV2/Conv_1", channels, 1280, 1)
        self.bottleneck = ScopedConv("mobilenet_conv/Conv", 1280, STYLE_VECTOR_SIZE, 1)

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        """(N, 3, 256, 256) in [0, 1] -> (N, 100)."""
        x = F.relu6(self.stem(same_padding(style, 2)))
        x = F.relu6(self.head(self.blocks(x)))
        x = x.mean(dim=(2, 3), keepdim=True)
        return self.bottleneck(x).flatten(1)


# -- the style transfer network T ------------------------------------------------------------------

class StyleNorm(nn.Module):
    """Conditional instance normalization: normalize each channel over the image, then scale by
    gamma(S) and shift by beta(S), both linear in the style vector (the paper's eq. 5)."""

    def __init__(self, scope: str, channels: int):
        super().__init__()
        self.beta = ScopedConv(f"style_params/{scope}/StyleNorm/Conv", STYLE_VECTOR_SIZE, channels, 1)
        self.gamma = ScopedConv(f"style_params/{scope}/StyleNorm/Conv_1", STYLE_VECTOR_SIZE, channels, 1)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        vector = style[:, :, None, None]
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + INSTANCE_NORM_EPS) * self.gamma(vector) + self.beta(vector)


class ReflectConv(nn.Module):
    """Reflection padding, then a valid convolution (the released network's ``MirrorPad`` + conv); an
    optional nearest-neighbour upsampling first (the decoder's)."""

    def __init__(self, scope: str, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 upsample: int = 1):
        super().__init__()
        self.conv = ScopedConv(scope, in_channels, out_channels, kernel, stride)
        self.pad = kernel // 2
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return self.conv(F.pad(x, (self.pad,) * 4, mode="reflect"))


class ResidualBlock(nn.Module):
    """x + StyleNorm(conv(ReLU(StyleNorm(conv(x)))))."""

    def __init__(self, scope: str, channels: int):
        super().__init__()
        self.conv1 = ReflectConv(f"{scope}/conv1", channels, channels, 3)
        self.norm1 = StyleNorm(f"{scope}/conv1", channels)
        self.conv2 = ReflectConv(f"{scope}/conv2", channels, channels, 3)
        self.norm2 = StyleNorm(f"{scope}/conv2", channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x), style))
        return x + self.norm2(self.conv2(y), style)


class StyleTransformer(nn.Module):
    """T: (content, S) -> stylized image. Encoder 9x9/3x3/3x3 (strides 1, 2, 2; batch norm folded in),
    five residual blocks, decoder x2/x2/x1 upsampling convolutions, a sigmoid to [0, 1]."""

    def __init__(self, widths: tuple[int, int, int] = (8, 16, 32), residual_blocks: int = 5):
        super().__init__()
        a, b, c = widths
        self.contract = nn.ModuleList([
            ReflectConv("transformer/contract/conv1", 3, a, 9),
            ReflectConv("transformer/contract/conv2", a, b, 3, stride=2),
            ReflectConv("transformer/contract/conv3", b, c, 3, stride=2),
        ])
        self.residual = nn.ModuleList(
            ResidualBlock(f"transformer/residual/residual{i + 1}", c) for i in range(residual_blocks))
        self.expand = nn.ModuleList([
            ReflectConv("transformer/expand/conv1/conv", c, b, 3, upsample=2),
            ReflectConv("transformer/expand/conv2/conv", b, a, 3, upsample=2),
            ReflectConv("transformer/expand/conv3/conv", a, 3, 9),
        ])
        self.expand_norms = nn.ModuleList(
            StyleNorm(f"transformer/expand/conv{i + 1}/conv", width) for i, width in enumerate((b, a, 3)))

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """content (N, 3, H, W) in [0, 1], any H and W; style (N, 100) -> (N, 3, H, W) in [0, 1]."""
        height, width = content.shape[-2:]
        # two stride-2 layers: work on a multiple of 4 (reflected), so the decoder lands on the same grid
        x = F.pad(content, (0, -width % 4, 0, -height % 4), mode="reflect")
        for conv in self.contract:
            x = F.relu(conv(x))
        for block in self.residual:
            x = block(x, style)
        for i, (conv, norm) in enumerate(zip(self.expand, self.expand_norms)):
            x = norm(conv(x), style)
            x = F.relu(x) if i < 2 else torch.sigmoid(x)
        return x[..., :height, :width]


class ArbitraryStyleNetwork(nn.Module):
    """P and T together, with where their weights came from."""

    def __init__(self):
        super().__init__()
        self.predictor = StylePredictor()
        self.transformer = StyleTransformer()
        self.source = "untrained"

    @torch.no_grad()
    def style_vector(self, painting: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) in [0, 1] -> (N, 100); the painting is centre-cropped to a square and resized to
        256x256 (area averaging), as the released predictor was fed."""
        height, width = painting.shape[-2:]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = painting[..., top:top + side, left:left + side]
        mode = "area" if side >= STYLE_IMAGE_SIZE else "bilinear"
        square = F.interpolate(square, size=(STYLE_IMAGE_SIZE,) * 2, mode=mode,
                               **({} if mode == "area" else {"align_corners": False}))
        return self.predictor(square)

    @torch.no_grad()
    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.transformer(content, style)
