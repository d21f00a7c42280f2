// CPU drivers of the sensitivity ops (docs/methods.md §Sensitivities): the tile plan, the work items
// over threads and the final scores. The inputs come from sensitivity_lists.h (signed weight
// lists, data points of the sign split), the tiles from sensitivity_tile.h, the arithmetic
// from sensitivity_simd.h (both passes on one tile). For a weight mean a tile holds one data
// point, or several small ones (its sums are per data point); otherwise it runs across data
// points (max over data points and positions commute). A weight mean on small maps takes the
// batch-lane path instead (sensitivity_lanes.h: vector lanes over data points, no tiles).
// Memory: per running work item one tile, z for its units and the accumulators of its units'
// nonzero weights (or of its group's input channels), plus the batch-lane input on that path;
// nothing of size batch x weight x positions. On request the pass also returns the layer's
// output, z+ - z- of each image's data point(s), so a data pass need not run the convolution
// a second time. Every (data point, unit, position) is in exactly one work item (one tile of
// it); only an image's a+ and a- points write the same outputs, added under the image's lock
// into zeros (two terms: the sum is the same in either order).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <tuple>
#include <vector>

#include "sensitivity.h"
#include "sensitivity_lanes.h"
#include "sensitivity_lists.h"
#include "sensitivity_prepare.h"
#include "sensitivity_simd.h"
#include "sensitivity_tile.h"

