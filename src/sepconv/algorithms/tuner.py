"""The ``"auto"`` tuner: times the eligible algorithms once per call signature on this machine,
keeps the fastest as a :class:`Plan`, and stores plans on disk.

Each candidate's output is first checked against a float64 computation (on a crop of the
input), then the candidates are timed in interleaved rounds on the real shape, dtype, layout
and thread count (forward, or forward+backward when gradients are needed). A challenger
must beat ``reference`` by ``TIE_MARGIN``. Timing that scatters widely (a busy machine) is
redone; a plan that stays noisy is used by this process but not trusted by the next, which
tunes again. Candidates whose temporaries exceed ``SEPCONV_TUNE_MEMORY_MB`` (default 256)
are not run, and "auto" never picks an algorithm whose NaN/Inf behaviour differs from the
reference (Winograd): those serve only calls that name them.

Plans live in ``plans.json`` under :func:`cache_dir`, keyed by a fingerprint of the machine,
the versions, the native kernels' build and the algorithms available, so a plan made without
the native kernels (or with older ones) is never served with them. Writers merge under a
file lock, so concurrent processes keep each other's plans; a malformed file is ignored with
one warning and rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import kernels
from .._files import atomic_write
from .._version import __version__
from ..spec import ConvSpec
from ..timing import Candidate, compare
from .registry import _REGISTRY, error_scale

TIE_MARGIN = 0.05     # "auto" prefers reference unless another algorithm is >5% faster
NOISY_SPREAD = 1.0    # (p90 - p10) / median above which a candidate's timing is redone
TIMING_ATTEMPTS = 3
MAX_PLANS = 1024      # plans kept in memory (least recently used dropped)
LOCK_TIMEOUT_S = 10.0
# Bump when the tuner's timing method changes (3: spread checked, memory bounded, crop check).
TUNER_VERSION = 3


@dataclass
class Plan:
    """The tuner's decision for one spec: median seconds and spread ((p90 - p10) / median) per
    candidate, rejected candidates and why, and whether the timing stayed noisy."""

    key: str
    choice: str
    times: dict[str, float]
    rejected: dict[str, str]
    mode: str
    threads: int
    spread: dict[str, float] = field(default_factory=dict)
    noisy: bool = False
    spec: dict = field(default_factory=dict)
    cached: bool = False

    def __str__(self) -> str:
        flags = ("  [from cache]" if self.cached else "") + ("  [noisy: will be re-tuned]" if self.noisy else "")
        lines = [f"spec   {self.key}", f"mode   {self.mode} (median seconds, {self.threads} threads){flags}"]
        best = min(self.times.values()) if self.times else None
        for name, t in sorted(self.times.items(), key=lambda kv: kv[1]):
            mark = "<- chosen" if name == self.choice else ""
            spread = f"  spread {self.spread[name]:4.2f}" if name in self.spread else ""
            lines.append(f"  {name:<22} {t * 1e3:10.4f} ms  x{t / best:5.2f}{spread}  {mark}")
        for name, why in self.rejected.items():
            lines.append(f"  {name:<22} not eligible: {why}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        del d["cached"], d["key"]   # (the key is the entry's name in the file)
        return d


def spec_to_json(spec: ConvSpec) -> dict:
    d = dataclasses.asdict(spec)
    d["dtype"] = str(spec.dtype).replace("torch.", "")
    return d


def spec_from_json(d: dict) -> ConvSpec:
    d = dict(d)
    d["dtype"] = getattr(torch, d["dtype"])
    for name in ("kernel_size", "stride", "padding", "dilation"):
        d[name] = tuple(d[name])
    return ConvSpec(**d)


def _plan_from_json(key: str, d) -> Plan | None:
    """A stored plan, or None if `d` does not have a plan's shape."""
    try:
        plan = Plan(key=key, cached=True, **d)
    except TypeError:
        return None
    ok = (isinstance(plan.choice, str) and isinstance(plan.mode, str) and isinstance(plan.threads, int)
          and isinstance(plan.times, dict) and all(isinstance(v, (int, float)) for v in plan.times.values())
          and isinstance(plan.rejected, dict) and isinstance(plan.spread, dict)
          and isinstance(plan.noisy, bool) and isinstance(plan.spec, dict))
    return plan if ok else None


def available_algorithms() -> list[str]:
    return sorted(name for name, a in _REGISTRY.items() if a.available())


def machine_fingerprint() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The algorithms available, the native kernels' build and ISA and the timing method are
    # part of the key: a plan made without an algorithm, with other kernels or by an older
    # method is stale.
    native = f"{kernels.isa()}:{kernels.load().source_digest()}" if kernels.is_available() else "none"
    return (f"{cpu}|{os.cpu_count()}cpu|torch {torch.__version__}|sepconv {__version__}|tuner {TUNER_VERSION}"
            f"|{torch.backends.cpu.get_cpu_capability()}|native {native}|{','.join(available_algorithms())}")


