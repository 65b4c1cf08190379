// GEMM for 1x1 convolutions and linear layers on channels_last data, with the epilogue fused:
//   C (M x N) = act2(act1(A (M x K) . B (K x N) + bias) + residual)
// A and C are row-major (a row is one pixel's channels), B is the layer's weight, packed once
// when the model is optimized. Included inside one ISA's namespace (isa_build.h).
//
// Packed float32 B: panels of NR = 2 * VL columns, each K rows of NR floats (columns past N
// zero). A micro-kernel computes an MR x NR tile of C over the whole K with its accumulators
// in registers, so the epilogue runs once, on registers, with nothing read back. MR: 14 rows
// with 32 vector registers (AVX-512: 28 accumulators, 2 B vectors), 6 with 16.

constexpr int GEMM_NR = 2 * VL;
constexpr int GEMM_MR = VL == 16 ? 14 : 6;
// Bytes of A plus B one work unit of a thread may touch: half of a core's 2 MiB L2 here.
constexpr int64_t GEMM_UNIT_BYTES = 512 << 10;

inline int64_t gemm_panels(int64_t N) { return (N + GEMM_NR - 1) / GEMM_NR; }

// w: (N, K) row-major float32 (a Linear or 1x1 convolution weight) -> panels (see above).
void gemm_pack_f32(const float* w, int64_t N, int64_t K, void* packed) {
  float* out = static_cast<float*>(packed);
  for (int64_t p = 0; p < gemm_panels(N); ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int j = 0; j < GEMM_NR; ++j) {
        const int64_t n = p * GEMM_NR + j;
        out[(p * K + k) * GEMM_NR + j] = n < N ? w[n * K + k] : 0.f;
      }
}

// The epilogue of one row of a tile: two vectors of accumulators for columns [n0, n0 + NR).
template <typename T>
inline __attribute__((always_inline)) void gemm_store_row(vf c0, vf c1, const GemmArgs& g, int64_t m, int64_t n0,
                                                          int ncols) {
  const int l0 = ncols >= VL ? VL : ncols, l1 = ncols >= 2 * VL ? VL : ncols - VL;
  if (g.accum) {
    const T* s = static_cast<const T*>(g.accum) + m * g.ldacc + n0;
    c0 += load_lanes(s, l0);
    if (l1 > 0) c1 += load_lanes(s + VL, l1);
  }
  if (g.scale) { c0 *= loadf(g.scale + n0); c1 *= loadf(g.scale + n0 + VL); }
  if (g.bias) { c0 += loadf(g.bias + n0); c1 += loadf(g.bias + n0 + VL); }
  c0 = activate(c0, g.act1);
  c1 = activate(c1, g.act1);
  if (g.residual) {
    const T* r = static_cast<const T*>(g.residual) + m * g.ldr + n0;
    c0 += load_lanes(r, l0);
    if (l1 > 0) c1 += load_lanes(r + VL, l1);
    c0 = activate(c0, g.act2);
    c1 = activate(c1, g.act2);
  }
  T* c = static_cast<T*>(g.c) + m * g.ldc + n0;
  store_lanes(c, c0, l0);
  if (l1 > 0) store_lanes(c + VL, c1, l1);
}

// A rows whose stride is a multiple of 4 KiB all fall into one L1 set (MR rows in an 8-way
// cache: measured 86 against 173 GFLOP/s at K = 1024): such an A is first copied tile by tile
// k-major (for each k, a tile's MR values), so that a tile's values come from consecutive
// lines. Tile t (rows t * MR ...) starts at t * MR * K; the last, narrower tile is k-major too.
inline bool gemm_pack_a(int64_t lda_bytes) { return lda_bytes % 4096 == 0; }

template <typename T>
void gemm_copy_a(const T* a, int64_t lda, int64_t M, int64_t K, T* out) {
  at::parallel_for(0, (M + GEMM_MR - 1) / GEMM_MR, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m = t * GEMM_MR, rows = std::min<int64_t>(GEMM_MR, M - m);
      T* o = out + m * K;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t i = 0; i < rows; ++i) o[k * rows + i] = a[(m + i) * lda + k];
    }
  });
}

