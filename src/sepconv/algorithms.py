"""The registry of depthwise convolution algorithms and the ``"auto"`` tuner.

Each :class:`Algorithm` declares what it can serve (kernel size, stride, dilation, dtype,
device, training) and its error bound; :func:`resolve` turns an algorithm name into the
algorithm that runs a call, and never falls back silently: a named algorithm that cannot
serve a call is an error that says why.

``"auto"`` times every eligible algorithm once on the real shape, dtype, layout and thread
count (forward, or forward+backward when gradients are needed), checks each output against
``reference``, keeps the fastest and caches the plan on disk, keyed by machine and versions.
``explain(...)`` shows the candidates, their times and the choice.

Example:
    >>> from sepconv import algorithms
    >>> [a.name for a in algorithms.list_algorithms()][:2]
    ['reference', 'direct']
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from ._validation import choice
from .functional import direct as _direct
from .functional import winograd as _winograd
from . import kernels as _kernels
from .kernels import depthwise as _native_dw
from .bench.harness import Candidate, compare
from .spec import ConvSpec

TIE_MARGIN = 0.05  # "auto" prefers reference unless another algorithm is >5% faster
FLOATS = frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16})


@dataclass(frozen=True)
class Algorithm:
    """One way to compute a depthwise convolution.

    ``run(x, weight, bias, spec) -> y`` with x (N, C, H, W), weight (C*m, 1, kh, kw) and
    y (N, C*m, out_h, out_w) in x's memory format. ``None`` in a capability field means "any".
    ``error_eps`` bounds the error against a float64 computation on the same (rounded) inputs,
    in units of the dtype's machine epsilon, normwise per output channel (see
    :func:`error_scale`): ``|y - y64| <= error_eps * eps(dtype) * error_scale``. Tests
    enforce it; docs/algorithms.md lists the measured values behind each bound.
    """

    name: str
    summary: str
    run: Callable
    kernel_sizes: frozenset | None = None
    strides: frozenset | None = None
    dilations: frozenset | None = None
    dtypes: frozenset = FLOATS
    devices: frozenset | None = None
    layouts: frozenset | None = None
    depth_multipliers: frozenset | None = None
    differentiable: bool = True
    compilable: bool = True   # torch.compile can capture it in one graph
    fuses_relu: bool = False  # run(..., relu=True) applies ReLU in the same pass (inference)
    available: Callable[[], bool] = lambda: True
    unavailable_reason: Callable[[], str] = lambda: ""
    error_eps: float = 4.0

    def tolerance(self, dtype: torch.dtype) -> float:
        return self.error_eps * torch.finfo(dtype).eps

    def why_not(self, spec: ConvSpec) -> str | None:
        """None when this algorithm can serve `spec`, else the rule it breaks and the value."""
        if not self.available():
            return f"it is not available on this machine ({self.unavailable_reason()})."
        checks = (
            ("kernel_size", self.kernel_sizes, spec.kernel_size),
            ("stride", self.strides, spec.stride),
            ("dilation", self.dilations, spec.dilation),
            ("depth_multiplier", self.depth_multipliers, spec.depth_multiplier),
        )
        for name, allowed, got in checks:
            if allowed is not None and got not in allowed:
                return f"`{name}` must be one of {sorted(allowed)}. Received: {name}={got}."
        if spec.dtype not in self.dtypes:
            names = sorted(str(d).replace("torch.", "") for d in self.dtypes)
            return f"dtype must be one of {names}. Received: dtype={spec.dtype}."
        if self.devices is not None and spec.device not in self.devices:
            return f"device must be one of {sorted(self.devices)}. Received: device={spec.device!r}."
        if self.layouts is not None and spec.layout not in self.layouts:
            return f"layout must be one of {sorted(self.layouts)}. Received: layout={spec.layout!r}."
        if spec.requires_grad and not self.differentiable:
            return "it is inference-only, and this call needs gradients. Received: requires_grad=True."
        return None


_REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    if algorithm.name in _REGISTRY or algorithm.name == "auto":
        raise ValueError(f"register: algorithm name {algorithm.name!r} is taken.")
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def list_algorithms(spec: ConvSpec | None = None) -> list[Algorithm]:
    """All registered algorithms, or those that can serve `spec`."""
    algos = list(_REGISTRY.values())
    return algos if spec is None else [a for a in algos if a.why_not(spec) is None]


def get_algorithm(name: str, owner: str = "get_algorithm") -> Algorithm:
    choice(owner, "algorithm", name, list(_REGISTRY))
    return _REGISTRY[name]


def check_name(owner: str, name) -> str:
    """Validate an algorithm name at construction time (layers), before any call."""
    return choice(owner, "algorithm", name, ["auto", *_REGISTRY])


def error_scale(x, weight, bias) -> torch.Tensor:
    """Per-output-channel scale of a depthwise output, shape (1, C*m, 1, 1), float64:
    max |x| over the input channel times sum |w| over the taps, plus |b|. Error bounds are
    normwise against it, because a Winograd output mixes a whole tile of inputs."""
    m = weight.shape[0] // x.shape[1]
    xmax = x.detach().double().abs().amax(dim=(0, 2, 3)) if x.numel() else x.new_zeros(x.shape[1]).double()
    scale = xmax.repeat_interleave(m) * weight.detach().double().abs().sum(dim=(1, 2, 3))
    if bias is not None:
        scale = scale + bias.detach().double().abs()
    return scale.view(1, -1, 1, 1)


def _tracing(x: torch.Tensor) -> bool:
    """True while a graph is being captured: timing must not happen, and exporters need
    standard ops, so "auto" then means "reference"."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or isinstance(x, torch.fx.Proxy))


