// Depthwise forward by rows (direct convolution), fused with bias and an activation.
// Included inside one ISA's namespace (isa_build.h).

// Forward accumulation of a register block: R output rows (1 or 2) x OB outputs. The
// KH + (R - 1) * S input rows it reads are loaded once for all its rows (output row k reads
// input row i + k * S for kernel row i). x(r, q) loads input row r at block column q,
// counted from the block's first tap; row_ok(r) says input row r is inside.
template <int KH, int KW, int S, int OB, int R, typename X, typename OK>
inline __attribute__((always_inline)) void fwd_accumulate(vf (&acc)[R][OB], const vf* wv, X x, OK row_ok) {
  constexpr int NX = (OB - 1) * S + KW;
#pragma GCC unroll 7
  for (int r = 0; r < KH + (R - 1) * S; ++r) {
    if (!row_ok(r)) continue;
    // each input vector feeds its FMAs as soon as it is loaded, so that one (not a row of
    // NX) is live beside the accumulators and the weights: 16 AVX2 registers hold a 3x3
    // block of 4 outputs that way
#pragma GCC unroll 32
    for (int q = 0; q < NX; ++q) {
      const vf xv = x(r, q);
#pragma GCC unroll 2
      for (int k = 0; k < R; ++k) {
        const int i = r - k * S;
        if (i < 0 || i >= KH) continue;
#pragma GCC unroll 7
        for (int j = 0; j < KW; ++j) {
          const int o = (q - j) / S;
          if (q >= j && (q - j) % S == 0 && o < OB) acc[k][o] += xv * wv[i * KW + j];
        }
      }
    }
  }
}

