// The interface between the host code (bindings.cpp: tensors, autograd, torch.library ops) and
// the kernels, which are compiled once per instruction set (isa_*.cpp) and chosen at load by
// the CPU's flags. Kernels see raw pointers and a Geometry, never a tensor.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sepconv {

struct bf16 { uint16_t bits; };
enum DType : int { F32 = 0, BF16 = 1 };

// One depthwise convolution over channels_last data: input (N, H, W, C), output (N, OH, OW, C).
struct Geometry {
  int64_t N, H, W, C, OH, OW;
  int kh, kw, sh, sw, ph, pw, dil_h, dil_w;
  bool cached_out = false;   // the output is read again at once (dw_gemm's buffer): no streamed stores
  bool cached_in = false;    // the input is a buffer in cache (gemm_dw's): no software prefetch
};

// The activation applied to each finished output (bias included): ReLU, clamp (ReLU6,
// hardtanh: lo..hi), SiLU, Hardswish, GELU (erf or tanh form), sigmoid.
enum ActKind : int { ACT_NONE = 0, ACT_RELU, ACT_CLAMP, ACT_SILU, ACT_HARDSWISH, ACT_GELU, ACT_GELU_TANH, ACT_SIGMOID };
struct Act { int kind = ACT_NONE; float lo = 0, hi = 0; };

// x, y: T* (float or bf16, as `dtype`); w: float32 (kh, kw, C); b: float32 (C,) or null.
// Output rows [begin, end) of the N * OH, at y + row * OW * C (the caller runs them in parallel).
using ForwardFn = void (*)(const void* x, const float* w, const float* b, void* y, const Geometry& g, const Act& act,
                           int64_t begin, int64_t end);
// Weight gradient: dw float32 (C, 1, kh, kw), db float32 (C,) or null.
using GradWeightFn = void (*)(const void* x, const void* dy, float* dw, float* db, const Geometry& g);
// Input gradient by gather (any stride): w float32 (kh, kw, C).
using GradInputFn = void (*)(const void* dy, const float* w, void* dx, const Geometry& g);
// Both gradients in one pass over dy: w and its 180-degree flip wf as float32 (kh, kw, C);
// gf is the geometry of the stride-1 input gradient as a forward pass over dy.
using BackwardFn = void (*)(const void* x, const void* dy, const float* w, const float* wf, void* dx, float* dw,
                            float* db, const Geometry& g, const Geometry& gf);
// Winograd forward (3x3, stride 1, dilation 1): u the transformed filters as float32.
using WinogradFn = void (*)(const void* x, const float* u, const float* b, void* y, const Geometry& g, const Act& act);

// C (M x N) = act2(act1((A (M x K) . B + accum) * scale + bias) + residual): a 1x1 convolution
// or linear layer on channels_last rows, B packed once by the set's gemm_pack_* (layout private
// to the set). accum and scale serve versatile filters (partial sums of channel segments, and a
// batch norm that cannot be folded into weights its output channels share).
struct GemmArgs {
  int64_t M, N, K;
  const void* a;
  int64_t lda;
  void* c;
  int64_t ldc;
  const float* bias;       // float32, padded to a multiple of gemm_nr, or null
  const void* residual;    // M x N in C's dtype, or null
  int64_t ldr;
  Act act1, act2;          // act1 after the bias, act2 after the residual
  const void* accum = nullptr;   // M x N in C's dtype added to A . B, or null
  int64_t ldacc = 0;
  const float* scale = nullptr;  // float32 per column like bias, or null
  int64_t ldb = 0;               // K rows between B's panels, 0 for K (>K: rows [k0, k0 + K) of a larger B)
  bool a_padded = false;         // A's columns K.. up to a multiple of 32 are zeros (lda allows them)
};
using GemmFn = void (*)(const GemmArgs& g, const void* packed);
// Pairs of k in a packed bfloat16 panel: ceil(K / 2) rounded up to whole AMX tiles of 16
// pairs (the padding zero), so that a tile of the last k never reads past its panel.
inline int64_t gemm_bf16_pairs(int64_t K) { return ((K + 1) / 2 + 15) / 16 * 16; }
// w: (N, K) row-major float32 (a Linear or 1x1 convolution weight) -> the set's packed layout.
using GemmPackFn = void (*)(const float* w, int64_t N, int64_t K, void* out);