_warned: set = set()


def _warn_once(topic: str, message: str) -> None:
    if topic not in _warned:
        _warned.add(topic)
        warnings.warn(f"sepconv: {message}", RuntimeWarning, stacklevel=3)


def cache_dir() -> Path | None:
    """Where plans (and measured machine peaks) are kept: ``$SEPCONV_CACHE_DIR`` if set and not
    empty, else ``$XDG_CACHE_HOME/sepconv`` or ``~/.cache/sepconv``; None when there is no home
    directory either (plans then stay in memory)."""
    for var, sub in (("SEPCONV_CACHE_DIR", ""), ("XDG_CACHE_HOME", "sepconv")):
        value = os.environ.get(var)
        if value:
            return Path(value) / sub if sub else Path(value)
    try:
        return Path.home() / ".cache" / "sepconv"
    except RuntimeError:  # no HOME and no passwd entry
        return None


def memory_budget() -> int:
    """Bytes of temporaries a candidate may need to be timed (``SEPCONV_TUNE_MEMORY_MB``)."""
    value = os.environ.get("SEPCONV_TUNE_MEMORY_MB", "256")
    try:
        return int(float(value) * (1 << 20))
    except ValueError:
        raise ValueError(f"SEPCONV_TUNE_MEMORY_MB must be a number of MiB. Received: {value!r}.") from None


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


def _check_crop(spec: ConvSpec) -> ConvSpec:
    """A small instance of `spec` on which each candidate's output is checked against float64
    before it is timed: batch 1, a few rows, at most 64 columns past the kernel and 128
    channels past the last full vector block (so row blocks, borders and channel tails are all
    exercised), the arguments kept."""
    kh, kw = (d * (k - 1) + 1 for d, k in zip(spec.dilation, spec.kernel_size))
    rows = min(spec.height, max(kh - 2 * spec.padding[0], 1) + 6 * spec.stride[0])
    cols = min(spec.width, max(kw - 2 * spec.padding[1], 1) + 64 * spec.stride[1])
    channels = min(spec.channels, 128 + spec.channels % 16)
    return dataclasses.replace(spec, batch=min(spec.batch, 1), height=rows, width=cols, channels=channels,
                               out_channels=channels * spec.depth_multiplier)


def _available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _timing_bytes(spec: ConvSpec, have_input: bool) -> int:
    """Bytes the timing allocates: the input (unless the caller's is used), the output, and in
    training the output gradient and the input gradient."""
    item = torch.finfo(spec.dtype).bits // 8
    oh, ow = spec.out_size
    x = spec.batch * spec.channels * spec.height * spec.width * item
    y = spec.batch * spec.out_channels * oh * ow * item
    return (0 if have_input else x) + y + ((y + x) if spec.requires_grad else 0)


