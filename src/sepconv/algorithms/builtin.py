"""The built-in algorithms: PyTorch forms that run on any device, and the native CPU kernels.

error_eps: 1.3-2.5x the maximum normwise error measured by benchmarks/measure_error.py
(float32; docs/algorithms.md has the measurements), rounded up. Low-precision inputs run
Winograd transforms in float32, so their bound is the output rounding, as for direct. A
transform's bound holds for each of its implementations.
"""

from __future__ import annotations

import torch

from .. import kernels
from ..functional import direct, winograd
from ..kernels import ops
from .registry import Algorithm, register

def _bytes(spec, *, inputs=0.0, outputs=0.0) -> int:
    """Bytes of `inputs` input-sized and `outputs` output-sized float32 temporaries (the
    PyTorch forms compute low-precision inputs in float32)."""
    oh, ow = spec.out_size
    return int(4 * (inputs * spec.batch * spec.out_channels * spec.height * spec.width
                    + outputs * spec.batch * spec.out_channels * oh * ow))


def _direct_workspace(spec):
    # a running sum and one product at a time; training keeps every tap's product
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    return _bytes(spec, outputs=taps + 2 if spec.requires_grad else 3)


def _winograd_2d_workspace(m):
    # padded tiles (n/m)^2 times the input, their transform and its product with U
    return lambda spec: _bytes(spec, inputs=3 * ((m + 2) / m) ** 2 * (2 if spec.requires_grad else 1), outputs=1)


def _winograd_rows_workspace(spec):
    return _bytes(spec, inputs=2 * (2 if spec.requires_grad else 1), outputs=4)


# What every Winograd form serves: 3x3, stride 1, dilation 1.
WINOGRAD_SHAPES = dict(kernel_sizes=frozenset({(3, 3)}), strides=frozenset({(1, 1)}),
                       dilations=frozenset({(1, 1)}), exact_special_values=False)
F2X2_EPS, F4X4_EPS = 3, 24

register(Algorithm("reference", "F.conv2d with groups=C (PyTorch/oneDNN)", direct.reference, error_eps=2))
register(Algorithm("direct", "sum of kh*kw shifted views, PyTorch, any device", direct.direct, error_eps=2,
                   workspace=_direct_workspace))
register(Algorithm(
    "winograd_f2x2", "2-D Winograd F(2x2,3x3), PyTorch, any device",
    lambda x, w, b, s: winograd.depthwise_winograd_2d(x, w, b, s, 2), **WINOGRAD_SHAPES, error_eps=F2X2_EPS,
    workspace=_winograd_2d_workspace(2)))
register(Algorithm(
    "winograd_f4x4", "2-D Winograd F(4x4,3x3), PyTorch, any device",
    lambda x, w, b, s: winograd.depthwise_winograd_2d(x, w, b, s, 4), **WINOGRAD_SHAPES, error_eps=F4X4_EPS,
    workspace=_winograd_2d_workspace(4)))
register(Algorithm(
    "winograd_rows", "row-wise 1-D F(2,3) with cached transformed rows (MNN), PyTorch",
    winograd.depthwise_winograd_rows, **WINOGRAD_SHAPES, error_eps=2, workspace=_winograd_rows_workspace))

# The native kernels: CPU, float32/bfloat16, one filter per channel.
NATIVE = dict(dtypes=frozenset({torch.float32, torch.bfloat16}), devices=frozenset({"cpu"}),
              depth_multipliers=frozenset({1}), fuses_act=True, available=kernels.is_available,
              unavailable_reason=kernels.unavailable_reason, error_eps=2)
NATIVE_WINOGRAD = dict(NATIVE, **WINOGRAD_SHAPES, differentiable=False)
register(Algorithm(
    "native", "C++ NHWC direct kernel (AVX-512/AVX2/baseline, chosen at load), fwd+bwd, CPU", ops.run, **NATIVE))
register(Algorithm(
    "native_winograd_f2x2", "C++ NHWC 2-D Winograd F(2x2,3x3) (16 multiplies per 4 outputs), inference, CPU",
    winograd.run_winograd_2d(2), **{**NATIVE_WINOGRAD, "error_eps": F2X2_EPS}))
register(Algorithm(
    "native_winograd_f4x4", "C++ NHWC 2-D Winograd F(4x4,3x3) (36 multiplies per 16 outputs), inference, CPU",
    winograd.run_winograd_2d(4), **{**NATIVE_WINOGRAD, "error_eps": F4X4_EPS}))
register(Algorithm(
    "native_winograd_rows", "C++ NHWC row-wise Winograd F(2,3) (12 multiplies per 2 outputs), inference, CPU",
    winograd.run_winograd_rows, **NATIVE_WINOGRAD))
