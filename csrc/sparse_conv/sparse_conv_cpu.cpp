// CPU masked sparse conv2d / linear (docs/architecture.md, Kernels): work proportional to the nonzeros.
//
// Per image (or per group of 16 small images, interleaved pixel by pixel), the input is
// copied once into phase planes (sparse_conv.h): zero padding, stride and dilation become
// one constant offset per nonzero. The output, numbered on the
// Wq-wide grid, is cut into tiles of up to kTileVectors SIMD vectors. For one tile and one
// output channel the tile lives in registers while the channel's nonzeros stream past,
// each one a broadcast and a fused multiply-add per vector on contiguous input.
//
// Cache: input channels are processed in chunks whose band of input (what one tile reads)
// fits in L1; loops run tile > chunk > output channel, so every output channel reuses the
// chunk's band from L1, and partial tiles wait in a small buffer between chunks.
//
// Alignment: an offset is (multiple of 16) + residue r. Within a chunk, each channel's
// nonzeros are bucketed by r (once per call). When buckets are large, the AVX-512 kernel
// sums a bucket from aligned loads into one extra register and folds it into the tile
// shifted by r lanes (one vpermt2ps per vector) instead of paying a cache-line-split load
// per vector and nonzero; with small buckets that fold costs more than it saves.
//
// Threads: one parallel region per call, no barrier. A thread owns whole images (or image
// groups) when there are enough, else an nnz-balanced block of output channels.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <type_traits>
#include <vector>

#include "sparse_conv.h"
#include "sparse_conv_args.h"

namespace lostprune {
namespace {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
constexpr int kTileVectors = 8;  // accumulators per tile: 8 FMAs in flight hide FMA latency
constexpr int kResidues = static_cast<int>(kPlaneAlign);  // offset buckets per chunk
static_assert((kResidues & (kResidues - 1)) == 0, "residues are taken with a mask");
constexpr int64_t kChunkBandBytes = 32 << 10;  // input band per chunk: most of a 48 KB L1
constexpr double kMinAlignedBucket = 6.0;  // mean nonzeros per bucket that pay for the fold
constexpr int64_t kMinSortedVectors = 32;  // vectors per nonzero (and call) that pay for the sort
constexpr int64_t kMinChunkNonzeros = 24;  // per output channel: pays for reloading its tile
constexpr int64_t kAlignRowsDensityInverse = 4;  // align plane rows at density <= 1/4
constexpr int64_t kMaxInterleavedPixels = 96;  // batch-interleave images up to this many pixels
// Work per thread below which a parallel region costs more than it saves (fork/join of a
// few microseconds; much more when the machine is oversubscribed).
constexpr int64_t kGrainNonzeros = 16384;  // small-batch linear: nonzeros x rows
constexpr int64_t kGrainFmas = 32768;      // convolution: vector FMAs
// Scratch buffers above this size are released after the call instead of kept per thread.
constexpr int64_t kKeepScratchBytes = int64_t(64) << 20;

template <typename S>
struct Simd {
  typedef S V __attribute__((vector_size(kVecBytes)));
  static constexpr int L = kVecBytes / sizeof(S);
};

// One (output channel, input chunk)'s nonzeros, bucketed by offset residue: bucket r holds
// entries [bucket[r], bucket[r + 1]). Sorted plans store each entry's offset minus its
// residue in `off`; natural-order plans keep the CSR tap codes in `code` and look offsets
// up in `table` (one entry per tap code), which saves a pass over the nonzeros per call.
template <typename S>
struct Nonzeros {
  const int32_t* off;
  const int32_t* code;
  const int32_t* table;
  const S* val;
  const int32_t* bucket;  // kResidues + 1 entries
};

// Where a tile's sums start (bias, or the partial sums of earlier chunks) and go.
template <typename S>
struct TileAcc {
  const S* in;  // nullptr: start from `bias`
  S bias;
  S* out;
};

// Portable tile (natural-order plans, whose bucket 0 holds the whole chunk: the table's
// offsets include the residue):
// out[0 .. T*L) = start + sum_k val[k] * in[table[code[k]] .. + T*L).
template <typename S, int T>
void unaligned_tile(const S* in, const Nonzeros<S>& nz, const TileAcc<S>& acc_io) {
  using V = typename Simd<S>::V;
  constexpr int L = Simd<S>::L;
  V acc[T];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    if (acc_io.in == nullptr) {
      acc[t] = V{} + acc_io.bias;
    } else {
      std::memcpy(&acc[t], acc_io.in + t * L, sizeof(V));
    }
  }
  for (int64_t k = nz.bucket[0]; k < nz.bucket[1]; ++k) {
    const S* src = in + nz.table[nz.code[k]];
    const S w = nz.val[k];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      V v;
      std::memcpy(&v, src + t * L, sizeof(V));  // unaligned load
      acc[t] += w * v;
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) std::memcpy(acc_io.out + t * L, &acc[t], sizeof(V));
}

#if defined(__AVX512F__)
// AVX-512 float tile with aligned loads only (`in` is 64-byte aligned). Bucket r sums into
// s[0..T] over aligned input; output vector t then needs lanes r.. of (s[t], s[t+1]).
template <int T>
void aligned_tile(const float* in, const Nonzeros<float>& nz, const TileAcc<float>& acc_io) {
  __m512 acc[T];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    acc[t] = acc_io.in == nullptr ? _mm512_set1_ps(acc_io.bias) : _mm512_loadu_ps(acc_io.in + 16 * t);
  }
  for (int64_t k = nz.bucket[0]; k < nz.bucket[1]; ++k) {
    const float* src = in + nz.off[k];
    const __m512 w = _mm512_set1_ps(nz.val[k]);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(w, _mm512_load_ps(src + 16 * t), acc[t]);
  }
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int r = 1; r < kResidues; ++r) {
    const int64_t k0 = nz.bucket[r], k1 = nz.bucket[r + 1];
    if (k0 == k1) continue;
    __m512 s[T + 1];
#pragma GCC unroll 17
    for (int t = 0; t <= T; ++t) s[t] = _mm512_setzero_ps();
    for (int64_t k = k0; k < k1; ++k) {
      const float* src = in + nz.off[k];
      const __m512 w = _mm512_set1_ps(nz.val[k]);
#pragma GCC unroll 17
      for (int t = 0; t <= T; ++t) s[t] = _mm512_fmadd_ps(w, _mm512_load_ps(src + 16 * t), s[t]);
    }
    const __m512i shift = _mm512_add_epi32(iota, _mm512_set1_epi32(r));
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[t] = _mm512_add_ps(acc[t], _mm512_permutex2var_ps(s[t], shift, s[t + 1]));
  }
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(acc_io.out + 16 * t, acc[t]);
}
#endif

