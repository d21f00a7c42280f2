// Phase-plane fill of the CPU sparse convolution (see sparse_conv_planes.h).
#include "sparse_conv_planes.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>

namespace lostprune {
namespace cpu {
namespace {

#if defined(__AVX512F__)
// Lanes e of a 16-float load at in_row[first ..] whose column first + e lies in [0, W).
inline __mmask16 columns_inside(int64_t first, int64_t W) {
  const int64_t lo = std::clamp<int64_t>(-first, 0, 16), hi = std::clamp<int64_t>(W - first, 0, 16);
  const uint32_t below_hi = (uint32_t(1) << hi) - 1, below_lo = (uint32_t(1) << lo) - 1;
  return __mmask16(below_hi & ~below_lo);
}
#endif

// One plane row: row[x] = in_row[v0 + x * stride] where that column lies in [0, W), else 0
// (padding), for x < Wq. With AVX-512, strides 1 and 2 run as masked loads (columns outside
// the row read as zero and never touch memory) plus, for stride 2, one permute that keeps
// the even lanes; gathers would be much slower on current x86 cores.
// With `odd_row` (stride 2 only), also odd_row[x] = in_row[v0 + 2x + 1]: the next column
// phase's plane row comes from the same two loads.
template <typename S>
void fill_row(S* row, const S* in_row, int64_t W, int64_t v0, int64_t Wq, int64_t stride, S* odd_row = nullptr) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) {
    if (stride <= 2) {
      const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
      for (int64_t x = 0; x < Wq; x += 16) {
        const __mmask16 out = Wq - x >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (Wq - x)) - 1);
        const int64_t first = v0 + x * stride;
        const __m512 lo = _mm512_maskz_loadu_ps(columns_inside(first, W), in_row + first);
        if (stride == 1) {
          _mm512_mask_storeu_ps(row + x, out, lo);
          continue;
        }
        const __m512 hi = _mm512_maskz_loadu_ps(columns_inside(first + 16, W), in_row + first + 16);
        _mm512_mask_storeu_ps(row + x, out, _mm512_permutex2var_ps(lo, even, hi));
        if (odd_row != nullptr) _mm512_mask_storeu_ps(odd_row + x, out, _mm512_permutex2var_ps(lo, odd, hi));
      }
      return;
    }
  }
#endif
  if (odd_row != nullptr) fill_row(odd_row, in_row, W, v0 + 1, Wq, stride);
  for (int64_t x = 0; x < Wq; ++x) {
    const int64_t v = v0 + x * stride;
    row[x] = v >= 0 && v < W ? in_row[v] : S(0);
  }
}

#if defined(__AVX512F__)
constexpr int64_t kMaskedFillBlocks = 8;  // rows of up to 8 vectors take the masked fill

// fill_planes for one image (G = 1) at column stride 1 or 2 and rows of at most
// kMaskedFillBlocks vectors: per row and 16-column block, masked loads, a permute that keeps
// every other column (stride 2) and a masked store. The masks depend on the plane and block
// only, so they are made once per call; small layers would otherwise spend more on the
// per-row bookkeeping than on the copy.
__attribute__((noinline)) void fill_planes_masked(const float* x, const SparseConvGeometry& geometry,
                                                  const int64_t* origin, int64_t c_begin, int64_t c_end,
                                                  float* planes) {
  const int64_t H = geometry.H, W = geometry.W, Hq = geometry.Hq, Wq = geometry.Wq;
  const int64_t sh = geometry.sh, sw = geometry.sw, plane = geometry.plane;
  const int64_t plane_stride = geometry.plane_stride, channel_stride = geometry.channel_stride;
  const int64_t nplanes = geometry.ny * geometry.nx, blocks = (Wq + 15) / 16;
  __mmask16 lo[kMaxPhasePlanes * kMaskedFillBlocks], hi[kMaxPhasePlanes * kMaskedFillBlocks], keep[kMaskedFillBlocks];
  for (int64_t b = 0; b < blocks; ++b) keep[b] = __mmask16((uint32_t(1) << std::min<int64_t>(16, Wq - 16 * b)) - 1);
  for (int64_t p = 0; p < nplanes; ++p) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t first = origin[2 * p + 1] + 16 * b * sw;
      lo[p * kMaskedFillBlocks + b] = columns_inside(first, W);
      hi[p * kMaskedFillBlocks + b] = sw == 2 ? columns_inside(first + 16, W) : __mmask16(0);
    }
  }
  const __mmask16 gap = __mmask16((uint32_t(1) << (plane_stride - plane)) - 1);  // < kPlaneAlign
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 zero = _mm512_setzero_ps();
  // Stride 2 with both column phases: plane p + 1 (odd columns) comes from p's loads.
  const bool pairs = sw == 2 && geometry.nx == 2 && origin[3] == origin[1] + 1;
  for (int64_t ci = c_begin; ci < c_end; ++ci) {
    const float* src = x + ci * H * W;
    for (int64_t p = 0; p < nplanes; p += pairs ? 2 : 1) {
      float* dst = planes + ci * channel_stride + p * plane_stride;
      float* dst_odd = dst + plane_stride;
      const int64_t u0 = origin[2 * p], v0 = origin[2 * p + 1];
      const __mmask16* lo_p = lo + p * kMaskedFillBlocks;
      const __mmask16* hi_p = hi + p * kMaskedFillBlocks;
      for (int64_t y = 0; y < Hq; ++y) {
        float* row = dst + y * Wq;
        float* row_odd = dst_odd + y * Wq;
        const int64_t u = u0 + y * sh;
        if (u < 0 || u >= H) {
          for (int64_t b = 0; b < blocks; ++b) {
            _mm512_mask_storeu_ps(row + 16 * b, keep[b], zero);
            if (pairs) _mm512_mask_storeu_ps(row_odd + 16 * b, keep[b], zero);
          }
          continue;
        }
        const float* in_row = src + u * W + v0;  // may point before the row: masked lanes only
        for (int64_t b = 0; b < blocks; ++b) {
          const __m512 v = _mm512_maskz_loadu_ps(lo_p[b], in_row + 16 * b * sw);
          if (sw == 1) {
            _mm512_mask_storeu_ps(row + 16 * b, keep[b], v);
            continue;
          }
          const __m512 w = _mm512_maskz_loadu_ps(hi_p[b], in_row + 32 * b + 16);
          _mm512_mask_storeu_ps(row + 16 * b, keep[b], _mm512_permutex2var_ps(v, even, w));
          if (pairs) _mm512_mask_storeu_ps(row_odd + 16 * b, keep[b], _mm512_permutex2var_ps(v, odd, w));
        }
      }
      _mm512_mask_storeu_ps(dst + plane, gap, zero);  // alignment gap: read as garbage columns
      if (pairs) _mm512_mask_storeu_ps(dst_odd + plane, gap, zero);
    }
  }
}
#endif

}  // namespace

