// The batch-lane layout of the CPU weight-mean kernel (docs/methods.md §Sensitivities), for
// small maps: vector lanes run over data points instead of positions. The sign-split input of
// kLanes data points is stored once, zero-padded, as [channel][row][column][lane]; every
// position of an edge is then one aligned vector load at a fixed offset, with no im2col tile.
// Pass 1 accumulates z+ and z- of a list in register patches of output rows and columns,
// pass 2 sums A * V over a data point's positions with plain vertical multiply-adds: no
// padding of a point's positions to whole vectors and no transposing reduction per data
// point, only one max over the lanes (the data points) per entry and group. No torch.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../common/simd.h"
#include "sensitivity.h"
#include "sensitivity_simd.h"
#include "sensitivity_tile.h"

namespace lostprune::sensitivity_cpu {

// Where the padded batch-lane input keeps a layer's taps. Row py of the buffer is input row
// py - ph (likewise columns): every tap of every output position lies inside.
struct LaneGeometry {
  int64_t lanes;               // data points per vector
  int64_t hp, wp;              // padded plane
  int64_t plane;               // elements per channel: hp * wp * lanes
  int64_t row_step, col_step;  // elements between output rows / columns: sh * wp * lanes, sw * lanes
  int64_t out_h, out_w;
};

inline LaneGeometry lane_geometry(const SensGeometry& g, int64_t lanes) {
  LaneGeometry lg{};
  lg.lanes = lanes;
  lg.hp = (g.out_h - 1) * g.sh + (g.kh - 1) * g.dh + 1;
  lg.wp = (g.out_w - 1) * g.sw + (g.kw - 1) * g.dw + 1;
  lg.plane = lg.hp * lg.wp * lanes;
  lg.row_step = g.sh * lg.wp * lanes;
  lg.col_step = g.sw * lanes;
  lg.out_h = g.out_h;
  lg.out_w = g.out_w;
  return lg;
}

// Offset of edge r of `group`'s first tap (output position 0) in the buffer.
inline int64_t lane_offset(const SensGeometry& g, const LaneGeometry& lg, int64_t group, int64_t r) {
  const int64_t k2 = g.kh * g.kw;
  const int64_t channel = group * group_in_channels(g) + r / k2;
  return channel * lg.plane + (((r % k2) / g.kw) * g.dh * lg.wp + (r % g.kw) * g.dw) * lg.lanes;
}

// The buffer for channels [c0, c1) of data points [first, first + count) (lanes past count and
// the padding hold zero).
template <typename T>
void build_lane_input(const SensGeometry& g, const LaneGeometry& lg, const T* x, const DataPoint* first, int64_t count,
                      int64_t c0, int64_t c1, T* dst) {
  const int64_t plane_size = g.in_h * g.in_w;
  for (int64_t c = c0; c < c1; ++c) {
    T* out = dst + c * lg.plane;
    std::fill(out, out + lg.plane, T(0));
    for (int64_t d = 0; d < count; ++d) {
      const T* src = x + (first[d].image * g.in_channels + c) * plane_size;
      const int sign = first[d].sign;
      const int64_t y0 = std::max<int64_t>(0, g.ph), y1 = std::min(lg.hp, g.in_h + g.ph);
      const int64_t x0 = std::max<int64_t>(0, g.pw), x1 = std::min(lg.wp, g.in_w + g.pw);
      for (int64_t py = y0; py < y1; ++py) {
        const T* row = src + (py - g.ph) * g.in_w - g.pw;
        T* o = out + py * lg.wp * lg.lanes + d;
        for (int64_t px = x0; px < x1; ++px) o[px * lg.lanes] = split_activation(row[px], sign);
      }
    }
  }
}

// Pass 1's register patch: at most kLaneChunk output columns, kLaneAccumulators vectors.
constexpr int kLaneChunk = simd::kRegisters >= 32 ? 8 : 6;
constexpr int kLaneAccumulators = simd::kRegisters >= 32 ? 28 : 12;

template <typename T>
struct LaneOps {
  using V = simd::Vec<T>;
  static constexpr int kLanes = simd::kLanes<T>;
  static constexpr int kGroup = TileOps<T, 1>::kGroup;
  static constexpr int kChains = simd::kRegisters >= 32 ? 2 : 1;

  LP_SIMD_INLINE static V at(const T* p) { return *reinterpret_cast<const V*>(p); }  // vector-aligned

  // z[r * out_w + v] += sum over the entries [k, end) of |w| * input at row r, column v of a
  // patch of R rows and NV columns (base: its first position). Columns lie `step` elements
  // apart: kLanes (stride 1) as a constant, so loads take immediate offsets.
  template <int R, int NV, bool kUnitStride>
  static void patch(const T* base, const Entry<T>* entry, int64_t k, int64_t end, const LaneGeometry& lg, V* z) {
    const int64_t step = kUnitStride ? int64_t(kLanes) : lg.col_step, rows = lg.row_step;
    V acc[R][NV] = {};
    for (; k < end; ++k) {
      const T w = entry[k].magnitude;
      const T* a = base + entry[k].row;
      for (int r = 0; r < R; ++r) {
        for (int v = 0; v < NV; ++v) acc[r][v] += w * at(a + r * rows + v * step);
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < NV; ++v) z[r * lg.out_w + v] += acc[r][v];
    }
  }