// im2col rows for gemm_program (bindings.cpp): row (n, oh, ow) is the concatenation, over
// `segs` (5 ints each: kernel row i, kernel column j, channels [c0, c1), pixels), of the
// channels c0..c1 of input pixels (oh * sh - pt + i * dh, ow * sw - pl + (j + p) * dw) for
// p < pixels, zero outside the input (pixels > 1 only with c0 = 0, c1 = C: whole pixels).
// Rows are `ld` elements apart; elements K..ld of each row are zero; dst holds IM2COL_SLACK
// elements more than the rows (the gather stores whole vectors).
struct Im2colArgs {
  const void* x;   // channels_last (N, H, W, C), float or bf16
  int64_t N, H, W, C, OH, OW, sh, sw, pt, pl, dh, dw;
  const int64_t* segs;
  int64_t n_segs, K, ld;
};
using Im2colFn = void (*)(const Im2colArgs& a, void* dst, int64_t m0, int64_t m1);
constexpr int64_t IM2COL_SLACK = 64;

// A dense convolution (groups 1) of an input with few channels, such as a network's stem on
// RGB (direct.h): y = act(conv(x, w) + bias), computed in float32. x is (N, C, H, W) in any
// layout (element strides sN, sC, sH, sW: a user's NCHW image is read as it is), float32 or
// bfloat16; y is channels_last (N, OH, OW, cout) in y_dtype. With a bfloat16 y (a bfloat16
// model), a float32 x is rounded to bfloat16 first, as the model's other inputs are. `pt` and `pl` are the top and
// left padding (bottom and right follow from OH and OW).
struct DirectArgs {
  const void* x;
  DType x_dtype;
  int64_t sN, sC, sH, sW;
  int64_t N, C, H, W, OH, OW, kh, kw, sh, sw, pt, pl, dh, dw;
  int64_t cout;
  const float* packed;   // gemm_pack_f32 of the (cout, kh * kw * C) weight, taps (row, column, channel)
  const float* bias;     // float32 padded to whole panels (gemm_bias), or null
  Act act;
  void* y;
  DType y_dtype;
};
using DirectFn = void (*)(const DirectArgs& a);

// y (B, C) = the mean over P pixels of x (B, P, C), in x's dtype (float or bf16), summed in float32.
using PoolFn = void (*)(const void* x, int64_t B, int64_t P, int64_t C, void* y);

// out[r][k] = a[r][k] * scale[k] for r < rows, k < K, rows lda and ldo elements apart (T: the
// set's float or bf16, rounded once): a squeeze-excitation's per-channel scale applied to the
// rows of the 1x1 convolution that reads them (gemm's kscale).
using ScaleRowsFn = void (*)(const void* a, int64_t lda, int64_t rows, int64_t K, const float* scale, void* out,
                             int64_t ldo);

// One named kernel and the calls it serves: kernel (kh, kw), equal strides `stride`, no
// dilation, `dtype`. kh == 0 marks the generic kernel of a dtype (any size, stride, dilation).
template <typename Fn> struct Variant {
  const char* name;
  int kh, kw, stride;
  DType dtype;
  Fn fn;
};

// Winograd F(tile, 3) for depthwise 3x3: row-wise 1-D (tile 2) or 2-D (tile 2 or 4).
struct WinogradVariant {
  const char* name;
  int tile;
  bool two_d;
  DType dtype;
  WinogradFn fn;
};

