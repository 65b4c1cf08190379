"""The native C++ kernel: forward, fused ReLU and both gradients against float64, over the
shapes that select its different code paths (register blocks of one or two rows and the
narrower last block, borders, channel tails, half blocks for rows under 8, wide channel
counts, column pairs of the stride-2 input gradient, compile-time 3x3/5x5 against the
generic loop)."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

import sepconv
from sepconv import algorithms, kernels
from sepconv.functional import depthwise_conv2d
from sepconv.kernels.ops import Act, run as native_run
from sepconv.spec import depthwise_spec

if os.environ.get("SEPCONV_REQUIRE_NATIVE") and not kernels.is_available():
    raise RuntimeError(f"SEPCONV_REQUIRE_NATIVE is set but the native kernel did not build: "
                       f"{kernels.unavailable_reason()}")
pytestmark = pytest.mark.skipif(not kernels.is_available(),
                                reason=f"native kernel unavailable: {kernels.unavailable_reason()}")

NATIVE = algorithms.get_algorithm("native")
if os.environ.get("SEPCONV_EXPECT_ISA"):   # set by test_every_instruction_set below
    assert kernels.isa() == os.environ["SEPCONV_EXPECT_ISA"], kernels.isa()

# (N, C, H, W), kernel, stride, padding, dilation
CASES = [
    ((2, 16, 12, 20), (3, 3), 1, 1, 1),      # register blocks of 8 + borders
    ((3, 16, 5, 9), (3, 3), 1, 1, 1),        # two-row blocks, odd row counts per image/thread
    ((2, 32, 9, 13), (3, 3), 2, 1, 1),       # two-row blocks at stride 2, odd row count
    ((1, 33, 9, 11), (3, 3), 2, 1, 1),       # channel tail (33 = 2*16 + 1), stride 2
    ((1, 7, 6, 5), (3, 3), 1, 0, 1),         # fewer than 16 channels, no padding
    ((1, 520, 5, 6), (3, 3), 1, 1, 1),       # wide, with a tail of 8 channels
    ((2, 512, 7, 7), (3, 3), 1, 1, 1),       # wide, half blocks (7 = 4 + a block of 3)
    ((1, 512, 5, 3), (3, 3), 1, 0, 1),       # wide, rows under 4 outputs, no padding
    ((1, 512, 6, 9), (5, 5), 1, 2, 1),       # wide, 5x5
    ((1, 1024, 7, 7), (3, 3), 2, 1, 1),      # wide at stride 2
    ((1, 32, 7, 6), (3, 3), 1, 1, 1),        # rows under 8 wide: half blocks
    ((1, 16, 7, 15), (3, 3), 1, 1, 1),       # last blocks of 3: 12 + 3 (two rows), 8 + 4 + 3 (one)
    ((1, 16, 7, 16), (3, 3), 1, 0, 1),       # last blocks of 2, no padding: 14 = 12 + 2, 8 + 4 + 2
    ((2, 32, 9, 21), (3, 3), 2, 1, 1),       # stride-2 input gradient by column pairs
    ((1, 16, 8, 20), (3, 3), 2, 0, 1),       # column pairs with no padding
    ((2, 48, 10, 13), (5, 5), 1, 2, 1),      # compile-time 5x5
    ((1, 32, 11, 10), (5, 5), 2, 2, 1),      # 5x5 stride 2
    ((1, 20, 13, 12), (3, 3), 1, 2, 2),      # dilation: generic loop
    ((1, 16, 9, 14), (7, 7), 1, 3, 1),       # 7x7: generic loop
    ((1, 16, 8, 9), (1, 1), 1, 0, 1),        # 1x1
    ((2, 24, 10, 9), (3, 5), (2, 1), (1, 2), (1, 2)),  # non-square everything
    ((1, 64, 40, 40), (3, 3), 1, 1, 1),      # several threads' rows
]


def _data(shape, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape[1], 1, *k, generator=g).to(dtype)
    b = torch.randn(shape[1], generator=g).to(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}k{c[1]}s{c[2]}p{c[3]}d{c[4]}")
def test_forward_and_relu(case, dtype):
    shape, k, s, p, d = case
    x, w, b = _data(shape, k, dtype)
    want = F.conv2d(x.double(), w.double(), b.double(), s, p, d, groups=shape[1])
    bound = NATIVE.tolerance(dtype) * algorithms.error_scale(x, w, b)
    y = depthwise_conv2d(x, w, b, s, p, d, algorithm="native")
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == dtype
    assert ((y.double() - want).abs() <= bound).all()
    spec = depthwise_spec("t", x, w, b, s, p, d)
    fused = native_run(x, w, b, spec, Act("relu"))
    assert ((fused.double() - want.relu()).abs() <= bound).all()
    clamped = native_run(x, w, b, spec, Act("clamp", -0.5, 2.0))   # applied in registers
    assert ((clamped.double() - want.clamp(-0.5, 2.0)).abs() <= bound).all()


@pytest.mark.parametrize("act", [Act("relu"), Act("clamp", 0.0, 6.0)], ids=lambda a: a.kind)
@pytest.mark.parametrize("shape", [(1, 32, 9, 12), (1, 20, 6, 9)], ids=str)   # whole vectors; a tail
def test_fused_relu_and_clamp_keep_nan(shape, act):
    x, w, b = _data(shape, (3, 3), torch.float32)
    x[0, 3, 4, 5] = float("nan")
    x[0, 17, 2, 0] = float("nan")
    want = F.conv2d(x, w, b, 1, 1, 1, groups=shape[1])
    want = want.relu() if act.kind == "relu" else want.clamp(act.lo, act.hi)
    got = native_run(x, w, b, depthwise_spec("t", x, w, b, 1, 1, 1), act)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().sum() == 9 + 6   # one at a border


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}k{c[1]}s{c[2]}p{c[3]}d{c[4]}")
def test_gradients(case):
    shape, k, s, p, d = case
    x, w, b = _data(shape, k, torch.float32, seed=1)
    xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
    y = depthwise_conv2d(xs, ws, bs, s, p, d, algorithm="native")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    y.backward(dy)
    c = shape[1]
    x64, w64, dy64 = x.double(), w.double(), dy.double()
    args = dict(stride=s, padding=p, dilation=d, groups=c)
    want_dx = conv2d_input(x.shape, w64, dy64, **args)
    want_dw = conv2d_weight(x64, w.shape, dy64, **args)
    # Normwise bounds: eps times the number of accumulated terms (recursive summation),
    # relative to the same gradient computed on absolute values.
    eps = torch.finfo(torch.float32).eps
    abs_dx = conv2d_input(x.shape, w64.abs(), dy64.abs(), **args)
    abs_dw = conv2d_weight(x64.abs(), w.shape, dy64.abs(), **args)
    terms_dx = k[0] * k[1]
    terms_dw = y.shape[0] * y.shape[2] * y.shape[3]
    assert ((xs.grad.double() - want_dx).abs() <= 2 * terms_dx * eps * abs_dx + 1e-30).all()
    assert ((ws.grad.double() - want_dw).abs() <= 2 * terms_dw * eps * abs_dw + 1e-30).all()
    # db: terms_dw values of dy per channel, the same summation bound
    assert ((bs.grad.double() - dy64.sum(dim=(0, 2, 3))).abs() <= 2 * terms_dw * eps * dy64.abs().sum(dim=(0, 2, 3))).all()


def test_nchw_input_gives_nchw_output():
    x, w, b = _data((1, 16, 9, 9), (3, 3), torch.float32)
    x = x.contiguous()
    y = depthwise_conv2d(x, w, b, 1, 1, 1, algorithm="native")
    assert y.is_contiguous()
    torch.testing.assert_close(y, F.conv2d(x, w, b, 1, 1, 1, 16), rtol=1e-5, atol=1e-5)


def test_refuses_what_it_does_not_serve():
    x, w, _ = _data((1, 4, 6, 6), (3, 3), torch.float64)
    with pytest.raises(ValueError, match=r"algorithm 'native' cannot serve this call: dtype must be one of"):
        depthwise_conv2d(x, w, algorithm="native")
    x, w, _ = _data((1, 4, 6, 6), (3, 3), torch.float32)
    with pytest.raises(ValueError, match=r"`depth_multiplier` must be one of \[1\]. Received: depth_multiplier=2"):
        depthwise_conv2d(x, torch.cat([w, w]), algorithm="native")


def test_training_step_matches_reference():
    torch.manual_seed(0)
    x, w, b = _data((4, 32, 16, 16), (3, 3), torch.float32)
    grads = {}
    for name in ("native", "reference"):
        ws = w.detach().requires_grad_()
        loss = depthwise_conv2d(x, ws, b, 1, 1, 1, algorithm=name).square().mean()
        loss.backward()
        grads[name] = ws.grad
    torch.testing.assert_close(grads["native"], grads["reference"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("shape,k,s", [((2, 32, 11, 13), 3, 1), ((1, 48, 9, 12), 3, 2), ((1, 33, 8, 9), 5, 1)])
def test_weight_gradient_by_blocks_and_by_rows(shape, k, s, threads):
    # Fewer channel blocks than threads splits the weight gradient by rows (private buffers,
    # summed); otherwise by channel blocks. Both must give the float64 answer.
    x, w, b = _data(shape, (k, k), torch.float32, seed=3)
    dy = torch.randn(depthwise_conv2d(x, w, b, s, k // 2, 1).shape, generator=torch.Generator().manual_seed(4))
    dy = dy.contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dw, db = kernels.load().grad_weight(x, dy, k, k, (s, s), (k // 2, k // 2), (1, 1), True)
    finally:
        torch.set_num_threads(before)
    want = conv2d_weight(x.double(), w.shape, dy.double(), stride=s, padding=k // 2, groups=shape[1])
    scale = conv2d_weight(x.double().abs(), w.shape, dy.double().abs(), stride=s, padding=k // 2, groups=shape[1])
    terms = shape[0] * dy.shape[2] * dy.shape[3]          # products summed per weight
    assert ((dw.double() - want).abs() <= 2 * terms * torch.finfo(torch.float32).eps * scale).all()
    # db sums the same `terms` values per channel in float32: the same recursive-summation bound
    db_scale = dy.double().abs().sum(dim=(0, 2, 3))
    assert ((db.double() - dy.double().sum(dim=(0, 2, 3))).abs() <= 2 * terms * torch.finfo(torch.float32).eps * db_scale).all()


@pytest.mark.parametrize("m", [2, 4])
def test_native_winograd_uses_the_generated_transforms(m):
    from fractions import Fraction

    from sepconv.functional.winograd import transforms

    at, _, bt = transforms(m)
    consts = kernels.load().winograd_constants(m)
    assert consts == [[float(Fraction(v)) for v in row] for row in bt + at]


@pytest.mark.parametrize("name", ["native_winograd_rows", "native_winograd_f2x2", "native_winograd_f4x4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,p", [((1, 35, 13, 10), 1), ((2, 16, 9, 9), 0), ((1, 520, 6, 7), 2),
                                     ((1, 16, 4, 3), 1), ((1, 16, 11, 14), 1)])   # partial tiles
def test_native_winograd_forward(name, dtype, shape, p):
    algo = algorithms.get_algorithm(name)
    x, w, b = _data(shape, (3, 3), dtype)
    want = F.conv2d(x.double(), w.double(), b.double(), 1, p, 1, groups=shape[1])
    bound = algo.tolerance(dtype) * algorithms.error_scale(x, w, b)
    y = depthwise_conv2d(x, w, b, 1, p, 1, algorithm=name)
    assert y.dtype == dtype and ((y.double() - want).abs() <= bound).all()
    fused = algo.run(x, w, b, depthwise_spec("t", x, w, b, 1, p, 1), Act("relu"))
    assert ((fused.double() - want.relu()).abs() <= bound).all()
    with pytest.raises(ValueError, match="inference-only"):
        depthwise_conv2d(x, w.requires_grad_(), b, 1, p, 1, algorithm=name)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape,k,s,p", [
    ((3, 32, 9, 11), 3, 1, 1), ((3, 32, 9, 11), 3, 1, 0), ((2, 16, 12, 7), 3, 2, 1),
    ((3, 48, 11, 10), 3, 2, 0), ((2, 16, 10, 9), 5, 1, 2), ((2, 33, 13, 12), 5, 2, 2),
    ((1, 16, 1, 5), 3, 1, 1),
    # wide channel counts (a pixel 2 KiB, its neighbours in one L1 set)
    ((3, 512, 7, 7), 3, 1, 1), ((2, 528, 6, 5), 3, 1, 0), ((2, 512, 5, 6), 5, 1, 2)])
def test_one_pass_backward(shape, k, s, p, threads):
    # grad_both splits dy's rows over threads, two at a time, each step also writing the input
    # rows it owns: row ranges that cross images, odd counts and partial channel blocks
    # must still give every input row once.
    x, w, _ = _data(shape, (k, k), torch.float32, seed=5)
    y_shape = F.conv2d(x, w, None, s, p, 1, shape[1]).shape
    dy = torch.randn(y_shape, generator=torch.Generator().manual_seed(6)).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dx, dw, db = kernels.load().grad_both(x, dy, w, (s, s), (p, p), (1, 1), True)
    finally:
        torch.set_num_threads(before)
    args = dict(stride=s, padding=p, groups=shape[1])
    x64, w64, dy64 = x.double(), w.double(), dy.double()
    eps = torch.finfo(torch.float32).eps
    terms = shape[0] * y_shape[2] * y_shape[3]          # products summed per weight
    want_dx = conv2d_input(x.shape, w64, dy64, **args)
    assert dx.is_contiguous(memory_format=torch.channels_last)
    assert ((dx.double() - want_dx).abs() <= 2 * k * k * eps * conv2d_input(x.shape, w64.abs(), dy64.abs(), **args)).all()
    want_dw = conv2d_weight(x64, w.shape, dy64, **args)
    assert ((dw.double() - want_dw).abs() <= 2 * terms * eps * conv2d_weight(x64.abs(), w.shape, dy64.abs(), **args)).all()
    assert ((db.double() - dy64.sum(dim=(0, 2, 3))).abs() <= 2 * terms * eps * dy64.abs().sum(dim=(0, 2, 3))).all()


def test_one_pass_backward_declines_what_it_does_not_serve():
    mod = kernels.load()
    x, w, _ = _data((1, 16, 9, 9), (3, 3), torch.float32)
    dy = torch.randn(1, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    assert mod.grad_both(x, dy, w, (1, 1), (2, 2), (2, 2), False) == []        # dilation 2


@pytest.mark.parametrize("s", [1, 2])
def test_training_step_on_an_input_over_8_mib(s):
    # Inputs over 8 MiB take the one-pass backward (from 4 MiB) and the prefetches (from
    # 8 MiB) inside the autograd function; the gradients must be the float64 ones.
    x, w, b = _data((2, 64, 130, 130), (3, 3), torch.float32, seed=7)
    assert x.nbytes > 8 << 20
    xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
    y = depthwise_conv2d(xs, ws, bs, s, 1, 1, algorithm="native")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(8))
    y.backward(dy)
    args = dict(stride=s, padding=1, groups=64)
    x64, w64, dy64 = x.double(), w.double(), dy.double()
    eps = torch.finfo(torch.float32).eps
    terms = 2 * y.shape[2] * y.shape[3]
    assert ((xs.grad.double() - conv2d_input(x.shape, w64, dy64, **args)).abs()
            <= 2 * 9 * eps * conv2d_input(x.shape, w64.abs(), dy64.abs(), **args)).all()
    assert ((ws.grad.double() - conv2d_weight(x64, w.shape, dy64, **args)).abs()
            <= 2 * terms * eps * conv2d_weight(x64.abs(), w.shape, dy64.abs(), **args)).all()
    assert ((bs.grad.double() - dy64.sum(dim=(0, 2, 3))).abs() <= 2 * terms * eps * dy64.abs().sum(dim=(0, 2, 3))).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_inference_reuses_transposed_weights_only_while_their_bytes_are_unchanged(dtype):
    # The forward keeps transposed weights by address and checks the bytes on every call:
    # in-place updates, writes through .data (which skip the version counter) and other
    # weights at the same address must all be seen.
    x, w, b = _data((1, 32, 9, 9), (3, 3), dtype)
    args = ([1, 1], [1, 1], [1, 1])
    forward = torch.ops.sepconv.depthwise

    def check():
        want = F.conv2d(x.double(), w.double(), b.double(), 1, 1, 1, 32)
        got = forward(x, w, b, *args)
        assert ((got.double() - want).abs() <= NATIVE.tolerance(dtype) * algorithms.error_scale(x, w, b)).all()

    check()
    check()                                   # served from the cache
    w.mul_(-2)                                # in place
    check()
    w.data.copy_(torch.randn(w.shape).to(dtype))   # through .data: no version bump
    check()
    w[5, 0, 1, 1] = 7.0                       # one element
    check()
    for seed in range(300):                   # many weights, then the first again
        _, other, _ = _data((1, 32, 9, 9), (3, 3), dtype, seed=seed + 1)
        forward(x, other, b, *args)
    check()
    wide = _data((1, 1 << 16, 3, 3), (3, 3), dtype)   # 2.4-4.7 MB of weights and copies each:
    for _ in range(5):                                 # more than the cache's 16 MiB
        big = torch.randn(wide[1].shape).to(dtype)
        forward(wide[0], big, None, *args)
    check()


@pytest.mark.parametrize("c", [48, 40])
def test_input_gradient_with_streamed_stores(c):
    # A stride-2 dx over 2 MiB is written with non-temporal stores (where a channel block is
    # 64-byte aligned: every block at C = 48, only the first of each pixel at C = 40).
    x, w, _ = _data((1, c, 121, 123), (3, 3), torch.float32, seed=11)
    assert x.nbytes > 2 << 20
    dy = torch.randn(1, c, 61, 62, generator=torch.Generator().manual_seed(12)).contiguous(memory_format=torch.channels_last)
    dx = kernels.load().grad_input(dy, w, list(x.shape), (2, 2), (1, 1), (1, 1))
    args = dict(stride=2, padding=1, groups=c)
    want = conv2d_input(x.shape, w.double(), dy.double(), **args)
    bound = 2 * 9 * torch.finfo(torch.float32).eps * conv2d_input(x.shape, w.double().abs(), dy.double().abs(), **args)
    assert ((dx.double() - want).abs() <= bound).all()


@pytest.mark.parametrize("s", [1, 2])
def test_one_pass_backward_bfloat16(s):
    # bfloat16 activations: float32 accumulation, dx rounded once to bfloat16, dw kept float32
    x, w, _ = _data((2, 32, 12, 11), (3, 3), torch.bfloat16, seed=9)
    y_shape = F.conv2d(x.float(), w.float(), None, s, 1, 1, 32).shape
    dy = torch.randn(y_shape, generator=torch.Generator().manual_seed(10)).to(torch.bfloat16)
    dy = dy.contiguous(memory_format=torch.channels_last)
    dx, dw, db = kernels.load().grad_both(x, dy, w, (s, s), (1, 1), (1, 1), True)
    assert dx.dtype == torch.bfloat16 and dw.dtype == torch.float32
    args = dict(stride=s, padding=1, groups=32)
    x64, w64, dy64 = x.double(), w.double(), dy.double()
    eps32, eps16 = torch.finfo(torch.float32).eps, torch.finfo(torch.bfloat16).eps
    abs_dx = conv2d_input(x.shape, w64.abs(), dy64.abs(), **args)
    # one bfloat16 rounding of the result (half an ulp, relative) on top of the float32 sum
    assert ((dx.double() - conv2d_input(x.shape, w64, dy64, **args)).abs() <= (2 * 9 * eps32 + eps16 / 2) * abs_dx).all()
    terms = 2 * y_shape[2] * y_shape[3]
    assert ((dw.double() - conv2d_weight(x64, w.shape, dy64, **args)).abs()
            <= 2 * terms * eps32 * conv2d_weight(x64.abs(), w.shape, dy64.abs(), **args)).all()
    assert ((db.double() - dy64.sum(dim=(0, 2, 3))).abs() <= 2 * terms * eps32 * dy64.abs().sum(dim=(0, 2, 3))).all()


@pytest.mark.parametrize("s,with_bias", [(1, True), (2, False)])
def test_custom_op_registration(s, with_bias):
    # schema, fake (shape) function, autograd formula and dispatcher behaviour of the ops that
    # torch.compile captures, checked by PyTorch's own opcheck
    depthwise_op = torch.ops.sepconv.depthwise.default
    backward_op = torch.ops.sepconv.depthwise_backward.default
    x, w, b = _data((2, 16, 9, 10), (3, 3), torch.float32, seed=11)
    b = b if with_bias else None
    torch.library.opcheck(depthwise_op, (x, w, b, [s, s], [1, 1], [1, 1]))
    torch.library.opcheck(depthwise_op, (x, w, b, [s, s], [1, 1], [1, 1], "clamp", 0.0, 6.0))
    xs, ws = x.detach().requires_grad_(), w.detach().requires_grad_()
    torch.library.opcheck(depthwise_op, (xs, ws, b, [s, s], [1, 1], [1, 1]))
    dy = torch.randn(depthwise_op(x, w, b, [s, s], [1, 1], [1, 1]).shape).contiguous(
        memory_format=torch.channels_last)
    for want in ([True, True, with_bias], [False, True, False]):
        torch.library.opcheck(backward_op, (dy, x, w, [s, s], [1, 1], [1, 1], want))


def test_native_under_torch_compile_is_one_graph_and_trains():
    # fullgraph=True fails on any graph break: the native kernel must be captured as an op
    torch.manual_seed(0)
    layer = sepconv.DepthwiseConv2d(16, 16, 3, stride=2, padding=1, algorithm="native", bias=True)
    x = torch.randn(2, 16, 11, 12).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x), rtol=0, atol=0)
    grads = []
    for run in (torch.compile(layer, fullgraph=True, backend="aot_eager"), layer):
        xs = x.clone().requires_grad_()
        layer.zero_grad()
        run(xs).square().sum().backward()
        grads.append((xs.grad, layer.weight.grad, layer.bias.grad))
    for compiled, eager in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_every_instruction_set(isa):
    # The extension holds the kernels for several instruction sets and runs the best this CPU
    # has; SEPCONV_ISA asks for a lower one, so the others are tested here too.
    import subprocess
    import sys

    order = ["generic", "avx2", "avx512", "avx512bf16"]
    if order.index(isa) >= order.index(kernels.isa()):
        pytest.skip(f"this CPU's best set is {kernels.isa()}: {isa} is tested directly")
    env = {**os.environ, "SEPCONV_ISA": isa, "SEPCONV_EXPECT_ISA": isa}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                           "forward_and_relu or gradients or one_pass or winograd_forward or streamed or reuses"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]


def test_double_backward_through_native_keeps_the_second_order_term():
    # a gradient penalty: d/dw |dL/dx|^2 needs the backward's own derivative (issue 14 saw
    # 0.0012 against 18,730 when it was dropped); nn.Conv2d(groups=C) is the reference
    torch.manual_seed(0)
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    grads = []
    for fn in (lambda: depthwise_conv2d(x, w, padding=1, algorithm="native"),
               lambda: F.conv2d(x, w, padding=1, groups=8)):
        y = fn()
        (gx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.pow(2).sum(), w)
        grads.append(gw)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-3)


def test_autocast_bfloat16_like_nn_conv2d():
    layer = sepconv.DepthwiseConv2d(8, 8, 3, padding=1)
    ref = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = layer(x), ref(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("nt_bytes", ["0", "1000000000000"])
def test_streamed_stores_on_or_off_give_the_same_results(nt_bytes):
    """SEPCONV_NT_BYTES=0 streams every output (aligned vectors; the rest stored normally), a
    huge value none: forward and input gradient as F.conv2d's either way (float64 reference)."""
    import subprocess
    import sys

    code = (
        "import torch, torch.nn.functional as F\n"
        "from sepconv.functional import depthwise_conv2d\n"
        "torch.manual_seed(0)\n"
        "for s in (1, 2):\n"
        "    x = torch.randn(2, 40, 33, 31).contiguous(memory_format=torch.channels_last).requires_grad_()\n"
        "    w = torch.randn(40, 1, 3, 3, requires_grad=True)\n"
        "    y = depthwise_conv2d(x, w, stride=s, padding=1, algorithm='native')\n"
        "    y.backward(torch.ones_like(y))\n"
        "    x64, w64 = x.detach().double().requires_grad_(), w.detach().double()\n"
        "    ref = F.conv2d(x64, w64, stride=s, padding=1, groups=40)\n"
        "    ref.backward(torch.ones_like(ref))\n"
        "    assert (y.double() - ref).abs().max() < 1e-4, s\n"
        "    assert (x.grad.double() - x64.grad).abs().max() < 1e-4, s\n"
        "print('ok')\n")
    env = dict(os.environ, SEPCONV_NT_BYTES=nt_bytes)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
