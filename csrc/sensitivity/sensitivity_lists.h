// The CPU sensitivity kernels' inputs, prepared once per call: the signed weight lists of
// ListsView (sensitivity_simd.h) and the data points of the sign split, with the NaN / inf
// checks of both. Torch-side (parallel loops, errors).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "sensitivity.h"
#include "sensitivity_prepare.h"
#include "sensitivity_simd.h"
#include "sensitivity_tile.h"

namespace lostprune::sensitivity_cpu {

// Values (an image of the batch, a weight row) in one vectorized pass: whether every one is
// finite (x * 0 == 0 fails for NaN and inf) and whether any is negative (or NaN: it fails x >= 0).
struct ImageScan {
  bool finite, negative;
};

template <typename T>
inline ImageScan scan_image(const T* v, int64_t n) {
  using V = simd::Vec<T>;
  constexpr int64_t kLanes = simd::kLanes<T>;
  auto finite = V{} == V{}, nonnegative = finite;  // every lane true
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    const V x = simd::load(v + k);
    finite &= x * T(0) == V{};
    nonnegative &= x >= V{};
  }
  bool ok = true, at_least_zero = true;
  for (int64_t i = 0; i < kLanes; ++i) {
    ok &= finite[i] != 0;
    at_least_zero &= nonnegative[i] != 0;
  }
  for (; k < n; ++k) {
    ok &= v[k] * T(0) == T(0);
    at_least_zero &= v[k] >= T(0);
  }
  return {ok, !at_least_zero};
}

// The signed weight lists of ListsView, owned; edge[k] is entry k's edge.
template <typename T>
struct SignedLists {
  std::vector<int64_t> bounds, channel_begin;
  std::vector<Entry<T>> entry;
  std::vector<int32_t> edge, channel_count;
  std::vector<T> largest;
  int64_t blocks = 1, lists = 0, block_edges = 1, channels = 0;

  ListsView<T> view() const {
    // clang-format off
    return {bounds.data(), entry.data(), blocks, lists, block_edges, largest.data(), channel_begin.data(),
            channel_count.data(), channels};
    // clang-format on
  }
  int64_t entries() const { return bounds.back(); }
};

// Entry::row of edge r of unit i: rows[t * edges + r] with table t = i * tables / cout (one
// table for every unit, or one per group of units). kernel_area > 0: also the per (list,
// input channel) ranges and largest |w| of ListsView (block_edges must then be a multiple of
// kernel_area).
template <typename T>
SignedLists<T> signed_lists(const char* op, const T* w, int64_t cout, int64_t edges, const std::vector<int32_t>& rows,
                            int64_t block_edges, int64_t kernel_area = 0) {
  const int64_t tables = static_cast<int64_t>(rows.size()) / std::max<int64_t>(edges, 1);
  SignedLists<T> out;
  const int64_t blocks = (edges + block_edges - 1) / block_edges, lists = 2 * cout;
  out.blocks = blocks;
  out.lists = lists;
  out.block_edges = block_edges;
  if (kernel_area > 0) {
    out.channels = edges / kernel_area;
    out.largest.assign(lists * out.channels, T(0));
    out.channel_begin.assign(lists * out.channels, 0);
    out.channel_count.assign(lists * out.channels, 0);
  }
  // count[b][l] first, then its exclusive prefix sum in (block, list) order: the bounds.
  out.bounds.assign(blocks * (lists + 1), 0);
  std::vector<char> finite(cout, 1);
  const int64_t grain = std::max<int64_t>(16, (1 << 16) / std::max<int64_t>(edges, 1));  // small layers inline
  at::parallel_for(0, cout, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* row = w + i * edges;
      finite[i] = scan_image(row, edges).finite;
      for (int64_t b = 0; b < blocks; ++b) {
        int64_t pos = 0, neg = 0;
        for (int64_t r = b * block_edges; r < std::min(edges, (b + 1) * block_edges); ++r) {
          pos += row[r] > T(0);
          neg += row[r] < T(0);
        }
        out.bounds[b * (lists + 1) + 2 * i] = pos;
        out.bounds[b * (lists + 1) + 2 * i + 1] = neg;
      }
    }
  });
  for (int64_t i = 0; i < cout; ++i) TORCH_CHECK(finite[i], op, ": weight row ", i, " contains NaN or inf");
  int64_t total = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t l = 0; l <= lists; ++l) {
      const int64_t n = l < lists ? out.bounds[b * (lists + 1) + l] : 0;
      out.bounds[b * (lists + 1) + l] = total;  // for l == lists: the block's end
      total += n;
    }
  }
  out.bounds.push_back(total);  // entries(): the last element
  out.edge.resize(total);
  out.entry.resize(total);
  at::parallel_for(0, cout, grain, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> edge_buf(block_edges + 1);
    std::vector<T> mag_buf(block_edges + 1);
    for (int64_t i = begin; i < end; ++i) {
      const T* row = w + i * edges;
      const int32_t* row_of = rows.data() + i * tables / cout * edges;
      for (int64_t b = 0; b < blocks; ++b) {
        for (int sign = 0; sign < 2; ++sign) {
          // Branch-free compaction (signs are random: branches would mispredict half the
          // time) into scratch with one slot of slack, then copied into place.
          const int64_t r0 = b * block_edges, r1 = std::min(edges, (b + 1) * block_edges);
          int64_t n = 0;
          for (int64_t r = r0; r < r1; ++r) {
            const T value = sign == 0 ? row[r] : -row[r];
            edge_buf[n] = static_cast<int32_t>(r);
            mag_buf[n] = value;
            n += value > T(0);
          }
          const int64_t k = out.bounds[b * (lists + 1) + 2 * i + sign];
          for (int64_t j = 0; j < n; ++j) {
            out.edge[k + j] = edge_buf[j];
            out.entry[k + j] = {row_of[edge_buf[j]], mag_buf[j]};
          }
          if (kernel_area > 0) {  // entries of each channel: a run (edges are sorted)
            const int64_t list = 2 * i + sign;
            for (int64_t c = r0 / kernel_area; c < r1 / kernel_area; ++c) {
              out.channel_begin[list * out.channels + c] = k;
            }
            for (int64_t j = 0; j < n; ++j) {
              const int64_t at = list * out.channels + edge_buf[j] / kernel_area;
              if (out.channel_count[at]++ == 0) out.channel_begin[at] = k + j;
              out.largest[at] = std::max(out.largest[at], mag_buf[j]);
            }
          }
        }
      }
    }
  });
  return out;
}

// Scans the batch: NaN/inf is an error; an image with negative entries is two data points.
template <typename T>
std::vector<DataPoint> data_points(const char* op, const SensitivityProblem& p) {
  const int64_t numel = image_numel(p.geo);
  const T* x = p.x.const_data_ptr<T>();
  std::vector<char> negative(p.batch, 0), finite(p.batch, 1);
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(numel, 1));  // small scans inline
  at::parallel_for(0, p.batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const ImageScan scan = scan_image(x + n * numel, numel);
      negative[n] = scan.negative;
      finite[n] = scan.finite;
    }
  });
  std::vector<DataPoint> points;
  for (int64_t n = 0; n < p.batch; ++n) {
    TORCH_CHECK(finite[n], op, ": x (the layer input) contains NaN or inf in sample ", n);
    points.push_back({n, 1});
  }
  for (int64_t n = 0; n < p.batch; ++n) {
    if (negative[n]) points.push_back({n, -1});  // a- = 0 for the others: it would add nothing
  }
  return points;
}

}  // namespace lostprune::sensitivity_cpu
