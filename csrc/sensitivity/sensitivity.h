// Sensitivity scoring (docs/methods.md §Sensitivities): the arithmetic shared by the CPU kernel, the CUDA
// kernel and the C++ unit tests. No torch, no CUDA headers.
//
// A layer is a convolution (a linear layer is a 1x1 one). For output unit i of group g, an
// edge r = (input channel c of the group, kernel offset ky, kx) reads at output position q
// the im2col entry A[r, q] of a non-negative pseudo-input (the sign split of docs/methods.md §Sensitivities):
//   z+_i(q) = sum_r max(W_ir, 0) A[r, q]      z-_i(q) = sum_r max(-W_ir, 0) A[r, q]
//   g_ir(q) = |W_ir| A[r, q] * V^{sign W_ir}_i(q),   V = 1/z where z > eps, else 0.
// Both reductions then factor |W_ir| out of a product of A with V:
//   mean: |W_ir| / P * sum_q A[r, q] V_i(q)    (a matrix product, per data point)
//   max:  |W_ir|     * max_q A[r, q] V_i(q)    (a max-times product, over all data points)
// and the max over data points of the first is |W_ir| / P times the max of the sums.
#pragma once

#include "../common/conv_geometry.h"
#include "../common/macros.h"

namespace lostprune {

// float32 machine epsilon: docs/methods.md §Sensitivities' threshold on z, whatever the compute dtype.
constexpr float kSensitivityEps = 1.1920928955078125e-07f;

enum class SensitivityReduce : int { kMean = 0, kMax = 1 };

// Shape and convolution parameters of one layer, for one image of the batch.
struct SensGeometry {
  int64_t in_channels, in_h, in_w;
  int64_t out_channels, groups;
  int64_t kh, kw;
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t out_h, out_w;
};

LP_HD SensGeometry make_geometry(int64_t in_channels, int64_t in_h, int64_t in_w, int64_t out_channels, int64_t groups,
                                 int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                                 int64_t dw) {
  SensGeometry g{in_channels, in_h, in_w, out_channels, groups, kh, kw, sh, sw, ph, pw, dh, dw, 0, 0};
  g.out_h = conv_out_size(in_h, kh, sh, ph, dh);
  g.out_w = conv_out_size(in_w, kw, sw, pw, dw);
  return g;
}

LP_HD int64_t group_in_channels(const SensGeometry& g) { return g.in_channels / g.groups; }
LP_HD int64_t group_out_channels(const SensGeometry& g) { return g.out_channels / g.groups; }
// Edges per output unit: the size of one weight row.
LP_HD int64_t edges_per_output(const SensGeometry& g) { return group_in_channels(g) * g.kh * g.kw; }
LP_HD int64_t positions(const SensGeometry& g) { return g.out_h * g.out_w; }
LP_HD int64_t image_numel(const SensGeometry& g) { return g.in_channels * g.in_h * g.in_w; }

// Where edge r of a unit in `group` reads: input channel `channel` at row
// oy * sh + dy and column ox * sw + dx for output position (oy, ox).
struct EdgeTap {
  int64_t channel, dy, dx;
};

LP_HD EdgeTap edge_tap(const SensGeometry& g, int64_t group, int64_t r) {
  const int64_t k2 = g.kh * g.kw;
  return EdgeTap{group * group_in_channels(g) + r / k2, ((r % k2) / g.kw) * g.dh - g.ph, (r % g.kw) * g.dw - g.pw};
}

// Offset within one image of the input element edge r of `group` reads at output position q,
// or -1 where the kernel overlaps the zero padding.
LP_HD int64_t edge_input_offset(const SensGeometry& g, int64_t group, int64_t r, int64_t q) {
  const EdgeTap t = edge_tap(g, group, r);
  const int64_t iy = (q / g.out_w) * g.sh + t.dy;
  const int64_t ix = (q % g.out_w) * g.sw + t.dx;
  if (iy < 0 || iy >= g.in_h || ix < 0 || ix >= g.in_w) return -1;
  return (t.channel * g.in_h + iy) * g.in_w + ix;
}

// Output columns [lo, hi) whose tap at column offset dx falls inside the input (not on the
// padding); likewise for rows with (dy, sh, in_h, out_h).
struct ValidRange {
  int64_t lo, hi;
};

LP_HD ValidRange valid_outputs(int64_t offset, int64_t stride, int64_t in_size, int64_t out_size) {
  // smallest o with o * stride + offset >= 0, largest with o * stride + offset <= in_size - 1
  int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t last = in_size - 1 - offset;
  int64_t hi = last < 0 ? 0 : last / stride + 1;
  if (hi > out_size) hi = out_size;
  if (lo > hi) lo = hi;
  return ValidRange{lo, hi};
}

// T below may also be a GCC vector of S (the CPU kernels' SIMD types): comparisons and ?:
// then act per lane, and T{} is the zero vector.

// The non-negative pseudo-input of the sign split: a+ = max(a, 0) (sign > 0) or
// a- = max(-a, 0) (sign < 0).
template <typename T, typename S = T>
LP_HD T split_activation(T a, int sign) {
  const T v = sign > 0 ? a : -a;
  return v > S(0) ? v : T{};
}

// 1/z where z exceeds the eps threshold, else 0 (docs/methods.md §Sensitivities: g = 0 where z <= eps).
template <typename T, typename S = T>
LP_HD T inverse_or_zero(T z) {
  return z > S(kSensitivityEps) ? S(1) / z : T{};
}

// Factor the reduction leaves on |W_ir| * (accumulated value): 1/P for the mean, 1 for max.
template <typename T>
LP_HD T reduce_scale(SensitivityReduce reduce, int64_t n_positions) {
  return reduce == SensitivityReduce::kMean ? T(1) / T(n_positions) : T(1);
}

// Fold one value into an accumulator of the reduction over positions.
template <typename T>
LP_HD T reduce_step(SensitivityReduce reduce, T acc, T value) {
  return reduce == SensitivityReduce::kMean ? acc + value : (value > acc ? value : acc);
}

}  // namespace lostprune