_FORCED: list[str] = []


@contextmanager
def forced(name: str):
    """Run every depthwise call inside the block with algorithm `name`, whatever the caller
    asked for. Cost counting uses ``forced("reference")`` so that it sees one aten
    convolution per call; the native kernels are invisible to dispatch-level counting.

    Example:
        >>> with forced("reference"):
        ...     pass
    """
    get_algorithm(name, "forced")
    _FORCED.append(name)
    try:
        yield
    finally:
        _FORCED.pop()


def resolve(name: str, spec: ConvSpec, owner: str, x: torch.Tensor | None = None) -> Algorithm:
    """The algorithm that runs `spec`: the named one if it can, else a ValueError saying why."""
    if _FORCED:
        name = _FORCED[-1]
    if name == "auto":
        # nothing to time on meta tensors (shape inference, deferred initialisation)
        if x is not None and x.device.type == "meta":
            return _REGISTRY["reference"]
        # torch.compile cannot time either, but it can run what eager mode tuned for the
        # spec (the native kernel is a registered op); exporters need standard ops
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            return _REGISTRY[_compiled_choice(spec.key())]
        if x is not None and _tracing(x):
            return _REGISTRY["reference"]
        return _REGISTRY[tuner.plan(spec).choice]
    algo = get_algorithm(name, owner)
    reason = algo.why_not(spec)
    if reason is not None:
        raise ValueError(f"{owner}: algorithm {name!r} cannot serve this call: {reason}")
    return algo


# ----------------------------------------------------------------------------- auto tuner

@dataclass
class Plan:
    """The tuner's decision for one spec: median seconds per candidate, rejected ones and why."""

    key: str
    choice: str
    times: dict[str, float]
    rejected: dict[str, str]
    mode: str
    threads: int
    cached: bool = False

    def __str__(self) -> str:
        lines = [f"spec   {self.key}", f"mode   {self.mode} (median seconds, {self.threads} threads)"
                 + ("  [from cache]" if self.cached else "")]
        best = min(self.times.values()) if self.times else None
        for name, t in sorted(self.times.items(), key=lambda kv: kv[1]):
            mark = "<- chosen" if name == self.choice else ""
            lines.append(f"  {name:<16} {t * 1e3:10.4f} ms  x{t / best:5.2f}  {mark}")
        for name, why in self.rejected.items():
            lines.append(f"  {name:<16} not eligible: {why}")
        return "\n".join(lines)


# Bump when the tuner's timing method changes (2: slow candidates dropped at 2x, 10+ rounds).
TUNER_VERSION = 2


def machine_fingerprint() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The algorithm set, the native sources and the timing method are part of the key: a plan
    # made without a newer algorithm, with an older kernel or by an older method is stale.
    return (f"{cpu}|{os.cpu_count()}cpu|torch {torch.__version__}|sepconv {__version__}|tuner {TUNER_VERSION}"
            f"|{torch.backends.cpu.get_cpu_capability()}|{','.join(sorted(_REGISTRY))}"
            f"|depthwise.cpp {_kernels.source_digest('depthwise')}")


def cache_dir() -> Path:
    return Path(os.environ.get("SEPCONV_CACHE_DIR", Path.home() / ".cache" / "sepconv"))


def random_inputs(spec: ConvSpec, generator_seed: int = 0):
    """Inputs of `spec`'s shape, dtype, device and layout (for timing and checks)."""
    g = torch.Generator().manual_seed(generator_seed)
    x = torch.randn(spec.batch, spec.channels, spec.height, spec.width, generator=g)
    w = torch.randn(spec.out_channels, 1, *spec.kernel_size, generator=g) / spec.kernel_size[0]
    b = torch.randn(spec.out_channels, generator=g) if spec.has_bias else None
    if spec.layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    cast = lambda t: None if t is None else t.to(device=spec.device, dtype=spec.dtype)
    return cast(x), cast(w), cast(b)


