// Max-pooling over 2-d windows (floor mode, no dilation): the arithmetic shared by the CPU
// kernel, the CUDA kernel and the C++ unit tests. No torch, no CUDA headers. As torch's
// max_pool2d: padding reads as -inf (it never wins) and NaN propagates.
#pragma once

#include "../common/conv_geometry.h"
#include "../common/macros.h"

namespace lostprune {

// One image plane's pooling: input in_h x in_w, window kh x kw, stride, padding.
struct PoolGeometry {
  int64_t in_h, in_w, kh, kw, sh, sw, ph, pw, out_h, out_w;
};

LP_HD PoolGeometry make_pool_geometry(int64_t in_h, int64_t in_w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                      int64_t ph, int64_t pw) {
  PoolGeometry g{in_h, in_w, kh, kw, sh, sw, ph, pw, 0, 0};
  g.out_h = conv_out_size(in_h, kh, sh, ph, 1);
  g.out_w = conv_out_size(in_w, kw, sw, pw, 1);
  return g;
}

// The input indices [lo, hi) that output o's window covers along one axis, padding left out.
struct PoolRange {
  int64_t lo, hi;
};

LP_HD PoolRange pool_window(int64_t o, int64_t k, int64_t s, int64_t p, int64_t in) {
  const int64_t start = o * s - p;
  return PoolRange{start < 0 ? 0 : start, start + k < in ? start + k : in};
}

// The running maximum with v folded in; a NaN anywhere wins (torch: `val > max || isnan(val)`).
// T may be a GCC vector (comparisons then give lane masks and ?: selects per lane).
template <typename T>
LP_HD T pool_max(T m, T v) {
  return ((v > m) | (v != v)) ? v : m;
}

}  // namespace lostprune
