// Bilinear sampling kernels of the fused CPU modulated deformable convolution (sdnet_plugin.ops, backend 'fused').
//
// The convolution is split into a sampling step done here and matrix products done by torch (oneDNN, AMX for
// bfloat16):
//   forward:  cols[b, n, k, c] = mask[b, k, n] * bilinear(x[b, :, :, c], p[b, k, n])          (this file)
//             out[b, n, :]     = cols[b, n, :] @ weight(K * C, C_out)                           (torch)
//   backward: gcols = gout @ weight^T, gweight = gout^T @ cols                                  (torch)
//             grad of x, offset and mask from gcols                                             (this file)
// x is channels-last (B, H, W, C contiguous), so each bilinear corner reads C contiguous values and the inner loops
// vectorise. Offsets (interleaved dy, dx per kernel point) and masks are read through their strides, any layout.
// Element types: float, double, and bfloat16 stored as uint16 (accumulation in float).
// Plain C ABI (no Python or torch headers): loaded with ctypes, built in about a second.
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define SDNET_AVX512_BF16 1
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define SDNET_AMX 1
#endif
#endif

namespace {

typedef uint16_t bf16;

inline float to_acc(bf16 v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }

template <typename T, typename A> inline T from_acc(A v);
template <> inline float from_acc<float, float>(float v) { return v; }
template <> inline double from_acc<double, double>(double v) { return v; }
template <> inline bf16 from_acc<bf16, float>(float v) {  // round to nearest even, NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<bf16>(bits >> 16);
}

constexpr int64_t kPrefetchAhead = 6;  // pixels

struct Geometry {
  int64_t batch, channels, height, width;  // input
  int64_t out_h, out_w, row0, rows;        // output rows row0 .. row0 + rows - 1
  int64_t kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  const int64_t *x_strides;    // (b, h, w); channels are contiguous
  const int64_t *off_strides;  // (b, 2k, h, w)
  const int64_t *mask_strides; // (b, k, h, w)
};

// Bilinear data of every sampling point of one output row, kernel point by kernel point ([k][ow] arrays), computed
// in loops over the row's pixels that the compiler vectorises. Corner (i, j) of a point is (row[i], col[j]) (clamped
// into the input), weighs ay[i] * ax[j] (zero outside the input), and that weight's derivatives with respect to the
// sampling position are dy[i] * ax[j] and ay[i] * dx[j].
template <typename A> struct RowPoints {
  int64_t n;  // K * W_out
  std::vector<int32_t> index;  // row0, row1, col0, col1: 4 arrays of n
  std::vector<A> value;        // ay0, ay1, ax0, ax1, dy0, dy1, dx0, dx1, mask: 9 arrays of n
  std::vector<A> staged;       // offsets and masks of one kernel point, read through their strides
  RowPoints(int64_t k, int64_t wo) : n(k * wo), index(4 * n), value(9 * n), staged(3 * wo) {}
  int32_t *idx(int a) { return index.data() + a * n; }
  A *val(int a) { return value.data() + a * n; }
};

template <typename O, typename A>
void row_points(const Geometry &g, const O *offset, const O *mask, int64_t b, int64_t oh, RowPoints<A> &rp) {
  const int64_t K = g.kh * g.kw, Wo = g.out_w, stride_w = g.stride_w;
  const int64_t *os = g.off_strides, *ms = g.mask_strides;
  const A hi_y = static_cast<A>(g.height - 1), hi_x = static_cast<A>(g.width - 1);
  const O *off = offset + b * os[0] + oh * os[2], *msk = mask + b * ms[0] + oh * ms[2];
  A *oy = rp.staged.data(), *ox = oy + Wo, *om = ox + Wo;
  for (int64_t k = 0; k < K; ++k) {
    const A ky = static_cast<A>(oh * g.stride_h - g.pad_h + (k / g.kw) * g.dil_h);
    const A kx = static_cast<A>((k % g.kw) * g.dil_w - g.pad_w);
    const O *off_y = off + 2 * k * os[1], *off_x = off + (2 * k + 1) * os[1], *mk = msk + k * ms[1];
    for (int64_t ow = 0; ow < Wo; ++ow) {
      oy[ow] = to_acc(off_y[ow * os[3]]);
      ox[ow] = to_acc(off_x[ow * os[3]]);
      om[ow] = to_acc(mk[ow * ms[3]]);
    }
    const int64_t s = k * Wo;
    int32_t *r0 = rp.idx(0) + s, *r1 = rp.idx(1) + s, *c0 = rp.idx(2) + s, *c1 = rp.idx(3) + s;
    A *ay0 = rp.val(0) + s, *ay1 = rp.val(1) + s, *ax0 = rp.val(2) + s, *ax1 = rp.val(3) + s;
    A *dy0 = rp.val(4) + s, *dy1 = rp.val(5) + s, *dx0 = rp.val(6) + s, *dx1 = rp.val(7) + s, *mv = rp.val(8) + s;
#pragma omp simd
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const A py = ky + oy[ow], px = static_cast<A>(ow * stride_w) + kx + ox[ow];
      // A NaN position (from non-finite offsets) gets NaN weights but clamped, valid corner indices.
      const A fy = py == py ? std::floor(py) : A(-2), fx = px == px ? std::floor(px) : A(-2);
      const A ly = py - fy, lx = px - fx;
      // A corner outside the input weighs zero; so does every corner of a point one pixel or more outside.
      const A vy0 = A(fy >= 0) * A(fy <= hi_y), vy1 = A(fy >= -1) * A(fy <= hi_y - 1);
      const A vx0 = A(fx >= 0) * A(fx <= hi_x), vx1 = A(fx >= -1) * A(fx <= hi_x - 1);
      ay0[ow] = vy0 * (1 - ly); ay1[ow] = vy1 * ly; ax0[ow] = vx0 * (1 - lx); ax1[ow] = vx1 * lx;
      dy0[ow] = -vy0; dy1[ow] = vy1; dx0[ow] = -vx0; dx1[ow] = vx1;
      mv[ow] = om[ow];
      r0[ow] = static_cast<int32_t>(std::min(std::max(fy, A(0)), hi_y));
      r1[ow] = static_cast<int32_t>(std::min(std::max(fy + 1, A(0)), hi_y));
      c0[ow] = static_cast<int32_t>(std::min(std::max(fx, A(0)), hi_x));
      c1[ow] = static_cast<int32_t>(std::min(std::max(fx + 1, A(0)), hi_x));
    }
  }
}