// One MR x NR tile over the whole K: MR rows of A (at `a`: row stride lda, or k-major if
// PACKED), one panel of B, written at row m, columns [n0, n0 + ncols). Unpacked rows are read
// through one pointer per three rows and the stride: row 3q + r at base[q] + r * lda, which
// x86 addresses as (base, stride, scale 4 or 8), so that 14 rows need 5 pointers and one
// stride register instead of 14 pointers (which spilled, and the loads waited on reloads).
template <typename T, int MR, bool PACKED>
void gemm_tile(const GemmArgs& g, const T* a, const float* panel, int64_t m, int64_t n0, int ncols) {
  constexpr int Q = (MR + 2) / 3;
  vf acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = vf{};
  const T* base[Q];
#pragma GCC unroll 6
  for (int q = 0; q < Q; ++q) base[q] = PACKED ? a : a + 3 * q * g.lda;
  const int64_t lda = g.lda;
  const float* bp = panel;
#pragma GCC unroll 2
  for (int64_t k = 0; k < g.K; ++k) {
    const vf b0 = loadf(bp), b1 = loadf(bp + VL);
    bp += GEMM_NR;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf av = splat(IO<T>::get(PACKED ? base[0] + i : base[i / 3] + (i % 3) * lda));
      acc0[i] += av * b0;
      acc1[i] += av * b1;
    }
#pragma GCC unroll 6
    for (int q = 0; q < Q; ++q) base[q] += PACKED ? MR : 1;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) gemm_store_row<T>(acc0[i], acc1[i], g, m + i, n0, ncols);
}

// Rows [m0, m1) (whole tiles but the last) against panels [p0, p1), each tile of rows against
// all the panels. `a` is A, or its copy by gemm_copy_a (PACKED).
template <typename T, bool PACKED>
void gemm_unit(const GemmArgs& g, const T* a, const float* packed, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  for (int64_t m = m0; m < m1; m += GEMM_MR) {
    const T* rows = PACKED ? a + m * g.K : a + m * g.lda;
    for (int64_t p = p0; p < p1; ++p) {
      const float* panel = packed + p * (g.ldb ? g.ldb : g.K) * GEMM_NR;
      const int ncols = (int)std::min<int64_t>(GEMM_NR, g.N - p * GEMM_NR);
      switch (std::min<int64_t>(GEMM_MR, m1 - m)) {
#define SEPCONV_TILE(r) case r: if constexpr (r <= GEMM_MR) gemm_tile<T, r, PACKED>(g, rows, panel, m, p * GEMM_NR, ncols); break;
        SEPCONV_TILE(1) SEPCONV_TILE(2) SEPCONV_TILE(3) SEPCONV_TILE(4) SEPCONV_TILE(5) SEPCONV_TILE(6)
        SEPCONV_TILE(7) SEPCONV_TILE(8) SEPCONV_TILE(9) SEPCONV_TILE(10) SEPCONV_TILE(11) SEPCONV_TILE(12)
        SEPCONV_TILE(13) SEPCONV_TILE(14)
#undef SEPCONV_TILE
        default: break;
      }
    }
  }
}

