// Native NHWC depthwise convolution for CPU: forward (optionally fused with ReLU), input
// gradient and weight gradient (separately, or in one pass over dy), a C++ autograd function
// for training, and the Winograd forward kernels (row-wise F(2,3), 2-D F(2x2) and F(4x4));
// float32 and bfloat16 (accumulation always in float32).
//
// Layout: activations are channels_last tensors (data is N, H, W, C); the weight is passed
// as float32 (kh, kw, C) so that one tap of 16 channels is one contiguous vector load.
// Vectorisation is over channels with GCC vector extensions: 16 floats is one AVX-512
// register, and on an AVX2-only build the compiler splits it into two. Work is split over
// output rows with at::parallel_for, so torch.set_num_threads governs it.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace {

constexpr int VL = 16;
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef uint32_t vu __attribute__((vector_size(VL * sizeof(uint32_t))));
typedef uint16_t vh __attribute__((vector_size(VL * sizeof(uint16_t))));

inline vf loadf(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void storef(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

template <typename T> struct IO;
template <> struct IO<float> {
  static vf load(const float* p) { return loadf(p); }
  static void store(float* p, vf v) { storef(p, v); }
  static float get(const float* p) { return *p; }
  static void put(float* p, float v) { *p = v; }
};
template <> struct IO<c10::BFloat16> {
  static vf load(const c10::BFloat16* p) {
    vh h; std::memcpy(&h, p, sizeof h);
    vu u = __builtin_convertvector(h, vu) << 16;
    vf f; std::memcpy(&f, &u, sizeof f); return f;
  }
  static void store(c10::BFloat16* p, vf v) {
    vu u; std::memcpy(&u, &v, sizeof u);
    vu nan = (u & 0x7fffffffu) > 0x7f800000u;               // lanes that are NaN
    vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;    // round to nearest even
    vu result = (nan & 0x7fc0u) | (~nan & rounded);
    vh h = __builtin_convertvector(result, vh); std::memcpy(p, &h, sizeof h);
  }
  static float get(const c10::BFloat16* p) { return static_cast<float>(*p); }
  static void put(c10::BFloat16* p, float v) { *p = c10::BFloat16(v); }
};

struct Geometry {
  int64_t N, H, W, C, OH, OW;
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

// Non-temporal store where possible: the output is not read again by this kernel, and
// skipping the read-for-ownership saves a third of the memory traffic of large layers.
// Used only for outputs larger than NT_BYTES, the two cores' L2: a smaller output is better
// left in cache for the next layer to read. (At 4 MiB, 64x112x112 at batch 1, a 3.2 MB output,
// measured 0.66-0.86x of 2 MiB.)
constexpr int64_t NT_BYTES = 2 << 20;
// Software prefetch of the next rows pays only for inputs that come from DRAM: measured
// 1.2-1.4x on 64x112x112 at batch 8 (25 MB), and 0.9-0.95x on inputs that stay in cache.
constexpr int64_t PREFETCH_BYTES = 8 << 20;
// Bytes of transposed inference weights kept at most, sources included (weight_hwc_cached):
// MobileNetV1's 13 depthwise layers take 0.4 MB.
constexpr size_t WEIGHT_CACHE_BYTES = 16 << 20;
// Inputs from which training takes the one-pass backward (see backward()).
constexpr int64_t ONE_PASS_BYTES = 4 << 20;
inline void prefetch_row(const void* p, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(static_cast<const char*>(p) + off, 0, 1);
}

// Output columns per register block of the weight gradient: KH*KW accumulators, OB dy
// vectors and one row of inputs must fit in 32 registers (5x5 has no room for blocks).
constexpr int dw_ob(int taps) { return taps <= 9 ? 4 : 1; }

template <typename T> inline void stream_store(T* p, vf v, bool nt) { IO<T>::store(p, v); }
#ifdef __AVX512F__
template <> inline void stream_store(float* p, vf v, bool nt) {
  if (nt && reinterpret_cast<uintptr_t>(p) % 64 == 0) _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
  else storef(p, v);
}
#endif
// After a kernel's streamed stores (nt): they must be visible before the pool reports completion.
inline void fence_streams(bool nt) {
#ifdef __AVX512F__
  if (nt) _mm_sfence();
#endif
}

// Vector load/store of the first `lanes` channels (lanes < VL only at the channel tail).
template <typename T> inline __attribute__((always_inline)) vf load_lanes(const T* p, int lanes) {
  if (lanes == VL) return IO<T>::load(p);
  float tmp[VL] = {};
  for (int l = 0; l < lanes; ++l) tmp[l] = IO<T>::get(p + l);
  return loadf(tmp);
}
template <typename T> inline __attribute__((always_inline)) void store_lanes(T* p, vf v, int lanes) {
  if (lanes == VL) return IO<T>::store(p, v);
  float tmp[VL];
  storef(tmp, v);
  for (int l = 0; l < lanes; ++l) IO<T>::put(p + l, tmp[l]);
}

// First and one-past-last output column whose kw taps all fall inside the input row.
inline void interior(const Geometry& g, int& lo, int& hi) {
  lo = 0;
  while (lo < g.OW && lo * g.sw - g.pw < 0) ++lo;
  hi = g.OW;
  while (hi > lo && (hi - 1) * g.sw - g.pw + (g.kw - 1) * g.dw >= g.W) --hi;
}

// Forward accumulation of a register block: R output rows (1 or 2) x OB outputs. The
// KH + (R - 1) * S input rows it reads are loaded once for all its rows (output row k reads
// input row i + k * S for kernel row i; no dilation along rows). x(r, q) loads input row r at
// block column q, counted from the block's first tap; row_ok(r) says input row r is inside.
template <int KH, int KW, int S, int DW, int OB, int R, typename X, typename OK>
inline __attribute__((always_inline)) void fwd_accumulate(vf (&acc)[R][OB], const vf* wv, X x, OK row_ok) {
  constexpr int NX = (OB - 1) * S + (KW - 1) * DW + 1;
#pragma GCC unroll 7
  for (int r = 0; r < KH + (R - 1) * S; ++r) {
    if (!row_ok(r)) continue;
    vf xv[NX];
#pragma GCC unroll 32
    for (int q = 0; q < NX; ++q) xv[q] = x(r, q);
#pragma GCC unroll 2
    for (int k = 0; k < R; ++k) {
      const int i = r - k * S;
      if (i < 0 || i >= KH) continue;
#pragma GCC unroll 5
      for (int j = 0; j < KW; ++j)
#pragma GCC unroll 8
        for (int o = 0; o < OB; ++o) acc[k][o] += xv[o * S + j * DW] * wv[i * KW + j];
    }
  }
}

// Forward by rows. Output rows are split over threads. With a compile-time kernel (KH, KW,
// SW, DW > 0), channel blocks of 16 are the outer loop of a row so that one block's KH*KW
// weight vectors stay in registers across it, and register blocks of OB outputs, sharing
// every input vector they read, cover the whole row (blocks touching the padding test the
// columns they load). Otherwise (the generic loop), pixel-major order: all channels of a
// pixel, four channel blocks at a time, a bounds check per tap.
// (A variant that first copies input rows into a zero-padded, channel-block-major ring
// buffer, as MNN does, measured 0.6-0.9x of this one on MobileNet's stride-1 layers at
// batch 1, and 0.4x at stride 2, because of the extra copy.)
// Output rows [begin, end) (counted over N * OH) of forward_kernel.
template <typename T, int KH, int KW, int SW, int DW>
void forward_rows(const T* x, const float* w, const float* b, T* y, const Geometry& g, bool relu,
                  int64_t begin, int64_t end) {
  const int kh = KH ? KH : g.kh, kw = KW ? KW : g.kw;
  int lo, hi;
  interior(g, lo, hi);
  const bool nt = g.N * g.OH * g.OW * g.C * (int64_t)sizeof(T) > NT_BYTES;
  const bool prefetch = g.N * g.H * g.W * g.C * (int64_t)sizeof(T) > PREFETCH_BYTES;
  constexpr int OB = KH * KW <= 9 ? 8 : 4;
  const bool pixel_major = KH == 0;
  for (int64_t row = begin, step = 1; row < end; row += step) {
    const int64_t n = row / g.OH, oh = row % g.OH;
    const T* xn = x + n * g.H * g.W * g.C;
    T* yr = y + row * g.OW * g.C;
    const int ih0 = oh * g.sh - g.ph;
    // Two output rows at once: they share KH - SW of their KH + SW input rows, so each
    // input vector loaded there feeds both (measured 1.02-1.25x at stride 1 and 1.0-1.3x
    // at stride 2 on MobileNet's layers). Only with full channel blocks and rows of 4+
    // outputs: the per-pixel fallback does one row.
    const bool two = KH > 0 && row + 1 < end && oh + 1 < g.OH && g.C % VL == 0 && g.OW >= 4;
    step = two ? 2 : 1;
    if (prefetch && !(two && KH > 0)) {
      // The next step (of `step` output rows) needs step * sh new input rows: ask for them
      // now, so the DRAM latency overlaps this step's arithmetic (inputs at batch 8 exceed
      // the caches). Two-row blocks ask for them block by block instead (below).
      for (int r = 0; r < step * g.sh; ++r) {
        const int ih = ih0 + (step - 1) * g.sh + (kh - 1) * g.dh + 1 + r;
        if (ih < 0 || ih >= g.H) continue;
        prefetch_row(xn + ih * g.W * g.C, g.W * g.C * sizeof(T));
      }
    }
    auto pixel = [&](int ow, int64_t cb, int lanes, bool check) __attribute__((always_inline)) {
      const int iw0 = ow * g.sw - g.pw;
      auto ld = [lanes](const auto* p) __attribute__((always_inline)) { return lanes == VL ? IO<std::remove_cv_t<std::remove_pointer_t<decltype(p)>>>::load(p) : load_lanes(p, lanes); };
      // Two accumulators (even and odd kernel rows), named rather than an indexed array: a
      // runtime-indexed array lives on the stack and turns every FMA into a load-FMA-store
      // chain (measured 3x slower).
      vf acc0 = b ? ld(b + cb) : vf{}, acc1{};
      for (int i = 0; i < kh; ++i) {
        const int ih = ih0 + i * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        const T* xr = xn + ih * g.W * g.C + cb;
        const float* wr = w + i * kw * g.C + cb;
        vf row{};
        for (int j = 0; j < kw; ++j) {
          const int iw = iw0 + j * g.dw;
          if (check && (iw < 0 || iw >= g.W)) continue;
          row += ld(xr + iw * g.C) * ld(wr + j * g.C);
        }
        if (i & 1) acc1 += row; else acc0 += row;
      }
      vf acc = acc0 + acc1;
      if (relu) acc = acc > 0 ? acc : vf{};
      store_lanes(yr + ow * g.C + cb, acc, lanes);
    };
    if (pixel_major) {
      // Four channel blocks at a time: four independent FMA chains, one bounds check per tap.
      constexpr int NV = 4;
      const int64_t c4 = g.C / (NV * VL) * (NV * VL);
      for (int ow = 0; ow < g.OW; ++ow) {
        const int iw0 = ow * g.sw - g.pw;
        for (int64_t cb = 0; cb < c4; cb += NV * VL) {
          vf acc[NV];
          for (int v = 0; v < NV; ++v) acc[v] = b ? loadf(b + cb + v * VL) : vf{};
          for (int i = 0; i < kh; ++i) {
            const int ih = ih0 + i * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            const T* xr = xn + ih * g.W * g.C + cb;
            const float* wr = w + i * kw * g.C + cb;
            for (int j = 0; j < kw; ++j) {
              const int iw = iw0 + j * g.dw;
              if (iw < 0 || iw >= g.W) continue;
              for (int v = 0; v < NV; ++v)
                acc[v] += IO<T>::load(xr + iw * g.C + v * VL) * loadf(wr + j * g.C + v * VL);
            }
          }
          for (int v = 0; v < NV; ++v) {
            if (relu) acc[v] = acc[v] > 0 ? acc[v] : vf{};
            stream_store(yr + ow * g.C + cb + v * VL, acc[v], nt);
          }
        }
        for (int64_t cb = c4; cb < g.C; cb += VL)
          pixel(ow, cb, (int)std::min<int64_t>(VL, g.C - cb), ow < lo || ow >= hi);
      }
      continue;
    }
    for (int64_t cb = 0; cb < g.C; cb += VL) {
      const int lanes = (int)std::min<int64_t>(VL, g.C - cb);
      if constexpr (KH > 0) {
        if (lanes == VL && g.OW >= 4) {
          vf wv[KH * KW];
#pragma GCC unroll 25
          for (int t = 0; t < KH * KW; ++t) wv[t] = loadf(w + t * g.C + cb);
          const vf bv = b ? loadf(b + cb) : vf{};
          // Blocks of R rows (1 or 2) x OBK outputs cover the row, the last one narrower, so
          // that no output takes the per-pixel path. Blocks touching the padding test each
          // input column they load.
          // The KH + (R - 1) * SW input rows of a block are loaded once for all its rows
          // (this path has no dilation: output row k reads input row i + k * SW).
          auto block = [&](int ow, auto edge, auto ob, auto rr) __attribute__((always_inline)) {
            constexpr int OBK = decltype(ob)::value, R = decltype(rr)::value;
            vf acc[R][OBK];
#pragma GCC unroll 8
            for (int o = 0; o < OBK; ++o)
              for (int k = 0; k < R; ++k) acc[k][o] = bv;
            const int iw0 = ow * SW - g.pw;
            const T* base = xn + ((int64_t)ih0 * g.W + iw0) * g.C + cb;   // (row ih0, column iw0)
            const int64_t row_step = g.W * g.C;
            if (R == 2 && prefetch) {
              // The next step's new input rows under this block: spread over the blocks,
              // the misses overlap the arithmetic instead of queueing at the start of the
              // step (measured 1.03-1.5x forward and 1.0-1.19x per training step on the
              // 13-26 MB batch-8 layers, against whole rows asked for at once).
#pragma GCC unroll 4
              for (int r = KH + SW; r < KH + 3 * SW; ++r)
                if (ih0 + r < g.H)
#pragma GCC unroll 8
                  for (int q = 0; q < OBK * SW; ++q)
                    if (!decltype(edge)::value || (iw0 + q >= 0 && iw0 + q < g.W))
                      __builtin_prefetch(base + r * row_step + q * g.C, 0, 1);
            }
            fwd_accumulate<KH, KW, SW, DW, OBK, R>(
                acc, wv,
                [&](int r, int q) {
                  const bool in = !decltype(edge)::value || (iw0 + q >= 0 && iw0 + q < g.W);
                  return in ? IO<T>::load(base + r * row_step + q * g.C) : vf{};
                },
                [&](int r) { return ih0 + r >= 0 && ih0 + r < g.H; });
#pragma GCC unroll 8
            for (int o = 0; o < OBK; ++o)
              for (int k = 0; k < R; ++k) {
                if (relu) acc[k][o] = acc[k][o] > 0 ? acc[k][o] : vf{};
                stream_store(yr + (k * g.OW + ow + o) * g.C + cb, acc[k][o], nt);
              }
          };
          using Four = std::integral_constant<int, 4>;
          auto at = [&](int o, auto ob, auto rr) __attribute__((always_inline)) {
            if (o >= lo && o + decltype(ob)::value <= hi) block(o, std::false_type{}, ob, rr);
            else block(o, std::true_type{}, ob, rr);
          };
          // Full blocks, then the last 1-3 outputs (after one block of 4 where blocks are 8)
          // as one narrower block: measured 1.02-1.20x on 7- and 14-wide rows over shifting
          // the last full block left to end at OW, which recomputed up to 3 (7) outputs.
          auto row = [&](auto ob, auto rr) __attribute__((always_inline)) {
            constexpr int OBK = decltype(ob)::value;
            int ow = 0;
            for (; ow + OBK <= g.OW; ow += OBK) at(ow, ob, rr);
            if constexpr (OBK == 8)
              if (ow + 4 <= g.OW) { at(ow, Four{}, rr); ow += 4; }
            switch (g.OW - ow) {
              case 1: at(ow, std::integral_constant<int, 1>{}, rr); break;
              case 2: at(ow, std::integral_constant<int, 2>{}, rr); break;
              case 3: at(ow, std::integral_constant<int, 3>{}, rr); break;
            }
          };
          // Two rows take blocks of 4 (2 x 4 accumulators, KH*KW weights and one input row
          // in registers; blocks of 8 spilled and measured no faster than one row). Rows
          // shorter than a full block (7x7 maps) take half blocks.
          if (two) row(Four{}, std::integral_constant<int, 2>{});
          else if (g.OW >= OB) row(std::integral_constant<int, OB>{}, std::integral_constant<int, 1>{});
          else row(Four{}, std::integral_constant<int, 1>{});
          continue;
        }
      }
      for (int ow = 0; ow < g.OW; ++ow) pixel(ow, cb, lanes, ow < lo || ow >= hi);
    }
  }
  fence_streams(nt);
}

template <typename T, int KH, int KW, int SW, int DW>
void forward_kernel(const T* x, const float* w, const float* b, T* y, Geometry g, bool relu) {
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
    forward_rows<T, KH, KW, SW, DW>(x, w, b, y, g, relu, begin, end);
  });
}

// The kernel size the specialised kernels are compiled for (3 or 5), or 0 for the generic
// loop: square 3x3 or 5x5, no dilation, equal strides of 1 or 2 (MobileNet-style layers).
inline int specialised_k(const Geometry& g) {
  return g.kh == g.kw && (g.kh == 3 || g.kh == 5) && g.dh == 1 && g.dw == 1 && g.sh == g.sw && g.sh <= 2 ? g.kh : 0;
}

// Row-wise Winograd F(2,3) for 3x3, stride 1, dilation 1 (inference). For each output row
// and pair of outputs, each of the three input rows contributes (B^T d) * U_r, with
// U_r = G g_r precomputed per channel (passed in as float32 (3, 4, C)); the pair is A^T of
// the sum: 12 multiplies per 2 outputs instead of 18. B^T and A^T are the F(2,3) matrices of
// sepconv.functional.winograd.transforms(2) (points 0, 1, -1); winograd_constants(2)
// returns them so a test can hold the two in step.
constexpr float BT23[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, -1, 0, 1}};
constexpr float AT23[2][4] = {{1, 1, 1, 0}, {0, 1, -1, 1}};

