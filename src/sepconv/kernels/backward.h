// Depthwise gradients: input gradient (gather), weight and bias gradients, and both in one
// pass over dy. Included inside one ISA's namespace (isa_build.h).

// Output columns per register block of the weight gradient: KH*KW accumulators, OB dy
// vectors and one row of inputs must fit in 32 registers (5x5 has no room for blocks).
constexpr int wgrad_block(int taps) { return taps <= 9 ? 4 : 1; }

// dx[n, ih, iw, c] = sum over taps (i, j) with ih + ph - i*dh = oh*sh, iw + pw - j*grad_w = ow*sw
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
        const int numw = iw + g.pw - jj * g.dil_w;
        if (numw < 0 || numw % g.sw || numw / g.sw >= g.OW) continue;
        j[iw * g.kw + n[iw]] = jj;
        ow[iw * g.kw + n[iw]++] = numw / g.sw;
      }
  }
};

// Input rows [begin, end) (counted over N * H) of the input gradient.
template <typename T>
void grad_input_rows(const T* dy, const float* w, T* dx, const Geometry& geom, const GatherColumns& cols,
                     int64_t begin, int64_t end) {
  const Geometry g = geom;   // (a local copy, as in grad_weight_rows)
  const std::vector<int>&col_n = cols.n, &col_j = cols.j, &col_ow = cols.ow;
  const bool pairs = g.kh == 3 && g.kw == 3 && g.sw == 2 && g.dil_w == 1 && g.C % VL == 0;
  // Streamed stores for a large dx, as the forward's output (measured 1.26-1.46x per training
  // step at stride 2 on MobileNet's batch-8 layers, 1.07-1.18x on 64x112x112 at batch 1).
  const bool nt = g.N * g.H * g.W * g.C * (int64_t)sizeof(T) > nt_bytes();
  std::vector<int> row_i(g.kh), row_oh(g.kh);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / g.H, ih = row % g.H;
    const T* dyn = dy + n * g.OH * g.OW * g.C;
    T* dxr = dx + row * g.W * g.C;
    int rows_n = 0;
    for (int i = 0; i < g.kh; ++i) {
      const int num = ih + g.ph - i * g.dil_h;
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
        auto pair_blocks = [&](auto ob, int pb, int pb_end) INLINE_LAMBDA {
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
void grad_input_kernel(const void* dy, const float* w, void* dx, const Geometry& g) {
  const GatherColumns cols(g);
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
    grad_input_rows(static_cast<const T*>(dy), w, static_cast<T*>(dx), g, cols, begin, end);
  });
}

// (kh*kw + 1, C) accumulators (the last row is the bias gradient) -> grad_w as (C, 1, kh, kw),
// the layout of the weight, and grad_b (C,) when asked for.
inline void store_grads(const float* acc, float* grad_w, float* grad_b, const Geometry& g) {
  const int64_t taps = g.kh * g.kw;
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t t = 0; t < taps; ++t) grad_w[c * taps + t] = acc[t * g.C + c];
  if (grad_b) std::copy(acc + taps * g.C, acc + (taps + 1) * g.C, grad_b);
}

// `parts` per-thread accumulator buffers, laid out one after another: summed into the first,
// then stored as grad_w and grad_b.
inline void store_partials(std::vector<float>& partial, int64_t parts, float* grad_w, float* grad_b, const Geometry& g) {
  const int64_t size = (g.kh * g.kw + 1) * g.C;
  for (int64_t p = 1; p < parts; ++p)
    for (int64_t k = 0; k < size; ++k) partial[k] += partial[p * size + k];
  store_grads(partial.data(), grad_w, grad_b, g);
}