template <typename S, int T>
void tile_kernel(bool aligned, const S* in, const Nonzeros<S>& nz, const TileAcc<S>& acc) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) {
    if (aligned) return aligned_tile<T>(in, nz, acc);
  }
#endif
  unaligned_tile<S, T>(in, nz, acc);
}

template <typename S>
void tile_n(int vectors, bool aligned, const S* in, const Nonzeros<S>& nz, const TileAcc<S>& acc) {
  static_assert(kTileVectors == 8, "extend the switch with kTileVectors");
  switch (vectors) {
    case 1: tile_kernel<S, 1>(aligned, in, nz, acc); break;
    case 2: tile_kernel<S, 2>(aligned, in, nz, acc); break;
    case 3: tile_kernel<S, 3>(aligned, in, nz, acc); break;
    case 4: tile_kernel<S, 4>(aligned, in, nz, acc); break;
    case 5: tile_kernel<S, 5>(aligned, in, nz, acc); break;
    case 6: tile_kernel<S, 6>(aligned, in, nz, acc); break;
    case 7: tile_kernel<S, 7>(aligned, in, nz, acc); break;
    default: tile_kernel<S, 8>(aligned, in, nz, acc); break;
  }
}

// Per-thread, 64-byte aligned, uninitialized scratch buffers, kept between calls so
// steady-state inference neither allocates nor page-faults. The per-code tables belong to
// the calling thread; everything else to the worker that uses it.
enum Slot {
  kWorkerPlanes, kPartialTiles, kPlanOffsets, kPlanValues, kPlanBuckets, kPlanCounts,
  kPlanTable, kPlanKeys, kSlots
};

struct ScratchBuffer {
  std::unique_ptr<char[]> data;
  int64_t bytes = 0;
};

ScratchBuffer& scratch_buffer(Slot slot) {
  thread_local ScratchBuffer buffers[kSlots];
  return buffers[slot];
}

template <typename T>
T* scratch(Slot slot, int64_t n) {
  ScratchBuffer& b = scratch_buffer(slot);
  const int64_t bytes = std::max<int64_t>(n, 1) * sizeof(T) + 64;
  if (b.bytes < bytes) {
    b.data.reset(new char[bytes]);
    b.bytes = bytes;
  }
  const auto addr = reinterpret_cast<uintptr_t>(b.data.get());
  return reinterpret_cast<T*>((addr + 63) & ~uintptr_t(63));
}

void release_large_scratch(std::initializer_list<Slot> slots) {
  for (Slot slot : slots) {
    ScratchBuffer& b = scratch_buffer(slot);
    if (b.bytes > kKeepScratchBytes) {
      b.data.reset();
      b.bytes = 0;
    }
  }
}

// Images are laid out one at a time (G = 1) or in groups of G = SIMD-lanes images
// interleaved: element j of a pixel belongs to image j, so one vector holds one pixel of
// every image in the group, every tap offset is a whole number of vectors (aligned loads
// without residue buckets) and no lane idles however small the image.

// Elements one group of G images occupies in the phase layout, including the tail that the
// last tile's vectors (one extra in the aligned kernel) and the widest tap may read past
// the final plane.
int64_t planes_numel(const SparseConvArgs& a, int64_t G) {
  return (a.Cin * a.g.channel_stride + a.g.max_dx + 3 * kPlaneAlign) * G;
}

#if defined(__AVX512F__)
// Lanes e of a 16-float load at in_row[first ..] whose column first + e lies in [0, W).
inline __mmask16 columns_inside(int64_t first, int64_t W) {
  const int64_t lo = std::clamp<int64_t>(-first, 0, 16), hi = std::clamp<int64_t>(W - first, 0, 16);
  const uint32_t below_hi = (uint32_t(1) << hi) - 1, below_lo = (uint32_t(1) << lo) - 1;
  return __mmask16(below_hi & ~below_lo);
}
#endif

// One plane row: row[x] = in_row[v0 + x * stride] where that column lies in [0, W), else 0
// (padding), for x < Wq. With AVX-512, strides 1 and 2 run as masked loads (columns outside
// the row read as zero and never touch memory) plus, for stride 2, one permute that keeps
// the even lanes; gathers would be much slower on current x86 cores.
// With `odd_row` (stride 2 only), also odd_row[x] = in_row[v0 + 2x + 1]: the next column
// phase's plane row comes from the same two loads.
template <typename S>
void fill_row(S* row, const S* in_row, int64_t W, int64_t v0, int64_t Wq, int64_t stride,
              S* odd_row = nullptr) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) {
    if (stride <= 2) {
      const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
      for (int64_t x = 0; x < Wq; x += 16) {
        const __mmask16 out = Wq - x >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (Wq - x)) - 1);
        const int64_t first = v0 + x * stride;
        const __m512 lo = _mm512_maskz_loadu_ps(columns_inside(first, W), in_row + first);
        if (stride == 1) {
          _mm512_mask_storeu_ps(row + x, out, lo);
          continue;
        }
        const __m512 hi = _mm512_maskz_loadu_ps(columns_inside(first + 16, W), in_row + first + 16);
        _mm512_mask_storeu_ps(row + x, out, _mm512_permutex2var_ps(lo, even, hi));
        if (odd_row != nullptr) _mm512_mask_storeu_ps(odd_row + x, out, _mm512_permutex2var_ps(lo, odd, hi));
      }
      return;
    }
  }
#endif
  if (odd_row != nullptr) fill_row(odd_row, in_row, W, v0 + 1, Wq, stride);
  for (int64_t x = 0; x < Wq; ++x) {
    const int64_t v = v0 + x * stride;
    row[x] = v >= 0 && v < W ? in_row[v] : S(0);
  }
}

#if defined(__AVX512F__)
constexpr int64_t kMaskedFillBlocks = 8;  // rows of up to 8 vectors take the masked fill

