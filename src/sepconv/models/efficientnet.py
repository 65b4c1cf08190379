"""EfficientNet-B0 (Tan & Le 2019), built as torchvision builds it: MBConv blocks of plain
``nn.Conv2d`` (depthwise with groups=C), BatchNorm2d, SiLU, squeeze-excitation, residuals;
optionally with TensorFlow's "same" padding (timm's ``tf_`` models), which pads each input
asymmetrically with ``F.pad`` before the convolution."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from .mobilenet_v2 import make_divisible
from .registry import register_model

# (expansion, kernel, stride, input channels, output channels, repeats) of B0.
EFFICIENTNET_B0_TABLE = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                         (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's "same" padding: total padding max((ceil(n/s)-1)*s +
    (k-1)*d + 1 - n, 0) per side pair, the odd pixel at the bottom/right, applied by F.pad."""

    def __init__(self, cin, cout, k, stride=1, groups=1, bias=True):
        super().__init__(cin, cout, k, stride, 0, groups=groups, bias=bias)

    def forward(self, x):
        pads = []
        for n, k, s, d in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv_bn_act(cin, cout, k, stride=1, groups=1, act=True, tf_padding=False):
    conv = (Conv2dSame(cin, cout, k, stride, groups=groups, bias=False) if tf_padding
            else nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False))
    layers = [conv, nn.BatchNorm2d(cout, eps=1e-3)]
    return nn.Sequential(*layers, nn.SiLU(inplace=True)) if act else nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Global average pool, 1x1 reduce + SiLU, 1x1 expand + sigmoid, channel scaling."""

    def __init__(self, channels, squeeze):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.fc2(self.act(self.fc1(s))).sigmoid()


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, stride, t, tf_padding=False):
        super().__init__()
        hidden = make_divisible(cin * t)
        layers = [conv_bn_act(cin, hidden, 1)] if hidden != cin else []
        layers += [conv_bn_act(hidden, hidden, k, stride, groups=hidden, tf_padding=tf_padding),
                   SqueezeExcitation(hidden, max(1, cin // 4)), conv_bn_act(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class EfficientNet(nn.Module):
    """EfficientNet-B0 (width and depth 1.0). `tf_padding=True` uses TensorFlow's "same"
    padding in the stem and the depthwise convolutions (as timm's tf_efficientnet_b0).

    Shapes: (N, in_channels, H, W) -> (N, num_classes).

    Example:
        >>> sum(p.numel() for p in EfficientNet().parameters())
        5288548
    """

    def __init__(self, num_classes=1000, in_channels=3, dropout=0.2, tf_padding=False):
        super().__init__()
        layers = [conv_bn_act(in_channels, 32, 3, 2, tf_padding=tf_padding)]
        for t, k, s, cin, cout, n in EFFICIENTNET_B0_TABLE:
            for i in range(n):
                layers.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, t, tf_padding))
        layers.append(conv_bn_act(320, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def efficientnet_b0(**kwargs):
    """EfficientNet-B0: 5,288,548 parameters (torchvision's count)."""
    return EfficientNet(**kwargs)


@register_model
def tf_efficientnet_b0(**kwargs):
    """EfficientNet-B0 with TensorFlow's asymmetric "same" padding (F.pad before each strided
    convolution)."""
    return EfficientNet(tf_padding=True, **kwargs)
