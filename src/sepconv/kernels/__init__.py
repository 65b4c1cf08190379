"""The native CPU kernels: the extension ``sepconv._C``, built when the package is installed.

The extension holds the kernels compiled for several instruction sets (baseline, AVX2,
AVX-512) and picks the best one the CPU runs when it loads (``isa()``); it registers the
``torch.library`` ops ``sepconv::depthwise``, ``sepconv::depthwise_backward`` and
``sepconv::winograd``. Where the extension is missing (a source tree nobody built) or
disabled (``SEPCONV_NO_NATIVE=1``), ``is_available()`` is False, ``unavailable_reason()``
says why, a warning says so once, and the pure-PyTorch algorithms serve every call.

Example:
    >>> from sepconv import kernels
    >>> kernels.isa() in ("avx512bf16", "avx512", "avx2", "generic", None)
    True
"""

from __future__ import annotations

import os
import warnings

_state: dict = {}

# The extension's inference ops that optimized models call (sepconv._C.NAME, and
# torch.ops.sepconv.NAME for the Program); all but global_avg_pool write their output where
# the Program's arena asks (new_output in bindings.cpp).
INFERENCE_OPS = ("gemm", "conv_gemm", "conv_direct", "versatile_gemm", "depthwise_hwc", "global_avg_pool", "dw_gemm",
                 "gemm_dw")
ARENA_OPS = tuple(name for name in INFERENCE_OPS if name != "global_avg_pool")


def load():
    """The extension module, or None where it is unavailable (see :func:`unavailable_reason`)."""
    if "module" in _state:
        return _state["module"]
    module, reason = None, ""
    if os.environ.get("SEPCONV_NO_NATIVE"):
        reason = "disabled by SEPCONV_NO_NATIVE"
    else:
        try:
            import torch  # noqa: F401  (the extension links against it)

            from .. import _C as module
            from .ops import register_fakes

            register_fakes()
        except ImportError as e:
            reason = (f"the extension sepconv._C is not built ({e}); reinstall with "
                      "`pip install --no-build-isolation .` after torch")
            warnings.warn(f"sepconv: native kernels unavailable: {reason}. The PyTorch algorithms serve "
                          "every call.", RuntimeWarning, stacklevel=2)
    _state["module"], _state["reason"] = module, reason
    return module


def is_available() -> bool:
    return load() is not None


def has_bf16_gemm() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 dot products or AMX) for
    the native kernels; without it bfloat16 only converts to float32 and back."""
    module = load()
    return module is not None and module.gemm_bf16_supported()


def unavailable_reason() -> str:
    load()
    return _state["reason"]


def isa() -> str | None:
    """The instruction set of the kernels in use ("avx512bf16", "avx512", "avx2" or
    "generic"), None without the extension. ``SEPCONV_ISA`` may ask for a lower one than the
    CPU has."""
    module = load()
    return module.isa() if module is not None else None


def kernel_name(kind: str, kernel_size, stride, dilation, dtype) -> str:
    """The named kernel ("<isa>:<variant>") that serves a call on this machine, e.g.
    ``kernel_name("forward", (5, 5), (2, 2), (1, 1), torch.float32) == "avx512bf16:f32_5x5s2"``;
    "" where none does (``kind="backward"``: the one-pass backward serves listed shapes only)."""
    return load().kernel_name(kind, list(kernel_size), list(stride), list(dilation), dtype)