namespace lostprune {
namespace sensitivity_cpu {
namespace {

constexpr const char* kWeightOp = "lostprune.weight_sensitivity";
constexpr const char* kChannelOp = "lostprune.channel_sensitivity";

// Output units split into chunks that never cross a group.
struct UnitChunk {
  int64_t group, u0, u1;
};

std::vector<UnitChunk> unit_chunks(const SensGeometry& g, int64_t pieces_per_group) {
  const int64_t cout_g = group_out_channels(g);
  const int64_t size = (cout_g + pieces_per_group - 1) / pieces_per_group;
  std::vector<UnitChunk> chunks;
  for (int64_t group = 0; group < g.groups; ++group) {
    for (int64_t u = 0; u < cout_g; u += size) {
      chunks.push_back({group, group * cout_g + u, group * cout_g + std::min(cout_g, u + size)});
    }
  }
  return chunks;
}

// Per chunk, the entries of its units' lists (an item's slots, block by block); the widest
// chunk and the most entries of one.
struct ChunkEntries {
  std::vector<int64_t> count;
  int64_t widest = 0, most = 0;
};

template <typename T>
ChunkEntries chunk_entries(const ListsView<T>& view, const std::vector<UnitChunk>& chunks) {
  ChunkEntries e;
  for (const UnitChunk& c : chunks) {
    e.count.push_back(view.count(2 * c.u0, 2 * c.u1));
    e.widest = std::max(e.widest, c.u1 - c.u0);
    e.most = std::max(e.most, e.count.back());
  }
  return e;
}

// Folds an item's slots (the chunk's entries, block by block) into out[k] with max, back in
// entry order.
template <typename T>
void fold_chunk(const ListsView<T>& view, const UnitChunk& c, const T* slots, T* out) {
  for (int64_t b = 0; b < view.blocks; ++b) {
    const int64_t k0 = view.begin(b, 2 * c.u0), k1 = view.begin(b, 2 * c.u1);
    for (int64_t k = k0; k < k1; ++k, ++slots) out[k] = std::max(out[k], *slots);
  }
}

// What a pass produces: per list entry, the max over data points of the reduction over
// positions (sum for "mean", max for "max") of A * V, before the |w| * scale factor; or per
// input channel, the max of |w| times that (PFP).
enum class Kind { kWeightMean, kWeightMax, kChannel };

// Tiles: `width` positions each. For a weight mean they stop at each data point's end
// (`per_point`: its tiles add partial sums); otherwise they run across data points. The
// width is the fewest vectors (at most kWideVectors) that cover the positions with as few
// tiles as the widest would: padding is at most one vector per tile.
constexpr int kWideVectors = simd::kRegisters >= 32 ? 8 : 6;  // pass 1 holds 2 x NV accumulators
// A per-point mean's tile may be wider where one tile then covers the data point with less
// padding than several of kWideVectors: 14 x 14 maps in 16 lanes take one tile of 13 vectors
// (6 % padding) instead of two of 7 (12.5 %) and no partial sums per point.
constexpr int kPointVectors = simd::kRegisters >= 32 ? 14 : kWideVectors;

struct TilePlan {
  int nv = kWideVectors;
  int64_t width = 0, tiles_per_sweep = 1, sweeps = 0;
  bool per_point = false;
  // A per-point mean over few positions packs `packed` data points per tile, `segment`
  // vectors each (then nv = packed * segment, kWideVectors / segment points).
  int packed = 1, segment = 0;
};

template <typename T>
TilePlan tile_plan(Kind kind, int64_t n_positions, int64_t n_points) {
  TilePlan plan;
  const int64_t lanes = simd::kLanes<T>, widest = kWideVectors * lanes;
  plan.per_point = kind == Kind::kWeightMean && n_positions > 1;  // a mean over one position is its value
  const int64_t span = plan.per_point ? n_positions : n_positions * n_points;
  int64_t tiles = (span + widest - 1) / widest;
  plan.nv = static_cast<int>((span + tiles * lanes - 1) / (tiles * lanes));
  const int64_t one = (span + lanes - 1) / lanes;  // vectors of one tile over the whole span
  if (plan.per_point && tiles > 1 && one <= kPointVectors && one < tiles * plan.nv) {
    tiles = 1;
    plan.nv = static_cast<int>(one);
  }
  plan.width = plan.nv * lanes;
  plan.tiles_per_sweep = plan.per_point ? tiles : 1;
  plan.sweeps = plan.per_point ? n_points : tiles;
  if (plan.per_point && tiles == 1 && 2 * plan.nv <= kWideVectors && n_points >= kWideVectors / plan.nv) {
    plan.segment = plan.nv;
    plan.packed = kWideVectors / plan.nv;
    plan.nv = plan.packed * plan.segment;
    plan.width = plan.nv * lanes;
    plan.sweeps = (n_points + plan.packed - 1) / plan.packed;
  }
  return plan;
}

// Scratch of one running item, 64-byte aligned (tile rows are loaded as aligned vectors).
struct Scratch {
  at::Tensor tile, z, slots, sums;
  Scratch(const at::TensorOptions& options, int64_t tile_size, int64_t z_size, int64_t slots_size, int64_t sums_size)
      : tile(at::empty({tile_size}, options)),
        z(at::empty({z_size}, options)),
        slots(at::empty({slots_size}, options)),
        sums(at::empty({sums_size}, options)) {}
};

// Work items are (range of sweeps, unit chunk); a sweep is a data point for a per-point
// mean, else one tile. Each item keeps its own accumulators (per entry of its units, or per
// input channel of its group) and folds them into `out` once, under its chunk's lock.
// Weight kinds: out[k] per list entry. Channel: out[c] per input channel, holding a lower
// bound of the result on entry (the running maxima) that lets ChannelKernel skip entries.
// Where the layer's output goes: y [B, Cout, positions], or null; with image_locks (when
// some image has two data points) y starts at zero and each point adds its signed part.
template <typename T>
struct OutputSink {
  T* y = nullptr;
  std::mutex* image_locks = nullptr;