template <typename S>
void fill_planes(const S* x, int64_t image_stride, int64_t G, const SparseConvGeometry& geometry, int64_t c_begin,
                 int64_t c_end, S* planes) {
  const int64_t H = geometry.H, W = geometry.W, Hq = geometry.Hq, Wq = geometry.Wq;
  const int64_t sh = geometry.sh, sw = geometry.sw, plane = geometry.plane;
  const int64_t plane_stride = geometry.plane_stride, channel_stride = geometry.channel_stride;
  const int64_t nplanes = geometry.ny * geometry.nx;
  int64_t origin[2 * kMaxPhasePlanes];  // per plane: source (u0, v0) of element (0, 0)
  for (int64_t p = 0; p < nplanes; ++p) plane_source(geometry, p, 0, 0, &origin[2 * p], &origin[2 * p + 1]);
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) {
    if (G == 1 && sw <= 2 && Wq <= 16 * kMaskedFillBlocks) {
      return fill_planes_masked(x, geometry, origin, c_begin, c_end, planes);
    }
  }
#endif
  // Stride 2 with both column phases: planes p (even columns) and p + 1 (odd) share rows.
  const bool pairs = G == 1 && sw == 2 && geometry.nx == 2 && origin[3] == origin[1] + 1;
  for (int64_t ci = c_begin; ci < c_end; ++ci) {
    const S* src = x + ci * H * W;
    for (int64_t p = 0; p < nplanes; p += pairs ? 2 : 1) {
      S* dst = planes + (ci * channel_stride + p * plane_stride) * G;
      S* odd = pairs ? dst + plane_stride : nullptr;
      const int64_t u0 = origin[2 * p], v0 = origin[2 * p + 1];  // (y, x) reads (u0 + y * sh, v0 + x * sw)
      // Columns x whose source v0 + x * sw lies in [0, W) (interleaved groups).
      int64_t x_lo = v0 >= 0 ? 0 : (-v0 + sw - 1) / sw;
      int64_t x_hi = W - 1 - v0 >= 0 ? (W - 1 - v0) / sw + 1 : 0;
      x_hi = std::min(x_hi, Wq);
      x_lo = std::min(x_lo, x_hi);
      for (int64_t y = 0; y < Hq; ++y) {
        S* row = dst + y * Wq * G;
        const int64_t u = u0 + y * sh;
        if (u < 0 || u >= H) {
          std::fill(row, row + Wq * G, S(0));
          if (odd != nullptr) std::fill(odd + y * Wq, odd + (y + 1) * Wq, S(0));
        } else if (G == 1) {
          fill_row(row, src + u * W, W, v0, Wq, sw, odd != nullptr ? odd + y * Wq : nullptr);
        } else {
          std::fill(row, row + x_lo * G, S(0));
          for (int64_t j = 0; j < G; ++j) {
            const S* in_row = src + j * image_stride + u * W + v0;
            for (int64_t c = x_lo; c < x_hi; ++c) row[c * G + j] = in_row[c * sw];
          }
          std::fill(row + x_hi * G, row + Wq * G, S(0));
        }
      }
      std::fill(dst + plane * G, dst + plane_stride * G, S(0));  // alignment gap: read as garbage columns
      if (odd != nullptr) std::fill(odd + plane, odd + plane_stride, S(0));
    }
  }
}

template void fill_planes<float>(const float*, int64_t, int64_t, const SparseConvGeometry&, int64_t, int64_t, float*);
template void fill_planes<double>(const double*, int64_t, int64_t, const SparseConvGeometry&, int64_t, int64_t,
                                  double*);

}  // namespace cpu
}  // namespace lostprune
