// Vector and memory types shared by every kernel, compiled once per instruction set: this file
// is included inside the namespace of one ISA (see isa_build.h), after the standard headers.
//
// Layout: activations are channels_last (data N, H, W, C); depthwise weights are float32
// (kh, kw, C) so that one tap of VL channels is one contiguous vector load. Vectorisation is
// over channels with GCC vector extensions, VL floats being one register of the ISA: 16 with
// AVX-512, 8 with AVX2, 4 with SSE2 (wider vectors split in several registers made the AVX2
// and baseline kernels 4x slower to build, and spill).

constexpr int VL = SEPCONV_VL;
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef uint32_t vu __attribute__((vector_size(VL * sizeof(uint32_t))));
typedef uint16_t vh __attribute__((vector_size(VL * sizeof(uint16_t))));

// Unaligned, aliasing-safe vector views of memory. (Not memcpy: under a target pragma GCC
// expands a 64-byte memcpy with the baseline target's 16-byte moves, which made the kernels
// 4x larger and several times slower to build.)
typedef float vf_mem __attribute__((vector_size(VL * sizeof(float)), aligned(4), may_alias));
typedef uint16_t vh_mem __attribute__((vector_size(VL * sizeof(uint16_t)), aligned(2), may_alias));
inline vf loadf(const float* p) { return *reinterpret_cast<const vf_mem*>(p); }
inline void storef(float* p, vf v) { *reinterpret_cast<vf_mem*>(p) = v; }
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));
// A broadcast. (Not vf{} + a: without -ffast-math x + 0 is not x for x = -0, so that costs an
// addition; nor a loop over lanes, which compiles to one masked insert per lane.)
inline __attribute__((always_inline)) vf splat(float a) { return __builtin_shuffle(vf{a}, vi{}); }

template <typename T> struct IO;
template <> struct IO<float> {
  static vf load(const float* p) { return loadf(p); }
  static void store(float* p, vf v) { storef(p, v); }
  static float get(const float* p) { return *p; }
  static void put(float* p, float v) { *p = v; }
};
// bfloat16 is widened to float32 on load (its 16 bits are the float's top half) and rounded
// to nearest even on store, NaN kept a (quiet) NaN (with AVX512-BF16 instructions, which also
// flush denormals, where the set has them: SEPCONV_BF16_INSNS).
inline float bf16_to_float(uint16_t h) { uint32_t u = uint32_t(h) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline uint16_t float_to_bf16(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
template <> struct IO<bf16> {
  static vf load(const bf16* p) {
#ifdef SEPCONV_BF16_INSNS
    // word i to the top half of lane i, the bottom halves zeroed: one permute (a widening
    // move and a shift took one more port-0 slot from the FMAs)
    const __m512i h = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m512i idx = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7, 0, 6, 0, 5, 0, 4, 0,
                                         3, 0, 2, 0, 1, 0, 0, 0);
    return (vf)_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, idx, h);
#else
    const vh h = *reinterpret_cast<const vh_mem*>(p);
    return (vf)(__builtin_convertvector(h, vu) << 16);
#endif
  }
  static void store(bf16* p, vf v) {
#ifdef SEPCONV_BF16_INSNS
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh((__m512)v));
#else
    const vu u = (vu)v;
    vu nan = (u & 0x7fffffffu) > 0x7f800000u;               // lanes that are NaN
    vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;    // round to nearest even
    vu result = (nan & 0x7fc0u) | (~nan & rounded);
    *reinterpret_cast<vh_mem*>(p) = __builtin_convertvector(result, vh);
#endif
  }
  static float get(const bf16* p) { return bf16_to_float(p->bits); }
  static void put(bf16* p, float v) { p->bits = float_to_bf16(v); }
};

// Vector load/store of the first `lanes` channels (lanes < VL only at the channel tail):
// masked loads and stores where the ISA has them (element by element, a channel tail of
// 8 made a 5x5 layer of 200 channels 9x slower than one of 192).
template <typename T> inline __attribute__((always_inline)) vf load_lanes(const T* p, int lanes) {
  if (lanes == VL) return IO<T>::load(p);
#if SEPCONV_VL == 16
  const __mmask16 m = (__mmask16)((1u << lanes) - 1);
  if constexpr (std::is_same_v<T, float>) return (vf)_mm512_maskz_loadu_ps(m, p);
  else return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16);
#else
  float tmp[VL] = {};
  for (int l = 0; l < lanes; ++l) tmp[l] = IO<T>::get(p + l);
  return loadf(tmp);
