// CPU max-pool of NCHW planes (torch's NCHW CPU pool is scalar: about 6 ms for resnet18's
// stem pool at batch 1, one thread). Per output row, the maximum over the window's input rows
// goes into a row buffer (contiguous, vectorized); then the window's columns fold in one column
// offset at a time over the whole output row, in vectors for strides 1 and 2. The buffer's
// padding columns hold -inf. Exact: every result is an input element (or NaN).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../common/simd.h"
#include "max_pool_prepare.h"

namespace lostprune {
namespace {

// y[ox] = max over j < kw of buf[ox * stride + j] (buf starts at the window's first column).
// Strides 1 and 2 run in vectors (stride 2: the even lanes of two loads); a row's last
// vector overlaps the one before it instead of a scalar tail (recomputing a max is harmless).
// buf holds 2 kLanes readable values past the last window (the odd lanes of the last load).
template <int kStride, typename T>
void pool_columns(const T* buf, T* y, int64_t out_w, int64_t kw, int64_t stride) {
  constexpr int64_t L = simd::kLanes<T>;
  if constexpr (kStride == 1 || kStride == 2) {
    if (out_w >= L) {
      const auto at = [&](const T* b) {  // lane i: b[kStride * i]
        if constexpr (kStride == 1) {
          return simd::load(b);
        } else {
          return simd::even_lanes<T>(simd::load(b), simd::load(b + L));
        }
      };
      for (int64_t ox = 0;; ox += L) {
        ox = std::min(ox, out_w - L);
        const T* b = buf + kStride * ox;
        simd::Vec<T> m = at(b);
        for (int64_t j = 1; j < kw; ++j) m = pool_max(m, at(b + j));
        simd::store(y + ox, m);
        if (ox + L == out_w) return;
      }
    }
  }
  const int64_t s = kStride > 0 ? kStride : stride;
  for (int64_t ox = 0; ox < out_w; ++ox) {
    T m = buf[ox * s];
    for (int64_t j = 1; j < kw; ++j) m = pool_max(m, buf[ox * s + j]);
    y[ox] = m;
  }
}

template <typename T>
void pool_plane(const PoolGeometry& g, const T* x, T* y, T* buf) {
  T* row = buf + g.pw;  // row[ix] for input column ix; row[-pw .. 0) and past in_w stay -inf
  for (int64_t oy = 0; oy < g.out_h; ++oy) {
    const PoolRange rows = pool_window(oy, g.kh, g.sh, g.ph, g.in_h);
    std::copy(x + rows.lo * g.in_w, x + (rows.lo + 1) * g.in_w, row);
    for (int64_t iy = rows.lo + 1; iy < rows.hi; ++iy) {
      const T* src = x + iy * g.in_w;
      for (int64_t ix = 0; ix < g.in_w; ++ix) row[ix] = pool_max(row[ix], src[ix]);
    }
    T* dst = y + oy * g.out_w;
    switch (g.sw) {
      case 1: pool_columns<1>(buf, dst, g.out_w, g.kw, 1); break;
      case 2: pool_columns<2>(buf, dst, g.out_w, g.kw, 2); break;
      default: pool_columns<0>(buf, dst, g.out_w, g.kw, g.sw); break;
    }
  }
}

at::Tensor max_pool2d_cpu(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding) {
  PoolProblem p = prepare_max_pool(x, kernel_size, stride, padding, c10::DeviceType::CPU);
  const PoolGeometry& g = p.geo;
  // The buffer covers every column a window reads, padding included, the whole input row, and
  // the vector loads' overreach (pool_columns).
  const int64_t width = std::max((g.out_w - 1) * g.sw + g.kw, g.pw + g.in_w) + 2 * simd::kLanes<float>;
  const int64_t plane_in = g.in_h * g.in_w, plane_out = g.out_h * g.out_w;
  AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "max_pool2d_cpu", [&] {
    const scalar_t* src = p.x.const_data_ptr<scalar_t>();
    scalar_t* dst = p.out.mutable_data_ptr<scalar_t>();
    // Small problems run inline (a parallel region costs more than they do).
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, plane_in));
    at::parallel_for(0, p.planes, grain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> buf(width, -std::numeric_limits<scalar_t>::infinity());
      for (int64_t plane = begin; plane < end; ++plane) {
        pool_plane(g, src + plane * plane_in, dst + plane * plane_out, buf.data());
      }
    });
  });
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CPU, m) { m.impl("max_pool2d", &max_pool2d_cpu); }

}  // namespace lostprune