template <typename T>
void winograd_rows_kernel(const T* x, const float* u, const float* b, T* y, Geometry g, bool relu) {
  const int64_t tiles = (g.OW + 1) / 2;
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.OH, oh = row % g.OH;
      const T* xn = x + n * g.H * g.W * g.C;
      T* yr = y + row * g.OW * g.C;
      for (int64_t cb = 0; cb < g.C; cb += VL) {
        const int lanes = (int)std::min<int64_t>(VL, g.C - cb);
        vf uv[3][4];
        for (int r = 0; r < 3; ++r)
          for (int j = 0; j < 4; ++j) uv[r][j] = load_lanes(u + (r * 4 + j) * g.C + cb, lanes);
        const vf bv = b ? load_lanes(b + cb, lanes) : vf{};
        for (int64_t t = 0; t < tiles; ++t) {
          const int64_t iw0 = 2 * t - g.pw;
          const bool inside = iw0 >= 0 && iw0 + 3 < g.W;
          vf m0{}, m1{}, m2{}, m3{};
          for (int r = 0; r < 3; ++r) {
            const int64_t ih = oh - g.ph + r;
            if (ih < 0 || ih >= g.H) continue;
            const T* xr = xn + ih * g.W * g.C + cb;
            vf d[4];
            for (int q = 0; q < 4; ++q) {
              const int64_t iw = iw0 + q;
              d[q] = (inside || (iw >= 0 && iw < g.W)) ? load_lanes(xr + iw * g.C, lanes) : vf{};
            }
            m0 += (d[0] - d[2]) * uv[r][0];   // B^T rows, as BT23
            m1 += (d[1] + d[2]) * uv[r][1];
            m2 += (d[2] - d[1]) * uv[r][2];
            m3 += (d[3] - d[1]) * uv[r][3];
          }
          vf y0 = bv + m0 + m1 + m2, y1 = bv + m1 - m2 + m3;   // A^T, as AT23
          if (relu) { y0 = y0 > 0 ? y0 : vf{}; y1 = y1 > 0 ? y1 : vf{}; }
          store_lanes(yr + (2 * t) * g.C + cb, y0, lanes);
          if (2 * t + 1 < g.OW) store_lanes(yr + (2 * t + 1) * g.C + cb, y1, lanes);
        }
      }
    }
  });
}