// Work units: the rows are cut into chunks of mc and the panels into chunks of nc so that one
// unit's A rows and B panels fit GEMM_UNIT_BYTES, with at least two units per thread; a unit
// walks its rows MR at a time, each tile of rows against all its panels (the rows stay in L1,
// the panels in L2). Units are split over threads. run(m0, m1, p0, p1) does one unit.
template <typename Run>
void gemm_schedule(const GemmArgs& g, int64_t a_item, int64_t b_item, Run run) {
  const int64_t panels = gemm_panels(g.N), threads = at::get_num_threads();
  int64_t mc = g.M, nc = panels;   // rows, panels per unit
  auto bytes = [&] { return mc * g.K * a_item + nc * GEMM_NR * g.K * b_item; };
  auto units = [&] { return ((g.M + mc - 1) / mc) * ((panels + nc - 1) / nc); };
  while ((bytes() > GEMM_UNIT_BYTES || units() < 2 * threads) && (mc > GEMM_MR || nc > 1)) {
    if (nc > 1 && (nc * GEMM_NR * b_item >= mc * a_item || mc <= GEMM_MR)) nc = (nc + 1) / 2;
    else mc = std::max<int64_t>(GEMM_MR, (mc / 2 + GEMM_MR - 1) / GEMM_MR * GEMM_MR);
  }
  const int64_t row_chunks = (g.M + mc - 1) / mc, panel_chunks = (panels + nc - 1) / nc;
  at::parallel_for(0, row_chunks * panel_chunks, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t m0 = (u / panel_chunks) * mc, p0 = (u % panel_chunks) * nc;
      run(m0, std::min(g.M, m0 + mc), p0, std::min(panels, p0 + nc));
    }
  });
}

void gemm_f32(const GemmArgs& g, const void* packed) {
  const float* b = static_cast<const float*>(packed);
  const float* a = static_cast<const float*>(g.a);
  if (gemm_pack_a(g.lda * 4)) {
    std::vector<float> copy(g.M * g.K);
    gemm_copy_a(a, g.lda, g.M, g.K, copy.data());
    gemm_schedule(g, 4, 4, [&](int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
      gemm_unit<float, true>(g, copy.data(), b, m0, m1, p0, p1);
    });
  } else {
    gemm_schedule(g, 4, 4, [&](int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
      gemm_unit<float, false>(g, a, b, m0, m1, p0, p1);
    });
  }
}

#if SEPCONV_VL == 16 && defined(SEPCONV_TARGET)
// bfloat16 with AVX512-BF16 dot products: vdpbf16ps adds a[k] b[k] + a[k+1] b[k+1] to each
// float32 lane, so B is packed by pairs of k: per pair, NR columns x (k, k+1) as 2 * NR halves
// (k = K zero when K is odd), and A is broadcast a pair (32 bits) at a time. Accumulation is
// float32; the epilogue is the float32 one, rounding C to bfloat16 once.
#define SEPCONV_BF16_TARGET __attribute__((target(SEPCONV_TARGET ",avx512bf16")))

void gemm_pack_bf16(const float* w, int64_t N, int64_t K, void* out) {
  uint16_t* o = static_cast<uint16_t*>(out);
  const int64_t pairs = (K + 1) / 2;
  for (int64_t p = 0; p < gemm_panels(N); ++p)
    for (int64_t kp = 0; kp < pairs; ++kp)
      for (int j = 0; j < GEMM_NR; ++j)
        for (int h = 0; h < 2; ++h) {
          const int64_t n = p * GEMM_NR + j, k = 2 * kp + h;
          o[((p * pairs + kp) * GEMM_NR + j) * 2 + h] = n < N && k < K ? float_to_bf16(w[n * K + k]) : 0;
        }
}

