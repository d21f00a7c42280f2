// The im2col tiles of the CPU sensitivity kernels: rows of `width` consecutive output
// positions, one row per edge r, holding the sign-split input each position reads through r.
// Global position d * P + p is position p of data point d, so a tile may run across data
// points. No torch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "sensitivity.h"

namespace lostprune::sensitivity_cpu {

// A data point: image n of the batch, or its negative part (sign -1) after the sign split.
struct DataPoint {
  int64_t image;
  int sign;
};

// A run of a tile's positions that lies in one output row of one data point.
struct Segment {
  int64_t point, oy, ox0, n, t;  // data point, output row, first column, length, tile offset
};

// Appends the segments of global positions [q0, q0 + filled), placed from tile offset t0.
inline void tile_segments(const SensGeometry& g, int64_t q0, int64_t filled, std::vector<Segment>& segments,
                          int64_t t0 = 0) {
  const int64_t n_positions = positions(g);
  int64_t d = q0 / n_positions, p = q0 % n_positions;
  int64_t oy = p / g.out_w, ox = p % g.out_w;
  for (int64_t t = 0; t < filled;) {
    const int64_t n = std::min(g.out_w - ox, filled - t);
    segments.push_back({d, oy, ox, n, t0 + t});
    t += n;
    ox += n;
    if (ox == g.out_w) {
      ox = 0;
      if (++oy == g.out_h) {
        oy = 0;
        ++d;
      }
    }
  }
}

// dst[ox] = split(src[ox * stride]) for ox in [lo, hi) and 0 elsewhere in [begin, end).
// (No loop-distribution: short zero runs must not become memset calls.)
// clang-format off
template <typename T>
__attribute__((optimize("no-tree-loop-distribute-patterns"))) inline void copy_split_segment(
    T* dst, const T* src, int64_t begin, int64_t end, int64_t lo, int64_t hi, int64_t stride, int sign) {
  // clang-format on
  lo = std::clamp(lo, begin, end);
  hi = std::clamp(hi, lo, end);
  for (int64_t ox = begin; ox < lo; ++ox) dst[ox] = T(0);
  if (stride == 1) {  // vectorized
    for (int64_t ox = lo; ox < hi; ++ox) dst[ox] = split_activation(src[ox], sign);
  } else {
    for (int64_t ox = lo; ox < hi; ++ox) dst[ox] = split_activation(src[ox * stride], sign);
  }
  for (int64_t ox = hi; ox < end; ++ox) dst[ox] = T(0);
}

// The tile of the segments' positions for the edges of `group`: tile[r * width + t]; every
// other position of a row (past the last segment, or between segments) is zero (it adds
// nothing to any reduction). Segments are sorted by t.
template <typename T>
void build_tile(const SensGeometry& g, const T* x, const std::vector<DataPoint>& points, int64_t group,
                const std::vector<Segment>& segments, int64_t width, T* tile) {
  const int64_t edges = edges_per_output(g);
  const int64_t plane_size = g.in_h * g.in_w;
  for (int64_t r = 0; r < edges; ++r) {
    const EdgeTap tap = edge_tap(g, group, r);
    const ValidRange cols = valid_outputs(tap.dx, g.sw, g.in_w, g.out_w);
    T* row = tile + r * width;
    int64_t filled = 0;
    for (const Segment& seg : segments) {
      std::fill(row + filled, row + seg.t, T(0));
      filled = seg.t + seg.n;
      T* dst = row + seg.t - seg.ox0;  // dst[ox] for ox in [ox0, ox0 + n)
      const int64_t iy = seg.oy * g.sh + tap.dy;
      if (iy < 0 || iy >= g.in_h) {
        std::fill(dst + seg.ox0, dst + seg.ox0 + seg.n, T(0));
        continue;
      }
      const DataPoint& point = points[seg.point];
      const T* src = x + (point.image * g.in_channels + tap.channel) * plane_size + iy * g.in_w + tap.dx;
      copy_split_segment(dst, src, seg.ox0, seg.ox0 + seg.n, cols.lo, cols.hi, g.sw, point.sign);
    }
    std::fill(row + filled, row + width, T(0));
  }
}

}  // namespace lostprune::sensitivity_cpu