class Tuner:
    """Times eligible algorithms per spec; plans are kept in memory and in one JSON file."""

    def __init__(self):
        self.generation = 0   # bumped when plans are forgotten or replaced: resolved calls are stale
        self._plans: OrderedDict[str, Plan] = OrderedDict()
        self._lock = threading.RLock()
        self._retuned: set = set()   # noisy stored plans this process tuned again

    @property
    def path(self) -> Path | None:
        d = cache_dir()
        return None if d is None else d / "plans.json"

    # ------------------------------------------------------------------ disk
    def _read(self) -> dict:
        """The file's valid content {fingerprint: {key: plan dict}}; malformed parts are
        dropped with one warning (the next save rewrites the file without them)."""
        path = self.path
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            _warn_once("plans-unreadable", f"ignoring the plan cache {path}: {e}; it will be rewritten.")
            return {}
        if not isinstance(data, dict):
            _warn_once("plans-shape", f"ignoring the plan cache {path}: not a JSON object; it will be rewritten.")
            return {}
        clean, dropped = {}, 0
        for fp, plans in data.items():
            if not isinstance(plans, dict):
                dropped += 1
                continue
            for key, d in plans.items():
                if _plan_from_json(key, d) is None:
                    dropped += 1
                else:
                    clean.setdefault(fp, {})[key] = d
        if dropped:
            _warn_once("plans-shape", f"ignoring {dropped} malformed entries of the plan cache {path}; "
                                      "it will be rewritten.")
        return clean

    def _stored(self, key: str) -> Plan | None:
        d = self._read().get(machine_fingerprint(), {}).get(key)
        return None if d is None else _plan_from_json(key, d)

    def _save(self, plan: Plan) -> None:
        """Merge `plan` into the file under a lock: concurrent writers keep each other's plans."""
        path = self.path
        if path is None:
            _warn_once("no-home", "no cache folder (no home directory and SEPCONV_CACHE_DIR unset): "
                                  "tuning plans are kept in memory for this process only.")
            return
        from filelock import FileLock, Timeout

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
                data = self._read()
                data.setdefault(machine_fingerprint(), {})[plan.key] = plan.to_json()
                atomic_write(path, lambda f: json.dump(data, f, indent=1, sort_keys=True))
        except Timeout:
            _warn_once("lock", f"the plan cache lock {path}.lock was held for over {LOCK_TIMEOUT_S:.0f} s; "
                               "this plan is kept in memory only.")
        except OSError as e:
            _warn_once("readonly", f"cannot write the plan cache {path} ({e.strerror or e}); tuning plans are "
                                   "kept in memory. Set SEPCONV_CACHE_DIR to a writable folder.")

    def stored_plans(self) -> dict[str, Plan]:
        """The plans on disk for this machine, by key."""
        plans = self._read().get(machine_fingerprint(), {})
        return {k: p for k, d in plans.items() if (p := _plan_from_json(k, d)) is not None}

    def clear(self, disk: bool = False) -> None:
        """Forget the plans of this process (calls resolved from them are resolved again); with
        `disk`, delete the plan file too."""
        with self._lock:
            self.generation += 1
            self._plans.clear()
            self._retuned.clear()
            path = self.path
            if disk and path is not None and path.exists():
                path.unlink()

    # ------------------------------------------------------------------ plans
    def _remember(self, plan: Plan) -> Plan:
        self._plans[plan.key] = plan
        self._plans.move_to_end(plan.key)
        while len(self._plans) > MAX_PLANS:
            self._plans.popitem(last=False)
        return plan

    def cached_choice(self, key: str) -> str | None:
        """The choice of the plan stored under `key` (memory, then disk), without tuning."""
        if key in self._plans:
            return self._plans[key].choice
        stored = self._stored(key)
        return None if stored is None else stored.choice

    def plan(self, spec: ConvSpec, retune: bool = False, x: torch.Tensor | None = None) -> Plan:
        """The plan for `spec`: from memory, else from disk, else tuned now (on `x`, the
        caller's input, when given: no copy of a large input is made)."""
        key = plan_key(spec)
        with self._lock:
            if not retune:
                if key in self._plans:
                    self._plans.move_to_end(key)
                    return self._plans[key]
                stored = self._stored(key)
                usable = (stored is not None and stored.choice in _REGISTRY
                          and _REGISTRY[stored.choice].why_not(spec) is None)
                # a noisy plan from another process is tuned again (once), not trusted
                if usable and not (stored.noisy and key not in self._retuned):
                    return self._remember(stored)
            self._retuned.add(key)
            plan = self._remember(self._measure(spec, key, x))
            self.generation += 1
            self._save(plan)
            return plan

    def _measure(self, spec: ConvSpec, key: str, given: torch.Tensor | None = None) -> Plan:
        need, avail = _timing_bytes(spec, given is not None), _available_bytes()
        if avail is not None and need > avail // 2:
            raise MemoryError(f"tuning a {tuple((spec.batch, spec.channels, spec.height, spec.width))} "
                              f"{str(spec.dtype).replace('torch.', '')} input needs about {need / 2**30:.1f} GiB, more "
                              f"than half of the {avail / 2**30:.1f} GiB available")
        rejected = {}
        budget = memory_budget()
        for name, algo in _REGISTRY.items():
            why = algo.why_not(spec)
            if why is None and not algo.exact_special_values:
                why = ("its transforms spread a NaN or Inf input over a whole tile, unlike the reference: "
                       "\"auto\" does not pick it; name it to use it.")
            if why is None and algo.workspace is not None and algo.workspace(spec) > budget:
                why = (f"its temporaries (about {algo.workspace(spec) / 2**20:.0f} MiB) exceed the tuning memory "
                       f"budget of {budget / 2**20:.0f} MiB (SEPCONV_TUNE_MEMORY_MB).")
            if why is not None:
                rejected[name] = why
        candidates = [a for a in _REGISTRY.values() if a.name not in rejected]
        crop = _check_crop(spec)
        cx, cw, cb = random_inputs(crop)
        with torch.no_grad():
            expected = _REGISTRY["reference"].run(cx.double(), cw.double(), None if cb is None else cb.double(), crop)
            scale = error_scale(cx, cw, cb)
            for algo in list(candidates):
                y = algo.run(cx, cw, cb, crop)
                excess = (y.double() - expected).abs() - algo.tolerance(spec.dtype) * scale
                if y.numel() and excess.max().item() > 0:
                    rejected[algo.name] = "output outside its error bound on this shape"
                    candidates.remove(algo)
        x, w, b = random_inputs(dataclasses.replace(spec, batch=0)) if given is not None else random_inputs(spec)
        if given is not None:
            x = given.detach()
        train = spec.requires_grad
        runners = []
        for algo in candidates:
            if train:
                xs, ws = x.detach().requires_grad_(), w.detach().requires_grad_()
                bs = None if b is None else b.detach().requires_grad_()
                grad = torch.ones(spec.batch, spec.out_channels, *spec.out_size, dtype=spec.dtype,
                                  device=spec.device)

                def step(algo=algo, xs=xs, ws=ws, bs=bs, grad=grad):
                    algo.run(xs, ws, bs, spec).backward(grad)
            else:
                def step(algo=algo):
                    with torch.no_grad():
                        algo.run(x, w, b, spec)
            runners.append((algo.name, _synchronized(step, spec.device)))
        # Interleaved rounds: a noisy moment hits every candidate alike. Candidates over 2x
        # the fastest after 3 rounds cannot win and are dropped, and the rest are timed
        # afresh over at least 10 more rounds: left in, the slow PyTorch forms (big
        # temporaries) evicted the caches before every call of the fast ones. Timing that
        # scatters over NOISY_SPREAD is done again, up to TIMING_ATTEMPTS times.
        for attempt in range(TIMING_ATTEMPTS):
            timed = compare([Candidate(n, fn) for n, fn in runners], rounds=15, warmup=1 if attempt == 0 else 0,
                            budget_s=0.3, drop_factor=2.0, min_rounds=10)
            kept = [c for c in timed if not c.dropped]
            noisy = any(c.spread > NOISY_SPREAD for c in kept)
            if not noisy:
                break
        times = {c.name: c.median for c in timed}
        spread = {c.name: c.spread for c in timed}
        best = min(times, key=times.get)
        # A challenger must beat the baseline clearly: timing noise on a busy machine is a few
        # percent, and a plan is cached, so a near-tie keeps the reference path.
        if "reference" in times and times[best] > times["reference"] / (1 + TIE_MARGIN):
            best = "reference"
        return Plan(key=key, choice=best, times=times, rejected=rejected, spread=spread, noisy=noisy,
                    mode="forward+backward" if train else "forward", threads=torch.get_num_threads(),
                    spec=spec_to_json(spec))

    def retune_stored(self, only_noisy: bool = False, progress=None) -> list[Plan]:
        """Tune again every plan stored for this machine (or only the noisy ones); returns the
        new plans. Plans made with another thread count are tuned at their own."""
        out = []
        for key, stored in sorted(self.stored_plans().items()):
            if (only_noisy and not stored.noisy) or not stored.spec:
                continue
            before = torch.get_num_threads()
            torch.set_num_threads(stored.threads)
            try:
                plan = self.plan(spec_from_json(stored.spec), retune=True)
            finally:
                torch.set_num_threads(before)
            out.append(plan)
            if progress:
                progress(f"{key}: {stored.choice} -> {plan.choice}" + ("  (noisy)" if plan.noisy else ""))
        return out