  // One data point's output of units [u0, u1) at n positions from `row` (unit u's at row +
  // u * positions): z+ - z-, unit u's z+ at zp + (u - u0) * unit_stride, its z- `neg` past it,
  // values `step` apart. Stored; or, with image locks, added with the point's sign.
  void emit(const DataPoint& point, T* row, int64_t positions, int64_t u0, int64_t u1, const T* zp, int64_t unit_stride,
            int64_t neg, int64_t step, int64_t n) const {
    std::unique_lock<std::mutex> hold;
    if (image_locks != nullptr) hold = std::unique_lock<std::mutex>(image_locks[point.image]);
    const T sign = image_locks == nullptr || point.sign > 0 ? T(1) : T(-1);
    for (int64_t u = u0; u < u1; ++u, zp += unit_stride) {
      T* dst = row + u * positions;
      if (image_locks == nullptr) {
        for (int64_t i = 0; i < n; ++i) dst[i] = zp[i * step] - zp[neg + i * step];
      } else {
        for (int64_t i = 0; i < n; ++i) dst[i] += sign * (zp[i * step] - zp[neg + i * step]);
      }
    }
  }
};

template <typename T, int NV, Kind kKind, int kPacked = 1>
void accumulate_tiles(const SensitivityProblem& p, const SignedLists<T>& lists, const std::vector<DataPoint>& points,
                      const TilePlan& plan, T* out, OutputSink<T> sink) {
  constexpr bool kMean = kKind == Kind::kWeightMean;
  constexpr SensitivityReduce kReduce = kMean ? SensitivityReduce::kMean : SensitivityReduce::kMax;
  using Final = WeightKernel<T, NV, kReduce, true, kPacked>;
  using Partial = WeightKernel<T, NV, SensitivityReduce::kMean, false>;
  using Channel = ChannelKernel<T, NV>;
  using V = simd::Vec<T>;
  constexpr int64_t kWidth = TileOps<T, NV>::kWidth;
  const SensGeometry& g = p.geo;
  const int64_t edges = edges_per_output(g), cin_g = group_in_channels(g);
  const int64_t n_positions = positions(g);
  const int64_t n_points = static_cast<int64_t>(points.size());
  const T* x = p.x.const_data_ptr<T>();
  const ListsView<T> view = lists.view();

  const int64_t threads = at::get_num_threads();
  const int64_t sweeps = plan.sweeps;
  // Split units only when sweeps are too few to occupy every thread (each chunk builds its
  // own tiles), keeping at least 16 units per chunk.
  const int64_t pieces =
      std::clamp<int64_t>((4 * threads + sweeps - 1) / sweeps, 1, std::max<int64_t>(1, group_out_channels(g) / 16));
  const std::vector<UnitChunk> chunks = unit_chunks(g, pieces);
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  const int64_t ranges = threads == 1 ? 1 : std::clamp<int64_t>((4 * threads + n_chunks - 1) / n_chunks, 1, sweeps);
  const ChunkEntries chunk = chunk_entries(view, chunks);
  const std::vector<int64_t>& count = chunk.count;
  const int64_t widest = chunk.widest, most_entries = chunk.most;
  std::vector<std::mutex> locks(kKind == Kind::kChannel ? g.groups : n_chunks);

  // Small problems run inline: a parallel region costs more than they do (and far more on a
  // busy machine, where a descheduled worker stalls the region's barrier).
  const int64_t n_items = ranges * n_chunks;
  const double work = static_cast<double>(n_points) * n_positions * lists.entries();
  const int64_t grain = work < double(1 << 21) ? n_items : 1;
  const bool partial = kMean && plan.tiles_per_sweep > 1;
  const int64_t slots_size = kKind == Kind::kChannel ? cin_g + Channel::scratch_size(edges, cin_g) : most_entries;
  at::parallel_for(0, n_items, grain, [&](int64_t begin, int64_t end) {
    Scratch scratch(p.x.options(), edges * kWidth, widest * 2 * kWidth, slots_size, partial ? most_entries : 0);
    T* tile = scratch.tile.template mutable_data_ptr<T>();
    V* z = reinterpret_cast<V*>(scratch.z.template mutable_data_ptr<T>());
    T* mine = scratch.slots.template mutable_data_ptr<T>();
    T* sums = scratch.sums.template mutable_data_ptr<T>();
    std::vector<Segment> segments;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t c_index = item % n_chunks, range = item / n_chunks;
      const UnitChunk& c = chunks[c_index];
      // The output of the chunk's units at the tile's positions: z+ - z- (z: 2 x kWidth per unit).
      const auto emit = [&](const V* zv) {
        if (sink.y == nullptr) return;
        const T* zt = reinterpret_cast<const T*>(zv);
        for (const Segment& seg : segments) {
          const DataPoint& point = points[seg.point];
          T* row = sink.y + point.image * g.out_channels * n_positions + seg.oy * g.out_w + seg.ox0;
          sink.emit(point, row, n_positions, c.u0, c.u1, zt + seg.t, 2 * kWidth, kWidth, 1, seg.n);
        }
      };
      const int64_t s0 = sweeps * range / ranges, s1 = sweeps * (range + 1) / ranges;
      const int64_t entries = kKind == Kind::kChannel ? cin_g : count[c_index];
      T* const shared = kKind == Kind::kChannel ? out + c.group * cin_g : out;
      if constexpr (kKind == Kind::kChannel) {
        const std::lock_guard<std::mutex> hold(locks[c.group]);  // start from the best known so far
        std::copy(shared, shared + cin_g, mine);
      } else {
        std::fill(mine, mine + entries, T(0));
      }
      for (int64_t sweep = s0; sweep < s1; ++sweep) {
        if (!partial) {  // one tile: whole data points for mean, any positions otherwise
          segments.clear();
          if (plan.per_point) {
            for (int64_t d = sweep * kPacked; d < std::min(n_points, (sweep + 1) * kPacked); ++d) {
              tile_segments(g, d * n_positions, n_positions, segments, (d - sweep * kPacked) * (kWidth / kPacked));
            }
          } else {
            const int64_t q0 = sweep * kWidth;
            tile_segments(g, q0, std::min(kWidth, n_points * n_positions - q0), segments);
          }
          build_tile(g, x, points, c.group, segments, kWidth, tile);
          if constexpr (kKind == Kind::kChannel) {
            Channel::run(tile, view, c.u0, c.u1, g.kh * g.kw, z, mine, mine + cin_g, emit);
          } else {
            Final::run(tile, view, c.u0, c.u1, z, mine, emit);
          }
          continue;
        }
        if constexpr (kMean) {
          std::fill(sums, sums + entries, T(0));
          for (int64_t t = 0; t < plan.tiles_per_sweep; ++t) {
            const int64_t q0 = sweep * n_positions + t * kWidth;
            segments.clear();
            tile_segments(g, q0, std::min(kWidth, n_positions - t * kWidth), segments);
            build_tile(g, x, points, c.group, segments, kWidth, tile);
            Partial::run(tile, view, c.u0, c.u1, z, sums, emit);
          }
          for (int64_t k = 0; k < entries; ++k) mine[k] = std::max(mine[k], sums[k]);  // max over data points
        }
      }
      if constexpr (kKind == Kind::kChannel) {
        const std::lock_guard<std::mutex> hold(locks[c.group]);
        for (int64_t k = 0; k < cin_g; ++k) shared[k] = std::max(shared[k], mine[k]);
      } else {
        const std::lock_guard<std::mutex> hold(locks[c_index]);
        fold_chunk(view, c, mine, out);
      }
    }
  });
}

// The batch-lane path (sensitivity_lanes.h) of a weight mean: taken for small maps (a padded
// plane of at most 10 x 10: 7 x 7 and 8 x 8 maps of 3 x 3 kernels; larger ones measured slower
// than the tiles, benchmarks/RESULTS.md) and kernels wider than 1 x 1 (a 1 x 1 kernel's taps
// share no input: measured slower too) where the data points fill at least 3/4 of the lanes.
// A block of entries covers whole channels, about 128 KB of the input (L2: larger blocks
// measured faster than L1-sized ones, fewer z round trips per block).
constexpr int64_t kLanePlanePixels = 100, kLaneBlockBytes = 128 << 10;

template <typename T>
bool use_lanes(const SensGeometry& g, const LaneGeometry& lg, int64_t n_points) {
  constexpr int64_t lanes = simd::kLanes<T>;
  const int64_t vectors = (n_points + lanes - 1) / lanes;
  return positions(g) > 1 && g.kh * g.kw > 1 && lg.hp * lg.wp <= kLanePlanePixels &&
         4 * n_points >= 3 * vectors * lanes && g.in_channels * lg.plane < std::numeric_limits<int32_t>::max();
}

template <typename T>
int64_t lane_block_edges(const SensGeometry& g, const LaneGeometry& lg) {
  return std::max<int64_t>(1, kLaneBlockBytes / (lg.plane * int64_t(sizeof(T)))) * g.kh * g.kw;
}

// Work items are (vector of data points, unit chunk): pass 1 of the chunk's units over every
// block, the output, V, then pass 2; each item folds its entries' maxima into `out` under its
// chunk's lock, as accumulate_tiles does. Entry rows are offsets into the batch-lane input.
template <typename T>
void accumulate_lanes(const SensitivityProblem& p, const LaneGeometry& lg, const SignedLists<T>& lists,
                      const std::vector<DataPoint>& points, T* out, OutputSink<T> sink) {
  using Ops = LaneOps<T>;
  using V = simd::Vec<T>;
  constexpr int64_t L = simd::kLanes<T>;
  const SensGeometry& g = p.geo;
  const int64_t n_points = static_cast<int64_t>(points.size()), n_vectors = (n_points + L - 1) / L;
  const int64_t P = positions(g), cin = g.in_channels;
  const ListsView<T> view = lists.view();
  const T* x = p.x.const_data_ptr<T>();

  // The batch-lane input of every vector of data points, built once (64-byte aligned).
  at::Tensor input = at::empty({n_vectors * cin * lg.plane}, p.x.options());
  T* lanes_in = input.mutable_data_ptr<T>();
  at::parallel_for(0, n_vectors * cin, std::max<int64_t>(1, (1 << 16) / lg.plane), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t v = i / cin, c = i % cin;
      build_lane_input(g, lg, x, points.data() + v * L, std::min(L, n_points - v * L), c, c + 1,
                       lanes_in + v * cin * lg.plane);
    }
  });