#endif
}
template <typename T> inline __attribute__((always_inline)) void store_lanes(T* p, vf v, int lanes) {
  if (lanes == VL) return IO<T>::store(p, v);
#if SEPCONV_VL == 16
  const __mmask16 m = (__mmask16)((1u << lanes) - 1);
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(p, m, (__m512)v);
  } else {
    bf16 tmp[VL];
    IO<bf16>::store(tmp, v);
    _mm256_mask_storeu_epi16(p, m, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tmp)));
  }
#else
  float tmp[VL];
  storef(tmp, v);
  for (int l = 0; l < lanes; ++l) IO<T>::put(p + l, tmp[l]);
#endif
}

// Non-temporal store where possible: the output is not read again by this kernel, and
// skipping the read-for-ownership saves a third of the memory traffic of large layers.
// Used only for outputs larger than nt_bytes(), by default 2 MiB, the two cores' L2: a smaller
// output is better left in cache for the next layer to read. (On the Zen 4 machine, 4 MiB made
// 64x112x112 at batch 1, a 3.2 MB output, 0.66-0.86x as fast as 2 MiB; on a Zen 3 VM streamed
// stores were slower at every size to 12.8 MB, and SEPCONV_NT_BYTES=1000000000 made
// MobileNetV1 at batch 8 112 -> 99 ms: which is faster depends on the machine, so the
// threshold can be set.)
inline int64_t nt_bytes() {
  static const int64_t bytes = [] {
    const char* e = std::getenv("SEPCONV_NT_BYTES");
    return e && *e ? std::atoll(e) : int64_t(2) << 20;
  }();
  return bytes;
}
// (bfloat16 is stored plainly: its vector is half a cache line, and streaming the two halves
// apart in time made 8x32x112x112 at 3x3 three times slower on the Zen 4)
template <typename T> inline void stream_store(T* p, vf v, bool nt) { IO<T>::store(p, v); }
#if defined(__x86_64__)
template <> inline void stream_store(float* p, vf v, bool nt) {
  if (!nt || reinterpret_cast<uintptr_t>(p) % sizeof(vf) != 0) return storef(p, v);
#if SEPCONV_VL == 16
  _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
#elif SEPCONV_VL == 8
  _mm256_stream_ps(p, reinterpret_cast<__m256>(v));
#else
  _mm_stream_ps(p, reinterpret_cast<__m128>(v));
#endif
}
#endif
// After a kernel's streamed stores (nt): they must be visible before the pool reports completion.
inline void fence_streams(bool nt) {
#if defined(__x86_64__)
  if (nt) _mm_sfence();
#endif
}

// Software prefetch of the next rows pays only for inputs that come from DRAM: measured
// 1.2-1.4x on 64x112x112 at batch 8 (25 MB), and 0.9-0.95x on inputs that stay in cache.
constexpr int64_t PREFETCH_BYTES = 8 << 20;
inline void prefetch_row(const void* p, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(static_cast<const char*>(p) + off, 0, 1);
}

// First and one-past-last output column whose kw taps all fall inside the input row.
inline void interior(const Geometry& g, int& lo, int& hi) {
  lo = 0;
  while (lo < g.OW && lo * g.sw - g.pw < 0) ++lo;
  hi = g.OW;
  while (hi > lo && (hi - 1) * g.sw - g.pw + (g.kw - 1) * g.dil_w >= g.W) --hi;
}

// ----------------------------------------------------------------------------- activations
// Applied to a finished output vector, as PyTorch computes them: NaN stays NaN (a comparison
// with NaN is false, so `x < 0 ? 0 : x` passes it through), and exp/erf are the same formulas
// as ATen's vectorised CPU code (Cephes-style exp; erf by Abramowitz & Stegun 7.1.26).

// exp(x - n ln2) for x - n ln2 within ln2/2: ln2 split in two (Cody-Waite) and a degree-6
// polynomial, Cephes' expf coefficients.
inline vf exp_reduced(vf x, vf n) {
  const vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p;
}