  template <int R, int NV>
  static void patch_rows(const T* base, const Entry<T>* entry, int64_t k, int64_t end, const LaneGeometry& lg, V* z) {
    if (lg.col_step == kLanes) {
      patch<R, NV, true>(base, entry, k, end, lg, z);
    } else {
      patch<R, NV, false>(base, entry, k, end, lg, z);
    }
  }

  template <int NV>
  static void patch_columns(int64_t rows, const T* base, const Entry<T>* entry, int64_t k, int64_t end,
                            const LaneGeometry& lg, V* z) {
    switch (rows) {
      case 1: return patch_rows<1, NV>(base, entry, k, end, lg, z);
      case 2: return patch_rows<2, NV>(base, entry, k, end, lg, z);
      case 3: return patch_rows<3, NV>(base, entry, k, end, lg, z);
      default: return patch_rows<4, NV>(base, entry, k, end, lg, z);
    }
  }

  // Pass 1 of one list over one block of entries [k, end): z at position q = oy * out_w + ox,
  // in patches of at most kLaneChunk columns and as many rows as kLaneAccumulators allow.
  static void list_block(const T* input, const LaneGeometry& lg, const Entry<T>* entry, int64_t k, int64_t end, V* z) {
    if (k == end) return;
    const int64_t chunks = (lg.out_w + kLaneChunk - 1) / kLaneChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t ox0 = lg.out_w * c / chunks, nv = lg.out_w * (c + 1) / chunks - ox0;
      const int64_t most_rows = std::clamp<int64_t>(kLaneAccumulators / nv, 1, 4);
      for (int64_t oy = 0; oy < lg.out_h; oy += most_rows) {
        const int64_t rows = std::min(most_rows, lg.out_h - oy);
        const T* base = input + oy * lg.row_step + ox0 * lg.col_step;
        V* at_z = z + oy * lg.out_w + ox0;
        switch (nv) {
          case 1: patch_columns<1>(rows, base, entry, k, end, lg, at_z); break;
          case 2: patch_columns<2>(rows, base, entry, k, end, lg, at_z); break;
          case 3: patch_columns<3>(rows, base, entry, k, end, lg, at_z); break;
          case 4: patch_columns<4>(rows, base, entry, k, end, lg, at_z); break;
          case 5: patch_columns<5>(rows, base, entry, k, end, lg, at_z); break;
          case 6: patch_columns<6>(rows, base, entry, k, end, lg, at_z); break;
          case 7:
            if constexpr (kLaneChunk >= 7) patch_columns<7>(rows, base, entry, k, end, lg, at_z);
            break;
          case 8:
            if constexpr (kLaneChunk >= 8) patch_columns<8>(rows, base, entry, k, end, lg, at_z);
            break;
        }
      }
    }
  }

  // Lane j < G: the max over the data points (lanes) of entry j's sum over the positions of
  // A * V (inv: V at every position).
  template <int G>
  LP_SIMD_INLINE static V reduce_group(const T* input, const Entry<T>* entry, const V* inv, const LaneGeometry& lg) {
    constexpr int C = kChains;
    const T* a[G];
    for (int j = 0; j < G; ++j) a[j] = input + entry[j].row;
    V acc[C][G] = {};
    for (int64_t oy = 0; oy < lg.out_h; ++oy) {
      const int64_t row = oy * lg.row_step;
      const V* iv = inv + oy * lg.out_w;
      int64_t ox = 0;
      for (; ox + C <= lg.out_w; ox += C) {
        for (int c = 0; c < C; ++c) {
          const V i = iv[ox + c];
          const int64_t off = row + (ox + c) * lg.col_step;
          for (int j = 0; j < G; ++j) acc[c][j] += at(a[j] + off) * i;
        }
      }
      for (; ox < lg.out_w; ++ox) {
        const V i = iv[ox];
        const int64_t off = row + ox * lg.col_step;
        for (int j = 0; j < G; ++j) acc[0][j] += at(a[j] + off) * i;
      }
    }
    if constexpr (C == 2) {
      for (int j = 0; j < G; ++j) acc[0][j] += acc[1][j];
    }
    return simd::transpose_reduce<T, G>(acc[0], [](V x, V y) { return reduce_step(SensitivityReduce::kMax, x, y); });
  }

  // Pass 2 for the entries [k0, k1) of one list: slot[k - k0] = max(slot, the entry's value).
  static void reduce_list(const T* input, const Entry<T>* entry, int64_t k0, int64_t k1, const V* inv,
                          const LaneGeometry& lg, T* slot) {
    const auto fold = [&]<int G>(int64_t k) {
      const V value = reduce_group<G>(input, entry + k, inv, lg);
      T* s = slot + (k - k0);
      const auto folded =
          reduce_step(SensitivityReduce::kMax, simd::load_narrow<T, G>(s), simd::first_lanes<T, G>(value));
      simd::store_narrow<T, G>(s, folded);
    };
    int64_t k = k0;
    for (; k + kGroup <= k1; k += kGroup) fold.template operator()<kGroup>(k);
    if constexpr (kGroup >= 8) {
      if (k + 4 <= k1) fold.template operator()<4>(k), k += 4;
    }
    if constexpr (kGroup >= 4) {
      if (k + 2 <= k1) fold.template operator()<2>(k), k += 2;
    }
    for (; k < k1; ++k) fold.template operator()<1>(k);
  }
};

}  // namespace lostprune::sensitivity_cpu