// Hide the gathers' latency: touch the corners of sampling point j (and, when gx is given, their gradients).
template <typename T, typename A>
inline void prefetch_corners(RowPoints<A> &rp, int64_t j, const T *xb, int64_t x_row, int64_t x_col, const A *gxb,
                             int64_t width, int64_t channels) {
  for (int q = 0; q < 4; ++q) {
    const int64_t y = rp.idx(q >> 1)[j], xc = rp.idx(2 + (q & 1))[j];
    __builtin_prefetch(xb + y * x_row + xc * x_col);
    if (gxb) __builtin_prefetch(gxb + (y * width + xc) * channels, 1);
  }
}

// Point i's corners for the backward pass: input vectors p (x_zero outside the input), gradient targets gp (scratch
// outside; dy, dx are -1 / +1 inside the input, 0 outside) and weights scale = mask * bilinear weight.
template <typename T, typename A>
inline void corners(RowPoints<A> &rp, int64_t i, const T *xb, int64_t x_row, int64_t x_col, A *gxb, int64_t width,
                    int64_t channels, const T *x_zero, A *gx_scratch, const T **p, A **gp, A *scale) {
  const int64_t ys[2] = {rp.idx(0)[i], rp.idx(1)[i]}, xs[2] = {rp.idx(2)[i], rp.idx(3)[i]};
  const A m = rp.val(8)[i], ay[2] = {rp.val(0)[i], rp.val(1)[i]}, ax[2] = {rp.val(2)[i], rp.val(3)[i]};
  const A dy[2] = {rp.val(4)[i], rp.val(5)[i]}, dx[2] = {rp.val(6)[i], rp.val(7)[i]};
  for (int q = 0; q < 4; ++q) {
    const int yi = q >> 1, xi = q & 1;
    const bool inside = dy[yi] != 0 && dx[xi] != 0;
    p[q] = inside ? xb + ys[yi] * x_row + xs[xi] * x_col : x_zero;
    gp[q] = inside ? gxb + (ys[yi] * width + xs[xi]) * channels : gx_scratch;
    scale[q] = m * ay[yi] * ax[xi];
  }
}

// Gradients of a point's mask and sampling position from its four corner dot products dot[q] = g . p[q], its mask m
// and bilinear data (RowPoints); V is a scalar or a vector of points.
template <typename V>
inline void position_gradients(V m, const V *ay, const V *ax, const V *dy, const V *dx, const V *dot, V &gmask,
                               V &goffset_y, V &goffset_x) {
  const V row0 = ax[0] * dot[0] + ax[1] * dot[1], row1 = ax[0] * dot[2] + ax[1] * dot[3];
  gmask = ay[0] * row0 + ay[1] * row1;
  goffset_y = m * (dy[0] * row0 + dy[1] * row1);
  goffset_x = m * (ay[0] * (dx[0] * dot[0] + dx[1] * dot[1]) + ay[1] * (dx[0] * dot[2] + dx[1] * dot[3]));
}

template <typename A>
inline void point_gradients(RowPoints<A> &rp, int64_t i, const A *dot, A *gmask, A *goffset) {
  const A ay[2] = {rp.val(0)[i], rp.val(1)[i]}, ax[2] = {rp.val(2)[i], rp.val(3)[i]};
  const A dy[2] = {rp.val(4)[i], rp.val(5)[i]}, dx[2] = {rp.val(6)[i], rp.val(7)[i]};
  position_gradients<A>(rp.val(8)[i], ay, ax, dy, dx, dot, *gmask, goffset[0], goffset[1]);
}

// One masked bilinear sample of C channels: dst = sum over corners of w[q] * p[q].
// CC > 0 fixes the channel count at compile time (unrolled, vectorised loops for the common widths).
template <typename T, typename A, int64_t CC>
inline void blend(T *__restrict__ dst, const T *__restrict__ p0, const T *__restrict__ p1, const T *__restrict__ p2,
                  const T *__restrict__ p3, A w0, A w1, A w2, A w3, int64_t channels) {
  const int64_t C = CC > 0 ? CC : channels;
#pragma omp simd
  for (int64_t ch = 0; ch < C; ++ch)
    dst[ch] = from_acc<T, A>(w0 * to_acc(p0[ch]) + w1 * to_acc(p1[ch]) + w2 * to_acc(p2[ch]) + w3 * to_acc(p3[ch]));
}

#ifdef SDNET_AVX512_BF16
// bfloat16 with AVX512-BF16: 16 channels at a time, converted back with the processor's rounding instruction.
inline __m512 load_bf16x16(const bf16 *p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

template <>
inline void blend<bf16, float, 16>(bf16 *__restrict__ dst, const bf16 *__restrict__ p0, const bf16 *__restrict__ p1,
                                   const bf16 *__restrict__ p2, const bf16 *__restrict__ p3, float w0, float w1,
                                   float w2, float w3, int64_t) {
  __m512 acc = _mm512_mul_ps(_mm512_set1_ps(w0), load_bf16x16(p0));
  acc = _mm512_fmadd_ps(_mm512_set1_ps(w1), load_bf16x16(p1), acc);
  acc = _mm512_fmadd_ps(_mm512_set1_ps(w2), load_bf16x16(p2), acc);
  acc = _mm512_fmadd_ps(_mm512_set1_ps(w3), load_bf16x16(p3), acc);
  _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(acc)));
}

// 32 channels at a time: one load gives the even channels (lane j: channel 2 j) and the odd ones as float32.
inline void split_bf16x32(const bf16 *p, __m512 &even, __m512 &odd) {
  const __m512i raw = _mm512_loadu_si512(p);
  even = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

inline void store_bf16x32(bf16 *dst, __m512 even, __m512 odd) {  // rounded, back in channel order
  const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  _mm512_storeu_si512(dst, _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(odd, even)));
}

