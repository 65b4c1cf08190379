"""`optimize_for_inference`: batch norm folded, channels_last end to end, depthwise + bias +
ReLU fused in the native kernel where the tuned plan picks it, each pointwise convolution
run by oneDNN's convolution or as one GEMM (MKL's or oneDNN's) with fused bias and ReLU,
whichever measured fastest on its real input, and every depthwise shape tuned once on the example input."""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..algorithms.dispatch import plan_call
from ..kernels.ops import Act
from ..layers import DepthwiseConv2d, DepthwiseSeparableConv2d
from .._validation import choice, fail
from .surgery import fold_batchnorm


class FusedDepthwiseReLU(nn.Module):
    """Inference-only depthwise convolution with its bias and ReLU applied in one pass when
    the planned algorithm can fuse them (the native kernels); otherwise the planned algorithm
    then ReLU.

    Shapes: as DepthwiseConv2d.
    """

    def __init__(self, dw: DepthwiseConv2d):
        super().__init__()
        self.weight = nn.Parameter(dw.weight.detach().clone(), requires_grad=False)
        self.bias = None if dw.bias is None else nn.Parameter(dw.bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = dw.stride, dw._pad, dw.dilation
        self.algorithm = dw.algorithm

    def forward(self, x):
        spec, algo = plan_call("FusedDepthwiseReLU", x, self.weight, self.bias, self.stride,
                               self.padding, self.dilation, self.algorithm)
        if algo.fuses_act:
            return algo.run(x, self.weight, self.bias, spec, Act("relu"))
        return F.relu(algo.run(x, self.weight, self.bias, spec))


@functools.cache
def _onednn_linear():
    """oneDNN's linear with a fused post-op (``torch.ops.mkldnn._linear_pointwise``, the op
    torch.compile's CPU backend emits), or None where this build lacks it; looked up once."""
    try:
        return torch.ops.mkldnn._linear_pointwise.default if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


class PointwiseGEMM(nn.Module):
    """Inference-only 1x1 convolution (stride 1, groups 1) on channels_last input as one
    GEMM: (N*H*W, C_in) @ (C_in, C_out) + bias, optionally followed by ReLU. The output is a
    channels_last view of the GEMM result (no copy).

    backend: ``"addmm"`` (MKL's sgemm, ReLU in place afterwards) or ``"onednn"`` (oneDNN's
    linear with ReLU fused; measured 1.05-1.35x faster than addmm on MobileNet's 14x14 and 7x7
    layers, where a GEMM has only 49-196 rows).

    Shapes: (N, C_in, H, W) channels_last -> (N, C_out, H, W) channels_last.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool = False, backend: str = "addmm"):
        super().__init__()
        w = conv.weight.detach()
        w2 = w.view(w.shape[0], w.shape[1])
        self.backend = choice("PointwiseGEMM", "backend", backend, ("addmm", "onednn"))
        # addmm takes the (C_in, C_out) transpose; oneDNN's linear the (C_out, C_in) weight
        self.weight_t = nn.Parameter((w2.t() if backend == "addmm" else w2).contiguous(), requires_grad=False)
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        self.bias = nn.Parameter(b.clone(), requires_grad=False)
        self.relu = relu

    def forward(self, x):
        n, c, h, w = x.shape
        x2 = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n * h * w, c)
        if self.backend == "onednn":
            y = _onednn_linear()(x2, self.weight_t, self.bias, "relu" if self.relu else "none", [], "")
        else:
            y = torch.addmm(self.bias, x2, self.weight_t)
            if self.relu:
                y.relu_()
        return y.view(n, h, w, -1).permute(0, 3, 1, 2)


class SeparableInference(nn.Module):
    """A DepthwiseSeparableConv2d after BN folding and fusion (no norm left, the depthwise
    activation fused): depthwise, pointwise, then the optional activation, without calls to
    the Identity modules that stood for the others (four Python module calls per block).

    Shapes: as the block it replaces.
    """

    def __init__(self, block: DepthwiseSeparableConv2d):
        super().__init__()
        self.depthwise, self.pointwise = block.depthwise, block.pointwise
        self.act = None if isinstance(block.pw_act, nn.Identity) else block.pw_act

    def forward(self, x):
        y = self.pointwise(self.depthwise(x))
        return y if self.act is None else self.act(y)


def _lean_blocks(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if (isinstance(child, DepthwiseSeparableConv2d) and isinstance(child.depthwise, FusedDepthwiseReLU)
                and all(isinstance(m, nn.Identity) for m in (child.dw_norm, child.dw_act, child.pw_norm))):
            setattr(module, name, SeparableInference(child))
        else:
            _lean_blocks(child)


class InferenceModel(nn.Module):
    """Wraps an optimized model: converts the input to channels_last (and to the model's
    compute dtype) and runs under torch.inference_mode. The output comes back in the input's
    dtype, so a bfloat16 model is a drop-in for float32 callers."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        with torch.inference_mode():
            y = self.model(x.to(dtype=self.dtype, memory_format=torch.channels_last))
            return y.to(x.dtype) if y.dtype != x.dtype and x.is_floating_point() else y


def _fuse(module: nn.Module) -> int:
    fused = 0
    for name, child in list(module.named_children()):
        if (isinstance(child, DepthwiseSeparableConv2d) and isinstance(child.dw_norm, nn.Identity)
                and isinstance(child.dw_act, nn.ReLU) and child.depthwise.depth_multiplier == 1
                and child.depthwise.padding_mode == "zeros"):
            child.depthwise = FusedDepthwiseReLU(child.depthwise)
            child.dw_act = nn.Identity()
            fused += 1
        else:
            fused += _fuse(child)
    return fused


def _is_pointwise(conv) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.padding in ((0, 0), 0))


