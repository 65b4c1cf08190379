"""The registry of depthwise convolution algorithms: what each can serve and its error bound.

Example:
    >>> from sepconv.algorithms import list_algorithms
    >>> [a.name for a in list_algorithms()][:2]
    ['reference', 'direct']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .._validation import choice
from ..spec import ConvSpec

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
    ``exact_special_values``: NaN and Inf reach exactly the outputs they reach in the
    reference (False for Winograd, whose transforms mix a whole tile); "auto" only picks
    algorithms where it is True.
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
    fuses_act: bool = False   # run(..., act=Act(...)) applies an activation in the same pass (inference)
    exact_special_values: bool = True
    workspace: Callable[[ConvSpec], int] | None = None   # bytes of temporaries a call needs, if many
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
    """Add `algorithm` to the registry ("auto" and taken names are refused)."""
    if algorithm.name in _REGISTRY or algorithm.name == "auto":
        raise ValueError(f"register: algorithm name {algorithm.name!r} is taken.")
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def list_algorithms(spec: ConvSpec | None = None) -> list[Algorithm]:
    """All registered algorithms, or those that can serve `spec`."""
    algos = list(_REGISTRY.values())
    return algos if spec is None else [a for a in algos if a.why_not(spec) is None]


def get_algorithm(name: str, owner: str = "get_algorithm") -> Algorithm:
    """The algorithm called `name`; an unknown name is a ValueError suggesting close ones."""
    choice(owner, "algorithm", name, list(_REGISTRY))
    return _REGISTRY[name]


def names() -> list[str]:
    return list(_REGISTRY)


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