#define SDNET_BLEND_BF16(CC)                                                                                        \
  template <>                                                                                                       \
  inline void blend<bf16, float, CC>(bf16 *__restrict__ dst, const bf16 *__restrict__ p0,                         \
                                     const bf16 *__restrict__ p1, const bf16 *__restrict__ p2,                      \
                                     const bf16 *__restrict__ p3, float w0, float w1, float w2, float w3, int64_t) { \
    const bf16 *p[4] = {p0, p1, p2, p3};                                                                            \
    const __m512 w[4] = {_mm512_set1_ps(w0), _mm512_set1_ps(w1), _mm512_set1_ps(w2), _mm512_set1_ps(w3)};          \
    for (int64_t ch = 0; ch < CC; ch += 32) {                                                                       \
      __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps(), e, o;                                           \
      for (int q = 0; q < 4; ++q) {                                                                                 \
        split_bf16x32(p[q] + ch, e, o);                                                                             \
        even = _mm512_fmadd_ps(w[q], e, even);                                                                      \
        odd = _mm512_fmadd_ps(w[q], o, odd);                                                                        \
      }                                                                                                             \
      store_bf16x32(dst + ch, even, odd);                                                                           \
    }                                                                                                               \
  }
SDNET_BLEND_BF16(32)
SDNET_BLEND_BF16(64)
SDNET_BLEND_BF16(128)
#endif

// The four corners of one sampling point in one pass over the channels: d[q] = sum(g * p[q]) and gp[q] += s[q] * g.
// The corners' gp never alias (corners outside the input point at a scratch vector).
template <typename T, typename A, int64_t CC>
inline void dot_axpy4(const T *__restrict__ g, const T *__restrict__ p0, const T *__restrict__ p1,
                      const T *__restrict__ p2, const T *__restrict__ p3, A *__restrict__ gp0, A *__restrict__ gp1,
                      A *__restrict__ gp2, A *__restrict__ gp3, const A *s, A *d, int64_t channels) {
  const int64_t C = CC > 0 ? CC : channels;
  const A s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
  A d0 = 0, d1 = 0, d2 = 0, d3 = 0;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
  for (int64_t ch = 0; ch < C; ++ch) {
    const A gv = to_acc(g[ch]);
    d0 += gv * to_acc(p0[ch]);
    d1 += gv * to_acc(p1[ch]);
    d2 += gv * to_acc(p2[ch]);
    d3 += gv * to_acc(p3[ch]);
    gp0[ch] += s0 * gv;
    gp1[ch] += s1 * gv;
    gp2[ch] += s2 * gv;
    gp3[ch] += s3 * gv;
  }
  d[0] = d0; d[1] = d1; d[2] = d2; d[3] = d3;
}

// cols: (B, rows, W_out, K, C) contiguous, masked bilinear samples of output rows row0 .. row0 + rows - 1.
template <typename T, typename O, typename A, int64_t CC>
void im2col(const T *x, const O *offset, const O *mask, const Geometry &g, T *cols, int threads) {
  const int64_t C = g.channels, K = g.kh * g.kw, Wo = g.out_w, x_row = g.x_strides[1], x_col = g.x_strides[2];
#pragma omp parallel num_threads(threads)
  {
    RowPoints<A> rp(K, Wo);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < g.batch * g.rows; ++r) {
      const int64_t b = r / g.rows;
      row_points(g, offset, mask, b, g.row0 + r % g.rows, rp);
      const T *xb = x + b * g.x_strides[0];
      T *dst = cols + r * Wo * K * C;
      for (int64_t ow = 0; ow < Wo; ++ow) {
        for (int64_t k = 0; k < K; ++k, dst += C) {
          const int64_t i = k * Wo + ow;
          if (ow + kPrefetchAhead < Wo)  // the corners of a point a few pixels ahead
            prefetch_corners<T, A>(rp, i + kPrefetchAhead, xb, x_row, x_col, nullptr, 0, 0);
          const T *p0 = xb + rp.idx(0)[i] * x_row, *p1 = xb + rp.idx(1)[i] * x_row;
          const int64_t c0 = rp.idx(2)[i] * x_col, c1 = rp.idx(3)[i] * x_col;
          const A m = rp.val(8)[i], ay0 = m * rp.val(0)[i], ay1 = m * rp.val(1)[i];
          const A ax0 = rp.val(2)[i], ax1 = rp.val(3)[i];
          blend<T, A, CC>(dst, p0 + c0, p0 + c1, p1 + c0, p1 + c1, ay0 * ax0, ay0 * ax1, ay1 * ax0, ay1 * ax1, C);
        }
      }
    }
  }
}

// Lane partials instead of sums, for channel counts that are multiples of kLanes: part[q][l] = sum over channels
// ch = l (mod kLanes) of g * p[q], and gp[q] += s[q] * g. The horizontal sums of many points are then taken together
// (lane_sums), far cheaper than one reduction per dot product.
constexpr int kLanes = 16;

template <typename T, typename A, int64_t CC>
inline void dot_axpy4_lanes(const T *__restrict__ g, const T *__restrict__ p0, const T *__restrict__ p1,
                            const T *__restrict__ p2, const T *__restrict__ p3, A *__restrict__ gp0,
                            A *__restrict__ gp1, A *__restrict__ gp2, A *__restrict__ gp3, const A *s,
                            A *__restrict__ part) {
  const A s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
  A a0[kLanes] = {}, a1[kLanes] = {}, a2[kLanes] = {}, a3[kLanes] = {};
  for (int64_t c0 = 0; c0 < CC; c0 += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const int64_t ch = c0 + l;
      const A gv = to_acc(g[ch]);
      a0[l] += gv * to_acc(p0[ch]);
      a1[l] += gv * to_acc(p1[ch]);
      a2[l] += gv * to_acc(p2[ch]);
      a3[l] += gv * to_acc(p3[ch]);
      gp0[ch] += s0 * gv;
      gp1[ch] += s1 * gv;
      gp2[ch] += s2 * gv;
      gp3[ch] += s3 * gv;
    }
  }
  std::memcpy(part, a0, sizeof(a0));
  std::memcpy(part + kLanes, a1, sizeof(a1));
  std::memcpy(part + 2 * kLanes, a2, sizeof(a2));
  std::memcpy(part + 3 * kLanes, a3, sizeof(a3));
}

#ifdef __AVX512F__
// Lane j of the result is the sum of the 16 lanes of v[j] (a transposing tree of additions).
inline __m512 reduce16(const float *part) {
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = _mm512_loadu_ps(part + 2 * i * kLanes), b = _mm512_loadu_ps(part + (2 * i + 1) * kLanes);
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  }
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int i = 0; i < 2; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
#endif

// sums[d] = sum of the kLanes partials part[d][:], for d < count.
inline void lane_sums(const float *part, int64_t count, float *sums) {
  int64_t d = 0;
#ifdef __AVX512F__
  for (; d + 16 <= count; d += 16) _mm512_storeu_ps(sums + d, reduce16(part + d * kLanes));
#endif
  for (; d < count; ++d) {
    float total = 0;
    for (int l = 0; l < kLanes; ++l) total += part[d * kLanes + l];
    sums[d] = total;
  }
}