class Tuner:
    """Times eligible algorithms per spec; plans are kept in memory and in one JSON file."""

    def __init__(self):
        self._plans: dict[str, Plan] = {}
        self._disk: dict | None = None

    @property
    def path(self) -> Path:
        return cache_dir() / "plans.json"

    def _load(self) -> dict:
        if self._disk is None:
            try:
                self._disk = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._disk = {}
        return self._disk

    def _save(self, key: str, plan: Plan) -> None:
        disk = self._load()
        disk.setdefault(machine_fingerprint(), {})[key] = {
            "choice": plan.choice, "times": plan.times, "rejected": plan.rejected,
            "mode": plan.mode, "threads": plan.threads}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(disk, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)  # atomic: a reader never sees half a file
        except OSError:
            pass  # a read-only home only costs re-tuning in the next process

    def clear(self, disk: bool = False) -> None:
        from .functional.depthwise import _DISPATCH

        _DISPATCH.clear()
        self._plans.clear()
        self._disk = None
        if disk and self.path.exists():
            self.path.unlink()

    def cached_choice(self, key: str) -> str | None:
        """The choice of the plan stored under `key` (memory, then disk), without tuning."""
        if key in self._plans:
            return self._plans[key].choice
        return self._load().get(machine_fingerprint(), {}).get(key, {}).get("choice")

    def plan(self, spec: ConvSpec, retune: bool = False) -> Plan:
        key = f"{spec.key()}-t{torch.get_num_threads()}"
        if not retune:
            if key in self._plans:
                return self._plans[key]
            stored = self._load().get(machine_fingerprint(), {}).get(key)
            if stored and stored["choice"] in _REGISTRY and _REGISTRY[stored["choice"]].why_not(spec) is None:
                plan = Plan(key=key, cached=True, **stored)
                self._plans[key] = plan
                return plan
        plan = self._measure(spec, key)
        self._plans[key] = plan
        self._save(key, plan)
        return plan

    def _measure(self, spec: ConvSpec, key: str) -> Plan:
        rejected = {a.name: a.why_not(spec) for a in _REGISTRY.values() if a.why_not(spec)}
        candidates = [a for a in _REGISTRY.values() if a.name not in rejected]
        train = spec.requires_grad
        x, w, b = random_inputs(spec)
        with torch.no_grad():
            expected = _REGISTRY["reference"].run(x.double(), w.double(),
                                                  None if b is None else b.double(), spec)
            scale = error_scale(x, w, b)
        runners = []
        for algo in candidates:
            with torch.no_grad():
                y = algo.run(x, w, b, spec)
            excess = (y.double() - expected).abs() - algo.tolerance(spec.dtype) * scale
            if y.numel() and excess.max().item() > 0:
                rejected[algo.name] = "output outside its error bound on this shape"
                continue
            if train:
                xs, ws = x.detach().requires_grad_(), w.detach().requires_grad_()
                bs = None if b is None else b.detach().requires_grad_()
                grad = torch.ones_like(y)

                def step(algo=algo, xs=xs, ws=ws, bs=bs, grad=grad):
                    algo.run(xs, ws, bs, spec).backward(grad)
            else:
                def step(algo=algo):
                    with torch.no_grad():
                        algo.run(x, w, b, spec)
            runners.append(Candidate(algo.name, _synchronized(step, spec.device)))
        # Interleaved rounds: a noisy moment hits every candidate alike. Candidates over 2x
        # the fastest after 3 rounds cannot win and are dropped, and the rest are timed
        # afresh over at least 10 more rounds: left in, the slow PyTorch forms (big
        # temporaries) evicted the caches before every call of the fast ones and doubled
        # their times (a 1.3x lead measured as 0.94x).
        # (one warm-up call: the error check above was the first)
        compare(runners, rounds=15, warmup=1, budget_s=0.3, drop_factor=2.0, min_rounds=10)
        times = {r.name: r.median for r in runners}
        best = min(times, key=times.get)
        # A challenger must beat the baseline clearly: timing noise on a busy machine is a few
        # percent, and a plan is cached for good, so a near-tie keeps the reference path.
        if "reference" in times and times[best] > times["reference"] / (1 + TIE_MARGIN):
            best = "reference"
        return Plan(key=key, choice=best, times=times, rejected=rejected,
                    mode="forward+backward" if train else "forward", threads=torch.get_num_threads())


tuner = Tuner()


@torch.compiler.assume_constant_result
def _compiled_choice(spec_key: str) -> str:
    """For torch.compile, which runs this once while capturing and keeps the answer: the
    algorithm tuned for the spec in eager mode (in memory or on disk), if it can be captured
    in the graph; else "reference"."""
    choice = tuner.cached_choice(f"{spec_key}-t{torch.get_num_threads()}")
    algo = _REGISTRY.get(choice)
    return choice if algo is not None and algo.compilable and algo.available() else "reference"


