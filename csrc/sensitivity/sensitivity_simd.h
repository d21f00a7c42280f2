// SIMD micro-kernels of the CPU sensitivity ops (docs/methods.md §Sensitivities) on one im2col tile
// (sensitivity_tile.h), vectorized over the tile's positions with the build's native vectors
// (common/simd.h: AVX-512, AVX2, ...; one template for every width). No torch.
//
// Per output unit the nonzero weights form two lists, positive and negative edges, each
// sorted by edge. Pass 1 accumulates z+ and z- of every unit (one multiply-add per list
// entry and position), then V = 1/z with the eps rule; pass 2 reduces A * V over the tile
// for every list entry with the V of its own sign (sum for "mean", max for "max"). Each pass
// costs one multiply-add (or multiply-max) per nonzero weight and position, half of what
// dense products with W+ and |W-| would. Edges are walked in blocks whose tile rows stay in
// L1 while every unit of the chunk reads them; results are kept per list entry (CSR order),
// so a group of entries folds in with one vector operation.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../common/simd.h"
#include "sensitivity.h"

namespace lostprune::sensitivity_cpu {

// Edges per block: tile rows of one block take about 24 KB, to stay in L1 (32-48 KB).
inline int64_t block_edges(int64_t row_bytes) { return std::max<int64_t>(8, (int64_t(24) << 10) / row_bytes); }

// The signed weight lists of a layer: list l = 2 * unit + (weight < 0) holds the unit's
// edges of that sign (sorted, zero weights absent) with |w|. Entries are stored block-major:
// first every list's entries in edge block 0 (edges [0, block_edges)), then block 1, ...; so
// the units of a chunk read one contiguous run per block. begin(b, l) is the first entry of
// list l in block b; begin(b, lists) the end of block b.
template <typename T>
struct Entry {
  int32_t row;  // edge * tile width: where the edge's tile row starts
  T magnitude;  // |w|
};

template <typename T>
struct ListsView {
  const int64_t* bounds;  // [blocks][lists + 1]
  const Entry<T>* entry;
  int64_t blocks, lists, block_edges;
  // Channel sensitivities only (blocks hold whole input channels): per list l and input
  // channel c of its group, the entries [begin, begin + count) and their largest |w| (0 if none),
  // at [l * channels + c].
  const T* largest;
  const int64_t* channel_begin;
  const int32_t* channel_count;
  int64_t channels;

  int64_t begin(int64_t block, int64_t list) const { return bounds[block * (lists + 1) + list]; }
  // Entries of lists [l0, l1) in all blocks.
  int64_t count(int64_t l0, int64_t l1) const {
    int64_t n = 0;
    for (int64_t b = 0; b < blocks; ++b) n += begin(b, l1) - begin(b, l0);
    return n;
  }
};

// The micro-kernels both ops share, on tiles of NV vectors per row.
template <typename T, int NV>
struct TileOps {
  using V = simd::Vec<T>;
  static constexpr int kLanes = simd::kLanes<T>;
  static constexpr int64_t kWidth = int64_t(NV) * kLanes;
  // Entries reduced together in pass 2 (one transposing reduction each), and independent
  // accumulator chains per entry: enough chains to cover the FMA latency, within the registers.
  static constexpr int kGroup = kLanes < 8 ? kLanes : 8;
  static constexpr int kChains = simd::kRegisters >= 32 && NV % 2 == 0 ? 2 : 1;
  // Pass 1 runs the positive and negative list of a unit side by side when twice the
  // accumulators fit in registers.
  static constexpr bool kPaired = 2 * NV + 4 <= simd::kRegisters;

  LP_SIMD_INLINE static V row(const T* tile, int32_t offset, int v) {
    return *reinterpret_cast<const V*>(tile + offset + v * kLanes);  // rows are vector-aligned
  }

  // z += sum over entries [k, end) of |w| * tile row. The sums start from zero in registers
  // (no wait on z's load) and add into z at the end.
  LP_SIMD_INLINE static void accumulate(const T* tile, const Entry<T>* entry, int64_t k, int64_t end, V* z) {
    V acc[NV] = {};
    for (; k < end; ++k) {
      const T w = entry[k].magnitude;
      for (int v = 0; v < NV; ++v) acc[v] += w * row(tile, entry[k].row, v);
    }
    for (int v = 0; v < NV; ++v) z[v] += acc[v];
  }

