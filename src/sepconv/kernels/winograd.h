// Winograd forward kernels for depthwise 3x3, stride 1, dilation 1 (inference), fused with
// bias and an activation. Included inside one ISA's namespace (isa_build.h).

// Row-wise Winograd F(2,3) for 3x3, stride 1, dilation 1 (inference). For each output row
// and pair of outputs, each of the three input rows contributes (B^T d) * U_r, with
// U_r = G g_r precomputed per channel (passed in as float32 (3, 4, C)); the pair is A^T of
// the sum: 12 multiplies per 2 outputs instead of 18. B^T and A^T are the F(2,3) matrices of
// sepconv.functional.winograd.transforms(2) (points 0, 1, -1), in kernels.h.

template <typename T>
void winograd_rows_kernel(const void* xv, const float* u, const float* b, void* yv, const Geometry& g, const Act& act) {
  const T* x = static_cast<const T*>(xv);
  T* y = static_cast<T*>(yv);
  const bool relu = act.kind == ACT_RELU, post = act.kind > ACT_RELU;
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
          store_lanes(yr + (2 * t) * g.C + cb, relu_if(y0, relu), lanes);
          if (2 * t + 1 < g.OW) store_lanes(yr + (2 * t + 1) * g.C + cb, relu_if(y1, relu), lanes);
        }
      }
      if (post) activate_rows(yr, g.OW * g.C, act);
    }
  });
}

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
void winograd2d_kernel(const void* xv, const float* u, const float* b, void* yv, const Geometry& g, const Act& act) {
  const T* x = static_cast<const T*>(xv);
  T* y = static_cast<T*>(yv);
  const bool relu = act.kind == ACT_RELU, post = act.kind > ACT_RELU;
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
              store_lanes(yn + ((oh + i) * g.OW + ow + j) * g.C + cb, relu_if(out[j] + bv, relu), lanes);
            }
          }
        }
      }
      if (post) activate_rows(yn + oh * g.OW * g.C, std::min<int64_t>(M, g.OH - oh) * g.OW * g.C, act);
    }
  });
}

