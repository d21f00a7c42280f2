// SIMD micro-kernels of the CPU sparse convolution; the drivers (plans, tiles, threads)
// are in sparse_conv_cpu.cpp. A tile is up to kTileVectors SIMD vectors of consecutive
// outputs of one output channel, held in registers while that channel's nonzeros stream
// past: per nonzero one broadcast and one fused multiply-add per vector.
//
// Loads bound this, not FMAs (one vector load per FMA): about 0.6 of oneDNN's rate per FMA
// at 50 % density on a CPU with two 512-bit FMA pipes (AMD Zen 5). Sharing each load among
// the output channels that read the same tap (sets of 4 channels, one branch-free loop per
// channel mask) was tried and not kept: 1.2x on a random 50 %-dense 3x3 layer alone, but
// 0.98x end to end on WT-90 % ResNet18 (slower at 33 % density and on 1x1 layers, where the
// per-mask loops' exits and the plan cost more than the saved loads).
//
// Written with GCC vector extensions, so one source compiles to AVX-512 (-march=native on
// an AVX-512 CPU), AVX2 (LOSTPRUNE_MARCH=x86-64-v3) or SSE, for float and double; only the
// AVX-512 masked plane fill (sparse_conv_planes.cpp) uses intrinsics.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "sparse_conv.h"

namespace lostprune {
namespace cpu {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
// Accumulators per tile: 8 independent FMA chains hide the FMA latency, and 8 vectors
// plus a broadcast fit the 16 registers of AVX2 as well as the 32 of AVX-512.
constexpr int kTileVectors = 8;

template <typename S>
struct Simd {
  typedef S V __attribute__((vector_size(kVecBytes)));
  using Lane = std::conditional_t<sizeof(S) == 4, int32_t, int64_t>;
  typedef Lane M __attribute__((vector_size(kVecBytes)));  // lane mask: all ones or zero
  static constexpr int L = kVecBytes / sizeof(S);
};

template <typename S>
inline typename Simd<S>::V load_vec(const S* p) {
  typename Simd<S>::V v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load (as fast as an aligned one on aligned data)
  return v;
}

template <typename S>
inline void store_vec(S* p, const typename Simd<S>::V& v) {
  std::memcpy(p, &v, sizeof(v));
}

// Where a tile's sums start (`in`, the partial sums of earlier chunks; nullptr: `bias` in
// every lane) and where they go.
template <typename S>
struct TileAcc {
  const S* in;
  S bias;
  S* out;
};

// ---------------------------------------------------------------------------- tiles
// Vectors per tile up to which nonzeros alternate between two sets of accumulators: a
// channel's run of nonzeros in a chunk is short, and one FMA chain per vector would make
// each run wait on its chain's latency (4 cycles per nonzero) rather than on throughput.
#if defined(__AVX512F__)
constexpr int kTwoSetsMaxVectors = 4;  // 32 registers
#else
constexpr int kTwoSetsMaxVectors = 3;  // 16 registers: 2 x 3 sums, weights and loads
#endif

// One tile over the nonzeros [k0, k1) of one chunk: nonzero k reads the vectors at
// base + code[k] * row_stride (kTable false: band rows, see below) or base + table[code[k]]
// (kTable: the phase planes read in place, "direct").
// With kScan it stops early at the first nonzero whose code is >= code_end (the end of the
// chunk) and returns where it stopped: the first tile of a call finds each (channel,
// chunk) range while computing (codes ascend within a channel).
// Sums start from zero and meet the tile's start (bias or partial sums, often in L2) at
// the end, so that load overlaps the FMAs instead of delaying them.
template <typename S, int T, bool kScan, bool kTable>
inline int64_t tile_kernel(const S* base, int64_t row_stride, const int32_t* table, const int32_t* code, const S* val,
                           int64_t k0, int64_t k1, int32_t code_end, const TileAcc<S>& io) {
  using V = typename Simd<S>::V;
  constexpr int L = Simd<S>::L;
  constexpr int kSets = T <= kTwoSetsMaxVectors ? 2 : 1;
  V acc[kSets][T];
#pragma GCC unroll 32
  for (int i = 0; i < kSets * T; ++i) acc[i / T][i % T] = V{};
  auto src_of = [&](int32_t c) { return kTable ? base + table[c] : base + c * row_stride; };
  int64_t k = k0;
  if constexpr (kSets == 2) {
    for (; k + 1 < k1; k += 2) {
      const int32_t c0 = code[k], c1 = code[k + 1];
      if (kScan && c1 >= code_end) break;  // c0 < c1: both in the chunk otherwise
      const S* s0 = src_of(c0);
      const S* s1 = src_of(c1);
      const S w0 = val[k], w1 = val[k + 1];
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        acc[0][t] += w0 * load_vec(s0 + t * L);
        acc[kSets - 1][t] += w1 * load_vec(s1 + t * L);
      }
    }
  }
  for (; k < k1; ++k) {
    const int32_t c = code[k];
    if (kScan && c >= code_end) break;
    const S* src = src_of(c);
    const S w = val[k];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[0][t] += w * load_vec(src + t * L);
  }
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    V sum = kSets == 2 ? acc[0][t] + acc[kSets - 1][t] : acc[0][t];
    sum += io.in == nullptr ? V{} + io.bias : load_vec(io.in + t * L);
    store_vec(io.out + t * L, sum);
  }
  return k;
}