  // Chunks of at most 64 units (z of a chunk stays in L2), enough items for every thread.
  const int64_t threads = at::get_num_threads(), cout_g = group_out_channels(g);
  const int64_t pieces = std::clamp<int64_t>(std::max((4 * threads + n_vectors - 1) / n_vectors, (cout_g + 63) / 64), 1,
                                             std::max<int64_t>(1, cout_g / 8));
  const std::vector<UnitChunk> chunks = unit_chunks(g, pieces);
  const int64_t n_chunks = static_cast<int64_t>(chunks.size()), n_items = n_vectors * n_chunks;
  const ChunkEntries chunk = chunk_entries(view, chunks);
  const std::vector<int64_t>& count = chunk.count;
  const int64_t widest = chunk.widest, most_entries = chunk.most;
  std::vector<std::mutex> locks(n_chunks);
  const double work = static_cast<double>(n_points) * P * lists.entries();
  const int64_t grain = work < double(1 << 21) ? n_items : 1;
  at::parallel_for(0, n_items, grain, [&](int64_t begin, int64_t end) {
    Scratch scratch(p.x.options(), 0, widest * 2 * P * L, most_entries, 0);
    V* z = reinterpret_cast<V*>(scratch.z.template mutable_data_ptr<T>());
    T* mine = scratch.slots.template mutable_data_ptr<T>();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ci = item % n_chunks, vec = item / n_chunks;
      const UnitChunk& c = chunks[ci];
      const T* in = lanes_in + vec * cin * lg.plane;
      const int64_t first_point = vec * L, live = std::min(L, n_points - first_point);
      std::fill(z, z + (c.u1 - c.u0) * 2 * P, V{});
      for (int64_t b = 0; b < view.blocks; ++b) {  // pass 1: z+ and z- of every unit
        for (int64_t u = c.u0; u < c.u1; ++u) {
          const int64_t kp = view.begin(b, 2 * u), kn = view.begin(b, 2 * u + 1), e = view.begin(b, 2 * u + 2);
          if (kp == e) continue;
          V* zp = z + (u - c.u0) * 2 * P;
          Ops::list_block(in, lg, view.entry, kp, kn, zp);
          Ops::list_block(in, lg, view.entry, kn, e, zp + P);
        }
      }
      if (sink.y != nullptr) {  // the output, z+ - z-, lane by lane into each data point's image
        const T* zt = reinterpret_cast<const T*>(z);
        for (int64_t d = 0; d < live; ++d) {
          const DataPoint& point = points[first_point + d];
          sink.emit(point, sink.y + point.image * g.out_channels * P, P, c.u0, c.u1, zt + d, 2 * P * L, P * L, L, P);
        }
      }
      for (int64_t k = 0; k < (c.u1 - c.u0) * 2 * P; ++k) z[k] = inverse_or_zero<V, T>(z[k]);
      std::fill(mine, mine + count[ci], T(0));
      T* slot = mine;
      for (int64_t b = 0; b < view.blocks; ++b) {  // pass 2: sums of A * V, max over the lanes
        const int64_t first = view.begin(b, 2 * c.u0);
        for (int64_t l = 2 * c.u0; l < 2 * c.u1; ++l) {
          const int64_t k0 = view.begin(b, l), k1 = view.begin(b, l + 1);
          if (k0 < k1) Ops::reduce_list(in, view.entry, k0, k1, z + (l - 2 * c.u0) * P, lg, slot + (k0 - first));
        }
        slot += view.begin(b, 2 * c.u1) - first;
      }
      const std::lock_guard<std::mutex> hold(locks[ci]);
      fold_chunk(view, c, mine, out);
    }
  });
}

