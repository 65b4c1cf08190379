// The kernels for x86-64 CPUs with AVX2 and FMA (x86-64-v3).
#if defined(__x86_64__)
#define SEPCONV_ISA avx2
#define SEPCONV_ISA_NAME "avx2"
#define SEPCONV_VL 8  // floats per vector register
#define SEPCONV_TARGET "avx,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt,movbe"
#include "isa_build.h"
#endif