// fill_planes for one image (G = 1) at column stride 1 or 2 and rows of at most
// kMaskedFillBlocks vectors: per row and 16-column block, masked loads, a permute that keeps
// every other column (stride 2) and a masked store. The masks depend on the plane and block
// only, so they are made once per call; small layers would otherwise spend more on the
// per-row bookkeeping than on the copy.
__attribute__((noinline)) void fill_planes_masked(const float* x, const SparseConvGeometry& geometry,
                                                  const int64_t* origin, int64_t c_begin, int64_t c_end,
                                                  float* planes) {
  const int64_t H = geometry.H, W = geometry.W, Hq = geometry.Hq, Wq = geometry.Wq;
  const int64_t sh = geometry.sh, sw = geometry.sw, plane = geometry.plane;
  const int64_t plane_stride = geometry.plane_stride, channel_stride = geometry.channel_stride;
  const int64_t nplanes = geometry.ny * geometry.nx, blocks = (Wq + 15) / 16;
  __mmask16 lo[64 * kMaskedFillBlocks], hi[64 * kMaskedFillBlocks], keep[kMaskedFillBlocks];
  for (int64_t b = 0; b < blocks; ++b) keep[b] = __mmask16((uint32_t(1) << std::min<int64_t>(16, Wq - 16 * b)) - 1);
  for (int64_t p = 0; p < nplanes; ++p) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t first = origin[2 * p + 1] + 16 * b * sw;
      lo[p * kMaskedFillBlocks + b] = columns_inside(first, W);
      hi[p * kMaskedFillBlocks + b] = sw == 2 ? columns_inside(first + 16, W) : __mmask16(0);
    }
  }
  const __mmask16 gap = __mmask16((uint32_t(1) << (plane_stride - plane)) - 1);  // < kPlaneAlign
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 zero = _mm512_setzero_ps();
  // Stride 2 with both column phases: plane p + 1 (odd columns) comes from p's loads.
  const bool pairs = sw == 2 && geometry.nx == 2 && origin[3] == origin[1] + 1;
  for (int64_t ci = c_begin; ci < c_end; ++ci) {
    const float* src = x + ci * H * W;
    for (int64_t p = 0; p < nplanes; p += pairs ? 2 : 1) {
      float* dst = planes + ci * channel_stride + p * plane_stride;
      float* dst_odd = dst + plane_stride;
      const int64_t u0 = origin[2 * p], v0 = origin[2 * p + 1];
      const __mmask16* lo_p = lo + p * kMaskedFillBlocks;
      const __mmask16* hi_p = hi + p * kMaskedFillBlocks;
      for (int64_t y = 0; y < Hq; ++y) {
        float* row = dst + y * Wq;
        float* row_odd = dst_odd + y * Wq;
        const int64_t u = u0 + y * sh;
        if (u < 0 || u >= H) {
          for (int64_t b = 0; b < blocks; ++b) {
            _mm512_mask_storeu_ps(row + 16 * b, keep[b], zero);
            if (pairs) _mm512_mask_storeu_ps(row_odd + 16 * b, keep[b], zero);
          }
          continue;
        }
        const float* in_row = src + u * W + v0;  // may point before the row: masked lanes only
        for (int64_t b = 0; b < blocks; ++b) {
          const __m512 v = _mm512_maskz_loadu_ps(lo_p[b], in_row + 16 * b * sw);
          if (sw == 1) {
            _mm512_mask_storeu_ps(row + 16 * b, keep[b], v);
            continue;
          }
          const __m512 w = _mm512_maskz_loadu_ps(hi_p[b], in_row + 32 * b + 16);
          _mm512_mask_storeu_ps(row + 16 * b, keep[b], _mm512_permutex2var_ps(v, even, w));
          if (pairs) _mm512_mask_storeu_ps(row_odd + 16 * b, keep[b], _mm512_permutex2var_ps(v, odd, w));
        }
      }
      _mm512_mask_storeu_ps(dst + plane, gap, zero);  // alignment gap: read as garbage columns
      if (pairs) _mm512_mask_storeu_ps(dst_odd + plane, gap, zero);
    }
  }
}
#endif

// Planes of input channels [c_begin, c_end) of the G images at x (each [Cin, H, W],
// image_stride elements apart). Geometry in locals: stores to the planes could otherwise
// alias it and force reloads on every row.
template <typename S>
__attribute__((noinline)) void fill_planes(const S* x, int64_t image_stride, int64_t G,
                                           const SparseConvGeometry& geometry, int64_t c_begin,
                                           int64_t c_end, S* planes) {
  const int64_t H = geometry.H, W = geometry.W, Hq = geometry.Hq, Wq = geometry.Wq;
  const int64_t sh = geometry.sh, sw = geometry.sw, plane = geometry.plane;
  const int64_t plane_stride = geometry.plane_stride, channel_stride = geometry.channel_stride;
  const int64_t nplanes = geometry.ny * geometry.nx;
  int64_t origin[2 * 64];  // per plane: source (u0, v0) of element (0, 0)
  TORCH_CHECK(nplanes <= 64, "lostprune.sparse_conv2d: at most 64 stride phases, got ", nplanes);
  for (int64_t p = 0; p < nplanes; ++p) plane_source(geometry, p, 0, 0, &origin[2 * p], &origin[2 * p + 1]);
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) {
    if (G == 1 && sw <= 2 && Wq <= 16 * kMaskedFillBlocks) {
      return fill_planes_masked(x, geometry, origin, c_begin, c_end, planes);
    }
  }
