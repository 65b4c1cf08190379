"""Builds the native kernels into the extension sepconv._C when the package is installed.

The kernels are compiled once per instruction set (kernels/isa_*.cpp: baseline, AVX2,
AVX-512, AVX-512 with AVX512-BF16) into the one extension, which picks the best set the CPU
can run when it loads:
the build never depends on the machine it runs on (no -march=native). Needs torch in the
build environment: install with `pip install --no-build-isolation` after torch (the
Makefile does), or pip would fetch a CUDA build of torch into an isolated environment.
"""

import hashlib
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

KERNELS = Path("src/sepconv/kernels")
SOURCES = [str(KERNELS / f) for f in ("bindings.cpp", "program.cpp", "isa_generic.cpp", "isa_avx2.cpp", "isa_avx512.cpp",
                                             "isa_avx512bf16.cpp")]

# The build's identity (plans tuned with other kernels are stale): a digest of every C++ file,
# in a generated source of its own, so that a change recompiles only what it touches.
DIGEST = hashlib.sha1(b"".join(p.read_bytes() for p in sorted(KERNELS.glob("*.[ch]*")))).hexdigest()[:12]
DIGEST_SOURCE = Path("build/generated/source_digest.cpp")
_text = f'extern "C" const char sepconv_source_digest[] = "{DIGEST}";\n'
if not DIGEST_SOURCE.exists() or DIGEST_SOURCE.read_text() != _text:
    DIGEST_SOURCE.parent.mkdir(parents=True, exist_ok=True)
    DIGEST_SOURCE.write_text(_text)

setup(
    ext_modules=[CppExtension(
        "sepconv._C",
        sources=SOURCES + [str(DIGEST_SOURCE)],
        extra_compile_args=["-O3", "-g0", "-fopenmp", "-fvisibility=hidden"],
        extra_link_args=["-fopenmp"],
    )],
    cmdclass={"build_ext": BuildExtension},
)