// F(4,3) with points {0, 1, -1, 2, -1/2}, as transforms(4) (every entry is exact in float).
constexpr float BT43[6][6] = {{1, 1.5f, -2, -1.5f, 1, 0}, {0, 1, 2.5f, 0.5f, -1, 0},
                              {0, 1, 0.5f, -2.5f, 1, 0},  {0, -0.5f, -1, 0.5f, 1, 0},
                              {0, -2, 1, 2, -1, 0},       {0, 1, 1.5f, -2, -1.5f, 1}};
constexpr float AT43[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -0.5f, 0},
                              {0, 1, 1, 4, 0.25f, 0}, {0, 1, -1, 8, -0.125f, 1}};
template <int M> struct WinogradTables;
template <> struct WinogradTables<2> { static constexpr auto& BT = BT23; static constexpr auto& AT = AT23; };
template <> struct WinogradTables<4> { static constexpr auto& BT = BT43; static constexpr auto& AT = AT43; };

// out[i * os] = sum_j A[i][j] * in[j * is] for a compile-time matrix: once unrolled, zero
// entries vanish and +-1 entries become additions and subtractions.
template <int R, int K>
inline __attribute__((always_inline)) void apply_matrix(const float (&A)[R][K], const vf* in, int is, vf* out, int os) {
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    vf sum{};
    bool first = true;
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      const float a = A[i][j];
      if (a == 0) continue;
      const vf t = a == 1 ? in[j * is] : a == -1 ? -in[j * is] : a * in[j * is];
      sum = first ? t : sum + t;
      first = false;
    }
    out[i * os] = sum;
  }
}

// 2-D Winograd F(MxM,3x3) for 3x3, stride 1, dilation 1 (inference), M = 2 or 4: each
// (M+2)^2 input tile d becomes V = B^T d B, is multiplied element-wise by U = G g G^T
// (precomputed per channel, passed in as float32 (M+2, M+2, C)) and gives the MxM outputs
// A^T (U * V) A: (M+2)^2 multiplies per M^2 outputs instead of 9 M^2 (16 per 4, 36 per 16),
// at the price of the transforms' additions. Threads split the rows of tiles.
template <typename T, int M>
void winograd2d_kernel(const T* x, const float* u, const float* b, T* y, Geometry g, bool relu) {
  constexpr int N = M + 2;
  constexpr auto& BT = WinogradTables<M>::BT;
  constexpr auto& AT = WinogradTables<M>::AT;
  const int64_t trows = (g.OH + M - 1) / M, tcols = (g.OW + M - 1) / M;
  at::parallel_for(0, g.N * trows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / trows, oh = job % trows * M;
      const T* xn = x + n * g.H * g.W * g.C;
      T* yn = y + n * g.OH * g.OW * g.C;
      for (int64_t cb = 0; cb < g.C; cb += VL) {
        const int lanes = (int)std::min<int64_t>(VL, g.C - cb);
        const vf bv = b ? load_lanes(b + cb, lanes) : vf{};
        for (int64_t tc = 0; tc < tcols; ++tc) {
          const int64_t ow = tc * M, ih0 = oh - g.ph, iw0 = ow - g.pw;
          const bool inside = ih0 >= 0 && ih0 + N <= g.H && iw0 >= 0 && iw0 + N <= g.W && lanes == VL;
          vf t[N][N];                               // d B: B^T along each input row
#pragma GCC unroll 8
          for (int r = 0; r < N; ++r) {
            vf d[N];
#pragma GCC unroll 8
            for (int c = 0; c < N; ++c) {
              const int64_t ih = ih0 + r, iw = iw0 + c;
              const T* p = xn + (ih * g.W + iw) * g.C + cb;
              d[c] = inside ? IO<T>::load(p)
                            : (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? load_lanes(p, lanes) : vf{});
            }
            apply_matrix(BT, d, 1, t[r], 1);
          }
          vf s[M][N];                               // A^T (U * (B^T t)), column by column
#pragma GCC unroll 8
          for (int c = 0; c < N; ++c) {
            vf v[N];
            apply_matrix(BT, &t[0][c], N, v, 1);
#pragma GCC unroll 8
            for (int k = 0; k < N; ++k) v[k] *= load_lanes(u + (k * N + c) * g.C + cb, lanes);
            apply_matrix(AT, v, 1, &s[0][c], N);
          }
#pragma GCC unroll 4
          for (int i = 0; i < M && oh + i < g.OH; ++i) {
            vf out[M];                              // ... A along the second axis
            apply_matrix(AT, s[i], 1, out, 1);
#pragma GCC unroll 4
            for (int j = 0; j < M && ow + j < g.OW; ++j) {
              vf v = out[j] + bv;
              if (relu) v = v > 0 ? v : vf{};
              store_lanes(yn + ((oh + i) * g.OW + ow + j) * g.C + cb, v, lanes);
            }
          }
        }
      }
    }
  });
}