// Gradients for output rows row0 .. row0 + rows - 1 from gcols (B, rows, W_out, K, C) contiguous, the gradient of the
// masked samples: goffset (B, rows, W_out, K, 2) and gmask (B, rows, W_out, K) are written, gx (B, H, W, C) dense
// accumulates. Threads take whole rows; with several threads each accumulates into its own copy of gx
// (gx + thread * gx_copy_stride), which the caller sums.
template <typename T, typename O, typename A, int64_t CC>
void col2im(const T *x, const O *offset, const O *mask, const Geometry &g, const T *gcols, A *gx, A *goffset,
            A *gmask, int threads, int64_t gx_copy_stride) {
  constexpr bool kLaneMode = std::is_same<A, float>::value && CC > 0 && CC % kLanes == 0;
  const int64_t C = g.channels, K = g.kh * g.kw, Wo = g.out_w, W = g.width;
  const int64_t x_row = g.x_strides[1], x_col = g.x_strides[2];
#pragma omp parallel num_threads(threads)
  {
    RowPoints<A> rp(K, Wo);
    std::vector<T> x_zero(C, from_acc<T, A>(A(0)));
    std::vector<A> gx_scratch(C), dots(4 * K), part(kLaneMode ? 4 * K * kLanes : 0);
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
#pragma omp for schedule(static)
    for (int64_t r = 0; r < g.batch * g.rows; ++r) {
      const int64_t b = r / g.rows;
      row_points(g, offset, mask, b, g.row0 + r % g.rows, rp);
      const T *xb = x + b * g.x_strides[0];
      A *gxb = gx + tid * gx_copy_stride + b * g.height * W * C;
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const int64_t n = r * Wo + ow;
        for (int64_t k = 0; k < K; ++k) {  // gradient of x; the four corner dot products of each point
          const int64_t i = k * Wo + ow;
          if (ow + kPrefetchAhead < Wo)  // inputs and gradients at the corners of a point a few pixels ahead
            prefetch_corners<T, A>(rp, i + kPrefetchAhead, xb, x_row, x_col, gxb, W, C);
          const T *p[4];
          A *gp[4], scale[4];
          corners<T, A>(rp, i, xb, x_row, x_col, gxb, W, C, x_zero.data(), gx_scratch.data(), p, gp, scale);
          const T *gc = gcols + (n * K + k) * C;
          if constexpr (kLaneMode)
            dot_axpy4_lanes<T, A, CC>(gc, p[0], p[1], p[2], p[3], gp[0], gp[1], gp[2], gp[3], scale,
                                      part.data() + 4 * k * kLanes);
          else
            dot_axpy4<T, A, CC>(gc, p[0], p[1], p[2], p[3], gp[0], gp[1], gp[2], gp[3], scale, dots.data() + 4 * k,
                                C);
        }
        if constexpr (kLaneMode) lane_sums(part.data(), 4 * K, dots.data());
        for (int64_t k = 0; k < K; ++k)  // gradients of the mask and of the sampling position
          point_gradients<A>(rp, k * Wo + ow, dots.data() + 4 * k, gmask + n * K + k, goffset + (n * K + k) * 2);
      }
    }
  }
}

// Dispatch on the channel count: the common widths get loops of fixed length.
#define SDNET_DISPATCH_CHANNELS(FN, CHANNELS, ...)                                                                  \
  switch (CHANNELS) {                                                                                               \
    case 16: FN<T, O, A, 16>(__VA_ARGS__); break;                                                                   \
    case 32: FN<T, O, A, 32>(__VA_ARGS__); break;                                                                   \
    case 64: FN<T, O, A, 64>(__VA_ARGS__); break;                                                                   \
    case 128: FN<T, O, A, 128>(__VA_ARGS__); break;                                                                 \
    default: FN<T, O, A, 0>(__VA_ARGS__);                                                                           \
  }

template <typename T, typename O, typename A>
void im2col_any(const T *x, const O *offset, const O *mask, const Geometry &g, T *cols, int threads) {
  SDNET_DISPATCH_CHANNELS(im2col, g.channels, x, offset, mask, g, cols, threads)
}

template <typename T, typename O, typename A>
void col2im_any(const T *x, const O *offset, const O *mask, const Geometry &g, const T *gcols, A *gx, A *goffset,
                A *gmask, int threads, int64_t gx_copy_stride) {
  SDNET_DISPATCH_CHANNELS(col2im, g.channels, x, offset, mask, g, gcols, gx, goffset, gmask, threads, gx_copy_stride)
}

#ifdef SDNET_AMX
// Fused bfloat16 path on AMX tiles: the matrix products run inside the kernel on blocks of a row's pixels, so columns
// are never written to memory, and the backward pass samples the columns again instead of keeping them.
// Every tile is 16 rows of 64 bytes: A operands (16 x 32 bfloat16), B operands (16 row pairs x 16 columns,
// interleaved) and float32 accumulators (16 x 16). Channel counts are multiples of 16.
struct TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