  // Both lists of one unit at once: twice the independent chains.
  LP_SIMD_INLINE static void accumulate_pair(const T* tile, const Entry<T>* entry, int64_t kp, int64_t ep, int64_t kn,
                                             int64_t en, V* zp, V* zn) {
    V ap[NV] = {}, an[NV] = {};
    const int64_t both = std::min(ep - kp, en - kn);
    for (int64_t i = 0; i < both; ++i, ++kp, ++kn) {
      const T wp = entry[kp].magnitude, wn = entry[kn].magnitude;
      for (int v = 0; v < NV; ++v) {
        ap[v] += wp * row(tile, entry[kp].row, v);
        an[v] += wn * row(tile, entry[kn].row, v);
      }
    }
    for (int v = 0; v < NV; ++v) {
      zp[v] += ap[v];
      zn[v] += an[v];
    }
    accumulate(tile, entry, kp, ep, zp);
    accumulate(tile, entry, kn, en, zn);
  }

  // Pass 1 for the units [u0, u1): z[(l - 2 u0) * NV ...] = V of list l (1/z+ or 1/z-).
  // emit(z) sees z+ and z- themselves first (the layer's output is z+ - z-).
  template <typename Emit>
  static void inverses(const T* tile, const ListsView<T>& lists, int64_t u0, int64_t u1, V* z, const Emit& emit) {
    const int64_t l0 = 2 * u0, l1 = 2 * u1;
    const V zero = {};
    for (int64_t k = 0; k < (l1 - l0) * NV; ++k) z[k] = zero;
    for (int64_t b = 0; b < lists.blocks; ++b) {
      for (int64_t l = l0; l < l1; l += 2) {
        V* zp = z + (l - l0) * NV;
        const int64_t kp = lists.begin(b, l), kn = lists.begin(b, l + 1), end = lists.begin(b, l + 2);
        if constexpr (kPaired) {
          accumulate_pair(tile, lists.entry, kp, kn, kn, end, zp, zp + NV);
        } else {
          accumulate(tile, lists.entry, kp, kn, zp);
          accumulate(tile, lists.entry, kn, end, zp + NV);
        }
      }
    }
    emit(static_cast<const V*>(z));
    for (int64_t k = 0; k < (l1 - l0) * NV; ++k) z[k] = inverse_or_zero<V, T>(z[k]);
  }

  // Lane j < G: the reduction over vectors [first, first + S) of (row j * inv).
  template <SensitivityReduce kReduce, int G, int S = NV>
  LP_SIMD_INLINE static V reduce_rows(const T* tile, const Entry<T>* entry, const V* inv, int first = 0) {
    constexpr int C = S % 2 == 0 ? kChains : 1;
    const auto step = [](V a, V b) { return reduce_step(kReduce, a, b); };
    const T* a[G];
    for (int j = 0; j < G; ++j) a[j] = tile + entry[j].row + first * kLanes;
    inv += first;
    V acc[C][G];
    for (int c = 0; c < C; ++c) {
      const V i = inv[c];
      for (int j = 0; j < G; ++j) acc[c][j] = *reinterpret_cast<const V*>(a[j] + c * kLanes) * i;
    }
    for (int v = C; v < S; v += C) {
      for (int c = 0; c < C; ++c) {
        const V i = inv[v + c];
        for (int j = 0; j < G; ++j) {
          acc[c][j] = step(acc[c][j], *reinterpret_cast<const V*>(a[j] + (v + c) * kLanes) * i);
        }
      }
    }
    if constexpr (C == 2) {
      for (int j = 0; j < G; ++j) acc[0][j] = step(acc[0][j], acc[1][j]);
    }
    return simd::transpose_reduce<T, G>(acc[0], step);
  }

