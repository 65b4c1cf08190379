// The kernels for x86-64 CPUs with AVX-512 and AVX512-BF16 (Cooper Lake, Sapphire Rapids and
// later, Zen 4): the AVX-512 set, plus bfloat16 stores by vcvtneps2bf16 (one instruction for
// the integer rounding's eight; it flushes denormals to zero, as the bfloat16 dot products
// that compute the values already do), loads by one word permute, and the bfloat16 GEMMs:
// vdpbf16ps, and AMX tiles where the CPU has them (used only where the OS grants them).
#if defined(__x86_64__)
#define SEPCONV_ISA avx512bf16
#define SEPCONV_ISA_NAME "avx512bf16"
#define SEPCONV_VL 16  // floats per vector register
#define SEPCONV_TARGET \
  "avx,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt,movbe,avx512f,avx512bw,avx512dq,avx512vl,avx512cd,avx512bf16,amx-tile,amx-bf16"
#define SEPCONV_BF16_INSNS 1
#include "isa_build.h"
#endif