// dx[n, ih, iw, c] = sum over taps (i, j) with ih + ph - i*dh = oh*sh, iw + pw - j*dw = ow*sw
// of dy[n, oh, ow, c] * w[i, j, c]: a gather, so rows are independent and need no atomics.
// Input-gradient accumulation for channels [c_begin, c_end) of one input pixel, NV vectors
// at a time, over the listed contributing taps (rows: i, oh; columns: j, ow).
template <typename T, int NV>
inline void gather_blocks(const T* dyn, const float* w, T* dx_pixel, const Geometry& g, int64_t c_begin,
                          int64_t c_end, int rows_n, const int* row_i, const int* row_oh, int cols_n,
                          const int* cj, const int* cow, bool nt) {
  for (int64_t cb = c_begin; cb < c_end; cb += NV * VL) {
    vf acc[NV] = {};
    for (int r = 0; r < rows_n; ++r) {
      const T* dyr = dyn + row_oh[r] * g.OW * g.C + cb;
      const float* wr = w + row_i[r] * g.kw * g.C + cb;
      for (int q = 0; q < cols_n; ++q)
        for (int v = 0; v < NV; ++v)
          acc[v] += IO<T>::load(dyr + cow[q] * g.C + v * VL) * loadf(wr + cj[q] * g.C + v * VL);
    }
    for (int v = 0; v < NV; ++v) stream_store(dx_pixel + cb + v * VL, acc[v], nt);
  }
}

// The taps that reach input column iw (and their output column) depend on iw only: listed
// once, so the inner loop has no divisions and visits only contributing taps (about
// (kh/sh) * (kw/sw) of them, a quarter of 3x3 at stride 2).
struct GatherColumns {
  std::vector<int> n, j, ow;
  explicit GatherColumns(const Geometry& g) : n(g.W, 0), j(g.W * g.kw), ow(g.W * g.kw) {
    for (int iw = 0; iw < g.W; ++iw)
      for (int jj = 0; jj < g.kw; ++jj) {
        const int numw = iw + g.pw - jj * g.dw;
        if (numw < 0 || numw % g.sw || numw / g.sw >= g.OW) continue;
        j[iw * g.kw + n[iw]] = jj;
        ow[iw * g.kw + n[iw]++] = numw / g.sw;
      }
  }
};

// Input rows [begin, end) (counted over N * H) of the input gradient.
template <typename T>
void grad_input_rows(const T* dy, const float* w, T* dx, const Geometry& g, const GatherColumns& cols,
                     int64_t begin, int64_t end) {
  const std::vector<int>&col_n = cols.n, &col_j = cols.j, &col_ow = cols.ow;
  const bool pairs = g.kh == 3 && g.kw == 3 && g.sw == 2 && g.dw == 1 && g.C % VL == 0;
  // Streamed stores for a large dx, as the forward's output (measured 1.26-1.46x per training
  // step at stride 2 on MobileNet's batch-8 layers, 1.07-1.18x on 64x112x112 at batch 1).
  const bool nt = g.N * g.H * g.W * g.C * (int64_t)sizeof(T) > NT_BYTES;
  std::vector<int> row_i(g.kh), row_oh(g.kh);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / g.H, ih = row % g.H;
    const T* dyn = dy + n * g.OH * g.OW * g.C;
    T* dxr = dx + row * g.W * g.C;
    int rows_n = 0;
    for (int i = 0; i < g.kh; ++i) {
      const int num = ih + g.ph - i * g.dh;
      if (num < 0 || num % g.sh || num / g.sh >= g.OH) continue;
      row_i[rows_n] = i;
      row_oh[rows_n++] = num / g.sh;
    }
    auto pixel = [&](int iw) {
      const int* cj = col_j.data() + iw * g.kw;
      const int* cow = col_ow.data() + iw * g.kw;
      // NV channel blocks at a time (4, then 2): independent FMA chains hide FMA latency
      int64_t c4 = g.C / (4 * VL) * (4 * VL);
      gather_blocks<T, 4>(dyn, w, dxr + iw * g.C, g, 0, c4, rows_n, row_i.data(), row_oh.data(), col_n[iw], cj, cow, nt);
      const int64_t c2 = c4 + (g.C - c4) / (2 * VL) * (2 * VL);
      gather_blocks<T, 2>(dyn, w, dxr + iw * g.C, g, c4, c2, rows_n, row_i.data(), row_oh.data(), col_n[iw], cj, cow, nt);
      c4 = c2;
      for (int64_t cb = c4; cb < g.C; cb += VL) {
        const int lanes = (int)std::min<int64_t>(VL, g.C - cb);
        vf acc{};
        for (int r = 0; r < rows_n; ++r) {
          const T* dyr = dyn + row_oh[r] * g.OW * g.C + cb;
          const float* wr = w + row_i[r] * g.kw * g.C + cb;
          for (int q = 0; q < col_n[iw]; ++q)
            acc += load_lanes(dyr + cow[q] * g.C, lanes) * load_lanes(wr + cj[q] * g.C, lanes);
        }
        store_lanes(dxr + iw * g.C + cb, acc, lanes);
      }
    };
    int iw = 0;
    if (pairs) {
      // 3x3 at stride 2: an input column (iw + pw even) takes taps j = 0 and 2 from output
      // columns e = (iw + pw) / 2 and e - 1, and the next column takes tap j = 1 from e. So
      // OB such column pairs need OB + 1 dy vectors per kernel row for 3 * OB FMAs.
      while (iw < g.W && ((iw + g.pw) % 2 != 0 || (iw + g.pw) / 2 < 1)) pixel(iw++);
      const int e0 = (iw + g.pw) / 2;
      const int npairs = std::max(0, std::min((int)(g.W - iw) / 2, (int)g.OW - e0));
      const int wide = npairs / 4 * 4;
      for (int64_t cb = 0; cb < g.C; cb += VL) {
        vf wv[3][3];
        for (int r = 0; r < rows_n; ++r)
          for (int j = 0; j < 3; ++j) wv[r][j] = loadf(w + (row_i[r] * 3 + j) * g.C + cb);
        auto pair_blocks = [&](auto ob, int pb, int pb_end) __attribute__((always_inline)) {
          constexpr int OB = decltype(ob)::value;
          for (; pb < pb_end; pb += OB) {
            vf even[OB] = {}, odd[OB] = {};
            for (int r = 0; r < rows_n; ++r) {
              const T* dyr = dyn + (row_oh[r] * g.OW + e0 + pb - 1) * g.C + cb;
              vf d[OB + 1];
#pragma GCC unroll 8
              for (int q = 0; q <= OB; ++q) d[q] = IO<T>::load(dyr + q * g.C);
#pragma GCC unroll 8
              for (int o = 0; o < OB; ++o) {
                even[o] += d[o + 1] * wv[r][0] + d[o] * wv[r][2];
                odd[o] += d[o + 1] * wv[r][1];
              }
            }
            T* out = dxr + (iw + 2 * pb) * g.C + cb;
#pragma GCC unroll 8
            for (int o = 0; o < OB; ++o) {
              stream_store(out + 2 * o * g.C, even[o], nt);
              stream_store(out + (2 * o + 1) * g.C, odd[o], nt);
            }
          }
        };
        pair_blocks(std::integral_constant<int, 4>{}, 0, wide);
        // then the pairs left over, one at a time (rather than by the per-pixel path: the input
        // gradient at stride 2 measured 1.05-1.24x faster on MobileNet's layers)
        pair_blocks(std::integral_constant<int, 1>{}, wide, npairs);
      }
      iw += 2 * npairs;
    }
    for (; iw < g.W; ++iw) pixel(iw);
  }
  fence_streams(nt);
}