  // Lane j < G: the max over the M segments of S vectors of their reductions (one data point each).
  template <SensitivityReduce kReduce, int G, int S, int M>
  LP_SIMD_INLINE static V reduce_segments(const T* tile, const Entry<T>* entry, const V* inv) {
    V value = reduce_rows<kReduce, G, S>(tile, entry, inv, 0);
    for (int m = 1; m < M; ++m) {
      value = reduce_step(SensitivityReduce::kMax, value, reduce_rows<kReduce, G, S>(tile, entry, inv, m * S));
    }
    return value;
  }

  // For n entries, in groups of kGroup then 4, 2, 1: fn.template operator()<G>(k, reduced
  // entries k..k+G) (reduce_segments: M segments of S vectors).
  template <SensitivityReduce kReduce, int S, int M, typename Fn>
  LP_SIMD_INLINE static void for_groups(const T* tile, const Entry<T>* entry, int64_t n, const V* inv, Fn fn) {
    static_assert(S * M == NV, "segments tile the row");
    int64_t k = 0;
    for (; k + kGroup <= n; k += kGroup) {
      fn.template operator()<kGroup>(k, reduce_segments<kReduce, kGroup, S, M>(tile, entry + k, inv));
    }
    if constexpr (kGroup >= 8) {
      if (k + 4 <= n) {
        fn.template operator()<4>(k, reduce_segments<kReduce, 4, S, M>(tile, entry + k, inv));
        k += 4;
      }
    }
    if constexpr (kGroup >= 4) {
      if (k + 2 <= n) {
        fn.template operator()<2>(k, reduce_segments<kReduce, 2, S, M>(tile, entry + k, inv));
        k += 2;
      }
    }
    for (; k < n; ++k) fn.template operator()<1>(k, reduce_segments<kReduce, 1, S, M>(tile, entry + k, inv));
  }
};

// Weight sensitivities: every entry's reduction over the tile folds into its slot. kFinal:
// the tile holds all positions the result reduces over (all of a data point's for "mean";
// any for "max"), so the value folds in with max (the max over data points); otherwise it
// adds a partial sum of a data point. A mean's tile may hold M data points, S vectors each
// (NV = M S; positions past a point's end are zero).
template <typename T, int NV, SensitivityReduce kReduce, bool kFinal, int M = 1>
struct WeightKernel {
  static_assert(kFinal || kReduce == SensitivityReduce::kMean, "a max is always final");
  static_assert(kFinal || M == 1, "partial sums cover one data point");
  static constexpr int S = NV / M;
  using Ops = TileOps<T, NV>;
  using V = typename Ops::V;

  // Both passes for the units [u0, u1) of one group. z: scratch of 2 * NV vectors per unit;
  // slot: the accumulators of the units' entries, block by block in entry order
  // (ListsView::count(2 u0, 2 u1) of them); emit: as TileOps::inverses.
  template <typename Emit>
  static void run(const T* tile, const ListsView<T>& lists, int64_t u0, int64_t u1, V* z, T* slot, const Emit& emit) {
    Ops::inverses(tile, lists, u0, u1, z, emit);
    constexpr SensitivityReduce kFold = kFinal ? SensitivityReduce::kMax : SensitivityReduce::kMean;
    const int64_t l0 = 2 * u0, l1 = 2 * u1;
    for (int64_t b = 0; b < lists.blocks; ++b) {  // pass 2: reduce A * V
      const int64_t first = lists.begin(b, l0);
      for (int64_t l = l0; l < l1; ++l) {
        const int64_t k0 = lists.begin(b, l);
        T* s = slot + (k0 - first);
        Ops::template for_groups<kReduce, S, M>(
            tile, lists.entry + k0, lists.begin(b, l + 1) - k0, z + (l - l0) * NV, [s]<int G>(int64_t k, V value) {
              const auto folded = reduce_step(kFold, simd::load_narrow<T, G>(s + k), simd::first_lanes<T, G>(value));
              simd::store_narrow<T, G>(s + k, folded);
            });
      }
      slot += lists.begin(b, l1) - first;
    }
  }
};

// Channel sensitivities (PFP): only the max over a channel's entries matters, so an entry
// whose bound |w| * (max A of its row) * (max V of its list) cannot exceed its channel's best
// so far is skipped: with A, V >= 0 every product is at most its bound (rounding is monotone),
// so the result is exactly that of evaluating every entry. A list's entries of one input
// channel are tested together first (largest |w|, largest A of the channel's rows), a
// vector of channels at a time; the survivors entry by entry; the rest are reduced in groups.
template <typename T, int NV>
struct ChannelKernel {
  using Ops = TileOps<T, NV>;
  using V = typename Ops::V;
  static constexpr int kGroup = Ops::kGroup;
  static constexpr int kLanes = Ops::kLanes;

