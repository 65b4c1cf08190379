"""Keras' DepthwiseConv2D and SeparableConv2D with a ``call`` on sepconv's kernels.

The layers subclass Keras' own, so their arguments, weights (names, shapes, initialisers),
``get_config``, output shapes and saved files are Keras'; only ``call`` differs. On the torch
backend a channels_last input (N, H, W, C) is handed to sepconv's depthwise kernel as the
channels_last-strided NCHW view ``x.permute(0, 3, 1, 2)`` (no copy), and the pointwise step
is a matmul over the channel dimension, which is a 1x1 convolution in NHWC. Keras' own torch
backend copies the input to NCHW and back around every convolution instead. On other
backends ``call`` is Keras' own (``keras.ops``), with a warning once.
"""

from __future__ import annotations

import warnings

import keras
import torch.nn.functional as F

from .. import algorithms
from .._validation import choice, pair, positive_int
from ..functional.depthwise import depthwise_conv2d

# Read at every call (not at import) so a test can route the layers through the fallback.
_backend = keras.backend.backend
_warned = False


def _fast_path() -> bool:
    """True on the torch backend; elsewhere warn (once per process) and return False."""
    global _warned
    if _backend() == "torch":
        return True
    if not _warned:
        _warned = True
        warnings.warn(f"sepconv.keras: the Keras backend is {_backend()!r}, so DepthwiseConv2D and "
                      "SeparableConv2D run Keras' own convolutions (keras.ops), not sepconv's kernels. "
                      "Set KERAS_BACKEND=torch to use them.", stacklevel=3)
    return False


def _check(owner, kernel_size, strides, padding, dilation_rate, depth_multiplier, data_format, algorithm):
    """sepconv's messages for Keras' arguments, before Keras sees them."""
    pair(owner, "kernel_size", kernel_size, minimum=1)
    pair(owner, "strides", strides, minimum=1)
    pair(owner, "dilation_rate", dilation_rate, minimum=1)
    choice(owner, "padding", padding.lower() if isinstance(padding, str) else padding, ("valid", "same"))
    positive_int(owner, "depth_multiplier", depth_multiplier)
    if data_format is not None:
        choice(owner, "data_format", data_format, ("channels_last", "channels_first"))
    return algorithms.check_name(owner, algorithm)


def same_padding(size, kernel_size, strides, dilation_rate):
    """TensorFlow's "same" padding: ((top, bottom), (left, right)) for an input of spatial
    `size`, with out = ceil(size / stride) and an odd total's extra row/column at the
    bottom/right (as Keras on every backend).

    Example:
        >>> same_padding((8, 7), (3, 3), (2, 2), (1, 1))   # 8 -> 4 needs 1 row, 7 -> 4 needs 2
        ((0, 1), (1, 1))
    """
    pads = []
    for n, k, s, d in zip(size, kernel_size, strides, dilation_rate):
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