inline void tiles_begin() {
  alignas(64) TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // The compiler does not see the configuration instruction read the structure: make the stores happen first.
  __asm__ __volatile__("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// Groups of G <= 4 accumulators (tiles 0 .. G - 1) sharing an A operand (tile 4), B operands in tiles 6 and 7 in turn;
// independent accumulators keep the tile unit busy. Steps and strides: elements and bytes.
template <int G> inline void tiles_zero() {
  _tile_zero(0);
  if constexpr (G > 1) _tile_zero(1);
  if constexpr (G > 2) _tile_zero(2);
  if constexpr (G > 3) _tile_zero(3);
}

template <int G> inline void tiles_load(const float *c, int64_t step, int64_t stride) {
  _tile_loadd(0, c, stride);
  if constexpr (G > 1) _tile_loadd(1, c + step, stride);
  if constexpr (G > 2) _tile_loadd(2, c + 2 * step, stride);
  if constexpr (G > 3) _tile_loadd(3, c + 3 * step, stride);
}

template <int G> inline void tiles_store(float *c, int64_t step, int64_t stride) {
  _tile_stored(0, c, stride);
  if constexpr (G > 1) _tile_stored(1, c + step, stride);
  if constexpr (G > 2) _tile_stored(2, c + 2 * step, stride);
  if constexpr (G > 3) _tile_stored(3, c + 3 * step, stride);
}

// Accumulator g += A x B_g, B_g at b + g * b_step.
template <int G>
inline void tiles_dot(const bf16 *a, int64_t a_stride, const bf16 *b, int64_t b_step, int64_t b_stride) {
  _tile_loadd(4, a, a_stride);
  _tile_loadd(6, b, b_stride);
  _tile_dpbf16ps(0, 4, 6);
  if constexpr (G > 1) {
    _tile_loadd(7, b + b_step, b_stride);
    _tile_dpbf16ps(1, 4, 7);
  }
  if constexpr (G > 2) {
    _tile_loadd(6, b + 2 * b_step, b_stride);
    _tile_dpbf16ps(2, 4, 6);
  }
  if constexpr (G > 3) {
    _tile_loadd(7, b + 3 * b_step, b_stride);
    _tile_dpbf16ps(3, 4, 7);
  }
}

// fn(std::integral_constant<int, G>, first tile) over tiles 0 .. count - 1 in groups of 4, 2 and 1.
template <typename F> inline void tile_groups(int64_t count, F &&fn) {
  int64_t t = 0;
  for (; t + 4 <= count; t += 4) fn(std::integral_constant<int, 4>(), t);
  for (; t + 2 <= count; t += 2) fn(std::integral_constant<int, 2>(), t);
  for (; t < count; ++t) fn(std::integral_constant<int, 1>(), t);
}

// The B operand tiles of a product with reduction length n_k and width n_n, from m(k, n) = src[k * sk + n * sn]:
// tile (kt, nt) holds m(kt * 32 + 2 r + i, nt * 16 + n) at [r][2 n + i], zero outside.
std::vector<bf16> pack_pairs(const bf16 *src, int64_t n_k, int64_t n_n, int64_t sk, int64_t sn) {
  const int64_t kt_count = (n_k + 31) / 32, nt_count = (n_n + 15) / 16;
  std::vector<bf16> pack(kt_count * nt_count * 512, 0);
  for (int64_t k = 0; k < n_k; ++k)
    for (int64_t n = 0; n < n_n; ++n)
      pack[((k / 32 * nt_count + n / 16) * 16 + k % 32 / 2) * 32 + 2 * (n % 16) + k % 2] = src[k * sk + n * sn];
  return pack;
}

// Rows 2 r and 2 r + 1 of src (count rows of width elements, multiples of 16, row stride src_stride) interleaved
// into dst row r (2 * width elements): the B operand layout of a product over those rows; missing rows are zero.
inline void interleave_pairs(const bf16 *src, int64_t src_stride, int64_t count, int64_t width, bf16 *dst) {
  const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int64_t r = 0; r < 16; ++r) {
    const bf16 *a = src + 2 * r * src_stride, *z = a + src_stride;
    const bool has_a = 2 * r < count, has_z = 2 * r + 1 < count;
    for (int64_t n = 0; n < width; n += 16) {
      const __m256i va = has_a ? _mm256_loadu_si256(reinterpret_cast<const __m256i *>(a + n)) : _mm256_setzero_si256();
      const __m256i vz = has_z ? _mm256_loadu_si256(reinterpret_cast<const __m256i *>(z + n)) : _mm256_setzero_si256();
      _mm512_storeu_si512(dst + r * 2 * width + 2 * n,
                          _mm512_permutexvar_epi16(order, _mm512_inserti64x4(_mm512_castsi256_si512(va), vz, 1)));
    }
  }
}

// out (B, Ho, Wo, C_out) = columns @ weight^T + bias; weight (C_out, K * C), bias float32 or null.
template <typename O, int64_t CC>
void forward_tiles(const bf16 *x, const O *offset, const O *mask, const Geometry &g, const bf16 *weight,
                   const float *bias, int64_t c_out, bf16 *out, int threads) {
  const int64_t K = g.kh * g.kw, KC = K * CC, Wo = g.out_w, x_row = g.x_strides[1], x_col = g.x_strides[2];
  const int64_t kt_count = (KC + 31) / 32, nt_count = (c_out + 15) / 16, stride = kt_count * 32;
  const std::vector<bf16> wpack = pack_pairs(weight, KC, c_out, 1, KC);
#pragma omp parallel num_threads(threads)
  {
    RowPoints<float> rp(K, Wo);
    std::vector<bf16> cols(16 * stride, 0);  // 16 pixels' columns, zero-padded to whole tiles
    alignas(64) float acc[4 * 256];
    tiles_begin();
#pragma omp for schedule(static)
    for (int64_t r = 0; r < g.batch * g.rows; ++r) {
      const int64_t b = r / g.rows, oh = g.row0 + r % g.rows;
      row_points(g, offset, mask, b, oh, rp);
      const bf16 *xb = x + b * g.x_strides[0];
      bf16 *orow = out + (b * g.out_h + oh) * Wo * c_out;
      for (int64_t ow0 = 0; ow0 < Wo; ow0 += 16) {
        const int64_t count = std::min<int64_t>(16, Wo - ow0);  // rows past it keep stale columns, never stored
        for (int64_t ow = ow0; ow < ow0 + count; ++ow) {
          bf16 *dst = cols.data() + (ow - ow0) * stride;
          for (int64_t k = 0; k < K; ++k, dst += CC) {
            const int64_t i = k * Wo + ow;
            if (ow + kPrefetchAhead < Wo)
              prefetch_corners<bf16, float>(rp, i + kPrefetchAhead, xb, x_row, x_col, nullptr, 0, 0);
            const bf16 *p0 = xb + rp.idx(0)[i] * x_row, *p1 = xb + rp.idx(1)[i] * x_row;
            const int64_t c0 = rp.idx(2)[i] * x_col, c1 = rp.idx(3)[i] * x_col;
            const float m = rp.val(8)[i], ay0 = m * rp.val(0)[i], ay1 = m * rp.val(1)[i];
            const float ax0 = rp.val(2)[i], ax1 = rp.val(3)[i];
            blend<bf16, float, CC>(dst, p0 + c0, p0 + c1, p1 + c0, p1 + c1, ay0 * ax0, ay0 * ax1, ay1 * ax0,
                                   ay1 * ax1, CC);
          }
        }
        tile_groups(nt_count, [&](auto group, int64_t nt0) {
          constexpr int G = decltype(group)::value;
          tiles_zero<G>();
          for (int64_t kt = 0; kt < kt_count; ++kt)
            tiles_dot<G>(cols.data() + kt * 32, stride * 2, wpack.data() + (kt * nt_count + nt0) * 512, 512, 64);
          tiles_store<G>(acc, 256, 64);
          for (int64_t nt = nt0; nt < nt0 + G; ++nt) {
            const int64_t n0 = nt * 16;
            const __mmask16 lanes = static_cast<__mmask16>((1u << std::min<int64_t>(16, c_out - n0)) - 1);
            const __m512 bv = bias ? _mm512_maskz_loadu_ps(lanes, bias + n0) : _mm512_setzero_ps();
            const float *tile = acc + (nt - nt0) * 256;
            for (int64_t p = 0; p < count; ++p)
              _mm256_mask_storeu_epi16(orow + (ow0 + p) * c_out + n0, lanes,
                                       (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(_mm512_loadu_ps(tile + 16 * p), bv)));
          }
        });
      }
    }
    _tile_release();
  }
}

// One sampling point of the backward pass (CC channels): the masked sample into col (bfloat16), the lane partials of
// the four corner dot products g . p[q] into part + q * part_stride (kLanes each), and gp[q] += scale[q] * g.
template <int64_t CC>
inline void point_tiles(const float *g, const bf16 *const *p, float *const *gp, const float *scale, float *part,
                        int64_t part_stride, bf16 *col) {
  __m512 dot[4], s[4];
  for (int q = 0; q < 4; ++q) {
    dot[q] = _mm512_setzero_ps();
    s[q] = _mm512_set1_ps(scale[q]);
  }
  if constexpr (CC % 32 == 0) {  // the dot products on bfloat16 pairs (g rounded), the sample from split channels
    for (int64_t c = 0; c < CC; c += 32) {
      const __m512 g0 = _mm512_loadu_ps(g + c), g1 = _mm512_loadu_ps(g + c + 16);
      const __m512bh gh = _mm512_cvtne2ps_pbh(g1, g0);
      __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps(), e, o;
      for (int q = 0; q < 4; ++q) {
        dot[q] = _mm512_dpbf16_ps(dot[q], gh, (__m512bh)_mm512_loadu_si512(p[q] + c));
        split_bf16x32(p[q] + c, e, o);
        even = _mm512_fmadd_ps(s[q], e, even);
        odd = _mm512_fmadd_ps(s[q], o, odd);
        _mm512_storeu_ps(gp[q] + c, _mm512_fmadd_ps(s[q], g0, _mm512_loadu_ps(gp[q] + c)));
        _mm512_storeu_ps(gp[q] + c + 16, _mm512_fmadd_ps(s[q], g1, _mm512_loadu_ps(gp[q] + c + 16)));
      }
      store_bf16x32(col + c, even, odd);
    }
  } else {
    for (int64_t c = 0; c < CC; c += 16) {
      const __m512 gv = _mm512_loadu_ps(g + c);
      __m512 v = _mm512_setzero_ps();
      for (int q = 0; q < 4; ++q) {
        const __m512 pv = load_bf16x16(p[q] + c);
        dot[q] = _mm512_fmadd_ps(gv, pv, dot[q]);
        v = _mm512_fmadd_ps(s[q], pv, v);
        _mm512_storeu_ps(gp[q] + c, _mm512_fmadd_ps(s[q], gv, _mm512_loadu_ps(gp[q] + c)));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i *>(col + c), (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
  for (int q = 0; q < 4; ++q) _mm512_storeu_ps(part + q * part_stride, dot[q]);
}

// Backward pass from grad (B, Ho, Wo, C_out): per block of 32 pixels of a row, the column gradient grad @ weight
// (tiles), the scatter into gx and the mask and position gradients, the columns sampled again, and
// gweight += grad^T @ columns (tiles). gx (copies x (B, H, W, C), uninitialised) is written: with one copy the threads
// take whole images (disjoint targets); with one copy per thread they take rows, and the copies are summed into the
// first one. goffset and gmask as in col2im; gweight (C_out, K * C) and gbias (C_out) are written.
constexpr int64_t kBlocks = 4;  // blocks of 32 pixels per weight-gradient update

template <typename O, int64_t CC>
void backward_tiles(const bf16 *x, const O *offset, const O *mask, const Geometry &g, const bf16 *weight,
                    int64_t c_out, const bf16 *grad, float *gx, float *goffset, float *gmask, float *gweight,
                    float *gbias, int threads, int copies, int64_t gx_copy_stride) {
  const int64_t K = g.kh * g.kw, KC = K * CC, Wo = g.out_w, W = g.width;
  const int64_t x_row = g.x_strides[1], x_col = g.x_strides[2];
  const int64_t ct_count = (c_out + 31) / 32, c_pad = ct_count * 32, mt_count = (c_out + 15) / 16, nt_count = KC / 16;
  const std::vector<bf16> wpack = pack_pairs(weight, c_out, KC, KC, 1);
  std::fill(gweight, gweight + c_out * KC, 0.f);
  std::fill(gbias, gbias + c_out, 0.f);
#pragma omp parallel num_threads(threads)
  {
    RowPoints<float> rp(K, Wo);
    std::vector<bf16> x_zero(CC, 0), gout(32 * c_pad), gout_pairs(32 * c_pad), gout_t(kBlocks * c_pad * 32),
        cols(32 * KC), pairs(kBlocks * 32 * KC);
    const __m512i pair_rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                 _mm512_set1_epi32(static_cast<int>(c_pad)));
    std::vector<float> gx_scratch(CC), part(4 * K * 16 * kLanes), gcols(16 * KC);
    std::vector<float> gw(mt_count * 16 * KC, 0.f), gb(c_out, 0.f);
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    tiles_begin();
    auto backward_row = [&](int64_t b, int64_t oh, float *gxb) {  // after row_points
      const int64_t r = b * g.rows + oh - g.row0;
      const bf16 *xb = x + b * g.x_strides[0], *grow = grad + (b * g.out_h + oh) * Wo * c_out;
      for (int64_t ow0 = 0; ow0 < Wo; ow0 += 32) {
        const int64_t count = std::min<int64_t>(32, Wo - ow0), slot = ow0 / 32 % kBlocks;
        // The block's output gradient (A operand of the column gradient; a zero-padded copy unless whole), its
        // transpose (A operand of the weight gradient) and the bias gradient.
        const bf16 *ga = grow + ow0 * c_out;
        int64_t ga_stride = c_out;
        if (c_out != c_pad || count < 32) {
          for (int64_t p = 0; p < 32; ++p)
            for (int64_t co = 0; co < c_pad; ++co)
              gout[p * c_pad + co] = p < count && co < c_out ? ga[p * c_out + co] : bf16(0);
          ga = gout.data();
          ga_stride = c_pad;
        }
        for (int64_t p = 0; p < count; ++p)
          for (int64_t co = 0; co < c_out; ++co) gb[co] += to_acc(ga[p * ga_stride + co]);
        interleave_pairs(ga, ga_stride, count, c_pad, gout_pairs.data());
        for (int64_t co = 0; co < mt_count * 16; ++co)  // pixel pairs are 32-bit elements: gather them
          _mm512_storeu_si512(gout_t.data() + (slot * c_pad + co) * 32,
                              _mm512_i32gather_epi32(pair_rows, gout_pairs.data() + 2 * co, 4));
        for (int64_t h0 = ow0; h0 < ow0 + count; h0 += 16) {  // 16 pixels at a time
          const int64_t n16 = std::min<int64_t>(16, ow0 + count - h0);
          tile_groups(nt_count, [&](auto group, int64_t nt) {  // their column gradient, float32
            constexpr int G = decltype(group)::value;
            tiles_zero<G>();
            for (int64_t ct = 0; ct < ct_count; ++ct)
              tiles_dot<G>(ga + (h0 - ow0) * ga_stride + ct * 32, ga_stride * 2,
                           wpack.data() + (ct * nt_count + nt) * 512, 512, 64);
            tiles_store<G>(gcols.data() + nt * 16, 16, KC * 4);
          });
          for (int64_t ow = h0; ow < h0 + n16; ++ow)
            for (int64_t k = 0; k < K; ++k) {
              const int64_t i = k * Wo + ow;
              if (ow + kPrefetchAhead < Wo)
                prefetch_corners<bf16, float>(rp, i + kPrefetchAhead, xb, x_row, x_col, gxb, W, CC);
              const bf16 *p[4];
              float *gp[4], scale[4];
              corners<bf16, float>(rp, i, xb, x_row, x_col, gxb, W, CC, x_zero.data(), gx_scratch.data(), p, gp,
                                   scale);
              point_tiles<CC>(gcols.data() + (ow - h0) * KC + k * CC, p, gp, scale,
                              part.data() + (4 * k * 16 + ow - h0) * kLanes, 16 * kLanes,
                              cols.data() + (ow - ow0) * KC + k * CC);
            }
          // Mask and position gradients, a vector of 16 pixels per kernel point.
          const __mmask16 lanes = static_cast<__mmask16>((1u << n16) - 1);
          for (int64_t k = 0; k < K; ++k) {
            const int64_t i = k * Wo + h0;
            __m512 v[9], dot[4], gm, gy, gxo;
            for (int a = 0; a < 9; ++a) v[a] = _mm512_maskz_loadu_ps(lanes, rp.val(a) + i);
            for (int q = 0; q < 4; ++q) dot[q] = reduce16(part.data() + (4 * k + q) * 16 * kLanes);
            position_gradients<__m512>(v[8], v, v + 2, v + 4, v + 6, dot, gm, gy, gxo);
            alignas(64) float out[48];
            _mm512_store_ps(out, gm);
            _mm512_store_ps(out + 16, gy);
            _mm512_store_ps(out + 32, gxo);
            for (int64_t j = 0; j < n16; ++j) {
              const int64_t n = r * Wo + h0 + j;
              gmask[n * K + k] = out[j];
              goffset[(n * K + k) * 2] = out[16 + j];
              goffset[(n * K + k) * 2 + 1] = out[32 + j];
            }
          }
        }
        interleave_pairs(cols.data(), KC, count, KC, pairs.data() + slot * 32 * KC);  // pixels past the row: zero
        if (slot + 1 == kBlocks || ow0 + 32 >= Wo)  // weight gradient of the last blocks
          for (int64_t mt = 0; mt < mt_count; ++mt)
            tile_groups(nt_count, [&](auto group, int64_t nt) {
              constexpr int G = decltype(group)::value;
              float *target = gw.data() + mt * 16 * KC + nt * 16;
              tiles_load<G>(target, 16, KC * 4);
              for (int64_t s = 0; s <= slot; ++s)
                tiles_dot<G>(gout_t.data() + (s * c_pad + mt * 16) * 32, 64, pairs.data() + s * 32 * KC + nt * 32, 32,
                             KC * 4);
              tiles_store<G>(target, 16, KC * 4);
            });
      }
    };
    const int64_t row_size = W * CC;
    if (copies == 1) {  // whole images per thread: disjoint scatter targets, zeroed just ahead of the scatter
#pragma omp for schedule(static)
      for (int64_t b = 0; b < g.batch; ++b) {
        float *gxb = gx + b * g.height * row_size;
        int64_t zeroed = 0;  // rows of gxb zeroed so far
        for (int64_t oh = g.row0; oh < g.row0 + g.rows; ++oh) {
          row_points(g, offset, mask, b, oh, rp);
          int32_t last = 0;  // the row's lowest sampled input row (corner rows are clamped into the input)
          for (int64_t j = 0; j < K * Wo; ++j) last = std::max(last, rp.idx(1)[j]);
          if (last >= zeroed) {
            std::fill(gxb + zeroed * row_size, gxb + (last + 1) * row_size, 0.f);
            zeroed = last + 1;
          }
          backward_row(b, oh, gxb);
        }
        std::fill(gxb + zeroed * row_size, gxb + g.height * row_size, 0.f);
      }
    } else {  // rows per thread, each thread scattering into its own copy; the copies summed into the first one
      std::fill(gx + tid * gx_copy_stride, gx + (tid + 1) * gx_copy_stride, 0.f);
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t r = 0; r < g.batch * g.rows; ++r) {
        const int64_t b = r / g.rows, oh = g.row0 + r % g.rows;
        row_points(g, offset, mask, b, oh, rp);
        backward_row(b, oh, gx + tid * gx_copy_stride + b * g.height * row_size);
      }
#pragma omp for schedule(static)
      for (int64_t j = 0; j < gx_copy_stride; ++j)
        for (int t = 1; t < copies; ++t) gx[j] += gx[t * gx_copy_stride + j];
    }
    _tile_release();
#pragma omp critical
    {
      for (int64_t j = 0; j < c_out * KC; ++j) gweight[j] += gw[j];
      for (int64_t co = 0; co < c_out; ++co) gbias[co] += gb[co];
    }
  }
}

bool tiles_ready() {  // AMX state must be granted by the kernel once per process (Linux arch_prctl)
  static const bool ready = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return ready;
}

#define SDNET_DISPATCH_TILES(FN, CHANNELS, ...)                                                                      \
  switch (CHANNELS) {                                                                                               \
    case 16: FN<O, 16>(__VA_ARGS__); return 0;                                                                      \
    case 32: FN<O, 32>(__VA_ARGS__); return 0;                                                                      \
    case 64: FN<O, 64>(__VA_ARGS__); return 0;                                                                      \
    case 128: FN<O, 128>(__VA_ARGS__); return 0;                                                                    \
    default: return -1;                                                                                             \
  }
#else
bool tiles_ready() { return false; }
#define SDNET_DISPATCH_TILES(FN, CHANNELS, ...) return -1;
#endif

template <typename O>
int forward_tiles_any(const bf16 *x, const O *offset, const O *mask, const Geometry &g, const bf16 *weight,
                      const float *bias, int64_t c_out, bf16 *out, int threads) {
  SDNET_DISPATCH_TILES(forward_tiles, g.channels, x, offset, mask, g, weight, bias, c_out, out, threads)
}

template <typename O>
int backward_tiles_any(const bf16 *x, const O *offset, const O *mask, const Geometry &g, const bf16 *weight,
                       int64_t c_out, const bf16 *grad, float *gx, float *goffset, float *gmask, float *gweight,
                       float *gbias, int threads, int copies, int64_t gx_copy_stride) {
  SDNET_DISPATCH_TILES(backward_tiles, g.channels, x, offset, mask, g, weight, c_out, grad, gx, goffset, gmask,
                       gweight, gbias, threads, copies, gx_copy_stride)
}

Geometry make_geometry(const int64_t *dims, const int64_t *strides) {
  // dims: batch, channels, height, width, out_h, out_w, row0, rows, kh, kw, stride_h, stride_w, pad_h, pad_w,
  // dil_h, dil_w; strides: x (b, h, w), offset (b, c, h, w), mask (b, c, h, w)
  Geometry g;
  g.batch = dims[0]; g.channels = dims[1]; g.height = dims[2]; g.width = dims[3];
  g.out_h = dims[4]; g.out_w = dims[5]; g.row0 = dims[6]; g.rows = dims[7];
  g.kh = dims[8]; g.kw = dims[9]; g.stride_h = dims[10]; g.stride_w = dims[11];
  g.pad_h = dims[12]; g.pad_w = dims[13]; g.dil_h = dims[14]; g.dil_w = dims[15];
  g.x_strides = strides;
  g.off_strides = strides + 3;
  g.mask_strides = strides + 7;
  return g;
}

}  // namespace

extern "C" {

int sdnet_dcn_abi_version() { return 5; }

// 1 when the fused bfloat16 path on AMX tiles can run here (built for and granted by this processor and kernel).
int sdnet_dcn_tiles_ready() { return tiles_ready() ? 1 : 0; }

// NAME: element type of x and the columns, then of the offsets and masks.
#define SDNET_DCN_ENTRY(NAME, T, O, A)                                                                                \
  void sdnet_dcn_im2col_##NAME(const void *x, const void *offset, const void *mask, const int64_t *dims,          \
                               const int64_t *strides, void *cols, int threads) {                                \
    im2col_any<T, O, A>(static_cast<const T *>(x), static_cast<const O *>(offset), static_cast<const O *>(mask),         \
                 make_geometry(dims, strides), static_cast<T *>(cols), threads);                                  \
  }                                                                                                               \
  void sdnet_dcn_col2im_##NAME(const void *x, const void *offset, const void *mask, const int64_t *dims,          \
                               const int64_t *strides, const void *gcols, void *gx, void *goffset, void *gmask,   \
                               int threads, int64_t gx_copy_stride) {                                             \
    col2im_any<T, O, A>(static_cast<const T *>(x), static_cast<const O *>(offset), static_cast<const O *>(mask),         \
                 make_geometry(dims, strides), static_cast<const T *>(gcols), static_cast<A *>(gx),               \
                 static_cast<A *>(goffset), static_cast<A *>(gmask), threads, gx_copy_stride);                           \
  }

// The fused bfloat16 path (NAME: element type of the offsets and masks); -1 for channel counts it does not take.
#define SDNET_DCN_TILES_ENTRY(NAME, O)                                                                              \
  int sdnet_dcn_forward_tiles_##NAME(const void *x, const void *offset, const void *mask, const int64_t *dims,    \
                                     const int64_t *strides, const void *weight, const void *bias, int64_t c_out, \
                                     void *out, int threads) {                                                    \
    return forward_tiles_any<O>(static_cast<const bf16 *>(x), static_cast<const O *>(offset),                      \
                                static_cast<const O *>(mask), make_geometry(dims, strides),                        \
                                static_cast<const bf16 *>(weight), static_cast<const float *>(bias), c_out,        \
                                static_cast<bf16 *>(out), threads);                                                \
  }                                                                                                               \
  int sdnet_dcn_backward_tiles_##NAME(const void *x, const void *offset, const void *mask, const int64_t *dims,   \
                                      const int64_t *strides, const void *weight, int64_t c_out, const void *grad, \
                                      void *gx, void *goffset, void *gmask, void *gweight, void *gbias,           \
                                      int threads, int copies, int64_t gx_copy_stride) {                          \
    return backward_tiles_any<O>(static_cast<const bf16 *>(x), static_cast<const O *>(offset),                     \
                                 static_cast<const O *>(mask), make_geometry(dims, strides),                       \
                                 static_cast<const bf16 *>(weight), c_out, static_cast<const bf16 *>(grad),        \
                                 static_cast<float *>(gx), static_cast<float *>(goffset),                         \
                                 static_cast<float *>(gmask), static_cast<float *>(gweight),                      \
                                 static_cast<float *>(gbias), threads, copies, gx_copy_stride);                   \
  }

SDNET_DCN_TILES_ENTRY(float32, float)
SDNET_DCN_TILES_ENTRY(bfloat16, bf16)

SDNET_DCN_ENTRY(float32_float32, float, float, float)
SDNET_DCN_ENTRY(float64_float64, double, double, double)
SDNET_DCN_ENTRY(bfloat16_float32, bf16, float, float)
SDNET_DCN_ENTRY(bfloat16_bfloat16, bf16, bf16, float)

}  // extern "C"
