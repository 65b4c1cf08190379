"""ResNet-50 (He et al. 2016) with a convolution factory, and its versatile variant. Built here
because torchvision cannot be installed beside this torch."""

from __future__ import annotations

from torch import nn

from .convs import standard_conv, versatile_v2_conv
from .registry import register_model


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


@register_model
def resnet50(**kwargs):
    """ResNet-50: 25.6M parameters."""
    return ResNet50(**kwargs)


@register_model
def resnet50_versatile(**kwargs):
    """Versatile ResNet-50, the paper's "v2" (Wang et al. 2018, Table 5: 11.0M parameters): every
    bottleneck convolution, downsample shortcuts included, is a VersatileConv2d with two channel
    windows (delta = g = C_in/8), and the 3x3 ones also spatial (3x3 + 1x1 sub-filters); stem and
    classifier stay standard. 11,004,968 parameters."""
    return ResNet50(conv=versatile_v2_conv, **kwargs)