#endif
  // Stride 2 with both column phases: planes p (even columns) and p + 1 (odd) share rows.
  const bool pairs = G == 1 && sw == 2 && geometry.nx == 2 && origin[3] == origin[1] + 1;
  for (int64_t ci = c_begin; ci < c_end; ++ci) {
    const S* src = x + ci * H * W;
    for (int64_t p = 0; p < nplanes; p += pairs ? 2 : 1) {
      S* dst = planes + (ci * channel_stride + p * plane_stride) * G;
      S* odd = pairs ? dst + plane_stride : nullptr;
      const int64_t u0 = origin[2 * p], v0 = origin[2 * p + 1];  // (y, x) reads (u0 + y * sh, v0 + x * sw)
      // Columns x whose source v0 + x * sw lies in [0, W) (interleaved groups).
      int64_t x_lo = v0 >= 0 ? 0 : (-v0 + sw - 1) / sw;
      int64_t x_hi = W - 1 - v0 >= 0 ? (W - 1 - v0) / sw + 1 : 0;
      x_hi = std::min(x_hi, Wq);
      x_lo = std::min(x_lo, x_hi);
      for (int64_t y = 0; y < Hq; ++y) {
        S* row = dst + y * Wq * G;
        const int64_t u = u0 + y * sh;
        if (u < 0 || u >= H) {
          std::fill(row, row + Wq * G, S(0));
          if (odd != nullptr) std::fill(odd + y * Wq, odd + (y + 1) * Wq, S(0));
        } else if (G == 1) {
          fill_row(row, src + u * W, W, v0, Wq, sw, odd != nullptr ? odd + y * Wq : nullptr);
        } else {
          std::fill(row, row + x_lo * G, S(0));
          for (int64_t j = 0; j < G; ++j) {
            const S* in_row = src + j * image_stride + u * W + v0;
            for (int64_t c = x_lo; c < x_hi; ++c) row[c * G + j] = in_row[c * sw];
          }
          std::fill(row + x_hi * G, row + Wq * G, S(0));
        }
      }
      std::fill(dst + plane * G, dst + plane_stride * G, S(0));  // alignment gap: read as garbage columns
      if (odd != nullptr) std::fill(odd + plane, odd + plane_stride, S(0));
    }
  }
}

// The fused epilogue of a call (sparse_epilogue): `residual` has the output's layout
// (nullptr: none), offset along with the output pointer.
template <typename S>
struct Epilogue {
  const S* residual;
  bool relu;

  bool none() const { return residual == nullptr && !relu; }
  Epilogue at(int64_t offset) const { return {residual != nullptr ? residual + offset : nullptr, relu}; }
};

// dst[0 .. n) = src[0 .. n): with AVX-512, whole and masked vectors inline (tile rows are
// short, and a libc memcpy call per row costs more than the copy).
template <typename S>
inline void copy_run(S* dst, const S* src, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_loadu_ps(src + i));
    if (i < n) {
      const __mmask16 m = __mmask16((uint32_t(1) << (n - i)) - 1);
      _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
    }
    return;
  }
#endif
  std::memcpy(dst, src, n * sizeof(S));
}

// dst[r] = epilogue(src[r * step], residual[r]) for r < n. Compile-time cases keep every
// loop branch-free, and the contiguous one (step 1) vectorized.
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
  } else if (step == 1) {
    copy_run(dst, src, n);
  } else {
    store_run_as<false, false>(dst, src, step, n, e.residual);
  }
}

// Writes the valid outputs of the tile's pixels [p0, p0 + n) (Wq-wide numbering, p0 at
// row oh, column ow: the caller divides once per tile, not per channel) through the
// epilogue into the output channel plane [OH, OW] at out (image j of a group at
// out + j * image_stride; `e` is positioned like out).
template <typename S>
void store_tile(const S* tile, int64_t oh, int64_t ow, int64_t n, int64_t G, const SparseConvGeometry& g,
                S* out, int64_t image_stride, const Epilogue<S>& e) {
  if (G == 1 && g.Wq == g.OW) {
    const int64_t p0 = oh * g.Wq + ow;
    store_run(out + p0, tile, 1, std::min(n, g.OH * g.OW - p0), e.at(p0));
    return;
  }
  int64_t i = 0;
  while (i < n && oh < g.OH) {
    const int64_t run = std::min(g.OW - ow, n - i);
    S* dst = out + oh * g.OW + ow;
    if (run > 0 && G == 1 && e.none()) {
      copy_run(dst, tile + i, run);  // the common case, kept a plain copy
    } else if (run > 0) {
      for (int64_t j = 0; j < G; ++j) {
        store_run(dst + j * image_stride, tile + i * G + j, G, run, e.at(oh * g.OW + ow + j * image_stride));
      }
    }
    i += g.Wq - ow;
    ++oh;
    ow = 0;
  }
}

// How the packed weight is laid out for one input geometry (decided once per call):
// nonzeros go to (input chunk, offset residue) buckets with offsets relative to the chunk's
// first channel. `sorted` (AVX-512 aligned kernel) sorts each chunk's nonzeros by residue
// and stores offsets minus residue; otherwise the CSR order is kept (it is already sorted
// by input channel, so chunks are contiguous), bucket 0 holds the whole chunk, and the
// kernel reads codes and values in place and offsets from the per-code table.
struct PlanLayout {
  int64_t chunk = 1;    // input channels per chunk
  int64_t chunks = 1;   // chunks per group
  bool sorted = false;  // residue buckets + aligned kernel
  const int32_t* code_off = nullptr;  // per tap code: offset from its chunk's first channel
  const int32_t* code_key = nullptr;  // sorted plans, per tap code: bucket (chunk * kResidues + residue)

  int64_t bucket_stride() const { return chunks * kResidues + 1; }
};

// One thread's plan for output channels [co_begin, co_end); bucket entries index the
// nonzeros from row_ptr[co_begin] on.
template <typename S>
struct ConvPlan {
  PlanLayout layout;
  int64_t co_begin = 0;
  const int32_t* off = nullptr;   // sorted: offsets minus residue
  const int32_t* code = nullptr;  // natural order: the CSR tap codes
  const S* val = nullptr;
  const int32_t* bucket = nullptr;

  Nonzeros<S> at(int64_t co, int64_t c) const {
    return Nonzeros<S>{off, code, layout.code_off, val,
                       bucket + (co - co_begin) * layout.bucket_stride() + c * kResidues};
  }
};

// Input channels per chunk so that a chunk's band (what one tile reads from each channel's
// planes) stays within kChunkBandBytes.
int64_t chunk_channels(const SparseConvArgs& a, int64_t tile_pixels, int64_t pixel_bytes) {
  const SparseConvGeometry& g = a.g;
  const int64_t span = std::min(g.plane, tile_pixels + (g.Hq - g.OH) * g.Wq + g.max_dx);
  const int64_t band = std::max<int64_t>(1, g.ny * g.nx * span * pixel_bytes);
  const int64_t per_chunk = std::max<int64_t>(1, kChunkBandBytes / band);
  // Enough nonzeros per (output channel, chunk) to amortize reloading the partial tile.
  const int64_t max_chunks = std::max<int64_t>(1, a.nnz / (a.Cout * kMinChunkNonzeros));
  const int64_t chunks = std::min((a.Cin_g + per_chunk - 1) / per_chunk, max_chunks);
  return (a.Cin_g + chunks - 1) / chunks;  // balanced
}

