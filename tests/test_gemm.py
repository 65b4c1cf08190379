"""The native GEMM (1x1 convolutions, linear layers, im2col programs) against float64: float32,
and bfloat16 on whichever kernel this CPU runs (AMX tiles, AVX512-BF16 dot products), every
tail of rows, columns and k, each epilogue. A bfloat16 call multiplies bfloat16 operands with
float32 accumulation and rounds C once, so the reference is the float64 product of the
bfloat16-rounded operands."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sepconv import kernels

pytestmark = pytest.mark.skipif(not kernels.is_available(), reason="native kernels unavailable")
C = kernels.load() if kernels.is_available() else None
needs_bf16 = pytest.mark.skipif(C is None or not C.gemm_bf16_supported(), reason="no bfloat16 GEMM on this CPU")

# rows: below the AMX minimum (16), one tile, a tile and one, a block (32) and its neighbours;
# k: below a pair, odd, below a tile (32), a tile, past one, long; columns: below, at and past a panel
MS = (1, 7, 16, 17, 31, 32, 33, 100)
KS = (1, 7, 16, 24, 27, 32, 33, 45, 64, 144, 520)
NS = (1, 10, 32, 33, 70)


def _within(y, want, abs_sum, terms, dtype):
    """Recursive float32 summation of `terms` products (2 terms eps32 times the sum of their
    absolute values, `abs_sum`), then, for bfloat16, one rounding of the result (half an ulp)."""
    bound = 2 * terms * torch.finfo(torch.float32).eps * abs_sum
    if dtype == torch.bfloat16:
        bound = bound + torch.finfo(torch.bfloat16).eps / 2 * (want.abs() + bound)
    return y.dtype == dtype and bool(((y.double() - want).abs() <= bound + 1e-30).all())


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)], ids=str)
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("K", KS)
def test_gemm_tails(M, K, dtype):
    g = torch.Generator().manual_seed(M * 1000 + K)
    for N in NS:
        w = torch.randn(N, K, generator=g)
        x = torch.randn(M, K, generator=g).to(dtype)
        bias = torch.randn(N, generator=g)
        packed = C.gemm_pack(w, dtype == torch.bfloat16)
        y = C.gemm(x, packed, N, C.gemm_bias(bias), None, False, "relu", 0.0, 0.0, "none", 0.0, 0.0)
        a64, b64 = x.double(), w.to(dtype).double()
        want = (a64 @ b64.T + bias.double()).relu()
        assert _within(y, want, a64.abs() @ b64.abs().T + bias.double().abs(), K + 1, dtype), (M, N, K)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)], ids=str)
def test_gemm_epilogues_as_a_1x1_convolution(dtype):
    # y = act2(act1(conv1x1(x) + bias) + residual) on channels_last (B, K, H, W)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 9, 7, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w, bias = torch.randn(48, 40, generator=g), torch.randn(48, generator=g)
    r = torch.randn(2, 48, 9, 7, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    packed = C.gemm_pack(w, dtype == torch.bfloat16)
    w64 = w.to(dtype).double()[:, :, None, None]
    conv = F.conv2d(x.double(), w64, bias.double())
    abs_conv = F.conv2d(x.double().abs(), w64.abs(), bias.double().abs())
    for act1, act2, want, abs_sum in [
            (("clamp", 0.0, 6.0), ("none", 0.0, 0.0), conv.clamp(0, 6), abs_conv),
            (("none", 0.0, 0.0), ("relu", 0.0, 0.0), (conv + r.double()).relu(), abs_conv + r.double().abs())]:
        y = C.gemm(x, packed, 48, C.gemm_bias(bias), r if act2[0] == "relu" else None, True, *act1, *act2)
        assert y.shape == want.shape and y.is_contiguous(memory_format=torch.channels_last)
        # (the residual is one more term; both activations are 1-Lipschitz)
        assert _within(y, want, abs_sum, 40 + 2, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)], ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 32, 30, 16, 3, 2, 1), (2, 5, 11, 9, 33, 3, 1, 1), (1, 8, 7, 7, 40, 5, 1, 2)],
                         ids=["stem3x3s2", "c5k3", "c8k5"])
def test_conv_gemm_against_conv2d(shape, dtype):
    # im2col + GEMM: K = kh * kw * C (27 for a 3-channel stem: no multiple of an AMX tile)
    b, c, h, w_, n, k, s, p = shape
    g = torch.Generator().manual_seed(5)
    x = torch.randn(b, c, h, w_, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w, bias = torch.randn(n, c, k, k, generator=g), torch.randn(n, generator=g)
    packed = C.gemm_pack(w.permute(0, 2, 3, 1).reshape(n, -1), dtype == torch.bfloat16)
    y = C.conv_gemm(x, packed, n, C.gemm_bias(bias), None, [k, k], [s, s], [p, p, p, p], [1, 1],
                    "relu", 0.0, 0.0, "none", 0.0, 0.0)
    want = F.conv2d(x.double(), w.to(dtype).double(), bias.double(), s, p).relu()
    abs_sum = F.conv2d(x.double().abs(), w.to(dtype).double().abs(), bias.double().abs(), s, p)
    assert y.shape == want.shape and _within(y, want, abs_sum, c * k * k + 1, dtype)


# direct convolution of few input channels (conv_direct): (batch, C, H, W, out channels, kernel,
# stride, (top, bottom, left, right) padding, dilation): 3x3/s2 stems (MobileNet, EfficientNet,
# with TF "same" padding), ConvNeXt's 4x4/s4 patchify, odd widths (tiles of 1..MR pixels), one
# and two channels, stride 3 (no compiled pixel stride), dilation, columns in partial panels
DIRECT = [(1, 3, 32, 30, 32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
          (2, 3, 17, 23, 24, (3, 3), (2, 2), (0, 1, 0, 1), (1, 1)),
          (1, 3, 32, 32, 96, (4, 4), (4, 4), (0, 0, 0, 0), (1, 1)),
          (3, 1, 9, 41, 16, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
          (1, 2, 12, 13, 40, (2, 3), (3, 3), (1, 0, 2, 1), (1, 1)),
          (1, 4, 15, 19, 33, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2)),
          (0, 3, 8, 8, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1))]


@pytest.mark.parametrize("out", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "bf16_input"])
@pytest.mark.parametrize("shape", DIRECT, ids=lambda s: f"{s[1]}x{s[2]}x{s[3]}-{s[4]}-k{s[5]}s{s[6]}p{s[7]}d{s[8]}")
def test_conv_direct_against_conv2d(shape, layout, out):
    # computed in float32 from the input as it is laid out: the reference is float64 on the
    # same (for a bfloat16 input: bfloat16-rounded) values, rounded once to `out`
    b, c, h, w_, n, k, s, pad, d = shape
    g = torch.Generator().manual_seed(sum(shape[:5]))
    x = torch.randn(b, c, h, w_ + 3, generator=g)[..., 1:w_ + 1]     # (a column slice: strides of a view)
    x = {"nchw": x.contiguous(), "channels_last": x.contiguous(memory_format=torch.channels_last), "strided": x,
         "bf16_input": x.to(torch.bfloat16).contiguous()}[layout]
    w, bias = torch.randn(n, c, *k, generator=g), torch.randn(n, generator=g)
    packed = C.gemm_pack(w.permute(0, 2, 3, 1).reshape(n, -1).contiguous(), False)
    y = C.conv_direct(x, packed, n, C.gemm_bias(bias), list(k), list(s), list(pad), list(d), "clamp", -1.0, 2.0,
                      out == torch.bfloat16)
    top, bottom, left, right = pad
    # (a bfloat16 result is the bfloat16 model's: of the input rounded to bfloat16)
    x64 = F.pad((x.to(out) if out == torch.bfloat16 else x).double(), [left, right, top, bottom])
    want = F.conv2d(x64, w.double(), bias.double(), s, 0, d).clamp(-1, 2)
    abs_sum = F.conv2d(x64.abs(), w.double().abs(), bias.double().abs(), s, 0, d)
    assert y.shape == want.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert _within(y, want, abs_sum, c * k[0] * k[1] + 1, out)


@needs_bf16
def test_conv_direct_bfloat16_result_is_that_of_the_converted_input():
    # an optimized bfloat16 model passes its float32 NCHW input to the stem as it is: the result
    # must be the one it gets from the input converted to bfloat16 channels_last, bit for bit
    x = torch.randn(2, 3, 33, 31) * 10
    packed = C.gemm_pack(torch.randn(24, 27), False)
    run = lambda t: C.conv_direct(t, packed, 24, None, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], "relu", 0.0, 0.0, True)
    assert torch.equal(run(x), run(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)))


def test_conv_direct_nan_and_inf_like_conv2d():
    x = torch.randn(2, 3, 20, 20)
    x[0, 1, 5, 7], x[1, 0, 0, 0], x[1, 2, 19, 19] = float("nan"), float("inf"), -float("inf")
    w = torch.randn(32, 3, 3, 3)
    y = C.conv_direct(x, C.gemm_pack(w.permute(0, 2, 3, 1).reshape(32, 27).contiguous(), False), 32, None,
                      [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], "none", 0.0, 0.0, False)
    want = F.conv2d(x.double(), w.double(), None, 2, 1)
    assert torch.equal(y.isnan(), want.isnan()) and torch.equal(y.isinf(), want.isinf())
    assert y.isnan().any() and y.isinf().any() and y.isfinite().sum() == want.isfinite().sum()


def test_conv_direct_refuses_bad_arguments():
    packed = C.gemm_pack(torch.randn(8, 27), False)
    with pytest.raises(RuntimeError, match="packed must be gemm_pack"):
        C.conv_direct(torch.randn(1, 4, 8, 8), packed, 8, None, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], "none", 0, 0,
                      False)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        C.conv_direct(torch.randn(1, 3, 8, 8).double(), packed, 8, None, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1],
                      "none", 0, 0, False)


# gemm_dw: (batch, K, H, W, N, kernel, stride, (top, bottom, left, right), dilation): an
# EfficientNet expansion + 3x3/s2 and 5x5/s1, TF "same" padding, tall images (several bands),
# dilation, N in partial panels
GEMM_DW = [(2, 16, 30, 28, 96, 3, 2, (1, 1, 1, 1), 1), (1, 24, 17, 19, 144, 5, 1, (2, 2, 2, 2), 1),
           (3, 8, 57, 9, 40, 3, 2, (0, 1, 0, 1), 1), (1, 12, 40, 13, 33, 3, 1, (2, 2, 2, 2), 2),
           (1, 16, 5, 6, 48, 7, 1, (3, 3, 3, 3), 1)]


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)], ids=str)
@pytest.mark.parametrize("shape", GEMM_DW, ids=lambda s: "x".join(map(str, s[:5])) + f"-k{s[5]}s{s[6]}d{s[8]}")
def test_gemm_dw_equals_the_two_calls(shape, dtype):
    # the fused pass computes the same rows with the same kernels: equal to gemm then
    # depthwise_hwc bit for bit, and both to float64 (F.conv2d) within the float32 bound
    b, k_in, h, w_, n, k, s, pad, d = shape
    g = torch.Generator().manual_seed(sum(shape[:5]))
    x = torch.randn(b, k_in, h, w_, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    pw, pb = torch.randn(n, k_in, generator=g) / k_in ** 0.5, torch.randn(n, generator=g)
    dw, db = torch.randn(n, 1, k, k, generator=g), torch.randn(n, generator=g)
    packed, bias, w_hwc = C.gemm_pack(pw, dtype == torch.bfloat16), C.gemm_bias(pb), C.weight_hwc(dw)
    dwargs = (w_hwc, db, [s, s], list(pad), [d, d], "clamp", 0.0, 6.0)
    fused = C.gemm_dw(x, packed, n, bias, "silu", 0.0, 0.0, *dwargs)
    separate = C.depthwise_hwc(C.gemm(x, packed, n, bias, None, True, "silu", 0.0, 0.0, "none", 0.0, 0.0), *dwargs)
    assert fused.is_contiguous(memory_format=torch.channels_last) and torch.equal(fused, separate)
    if dtype == torch.float32:
        mid = F.silu(F.conv2d(x.double(), pw.double()[:, :, None, None], pb.double()))
        top, bottom, left, right = pad
        want = F.conv2d(F.pad(mid, [left, right, top, bottom]), dw.double(), db.double(), s, 0, d, n).clamp(0, 6)
        torch.testing.assert_close(fused.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)], ids=str)
@pytest.mark.parametrize("shape", [(2, 40, 7, 7, 24), (3, 96, 30, 29, 24), (8, 1024, 4, 5, 70)],
                         ids=["small", "chunked", "4k-rows"])
def test_gemm_kscale_equals_the_product_first(shape, dtype):
    # a squeeze-excitation's per-image channel scale fused into the 1x1 convolution after it:
    # equal, bit for bit, to the product (rounded to x's dtype) then the GEMM, with a residual;
    # "small" scales all of A at once, "chunked" (> 1 MiB) scales chunks of rows, some of them
    # across two images; 1024 channels make rows 4 KiB apart
    b, k, h, w_, n = shape
    g = torch.Generator().manual_seed(k)
    x = torch.randn(b, k, h, w_, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    s = torch.rand(b, k, 1, 1, generator=g).to(dtype)
    r = torch.randn(b, n, h, w_, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    packed, bias = C.gemm_pack(torch.randn(n, k, generator=g), dtype == torch.bfloat16), C.gemm_bias(torch.randn(n))
    args = (packed, n, bias, r, True, "silu", 0.0, 0.0, "relu", 0.0, 0.0)
    fused = C.gemm(x, *args, s)
    first = C.gemm((x * s).contiguous(memory_format=torch.channels_last), *args)
    assert torch.equal(fused, first)
    with pytest.raises(RuntimeError, match="kscale must hold"):
        C.gemm(x, *args, s[:1])


def test_gemm_nan_and_inf_propagate_like_matmul():
    dtype = torch.bfloat16 if C.gemm_bf16_supported() else torch.float32
    w = torch.randn(33, 40)
    x = torch.randn(40, 40).to(dtype)
    x[3, 5], x[37, 0] = float("nan"), float("inf")
    y = C.gemm(x, C.gemm_pack(w, dtype == torch.bfloat16), 33, None, None, False, "none", 0.0, 0.0, "none", 0.0, 0.0)
    want = x.double() @ w.to(dtype).double().T
    assert torch.equal(y.isnan(), want.isnan()) and torch.equal(y.isinf(), want.isinf())
    # rows without a special value stay finite (no tile reads another row's NaN)
    assert y[[r for r in range(40) if r not in (3, 37)]].isfinite().all()


@needs_bf16
def test_bfloat16_gemm_kind_and_the_other_path():
    # AMX where the CPU and OS allow it; SEPCONV_AMX=0 runs the AVX512-BF16 kernel instead,
    # with the same packing and the same results up to summation order
    kind = C.gemm_bf16_kind()
    assert kind in ("amx", "avx512bf16")
    code = ("import torch; from sepconv import kernels; C = kernels.load(); print(C.gemm_bf16_kind()); "
            "g = torch.Generator().manual_seed(0); w = torch.randn(70, 144, generator=g); "
            "x = torch.randn(100, 144, generator=g).bfloat16(); "
            "y = C.gemm(x, C.gemm_pack(w, True), 70, None, None, False, 'none', 0., 0., 'none', 0., 0.); "
            "want = x.double() @ w.bfloat16().double().T; "
            "print(float(((y.double() - want).abs() / (want.abs() + 1)).max()))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SEPCONV_AMX": "0"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "avx512bf16"
    assert float(out[1]) <= torch.finfo(torch.bfloat16).eps


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)], ids=str)
@pytest.mark.parametrize("shape", [(1, 16, 9, 7, 3, 1, 40), (3, 32, 14, 14, 3, 2, 64), (2, 24, 11, 6, 5, 1, 17),
                                   (1, 64, 7, 7, 7, 1, 96)], ids=["k3", "k3s2", "k5", "k7"])
def test_dw_gemm_is_the_depthwise_then_the_gemm(shape, dtype):
    # the same kernels on the same values in the same order: equal to the two calls, bit for bit
    b, c, h, w_, k, s, n = shape
    g = torch.Generator().manual_seed(7)
    x = torch.randn(b, c, h, w_, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    wh = C.weight_hwc(torch.randn(c, 1, k, k, generator=g))
    db, pw, pb = torch.randn(c, generator=g), torch.randn(n, c, generator=g), torch.randn(n, generator=g)
    packed, bias = C.gemm_pack(pw, dtype == torch.bfloat16), C.gemm_bias(pb)
    pad = [k // 2] * 4
    mid = C.depthwise_hwc(x, wh, db, [s, s], pad, [1, 1], "clamp", 0.0, 6.0)
    r = torch.randn(mid.shape[0], n, *mid.shape[2:], generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    want = C.gemm(mid, packed, n, bias, r, True, "none", 0.0, 0.0, "relu", 0.0, 0.0)
    got = C.dw_gemm(x, wh, db, [s, s], pad, [1, 1], "clamp", 0.0, 6.0, packed, n, bias, r, "none", 0.0, 0.0,
                    "relu", 0.0, 0.0)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)
