"""Conformance suite: every algorithm either serves a call within its error bound against an
independent float64 reference, or refuses it with a ValueError that says why."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import sepconv
from sepconv import algorithms
from sepconv.functional import depthwise_conv2d
from sepconv.spec import depthwise_spec
from reference import depthwise_conv2d_loops

ALGORITHMS = [a.name for a in algorithms.list_algorithms()]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def make(shape, k, m=1, dtype=torch.float32, bias=True, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    wt = torch.randn(c * m, 1, *k, generator=g).to(dtype)
    b = torch.randn(c * m, generator=g).to(dtype) if bias else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, wt, b


def expected_f64(x, w, b, stride, padding, dilation):
    """float64 result on the same (already rounded) inputs, by F.conv2d in float64."""
    spec = depthwise_spec("test", x, w, b, stride, padding, dilation)
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), spec.stride,
                    spec.padding, spec.dilation, groups=x.shape[1]), spec


def check(algo_name, x, w, b, stride=1, padding=0, dilation=1):
    algo = algorithms.get_algorithm(algo_name)
    want, spec = expected_f64(x, w, b, stride, padding, dilation)
    reason = algo.why_not(spec)
    if reason is not None:
        with pytest.raises(ValueError, match=f"algorithm '{algo_name}' cannot serve this call"):
            depthwise_conv2d(x, w, b, stride, padding, dilation, algorithm=algo_name)
        return None
    y = depthwise_conv2d(x, w, b, stride, padding, dilation, algorithm=algo_name)
    assert y.dtype == x.dtype and y.shape == want.shape
    bound = algo.tolerance(x.dtype) * algorithms.error_scale(x, w, b)
    err = (y.double() - want).abs()
    assert (err <= bound).all(), f"{algo_name}: max error {err.max().item():.3g} over bound"
    if x.shape[0] and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last)
    return y


# kernel, stride, padding, dilation, depth multiplier, input (N, C, H, W)
CASES = [
    ((3, 3), 1, 1, 1, 1, (2, 5, 11, 7)),
    ((3, 3), 1, "same", 1, 1, (1, 3, 9, 13)),
    ((3, 3), 2, 1, 1, 1, (3, 4, 12, 9)),
    ((3, 3), 1, 0, 2, 2, (1, 3, 10, 11)),
    ((3, 3), 1, "valid", 1, 1, (1, 4, 5, 6)),
    ((1, 1), 1, 0, 1, 2, (2, 3, 4, 5)),
    ((5, 5), 2, 2, 1, 1, (1, 4, 13, 10)),
    ((5, 5), 1, "same", 2, 1, (1, 2, 14, 12)),
    ((7, 7), 1, 3, 1, 1, (1, 3, 9, 8)),
    ((3, 5), (2, 1), (1, 2), (1, 2), 1, (2, 3, 9, 11)),
    ((2, 2), 1, 0, 1, 1, (1, 3, 6, 5)),
    ((3, 3), 1, 1, 1, 1, (0, 4, 6, 6)),
    ((3, 3), 1, 1, 1, 1, (1, 1, 1, 1)),
]


@pytest.mark.parametrize("algo", ALGORITHMS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}s{c[1]}p{c[2]}d{c[3]}m{c[4]}x{c[5]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_algorithm_matches_float64(algo, case, dtype, channels_last):
    k, stride, padding, dilation, m, shape = case
    x, w, b = make(shape, k, m, dtype, channels_last=channels_last)
    check(algo, x, w, b, stride, padding, dilation)


def test_float64_reference_is_itself_right():
    # The loops follow the definition; F.conv2d in float64 must agree to rounding.
    x, w, b = make((2, 3, 7, 6), (3, 2), m=2, dtype=torch.float64)
    loops = depthwise_conv2d_loops(x, w, b, (2, 1), (1, 1), (1, 2))
    want, _ = expected_f64(x, w, b, (2, 1), 1, (1, 2))
    np.testing.assert_allclose(loops, want.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_against_loops(algo):
    # The most precise combination the algorithm serves, compared with the definition.
    for dtype, m in ((torch.float64, 2), (torch.float64, 1), (torch.float32, 1)):
        x, w, b = make((1, 3, 8, 7), (3, 3), m=m, dtype=dtype)
        y = check(algo, x, w, b, 1, 1, 1)
        if y is not None:
            break
    assert y is not None, f"{algo} serves none of float64/float32 3x3"
    loops = depthwise_conv2d_loops(x, w, b, (1, 1), (1, 1), (1, 1))
    bound = algorithms.get_algorithm(algo).tolerance(dtype) * algorithms.error_scale(x, w, b)
    assert (torch.from_numpy(loops) - y.double()).abs().le(bound).all()


@given(
    n=st.integers(0, 3), c=st.integers(1, 5), h=st.integers(1, 14), w=st.integers(1, 14),
    kh=st.sampled_from([1, 3, 5]), kw=st.sampled_from([1, 3, 5]), s=st.integers(1, 2),
    d=st.integers(1, 2), p=st.integers(0, 3), m=st.integers(1, 2), cl=st.booleans(),
    algo=st.sampled_from(ALGORITHMS))
def test_random_shapes(n, c, h, w, kh, kw, s, d, p, m, cl, algo):
    if h + 2 * p < d * (kh - 1) + 1 or w + 2 * p < d * (kw - 1) + 1:
        return  # empty output: covered by test_errors
    x, wt, b = make((n, c, h, w), (kh, kw), m, channels_last=cl, seed=n * 100 + h)
    check(algo, x, wt, b, s, p, d)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_non_contiguous_input(algo):
    x, w, b = make((2, 6, 12, 10), (3, 3))
    view = x[:, ::2, 1:, ::1].transpose(2, 3)  # strided channels, transposed spatial dims
    assert not view.is_contiguous()
    check(algo, view, w[::2].contiguous(), b[::2].contiguous(), 1, 1, 1)


def test_unbatched_input():
    x, w, b = make((1, 4, 7, 7), (3, 3))
    y = depthwise_conv2d(x[0], w, b, padding=1, algorithm="direct")
    torch.testing.assert_close(y, F.conv2d(x, w, b, padding=1, groups=4)[0])


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_gradcheck_float64(algo):
    x, w, b = make((2, 2, 6, 5), (3, 3), m=2, dtype=torch.float64)
    spec = depthwise_spec("t", x, w, b, 1, 1, 1)
    if algorithms.get_algorithm(algo).why_not(spec) is not None:
        pytest.skip(f"{algo} does not serve this shape (refusal is tested above)")
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(
        lambda a, c, d: depthwise_conv2d(a, c, d, 1, 1, 1, algorithm=algo), inputs)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_gradients_match_reference_strided(algo):
    x, w, b = make((2, 3, 9, 8), (3, 3), dtype=torch.float64)
    for stride, pad, dil in ((2, 1, 1), (1, 2, 2)):
        spec = depthwise_spec("t", x.requires_grad_(), w, b, stride, pad, dil)
        if algorithms.get_algorithm(algo).why_not(spec) is not None:
            continue
        grads = []
        for name in (algo, "reference"):
            xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
            y = depthwise_conv2d(xs, ws, bs, stride, pad, dil, algorithm=name)
            y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
            grads.append((xs.grad, ws.grad, bs.grad))
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_auto_picks_an_eligible_algorithm_and_explains():
    plan = sepconv.explain((1, 8, 16, 16), padding=1, stride=2)
    assert plan.choice in plan.times
    assert "winograd_f2x2" in plan.rejected and "stride" in plan.rejected["winograd_f2x2"]
    assert plan.choice in str(plan) and "<- chosen" in str(plan)
    # a second call reads the cached plan instead of timing again
    assert sepconv.explain((1, 8, 16, 16), padding=1, stride=2) is plan


def test_auto_plan_persists_on_disk():
    algorithms.tuner.clear()
    first = sepconv.explain((1, 4, 10, 10), padding=1)
    algorithms.tuner.clear()  # a new process: memory empty, disk kept
    again = sepconv.explain((1, 4, 10, 10), padding=1)
    assert again.cached and again.choice == first.choice and again.times == first.times


def test_auto_training_uses_differentiable_algorithms():
    x, w, b = make((1, 4, 9, 9), (3, 3))
    w.requires_grad_()
    y = depthwise_conv2d(x, w, b, padding=1)
    y.sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape


def test_auto_on_meta_tensors_runs_reference_without_timing():
    # meta tensors (shape inference, deferred initialisation) cannot be timed or checked
    x, w = torch.empty(2, 8, 13, 11, device="meta"), torch.empty(8, 1, 3, 3, device="meta")
    y = depthwise_conv2d(x, w, None, 2, 1, 1)
    assert y.device.type == "meta" and y.shape == (2, 8, 7, 6)
    layer = sepconv.DepthwiseConv2d(8, 8, 3, padding=1, device="meta")
    assert layer(x).shape == (2, 8, 13, 11)


def test_tuner_waits_for_accelerators_when_timing(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda device=None: calls.append(device))
    cpu_fn = lambda: calls.append("ran")  # noqa: E731
    from sepconv.algorithms.tuner import _synchronized

    assert _synchronized(cpu_fn, "cpu") is cpu_fn      # nothing queued on the CPU
    _synchronized(cpu_fn, "cuda")()
    assert calls == ["ran", "cuda"]