template <typename T>
void grad_input_kernel(const T* dy, const float* w, T* dx, Geometry g) {
  const GatherColumns cols(g);
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
    grad_input_rows(dy, w, dx, g, cols, begin, end);
  });
}

// (kh*kw + 1, C) accumulators (the last row is the bias gradient) -> dw as (C, 1, kh, kw),
// the layout of the weight, and db (C,) when asked for.
inline void store_grads(const float* acc, float* dw, float* db, const Geometry& g) {
  const int64_t taps = g.kh * g.kw;
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t t = 0; t < taps; ++t) dw[c * taps + t] = acc[t * g.C + c];
  if (db) std::copy(acc + taps * g.C, acc + (taps + 1) * g.C, db);
}

// `parts` per-thread accumulator buffers, laid out one after another: summed into the first,
// then stored as dw and db.
inline void store_partials(std::vector<float>& partial, int64_t parts, float* dw, float* db, const Geometry& g) {
  const int64_t size = (g.kh * g.kw + 1) * g.C;
  for (int64_t p = 1; p < parts; ++p)
    for (int64_t k = 0; k < size; ++k) partial[k] += partial[p * size + k];
  store_grads(partial.data(), dw, db, g);
}

// Weight-gradient accumulation over OB consecutive output columns of R output rows (1 or
// 2): each input vector loaded is used by every tap that reads it, in both rows, so a block
// needs R * OB + (KH + (R - 1) * S) * NX loads for R * OB * KH * KW FMAs, not 1 + KH * KW
// loads per output. dy(k, o) loads row k's dy at block column o; x(r, q) loads input row r
// (output row k reads input row i + k * S for kernel row i) at block column q (counted from
// the block's first tap); row_ok(r) says input row r is inside the image.
template <int KH, int KW, int S, int OB, int R, typename DY, typename X, typename OK>
inline __attribute__((always_inline)) void dw_accumulate(vf* acc, vf& sum, DY dy, X x, OK row_ok) {
  constexpr int NX = (OB - 1) * S + KW;
  vf d[R][OB];
#pragma GCC unroll 8
  for (int o = 0; o < OB; ++o)
    for (int k = 0; k < R; ++k) { d[k][o] = dy(k, o); sum += d[k][o]; }
#pragma GCC unroll 7
  for (int r = 0; r < KH + (R - 1) * S; ++r) {
    if (!row_ok(r)) continue;
    vf xv[NX];
#pragma GCC unroll 16
    for (int q = 0; q < NX; ++q) xv[q] = x(r, q);
#pragma GCC unroll 2
    for (int k = 0; k < R; ++k) {
      const int i = r - k * S;
      if (i < 0 || i >= KH) continue;
#pragma GCC unroll 5
      for (int j = 0; j < KW; ++j)
#pragma GCC unroll 8
        for (int o = 0; o < OB; ++o) acc[i * KW + j] += d[k][o] * xv[o * S + j];
    }
  }
}

// Weight-gradient accumulation of output rows [row_begin, row_end) (counted over N * OH)
// for the channel block at cb, added into acc_out: (kh*kw + 1, C), the last row being the bias
// gradient (the per-channel sum of dy).
template <typename T, int KH, int KW>
void grad_weight_rows(const T* x, const T* dy, const Geometry& g, int64_t row_begin, int64_t row_end, int64_t cb,
                      float* acc_out, bool prefetch_next = false) {
  const int64_t taps = g.kh * g.kw + 1;
  int lo, hi;
  interior(g, lo, hi);
  const int lanes = (int)std::min<int64_t>(VL, g.C - cb);
  auto add_to = [&](float* a, vf v) {
    float tmp[VL];
    storef(tmp, v);
    for (int l = 0; l < lanes; ++l) a[l] += tmp[l];
  };
  if constexpr (KH > 0) {
    if (lanes == VL) {
      vf acc[KH * KW] = {}, sum{};
      // One output row, or two (stride 1 or 2, no dilation) that share their input rows.
      for (int64_t row = row_begin, step = 1; row < row_end; row += step) {
        const int64_t n = row / g.OH, oh = row % g.OH;
        const bool pair = g.dh == 1 && g.dw == 1 && (g.sw == 1 || g.sw == 2) && row + 1 < row_end &&
                          oh + 1 < g.OH && hi > lo;
        step = pair ? 2 : 1;
        const T* xn = x + n * g.H * g.W * g.C;
        const T* dyr = dy + row * g.OW * g.C;
        // input rows r = 0 .. KH (+ sh for a pair) - 1; the second row's kernel row i is r = i + sh
        bool row_ok[KH + 2];
        const T* xr[KH + 2];
        for (int r = 0; r < KH + (pair ? g.sh : 0); ++r) {
          const int ih = oh * g.sh - g.ph + r * g.dh;
          row_ok[r] = ih >= 0 && ih < g.H;
          xr[r] = xn + (row_ok[r] ? ih : 0) * g.W * g.C + cb;
        }
        auto columns = [&](int ow_begin, int ow_end, auto edge, const bool* ok, const T* const* xrp,
                           const T* dyrp) __attribute__((always_inline)) {
          for (int ow = ow_begin; ow < ow_end; ++ow) {
            const vf d = IO<T>::load(dyrp + ow * g.C + cb);
            sum += d;
            const int iw0 = ow * g.sw - g.pw;
#pragma GCC unroll 5
            for (int i = 0; i < KH; ++i) {
              if (!ok[i]) continue;
#pragma GCC unroll 5
              for (int j = 0; j < KW; ++j) {
                const int iw = iw0 + j * g.dw;
                if (decltype(edge)::value && (iw < 0 || iw >= g.W)) continue;
                acc[i * KW + j] += d * IO<T>::load(xrp[i] + iw * g.C);
              }
            }
          }
        };
        // the same column range for each row of the step
        auto each_row = [&](int ow_begin, int ow_end, auto edge) __attribute__((always_inline)) {
          columns(ow_begin, ow_end, edge, row_ok, xr, dyr);
          if (pair) columns(ow_begin, ow_end, edge, row_ok + g.sh, xr + g.sh, dyr + g.OW * g.C);
        };
        each_row(0, std::min(lo, (int)g.OW), std::true_type{});
        int ow = lo;
        if (g.dw == 1 && (g.sw == 1 || g.sw == 2)) {
          auto run_blocks = [&](auto s, auto rr) __attribute__((always_inline)) {
            constexpr int S = decltype(s)::value, R = decltype(rr)::value;
            constexpr int OB = dw_ob(KH * KW);
            const int64_t ih_next = oh * S - g.ph + KH + S;   // the next pair's first new input row
            for (; ow + OB <= hi; ow += OB) {
              if (R == 2 && prefetch_next) {
                // The next pair's dy rows and new input rows under this block, spread over the
                // blocks as in the forward (one-pass backward: measured 1.0-1.3x on its own,
                // most on 64x112x112, against whole input rows asked for per step).
#pragma GCC unroll 2
                for (int k = 2; k < 4; ++k)
                  if (row + k < g.N * g.OH)
#pragma GCC unroll 4
                    for (int o = 0; o < OB; ++o) __builtin_prefetch(dyr + (k * g.OW + ow + o) * g.C + cb, 0, 1);
#pragma GCC unroll 4
                for (int64_t ih = ih_next; ih < std::min<int64_t>(ih_next + 2 * S, g.H); ++ih)
#pragma GCC unroll 8
                  for (int q = 0; q < OB * S; ++q)
                    __builtin_prefetch(xn + (ih * g.W + ow * S - g.pw + q) * g.C + cb, 0, 1);
              }
              dw_accumulate<KH, KW, S, OB, R>(
                  acc, sum, [&](int k, int o) { return IO<T>::load(dyr + (k * g.OW + ow + o) * g.C + cb); },
                  [&](int r, int q) { return IO<T>::load(xr[r] + (ow * S - g.pw + q) * g.C); },
                  [&](int r) { return row_ok[r]; });
            }
          };
          using One = std::integral_constant<int, 1>;
          using Two = std::integral_constant<int, 2>;
          if (g.sw == 1 && pair) run_blocks(One{}, Two{});
          else if (g.sw == 1) run_blocks(One{}, One{});
          else if (pair) run_blocks(Two{}, Two{});
          else run_blocks(Two{}, One{});
        }
        if (hi > ow) each_row(ow, hi, std::false_type{});
        each_row(std::max(hi, lo), g.OW, std::true_type{});
      }
      for (int t = 0; t < KH * KW; ++t) {
        float* a = acc_out + t * g.C + cb;
        storef(a, loadf(a) + acc[t]);
      }
      float* a = acc_out + KH * KW * g.C + cb;
      storef(a, loadf(a) + sum);
      return;
    }
  }
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / g.OH, oh = row % g.OH;
    const T* xn = x + n * g.H * g.W * g.C;
    const T* dyr = dy + row * g.OW * g.C;
    vf sum{};
    for (int ow = 0; ow < g.OW; ++ow) sum += load_lanes(dyr + ow * g.C + cb, lanes);
    add_to(acc_out + (taps - 1) * g.C + cb, sum);
    for (int i = 0; i < g.kh; ++i) {
      const int ih = oh * g.sh - g.ph + i * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      const T* xr = xn + ih * g.W * g.C + cb;
      for (int j = 0; j < g.kw; ++j) {
        vf acc{};
        for (int ow = 0; ow < g.OW; ++ow) {
          const int iw = ow * g.sw - g.pw + j * g.dw;
          if (iw < 0 || iw >= g.W) continue;
          acc += load_lanes(dyr + ow * g.C + cb, lanes) * load_lanes(xr + iw * g.C, lanes);
        }
        add_to(acc_out + (i * g.kw + j) * g.C + cb, acc);
      }
    }
  }
}