// The layout and its per-code tables (O(Cin/g * KH * KW), in the calling thread's scratch)
// for `images` images laid out G at a time.
template <typename S>
PlanLayout plan_layout(const SparseConvArgs& a, int64_t G, int64_t images) {
  constexpr const char* op = "lostprune.sparse_conv2d";
  constexpr int64_t L = Simd<S>::L;
  const SparseConvGeometry& g = a.g;
  TORCH_CHECK((a.Cin_g * g.channel_stride + g.max_dx + 64) * G < (int64_t(1) << 31), op,
              ": input too large for 32-bit offsets (", a.Cin_g, " channels per group of ",
              g.channel_stride * G, " elements)");
  PlanLayout layout;
  layout.chunk = chunk_channels(a, kTileVectors * L / G, sizeof(S) * G);
  layout.chunks = (a.Cin_g + layout.chunk - 1) / layout.chunk;
  const int64_t taps = g.KH * g.KW, codes = a.Cin_g * taps;
  int32_t* code_off = scratch<int32_t>(kPlanTable, codes);
  int used = 0;  // residues the taps produce (channel and chunk bases are aligned)
  for (int64_t kh = 0; kh < g.KH; ++kh) {
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const int64_t off = tap_offset(g, kh, kw) * G;
      used |= 1 << (off & (kResidues - 1));
      code_off[kh * g.KW + kw] = static_cast<int32_t>(off);  // channel 0's codes: the tap offsets
    }
  }
  // The aligned kernel pays a sort per call and a fold per bucket: worth it when every
  // nonzero feeds many vectors and buckets are large (interleaved groups need neither).
  const int64_t vectors = images * ((g.OH * g.Wq + L - 1) / L);
  const double buckets = double(a.Cout) * layout.chunks * __builtin_popcount(used);
  layout.sorted = G == 1 && std::is_same_v<S, float> && kVecBytes == 64 && vectors >= kMinSortedVectors &&
                  a.nnz >= kMinAlignedBucket * buckets;
  // Only sorted plans bucket by key; natural-order ones read the offsets alone.
  int32_t* code_key = layout.sorted ? scratch<int32_t>(kPlanKeys, codes) : nullptr;
  for (int64_t ci = 0, c = 0, in_chunk = 0; ci < a.Cin_g; ++ci) {
    const int32_t base = static_cast<int32_t>(in_chunk * g.channel_stride * G);
    for (int64_t tap = 0; tap < taps; ++tap) {
      if (ci > 0) code_off[ci * taps + tap] = base + code_off[tap];
      if (code_key != nullptr) code_key[ci * taps + tap] = static_cast<int32_t>(c * kResidues + (code_off[tap] & (kResidues - 1)));
    }
    if (++in_chunk == layout.chunk) {
      ++c;
      in_chunk = 0;
    }
  }
  layout.code_off = code_off;
  layout.code_key = code_key;
  return layout;
}

// First invalid nonzero found while planning (-1: none), and whether it is out of range
// or out of order. Threads plan concurrently; the first one to fail records it.
struct PlanErrors {
  std::atomic<int64_t> bad{-1}, unsorted{-1};
};

// Builds the calling thread's plan for output channels [co_begin, co_end) and validates
// their nonzeros (invalid rows become empty: the kernel never reads outside the planes).
// Per nonzero only table lookups and, for sorted plans, a counting sort.
template <typename S>
__attribute__((noinline)) ConvPlan<S> build_plan(const PlanLayout& layout, const SparseConvArgs& a, const int32_t* col,
                       const int32_t* row_ptr, const S* values, int64_t co_begin, int64_t co_end,
                       PlanErrors& errors) {
  const int64_t codes = a.Cin_g * a.g.KH * a.g.KW, stride = layout.bucket_stride();
  const int32_t first = row_ptr[co_begin], count_nnz = row_ptr[co_end] - first;
  ConvPlan<S> plan;
  plan.layout = layout;
  plan.co_begin = co_begin;
  int32_t* bucket = scratch<int32_t>(kPlanBuckets, (co_end - co_begin) * stride);
  int32_t* offsets = layout.sorted ? scratch<int32_t>(kPlanOffsets, count_nnz) : nullptr;
  S* sorted_val = layout.sorted ? scratch<S>(kPlanValues, count_nnz) : nullptr;
  int32_t* count = scratch<int32_t>(kPlanCounts, stride);
  plan.bucket = bucket;
  plan.off = offsets;
  plan.code = col + first;
  plan.val = layout.sorted ? sorted_val : values + first;
  const int32_t* key_of = layout.code_key;
  const int32_t* off_of = layout.code_off;
  for (int64_t co = co_begin; co < co_end; ++co) {
    const int32_t k0 = row_ptr[co], k1 = row_ptr[co + 1];
    int32_t* b = bucket + (co - co_begin) * stride;
    // Validate first (a branch-free reduction): afterwards codes index the tables safely.
    int32_t fails = k1 > k0 && (col[k0] < 0 || col[k1 - 1] >= codes);
    for (int32_t k = k0 + 1; k < k1; ++k) fails |= col[k] <= col[k - 1];
    if (fails) {
      int32_t k = k0;
      while (k < k1 && col[k] >= 0 && col[k] < codes && (k == k0 || col[k] > col[k - 1])) ++k;
      int64_t expected = -1;
      (col[k] < 0 || col[k] >= codes ? errors.bad : errors.unsorted).compare_exchange_strong(expected, k);
      std::fill(b, b + stride, k0 - first);
      continue;
    }
    if (!layout.sorted) {
      // Codes ascend, so chunk c starts at the first code of its first channel.
      const int64_t taps = a.g.KH * a.g.KW;
      for (int64_t c = 0; c < layout.chunks; ++c) {
        const int32_t code0 = static_cast<int32_t>(c * layout.chunk * taps);
        const int32_t start = static_cast<int32_t>(std::lower_bound(col + k0, col + k1, code0) - col) - first;
        b[c * kResidues] = start;
        if (c > 0) std::fill(b + (c - 1) * kResidues + 1, b + c * kResidues, start);
      }
      std::fill(b + (layout.chunks - 1) * kResidues + 1, b + stride, k1 - first);
      continue;
    }
    std::fill(count, count + stride, 0);
    for (int32_t k = k0; k < k1; ++k) ++count[key_of[col[k]]];
    b[0] = k0 - first;  // counts -> starts
    for (int64_t i = 0; i + 1 < stride; ++i) {
      b[i + 1] = b[i] + count[i];
      count[i] = b[i];
    }
    for (int32_t k = k0; k < k1; ++k) {  // counting sort by (chunk, residue)
      const int32_t code = col[k];
      const int32_t off = off_of[code];
      const int32_t pos = count[key_of[code]]++;
      offsets[pos] = off & ~(kResidues - 1);
      sorted_val[pos] = values[k];
    }
  }
  return plan;
}