// A mean's tile with data points of `Segment` vectors packed kWideVectors / Segment to a tile.
template <typename T, int Segment>
void accumulate_packed(const SensitivityProblem& p, const SignedLists<T>& lists, const std::vector<DataPoint>& points,
                       const TilePlan& plan, T* out, OutputSink<T> sink) {
  constexpr int kPacked = kWideVectors / Segment;
  accumulate_tiles<T, kPacked * Segment, Kind::kWeightMean, kPacked>(p, lists, points, plan, out, sink);
}

// accumulate_tiles at plan.nv vectors, instantiated from NV up to the widest tile of the kind
// (kPointVectors for a weight mean, kWideVectors otherwise).
template <typename T, Kind kKind, int NV = 1>
void accumulate_width(const SensitivityProblem& p, const SignedLists<T>& lists, const std::vector<DataPoint>& points,
                      const TilePlan& plan, T* out, OutputSink<T> sink) {
  constexpr int kWidest = kKind == Kind::kWeightMean ? kPointVectors : kWideVectors;
  if constexpr (NV <= kWidest) {
    if (plan.nv == NV) return accumulate_tiles<T, NV, kKind>(p, lists, points, plan, out, sink);
    return accumulate_width<T, kKind, NV + 1>(p, lists, points, plan, out, sink);
  }
  TORCH_CHECK(false, "lostprune: no tile kernel of ", plan.nv, " vectors");
}