def _choose_pointwise(model: nn.Module, example_input: torch.Tensor, rounds: int = 15) -> list[dict]:
    """For each pointwise convolution of a DepthwiseSeparableConv2d, time oneDNN's conv
    against one GEMM on the layer's real input (interleaved medians) and keep the faster,
    fusing the block's ReLU into the GEMM. Returns what was measured and chosen."""
    from ..timing import Candidate, compare

    blocks = [m for m in model.modules() if isinstance(m, DepthwiseSeparableConv2d)
              and _is_pointwise(m.pointwise) and isinstance(m.pw_norm, nn.Identity)]
    inputs = {}
    hooks = [b.pointwise.register_forward_pre_hook(lambda m, a: inputs.__setitem__(id(m), a[0]))
             for b in blocks]
    with torch.inference_mode():
        model(example_input.contiguous(memory_format=torch.channels_last))
    for h in hooks:
        h.remove()
    decisions = []
    for block in blocks:
        x = inputs.get(id(block.pointwise))
        if x is None:
            continue
        relu = isinstance(block.pw_act, nn.ReLU)
        conv = block.pointwise
        options = {"conv": (conv, block.pw_act), "gemm": (PointwiseGEMM(conv, relu=relu), nn.Identity())}
        if _onednn_linear() is not None:
            options["onednn_gemm"] = (PointwiseGEMM(conv, relu=relu, backend="onednn"), nn.Identity())
        with torch.inference_mode():
            want = block.pw_act(conv(x))
            # conv and GEMMs all accumulate in float32; they differ by float32 rounding, or
            # by one bfloat16 rounding of the output (assert_close's own bfloat16 tolerance)
            tol = dict(rtol=1e-4, atol=1e-4) if x.dtype == torch.float32 else {}
            for layer, act in options.values():
                torch.testing.assert_close(act(layer(x)), want, **tol)
            cands = compare([Candidate(name, lambda m=m, a=a: a(m(x))) for name, (m, a) in options.items()],
                            rounds=rounds, budget_s=2.0)
        t = {c.name: c.median for c in cands}
        chosen = min(t, key=t.get)
        block.pointwise, block.pw_act = options[chosen]
        decisions.append({"shape": tuple(x.shape), **{f"{k}_ms": v * 1e3 for k, v in t.items()}, "chosen": chosen})
    return decisions


def optimize_for_inference(model: nn.Module, example_input: torch.Tensor,
                           dtype: torch.dtype = torch.float32) -> InferenceModel:
    """An inference copy of `model`: BN folded, depthwise + bias + ReLU fused, weights and
    activations channels_last, the auto plan tuned on `example_input` (same shape as later
    inputs; another shape is tuned on first use).

    Args:
        dtype: compute dtype, ``torch.float32`` or ``torch.bfloat16``. bfloat16 stores
            weights and activations in bfloat16 and accumulates in float32 (oneDNN's
            AVX512-BF16/AMX GEMMs, the native depthwise kernel); the output is returned in the
            input's dtype. Its accuracy cost is measured in ``sepconv bench model`` and the demo.

    Example:
        >>> from sepconv.models import create_model
        >>> m = create_model("mobilenet_v1_small").eval()
        >>> fast = optimize_for_inference(m, torch.randn(1, 1, 8, 8))
        >>> fast(torch.randn(1, 1, 8, 8)).shape
        torch.Size([1, 10])
        >>> optimize_for_inference(m, torch.randn(1, 1, 8, 8), dtype=torch.bfloat16)(torch.randn(1, 1, 8, 8)).dtype
        torch.float32
    """
    if dtype not in (torch.float32, torch.bfloat16):
        fail("optimize_for_inference", "`dtype` must be torch.float32 or torch.bfloat16.", f"dtype={dtype!r}")
    folded, _ = fold_batchnorm(model)
    folded = copy.deepcopy(folded).eval()
    _fuse(folded)
    for p in folded.parameters():
        p.requires_grad_(False)
    folded = folded.to(dtype=dtype, memory_format=torch.channels_last)
    wrapped = InferenceModel(folded, dtype).eval()
    wrapped(example_input)  # tune every depthwise shape once, outside the timed path
    wrapped.pointwise_choices = _choose_pointwise(folded, example_input.to(dtype))
    _lean_blocks(folded)
    return wrapped