// dw[i, j, c] = sum over n, oh, ow of dy[n, oh, ow, c] * x[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c].
// Each thread accumulates a private (kh*kw + 1, C) buffer over its rows (the last row is db,
// the per-channel sum of dy); the buffers are summed. With KH, KW > 0 (compile time) and full
// channel blocks, the accumulators of one block stay in registers over a whole output row,
// each dy vector is loaded once for all taps, and border columns test the input columns they
// load; otherwise a per-tap loop with bounds checks.
template <typename T, int KH, int KW>
void grad_weight_kernel(const T* x, const T* dy, float* dw, float* db, Geometry g) {
  const int64_t taps = g.kh * g.kw + 1, rows = g.N * g.OH, blocks = (g.C + VL - 1) / VL;
  const int64_t threads = at::get_num_threads();
  // By channel blocks when every thread gets one (accumulators stay in registers over all
  // rows, one buffer; measured 1.2x over rows at batch 1); otherwise by rows, with a private
  // buffer per thread, summed.
  const bool by_blocks = blocks >= threads;
  const int64_t parts = by_blocks ? 1 : std::max<int64_t>(1, std::min<int64_t>(threads, rows));
  std::vector<float> partial(parts * taps * g.C, 0.f);
  if (by_blocks) {
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) grad_weight_rows<T, KH, KW>(x, dy, g, 0, rows, blk * VL, partial.data());
    });
  } else {
    at::parallel_for(0, parts, 1, [&](int64_t pb, int64_t pe) {
      for (int64_t p = pb; p < pe; ++p)
        for (int64_t row = rows * p / parts; row < rows * (p + 1) / parts; ++row)
          for (int64_t cb = 0; cb < g.C; cb += VL)
            grad_weight_rows<T, KH, KW>(x, dy, g, row, row + 1, cb, partial.data() + p * taps * g.C);
    });
  }
  store_partials(partial, parts, dw, db, g);
}

// Both gradients in one pass over dy (3x3 or 5x5, stride 1 or 2, no dilation). Each thread
// walks its share of dy's rows two at a time and, per step, accumulates the weight gradient
// from those rows and writes the input-gradient rows they own, while the rows are in cache:
// dy is read from memory once instead of twice. gf is the geometry of the stride-1 input
// gradient as a forward pass over dy (wf: the flipped weight); stride 2 gathers.
template <typename T, int K>
void backward_kernel(const T* x, const T* dy, const float* w, const float* wf, T* dx, float* dw, float* db,
                     Geometry g, Geometry gf) {
  const int64_t taps = K * K + 1, rows = g.N * g.OH;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  std::vector<float> partial(parts * taps * g.C, 0.f);
  const GatherColumns cols(g);
  // dy row oh of an image owns input rows [own(oh), own(oh + 1)): every input row once
  auto own = [&](int64_t q) {
    const int64_t n = q / g.OH, oh = q % g.OH;
    return n * g.H + (oh == 0 ? 0 : std::min<int64_t>(oh * g.sh, g.H));
  };
  at::parallel_for(0, parts, 1, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      float* acc = partial.data() + p * taps * g.C;
      const int64_t end = rows * (p + 1) / parts;
      for (int64_t row = rows * p / parts; row < end; row += 2) {
        const int64_t stop = std::min(row + 2, end);
        for (int64_t cb = 0; cb < g.C; cb += VL) grad_weight_rows<T, K, K>(x, dy, g, row, stop, cb, acc, true);
        const int64_t lo = own(row), hi = stop == rows ? g.N * g.H : own(stop);
        if (g.sh == 1) forward_rows<T, K, K, 1, 1>(dy, wf, nullptr, dx, gf, false, lo, hi);
        else grad_input_rows(dy, w, dx, g, cols, lo, hi);
      }
    }
  });
  store_partials(partial, parts, dw, db, g);
}

Geometry geometry(const at::Tensor& x, int64_t kh, int64_t kw, std::vector<int64_t> s,
                  std::vector<int64_t> p, std::vector<int64_t> d) {
  Geometry g{x.size(0), x.size(2), x.size(3), x.size(1), 0, 0,
             (int)kh, (int)kw, (int)s[0], (int)s[1], (int)p[0], (int)p[1], (int)d[0], (int)d[1]};
  g.OH = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  return g;
}

void check_nhwc(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast),
              "sepconv native: ", name, " must be a 4-D channels_last tensor");
}

#define DISPATCH(dtype, ...)                                                        \
  if ((dtype) == at::kFloat) { using T = float; __VA_ARGS__; }                      \
  else if ((dtype) == at::kBFloat16) { using T = c10::BFloat16; __VA_ARGS__; }      \
  else TORCH_CHECK(false, "sepconv native: dtype must be float32 or bfloat16");

}  // namespace

// (C, 1, kh, kw) weight of any float dtype -> float32 (kh, kw, C), optionally with the taps
// flipped: one tap of consecutive channels is one vector load. A plain loop, because the
// equivalent ATen permute + copy costs about 8 us, more than a small layer's whole kernel.
// (A bfloat16 weight is converted in the same loop: an ATen .to() per call costs more.)
at::Tensor weight_hwc(const at::Tensor& weight, bool flip = false) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1, "sepconv native: weight must be (C, 1, kh, kw)");
  const at::Tensor w = weight.scalar_type() == at::kBFloat16 ? weight.contiguous() : weight.to(at::kFloat).contiguous();
  const int64_t C = w.size(0), taps = w.size(2) * w.size(3);
  auto out = at::empty({w.size(2), w.size(3), C}, w.options().dtype(at::kFloat));
  float* dst = out.data_ptr<float>();
  DISPATCH(w.scalar_type(), {
    const T* src = w.data_ptr<T>();
    for (int64_t t = 0; t < taps; ++t) {  // (tap-major: C-strided writes would alias in L1)
      float* row = dst + (flip ? taps - 1 - t : t) * C;
      for (int64_t c = 0; c < C; ++c) row[c] = static_cast<float>(src[c * taps + t]);
    }
  });
  return out;
}