#if defined(__AVX512F__)
// A tile's valid pixels (column < OW, row < OH) are consecutive outputs of its channel:
// per vector, the mask of valid lanes and where the compressed lanes go.
struct CompactStore {
  __mmask16 keep[kTileVectors];
  int64_t first;  // output index of the tile's first valid pixel
  int vectors;
};

CompactStore compact_store_plan(const SparseConvGeometry& g, int64_t p0, int vectors) {
  CompactStore c{};
  c.vectors = vectors;
  int64_t oh = p0 / g.Wq, ow = p0 - oh * g.Wq;
  c.first = oh * g.OW + std::min(ow, g.OW);
  for (int v = 0; v < vectors; ++v) {
    uint32_t bits = 0;
    for (int lane = 0; lane < 16; ++lane) {
      if (oh < g.OH && ow < g.OW) bits |= uint32_t(1) << lane;
      if (++ow == g.Wq) {
        ow = 0;
        ++oh;
      }
    }
    c.keep[v] = __mmask16(bits);
  }
  return c;
}

// out[c.first ..] = the tile's valid pixels, one compress and masked store per vector.
inline void store_tile_compact(const float* tile, const CompactStore& c, float* out) {
  float* dst = out + c.first;
  for (int v = 0; v < c.vectors; ++v) {
    const int n = __builtin_popcount(c.keep[v]);
    _mm512_mask_storeu_ps(dst, __mmask16((uint32_t(1) << n) - 1),
                          _mm512_maskz_compress_ps(c.keep[v], _mm512_loadu_ps(tile + 16 * v)));
    dst += n;
  }
}
#endif

// Output channels [plan.co_begin, co_end), every tile, of one group of G images (image j's
// output at out + j * out_image).
template <typename S>
__attribute__((noinline)) void conv_tiles(const S* planes, const ConvPlan<S>& plan, const S* bias, const SparseConvArgs& a,
                int64_t co_end, int64_t G, S* out, int64_t out_image, const Epilogue<S>& epilogue) {
  constexpr int L = Simd<S>::L;
  constexpr int64_t tile_len = kTileVectors * L;
  const SparseConvGeometry& g = a.g;
  const PlanLayout& layout = plan.layout;
  const int64_t co_begin = plan.co_begin;
  const int64_t vectors = (g.OH * g.Wq * G + L - 1) / L;
  const int64_t tiles = (vectors + kTileVectors - 1) / kTileVectors;
  const int64_t group_stride = a.Cin_g * g.channel_stride * G;
  const int64_t chunk_stride = layout.chunk * g.channel_stride * G;
  // Partial tiles of every channel while chunks > 1; one tile otherwise.
  S* partial = scratch<S>(kPartialTiles, (layout.chunks > 1 ? co_end - co_begin : 1) * tile_len);
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t q0 = t * tile_len;
    const int n_vec = static_cast<int>(std::min<int64_t>(kTileVectors, vectors - t * kTileVectors));
    const int64_t oh0 = q0 / G / g.Wq, ow0 = q0 / G - oh0 * g.Wq;
#if defined(__AVX512F__)
    // One image with garbage columns and no epilogue: compress the valid lanes instead of
    // copying row by row (small planes have short rows).
    const bool compact = std::is_same_v<S, float> && G == 1 && g.Wq != g.OW && epilogue.none();
    const CompactStore compact_plan = compact ? compact_store_plan(g, q0, n_vec) : CompactStore{};
#endif
    for (int64_t c = 0; c < layout.chunks; ++c) {
      const bool last = c + 1 == layout.chunks;
      // Input group of output channel co, stepped along (no division per channel).
      int64_t group = co_begin / a.Cout_g, in_group = co_begin - group * a.Cout_g;
      for (int64_t co = co_begin; co < co_end; ++co) {
        const S* in = planes + group * group_stride + c * chunk_stride + q0;
        if (++in_group == a.Cout_g) {
          ++group;
          in_group = 0;
        }
        S* tile = layout.chunks > 1 ? partial + (co - co_begin) * tile_len : partial;
        const TileAcc<S> acc{c == 0 ? nullptr : tile, bias != nullptr ? bias[co] : S(0), tile};
        tile_n<S>(n_vec, layout.sorted, in, plan.at(co, c), acc);
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<S, float>) {
          if (last && compact) {
            store_tile_compact(tile, compact_plan, out + co * g.OH * g.OW);
            continue;
          }
        }
#endif
        if (last) {
          store_tile(tile, oh0, ow0, int64_t(n_vec) * L / G, G, g, out + co * g.OH * g.OW, out_image,
                     epilogue.at(co * g.OH * g.OW));
        }
      }
    }
  }
}

// Output-channel blocks with about equal nonzeros: block u is [bounds[u], bounds[u + 1]).
std::vector<int64_t> channel_blocks(const int32_t* row_ptr, int64_t rows, int64_t blocks) {
  std::vector<int64_t> bounds(blocks + 1, rows);
  bounds[0] = 0;
  const int64_t nnz = row_ptr[rows];
  for (int64_t u = 1; u < blocks; ++u) {
    const int64_t target = nnz * u / blocks;
    const int64_t row = std::upper_bound(row_ptr, row_ptr + rows + 1, target) - row_ptr - 1;
    bounds[u] = std::clamp<int64_t>(row, bounds[u - 1], rows);
  }
  return bounds;
}

