// The kernels of one ISA by name: one row per variant, XNNPACK style. A specialised kernel
// (kernel size, stride, dtype) is one template instantiation and one row; the generic rows
// (kh == 0) serve everything else. Included inside one ISA's namespace (isa_build.h).

#define SEPCONV_DTYPES(ROW, ...) ROW(float, F32, "f32", __VA_ARGS__) ROW(bf16, BF16, "bf16", __VA_ARGS__)

// Forward: 3x3 and 5x5 at stride 1 and 2 (MobileNet, EfficientNet), 7x7 at stride 1 (ConvNeXt).
#define FWD(T, D, TN, K, S) {TN "_" #K "x" #K "s" #S, K, K, S, D, &forward_kernel<T, K, K, S>},
#define FWD_GENERIC(T, D, TN, _) {TN "_generic", 0, 0, 0, D, &forward_kernel<T, 0, 0, 0>},
const Variant<ForwardFn> FORWARD[] = {
    SEPCONV_DTYPES(FWD, 3, 1) SEPCONV_DTYPES(FWD, 3, 2)
    SEPCONV_DTYPES(FWD, 5, 1) SEPCONV_DTYPES(FWD, 5, 2)
    SEPCONV_DTYPES(FWD, 7, 1)
    SEPCONV_DTYPES(FWD_GENERIC, 0)
};

// Weight and bias gradient: any stride (the register blocks take stride 1 and 2).
#define WGRAD(T, D, TN, K) {TN "_" #K "x" #K, K, K, 0, D, &grad_weight_kernel<T, K, K>},
#define WGRAD_GENERIC(T, D, TN, _) {TN "_generic", 0, 0, 0, D, &grad_weight_kernel<T, 0, 0>},
const Variant<GradWeightFn> GRAD_WEIGHT[] = {
    SEPCONV_DTYPES(WGRAD, 3) SEPCONV_DTYPES(WGRAD, 5)
    SEPCONV_DTYPES(WGRAD_GENERIC, 0)
};

// Input gradient by gather: one kernel for every shape (3x3 stride 2 takes column pairs inside).
#define DGRAD_GENERIC(T, D, TN, _) {TN "_generic", 0, 0, 0, D, &grad_input_kernel<T>},
const Variant<GradInputFn> GRAD_INPUT[] = {SEPCONV_DTYPES(DGRAD_GENERIC, 0)};

// Both gradients in one pass over dy: 3x3 and 5x5 at stride 1 and 2 only (no generic row).
#define BWD(T, D, TN, K, S) {TN "_" #K "x" #K "s" #S, K, K, S, D, &backward_kernel<T, K>},
const Variant<BackwardFn> BACKWARD[] = {
    SEPCONV_DTYPES(BWD, 3, 1) SEPCONV_DTYPES(BWD, 3, 2)
    SEPCONV_DTYPES(BWD, 5, 1) SEPCONV_DTYPES(BWD, 5, 2)
};

#define WINO(T, D, TN, _) \
  {TN "_rows_f2", 2, false, D, &winograd_rows_kernel<T>}, \
  {TN "_2d_f2x2", 2, true, D, &winograd2d_kernel<T, 2>}, \
  {TN "_2d_f4x4", 4, true, D, &winograd2d_kernel<T, 4>},
const WinogradVariant WINOGRAD[] = {SEPCONV_DTYPES(WINO, 0)};

#ifdef SEPCONV_BF16_INSNS
#define SEPCONV_GEMM_BF16 gemm_pack_bf16, gemm_bf16, gemm_bf16_amx, AMX_MR
#else
#define SEPCONV_GEMM_BF16 nullptr, nullptr, nullptr, 0
#endif

#define SEPCONV_COUNT(a) int(sizeof(a) / sizeof((a)[0]))
const KernelSet& kernel_set() {
  static const KernelSet set{SEPCONV_ISA_NAME,
                             FORWARD, SEPCONV_COUNT(FORWARD),
                             GRAD_WEIGHT, SEPCONV_COUNT(GRAD_WEIGHT),
                             GRAD_INPUT, SEPCONV_COUNT(GRAD_INPUT),
                             BACKWARD, SEPCONV_COUNT(BACKWARD),
                             WINOGRAD, SEPCONV_COUNT(WINOGRAD),
                             GEMM_NR, GEMM_MR, gemm_pack_f32, gemm_f32, SEPCONV_GEMM_BF16, "avx512bf16", GEMM_MR,
                             im2col_rows<float>, im2col_rows<bf16>, conv_direct,
                             scale_rows<float>, scale_rows<bf16>,
                             global_avg_pool_rows<float>, global_avg_pool_rows<bf16>};
  return set;
}
#undef SEPCONV_GEMM_BF16
#undef SEPCONV_COUNT
#undef FWD
#undef FWD_GENERIC
#undef WGRAD
#undef WGRAD_GENERIC
#undef DGRAD_GENERIC
#undef BWD
#undef WINO
#undef SEPCONV_DTYPES