// weight_hwc for inference calls, which pass the same weights again and again: the last
// transposes are kept by the weight's address and shape, each with a copy of the bytes it
// was made from, and reused only if the weight's bytes still equal that copy (a memcmp, a
// fraction of the transpose's cost: 4 us for 1024 channels). So in-place updates, writes
// through .data and a freed address reused by another weight all miss, as they must.
// Measured 1.11-1.56x per call on MobileNet's 7x7-28x28 layers at batch 1, 1.19x on
// 1024x7x7 at batch 8. Training calls transpose every time (their weights change per step).
at::Tensor weight_hwc_cached(const at::Tensor& weight) {
  if (!weight.is_contiguous() || weight.dim() != 4) return weight_hwc(weight);
  struct Entry { std::vector<char> bytes; at::Tensor hwc; };
  static std::mutex mutex;
  // never destroyed: tensors must not be freed after libtorch at exit
  static auto& cache = *new std::map<std::tuple<const void*, int64_t, int64_t, int64_t, int>, Entry>();
  static size_t held = 0;   // bytes in the cache
  const auto key = std::make_tuple(weight.data_ptr(), weight.size(0), weight.size(2), weight.size(3),
                                   (int)weight.scalar_type());
  const char* data = static_cast<const char*>(weight.data_ptr());
  const size_t nbytes = weight.nbytes();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end() && it->second.bytes.size() == nbytes && std::memcmp(it->second.bytes.data(), data, nbytes) == 0)
    return it->second.hwc;
  Entry e{std::vector<char>(data, data + nbytes), weight_hwc(weight)};
  const size_t size = nbytes + e.hwc.nbytes();
  if (it != cache.end()) held -= it->second.bytes.size() + it->second.hwc.nbytes();
  if (held + size > WEIGHT_CACHE_BYTES) {
    cache.clear();
    held = 0;
  }
  held += size;
  return cache.insert_or_assign(key, std::move(e)).first->second.hwc;
}

// Optional bias -> float32 (C,), converted by a plain loop for the same reason.
at::Tensor bias_f32(const c10::optional<at::Tensor>& b) {
  if (!b.has_value()) return at::Tensor();
  if (b->scalar_type() != at::kBFloat16) return b->to(at::kFloat).contiguous();
  const at::Tensor src = b->contiguous();
  auto out = at::empty({src.numel()}, src.options().dtype(at::kFloat));
  const c10::BFloat16* sp = src.data_ptr<c10::BFloat16>();
  float* dp = out.data_ptr<float>();
  for (int64_t c = 0; c < src.numel(); ++c) dp[c] = static_cast<float>(sp[c]);
  return out;
}

// x: (N, C, H, W) channels_last; w: float32 (kh, kw, C) from weight_hwc; b: (C,) or None.
at::Tensor forward_hwc(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                       std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
                       bool relu) {
  check_nhwc(x, "input");
  at::Tensor bf = bias_f32(b);
  auto g = geometry(x, w.size(0), w.size(1), stride, padding, dilation);
  auto y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
  const float* wp = w.data_ptr<float>();
  DISPATCH(x.scalar_type(), {
    const T* xp = x.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    const int k = specialised_k(g);
    if (k == 3 && g.sw == 1) forward_kernel<T, 3, 3, 1, 1>(xp, wp, bp, yp, g, relu);
    else if (k == 3) forward_kernel<T, 3, 3, 2, 1>(xp, wp, bp, yp, g, relu);
    else if (k == 5 && g.sw == 1) forward_kernel<T, 5, 5, 1, 1>(xp, wp, bp, yp, g, relu);
    else if (k == 5) forward_kernel<T, 5, 5, 2, 1>(xp, wp, bp, yp, g, relu);
    else forward_kernel<T, 0, 0, 0, 0>(xp, wp, bp, yp, g, relu);
  });
  return y;
}

// x: (N, C, H, W) channels_last; w: (C, 1, kh, kw); b: (C,) or None.
// flip: convolve with the kernel rotated by 180 degrees (the stride-1 input gradient).
// Inference calls (flip false) reuse the transposed weight while its bytes are unchanged.
at::Tensor forward(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> b, std::vector<int64_t> stride,
                   std::vector<int64_t> padding, std::vector<int64_t> dilation, bool relu, bool flip) {
  return forward_hwc(x, flip ? weight_hwc(w, true) : weight_hwc_cached(w), b, stride, padding, dilation, relu);
}

