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

// An activation on the R x NV accumulators of a tile (NV vectors a row: a1 unused if 1): ReLU
// and clamp in registers, the others by act_vectors on a copy (the accumulators' address
// never escapes, so they stay in registers: with the tile in memory, a 32-deep 1x1
// convolution spent as long in its epilogue as in its FMAs).
template <int R, int NV = 2>
inline __attribute__((always_inline)) void act_tile(vf* a0, vf* a1, const Act& a) {
  if (a.kind == ACT_NONE) return;
  if (act_inline(a)) {
    auto each = [&](const Act k) INLINE_LAMBDA {   // k's kind known in each branch below
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        a0[i] = activate(a0[i], k);
        if constexpr (NV == 2) a1[i] = activate(a1[i], k);
      }
    };
    if (a.kind == ACT_RELU) each(Act{ACT_RELU});
    else each(a);
    return;
  }
  vf c[NV * R];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    c[NV * i] = a0[i];
    if constexpr (NV == 2) c[2 * i + 1] = a1[i];
  }
  act_vectors(c, NV * R, a);
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    a0[i] = c[NV * i];
    if constexpr (NV == 2) a1[i] = c[2 * i + 1];
  }
}

// The epilogue of a tile's R rows in registers (acc0[r], acc1[r]: row m + r, columns
// [n0, n0 + ncols); NV = 1: acc0 alone, ncols <= VL): accum, scale, bias, act1, residual,
// act2, store; the per-column vectors are loaded once a tile.
template <typename T, int R, int NV = 2>
inline __attribute__((always_inline)) void gemm_epilogue_tile(vf* acc0, vf* acc1, const GemmArgs& g, int64_t m,
                                                              int64_t n0, int ncols) {
  const int l0 = ncols >= VL ? VL : ncols, l1 = NV == 1 ? 0 : ncols >= 2 * VL ? VL : ncols - VL;
  auto add_rows = [&](const void* src, int64_t ld) INLINE_LAMBDA {
    const T* s = static_cast<const T*>(src) + m * ld + n0;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      acc0[r] += load_lanes(s + r * ld, l0);
      if (l1 > 0) acc1[r] += load_lanes(s + r * ld + VL, l1);
    }
  };
  if (g.accum) add_rows(g.accum, g.ldacc);
  if (g.scale) {
    const vf s0 = loadf(g.scale + n0), s1 = loadf(g.scale + n0 + (NV - 1) * VL);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      acc0[r] *= s0;
      if constexpr (NV == 2) acc1[r] *= s1;
    }
  }
  if (g.bias) {
    const vf b0 = loadf(g.bias + n0), b1 = loadf(g.bias + n0 + (NV - 1) * VL);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      acc0[r] += b0;
      if constexpr (NV == 2) acc1[r] += b1;
    }
  }
  act_tile<R, NV>(acc0, acc1, g.act1);
  if (g.residual) {
    add_rows(g.residual, g.ldr);
    act_tile<R, NV>(acc0, acc1, g.act2);
  }
  T* out = static_cast<T*>(g.c) + m * g.ldc + n0;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    store_lanes(out + r * g.ldc, acc0[r], l0);
    if (l1 > 0) store_lanes(out + r * g.ldc + VL, acc1[r], l1);
  }
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
// NV = 1: the first vector of the panel's columns alone (a panel with ncols <= VL: half the
// FMAs of a whole tile, and no zero columns multiplied).
template <typename T, int MR, bool PACKED, int NV = 2>
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
    const vf b0 = loadf(bp), b1 = NV == 2 ? loadf(bp + VL) : vf{};
    bp += GEMM_NR;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf av = splat(IO<T>::get(PACKED ? base[0] + i : base[i / 3] + (i % 3) * lda));
      acc0[i] += av * b0;
      if constexpr (NV == 2) acc1[i] += av * b1;
    }
