"""ResNet-50 and VGG-16 with a convolution factory, and their versatile variants (Wang et al.,
NeurIPS 2018): every 3x3 convolution becomes a spatial VersatileConv2d (3x3 + 1x1 sub-filters,
half the primary filters) and every 1x1 convolution a channel VersatileConv2d with four
channel windows (a quarter of the primary filters). Built here because torchvision cannot be
installed beside this torch; layer shapes follow He et al. 2016 and Simonyan & Zisserman 2015.
"""

from __future__ import annotations

from torch import nn

from ..layers import VersatileConv2d
from .registry import register_model

CHANNEL_WINDOWS = 4  # channel sub-filters per 1x1 primary filter


def standard_conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)


def versatile_conv(cin, cout, k, stride=1):
    """3x3 -> spatial versatile (s = 2); 1x1 -> channel versatile with 4 windows of 5/8 of the
    inputs at strides of 1/8 (delta = 3g, g = C_in / 8), when the sizes allow it."""
    if k == 1:
        g = cin // 8
        if g and cin % 8 == 0 and cout % CHANNEL_WINDOWS == 0:
            return VersatileConv2d(cin, cout, 1, stride, 0, bias=False, delta=3 * g, g=g)
        return standard_conv(cin, cout, 1, stride)
    if cout % ((k + 1) // 2) == 0:
        return VersatileConv2d(cin, cout, k, stride, k // 2, bias=False)
    return standard_conv(cin, cout, k, stride)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, conv):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            conv(cin, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            conv(width, width, 3, stride), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            conv(width, cout, 1), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNet50(nn.Module):
    """ResNet-50 (stages of 3, 4, 6, 3 bottlenecks). `conv(cin, cout, k, stride)` builds every
    convolution after the 7x7 stem.

    Shapes: (N, 3, H, W) -> (N, num_classes).
    """

    def __init__(self, num_classes=1000, conv=standard_conv):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(n):
                blocks.append(Bottleneck(cin, width, stride if i == 0 else 1, conv))
                cin = width * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


class VGG16(nn.Module):
    """VGG-16 (configuration D) with batch norm; `conv` builds every 3x3 convolution except the
    first (3 input channels).

    Shapes: (N, 3, 224, 224) -> (N, num_classes).
    """

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes=1000, conv=standard_conv):
        super().__init__()
        layers, cin = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [(standard_conv if cin == 3 else conv)(cin, v, 3), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(inplace=True),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def resnet50(**kwargs):
    """ResNet-50: 25.6M parameters."""
    return ResNet50(**kwargs)


@register_model
def resnet50_versatile(**kwargs):
    """Versatile ResNet-50: 3x3 spatial and 1x1 channel versatile filters (paper: 11.0M)."""
    return ResNet50(conv=versatile_conv, **kwargs)


@register_model
def vgg16(**kwargs):
    """VGG-16 with batch norm: 138.4M parameters."""
    return VGG16(**kwargs)


@register_model
def vgg16_versatile(**kwargs):
    """VGG-16 with spatial versatile 3x3 filters."""
    return VGG16(conv=versatile_conv, **kwargs)