template <typename T, Kind kKind>
void accumulate_kind(const SensitivityProblem& p, const SignedLists<T>& lists, const std::vector<DataPoint>& points,
                     const TilePlan& plan, T* out, OutputSink<T> sink) {
  if constexpr (kKind == Kind::kWeightMean) {
    if (plan.packed > 1) {
      switch (plan.segment) {
        case 1: return accumulate_packed<T, 1>(p, lists, points, plan, out, sink);
        case 2: return accumulate_packed<T, 2>(p, lists, points, plan, out, sink);
        case 3: return accumulate_packed<T, 3>(p, lists, points, plan, out, sink);
        case 4:
          if constexpr (kWideVectors >= 8) return accumulate_packed<T, 4>(p, lists, points, plan, out, sink);
          break;
      }
      TORCH_CHECK(false, "lostprune: no packed tile kernel of ", plan.segment, " vectors");
    }
  }
  accumulate_width<T, kKind>(p, lists, points, plan, out, sink);
}

// The signed lists of the layer's weight and the pass's result (out: per entry, or per input
// channel starting from `initial`); with `with_output`, the layer's output (undefined otherwise).
template <typename T>
struct Accumulated {
  SignedLists<T> lists;
  std::vector<T> out;
  at::Tensor output;
};

template <typename T>
Accumulated<T> accumulate(const char* op, const SensitivityProblem& p, Kind kind, bool with_output,
                          const T* initial = nullptr) {
  const SensGeometry& g = p.geo;
  const int64_t cout = g.out_channels, edges = edges_per_output(g);
  const std::vector<DataPoint> points = data_points<T>(op, p);
  // A mean over one position is that position's value: the max computes the same numbers.
  if (kind == Kind::kWeightMean && positions(g) == 1) kind = Kind::kWeightMax;
  const LaneGeometry lg = lane_geometry(g, simd::kLanes<T>);
  const bool lanes = kind == Kind::kWeightMean && use_lanes<T>(g, lg, static_cast<int64_t>(points.size()));
  const TilePlan plan = tile_plan<T>(kind, positions(g), static_cast<int64_t>(points.size()));
  TORCH_CHECK(lanes || edges * plan.width < std::numeric_limits<int32_t>::max(), op, ": a weight row of ", edges,
              " entries is too long for the CPU kernel");
  // Channel sensitivities test a list's entries channel by channel: blocks hold whole channels.
  const int64_t area = g.kh * g.kw;
  int64_t block = lanes ? lane_block_edges<T>(g, lg) : block_edges(plan.width * int64_t(sizeof(T)));
  if (kind == Kind::kChannel) block = std::max<int64_t>(1, block / area) * area;
  // Where each edge's input starts: its tile row, or on the batch-lane path its first tap's
  // offset in the batch-lane input (one table per group).
  std::vector<int32_t> rows(lanes ? g.groups * edges : edges);
  if (lanes) {
    for (int64_t group = 0; group < g.groups; ++group) {
      for (int64_t r = 0; r < edges; ++r) rows[group * edges + r] = static_cast<int32_t>(lane_offset(g, lg, group, r));
    }
  } else {
    for (int64_t r = 0; r < edges; ++r) rows[r] = static_cast<int32_t>(r * plan.width);
  }
  Accumulated<T> acc{
      signed_lists(op, p.weight.const_data_ptr<T>(), cout, edges, rows, block, kind == Kind::kChannel ? area : 0),
      {},
      {}};
  // The output: an image with negative entries has two data points (x = a+ - a-), which add
  // their parts into zeros under the image's lock; otherwise each output is written once.
  const bool split = static_cast<int64_t>(points.size()) > p.batch;
  std::vector<std::mutex> image_locks(with_output && split ? p.batch : 0);
  OutputSink<T> sink;
  if (with_output) {
    const std::vector<int64_t> shape{p.batch, cout, g.out_h, g.out_w};
    acc.output = split ? at::zeros(shape, p.x.options()) : at::empty(shape, p.x.options());
    sink = {acc.output.template mutable_data_ptr<T>(), split ? image_locks.data() : nullptr};
  }
  if (kind == Kind::kChannel) {
    acc.out.assign(initial, initial + g.in_channels);
  } else {
    acc.out.assign(acc.lists.entries(), T(0));
  }
  if (lanes) {
    accumulate_lanes<T>(p, lg, acc.lists, points, acc.out.data(), sink);
    return acc;
  }
  switch (kind) {
    case Kind::kWeightMean:
      accumulate_kind<T, Kind::kWeightMean>(p, acc.lists, points, plan, acc.out.data(), sink);
      break;
    case Kind::kWeightMax:
      accumulate_kind<T, Kind::kWeightMax>(p, acc.lists, points, plan, acc.out.data(), sink);
      break;
    case Kind::kChannel: accumulate_kind<T, Kind::kChannel>(p, acc.lists, points, plan, acc.out.data(), sink); break;
  }
  return acc;
}

