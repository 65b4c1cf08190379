"""Replace depthwise-separable blocks by the standard convolutions they stand for."""

from __future__ import annotations

import copy

from torch import nn

from ..layers import DepthwiseSeparableConv2d


def to_standard(model: nn.Module) -> nn.Module:
    """A copy of `model` where every :class:`DepthwiseSeparableConv2d` becomes one
    ``nn.Conv2d(in, out, k, stride, padding, dilation)`` followed by the block's final norm
    and activation: the layer the separable block replaces (for cost comparisons; weights
    are freshly initialised).

    Example:
        >>> m = nn.Sequential(DepthwiseSeparableConv2d(16, 32, 3, padding=1))
        >>> to_standard(m)[0][0].weight.shape
        torch.Size([32, 16, 3, 3])
    """
    model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if isinstance(child, DepthwiseSeparableConv2d):
            dw = child.depthwise
            conv = nn.Conv2d(child.in_channels, child.out_channels, dw.kernel_size, dw.stride,
                             dw.padding, dw.dilation, bias=child.pointwise.bias is not None,
                             padding_mode=dw.padding_mode)
            setattr(model, name, nn.Sequential(conv, child.pw_norm, child.pw_act))
        else:
            setattr(model, name, to_standard(child))
    return model
