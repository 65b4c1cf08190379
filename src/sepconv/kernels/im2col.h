// im2col rows for the GEMM programs (Im2colArgs in kernels.h). Included inside one ISA's
// namespace (isa_build.h).

// n elements of T from src to dst (vector copies; a 3-channel stem copies 9 at a time, where a
// memcpy call per copy cost more than the GEMM) and zeros.
template <typename T> inline void copy_elems(T* dst, const T* src, int64_t n) {
  constexpr int E = int(sizeof(vf) / sizeof(T));   // elements per vector register
  int64_t i = 0;
  for (; i + E <= n; i += E) *reinterpret_cast<vf_mem*>(dst + i) = *reinterpret_cast<const vf_mem*>(src + i);
#if SEPCONV_VL == 16
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << ((n - i) * sizeof(T) / 4)) - 1);
    if ((n - i) * sizeof(T) % 4 == 0) {
      _mm512_mask_storeu_epi32(dst + i, m, _mm512_maskz_loadu_epi32(m, src + i));
      return;
    }
  }
#endif
  for (; i < n; ++i) dst[i] = src[i];
}
template <typename T> inline void zero_elems(T* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = T{};
}

// The rows are written in address order, so a segment may be stored as a whole vector past
// its end (the next segment, the row's zero padding or the next row overwrites the excess;
// dst has IM2COL_SLACK elements past the last row, kernels.h): one load and one store for a stem's 9
// values instead of masked ones (a masked store took a third of the gather). The load must
// stay inside the input.
template <typename T> inline void copy_segment(T* dst, const T* src, int64_t n, const T* src_end) {
  constexpr int E = int(sizeof(vf) / sizeof(T));
  if (n <= E && src + E <= src_end) *reinterpret_cast<vf_mem*>(dst) = *reinterpret_cast<const vf_mem*>(src);
  else copy_elems(dst, src, n);
}

template <typename T>
void im2col_rows(const Im2colArgs& a, void* out, int64_t m0, int64_t m1) {
  const T* src = static_cast<const T*>(a.x);
  const T* src_end = src + a.N * a.H * a.W * a.C;
  T* dst = static_cast<T*>(out);
  int64_t n = m0 / (a.OH * a.OW), oh = m0 / a.OW % a.OH, ow = m0 % a.OW;
  for (int64_t m = m0; m < m1; ++m) {
    T* o = dst + (m - m0) * a.ld;
    for (int64_t q = 0; q < a.n_segs; ++q) {
      const int64_t* s = a.segs + 5 * q;
      const int64_t ih = oh * a.sh - a.pt + s[0] * a.dh, iw = ow * a.sw - a.pl + s[1] * a.dw;
      const int64_t c0 = s[2], width = s[3] - s[2], pixels = s[4];
      if (ih < 0 || ih >= a.H) {
        zero_elems(o, pixels * width);
      } else {
        const T* row = src + (n * a.H + ih) * a.W * a.C;
        if (iw >= 0 && iw + (pixels - 1) * a.dw < a.W) {
          copy_segment(o, row + iw * a.C + c0, pixels * width, src_end);   // (pixels > 1: whole, consecutive)
        } else {
          for (int64_t p = 0; p < pixels; ++p) {
            const int64_t w = iw + p * a.dw;
            if (w < 0 || w >= a.W) zero_elems(o + p * width, width);
            else copy_elems(o + p * width, row + w * a.C + c0, width);
          }
        }
      }
      o += pixels * width;
    }
    zero_elems(o, a.ld - a.K);
    if (++ow == a.OW) {
      ow = 0;
      if (++oh == a.OH) oh = 0, ++n;
    }
  }
}