def plan_key(spec: ConvSpec | str) -> str:
    """The plan's name: the spec's key (or that key) and the thread count it is timed at."""
    return f"{spec if isinstance(spec, str) else spec.key()}-t{torch.get_num_threads()}"


tuner = Tuner()


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
    ``print(plan)`` shows candidates, median times, spreads and the choice.

    Args:
        input_shape: (N, C, H, W), positive ints.

    Example:
        >>> print(explain((1, 32, 112, 112), stride=1, padding=1))  # doctest: +SKIP
    """
    from .._validation import fail, pair, positive_int
    from ..spec import depthwise_spec

    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 4):
        fail("explain", "`input_shape` must be (N, C, H, W).", f"input_shape={input_shape!r}")
    n, c, h, w = (positive_int("explain", name, v) for name, v in zip("NCHW", input_shape))
    kh, kw = pair("explain", "kernel_size", kernel_size, minimum=1)
    depth_multiplier = positive_int("explain", "depth_multiplier", depth_multiplier)
    # shapes only (meta tensors): the tuner makes its own inputs
    x = torch.empty((n, c, h, w), dtype=dtype, device="meta",
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    weight = torch.empty(c * depth_multiplier, 1, kh, kw, dtype=dtype, device="meta", requires_grad=training)
    b = torch.empty(c * depth_multiplier, dtype=dtype, device="meta") if bias else None
    with torch.enable_grad():
        spec = depthwise_spec("explain", x, weight, b, stride, padding, dilation)
    return tuner.plan(dataclasses.replace(spec, device="cpu"), retune=retune)
