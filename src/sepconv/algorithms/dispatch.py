"""Dispatch: which algorithm runs a depthwise call.

:func:`plan_call` validates a call once per distinct signature (a dict lookup after that) and
:func:`resolve` turns an algorithm name into the algorithm that runs it: the named one if it
can serve the call, else a ValueError that says why (never a silent fallback); ``"auto"``
asks the tuner. :func:`forced` overrides the name inside a block, per thread and task.
"""

from __future__ import annotations

import contextvars
import warnings
from contextlib import contextmanager
from collections import OrderedDict

import torch

from ..spec import depthwise_spec
from .registry import _REGISTRY, Algorithm, get_algorithm
from .tuner import plan_key, tuner

_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("sepconv_forced_algorithm", default=None)
MAX_DISPATCH = 4096   # validated call signatures kept (the oldest dropped)


@contextmanager
def forced(name: str):
    """Run every depthwise call inside the block with algorithm `name`, whatever the caller
    asked for. The override is a context variable: other threads and tasks are unaffected.
    Code that torch.compile captures does not see it (dynamo cannot read context variables):
    there "auto" runs the plan tuned in eager mode, or "reference".

    Example:
        >>> with forced("reference"):
        ...     pass
    """
    get_algorithm(name, "forced")
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


def capturing() -> bool:
    """True while torch.jit or torch.compile captures a graph."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def tracing(x) -> bool:
    """True while a graph is being captured: timing must not happen, and exporters need
    standard ops, so "auto" then means "reference"."""
    return capturing() or isinstance(x, torch.fx.Proxy)


def _compiled_choice(spec_key: str) -> str:
    """For torch.compile, which runs this once while capturing and keeps the answer: the
    algorithm tuned for the call in eager mode (in memory or on disk), if it can be captured
    in the graph; else "reference"."""
    algo = _REGISTRY.get(tuner.cached_choice(plan_key(spec_key)))
    return algo.name if algo is not None and algo.compilable and algo.available() else "reference"


# What torch.compiler.assume_constant_result(_compiled_choice) sets, without importing
# torch._dynamo (and sympy) when sepconv is imported.
_compiled_choice._dynamo_marked_constant = True


def resolve(name: str, spec, owner: str, x: torch.Tensor | None = None) -> Algorithm:
    """The algorithm that runs `spec`: the named one if it can, else a ValueError saying why."""
    if not torch.compiler.is_compiling():
        name = _FORCED.get() or name
    if name == "auto":
        # nothing to time on meta tensors (shape inference, deferred initialisation)
        if x is not None and x.device.type == "meta":
            return _REGISTRY["reference"]
        # torch.compile cannot time either, but it can run what eager mode tuned for the
        # spec (the native kernel is a registered op); exporters need standard ops
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            return _REGISTRY[_compiled_choice(spec.key())]
        if x is not None and tracing(x):
            return _REGISTRY["reference"]
        return _REGISTRY[tuner.plan(spec, x=x).choice]
    algo = get_algorithm(name, owner)
    reason = algo.why_not(spec)
    if reason is not None:
        raise ValueError(f"{owner}: algorithm {name!r} cannot serve this call: {reason}")
    return algo


# Validated calls: (spec, algorithm, tuner generation) by everything that determines them, so
# a repeated call skips validation and plan lookup (about 20 us of Python per call, as long as
# a small layer's whole run). An entry resolved before the tuner's plans changed is stale.
_DISPATCH: OrderedDict = OrderedDict()


def _dispatch_key(x, weight, bias, stride, padding, dilation, algorithm):
    # (a tensor is no fx.Proxy: of tracing(x), capturing() is what remains to ask; it goes
    # before the context variable, which torch.compile cannot read)
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)) or capturing() or _FORCED.get():
        return None
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))
    key = (algorithm, x.shape, x.stride(), x.dtype, x.device, weight.shape, weight.dtype,
           weight.device, None if bias is None else (bias.shape, bias.dtype, bias.device),
           stride, padding, dilation, grad, torch.get_num_threads())
    try:
        hash(key)
    except TypeError:  # list arguments: validate every time
        return None
    return key


def plan_call(owner, x, weight, bias, stride, padding, dilation, algorithm):
    """(spec, algorithm) for a 4-D depthwise call: validated and resolved once per distinct
    call signature, then read from a cache."""
    key = _dispatch_key(x, weight, bias, stride, padding, dilation, algorithm)
    hit = _DISPATCH.get(key) if key is not None else None
    if hit is not None and hit[2] == tuner.generation:
        return hit[0], hit[1]
    if torch.jit.is_tracing():
        with warnings.catch_warnings():
            # Under torch.jit.trace the shape checks read traced sizes: they are constants of
            # the trace by design, so the tracer's warning about them is noise.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            spec = depthwise_spec(owner, x, weight, bias, stride, padding, dilation)
    else:  # (catch_warnings would also break a torch.compile graph)
        spec = depthwise_spec(owner, x, weight, bias, stride, padding, dilation)
    algo = resolve(algorithm, spec, owner, x)
    if key is not None:
        _DISPATCH[key] = (spec, algo, tuner.generation)
        if len(_DISPATCH) > MAX_DISPATCH:
            _DISPATCH.popitem(last=False)
    return spec, algo