// `images` images at x (NCHW) into out, laid out G at a time. One parallel region and no
// barrier inside it: a thread owns whole groups (groups >= threads) or a block of output
// channels for every group, builds the plan for its channels and fills its own planes.
// Under contention every extra fork/join can cost a scheduler time slice; the price here
// is that each thread fills the planes of the groups it works on (O(input), small next to
// the convolution).
template <typename S>
void run_conv(const SparseConvArgs& a, int64_t G, const S* x, const S* values, const int32_t* col,
              const int32_t* rp, const S* bias, S* out, const Epilogue<S>& epilogue, int64_t images,
              PlanErrors& errors) {
  constexpr int L = Simd<S>::L;
  const SparseConvGeometry& g = a.g;
  const PlanLayout layout = plan_layout<S>(a, G, images);
  const int64_t in_image = a.Cin * g.H * g.W, out_image = a.Cout * g.OH * g.OW;
  const int64_t n_planes = planes_numel(a, G);
  const int64_t groups = images / G;
  const int64_t fmas = a.nnz * std::max<int64_t>(groups, 1) * ((g.OH * g.Wq * G + L - 1) / L);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), fmas / kGrainFmas));
  const bool by_group = groups >= threads;
  const int64_t units = by_group ? std::max<int64_t>(groups, 1) : threads;
  const std::vector<int64_t> blocks = channel_blocks(rp, a.Cout, by_group ? 1 : units);

  // At most `threads` chunks of units: one per thread, or inline.
  at::parallel_for(0, units, by_group ? (units + threads - 1) / threads : 1, [&](int64_t begin, int64_t end) {
    const int64_t co_begin = by_group ? 0 : blocks[begin];
    const int64_t co_end = by_group ? a.Cout : blocks[end];
    const int64_t first = by_group ? begin : 0, last = by_group ? std::min(end, groups) : groups;
    if (co_begin < co_end) {  // plan (and validate) even for an empty batch
      const ConvPlan<S> plan = build_plan<S>(layout, a, col, rp, values, co_begin, co_end, errors);
      S* planes = scratch<S>(kWorkerPlanes, n_planes);
      std::fill(planes + a.Cin * g.channel_stride * G, planes + n_planes, S(0));  // over-read tail
      for (int64_t grp = first; grp < last; ++grp) {
        fill_planes(x + grp * G * in_image, in_image, G, g, 0, a.Cin, planes);
        conv_tiles(planes, plan, bias, a, co_end, G, out + grp * G * out_image, out_image,
                   epilogue.at(grp * G * out_image));
      }
    }
    release_large_scratch({kWorkerPlanes, kPartialTiles, kPlanOffsets, kPlanValues, kPlanBuckets,
                           kPlanCounts});
  });
  release_large_scratch({kPlanTable, kPlanKeys});
}

// Whole groups of SIMD-lanes images of small planes run interleaved, the rest one image at
// a time.
template <typename S>
void sparse_conv2d_kernel(const at::Tensor& x, const at::Tensor& values,
                          const at::Tensor& col_index, const at::Tensor& row_ptr,
                          const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& residual, bool relu,
                          const SparseConvArgs& a, at::Tensor& out) {
  constexpr const char* op = "lostprune.sparse_conv2d";
  constexpr int64_t L = Simd<S>::L;
  const SparseConvGeometry& g = a.g;
  const int32_t* col = col_index.const_data_ptr<int32_t>();
  const int32_t* rp = row_ptr.const_data_ptr<int32_t>();
  const int64_t bad_row = first_bad_row(rp, a.Cout, a.nnz);
  TORCH_CHECK(bad_row < 0, op, ": row_ptr is not a valid CSR row pointer at output channel ",
              bad_row, " (it must start at 0, never decrease and end at nnz = ", a.nnz, ")");
  const S* xp = x.const_data_ptr<S>();
  const S* vp = values.const_data_ptr<S>();
  const S* bp = bias.has_value() ? bias->const_data_ptr<S>() : nullptr;
  S* op_out = out.mutable_data_ptr<S>();
  const Epilogue<S> epilogue{residual.has_value() ? residual->const_data_ptr<S>() : nullptr, relu};
  PlanErrors errors;

  // Small images leave lanes idle and too few vectors per nonzero to amortize a plan;
  // interleaved, a tile spans the batch instead. Large images keep their own planes: a
  // tile's band over a whole group would no longer fit L1.
  const bool interleave = g.OH * g.Wq <= kMaxInterleavedPixels;
  const int64_t grouped = interleave && a.N >= L ? a.N / L * L : 0;
  if (grouped > 0) run_conv<S>(a, L, xp, vp, col, rp, bp, op_out, epilogue, grouped, errors);
  if (a.N > grouped || a.N == 0) {
    // Sparse layers pay per residue bucket (a fold per tile): aligned rows cut the buckets
    // to one per column shift, worth a few extra columns once nonzeros are few.
    SparseConvArgs single = a;
    if (a.nnz * kAlignRowsDensityInverse <= a.Cout * a.Cin_g * g.KH * g.KW) align_plane_rows(&single.g);
    run_conv<S>(single, 1, xp + grouped * a.Cin * g.H * g.W, vp, col, rp, bp,
                op_out + grouped * a.Cout * g.OH * g.OW, epilogue.at(grouped * a.Cout * g.OH * g.OW),
                a.N - grouped, errors);
  }

  const int64_t k = errors.bad.load();
  const int64_t codes = a.Cin_g * g.KH * g.KW;
  TORCH_CHECK(k < 0, op, ": col_index[", k, "] = ", k < 0 ? 0 : col[k],
              " is out of range for weight_shape [", a.Cout, ", ", a.Cin_g, ", ", g.KH, ", ", g.KW,
              "] (allowed 0..", codes - 1, ")");
  const int64_t u = errors.unsorted.load();
  TORCH_CHECK(u < 0, op, ": col_index must increase strictly within each row (canonical CSR, as ",
              "pack_weight makes it); col_index[", u, "] = ", u < 0 ? 0 : col[u],
              " follows ", u <= 0 ? 0 : col[u - 1]);
}