  // Scratch: row maxima of every edge, then of every channel.
  static int64_t scratch_size(int64_t edges, int64_t channels) { return edges + channels; }

  // best: the group's channels; kernel_area: edges per channel; z, emit: as WeightKernel's.
  template <typename Emit>
  static void run(const T* tile, const ListsView<T>& lists, int64_t u0, int64_t u1, int64_t kernel_area, V* z, T* best,
                  T* scratch, const Emit& emit) {
    Ops::inverses(tile, lists, u0, u1, z, emit);
    const int64_t channels = lists.channels;
    T* row_max = scratch;
    T* channel_max = scratch + channels * kernel_area;
    for (int64_t c = 0; c < channels; ++c) {
      T top = T(0);
      for (int64_t r = c * kernel_area; r < (c + 1) * kernel_area; ++r) {
        V m = Ops::row(tile, int32_t(r * Ops::kWidth), 0);
        for (int v = 1; v < NV; ++v) m = vmax(m, Ops::row(tile, int32_t(r * Ops::kWidth), v));
        row_max[r] = hmax(m);
        top = std::max(top, row_max[r]);
      }
      channel_max[c] = top;
    }
    Entry<T> pending[kGroup];
    int32_t slot[kGroup];
    for (int64_t l = 2 * u0; l < 2 * u1; ++l) {
      const V* inv = z + (l - 2 * u0) * NV;
      V m = inv[0];
      for (int v = 1; v < NV; ++v) m = vmax(m, inv[v]);
      const T inv_max = hmax(m);
      if (!(inv_max > T(0))) continue;  // z <= eps at every position: every value is 0
      int n = 0;
      const auto flush = [&]<int G>(int from) {
        const V value = Ops::template reduce_rows<SensitivityReduce::kMax, G>(tile, pending + from, inv);
        for (int j = 0; j < G; ++j) {
          T& b = best[slot[from + j]];
          b = std::max(b, pending[from + j].magnitude * value[j]);
        }
      };
      const auto scan = [&](int64_t c) {  // the entries of channel c, one by one
        const int64_t k0 = lists.channel_begin[l * channels + c], k1 = k0 + lists.channel_count[l * channels + c];
        for (int64_t k = k0; k < k1; ++k) {
          const Entry<T> en = lists.entry[k];
          if (!(en.magnitude * (row_max[en.row / Ops::kWidth] * inv_max) > best[c])) continue;
          pending[n] = en;
          slot[n] = static_cast<int32_t>(c);
          if (++n == kGroup) {
            flush.template operator()<kGroup>(0);
            n = 0;
          }
        }
      };
      const T* largest = lists.largest + l * channels;
      int64_t c = 0;
      for (; c + kLanes <= channels; c += kLanes) {
        const auto pass = simd::load(largest + c) * (simd::load(channel_max + c) * inv_max) > simd::load(best + c);
        for (int j = 0; j < kLanes; ++j) {
          if (pass[j]) scan(c + j);
        }
      }
      for (; c < channels; ++c) {
        if (largest[c] * (channel_max[c] * inv_max) > best[c]) scan(c);
      }
      int from = 0;
      if constexpr (kGroup >= 8) {
        if (n - from >= 4) flush.template operator()<4>(from), from += 4;
      }
      if constexpr (kGroup >= 4) {
        if (n - from >= 2) flush.template operator()<2>(from), from += 2;
      }
      for (; from < n; ++from) flush.template operator()<1>(from);
    }
  }

  LP_SIMD_INLINE static V vmax(V a, V b) { return a > b ? a : b; }

  LP_SIMD_INLINE static T hmax(V v) {
    T m = v[0];
    for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
    return m;
  }
};

}  // namespace lostprune::sensitivity_cpu
