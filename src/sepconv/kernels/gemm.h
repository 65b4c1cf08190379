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
  if (g.bias) { c0 += loadf(g.bias + n0); c1 += loadf(g.bias + n0 + VL); }
  c0 = activate(c0, g.act1);
  c1 = activate(c1, g.act1);
  const int l0 = ncols >= VL ? VL : ncols, l1 = ncols >= 2 * VL ? VL : ncols - VL;
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

// One MR x NR tile over the whole K: rows [m, m + MR) of A, one panel of B.
template <typename T, int MR>
void gemm_tile(const GemmArgs& g, const float* panel, int64_t m, int64_t n0, int ncols) {
  const T* a = static_cast<const T*>(g.a) + m * g.lda;
  vf acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = vf{};
#pragma GCC unroll 2
  for (int64_t k = 0; k < g.K; ++k) {
    const vf b0 = loadf(panel + k * GEMM_NR), b1 = loadf(panel + k * GEMM_NR + VL);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf av = splat(IO<T>::get(a + i * g.lda + k));
      acc0[i] += av * b0;
      acc1[i] += av * b1;
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) gemm_store_row<T>(acc0[i], acc1[i], g, m + i, n0, ncols);
}

// Rows [m0, m1) of one panel: full MR tiles, then one narrower tile for the rest.
template <typename T>
void gemm_rows(const GemmArgs& g, const float* panel, int64_t m0, int64_t m1, int64_t n0) {
  const int ncols = (int)std::min<int64_t>(GEMM_NR, g.N - n0);
  int64_t m = m0;
  for (; m + GEMM_MR <= m1; m += GEMM_MR) gemm_tile<T, GEMM_MR>(g, panel, m, n0, ncols);
  switch (m1 - m) {
#define SEPCONV_TAIL(r) case r: if constexpr (r < GEMM_MR) gemm_tile<T, r>(g, panel, m, n0, ncols); break;
    SEPCONV_TAIL(1) SEPCONV_TAIL(2) SEPCONV_TAIL(3) SEPCONV_TAIL(4) SEPCONV_TAIL(5) SEPCONV_TAIL(6)
    SEPCONV_TAIL(7) SEPCONV_TAIL(8) SEPCONV_TAIL(9) SEPCONV_TAIL(10) SEPCONV_TAIL(11) SEPCONV_TAIL(12)
    SEPCONV_TAIL(13)
#undef SEPCONV_TAIL
    default: break;
  }
}

// Work units: the rows are cut into chunks of mc and the panels into chunks of nc so that one
// unit's A rows and B panels fit GEMM_UNIT_BYTES, with at least two units per thread; a unit
// walks its panels, each over all its rows (the panel stays in cache across the rows, the
// rows across the panels). Units are split over threads. run(m0, m1, panel) does one panel.
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
      const int64_t m0 = (u / panel_chunks) * mc, m1 = std::min(g.M, m0 + mc);
      const int64_t p0 = (u % panel_chunks) * nc, p1 = std::min(panels, p0 + nc);
      for (int64_t p = p0; p < p1; ++p) run(m0, m1, p);
    }
  });
}

void gemm_f32(const GemmArgs& g, const void* packed) {
  const float* b = static_cast<const float*>(packed);
  gemm_schedule(g, sizeof(float), sizeof(float), [&](int64_t m0, int64_t m1, int64_t p) {
    gemm_rows<float>(g, b + p * g.K * GEMM_NR, m0, m1, p * GEMM_NR);
  });
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

template <int MR>
SEPCONV_BF16_TARGET void gemm_tile_bf16(const GemmArgs& g, const uint16_t* panel, int64_t m, int64_t n0, int ncols) {
  const uint16_t* a = static_cast<const uint16_t*>(g.a) + m * g.lda;
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  const int64_t full = g.K / 2;
#pragma GCC unroll 2
  for (int64_t kp = 0; kp < full; ++kp) {
    const __m512i b0 = _mm512_loadu_si512(panel + kp * 2 * GEMM_NR);
    const __m512i b1 = _mm512_loadu_si512(panel + kp * 2 * GEMM_NR + GEMM_NR);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      uint32_t pair;
      std::memcpy(&pair, a + i * g.lda + 2 * kp, 4);
      const __m512i av = _mm512_set1_epi32((int)pair);
      acc0[i] = _mm512_dpbf16_ps(acc0[i], (__m512bh)av, (__m512bh)b0);
      acc1[i] = _mm512_dpbf16_ps(acc1[i], (__m512bh)av, (__m512bh)b1);
    }
  }
  if (g.K % 2) {   // the last k alone: its pair's second half is zero in A and in B
    const __m512i b0 = _mm512_loadu_si512(panel + full * 2 * GEMM_NR);
    const __m512i b1 = _mm512_loadu_si512(panel + full * 2 * GEMM_NR + GEMM_NR);
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_set1_epi32((int)a[i * g.lda + g.K - 1]);
      acc0[i] = _mm512_dpbf16_ps(acc0[i], (__m512bh)av, (__m512bh)b0);
      acc1[i] = _mm512_dpbf16_ps(acc1[i], (__m512bh)av, (__m512bh)b1);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) gemm_store_row<bf16>((vf)acc0[i], (vf)acc1[i], g, m + i, n0, ncols);
}

SEPCONV_BF16_TARGET void gemm_rows_bf16(const GemmArgs& g, const uint16_t* panel, int64_t m0, int64_t m1,
                                        int64_t n0) {
  const int ncols = (int)std::min<int64_t>(GEMM_NR, g.N - n0);
  int64_t m = m0;
  for (; m + GEMM_MR <= m1; m += GEMM_MR) gemm_tile_bf16<GEMM_MR>(g, panel, m, n0, ncols);
  switch (m1 - m) {
#define SEPCONV_TAIL(r) case r: gemm_tile_bf16<r>(g, panel, m, n0, ncols); break;
    SEPCONV_TAIL(1) SEPCONV_TAIL(2) SEPCONV_TAIL(3) SEPCONV_TAIL(4) SEPCONV_TAIL(5) SEPCONV_TAIL(6)
    SEPCONV_TAIL(7) SEPCONV_TAIL(8) SEPCONV_TAIL(9) SEPCONV_TAIL(10) SEPCONV_TAIL(11) SEPCONV_TAIL(12)
    SEPCONV_TAIL(13)
#undef SEPCONV_TAIL
    default: break;
  }
}

void gemm_bf16(const GemmArgs& g, const void* packed) {
  const uint16_t* b = static_cast<const uint16_t*>(packed);
  const int64_t panel_halves = (g.K + 1) / 2 * 2 * GEMM_NR;
  gemm_schedule(g, sizeof(uint16_t), 2, [&](int64_t m0, int64_t m1, int64_t p) {
    gemm_rows_bf16(g, b + p * panel_halves, m0, m1, p * GEMM_NR);
  });
}
#endif
