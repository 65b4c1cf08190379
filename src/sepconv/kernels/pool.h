// Global average pooling of channels_last rows (PoolFn in kernels.h). Included inside one ISA's
// namespace (isa_build.h).

// Tasks of (image, 64 channels): four vectors of float32 sums in registers over the image's
// pixels, one pass over the rows.
template <typename T>
void global_avg_pool_rows(const void* x_, int64_t B, int64_t P, int64_t C, void* y_) {
  const T* x = static_cast<const T*>(x_);
  T* y = static_cast<T*>(y_);
  constexpr int64_t CB = 4 * VL;
  const int64_t blocks = (C + CB - 1) / CB;
  at::parallel_for(0, B * blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / blocks, c0 = t % blocks * CB, n = std::min(CB, C - c0);
      const int l[4] = {(int)std::clamp<int64_t>(n, 0, VL), (int)std::clamp<int64_t>(n - VL, 0, VL),
                        (int)std::clamp<int64_t>(n - 2 * VL, 0, VL), (int)std::clamp<int64_t>(n - 3 * VL, 0, VL)};
      vf acc[4] = {};
      const T* row = x + b * P * C + c0;
      for (int64_t q = 0; q < P; ++q, row += C)
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v)
          if (l[v] > 0) acc[v] += load_lanes(row + v * VL, l[v]);
      const vf inv = splat(1.0f / static_cast<float>(P));
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v)
        if (l[v] > 0) store_lanes(y + b * C + c0 + v * VL, acc[v] * inv, l[v]);
    }
  });
}
