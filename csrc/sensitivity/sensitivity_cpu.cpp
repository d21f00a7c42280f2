// CPU sensitivity kernels (docs/methods.md §Sensitivities). Fused and tiled: for a run of up to 256
// output positions (of one data point for "mean"; across data points for "max") the im2col
// tile A [edges, positions] is built in a thread-local buffer; then pass 1 accumulates z+ and
// z- of every output unit over its positive and negative edges (vectorized over positions),
// turns them into V = 1/z, and pass 2 reduces A * V over the tile for every edge (sum for
// "mean", max for "max"). Each edge is visited with the V of its own sign only and zero
// (pruned) weights are skipped, so each pass costs one multiply-add (or multiply-max) per
// edge and position; edges are walked in L1-sized blocks shared by all units. Memory: a
// weight-sized result per thread plus one tile; nothing of size batch x weight x positions.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "sensitivity.h"
#include "sensitivity_prepare.h"

namespace lostprune {
namespace {

// GCC/Clang vector extensions: portable SIMD that compiles to AVX-512, AVX2 or NEON
// according to -march.
template <typename T>
struct Simd {
  static constexpr int kBytes = 64;
  static constexpr int kLanes = kBytes / static_cast<int>(sizeof(T));
  typedef T vec __attribute__((vector_size(kBytes)));
};

template <typename V>
inline V vmax(V a, V b) {
  return a > b ? a : b;
}

template <typename T>
inline T hsum(typename Simd<T>::vec v) {
  T s = v[0];
  for (int l = 1; l < Simd<T>::kLanes; ++l) s += v[l];
  return s;
}

template <typename T>
inline T hmax(typename Simd<T>::vec v) {
  T s = v[0];
  for (int l = 1; l < Simd<T>::kLanes; ++l) s = v[l] > s ? v[l] : s;
  return s;
}

#if defined(__AVX512F__)
template <>
inline float hsum<float>(Simd<float>::vec v) { return _mm512_reduce_add_ps(reinterpret_cast<__m512&>(v)); }
template <>
inline float hmax<float>(Simd<float>::vec v) { return _mm512_reduce_max_ps(reinterpret_cast<__m512&>(v)); }
template <>
inline double hsum<double>(Simd<double>::vec v) {
  return _mm512_reduce_add_pd(reinterpret_cast<__m512d&>(v));
}
template <>
inline double hmax<double>(Simd<double>::vec v) {
  return _mm512_reduce_max_pd(reinterpret_cast<__m512d&>(v));
}
#endif

// Horizontal sum (mean) or max of four vectors at once: out[j] = reduce over lanes of r[j].
template <typename T, SensitivityReduce kReduce>
inline void reduce4(const typename Simd<T>::vec* r, T* out) {
  for (int j = 0; j < 4; ++j) out[j] = kReduce == SensitivityReduce::kMean ? hsum<T>(r[j]) : hmax<T>(r[j]);
}

#if defined(__AVX512F__)
template <SensitivityReduce kReduce>
inline __m512 op512(__m512 a, __m512 b) {
  return kReduce == SensitivityReduce::kMean ? _mm512_add_ps(a, b) : _mm512_max_ps(a, b);
}
template <SensitivityReduce kReduce>
inline __m128 op128(__m128 a, __m128 b) {
  return kReduce == SensitivityReduce::kMean ? _mm_add_ps(a, b) : _mm_max_ps(a, b);
}

// Transposing reduction: 16 lanes x 4 vectors -> 4 values in 11 instructions.
template <SensitivityReduce kReduce>
inline void reduce4_ps(const Simd<float>::vec* r, float* out) {
  const __m512 a = reinterpret_cast<const __m512&>(r[0]), b = reinterpret_cast<const __m512&>(r[1]);
  const __m512 c = reinterpret_cast<const __m512&>(r[2]), d = reinterpret_cast<const __m512&>(r[3]);
  // per 128-bit lane: [a0|a2, b0|b2, a1|a3, b1|b3] and the same for c, d
  const __m512 ab = op512<kReduce>(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = op512<kReduce>(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  // per 128-bit lane: [a, b, c, d]
  const __m512 abcd = op512<kReduce>(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
  const __m512 half = op512<kReduce>(abcd, _mm512_shuffle_f32x4(abcd, abcd, 0x4E));  // swap 256-bit halves
  const __m128 res = op128<kReduce>(_mm512_castps512_ps128(half), _mm512_extractf32x4_ps(half, 1));
  _mm_storeu_ps(out, res);
}

template <>
inline void reduce4<float, SensitivityReduce::kMean>(const Simd<float>::vec* r, float* out) {
  reduce4_ps<SensitivityReduce::kMean>(r, out);
}
template <>
inline void reduce4<float, SensitivityReduce::kMax>(const Simd<float>::vec* r, float* out) {
  reduce4_ps<SensitivityReduce::kMax>(r, out);
}
#endif

// Each output unit's nonzero weights: positive edges first, then negative ones, each part
// sorted by edge, as (edge index, |w|). Pruned (zero) weights contribute nothing.
template <typename T>
struct SignedRows {
  std::vector<int64_t> start;  // [Cout + 1]
  std::vector<int64_t> split;  // [Cout]: index of the unit's first negative edge
  std::vector<int32_t> edge;
  std::vector<T> magnitude;
};

// True when every value is finite (vectorizable: NaN fails every comparison).
template <typename T>
inline bool all_finite(const T* v, int64_t n) {
  const T big = std::numeric_limits<T>::max();
  bool ok = true;
  for (int64_t k = 0; k < n; ++k) ok &= (v[k] >= -big) & (v[k] <= big);
  return ok;
}

template <typename T>
inline bool all_at_least_zero(const T* v, int64_t n) {
  bool ok = true;
  for (int64_t k = 0; k < n; ++k) ok &= v[k] >= T(0);
  return ok;
}

template <typename T>
SignedRows<T> signed_rows(const char* op, const T* w, int64_t cout, int64_t edges) {
  SignedRows<T> rows;
  rows.start.assign(cout + 1, 0);
  rows.split.assign(cout, 0);
  std::vector<int64_t> n_pos(cout, 0);
  std::vector<char> finite(cout, 1);
  // small layers run inline
  const int64_t grain = std::max<int64_t>(16, (1 << 16) / std::max<int64_t>(edges, 1));
  at::parallel_for(0, cout, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* row = w + i * edges;
      int64_t pos = 0, neg = 0;
      for (int64_t r = 0; r < edges; ++r) {
        pos += row[r] > T(0);
        neg += row[r] < T(0);
      }
      finite[i] = all_finite(row, edges);
      n_pos[i] = pos;
      rows.start[i + 1] = pos + neg;
    }
  });
  for (int64_t i = 0; i < cout; ++i) {
    TORCH_CHECK(finite[i], op, ": weight row ", i, " contains NaN or inf");
    rows.start[i + 1] += rows.start[i];
    rows.split[i] = rows.start[i] + n_pos[i];
  }
  rows.edge.resize(rows.start[cout]);
  rows.magnitude.resize(rows.start[cout]);
  at::parallel_for(0, cout, grain, [&](int64_t begin, int64_t end) {
    // Branch-free compaction (signs are random: branches would mispredict half the time)
    // into row-sized scratch with one slot of slack, then copied into place.
    std::vector<int32_t> edge_buf(edges + 1);
    std::vector<T> mag_buf(edges + 1);
    for (int64_t i = begin; i < end; ++i) {
      const T* row = w + i * edges;
      int64_t k = 0;
      for (int64_t r = 0; r < edges; ++r) {
        edge_buf[k] = static_cast<int32_t>(r);
        mag_buf[k] = row[r];
        k += row[r] > T(0);
      }
      for (int64_t r = 0; r < edges; ++r) {
        edge_buf[k] = static_cast<int32_t>(r);
        mag_buf[k] = -row[r];
        k += row[r] < T(0);
      }
      std::copy(edge_buf.begin(), edge_buf.begin() + k, rows.edge.begin() + rows.start[i]);
      std::copy(mag_buf.begin(), mag_buf.begin() + k, rows.magnitude.begin() + rows.start[i]);
    }
  });
  return rows;
}

// A data point: image n of the batch, or its negative part (sign -1) after the sign split.
struct DataPoint {
  int64_t image;
  int sign;
};

// The im2col tile of `filled` consecutive positions starting at global position q0, where
// global position d * P + p is position p of data point d: tile[r * width + t]. The rest of
// each row, up to `width`, is zero (it adds nothing to any reduction).
// dst[ox] = max(0, sign * src[ox * stride]) for ox in [lo, hi) and 0 elsewhere in [begin, end).
template <typename T>
__attribute__((optimize("no-tree-loop-distribute-patterns")))
inline void copy_split_segment(T* dst, const T* src, int64_t begin, int64_t end, int64_t lo, int64_t hi,
                               int64_t stride, T sign) {
  lo = std::clamp(lo, begin, end);
  hi = std::clamp(hi, lo, end);
  for (int64_t ox = begin; ox < lo; ++ox) dst[ox] = T(0);
  if (stride == 1) {
    for (int64_t ox = lo; ox < hi; ++ox) dst[ox] = std::max(T(0), sign * src[ox]);
  } else {
    for (int64_t ox = lo; ox < hi; ++ox) dst[ox] = std::max(T(0), sign * src[ox * stride]);
  }
  for (int64_t ox = hi; ox < end; ++ox) dst[ox] = T(0);
}

#if defined(__AVX512F__)
// Stride 1 with AVX-512: masked loads read only [lo, hi) (masked lanes never fault) and
// masked stores write exactly [begin, end).
template <>
inline void copy_split_segment<float>(float* dst, const float* src, int64_t begin, int64_t end, int64_t lo,
                                      int64_t hi, int64_t stride, float sign) {
  if (stride != 1) {
    lo = std::clamp(lo, begin, end);
    hi = std::clamp(hi, lo, end);
    for (int64_t ox = begin; ox < end; ++ox) {
      dst[ox] = ox >= lo && ox < hi ? std::max(0.0f, sign * src[ox * stride]) : 0.0f;
    }
    return;
  }
  const __m512 zero = _mm512_setzero_ps(), s = _mm512_set1_ps(sign);
  for (int64_t ox = begin; ox < end; ox += 16) {
    const int64_t a = std::clamp(lo - ox, int64_t(0), int64_t(16)), b = std::clamp(hi - ox, a, int64_t(16));
    const __mmask16 load = static_cast<__mmask16>(((1u << b) - 1u) & ~((1u << a) - 1u));
    const __mmask16 store = static_cast<__mmask16>((1u << std::min<int64_t>(16, end - ox)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(load, src + ox);
    _mm512_mask_storeu_ps(dst + ox, store, _mm512_max_ps(_mm512_mul_ps(v, s), zero));
  }
}
#endif

// A run of a tile's positions that lies in one output row of one data point.
struct Segment {
  int64_t point, oy, ox0, n, t;  // data point, output row, first column, length, tile offset
};

// The segments of positions [q0, q0 + filled), where global position d * P + p is position
// p of data point d.
inline void tile_segments(const SensGeometry& g, int64_t q0, int64_t filled, std::vector<Segment>& segments) {
  const int64_t n_positions = positions(g);
  segments.clear();
  int64_t d = q0 / n_positions, p = q0 % n_positions;
  int64_t oy = p / g.out_w, ox = p % g.out_w;
  for (int64_t t = 0; t < filled;) {
    const int64_t n = std::min(g.out_w - ox, filled - t);
    segments.push_back({d, oy, ox, n, t});
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

// The im2col tile of the segments' positions: tile[r * width + t] = split(input read by edge
// r at tile position t); the rest of each row, up to `width`, is zero (it adds nothing to any
// reduction).
template <typename T>
void build_tile(const SensGeometry& g, const T* x, const std::vector<DataPoint>& points, int64_t group,
                const std::vector<Segment>& segments, int64_t filled, int64_t width, T* tile) {
  const int64_t edges = edges_per_output(g);
  const int64_t plane_size = g.in_h * g.in_w;
  for (int64_t r = 0; r < edges; ++r) {
    const EdgeTap tap = edge_tap(g, group, r);
    const ValidRange cols = valid_outputs(tap.dx, g.sw, g.in_w, g.out_w);
    T* row = tile + r * width;
    for (const Segment& seg : segments) {
      T* dst = row + seg.t - seg.ox0;  // dst[ox] for ox in [ox0, ox0 + n)
      const int64_t iy = seg.oy * g.sh + tap.dy;
      if (iy < 0 || iy >= g.in_h) {
        for (int64_t ox = seg.ox0; ox < seg.ox0 + seg.n; ++ox) dst[ox] = T(0);
        continue;
      }
      const DataPoint& point = points[seg.point];
      const T* src = x + (point.image * g.in_channels + tap.channel) * plane_size + iy * g.in_w + tap.dx;
      copy_split_segment(dst, src, seg.ox0, seg.ox0 + seg.n, cols.lo, cols.hi, g.sw, T(point.sign));
    }
    for (int64_t t = filled; t < width; ++t) row[t] = T(0);
  }
}

// Both passes over one tile of NV vectors (NV * lanes positions) for output units [ua, ub)
// of one group. Edges are visited in blocks small enough to stay in L1 across units; per
// unit and sign, the entries of a block are a contiguous run of its (sorted) edge list.
// kFinal: each tile holds all of a data point's positions (or the reduction is a max), so
// pass 2 folds its value into the slot with max; otherwise it adds a partial sum.
// (The kernels keep loop-distribution from turning register loads into memcpy calls.)
template <typename T, int NV, SensitivityReduce kReduce, bool kFinal>
struct TileKernel {
  static_assert(kFinal || kReduce == SensitivityReduce::kMean, "a max is always final");
  static T fold(T slot, T value) {
    return reduce_step<T>(kFinal ? SensitivityReduce::kMax : SensitivityReduce::kMean, slot, value);
  }

  using V = typename Simd<T>::vec;
  static constexpr int64_t kWidth = NV * Simd<T>::kLanes;

  // acc += sum over entries e in [e, end) with edge < edge_end of mag[e] * tile row edge[e].
  __attribute__((optimize("no-tree-loop-distribute-patterns")))
  static void accumulate_z(const T* tile, const int32_t* edge, const T* mag, int64_t& e, int64_t end,
                           int64_t edge_end, V* z) {
    V acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = z[v];
    int64_t k = e;
    for (; k < end && edge[k] < edge_end; ++k) {
      const V* a = reinterpret_cast<const V*>(tile + edge[k] * kWidth);
      const T w = mag[k];
      for (int v = 0; v < NV; ++v) acc[v] += w * a[v];
    }
    e = k;
    for (int v = 0; v < NV; ++v) z[v] = acc[v];
  }

  static V combine(V acc, V a, V inv) {
    return kReduce == SensitivityReduce::kMean ? acc + a * inv : vmax(acc, a * inv);
  }

  // out_row[edge] = reduce(out_row[edge], reduce over the tile of (tile row * inv)) for the
  // same entries. Four edges at a time with two accumulators each: eight independent chains
  // keep both FMA pipes busy, and one transposing reduction finishes four edges.
  __attribute__((optimize("no-tree-loop-distribute-patterns")))
  static void reduce_edges(const T* tile, const int32_t* edge, int64_t& e, int64_t end, int64_t edge_end,
                           const V* inv_mem, T* out_row) {
    V inv[NV];
    for (int v = 0; v < NV; ++v) inv[v] = inv_mem[v];
    int64_t k = e;
    for (; k + 4 <= end && edge[k + 3] < edge_end; k += 4) {
      const V* a[4];
      V acc0[4], acc1[4];
      for (int j = 0; j < 4; ++j) {
        a[j] = reinterpret_cast<const V*>(tile + edge[k + j] * kWidth);
        acc0[j] = a[j][0] * inv[0];
        acc1[j] = a[j][1] * inv[1];
      }
      for (int v = 2; v < NV; v += 2) {
        for (int j = 0; j < 4; ++j) {
          acc0[j] = combine(acc0[j], a[j][v], inv[v]);
          acc1[j] = combine(acc1[j], a[j][v + 1], inv[v + 1]);
        }
      }
      V r[4];
      for (int j = 0; j < 4; ++j) {
        r[j] = kReduce == SensitivityReduce::kMean ? acc0[j] + acc1[j] : vmax(acc0[j], acc1[j]);
      }
      T out[4];
      reduce4<T, kReduce>(r, out);
      for (int j = 0; j < 4; ++j) {
        T& slot = out_row[edge[k + j]];
        slot = fold(slot, out[j]);
      }
    }
    for (; k < end && edge[k] < edge_end; ++k) {
      const V* a = reinterpret_cast<const V*>(tile + edge[k] * kWidth);
      V acc0 = a[0] * inv[0], acc1 = a[1] * inv[1];
      for (int v = 2; v < NV; v += 2) {
        acc0 = combine(acc0, a[v], inv[v]);
        acc1 = combine(acc1, a[v + 1], inv[v + 1]);
      }
      T& slot = out_row[edge[k]];
      slot = fold(slot, kReduce == SensitivityReduce::kMean ? hsum<T>(acc0 + acc1)
                                                        : hmax<T>(vmax(acc0, acc1)));
    }
    e = k;
  }

  // z: scratch of (ub - ua) * 2 * NV vectors; cursor: scratch of 2 * (ub - ua) entries.
  // out: the accumulators of unit ua (unit u at out + (u - ua) * edges).
  static void run(const T* tile, const SignedRows<T>& rows, int64_t edges, int64_t ua, int64_t ub, V* z,
                  int64_t* cursor, T* out) {
    const int32_t* edge = rows.edge.data();
    const T* mag = rows.magnitude.data();
    const int64_t units = ub - ua;
    const int64_t block = std::max<int64_t>(8, (40 << 10) / (kWidth * static_cast<int64_t>(sizeof(T))));
    const V zero = {};
    for (int64_t k = 0; k < units * 2 * NV; ++k) z[k] = zero;
    for (int64_t u = 0; u < units; ++u) {
      cursor[2 * u] = rows.start[ua + u];
      cursor[2 * u + 1] = rows.split[ua + u];
    }
    for (int64_t r0 = 0; r0 < edges; r0 += block) {  // pass 1: z+ and z-
      for (int64_t u = 0; u < units; ++u) {
        accumulate_z(tile, edge, mag, cursor[2 * u], rows.split[ua + u], r0 + block, z + 2 * u * NV);
        accumulate_z(tile, edge, mag, cursor[2 * u + 1], rows.start[ua + u + 1], r0 + block,
                     z + (2 * u + 1) * NV);
      }
    }
    const V one = zero + T(1);
    const V eps = zero + T(kSensitivityEps);
    for (int64_t k = 0; k < units * 2 * NV; ++k) z[k] = z[k] > eps ? one / z[k] : zero;  // inverse_or_zero
    for (int64_t u = 0; u < units; ++u) {
      cursor[2 * u] = rows.start[ua + u];
      cursor[2 * u + 1] = rows.split[ua + u];
    }
    for (int64_t r0 = 0; r0 < edges; r0 += block) {  // pass 2: reduce A * V
      for (int64_t u = 0; u < units; ++u) {
        T* out_row = out + u * edges;
        reduce_edges(tile, edge, cursor[2 * u], rows.split[ua + u], r0 + block, z + 2 * u * NV, out_row);
        reduce_edges(tile, edge, cursor[2 * u + 1], rows.start[ua + u + 1], r0 + block, z + (2 * u + 1) * NV,
                     out_row);
      }
    }
  }
};

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

// Scans the batch: NaN/inf is an error; an image with negative entries is two data points.
template <typename T>
std::vector<DataPoint> data_points(const char* op, const SensitivityProblem& p) {
  const int64_t numel = image_numel(p.geo);
  const T* x = p.x.const_data_ptr<T>();
  std::vector<char> negative(p.batch, 0), finite(p.batch, 1);
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(numel, 1));  // small scans inline
  at::parallel_for(0, p.batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* image = x + n * numel;
      negative[n] = !all_at_least_zero(image, numel);
      finite[n] = all_finite(image, numel);
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

// acc [threads, Cout, edges]: per thread, the max over its data points of the reduction over
// positions (sum for mean, max for max) of A * V, before the |w| * scale factor. Mean works
// data point by data point (its sums are per data point); max streams tiles that run across
// data points (max over data points and positions commute).
template <typename T, int NV, SensitivityReduce kReduce>
at::Tensor accumulate_tiles(const SensitivityProblem& p, const SignedRows<T>& rows,
                            const std::vector<DataPoint>& points) {
  using Kernel = TileKernel<T, NV, kReduce, true>;
  using PartialKernel = TileKernel<T, NV, SensitivityReduce::kMean, false>;
  using V = typename Simd<T>::vec;
  constexpr int64_t kWidth = Kernel::kWidth;
  constexpr bool kMean = kReduce == SensitivityReduce::kMean;
  const SensGeometry& g = p.geo;
  const int64_t edges = edges_per_output(g);
  const int64_t cout = g.out_channels;
  const int64_t n_positions = positions(g);
  const int64_t n_points = static_cast<int64_t>(points.size());
  const T* x = p.x.const_data_ptr<T>();

  // Work: (tile range, unit chunk); enough chunks that every thread has work.
  const int64_t threads = at::get_num_threads();
  const int64_t tiles_per_point = (n_positions + kWidth - 1) / kWidth;
  const int64_t sweeps = kMean ? n_points : (n_points * n_positions + kWidth - 1) / kWidth;
  const int64_t pieces = std::clamp<int64_t>((4 * threads + sweeps - 1) / sweeps, 1,
                                             std::max<int64_t>(1, group_out_channels(g) / 4));
  const std::vector<UnitChunk> chunks = unit_chunks(g, pieces);
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  int64_t widest = 0;
  for (const UnitChunk& c : chunks) widest = std::max(widest, c.u1 - c.u0);

  // Small problems run inline: a parallel region costs more than they do (and far more on a
  // busy machine, where a descheduled worker stalls the region's barrier).
  const int64_t n_items = sweeps * n_chunks;
  const double work = static_cast<double>(n_points) * n_positions * cout * edges;
  const int64_t grain = work < double(1 << 22) ? n_items : 1;
  at::Tensor acc = at::zeros({threads, cout, edges}, p.x.options());
  T* acc_all = acc.mutable_data_ptr<T>();
  at::parallel_for(0, n_items, grain, [&](int64_t begin, int64_t end) {
    T* mine = acc_all + at::get_thread_num() * cout * edges;
    at::Tensor tile_buf = at::empty({edges * kWidth}, p.x.options());  // 64-byte aligned
    at::Tensor z_buf = at::empty({widest * 2 * kWidth}, p.x.options());
    T* tile = tile_buf.mutable_data_ptr<T>();
    V* z = reinterpret_cast<V*>(z_buf.mutable_data_ptr<T>());
    std::vector<int64_t> cursor(2 * widest);
    std::vector<Segment> segments;
    std::vector<T> sums(kMean && tiles_per_point > 1 ? widest * edges : 0);
    for (int64_t k = begin; k < end; ++k) {
      const int64_t sweep = k / n_chunks;
      const UnitChunk& c = chunks[k % n_chunks];
      if (!kMean || tiles_per_point == 1) {  // one tile: across data points for max, one for mean
        const int64_t q0 = kMean ? sweep * n_positions : sweep * kWidth;
        const int64_t filled = std::min(kWidth, kMean ? n_positions : n_points * n_positions - q0);
        tile_segments(g, q0, filled, segments);
        build_tile(g, x, points, c.group, segments, filled, kWidth, tile);
        Kernel::run(tile, rows, edges, c.u0, c.u1, z, cursor.data(), mine + c.u0 * edges);
        continue;
      }
      std::fill(sums.begin(), sums.begin() + (c.u1 - c.u0) * edges, T(0));
      for (int64_t t = 0; t < tiles_per_point; ++t) {
        const int64_t q0 = sweep * n_positions + t * kWidth;
        const int64_t filled = std::min(kWidth, n_positions - t * kWidth);
        tile_segments(g, q0, filled, segments);
        build_tile(g, x, points, c.group, segments, filled, kWidth, tile);
        PartialKernel::run(tile, rows, edges, c.u0, c.u1, z, cursor.data(), sums.data());
      }
      for (int64_t u = c.u0; u < c.u1; ++u) {  // max over data points of the sums
        T* dst = mine + u * edges;
        const T* src = sums.data() + (u - c.u0) * edges;
        for (int64_t r = 0; r < edges; ++r) dst[r] = std::max(dst[r], src[r]);
      }
    }
  });
  return acc;
}

// Tile width: wide tiles amortize the horizontal reductions; a mean over few positions
// takes a narrower one (its tiles stop at each data point's end).
template <typename T, SensitivityReduce kReduce>
at::Tensor accumulate(const char* op, const SensitivityProblem& p, const SignedRows<T>& rows) {
  const std::vector<DataPoint> points = data_points<T>(op, p);
  const int64_t lanes = Simd<T>::kLanes;
  const int64_t n_points = static_cast<int64_t>(points.size());
  const int64_t span = kReduce == SensitivityReduce::kMean ? positions(p.geo) : positions(p.geo) * n_points;
  if (span <= 4 * lanes) return accumulate_tiles<T, 4, kReduce>(p, rows, points);
  if (span <= 8 * lanes) return accumulate_tiles<T, 8, kReduce>(p, rows, points);
  return accumulate_tiles<T, 16, kReduce>(p, rows, points);
}

template <typename T>
at::Tensor accumulate_any(const char* op, const SensitivityProblem& p, const SignedRows<T>& rows) {
  return p.reduce == SensitivityReduce::kMean ? accumulate<T, SensitivityReduce::kMean>(op, p, rows)
                                              : accumulate<T, SensitivityReduce::kMax>(op, p, rows);
}

constexpr const char* kWeightOp = "lostprune.weight_sensitivity";
constexpr const char* kChannelOp = "lostprune.channel_sensitivity";

at::Tensor weight_sensitivity_cpu(const at::Tensor& x, const at::Tensor& weight,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups, c10::string_view reduce,
                                  const std::optional<at::Tensor>& running) {
  const SensitivityProblem p = prepare_sensitivity(kWeightOp, x, weight, stride, padding, dilation,
                                                   groups, reduce, running, SensitivityLevel::kWeight,
                                                   c10::DeviceType::CPU);
  at::Tensor out = at::empty(p.weight.sizes(), p.weight.options());
  AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "weight_sensitivity_cpu", [&] {
    const SensGeometry& g = p.geo;
    const int64_t cout = g.out_channels, edges = edges_per_output(g);
    const scalar_t* w = p.weight.const_data_ptr<scalar_t>();
    const SignedRows<scalar_t> rows = signed_rows(kWeightOp, w, cout, edges);
    const at::Tensor acc = accumulate_any<scalar_t>(kWeightOp, p, rows);
    const scalar_t* a = acc.const_data_ptr<scalar_t>();
    const scalar_t* prev = p.running ? p.running->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t threads = acc.size(0), size = cout * edges;
    const scalar_t scale = reduce_scale<scalar_t>(p.reduce, positions(g));
    at::parallel_for(0, size, 1 << 16, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        scalar_t best = a[k];
        for (int64_t t = 1; t < threads; ++t) best = std::max(best, a[t * size + k]);
        scalar_t value = std::abs(w[k]) * scale * best;
        o[k] = prev != nullptr ? std::max(prev[k], value) : value;
      }
    });
  });
  return out;
}

at::Tensor channel_sensitivity_cpu(const at::Tensor& x, const at::Tensor& weight,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups,
                                   const std::optional<at::Tensor>& running) {
  const SensitivityProblem p = prepare_sensitivity(kChannelOp, x, weight, stride, padding, dilation,
                                                   groups, "max", running, SensitivityLevel::kChannel,
                                                   c10::DeviceType::CPU);
  const SensGeometry& g = p.geo;
  at::Tensor out = at::empty({g.in_channels}, p.x.options());
  AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "channel_sensitivity_cpu", [&] {
    const int64_t cout = g.out_channels, edges = edges_per_output(g);
    const int64_t k2 = g.kh * g.kw, cin_g = group_in_channels(g), cout_g = group_out_channels(g);
    const scalar_t* w = p.weight.const_data_ptr<scalar_t>();
    const SignedRows<scalar_t> rows = signed_rows(kChannelOp, w, cout, edges);
    const at::Tensor acc = accumulate<scalar_t, SensitivityReduce::kMax>(kChannelOp, p, rows);
    const scalar_t* a = acc.const_data_ptr<scalar_t>();
    const scalar_t* prev = p.running ? p.running->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t threads = acc.size(0), size = cout * edges;
    const int64_t grain = std::max<int64_t>(1, (1 << 16) / (cout_g * k2));
    at::parallel_for(0, g.in_channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t group = c / cin_g, local = c % cin_g;
        scalar_t best = prev != nullptr ? prev[c] : scalar_t(0);
        for (int64_t u = group * cout_g; u < (group + 1) * cout_g; ++u) {
          for (int64_t k = 0; k < k2; ++k) {
            const int64_t idx = u * edges + local * k2 + k;
            scalar_t m = a[idx];
            for (int64_t t = 1; t < threads; ++t) m = std::max(m, a[t * size + idx]);
            best = std::max(best, std::abs(w[idx]) * m);
          }
        }
        o[c] = best;
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CPU, m) {
  m.impl("weight_sensitivity", &weight_sensitivity_cpu);
  m.impl("channel_sensitivity", &channel_sensitivity_cpu);
}

}  // namespace lostprune
