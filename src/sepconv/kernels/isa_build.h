// Compiles the kernels for one instruction set: the file that includes this defines
// SEPCONV_ISA (the namespace), SEPCONV_ISA_NAME and, on x86-64, SEPCONV_TARGET (GCC target
// options). Every library header is included first, with the default target, so that only
// this project's code (in namespace sepconv::SEPCONV_ISA) is compiled for the ISA: no inline
// function shared with other translation units is ever built with instructions the CPU may
// lack.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels.h"

#ifdef SEPCONV_TARGET
// (#pragma does not expand macros; _Pragma of a stringised argument does)
#define SEPCONV_PRAGMA(x) _Pragma(#x)
#define SEPCONV_TARGET_PRAGMA(t) SEPCONV_PRAGMA(GCC target(t))
#pragma GCC push_options
SEPCONV_TARGET_PRAGMA(SEPCONV_TARGET)
#endif
#define INLINE_LAMBDA __attribute__((always_inline))

namespace sepconv {
namespace SEPCONV_ISA {
#include "common.h"
#include "forward.h"
#include "winograd.h"
#include "backward.h"
#include "gemm.h"
#include "im2col.h"
#include "direct.h"
#include "pool.h"
#include "table.h"
}  // namespace SEPCONV_ISA
}  // namespace sepconv

#undef INLINE_LAMBDA
#ifdef SEPCONV_TARGET
#pragma GCC pop_options
#endif