// No output asked: an empty tensor in its place (the schema returns two).
at::Tensor no_output(const SensitivityProblem& p) { return at::empty({0}, p.x.options()); }

std::tuple<at::Tensor, at::Tensor> weight_sensitivity_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                          at::IntArrayRef stride, at::IntArrayRef padding,
                                                          at::IntArrayRef dilation, int64_t groups,
                                                          c10::string_view reduce,
                                                          const std::optional<at::Tensor>& running, bool with_output) {
  const SensitivityProblem p = prepare_sensitivity(kWeightOp, x, weight, stride, padding, dilation, groups, reduce,
                                                   running, SensitivityLevel::kWeight, c10::DeviceType::CPU);
  at::Tensor out = at::zeros(p.weight.sizes(), p.weight.options());
  at::Tensor output = no_output(p);
  AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "weight_sensitivity_cpu", [&] {
    const SensGeometry& g = p.geo;
    const int64_t cout = g.out_channels, edges = edges_per_output(g);
    const Accumulated<scalar_t> acc = accumulate<scalar_t>(
        kWeightOp, p, p.reduce == SensitivityReduce::kMean ? Kind::kWeightMean : Kind::kWeightMax, with_output);
    if (with_output) output = acc.output;
    const scalar_t scale = reduce_scale<scalar_t>(p.reduce, positions(g));
    const scalar_t* prev = p.running ? p.running->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const SignedLists<scalar_t>& lists = acc.lists;
    at::parallel_for(0, cout, std::max<int64_t>(1, (1 << 16) / edges), [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        for (int64_t b = 0; b < lists.blocks; ++b) {
          const int64_t k1 = lists.view().begin(b, 2 * u + 2);
          for (int64_t k = lists.view().begin(b, 2 * u); k < k1; ++k) {
            o[u * edges + lists.edge[k]] = lists.entry[k].magnitude * scale * acc.out[k];
          }
        }
        if (prev != nullptr) {
          for (int64_t r = u * edges; r < (u + 1) * edges; ++r) o[r] = std::max(prev[r], o[r]);
        }
      }
    });
  });
  return {out, output};
}