at::Tensor grad_input(at::Tensor dy, at::Tensor w, std::vector<int64_t> input_size, std::vector<int64_t> stride,
                      std::vector<int64_t> padding, std::vector<int64_t> dilation) {
  check_nhwc(dy, "grad_output");
  w = weight_hwc(w);
  auto dx = at::empty(input_size, dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto g = geometry(dx, w.size(0), w.size(1), stride, padding, dilation);
  TORCH_CHECK(g.OH == dy.size(2) && g.OW == dy.size(3), "sepconv native: grad_output size mismatch");
  DISPATCH(dy.scalar_type(), grad_input_kernel<T>(dy.data_ptr<T>(), w.data_ptr<float>(), dx.data_ptr<T>(), g));
  return dx;
}

// Returns (dw as float32 (C, 1, kh, kw), db as float32 (C,) if bias else an empty tensor).
std::vector<at::Tensor> grad_weight(at::Tensor x, at::Tensor dy, int64_t kh, int64_t kw, std::vector<int64_t> stride,
                                    std::vector<int64_t> padding, std::vector<int64_t> dilation, bool bias) {
  check_nhwc(x, "input");
  check_nhwc(dy, "grad_output");
  auto g = geometry(x, kh, kw, stride, padding, dilation);
  auto dw = at::empty({g.C, 1, kh, kw}, x.options().dtype(at::kFloat));
  auto db = bias ? at::empty({g.C}, x.options().dtype(at::kFloat)) : at::Tensor();
  DISPATCH(x.scalar_type(), {
    const T* xp = x.data_ptr<T>();
    const T* dyp = dy.data_ptr<T>();
    float* dwp = dw.data_ptr<float>();
    float* dbp = bias ? db.data_ptr<float>() : nullptr;
    if (g.kh == 3 && g.kw == 3) grad_weight_kernel<T, 3, 3>(xp, dyp, dwp, dbp, g);
    else if (g.kh == 5 && g.kw == 5) grad_weight_kernel<T, 5, 5>(xp, dyp, dwp, dbp, g);
    else grad_weight_kernel<T, 0, 0>(xp, dyp, dwp, dbp, g);
  });
  return {dw, db};
}

// Input, weight and (if bias) bias gradients in one pass over dy: 3x3 or 5x5, stride 1 or 2,
// no dilation. Returns
// {dx, dw float32 (C, 1, kh, kw), db float32 (C,) or empty}, or nothing where it does not serve.
std::vector<at::Tensor> grad_both(at::Tensor x, at::Tensor dy, at::Tensor w, std::vector<int64_t> stride,
                                  std::vector<int64_t> padding, std::vector<int64_t> dilation, bool bias) {
  check_nhwc(x, "input");
  check_nhwc(dy, "grad_output");
  const auto g = geometry(x, w.size(2), w.size(3), stride, padding, dilation);
  const int k = specialised_k(g);
  const std::vector<int64_t> flip_pad = {g.kh - 1 - g.ph, g.kw - 1 - g.pw};
  if (!k || x.scalar_type() != dy.scalar_type() || (g.sh == 1 && (flip_pad[0] < 0 || flip_pad[1] < 0)))
    return {};
  const auto gf = geometry(dy, k, k, {1, 1}, flip_pad, {1, 1});
  const at::Tensor wh = weight_hwc(w), wf = weight_hwc(w, true);
  auto dx = at::empty(x.sizes(), dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto dw = at::empty({g.C, 1, g.kh, g.kw}, x.options().dtype(at::kFloat));
  auto db = bias ? at::empty({g.C}, x.options().dtype(at::kFloat)) : at::Tensor();
  DISPATCH(x.scalar_type(), {
    auto run = [&](auto kk) {
      backward_kernel<T, decltype(kk)::value>(x.data_ptr<T>(), dy.data_ptr<T>(), wh.data_ptr<float>(),
                                              wf.data_ptr<float>(), dx.data_ptr<T>(), dw.data_ptr<float>(),
                                              bias ? db.data_ptr<float>() : nullptr, g, gf);
    };
    if (k == 3) run(std::integral_constant<int, 3>{});
    else run(std::integral_constant<int, 5>{});
  });
  return {dx, dw, db};
}

// Shared host side of the Winograd kernels (3x3, stride 1, dilation 1): x is (N, C, H, W)
// channels_last, u the transformed weights in float32 in the layout the kernel reads.
template <typename Launch>
at::Tensor winograd_host(at::Tensor x, at::Tensor u, const c10::optional<at::Tensor>& b,
                         std::vector<int64_t> padding, Launch launch) {
  check_nhwc(x, "input");
  at::Tensor bf = bias_f32(b);
  auto g = geometry(x, 3, 3, {1, 1}, padding, {1, 1});
  auto y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  u = u.to(at::kFloat).contiguous();
  const float* bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
  DISPATCH(x.scalar_type(), launch(x.data_ptr<T>(), u.data_ptr<float>(), bp, y.data_ptr<T>(), g));
  return y;
}

// The gradients a training step asks for (undefined where not asked): dx in dy's dtype, dw
// in the weight's, db in dy's. One pass over dy for inputs from DRAM, else two kernels.
std::vector<at::Tensor> backward(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& w,
                                 std::vector<int64_t> stride, std::vector<int64_t> padding,
                                 std::vector<int64_t> dilation, bool want_dx, bool want_dw, bool want_db) {
  const at::Tensor dy = grad.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor dx, dw, db;
  std::vector<at::Tensor> both;
  // One pass over dy for inputs over 4 MiB: measured 1.18-1.28x per training step at stride 1
  // and 1.03-1.16x at stride 2 on MobileNet's batch-8 layers of 12-26 MB, 1.09-1.18x and
  // 1.0-1.03x on 6.4 MB (256x28x28); on 3.2 MB and less it tied or lost up to 10% (its weight
  // gradient goes by rows, not channel blocks).
  if (want_dx && (want_dw || want_db) && x.nbytes() > ONE_PASS_BYTES)
    both = grad_both(x, dy, w, stride, padding, dilation, want_db);
  if (!both.empty()) {
    dx = both[0];
    if (want_dw) dw = both[1].to(w.scalar_type());
    if (want_db) db = both[2].to(dy.scalar_type());
  } else {
    if (want_dx) {
      const std::vector<int64_t> flip_pad = {dilation[0] * (w.size(2) - 1) - padding[0],
                                             dilation[1] * (w.size(3) - 1) - padding[1]};
      // stride 1: the input gradient is the forward kernel on dy with the kernel flipped
      // and the complementary padding
      if (stride[0] == 1 && stride[1] == 1 && flip_pad[0] >= 0 && flip_pad[1] >= 0)
        dx = forward_hwc(dy, weight_hwc(w, true), std::nullopt, {1, 1}, flip_pad, dilation, false);
      else
        dx = grad_input(dy, w, x.sizes().vec(), stride, padding, dilation);
    }
    if (want_dw || want_db) {
      auto g = grad_weight(x, dy, w.size(2), w.size(3), stride, padding, dilation, want_db);
      if (want_dw) dw = g[0].to(w.scalar_type());
      if (want_db) db = g[1].to(dy.scalar_type());
    }
  }
  return {dx, dw, db};
}

// Training: forward and both gradients as a C++ autograd function, so that a step never
// enters Python in backward: measured 1.06-1.22x over a Python autograd.Function around the
// same kernels, on MobileNet's layers at batch 1 (15-26 us less per step).
struct DepthwiseFunction : public torch::autograd::Function<DepthwiseFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor x, at::Tensor w,
                            std::optional<at::Tensor> b, std::vector<int64_t> stride,
                            std::vector<int64_t> padding, std::vector<int64_t> dilation) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["bias"] = b.has_value();
    return forward_hwc(x, weight_hwc(w), b, stride, padding, dilation, false);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto g = ::backward(saved[0], grads[0], saved[1], ctx->saved_data["stride"].toIntVector(),
                        ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(),
                        ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                        ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2));
    return {g[0], g[1], g[2], at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_train(at::Tensor x, at::Tensor w, std::optional<at::Tensor> b, std::vector<int64_t> stride,
                         std::vector<int64_t> padding, std::vector<int64_t> dilation) {
  return DepthwiseFunction::apply(x, w, b, stride, padding, dilation);
}

// u: (3, 4, C) = G applied to each kernel row.
at::Tensor winograd_rows_forward(at::Tensor x, at::Tensor u, c10::optional<at::Tensor> b,
                                 std::vector<int64_t> padding, bool relu) {
  return winograd_host(x, u, b, padding, [relu](auto xp, const float* up, const float* bp, auto yp, Geometry g) {
    winograd_rows_kernel(xp, up, bp, yp, g, relu);
  });
}

// u: (M+2, M+2, C) = G g G^T per channel, for F(MxM,3x3) with M = 2 or 4.
at::Tensor winograd2d_forward(at::Tensor x, at::Tensor u, c10::optional<at::Tensor> b,
                              std::vector<int64_t> padding, bool relu) {
  TORCH_CHECK(u.dim() == 3 && u.size(0) == u.size(1) && (u.size(0) == 4 || u.size(0) == 6),
              "winograd2d_forward: u must be (4, 4, C) or (6, 6, C), got ", u.sizes());
  const bool f4 = u.size(0) == 6;
  return winograd_host(x, u, b, padding, [relu, f4](auto xp, const float* up, const float* bp, auto yp, Geometry g) {
    if (f4) winograd2d_kernel<std::remove_pointer_t<decltype(xp)>, 4>(xp, up, bp, yp, g, relu);
    else winograd2d_kernel<std::remove_pointer_t<decltype(xp)>, 2>(xp, up, bp, yp, g, relu);
  });
}

// The B^T rows then the A^T rows the kernels use for F(m, 3), m = 2 or 4.
std::vector<std::vector<float>> winograd_constants(int64_t m) {
  TORCH_CHECK(m == 2 || m == 4, "winograd_constants: m must be 2 or 4, got ", m);
  std::vector<std::vector<float>> out;
  auto add = [&](const auto& table) { for (auto& r : table) out.emplace_back(std::begin(r), std::end(r)); };
  if (m == 2) { add(BT23); add(AT23); } else { add(BT43); add(AT43); }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("winograd_rows_forward", &winograd_rows_forward, "row-wise Winograd F(2,3) depthwise 3x3, NHWC, inference");
  m.def("winograd2d_forward", &winograd2d_forward, "2-D Winograd F(2x2,3x3) or F(4x4,3x3) depthwise 3x3, NHWC, inference");
  m.def("winograd_constants", &winograd_constants, "the B^T rows then the A^T rows of F(m,3) the kernels use");
  m.def("forward", &forward, "depthwise forward, NHWC (optionally fused ReLU)");
  m.def("forward_train", &forward_train, "depthwise forward, NHWC, differentiable in x, weight and bias");
  m.def("grad_input", &grad_input, "depthwise input gradient, NHWC");
  m.def("backward", &backward, "the asked-for depthwise gradients (dx, dw, db; None where not asked), NHWC");
  m.def("grad_both", &grad_both, "depthwise input, weight and bias gradients in one pass over dy, NHWC; [] where it does not serve");
  m.def("grad_weight", &grad_weight, "depthwise weight and bias gradients, NHWC -> float32 (C, 1, kh, kw), (C,)");
  m.def("weight_hwc", &weight_hwc, "(C, 1, kh, kw) -> float32 (kh, kw, C), taps optionally flipped");
}