// exp(x) for float32 lanes: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-6 polynomial
// (relative error about 1 ulp), 2^n built in the exponent bits; 0 below -87.3 (-87 on
// AVX-512), inf above 88.4, NaN kept.
inline vf vexp(vf x) {
#if SEPCONV_VL == 16
  // AVX-512: n by one rounding, 2^n applied by vscalefps, which also makes the overflow inf
  // (half the instructions of the general form). Below -87 the result is 0 (exp(-87) = 1.6e-38,
  // near the smallest normal float): at the bound a result can fall just under it, and a
  // denormal result takes a microcode assist (GELU's exp(-x^2), clamped there for |x| > 9.3,
  // ran 4x slower). max/min with x second pass NaN through.
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __m512 xc = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(lo, (__m512)x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf p = exp_reduced((vf)xc, (vf)n);
  const __m512 y = _mm512_scalef_ps((__m512)p, n);
  return (vf)_mm512_mask_blend_ps(_mm512_cmp_ps_mask((__m512)x, lo, _CMP_LT_OQ), y, _mm512_setzero_ps());
#else
  const vf hi = splat(88.3762626647949f), lo = splat(-87.3365447505531f);
  const vf xc = x > hi ? hi : (x < lo ? lo : x);
  const vf fx = xc * 1.44269504088896341f + 0.5f;
  vf n = __builtin_convertvector(__builtin_convertvector(fx, vi), vf);   // toward zero,
  n = n > fx ? n - 1.0f : n;                                              // then floor
  const vf p = exp_reduced(xc, n);
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf out = x > hi ? splat(__builtin_inff()) : p * (vf)e;
  out = x < lo ? vf{} : out;
  return x != x ? x : out;
#endif
}

// 1 / x for the activations' denominators (1 or more, or inf): the hardware reciprocal and
// one Newton step, on AVX-512 from 14 bits (about 1 ulp), on AVX2 from 12 (about 2 ulp), a
// division elsewhere. A division occupies the divider for 16 cycles per vector on the Xeon
// (a SiLU epilogue cost more than the 16 -> 96 channel GEMM it follows), 3.5-5 on a Zen 3.
// (1 / inf is the reciprocal's 0: the Newton step would make it NaN.)
inline vf vrecip(vf x) {
#if SEPCONV_VL == 16
  const vf r = (vf)_mm512_rcp14_ps((__m512)x);
  const vf y = r * (2.0f - x * r);
  return r == 0 ? r : y;
#elif SEPCONV_VL == 8
  const vf r = (vf)_mm256_rcp_ps((__m256)x);
  const vf y = r * (2.0f - x * r);
  return r == 0 ? r : y;
#else
  return 1.0f / x;
#endif
}

// erf as the rational function XLA and Eigen use (odd numerator of degree 13 over an even
// denominator of degree 8 on x clamped to [-4, 4]; +-1 exactly beyond 3.92, so that GELU(-inf)
// is -inf * 0 = NaN as in ATen): 20 instructions where Abramowitz & Stegun's form
// with an exp took 35 (GELU 9.5 -> 6.2 ns a vector on the Zen 4; absolute error 9e-7 against
// 4.6e-7, both from the cancellation in 1 + erf(x) for x < -2).
inline vf verf(vf a) {
  const vf x = a > 4.0f ? splat(4.0f) : (a < -4.0f ? splat(-4.0f) : a);   // (NaN passes)
  const vf x2 = x * x;
  vf p = splat(-2.72614225801306e-10f);
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  vf q = splat(-1.45660718464996e-05f);
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  const vf e = x * p * vrecip(q);
  // erf(x) rounds to +-1 from |x| = 3.92: exactly so here, whatever the reciprocal's precision
  return x >= 3.92f ? splat(1.0f) : (x <= -3.92f ? splat(-1.0f) : e);
}

// 1 / (1 + exp(-x)), for sigmoid and SiLU (EfficientNet applies SiLU to every expansion and
// depthwise output: a sixth of its time).
inline vf vsigmoid(vf x) {
#if SEPCONV_VL == 16
  // AVX-512: exp(-x) = 2^n 2^f, n = round(-x log2 e), f = -x log2 e - n by two FMAs (log2 e
  // split in two: f exact enough at |x| = 80), 2^f by a degree-5 polynomial (relative error
  // 1.1e-7 on [-1/2, 1/2], fitted here), 2^n by vscalefps. x is clamped to [-86.6, 87.3], so
  // that 2^n stays normal and 1 + exp(-x) finite (the reciprocal needs no inf case); below
  // -86.6 the result is 0 (x NaN: NaN). 19 instructions against 27 by vexp: SiLU 6.1 -> 4.7 ns
  // a vector on the Zen 4, relative error 1.7e-7 both.
  const __m512 xc = _mm512_min_ps(_mm512_set1_ps(87.3f), _mm512_max_ps(_mm512_set1_ps(-86.6f), (__m512)x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(-1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf f = (vf)_mm512_fmadd_ps(xc, _mm512_set1_ps(-1.925963033500011079e-8f),
                                   _mm512_fmsub_ps(xc, _mm512_set1_ps(-1.44269502162933349609375f), n));
  vf p = splat(1.3219078641089031e-3f);
  p = p * f + 9.671698524079739e-3f;
  p = p * f + 5.550891543013335e-2f;
  p = p * f + 2.402223799056349e-1f;
  p = p * f + 6.931468570246182e-1f;
  p = p * f + 1.0f;
  const vf d = 1.0f + (vf)_mm512_scalef_ps((__m512)p, n);
  const vf r = (vf)_mm512_rcp14_ps((__m512)d);
  const vf s = r * (2.0f - d * r);
  return (vf)_mm512_mask_mov_ps((__m512)s, _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-86.6f), _CMP_LT_OQ),
                                _mm512_setzero_ps());
#else
  return vrecip(1.0f + vexp(-x));
#endif
}

inline __attribute__((always_inline)) vf act_general(vf x, Act a) {
  switch (a.kind) {
    case ACT_RELU: return x < 0 ? vf{} : x;
    case ACT_CLAMP: return x < a.lo ? splat(a.lo) : (x > a.hi ? splat(a.hi) : x);
    case ACT_SILU: return x * vsigmoid(x);
    case ACT_SIGMOID: return vsigmoid(x);
    case ACT_HARDSWISH: {
      vf t = x + 3.0f;
      t = t < 0 ? vf{} : (t > 6.0f ? splat(6.0f) : t);
      return x * t / 6.0f;
    }
    case ACT_GELU: return 0.5f * x * (1.0f + verf(x * 0.70710678118654752f));
    case ACT_GELU_TANH:   // 0.5 x (1 + tanh(u)) = x sigmoid(2u)
      return x * vsigmoid(1.5957691216057308f * (x + 0.044715f * x * x * x));
    default: return x;
  }
}

__attribute__((noinline)) inline vf act_out_of_line(vf x, Act a) { return act_general(x, a); }

// An activation on n vectors in place, the kind chosen once and four vectors at a time: their
// polynomial chains interleave (one vector per call waited on each chain's latency: a SiLU
// epilogue cost twice the 16 -> 96 channel GEMM before it).
__attribute__((noinline)) inline void act_vectors(vf* v, int n, Act a) {
  auto each = [&](auto f) INLINE_LAMBDA {
    int i = 0;
    for (; i + 4 <= n; i += 4) {
      const vf x0 = f(v[i]), x1 = f(v[i + 1]), x2 = f(v[i + 2]), x3 = f(v[i + 3]);
      v[i] = x0, v[i + 1] = x1, v[i + 2] = x2, v[i + 3] = x3;
    }
    for (; i < n; ++i) v[i] = f(v[i]);
  };
  switch (a.kind) {
    case ACT_SILU: each([](vf x) INLINE_LAMBDA { return act_general(x, Act{ACT_SILU}); }); break;
    case ACT_SIGMOID: each([](vf x) INLINE_LAMBDA { return act_general(x, Act{ACT_SIGMOID}); }); break;
    case ACT_GELU: each([](vf x) INLINE_LAMBDA { return act_general(x, Act{ACT_GELU}); }); break;
    case ACT_GELU_TANH: each([](vf x) INLINE_LAMBDA { return act_general(x, Act{ACT_GELU_TANH}); }); break;
    default: each([&](vf x) INLINE_LAMBDA { return act_general(x, a); }); break;
  }
}

// Whether an activation is applied in registers (none, ReLU, clamp), or by act_vectors.
inline bool act_inline(const Act& a) { return a.kind <= ACT_CLAMP; }

// An activation on one vector: ReLU and clamp inline, the others out of line (epilogues of
// GEMM tiles; a call per vector for ReLU6 made a 16 -> 96 channel 1x1 convolution 5x slower).
inline __attribute__((always_inline)) vf activate(vf x, const Act& a) {
  if (a.kind == ACT_NONE) return x;
  if (a.kind == ACT_RELU) return x < 0 ? vf{} : x;
  if (a.kind == ACT_CLAMP) return x < a.lo ? splat(a.lo) : (x > a.hi ? splat(a.hi) : x);
  return act_out_of_line(x, a);
}

// Kernels apply ReLU to each output vector in registers (`relu_if`) and every other
// activation in a second pass over the output rows they just wrote, while those are in
// cache (`activate_rows`): a per-vector switch in every register block made the kernels
// 5x larger.
inline __attribute__((always_inline)) vf relu_if(vf x, bool relu) { return relu ? (x < 0 ? vf{} : x) : x; }

template <typename T>
__attribute__((noinline)) void activate_rows(T* p, int64_t n, Act a) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) IO<T>::store(p + i, act_general(IO<T>::load(p + i), a));
  if (i < n) store_lanes(p + i, act_general(load_lanes(p + i, (int)(n - i)), a), (int)(n - i));
}