std::tuple<at::Tensor, at::Tensor> channel_sensitivity_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                           at::IntArrayRef stride, at::IntArrayRef padding,
                                                           at::IntArrayRef dilation, int64_t groups,
                                                           const std::optional<at::Tensor>& running, bool with_output) {
  const SensitivityProblem p = prepare_sensitivity(kChannelOp, x, weight, stride, padding, dilation, groups, "max",
                                                   running, SensitivityLevel::kChannel, c10::DeviceType::CPU);
  const SensGeometry& g = p.geo;
  at::Tensor out = at::empty({g.in_channels}, p.x.options());
  at::Tensor output = no_output(p);
  AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "channel_sensitivity_cpu", [&] {
    // The running maxima are the result's lower bound from the start (entries that cannot
    // beat them are skipped).
    std::vector<scalar_t> initial(g.in_channels, scalar_t(0));
    if (p.running) std::copy_n(p.running->const_data_ptr<scalar_t>(), g.in_channels, initial.begin());
    const Accumulated<scalar_t> acc = accumulate<scalar_t>(kChannelOp, p, Kind::kChannel, with_output, initial.data());
    std::copy(acc.out.begin(), acc.out.end(), out.mutable_data_ptr<scalar_t>());
    if (with_output) output = acc.output;
  });
  return {out, output};
}

}  // namespace
}  // namespace sensitivity_cpu

TORCH_LIBRARY_IMPL(lostprune, CPU, m) {
  m.impl("weight_sensitivity", &sensitivity_cpu::weight_sensitivity_cpu);
  m.impl("channel_sensitivity", &sensitivity_cpu::channel_sensitivity_cpu);
}

}  // namespace lostprune