// MR rows of A as bfloat16 pairs (32 bits each): row i's pair kp at rows16 + i * lda + 2 * kp
// (read, as in gemm_tile, through one pointer per three rows), or k-major (a32[kp * MR + i])
// if PACKED.
template <int MR, bool PACKED>
SEPCONV_BF16_TARGET void gemm_tile_bf16(const GemmArgs& g, const void* a, const uint16_t* panel, int64_t m,
                                        int64_t n0, int ncols) {
  constexpr int Q = (MR + 2) / 3;
  const int64_t full = g.K / 2, lda = g.lda;
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  const uint16_t* base[Q];
#pragma GCC unroll 6
  for (int q = 0; q < Q; ++q) base[q] = static_cast<const uint16_t*>(a) + (PACKED ? 0 : 3 * q * lda);
  const uint16_t* bp = panel;
#pragma GCC unroll 2
  for (int64_t kp = 0; kp < full; ++kp) {
    const __m512i b0 = _mm512_loadu_si512(bp), b1 = _mm512_loadu_si512(bp + GEMM_NR);
    bp += 2 * GEMM_NR;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      uint32_t pair;
      std::memcpy(&pair, PACKED ? base[0] + 2 * i : base[i / 3] + (i % 3) * lda, 4);
      const __m512i av = _mm512_set1_epi32((int)pair);
      acc0[i] = _mm512_dpbf16_ps(acc0[i], (__m512bh)av, (__m512bh)b0);
      acc1[i] = _mm512_dpbf16_ps(acc1[i], (__m512bh)av, (__m512bh)b1);
    }
#pragma GCC unroll 6
    for (int q = 0; q < Q; ++q) base[q] += PACKED ? 2 * MR : 2;
  }
  if (g.K % 2) {   // the last k alone: its pair's second half is zero in A and in B
    const __m512i b0 = _mm512_loadu_si512(bp), b1 = _mm512_loadu_si512(bp + GEMM_NR);
    const uint16_t* src = static_cast<const uint16_t*>(g.a) + m * g.lda;
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_set1_epi32((int)src[i * g.lda + g.K - 1]);
      acc0[i] = _mm512_dpbf16_ps(acc0[i], (__m512bh)av, (__m512bh)b0);
      acc1[i] = _mm512_dpbf16_ps(acc1[i], (__m512bh)av, (__m512bh)b1);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) gemm_store_row<bf16>((vf)acc0[i], (vf)acc1[i], g, m + i, n0, ncols);
}

template <bool PACKED>
SEPCONV_BF16_TARGET void gemm_unit_bf16(const GemmArgs& g, const void* a, const uint16_t* packed, int64_t m0,
                                        int64_t m1, int64_t p0, int64_t p1) {
  const int64_t panel_halves = ((g.ldb ? g.ldb : g.K) + 1) / 2 * 2 * GEMM_NR;
  for (int64_t m = m0; m < m1; m += GEMM_MR) {
    const void* rows = PACKED ? static_cast<const void*>(static_cast<const uint16_t*>(a) + m * g.K)
                              : static_cast<const void*>(static_cast<const uint16_t*>(a) + m * g.lda);
    for (int64_t p = p0; p < p1; ++p) {
      const uint16_t* panel = packed + p * panel_halves;
      const int ncols = (int)std::min<int64_t>(GEMM_NR, g.N - p * GEMM_NR);
      switch (std::min<int64_t>(GEMM_MR, m1 - m)) {
#define SEPCONV_TILE(r) case r: gemm_tile_bf16<r, PACKED>(g, rows, panel, m, p * GEMM_NR, ncols); break;
        SEPCONV_TILE(1) SEPCONV_TILE(2) SEPCONV_TILE(3) SEPCONV_TILE(4) SEPCONV_TILE(5) SEPCONV_TILE(6)
        SEPCONV_TILE(7) SEPCONV_TILE(8) SEPCONV_TILE(9) SEPCONV_TILE(10) SEPCONV_TILE(11) SEPCONV_TILE(12)
        SEPCONV_TILE(13) SEPCONV_TILE(14)
#undef SEPCONV_TILE
        default: break;
      }
    }
  }
}

void gemm_bf16(const GemmArgs& g, const void* packed) {
  const uint16_t* b = static_cast<const uint16_t*>(packed);
  // whole pairs per row (K and lda even): the rows can be copied as 32-bit pairs
  if (g.K % 2 == 0 && g.lda % 2 == 0 && gemm_pack_a(g.lda * 2)) {
    std::vector<uint32_t> copy(g.M * (g.K / 2));
    gemm_copy_a(static_cast<const uint32_t*>(g.a), g.lda / 2, g.M, g.K / 2, copy.data());
    gemm_schedule(g, 2, 2, [&](int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
      gemm_unit_bf16<true>(g, copy.data(), b, m0, m1, p0, p1);
    });
  } else {
    gemm_schedule(g, 2, 2, [&](int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
      gemm_unit_bf16<false>(g, g.a, b, m0, m1, p0, p1);
    });
  }
}
#endif