#pragma GCC unroll 6
    for (int q = 0; q < Q; ++q) base[q] += PACKED ? MR : 1;
  }
  gemm_epilogue_tile<T, MR, NV>(acc0, acc1, g, m, n0, ncols);
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
      if (ncols <= VL && m + GEMM_MR <= m1) {
        gemm_tile<T, GEMM_MR, PACKED, 1>(g, rows, panel, m, p * GEMM_NR, ncols);
        continue;
      }
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
// walks its rows mr (GEMM_MR) at a time, each tile of rows against all its panels (the rows stay in L1,
// the panels in L2). Units are split over threads. run(m0, m1, p0, p1) does one unit.
template <typename Run>
void gemm_schedule(const GemmArgs& g, int64_t a_item, int64_t b_item, Run run, int64_t mr = GEMM_MR) {
  const int64_t panels = gemm_panels(g.N), threads = at::get_num_threads();
  int64_t mc = g.M, nc = panels;   // rows, panels per unit
  auto bytes = [&] { return mc * g.K * a_item + nc * GEMM_NR * g.K * b_item; };
  auto units = [&] { return ((g.M + mc - 1) / mc) * ((panels + nc - 1) / nc); };
  while ((bytes() > GEMM_UNIT_BYTES || units() < 2 * threads) && (mc > mr || nc > 1)) {
    if (nc > 1 && (nc * GEMM_NR * b_item >= mc * a_item || mc <= mr)) nc = (nc + 1) / 2;
    else mc = std::max<int64_t>(mr, (mc / 2 + mr - 1) / mr * mr);
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

// ScaleRowsFn (kernels.h)
template <typename T>
void scale_rows(const void* a_, int64_t lda, int64_t rows, int64_t K, const float* scale, void* out_, int64_t ldo) {
  const T* a = static_cast<const T*>(a_);
  T* out = static_cast<T*>(out_);
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = a + r * lda;
    T* dst = out + r * ldo;
    int64_t k = 0;
    for (; k + VL <= K; k += VL) IO<T>::store(dst + k, IO<T>::load(src + k) * loadf(scale + k));
    if (k < K) store_lanes(dst + k, load_lanes(src + k, (int)(K - k)) * load_lanes(scale + k, (int)(K - k)), (int)(K - k));
  }
}

#ifdef SEPCONV_BF16_INSNS
// bfloat16 with AVX512-BF16 dot products: vdpbf16ps adds a[k] b[k] + a[k+1] b[k+1] to each
// float32 lane, so B is packed by pairs of k: per pair, NR columns x (k, k+1) as 2 * NR halves
// (k >= K zero; gemm_bf16_pairs(K) pairs per panel), and A is broadcast a pair (32 bits) at a
// time. Accumulation is
// float32; the epilogue is the float32 one, rounding C to bfloat16 once.

void gemm_pack_bf16(const float* w, int64_t N, int64_t K, void* out) {
  uint16_t* o = static_cast<uint16_t*>(out);
  const int64_t pairs = gemm_bf16_pairs(K);
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
template <int MR, bool PACKED, int NV = 2>
void gemm_tile_bf16(const GemmArgs& g, const void* a, const uint16_t* panel, int64_t m,
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
    const __m512i b0 = _mm512_loadu_si512(bp), b1 = NV == 2 ? _mm512_loadu_si512(bp + GEMM_NR) : b0;
    bp += 2 * GEMM_NR;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      uint32_t pair;
      std::memcpy(&pair, PACKED ? base[0] + 2 * i : base[i / 3] + (i % 3) * lda, 4);
      const __m512i av = _mm512_set1_epi32((int)pair);
      acc0[i] = _mm512_dpbf16_ps(acc0[i], (__m512bh)av, (__m512bh)b0);
      if constexpr (NV == 2) acc1[i] = _mm512_dpbf16_ps(acc1[i], (__m512bh)av, (__m512bh)b1);
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
  vf c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) c0[i] = (vf)acc0[i], c1[i] = (vf)acc1[i];
  gemm_epilogue_tile<bf16, MR, NV>(c0, c1, g, m, n0, ncols);
}

template <bool PACKED>
void gemm_unit_bf16(const GemmArgs& g, const void* a, const uint16_t* packed, int64_t m0,
                                        int64_t m1, int64_t p0, int64_t p1) {
  const int64_t panel_halves = gemm_bf16_pairs(g.ldb ? g.ldb : g.K) * 2 * GEMM_NR;
  for (int64_t m = m0; m < m1; m += GEMM_MR) {
    const void* rows = PACKED ? static_cast<const void*>(static_cast<const uint16_t*>(a) + m * g.K)
                              : static_cast<const void*>(static_cast<const uint16_t*>(a) + m * g.lda);
    for (int64_t p = p0; p < p1; ++p) {
      const uint16_t* panel = packed + p * panel_halves;
      const int ncols = (int)std::min<int64_t>(GEMM_NR, g.N - p * GEMM_NR);
      if (ncols <= VL && m + GEMM_MR <= m1) {
        gemm_tile_bf16<GEMM_MR, PACKED, 1>(g, rows, panel, m, p * GEMM_NR, ncols);
        continue;
      }
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

// bfloat16 with AMX (Intel Advanced Matrix Extensions) where the CPU and the OS allow it:
// TDPBF16PS adds a 16 x 32 tile of A times a 32 x 16 tile of B (pairs of k, as vdpbf16ps
// takes them) to a 16 x 16 float32 tile. gemm_pack_bf16's panels serve it as they are: 16
// pairs of a panel, starting at a multiple of 16, are two B tiles (columns 0-15 and 16-31,
// pair rows 4 * NR bytes apart), and the panel's pairs past K are zero. A block of 32 rows x
// one panel holds four accumulator tiles; per 32 k it loads two A tiles and two B tiles and
// issues four TDPBF16PS. The tiles are then stored to a 4 KiB buffer and the float32 epilogue
// writes C from there.
// A's rows are read in place where they hold whole tiles; a block of fewer than 32 rows, or
// a K that is no multiple of 32 (unless A's rows are zero-padded, a_padded), is first copied
// into a buffer zeroed past its rows and past K (A's zeros meet B's, so the last tile adds
// nothing but zeros). A call on columns of a
// larger B (gemm_program's, ldb > K) has the next columns' weights past its K, not zeros:
// there the k past the last whole 32 are added by vdpbf16ps, on the stored tiles.
constexpr int AMX_MR = 32;
// Below this many rows the accumulator tiles are mostly empty: vdpbf16ps does the call.
constexpr int64_t AMX_MIN_M = 16;

struct alignas(64) AmxConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile 16 rows x 64 bytes: accumulators 0-3, A 4-5, B 6-7. Tile configuration belongs
// to the thread, so each unit of work loads it and releases the tiles when done.
inline void amx_configure() {
  AmxConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  _tile_loadconfig(&cfg);
}

// Rows [m, m + rows) times one panel, written at columns [n0, n0 + ncols): `a` holds 32 rows
// (stride lda halves) of `blocks` whole tiles of 32 k, after which the k up to K are added
// with vdpbf16ps (none when the tiles cover K). buf: 32 x 32 floats.
void gemm_block_amx(const GemmArgs& g, const uint16_t* a, int64_t lda, int64_t blocks,
                                       const uint16_t* panel, int64_t m, int rows, int64_t n0, int ncols,
                                       float* buf) {
  const int64_t stride_a = lda * 2, pair_row = 2 * GEMM_NR;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kb = 0; kb < blocks; ++kb) {
    const uint16_t* ak = a + kb * 32;
    const uint16_t* bk = panel + kb * 16 * pair_row;
    _tile_loadd(4, ak, stride_a);
    _tile_loadd(5, ak + 16 * lda, stride_a);
    _tile_loadd(6, bk, pair_row * 2);
    _tile_loadd(7, bk + 32, pair_row * 2);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, buf, 128);
  _tile_stored(1, buf + 16, 128);
  _tile_stored(2, buf + 16 * 32, 128);
  _tile_stored(3, buf + 16 * 32 + 16, 128);
  const int64_t first = blocks * 16, pairs = g.K / 2;
  const bool odd = first < (g.K + 1) / 2 && g.K % 2;
  for (int r = 0; r < rows && first < (g.K + 1) / 2; ++r) {
    __m512 c0 = _mm512_loadu_ps(buf + r * 32), c1 = _mm512_loadu_ps(buf + r * 32 + 16);
    const uint16_t* ar = a + r * lda;
    const uint16_t* bp = panel + first * pair_row;
    for (int64_t kp = first; kp < pairs; ++kp, bp += pair_row) {
      uint32_t pair;
      std::memcpy(&pair, ar + 2 * kp, 4);
      const __m512i av = _mm512_set1_epi32((int)pair);
      c0 = _mm512_dpbf16_ps(c0, (__m512bh)av, (__m512bh)_mm512_loadu_si512(bp));
      c1 = _mm512_dpbf16_ps(c1, (__m512bh)av, (__m512bh)_mm512_loadu_si512(bp + GEMM_NR));
    }
    if (odd) {   // the last k alone: its pair's second half is zero in B, and here in A
      const __m512i av = _mm512_set1_epi32((int)ar[g.K - 1]);
      c0 = _mm512_dpbf16_ps(c0, (__m512bh)av, (__m512bh)_mm512_loadu_si512(bp));
      c1 = _mm512_dpbf16_ps(c1, (__m512bh)av, (__m512bh)_mm512_loadu_si512(bp + GEMM_NR));
    }
    _mm512_storeu_ps(buf + r * 32, c0);
    _mm512_storeu_ps(buf + r * 32 + 16, c1);
  }
  // (buf holds each row's two vectors side by side: 32 floats a row) four rows at a time
  auto epilogue = [&](int r0, auto rr) INLINE_LAMBDA {
    constexpr int R = decltype(rr)::value;
    vf c0[R], c1[R];
    for (int i = 0; i < R; ++i) c0[i] = loadf(buf + (r0 + i) * 32), c1[i] = loadf(buf + (r0 + i) * 32 + 16);
    gemm_epilogue_tile<bf16, R>(c0, c1, g, m + r0, n0, ncols);
  };
  int r = 0;
  for (; r + 4 <= rows; r += 4) epilogue(r, std::integral_constant<int, 4>{});
  for (; r < rows; ++r) epilogue(r, std::integral_constant<int, 1>{});
}

void gemm_unit_amx(const GemmArgs& g, const uint16_t* a, const uint16_t* packed, int64_t m0,
                                      int64_t m1, int64_t p0, int64_t p1) {
  const int64_t panel_halves = gemm_bf16_pairs(g.ldb ? g.ldb : g.K) * 2 * GEMM_NR;
  const bool whole = g.ldb == 0 || g.ldb == g.K;     // zeros past K in B
  const int64_t kpad = (g.K + 31) / 32 * 32;
  const int64_t blocks = whole ? kpad / 32 : g.K / 32;
  alignas(64) float buf[AMX_MR * GEMM_NR];
  std::vector<uint16_t> copy;
  amx_configure();
  for (int64_t m = m0; m < m1; m += AMX_MR) {
    const int rows = (int)std::min<int64_t>(AMX_MR, m1 - m);
    const uint16_t* rows_a = a + m * g.lda;
    int64_t lda = g.lda;
    if (rows < AMX_MR || (whole && kpad != g.K && !g.a_padded)) {
      copy.assign(AMX_MR * kpad, 0);
      for (int r = 0; r < rows; ++r) std::memcpy(copy.data() + r * kpad, rows_a + r * g.lda, g.K * 2);
      rows_a = copy.data(), lda = kpad;
    }
    for (int64_t p = p0; p < p1; ++p)
      gemm_block_amx(g, rows_a, lda, blocks, packed + p * panel_halves, m, rows, p * GEMM_NR,
                     (int)std::min<int64_t>(GEMM_NR, g.N - p * GEMM_NR), buf);
  }
  _tile_release();
}

void gemm_bf16_amx(const GemmArgs& g, const void* packed) {
  if (g.M < AMX_MIN_M) return gemm_bf16(g, packed);
  const uint16_t* b = static_cast<const uint16_t*>(packed);
  gemm_schedule(g, 2, 2, [&](int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
    gemm_unit_amx(g, static_cast<const uint16_t*>(g.a), b, m0, m1, p0, p1);
  }, AMX_MR);
}
#endif
