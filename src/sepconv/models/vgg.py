"""VGG-16 (Simonyan & Zisserman 2015, configuration D, with batch norm) with a convolution
factory, and its versatile variant."""

from __future__ import annotations

from torch import nn

from .convs import spatial_versatile_conv, standard_conv
from .registry import register_model


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
def vgg16(**kwargs):
    """VGG-16 with batch norm: 138.4M parameters."""
    return VGG16(**kwargs)


@register_model
def vgg16_versatile(**kwargs):
    """VGG-16 with spatial versatile 3x3 filters."""
    return VGG16(conv=spatial_versatile_conv, **kwargs)
