// A dense convolution of an input with few channels (a network's stem: 3 colour channels) as
// an implicit GEMM (DirectArgs in kernels.h). With C = 3, im2col wrote 27 values per output
// pixel for 27 multiply-adds per output channel block, and took longer than the GEMM that read
// them; here the GEMM's A values are broadcast straight from the input.
//
// A task is one image's band of output rows. Its input rows are first staged as zero-padded
// float32 planes (channel, row, column), converted from the input's own layout and dtype: a
// user's NCHW float32 image costs one row copy per channel, so the model's input needs no
// layout change before the stem. A tap (i, j) of channel c for the output pixel at staged
// column q is then at c * plane + i * dh * Wp + j * dw + q: tap k lies at a fixed offset off[k]
// from the pixel, and neighbouring pixels are `sw` floats apart. Included inside one ISA's
// namespace (isa_build.h).

// One register tile: MR output pixels of a row (pixel i at base + i * ps) times one packed
// panel (GEMM_NR output channels), over the K taps. Pixel 3q + r is read at a[q] + r * ps,
// which x86 addresses as (pointer, ps, scale 4 or 8), as gemm_tile reads its rows: a
// pointer per three pixels and one stride register.
template <int MR>
inline __attribute__((always_inline)) void direct_tile(const float* base, int64_t ps, const int64_t* off, int64_t K,
                                                       const float* panel, vf* acc0, vf* acc1) {
  constexpr int Q = (MR + 2) / 3;
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = vf{};
  const float* bp = panel;
  for (int64_t k = 0; k < K; ++k) {
    const float* a[Q];
    a[0] = base + off[k];
#pragma GCC unroll 6
    for (int q = 1; q < Q; ++q) a[q] = a[q - 1] + 3 * ps;
    const vf b0 = loadf(bp), b1 = loadf(bp + VL);
    bp += GEMM_NR;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf av = splat(a[i / 3][(i % 3) * ps]);
      acc0[i] += av * b0;
      acc1[i] += av * b1;
    }
  }
}

// n floats rounded to bfloat16 values in place: a bfloat16 model's stem sees the input as the
// layers that take it converted to bfloat16 do (the same results whichever way it comes).
inline void round_to_bf16(float* d, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    bf16 tmp[VL];
    IO<bf16>::store(tmp, loadf(d + i));
    storef(d + i, IO<bf16>::load(tmp));
  }
  for (; i < n; ++i) d[i] = bf16_to_float(float_to_bf16(d[i]));
}

// The input rows [ih0, ih0 + rows) of image n as float32 planes of `Wp` columns (column pl + w
// holds input column w; zeros around), `plane` floats apart.
template <typename TI>
void direct_stage(const DirectArgs& a, int64_t n, int64_t ih0, int64_t rows, int64_t Wp, int64_t plane, float* buf) {
  const TI* x = static_cast<const TI*>(a.x);
  for (int64_t c = 0; c < a.C; ++c)
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = buf + c * plane + r * Wp;
      const int64_t ih = ih0 + r;
      if (ih < 0 || ih >= a.H) {
        std::fill(dst, dst + Wp, 0.f);
        continue;
      }
      std::fill(dst, dst + a.pl, 0.f);
      const TI* src = x + n * a.sN + c * a.sC + ih * a.sH;
      float* d = dst + a.pl;
      if constexpr (std::is_same_v<TI, float>) {
        if (a.sW == 1) std::memcpy(d, src, a.W * sizeof(float));
        else for (int64_t w = 0; w < a.W; ++w) d[w] = src[w * a.sW];
        if (a.y_dtype == BF16) round_to_bf16(d, a.W);
      } else {
        for (int64_t w = 0; w < a.W; ++w) d[w] = IO<TI>::get(src + w * a.sW);
      }
      std::fill(d + a.W, dst + Wp, 0.f);
    }
}

template <typename TO>
void conv_direct_to(const DirectArgs& a) {
  const int64_t threads = at::get_num_threads();
  // bands of up to 16 output rows, at least 8 bands per thread where the batch allows
  const int64_t band = std::max<int64_t>(1, std::min<int64_t>(16, a.N * a.OH / (8 * threads)));
  const int64_t bands = (a.OH + band - 1) / band;
  const int64_t rows = (band - 1) * a.sh + (a.kh - 1) * a.dh + 1;   // staged rows of a full band
  const int64_t Wp = std::max<int64_t>(a.pl + a.W, (a.OW - 1) * a.sw + (a.kw - 1) * a.dw + 1);
  const int64_t plane = rows * Wp, K = a.kh * a.kw * a.C, panels = gemm_panels(a.cout);
  std::vector<int64_t> off;   // taps in the packed weight's order: kernel row, column, channel
  for (int64_t i = 0; i < a.kh; ++i)
    for (int64_t j = 0; j < a.kw; ++j)
      for (int64_t c = 0; c < a.C; ++c) off.push_back(c * plane + i * a.dh * Wp + j * a.dw);
  GemmArgs g{a.N * a.OH * a.OW, a.cout, K, nullptr, 0, a.y, a.cout, a.bias, nullptr, 0, a.act, Act{}};
  at::parallel_for(0, a.N * bands, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> buf(a.C * plane);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / bands, oh0 = t % bands * band, oh1 = std::min(a.OH, oh0 + band);
      const int64_t ih0 = oh0 * a.sh - a.pt, need = (oh1 - 1 - oh0) * a.sh + (a.kh - 1) * a.dh + 1;
      if (a.x_dtype == BF16) direct_stage<bf16>(a, n, ih0, need, Wp, plane, buf.data());
      else direct_stage<float>(a, n, ih0, need, Wp, plane, buf.data());
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const float* row = buf.data() + (oh - oh0) * a.sh * Wp;
        for (int64_t ow = 0; ow < a.OW; ow += GEMM_MR) {
          const float* base = row + ow * a.sw;
          const int64_t m = (n * a.OH + oh) * a.OW + ow;
          for (int64_t p = 0; p < panels; ++p) {
            const float* panel = a.packed + p * K * GEMM_NR;
            const int ncols = (int)std::min<int64_t>(GEMM_NR, a.cout - p * GEMM_NR);
            switch (std::min<int64_t>(GEMM_MR, a.OW - ow)) {
#define SEPCONV_TILE(r) \
  case r: if constexpr (r <= GEMM_MR) { \
    vf acc0[r], acc1[r]; \
    direct_tile<r>(base, a.sw, off.data(), K, panel, acc0, acc1); \
    gemm_epilogue_tile<TO, r>(acc0, acc1, g, m, p * GEMM_NR, ncols); \
  } break;
              SEPCONV_TILE(1) SEPCONV_TILE(2) SEPCONV_TILE(3) SEPCONV_TILE(4) SEPCONV_TILE(5) SEPCONV_TILE(6)
              SEPCONV_TILE(7) SEPCONV_TILE(8) SEPCONV_TILE(9) SEPCONV_TILE(10) SEPCONV_TILE(11) SEPCONV_TILE(12)
              SEPCONV_TILE(13) SEPCONV_TILE(14)
#undef SEPCONV_TILE
              default: break;
            }
          }
        }
      }
    }
  });
}

void conv_direct(const DirectArgs& a) {
  if (a.y_dtype == BF16) conv_direct_to<bf16>(a);
  else conv_direct_to<float>(a);
}