// Weight-gradient accumulation over OB consecutive output columns of R output rows (1 or
// 2): each input vector loaded is used by every tap that reads it, in both rows, so a block
// needs R * OB + (KH + (R - 1) * S) * NX loads for R * OB * KH * KW FMAs, not 1 + KH * KW
// loads per output. dy(k, o) loads row k's dy at block column o; x(r, q) loads input row r
// (output row k reads input row i + k * S for kernel row i) at block column q (counted from
// the block's first tap); row_ok(r) says input row r is inside the image.
template <int KH, int KW, int S, int OB, int R, typename DY, typename X, typename OK>
inline __attribute__((always_inline)) void wgrad_accumulate(vf* acc, vf& sum, DY dy, X x, OK row_ok) {
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
void grad_weight_rows(const T* x, const T* dy, const Geometry& geom, int64_t row_begin, int64_t row_end, int64_t cb,
                      float* acc_out, bool prefetch_next = false) {
  const Geometry g = geom;   // a local copy: the compiler need not reload it after every store
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
        const bool pair = g.dil_h == 1 && g.dil_w == 1 && (g.sw == 1 || g.sw == 2) && row + 1 < row_end &&
                          oh + 1 < g.OH && hi > lo;
        step = pair ? 2 : 1;
        const T* xn = x + n * g.H * g.W * g.C;
        const T* dyr = dy + row * g.OW * g.C;
        // input rows r = 0 .. KH (+ sh for a pair) - 1; the second row's kernel row i is r = i + sh
        bool row_ok[KH + 2];
        const T* xr[KH + 2];
        for (int r = 0; r < KH + (pair ? g.sh : 0); ++r) {
          const int ih = oh * g.sh - g.ph + r * g.dil_h;
          row_ok[r] = ih >= 0 && ih < g.H;
          xr[r] = xn + (row_ok[r] ? ih : 0) * g.W * g.C + cb;
        }
        auto columns = [&](int ow_begin, int ow_end, auto edge, const bool* ok, const T* const* xrp,
                           const T* dyrp) INLINE_LAMBDA {
          for (int ow = ow_begin; ow < ow_end; ++ow) {
            const vf d = IO<T>::load(dyrp + ow * g.C + cb);
            sum += d;
            const int iw0 = ow * g.sw - g.pw;
#pragma GCC unroll 5
            for (int i = 0; i < KH; ++i) {
              if (!ok[i]) continue;
#pragma GCC unroll 5
              for (int j = 0; j < KW; ++j) {
                const int iw = iw0 + j * g.dil_w;
                if (decltype(edge)::value && (iw < 0 || iw >= g.W)) continue;
                acc[i * KW + j] += d * IO<T>::load(xrp[i] + iw * g.C);
              }
            }
          }
        };
        // the same column range for each row of the step
        auto each_row = [&](int ow_begin, int ow_end, auto edge) INLINE_LAMBDA {
          columns(ow_begin, ow_end, edge, row_ok, xr, dyr);
          if (pair) columns(ow_begin, ow_end, edge, row_ok + g.sh, xr + g.sh, dyr + g.OW * g.C);
        };
        each_row(0, std::min(lo, (int)g.OW), std::true_type{});
        int ow = lo;
        if (g.dil_w == 1 && (g.sw == 1 || g.sw == 2)) {
          auto run_blocks = [&](auto s, auto rr) INLINE_LAMBDA {
            constexpr int S = decltype(s)::value, R = decltype(rr)::value;
            constexpr int OB = wgrad_block(KH * KW);
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
              wgrad_accumulate<KH, KW, S, OB, R>(
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
      const int ih = oh * g.sh - g.ph + i * g.dil_h;
      if (ih < 0 || ih >= g.H) continue;
      const T* xr = xn + ih * g.W * g.C + cb;
      for (int j = 0; j < g.kw; ++j) {
        vf acc{};
        for (int ow = 0; ow < g.OW; ++ow) {
          const int iw = ow * g.sw - g.pw + j * g.dil_w;
          if (iw < 0 || iw >= g.W) continue;
          acc += load_lanes(dyr + ow * g.C + cb, lanes) * load_lanes(xr + iw * g.C, lanes);
        }
        add_to(acc_out + (i * g.kw + j) * g.C + cb, acc);
      }
    }
  }
}

// grad_w[i, j, c] = sum over n, oh, ow of dy[n, oh, ow, c] * x[n, oh*sh - ph + i*dh, ow*sw - pw + j*grad_w, c].
// Each thread accumulates a private (kh*kw + 1, C) buffer over its rows (the last row is grad_b,
// the per-channel sum of dy); the buffers are summed. With KH, KW > 0 (compile time) and full
// channel blocks, the accumulators of one block stay in registers over a whole output row,
// each dy vector is loaded once for all taps, and border columns test the input columns they
// load; otherwise a per-tap loop with bounds checks.
template <typename T, int KH, int KW>
void grad_weight_kernel(const void* xv, const void* dyv, float* grad_w, float* grad_b, const Geometry& g) {
  const T* x = static_cast<const T*>(xv);
  const T* dy = static_cast<const T*>(dyv);
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
  store_partials(partial, parts, grad_w, grad_b, g);
}

// Both gradients in one pass over dy (3x3 or 5x5, stride 1 or 2, no dilation). Each thread
// walks its share of dy's rows two at a time and, per step, accumulates the weight gradient
// from those rows and writes the input-gradient rows they own, while the rows are in cache:
// dy is read from memory once instead of twice. gf is the geometry of the stride-1 input
// gradient as a forward pass over dy (wf: the flipped weight); stride 2 gathers.
template <typename T, int K>
void backward_kernel(const void* xv, const void* dyv, const float* w, const float* wf, void* dxv, float* grad_w,
                     float* grad_b, const Geometry& g, const Geometry& gf) {
  const T* x = static_cast<const T*>(xv);
  const T* dy = static_cast<const T*>(dyv);
  T* dx = static_cast<T*>(dxv);
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
        if (g.sh == 1) forward_rows<T, K, K, 1>(dy, wf, nullptr, dx, gf, Act{}, lo, hi);
        else grad_input_rows(dy, w, dx, g, cols, lo, hi);
      }
    }
  });
  store_partials(partial, parts, grad_w, grad_b, g);
}
