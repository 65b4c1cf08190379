"""ConvNeXt-T (Liu et al. 2022), built as torchvision builds it: a 4x4 patchify stem, blocks of
7x7 depthwise ``nn.Conv2d(groups=C)``, LayerNorm over channels (by permuting to NHWC),
Linear -> GELU -> Linear, layer scale and a residual; LayerNorm + 2x2 convolutions between
stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim, layer_scale=1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.layer_scale * y


class ConvNeXt(nn.Module):
    """ConvNeXt with `depths` blocks of widths `dims` per stage (ConvNeXt-T by default).

    Shapes: (N, in_channels, H, W) -> (N, num_classes), H and W multiples of 32.

    Example:
        >>> sum(p.numel() for p in ConvNeXt().parameters())
        28589128
    """

    def __init__(self, num_classes=1000, in_channels=3, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768),
                 layer_scale=1e-6):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(in_channels, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i:
                layers.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)))
            layers.append(nn.Sequential(*(CNBlock(dim, layer_scale) for _ in range(depth))))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = LayerNorm2d(dims[-1], eps=1e-6)
        self.classifier = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        return self.classifier(self.norm(self.pool(self.features(x))).flatten(1))


@register_model
def convnext_tiny(**kwargs):
    """ConvNeXt-T: 28,589,128 parameters (torchvision's count)."""
    return ConvNeXt(**kwargs)


@register_model
def convnext_atto(**kwargs):
    """A small ConvNeXt (depths 2-2-6-2, widths 40-80-160-320) for tests and small inputs."""
    return ConvNeXt(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), **kwargs)