at::Tensor sparse_conv2d_cpu(const at::Tensor& x, const at::Tensor& values,
                             const at::Tensor& col_index, const at::Tensor& row_ptr,
                             at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups,
                             const std::optional<at::Tensor>& residual, bool relu) {
  const SparseConvArgs a = check_sparse_conv2d(x, values, col_index, row_ptr, weight_shape, bias,
                                               stride, padding, dilation, groups, residual,
                                               c10::DeviceType::CPU);
  const ContiguousInputs in = contiguous_inputs(x, values, col_index, row_ptr, bias, residual);
  at::Tensor out = at::empty({a.N, a.Cout, a.g.OH, a.g.OW}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparse_conv2d_cpu", [&] {
    sparse_conv2d_kernel<scalar_t>(in.x, in.values, in.col_index, in.row_ptr, in.bias, in.residual,
                                   relu, a, out);
  });
  return out;
}

// sum_k values[k] * x[col[k]] over k in [k0, k1): one sparse dot product.
template <typename S>
S sparse_dot(const S* x, const S* values, const int32_t* col, int64_t k0, int64_t k1) {
  int64_t k = k0;
  S sum = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (; k + 32 <= k1; k += 32) {  // two gathers in flight
      const __m512i i0 = _mm512_loadu_si512(col + k), i1 = _mm512_loadu_si512(col + k + 16);
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + k), _mm512_i32gather_ps(i0, x, 4), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(values + k + 16), _mm512_i32gather_ps(i1, x, 4), acc1);
    }
    if (k + 16 <= k1) {
      const __m512i i0 = _mm512_loadu_si512(col + k);
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + k), _mm512_i32gather_ps(i0, x, 4), acc0);
      k += 16;
    }
    sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  }
#endif
  S s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (; k + 4 <= k1; k += 4) {
    s0 += values[k] * x[col[k]];
    s1 += values[k + 1] * x[col[k + 1]];
    s2 += values[k + 2] * x[col[k + 2]];
    s3 += values[k + 3] * x[col[k + 3]];
  }
  for (; k < k1; ++k) s0 += values[k] * x[col[k]];
  return sum + ((s0 + s1) + (s2 + s3));
}

// y[o] = bias[o] + x . row o, for a single row of x (vectorizing over rows would leave
// every SIMD lane but one idle).
template <typename S>
void sparse_linear_row(const S* x, const S* values, const int32_t* col, const int32_t* row_ptr,
                       const S* bias, const SparseLinearArgs& a, S* y) {
  const int64_t grain = std::max<int64_t>(1, kGrainNonzeros * a.out / std::max<int64_t>(1, a.nnz));
  at::parallel_for(0, a.out, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      y[o] = (bias != nullptr ? bias[o] : S(0)) + sparse_dot(x, values, col, row_ptr[o], row_ptr[o + 1]);
    }
  });
}

at::Tensor sparse_linear_cpu(const at::Tensor& x, const at::Tensor& values,
                             const at::Tensor& col_index, const at::Tensor& row_ptr,
                             at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "lostprune.sparse_linear";
  const SparseLinearArgs a = check_sparse_linear(x, values, col_index, row_ptr, weight_shape, bias,
                                                 c10::DeviceType::CPU);
  const std::vector<int64_t> out_shape = sparse_linear_out_shape(x, a.out);
  const ContiguousInputs in = contiguous_inputs(x, values, col_index, row_ptr, bias);
  const int32_t* col = in.col_index.const_data_ptr<int32_t>();
  const int32_t* rp = in.row_ptr.const_data_ptr<int32_t>();
  const int64_t bad_row = first_bad_row(rp, a.out, a.nnz);
  TORCH_CHECK(bad_row < 0, op, ": row_ptr is not a valid CSR row pointer at output ", bad_row,
              " (it must start at 0, never decrease and end at nnz = ", a.nnz, ")");
  // As strict as the conv (canonical CSR, in range); a branch-free pass, messages on failure.
  int32_t fails = 0;
  for (int64_t o = 0; o < a.out; ++o) {
    const int32_t k0 = rp[o], k1 = rp[o + 1];
    fails |= k1 > k0 && (col[k0] < 0 || col[k1 - 1] >= a.in);
    for (int32_t k = k0 + 1; k < k1; ++k) fails |= col[k] <= col[k - 1];
  }
  for (int64_t o = 0; fails && o < a.out; ++o) {
    for (int32_t k = rp[o]; k < rp[o + 1]; ++k) {
      TORCH_CHECK(col[k] >= 0 && col[k] < a.in, op, ": col_index[", k, "] = ", col[k],
                  " is out of range for weight_shape [", a.out, ", ", a.in, "] (allowed 0..",
                  a.in - 1, ")");
      TORCH_CHECK(k == rp[o] || col[k] > col[k - 1], op,
                  ": col_index must increase strictly within each row (canonical CSR, as ",
                  "pack_weight makes it); col_index[", k, "] = ", col[k], " follows ", col[k - 1]);
    }
  }
  if (a.M >= 2) {
    // Several rows: a 1x1 convolution over a 1 x M image whose channels are x's columns, so
    // every nonzero is one axpy over all rows (from two rows on that beats a dot per row).
    const at::Tensor image = in.x.reshape({a.M, a.in}).t().reshape({1, a.in, 1, a.M});
    const int64_t shape[] = {a.out, a.in, 1, 1};
    const int64_t ones[] = {1, 1}, zeros[] = {0, 0};
    const at::Tensor y = sparse_conv2d_cpu(image, in.values, in.col_index, in.row_ptr, shape, in.bias,
                                           ones, zeros, ones, 1, std::nullopt, false);
    return y.reshape({a.out, a.M}).t().contiguous().reshape(out_shape);
  }
  at::Tensor y = at::empty(out_shape, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparse_linear_cpu", [&] {
    sparse_linear_row<scalar_t>(in.x.const_data_ptr<scalar_t>(), in.values.const_data_ptr<scalar_t>(),
                                col, rp, static_cast<const scalar_t*>(in.bias_ptr()), a,
                                y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CPU, m) {
  m.impl("sparse_conv2d", &sparse_conv2d_cpu);
  m.impl("sparse_linear", &sparse_linear_cpu);
}

}  // namespace lostprune
