"""Native CPU kernels, compiled on first use with torch.utils.cpp_extension and cached on disk.

Each family has ``is_available()``; when the compiler or a header is missing the reason is
kept (``unavailable_reason()``) and the pure-PyTorch algorithms still serve every call.
Set ``SEPCONV_NO_NATIVE=1`` to disable native kernels; ``SEPCONV_BUILD_DIR`` moves the build
cache (default ``~/.cache/sepconv/build``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

_HERE = Path(__file__).parent
_modules: dict[str, object] = {}
_errors: dict[str, str] = {}


def source_digest(family: str) -> str:
    """Short hash of a family's C++ source: part of build and tuning-cache keys."""
    return hashlib.sha1((_HERE / f"{family}.cpp").read_bytes()).hexdigest()[:12]


def load(family: str):
    """The compiled module for ``<family>.cpp``, building it once per source version and
    machine (``-march=native``), or None if it cannot be built."""
    if family in _modules:
        return _modules[family]
    if family in _errors:
        return None
    if os.environ.get("SEPCONV_NO_NATIVE"):
        _errors[family] = "disabled by SEPCONV_NO_NATIVE"
        return None
    source = _HERE / f"{family}.cpp"
    # pip's `ninja` lives beside the interpreter; a non-activated venv does not have it on PATH
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    try:
        import torch
        from torch.utils import cpp_extension

        digest = hashlib.sha1(f"{source_digest(family)}{torch.__version__}".encode()).hexdigest()[:12]
        # Builds are content-addressed, so they are shared by every plan cache and process.
        root = Path(os.environ.get("SEPCONV_BUILD_DIR", Path.home() / ".cache" / "sepconv" / "build"))
        build = root / f"{family}_{digest}"
        build.mkdir(parents=True, exist_ok=True)
        _modules[family] = cpp_extension.load(
            name=f"sepconv_{family}_{digest}", sources=[str(source)], build_directory=str(build),
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
            verbose=False)
        return _modules[family]
    except Exception as e:  # a missing compiler shows up as many exception types
        _errors[family] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        return None


def is_available(family: str) -> bool:
    return load(family) is not None


def unavailable_reason(family: str) -> str:
    return _errors.get(family, "")