def _synchronized(fn, device: str):
    """`fn`, waiting for the device to finish its work before returning: on an accelerator a
    call only queues kernels, and timing the queueing would rank algorithms by launch cost."""
    if torch.device(device).type == "cpu":
        return fn

    def run():
        fn()
        torch.accelerator.synchronize(device)
    return run


def explain(input_shape, kernel_size=3, stride=1, padding=0, dilation=1, depth_multiplier=1,
            dtype=torch.float32, channels_last=True, training=False, bias=False,
            retune=False) -> Plan:
    """Tune (or read the cached plan for) one depthwise shape and return the :class:`Plan`;
    ``print(plan)`` shows candidates, median times and the choice.

    Args:
        input_shape: (N, C, H, W).

    Example:
        >>> print(explain((1, 32, 112, 112), stride=1, padding=1))  # doctest: +SKIP
    """
    from ._validation import pair
    from .spec import depthwise_spec

    n, c, h, w = input_shape
    kh, kw = pair("explain", "kernel_size", kernel_size, minimum=1)
    x = torch.empty(n, c, h, w, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.empty(c * depth_multiplier, 1, kh, kw, dtype=dtype, requires_grad=training)
    b = torch.empty(c * depth_multiplier, dtype=dtype) if bias else None
    with torch.enable_grad():
        spec = depthwise_spec("explain", x, weight, b, stride, padding, dilation)
    return tuner.plan(spec, retune=retune)


# ----------------------------------------------------------------------------- built-ins

_NOT_WINOGRAD = dict(kernel_sizes=frozenset({(3, 3)}), strides=frozenset({(1, 1)}),
                     dilations=frozenset({(1, 1)}))

# error_eps: 1.3-2.5x the maximum normwise error measured by benchmarks/measure_error.py
# (float32; the guide has the measurements), rounded up. Low-precision
# inputs run Winograd transforms in float32, so their bound is the output rounding, as for
# direct. A transform's bound holds for each of its implementations.
F2X2_EPS, F4X4_EPS = 3, 24
register(Algorithm(
    "reference", "F.conv2d with groups=C (PyTorch/oneDNN)", _direct.reference, error_eps=2))
register(Algorithm(
    "direct", "sum of kh*kw shifted views, PyTorch, any device", _direct.direct, error_eps=2))
register(Algorithm(
    "winograd_f2x2", "2-D Winograd F(2x2,3x3), PyTorch, any device",
    lambda x, w, b, s: _winograd.depthwise_winograd_2d(x, w, b, s, 2), **_NOT_WINOGRAD,
    error_eps=F2X2_EPS))
register(Algorithm(
    "winograd_f4x4", "2-D Winograd F(4x4,3x3), PyTorch, any device",
    lambda x, w, b, s: _winograd.depthwise_winograd_2d(x, w, b, s, 4), **_NOT_WINOGRAD,
    error_eps=F4X4_EPS))
register(Algorithm(
    "winograd_rows", "row-wise 1-D F(2,3) with cached transformed rows (MNN), PyTorch",
    _winograd.depthwise_winograd_rows, **_NOT_WINOGRAD, error_eps=2))
# The native kernels: CPU, float32/bfloat16, one filter per channel, built on first use.
_NATIVE = dict(dtypes=frozenset({torch.float32, torch.bfloat16}), devices=frozenset({"cpu"}),
               depth_multipliers=frozenset({1}), fuses_relu=True,
               available=lambda: _kernels.is_available("depthwise"),
               unavailable_reason=lambda: _kernels.unavailable_reason("depthwise"), error_eps=2)
register(Algorithm(
    "native", "C++ NHWC direct kernel (AVX-512/AVX2 via -march=native), fwd+bwd, CPU",
    _native_dw.run, **_NATIVE))
register(Algorithm(
    "native_winograd_f2x2", "C++ NHWC 2-D Winograd F(2x2,3x3) (16 multiplies per 4 outputs), inference, CPU",
    _native_dw.run_winograd_2d(2), **_NOT_WINOGRAD, **{**_NATIVE, "error_eps": F2X2_EPS}, differentiable=False,
    compilable=False))
register(Algorithm(
    "native_winograd_f4x4", "C++ NHWC 2-D Winograd F(4x4,3x3) (36 multiplies per 16 outputs), inference, CPU",
    _native_dw.run_winograd_2d(4), **_NOT_WINOGRAD, **{**_NATIVE, "error_eps": F4X4_EPS}, differentiable=False,
    compilable=False))
register(Algorithm(
    "native_winograd_rows", "C++ NHWC row-wise Winograd F(2,3) (12 multiplies per 2 outputs), inference, CPU",
    _native_dw.run_winograd_rows, **_NOT_WINOGRAD, **_NATIVE, differentiable=False,
    compilable=False))
