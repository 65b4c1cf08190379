// The kernels for x86-64 CPUs with AVX-512 F/BW/DQ/VL (x86-64-v4).
#if defined(__x86_64__)
#define SEPCONV_ISA avx512
#define SEPCONV_ISA_NAME "avx512"
#define SEPCONV_VL 16  // floats per vector register
#define SEPCONV_TARGET "avx,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt,movbe,avx512f,avx512bw,avx512dq,avx512vl,avx512cd"
#include "isa_build.h"
#endif