// ---------------------------------------------------------------------------- band rows
// The band (im2col of one tile and chunk): row `code` holds, for the tile's pixels in
// order, the input that tap code reads, aligned and without gaps, so one nonzero is T
// aligned loads and T FMAs. Rows are gathered from the phase planes (sparse_conv.h).
//
// How one tile's band row is gathered from the phase planes (sparse_conv.h): vector v of
// the row starts at plane offset base[v] and, where its pixels wrap to the next output
// rows, takes the lanes from mask[v][b] on from base[v] + (b + 1) * gap (gap: the plane
// row's columns beyond the output width). Tiles whose vectors wrap more than kMaxWraps
// times (outputs narrower than about L / kMaxWraps) copy lane by lane from `lane`.
constexpr int kMaxWraps = 3;

template <typename S>
struct BandGather {
  using M = typename Simd<S>::M;
  int vectors = 0;
  int64_t gap = 0;
  bool by_lane = false;
  int32_t base[kTileVectors];
  int wraps[kTileVectors];
  M mask[kTileVectors][kMaxWraps];
  int32_t lane[kTileVectors * Simd<S>::L];  // by_lane: plane offset of every pixel
};

// The gather of the tile of pixels [p0, p0 + n) (dense numbering p = oh * OW + ow).
// Lanes past n repeat the last pixel: they are computed but never stored.
template <typename S>
BandGather<S> band_gather(const SparseConvGeometry& g, int64_t p0, int64_t n) {
  constexpr int L = Simd<S>::L;
  BandGather<S> bg;
  bg.vectors = static_cast<int>((n + L - 1) / L);
  bg.gap = g.Wq - g.OW;
  for (int v = 0; v < bg.vectors; ++v) {
    const int64_t first = p0 + int64_t(v) * L;
    bg.base[v] = static_cast<int32_t>(pixel_plane_offset(g, first));
    bg.wraps[v] = 0;
    typename Simd<S>::Lane row_of[L];
    for (int j = 0; j < L; ++j) {
      const int64_t p = first + std::min<int64_t>(j, p0 + n - 1 - first);
      bg.lane[v * L + j] = static_cast<int32_t>(pixel_plane_offset(g, p));
      row_of[j] = static_cast<typename Simd<S>::Lane>(p / g.OW - first / g.OW);
    }
    const int wraps = bg.gap == 0 ? 0 : static_cast<int>(row_of[L - 1]);  // no gap: rows run on
    if (wraps > kMaxWraps) {
      bg.by_lane = true;
      continue;
    }
    bg.wraps[v] = wraps;
    for (int b = 0; b < bg.wraps[v]; ++b) {
      for (int j = 0; j < L; ++j) bg.mask[v][b][j] = row_of[j] > b ? -1 : 0;
    }
  }
  return bg;
}

// dst[0 .. vectors * L) = the band row whose input starts at src (its channel's planes
// plus the tap offset).
template <typename S>
inline void gather_band_row(S* dst, const S* src, const BandGather<S>& bg) {
  using V = typename Simd<S>::V;
  constexpr int L = Simd<S>::L;
  if (bg.by_lane) {
    for (int j = 0; j < bg.vectors * L; ++j) dst[j] = src[bg.lane[j]];
    return;
  }
  for (int v = 0; v < bg.vectors; ++v) {
    const S* s = src + bg.base[v];
    V x = load_vec(s);
    for (int b = 0; b < bg.wraps[v]; ++b) {
      s += bg.gap;
      x = bg.mask[v][b] ? load_vec(s) : x;
    }
    store_vec(dst + v * L, x);
  }
}

// ---------------------------------------------------------------------------- epilogue
// The fused epilogue of a call (sparse_epilogue): `residual` has the output's layout
// (nullptr: none), offset along with the output pointer.
template <typename S>
struct Epilogue {
  const S* residual;
  bool relu;

  bool none() const { return residual == nullptr && !relu; }
  Epilogue at(int64_t offset) const { return {residual != nullptr ? residual + offset : nullptr, relu}; }
};

// dst[r] = epilogue(src[r * step], residual[r]) for r < n. Compile-time cases keep every
// loop branch-free, and the contiguous ones (step 1) vectorized.
template <bool kResidual, bool kRelu, typename S>
inline void store_run_as(S* dst, const S* src, int64_t step, int64_t n, const S* residual) {
  if (step == 1) {
    for (int64_t r = 0; r < n; ++r) dst[r] = sparse_epilogue(src[r], kResidual ? residual[r] : S(0), kRelu);
  } else {
    for (int64_t r = 0; r < n; ++r) dst[r] = sparse_epilogue(src[r * step], kResidual ? residual[r] : S(0), kRelu);
  }
}

template <typename S>
inline void store_run(S* dst, const S* src, int64_t step, int64_t n, const Epilogue<S>& e) {
  if (e.residual != nullptr) {
    e.relu ? store_run_as<true, true>(dst, src, step, n, e.residual)
           : store_run_as<true, false>(dst, src, step, n, e.residual);
  } else if (e.relu) {
    store_run_as<false, true>(dst, src, step, n, e.residual);
  } else {
    store_run_as<false, false>(dst, src, step, n, e.residual);
  }
}

}  // namespace cpu
}  // namespace lostprune
