"""MobileNetV1 (Howard et al. 2017) built from a layer table, with width multiplier alpha,
any input size, and a standard-convolution twin for comparison."""

from __future__ import annotations

from torch import nn

from .._validation import fail
from ..layers import DepthwiseSeparableConv2d, VersatileConv2d
from .registry import register_model

# (out_channels, stride) of the 13 depthwise-separable layers after the first 3x3 conv (32, s2).
MOBILENET_V1_TABLE = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                      (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
SMALL_TABLE = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]  # for 8x8 .. 32x32 inputs


def _conv_bn_relu(cin, cout, stride, versatile=False, channel=False):
    if versatile:
        # channel sub-filters: two windows of 3/4 of the inputs, offset by a quarter
        delta = cin // 4 if channel and cin % 4 == 0 and cout % 4 == 0 else 0
        conv = VersatileConv2d(cin, cout, 3, stride, 1, bias=False, delta=delta, g=max(1, delta))
    else:
        conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MobileNetV1(nn.Module):
    """MobileNetV1: a 3x3 convolution, then depthwise-separable blocks from `table`, global
    average pooling and a linear classifier.

    Args:
        num_classes: outputs of the classifier. alpha: width multiplier (channels scale by it,
        rounded, at least 8). in_channels: input channels. table: (out_channels, stride) per block.
        first_stride: stride of the first convolution (2 for ImageNet, 1 for small inputs).
        separable: False builds the standard-convolution twin (every block a full 3x3 conv).
        versatile: with separable=False, every block is a spatial VersatileConv2d (3x3 primary
        filters, each giving a 3x3 and a 1x1 output: half the filters of the twin), and the
        last `versatile_channel_blocks` blocks (the widest) also get two channel sub-filters.
        algorithm: depthwise algorithm of every block ("auto" by default).

    Shapes: (N, in_channels, H, W) -> (N, num_classes), any H, W >= 1.

    Example:
        >>> m = MobileNetV1(num_classes=1000)
        >>> sum(p.numel() for p in m.parameters())
        4231976
    """

    def __init__(self, num_classes=1000, alpha=1.0, in_channels=3, table=MOBILENET_V1_TABLE,
                 first_stride=2, separable=True, versatile=False, versatile_channel_blocks=0, dropout=0.0,
                 algorithm="auto"):
        super().__init__()
        if not isinstance(alpha, (int, float)) or alpha <= 0:
            fail("MobileNetV1", "`alpha` must be a positive number.", f"alpha={alpha!r}")
        ch = lambda c: max(8, int(round(c * alpha)))
        cin = ch(32)
        layers = [_conv_bn_relu(in_channels, cin, first_stride)]
        for i, (cout, stride) in enumerate(table):
            cout = ch(cout)
            if separable:
                layers.append(DepthwiseSeparableConv2d(
                    cin, cout, 3, stride, 1, norm_layer=nn.BatchNorm2d,
                    act_layer=lambda: nn.ReLU(inplace=True), algorithm=algorithm))
            else:
                channel = i >= len(table) - versatile_channel_blocks
                layers.append(_conv_bn_relu(cin, cout, stride, versatile, channel))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(cin, num_classes)
        self.num_features = cin

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def _entry(alpha, **defaults):
    def build(**kwargs):
        return MobileNetV1(alpha=alpha, **{**defaults, **kwargs})
    return build


for _alpha, _suffix in ((1.0, "100"), (0.75, "075"), (0.5, "050"), (0.25, "025")):
    for _name, _defaults in ((f"mobilenet_v1_{_suffix}", {}),
                             (f"mobilenet_v1_{_suffix}_standard", {"separable": False})):
        _fn = _entry(_alpha, **_defaults)
        _fn.__name__ = _name
        _fn.__doc__ = f"MobileNetV1 alpha={_alpha}{' (standard-conv twin)' if _defaults else ''}."
        register_model(_fn)


@register_model
def mobilenet_v1(**kwargs):
    """Alias of mobilenet_v1_100."""
    return MobileNetV1(**kwargs)


@register_model
def mobilenet_v1_small(**kwargs):
    """Five separable blocks, first stride 1: for 8x8 to 32x32 inputs (digits, CIFAR)."""
    return MobileNetV1(**{"table": SMALL_TABLE, "first_stride": 1, "in_channels": 1, "num_classes": 10, **kwargs})


@register_model
def mobilenet_v1_small_standard(**kwargs):
    """Standard-convolution twin of mobilenet_v1_small."""
    return MobileNetV1(**{"table": SMALL_TABLE, "first_stride": 1, "in_channels": 1, "num_classes": 10,
                          "separable": False, **kwargs})


@register_model
def mobilenet_v1_small_versatile(**kwargs):
    """Versatile twin of mobilenet_v1_small: every block a spatial VersatileConv2d."""
    return MobileNetV1(**{"table": SMALL_TABLE, "first_stride": 1, "in_channels": 1, "num_classes": 10,
                          "separable": False, "versatile": True, "versatile_channel_blocks": 1, **kwargs})
