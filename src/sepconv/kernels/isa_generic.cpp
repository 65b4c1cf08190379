// The kernels for any CPU (x86-64 baseline with SSE2, or any other architecture).
#define SEPCONV_ISA generic
#define SEPCONV_ISA_NAME "generic"
#define SEPCONV_VL 4  // floats per vector register
#include "isa_build.h"
