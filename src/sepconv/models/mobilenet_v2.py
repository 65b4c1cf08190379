"""MobileNetV2 (Sandler et al. 2018), built as torchvision and timm build it: plain
``nn.Conv2d(groups=C)`` depthwise convolutions, BatchNorm2d, ReLU6, inverted residuals with
linear bottlenecks."""

from __future__ import annotations

from torch import nn

from .._validation import fail
from .registry import register_model

# (expansion t, output channels c, repeats n, first stride s), the paper's Table 2.
MOBILENET_V2_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                      (6, 160, 3, 2), (6, 320, 1, 1)]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never below 90% of `v` (torchvision, timm)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_act(cin, cout, k, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expansion (if t > 1), 3x3 depthwise, 1x1 linear projection; identity shortcut when
    the shape is kept."""

    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = [conv_bn_act(cin, hidden, 1)] if t != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden), conv_bn_act(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with width multiplier `alpha`.

    Shapes: (N, in_channels, H, W) -> (N, num_classes).

    Example:
        >>> sum(p.numel() for p in MobileNetV2().parameters())
        3504872
    """

    def __init__(self, num_classes=1000, alpha=1.0, in_channels=3, dropout=0.2):
        super().__init__()
        if not isinstance(alpha, (int, float)) or alpha <= 0:
            fail("MobileNetV2", "`alpha` must be a positive number.", f"alpha={alpha!r}")
        cin = make_divisible(32 * alpha)
        last = make_divisible(1280 * max(1.0, alpha))
        layers = [conv_bn_act(in_channels, cin, 3, 2)]
        for t, c, n, s in MOBILENET_V2_TABLE:
            cout = make_divisible(c * alpha)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_act(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def mobilenet_v2_100(**kwargs):
    """MobileNetV2, width 1.0: 3,504,872 parameters (torchvision's count)."""
    return MobileNetV2(**kwargs)


@register_model
def mobilenet_v2_050(**kwargs):
    """MobileNetV2, width 0.5."""
    return MobileNetV2(alpha=0.5, **kwargs)