class _SepconvCall:
    """The depthwise step both layers share, on torch tensors."""

    def _depthwise(self, x, kernel, bias):
        """Depthwise convolution of `x` (in the layer's data_format) by Keras' (kh, kw, C, m)
        `kernel`, as an (N, C*m, H', W') tensor, channels_last-strided for channels_last input."""
        kernel = keras.ops.convert_to_tensor(kernel)
        kh, kw, c, m = kernel.shape
        # Keras' (kh, kw, C, m) -> torch's (C*m, 1, kh, kw): output channel c*m + j in both
        weight = kernel.permute(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
        last = self.data_format == "channels_last"
        pad = (0, 0)
        if self.padding == "same":
            (top, bottom), (left, right) = same_padding(x.shape[1:3] if last else x.shape[2:], self.kernel_size,
                                                        self.strides, self.dilation_rate)
            if (top, left) != (bottom, right):
                # sepconv's kernels pad symmetrically; TF's extra bottom row / right column is
                # padded here (one copy of the input, as Keras' torch backend makes too)
                extra = (0, right - left, 0, bottom - top)
                x = F.pad(x, (0, 0, *extra) if last else extra)
            pad = (top, left)
        if last:
            x = x.permute(0, 3, 1, 2)
        return depthwise_conv2d(x, weight, bias, self.strides, pad, self.dilation_rate, self.algorithm)


@keras.saving.register_keras_serializable(package="sepconv")
class DepthwiseConv2D(_SepconvCall, keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` (same arguments, weights and config) that runs
    sepconv's depthwise kernel on the torch backend, in NHWC without layout copies.

    Args:
        kernel_size, strides, padding ("valid" or "same", TensorFlow's rule), depth_multiplier,
        data_format, dilation_rate, activation, use_bias, and the initializers, regularizers
        and constraints: as Keras' DepthwiseConv2D.
        algorithm: sepconv's algorithm, ``"auto"`` (measured once per shape) or a name from
            ``sepconv.algorithms.list_algorithms()``; torch backend only.

    Shapes:
        channels_last (N, H, W, C) -> (N, H', W', C * depth_multiplier); channels_first
        (N, C, H, W) -> (N, C * depth_multiplier, H', W'). H' = ceil(H / stride) for "same",
        (H - dilation * (k - 1) - 1) // stride + 1 for "valid".

    Example:
        >>> layer = DepthwiseConv2D(3, padding="same", depth_multiplier=2)
        >>> layer(keras.ops.ones((1, 14, 14, 8))).shape
        torch.Size([1, 14, 14, 16])
        >>> [w.shape for w in layer.get_weights()]   # Keras' own: kernel (3, 3, 8, 2), bias (16,)
        [(3, 3, 8, 2), (16,)]
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1, data_format=None,
                 dilation_rate=(1, 1), *args, algorithm="auto", **kwargs):
        self.algorithm = _check(type(self).__name__, kernel_size, strides, padding, dilation_rate,
                                depth_multiplier, data_format, algorithm)
        super().__init__(kernel_size, strides, padding, depth_multiplier, data_format, dilation_rate, *args,
                         **kwargs)

    def call(self, inputs):
        if not _fast_path():
            return super().call(inputs)
        x = keras.ops.convert_to_tensor(inputs)
        bias = keras.ops.convert_to_tensor(self.bias) if self.use_bias else None
        y = self._depthwise(x, self.kernel, bias)
        return self.activation(y.permute(0, 2, 3, 1) if self.data_format == "channels_last" else y)

    def get_config(self):
        return {**super().get_config(), "algorithm": self.algorithm}


@keras.saving.register_keras_serializable(package="sepconv")
class SeparableConv2D(_SepconvCall, keras.layers.SeparableConv2D):
    """``keras.layers.SeparableConv2D`` (same arguments, weights and config) that runs
    sepconv's depthwise kernel and a matmul for the pointwise step on the torch backend, in
    NHWC without layout copies.

    Args:
        filters, kernel_size, strides, padding ("valid" or "same", TensorFlow's rule),
        data_format, dilation_rate, depth_multiplier, activation, use_bias, and the
        depthwise/pointwise/bias initializers, regularizers and constraints: as Keras'
        SeparableConv2D (the bias is added after the pointwise step).
        algorithm: sepconv's depthwise algorithm, ``"auto"`` or a name from
            ``sepconv.algorithms.list_algorithms()``; torch backend only.

    Shapes:
        channels_last (N, H, W, C) -> (N, H', W', filters); channels_first (N, C, H, W) ->
        (N, filters, H', W'); H' as in DepthwiseConv2D.

    Example:
        >>> layer = SeparableConv2D(64, 3, strides=2, padding="same")
        >>> layer(keras.ops.ones((1, 28, 28, 32))).shape
        torch.Size([1, 14, 14, 64])
        >>> [w.shape for w in layer.get_weights()]   # 32*9 + 32*64 weights and 64 biases
        [(3, 3, 32, 1), (1, 1, 32, 64), (64,)]
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, *args, algorithm="auto", **kwargs):
        owner = type(self).__name__
        positive_int(owner, "filters", filters)
        self.algorithm = _check(owner, kernel_size, strides, padding, dilation_rate, depth_multiplier,
                                data_format, algorithm)
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, depth_multiplier,
                         *args, **kwargs)

    def call(self, inputs):
        if not _fast_path():
            return super().call(inputs)
        x = keras.ops.convert_to_tensor(inputs)
        y = self._depthwise(x, self.depthwise_kernel, None)
        pointwise = keras.ops.convert_to_tensor(self.pointwise_kernel)[0, 0]   # (C*m, filters)
        bias = keras.ops.convert_to_tensor(self.bias) if self.use_bias else None
        if self.data_format == "channels_last":
            # NHWC @ (C*m, filters) is the 1x1 convolution, bias added by the same GEMM (addmm)
            y = F.linear(y.permute(0, 2, 3, 1), pointwise.t(), bias)
        else:
            y = F.conv2d(y, pointwise.t()[:, :, None, None], bias)
        return self.activation(y)

    def get_config(self):
        return {**super().get_config(), "algorithm": self.algorithm}