// Output rows [begin, end) (counted over N * OH). With a compile-time kernel (KH, KW > 0:
// square stride SW, no dilation), channel blocks are the outer loop of a row so that one
// block's KH*KW weight vectors stay in registers across it (or, with 16 registers, the inner
// loop of each block of outputs: CHANNELS_INNER), and register blocks of outputs,
// sharing every input vector they read, cover the whole row (blocks touching the padding test
// the columns they load). Otherwise (KH == 0, the generic kernel: any size, stride and
// dilation), pixel-major order: all channels of a pixel, four channel blocks at a time, a
// bounds check per tap.
template <typename T, int KH, int KW, int SW>
void forward_rows(const T* x, const float* w, const float* b, T* y, const Geometry& geom, const Act& act,
                  int64_t begin, int64_t end) {
  const Geometry g = geom;   // a local copy: the compiler need not reload it after every store
  const int kh = KH ? KH : g.kh, kw = KW ? KW : g.kw;
  // ReLU and clamp (ReLU6) in registers on the way out, the others in a second pass
  const bool post = !act_inline(act);
  auto out = [act](vf v) INLINE_LAMBDA { return act_inline(act) ? activate(v, act) : v; };
  int lo, hi;
  interior(g, lo, hi);
  // (streamed stores leave the cache, where the activation pass would read them back)
  const bool nt = g.N * g.OH * g.OW * g.C * (int64_t)sizeof(T) > nt_bytes() && !post && !g.cached_out;
  const bool prefetch = g.N * g.H * g.W * g.C * (int64_t)sizeof(T) > PREFETCH_BYTES && !g.cached_in;
  constexpr int OB = KH * KW <= 9 ? 8 : 4;
  // Channel blocks inside each block of outputs with 16 vector registers (measured 1.1-1.3x
  // on MobileNet's 3x3 layers on a Zen 3, AVX2), outside the whole row with 32, where one
  // block's KH*KW weights stay in registers across it. Outside, a block's loads jump a
  // pixel (C floats) at a time: with 2 KiB pixels (C = 512) two loads a 4 KiB page, beyond
  // the prefetchers; inside, they walk each pixel's channels in order.
  constexpr bool CHANNELS_INNER = VL <= 8;
  for (int64_t row = begin, step = 1; row < end; row += step) {
    const int64_t n = row / g.OH, oh = row % g.OH;
    const T* xn = x + n * g.H * g.W * g.C;
    T* yr = y + row * g.OW * g.C;
    const int ih0 = oh * g.sh - g.ph;
    // Two output rows at once: they share KH - SW of their KH + SW input rows, so each
    // input vector loaded there feeds both (measured 1.02-1.25x at stride 1 and 1.0-1.3x
    // at stride 2 on MobileNet's layers). Only for rows of 4+ outputs; a channel tail takes
    // the per-pixel path for both rows.
    const bool two = KH > 0 && row + 1 < end && oh + 1 < g.OH && g.OW >= 4;
    step = two ? 2 : 1;
    if (prefetch && !two) {
      // The next step's new input rows, asked for now, so that the DRAM latency overlaps
      // this step's arithmetic (inputs at batch 8 exceed the caches). Two-row blocks ask for
      // them block by block instead (below).
      for (int r = 0; r < step * g.sh; ++r) {
        const int ih = ih0 + (step - 1) * g.sh + (kh - 1) * g.dil_h + 1 + r;
        if (ih < 0 || ih >= g.H) continue;
        prefetch_row(xn + ih * g.W * g.C, g.W * g.C * sizeof(T));
      }
    }
    // Output (row k of the step, column ow) for the channel block at cb.
    auto pixel = [&](int ow, int64_t cb, int lanes, bool check, int k = 0) INLINE_LAMBDA {
      const int iw0 = ow * g.sw - g.pw, ih0k = ih0 + k * g.sh;
      auto ld = [lanes](const auto* p) INLINE_LAMBDA {
        return lanes == VL ? IO<std::remove_cv_t<std::remove_pointer_t<decltype(p)>>>::load(p) : load_lanes(p, lanes);
      };
      // Two accumulators (even and odd kernel rows), named rather than an indexed array: a
      // runtime-indexed array lives on the stack and turns every FMA into a load-FMA-store
      // chain (measured 3x slower).
      vf acc0 = b ? ld(b + cb) : vf{}, acc1{};
      for (int i = 0; i < kh; ++i) {
        const int ih = ih0k + i * g.dil_h;
        if (ih < 0 || ih >= g.H) continue;
        const T* xr = xn + ih * g.W * g.C + cb;
        const float* wr = w + i * kw * g.C + cb;
        vf row{};
        for (int j = 0; j < kw; ++j) {
          const int iw = iw0 + j * g.dil_w;
          if (check && (iw < 0 || iw >= g.W)) continue;
          row += ld(xr + iw * g.C) * ld(wr + j * g.C);
        }
        if (i & 1) acc1 += row; else acc0 += row;
      }
      store_lanes(yr + (k * g.OW + ow) * g.C + cb, out(acc0 + acc1), lanes);
    };
    if (KH == 0) {
      // Four channel blocks at a time: four independent FMA chains, one bounds check per tap.
      constexpr int NV = 4;
      const int64_t c4 = g.C / (NV * VL) * (NV * VL);
      for (int ow = 0; ow < g.OW; ++ow) {
        const int iw0 = ow * g.sw - g.pw;
        for (int64_t cb = 0; cb < c4; cb += NV * VL) {
          vf acc[NV];
          for (int v = 0; v < NV; ++v) acc[v] = b ? loadf(b + cb + v * VL) : vf{};
          for (int i = 0; i < kh; ++i) {
            const int ih = ih0 + i * g.dil_h;
            if (ih < 0 || ih >= g.H) continue;
            const T* xr = xn + ih * g.W * g.C + cb;
            const float* wr = w + i * kw * g.C + cb;
            for (int j = 0; j < kw; ++j) {
              const int iw = iw0 + j * g.dil_w;
              if (iw < 0 || iw >= g.W) continue;
              for (int v = 0; v < NV; ++v)
                acc[v] += IO<T>::load(xr + iw * g.C + v * VL) * loadf(wr + j * g.C + v * VL);
            }
          }
          for (int v = 0; v < NV; ++v) stream_store(yr + ow * g.C + cb + v * VL, out(acc[v]), nt);
        }
        for (int64_t cb = c4; cb < g.C; cb += VL)
          pixel(ow, cb, (int)std::min<int64_t>(VL, g.C - cb), ow < lo || ow >= hi);
      }
      if (post) activate_rows(yr, g.OW * g.C, act);
      continue;
    }
    if constexpr (KH > 0) {
      vf wv[KH * KW], bv{};
      int64_t cb = 0;
      const int64_t full = g.C / VL * VL;   // channels in whole vectors
      auto load_weights = [&](int64_t c) INLINE_LAMBDA {
#pragma GCC unroll 49
        for (int t = 0; t < KH * KW; ++t) wv[t] = loadf(w + t * g.C + c);
        bv = b ? loadf(b + c) : vf{};
      };
      // Blocks of R rows (1 or 2) x OBK outputs cover the row, the last one narrower, so
      // that no output takes the per-pixel path. Blocks touching the padding test each
      // input column they load.
      auto one = [&](int ow, auto edge, auto ob, auto rr) INLINE_LAMBDA {
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
          // the misses overlap the arithmetic (measured 1.03-1.5x forward and 1.0-1.19x
          // per training step on the 13-26 MB batch-8 layers, against whole rows asked
          // for at the start of the step).
#pragma GCC unroll 4
          for (int r = KH + SW; r < KH + 3 * SW; ++r)
            if (ih0 + r < g.H)
#pragma GCC unroll 8
              for (int q = 0; q < OBK * SW; ++q)
                if (!decltype(edge)::value || (iw0 + q >= 0 && iw0 + q < g.W))
                  __builtin_prefetch(base + r * row_step + q * g.C, 0, 1);
        }
        fwd_accumulate<KH, KW, SW, OBK, R>(
            acc, wv,
            [&](int r, int q) {
              const bool in = !decltype(edge)::value || (iw0 + q >= 0 && iw0 + q < g.W);
              return in ? IO<T>::load(base + r * row_step + q * g.C) : vf{};
            },
            [&](int r) { return ih0 + r >= 0 && ih0 + r < g.H; });
#pragma GCC unroll 8
        for (int o = 0; o < OBK; ++o)
          for (int k = 0; k < R; ++k)
            stream_store(yr + (k * g.OW + ow + o) * g.C + cb, out(acc[k][o]), nt);
      };
      auto block = [&](int ow, auto edge, auto ob, auto rr) INLINE_LAMBDA {
        if constexpr (!CHANNELS_INNER) return one(ow, edge, ob, rr);
        for (cb = 0; cb < full; cb += VL) {
          load_weights(cb);
          one(ow, edge, ob, rr);
        }
      };
      using Four = std::integral_constant<int, 4>;
      auto at = [&](int o, auto ob, auto rr) INLINE_LAMBDA {
        if (o >= lo && o + decltype(ob)::value <= hi) block(o, std::false_type{}, ob, rr);
        else block(o, std::true_type{}, ob, rr);
      };
      // Full blocks, then the last 1-3 outputs (after one block of 4 where blocks are 8)
      // as one narrower block: measured 1.02-1.20x on 7- and 14-wide rows over shifting
      // the last full block left to end at OW.
      auto row = [&](auto ob, auto rr) INLINE_LAMBDA {
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
      // in registers: blocks of 8 spill). Rows shorter than a full block (7x7 maps) take
      // half blocks.
      auto whole_row = [&] INLINE_LAMBDA {
        if (two) row(Four{}, std::integral_constant<int, 2>{});
        else if (g.OW >= OB) row(std::integral_constant<int, OB>{}, std::integral_constant<int, 1>{});
        else row(Four{}, std::integral_constant<int, 1>{});
      };
      const bool inner = CHANNELS_INNER && g.OW >= 4;   // whole vectors of channels by blocks of outputs
      if (inner) whole_row();
      for (cb = inner ? full : 0; cb < g.C; cb += VL) {
        const int lanes = (int)std::min<int64_t>(VL, g.C - cb);
        if (!CHANNELS_INNER && lanes == VL && g.OW >= 4) {
          load_weights(cb);
          whole_row();
          continue;
        }
        for (int k = 0; k < step; ++k)
          for (int ow = 0; ow < g.OW; ++ow) pixel(ow, cb, lanes, ow < lo || ow >= hi, k);
      }
    }
    if (post) activate_rows(yr, step * g.OW * g.C, act);
  }
  fence_streams(nt);
}

template <typename T, int KH, int KW, int SW>
void forward_kernel(const void* x, const float* w, const float* b, void* y, const Geometry& g, const Act& act,
                    int64_t begin, int64_t end) {
  forward_rows<T, KH, KW, SW>(static_cast<const T*>(x), w, b, static_cast<T*>(y), g, act, begin, end);
}