struct KernelSet {
  const char* isa;
  const Variant<ForwardFn>* forward; int n_forward;
  const Variant<GradWeightFn>* grad_weight; int n_grad_weight;   // stride: 0 (any)
  const Variant<GradInputFn>* grad_input; int n_grad_input;
  const Variant<BackwardFn>* backward; int n_backward;           // no generic row: one-pass serves listed rows only
  const WinogradVariant* winograd; int n_winograd;
  // GEMM: columns per packed panel; float32 (every set) and bfloat16 (null where the CPU has no
  // bfloat16 dot products: such calls go to ATen). Packed sizes: float32 panels * K * nr
  // floats, bfloat16 panels * gemm_bf16_pairs(K) * 2 * nr halves, panels = ceil(N / nr).
  int gemm_nr;
  int gemm_mr;   // rows per register tile
  GemmPackFn gemm_pack_f32;
  GemmFn gemm_f32;
  GemmPackFn gemm_pack_bf16;
  GemmFn gemm_bf16;
  // The bfloat16 GEMM on AMX tiles (same packing; null where not built). kernels() makes it
  // gemm_bf16 where the CPU has AMX and the OS grants its tile state, and sets the name and
  // the rows per tile of the bfloat16 GEMM that runs.
  GemmFn gemm_bf16_amx;
  int gemm_mr_amx;
  const char* gemm_bf16_kind = "avx512bf16";
  int gemm_mr_bf16 = 0;
  Im2colFn im2col_f32 = nullptr, im2col_bf16 = nullptr;
  DirectFn conv_direct = nullptr;
  ScaleRowsFn scale_rows_f32 = nullptr, scale_rows_bf16 = nullptr;
  PoolFn global_avg_pool_f32 = nullptr, global_avg_pool_bf16 = nullptr;
};

// The variant serving (kh, kw, stride, dilation, dtype): the first specialised row that
// matches, else the dtype's generic row (null where the table has none).
template <typename Fn>
const Variant<Fn>* select_variant(const Variant<Fn>* rows, int n, const Geometry& g, DType dtype) {
  const bool plain = g.sh == g.sw && g.dil_h == 1 && g.dil_w == 1;
  for (int i = 0; i < n; ++i)
    if (rows[i].dtype == dtype && rows[i].kh == g.kh && rows[i].kw == g.kw && plain &&
        (rows[i].stride == 0 || rows[i].stride == g.sh))
      return &rows[i];
  for (int i = 0; i < n; ++i)
    if (rows[i].dtype == dtype && rows[i].kh == 0) return &rows[i];
  return nullptr;
}

// The Winograd transforms the kernels use: F(2,3) with points {0, 1, -1} and F(4,3) with
// {0, 1, -1, 2, -1/2}, as sepconv.functional.winograd.transforms(m) builds them from exact
// rationals (every entry is exact in float); the extension's winograd_constants(m) returns
// them so that a test holds the two in step.
constexpr float BT23[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, -1, 0, 1}};
constexpr float AT23[2][4] = {{1, 1, 1, 0}, {0, 1, -1, 1}};
constexpr float BT43[6][6] = {{1, 1.5f, -2, -1.5f, 1, 0}, {0, 1, 2.5f, 0.5f, -1, 0},
                              {0, 1, 0.5f, -2.5f, 1, 0},  {0, -0.5f, -1, 0.5f, 1, 0},
                              {0, -2, 1, 2, -1, 0},       {0, 1, 1.5f, -2, -1.5f, 1}};
constexpr float AT43[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -0.5f, 0},
                              {0, 1, 1, 4, 0.25f, 0}, {0, 1, -1, 8, -0.125f, 1}};

namespace generic { const KernelSet& kernel_set(); }
#if defined(__x86_64__)
namespace avx2 { const KernelSet& kernel_set(); }
namespace avx512 { const KernelSet& kernel_set(); }
namespace avx512bf16 { const KernelSet& kernel_set(); }
#endif
// The best set this CPU can run (AVX-512 with AVX512-BF16, AVX-512, AVX2, then generic), or
// the one named by the environment variable SEPCONV_ISA (generic, avx2, avx512, avx512bf16)
// if this CPU can run it.
const KernelSet& kernels();

}  // namespace sepconv
