// CUDA masked sparse conv2d / linear: work proportional to the nonzeros.
//
// Conv (tiled): a block owns one tile of output positions (make_cuda_tiling in sparse_conv.h:
// whole small images, or rows of one image; at most 128 positions) and kWarpsPerBlock x CPW
// neighbouring output channels (CPW per warp). Chunk by chunk of the input channels those
// output channels read, the block stages the tile's input in shared memory (zero-padded),
// then every warp walks its channels' nonzeros of that chunk: 32 at a time are decoded into
// shared memory (tap -> offset in the staged tile) and each lane does one shared load and one
// multiply-add per nonzero for each of its 4 positions. On small tiles (fewer than 128
// positions) the lanes split into 32 / G groups of G lanes, each group taking every
// (32 / G)-th nonzero; the groups are summed with shuffles, so no lane idles.
// Packed rows hold ascending tap codes (pack_weight; the CPU kernel rejects others): a
// chunk's nonzeros are one run of the row.
//
// Conv (direct): when not even one input channel of a one-position tile fits in shared
// memory (huge kernels or dilations), one warp per (output channel, 128 positions) reads
// the input straight from global memory with bounds checks.
//
// Linear: one warp per (output, row of x); lanes split the row's nonzeros and reduce with
// shuffles.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sparse_conv_cuda.h"

namespace lostprune {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kPositionsPerLane = 4;
constexpr int kWarpPositions = kWarp * kPositionsPerLane;
constexpr unsigned kFullMask = 0xffffffffu;
static_assert(kWarpPositions == kCudaTilePositions, "a tile is one warp's positions");

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
__device__ __forceinline__ double from_acc_double(double v) { return v; }

template <typename T, typename A>
__device__ __forceinline__ T store_value(A v) {
  if constexpr (sizeof(A) == sizeof(double)) {
    return from_acc_double(v);
  } else {
    return from_acc<T>(v);
  }
}

// Nonzeros [*k0, *k1) of `row`, clamped to [0, nnz] so malformed pointers never read out
// of bounds (checked on the host for CPU only: a check here would synchronize).
__device__ __forceinline__ void row_range(const CsrWeight& w, int64_t row, int64_t* k0, int64_t* k1) {
  int64_t b = w.row_ptr[row], e = w.row_ptr[row + 1];
  b = b < 0 ? 0 : (b > w.nnz ? w.nnz : b);
  *k0 = b;
  *k1 = e < b ? b : (e > w.nnz ? w.nnz : e);
}

// One decoded nonzero: where it reads relative to the output position's top-left corner.
template <typename A>
struct Tap {
  int64_t channel_offset;  // (group's first channel + ci) * H * W
  int dy, dx;              // kh * dh - ph, kw * dw - pw
  A w;
};

template <typename T>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
sparse_conv2d_direct_kernel(SparseConvCudaArgs a) {
  using A = typename Acc<T>::type;
  __shared__ Tap<A> taps[kWarpsPerBlock][kWarp];
  const SparseConvGeometry& g = a.g;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t co = int64_t(blockIdx.y) * kWarpsPerBlock + warp;
  const int64_t n = blockIdx.z;
  const int64_t positions = g.OH * g.OW;
  const int64_t p0 = int64_t(blockIdx.x) * kWarpPositions;
  if (co >= a.Cout) return;  // whole warp leaves: no later __syncwarp involves it

  const T* x = static_cast<const T*>(a.x) + n * a.Cin * g.H * g.W;
  const T* values = static_cast<const T*>(a.w.values);
  const int64_t group_base = (co / a.Cout_g) * a.Cin_g * g.H * g.W;
  const int64_t codes = a.Cin_g * g.KH * g.KW;

  int base_h[kPositionsPerLane], base_w[kPositionsPerLane];
  A acc[kPositionsPerLane];
  const A bias = a.w.bias != nullptr ? A(to_acc(static_cast<const T*>(a.w.bias)[co])) : A(0);
#pragma unroll
  for (int i = 0; i < kPositionsPerLane; ++i) {
    const int64_t p = p0 + lane + i * kWarp;
    const int64_t oh = p / g.OW, ow = p - (p / g.OW) * g.OW;
    base_h[i] = static_cast<int>(oh * g.sh);
    base_w[i] = static_cast<int>(ow * g.sw);
    acc[i] = bias;
  }

  int64_t k0, k1;
  row_range(a.w, co, &k0, &k1);
  for (int64_t base = k0; base < k1; base += kWarp) {
    const int64_t k = base + lane;
    if (k < k1) {
      Tap<A> t{0, 0, 0, A(0)};
      const int64_t code = a.w.col[k];
      if (code >= 0 && code < codes) {
        int64_t ci, kh, kw;
        decode_tap(code, g.KH, g.KW, &ci, &kh, &kw);
        t.channel_offset = group_base + ci * g.H * g.W;
        t.dy = static_cast<int>(kh * g.dh - g.ph);
        t.dx = static_cast<int>(kw * g.dw - g.pw);
        t.w = to_acc(values[k]);
      }
      taps[warp][lane] = t;
    }
    __syncwarp();
    const int count = static_cast<int>(k1 - base < kWarp ? k1 - base : kWarp);
    for (int j = 0; j < count; ++j) {
      const Tap<A> t = taps[warp][j];
      const T* xc = x + t.channel_offset;
#pragma unroll
      for (int i = 0; i < kPositionsPerLane; ++i) {
        const int ih = base_h[i] + t.dy, iw = base_w[i] + t.dx;
        if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
          acc[i] += t.w * A(to_acc(xc[int64_t(ih) * g.W + iw]));
        }
      }
    }
    __syncwarp();
  }

  const int64_t out_offset = (n * a.Cout + co) * positions;
  T* out = static_cast<T*>(a.out) + out_offset;
  const T* residual = a.residual != nullptr ? static_cast<const T*>(a.residual) + out_offset : nullptr;
#pragma unroll
  for (int i = 0; i < kPositionsPerLane; ++i) {
    const int64_t p = p0 + lane + i * kWarp;
    if (p < positions) {
      const A r = residual != nullptr ? A(to_acc(residual[p])) : A(0);
      out[p] = store_value<T>(sparse_epilogue<A>(acc[i], r, a.relu));
    }
  }
}

// A decoded nonzero of the tiled kernel: its offset in the staged tile and its weight.
template <typename A>
struct TileTap {
  int offset;
  A w;
};

template <typename T, int CPW>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
sparse_conv2d_tiled_kernel(SparseConvCudaArgs a, SparseConvTiling t) {
  // Indices within a tile, a packed row or a weight fit in 32 bits (the glue checks
  // nnz < 2^31; a weight has fewer than 2^31 entries); input and output offsets do not.
  using A = typename Acc<T>::type;
  extern __shared__ __align__(16) unsigned char staged_bytes[];
  T* staged = reinterpret_cast<T*>(staged_bytes);
  __shared__ TileTap<A> taps[kWarpsPerBlock][kWarp];
  const SparseConvGeometry& g = a.g;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int G = static_cast<int>(t.group_lanes), groups_of_lanes = kWarp / G;
  const int lane_group = lane / G, lane_index = lane % G;
  const int TH = static_cast<int>(t.TH), TW = static_cast<int>(t.TW);
  const int tile_positions = static_cast<int>(t.TB) * TH * TW;

  const int64_t tile = blockIdx.x;
  const int64_t n0 = tile / (t.tiles_h * t.tiles_w) * t.TB;
  const int64_t oh0 = tile / t.tiles_w % t.tiles_h * TH;
  const int64_t ow0 = tile % t.tiles_w * TW;
  const int co_block = blockIdx.y * kWarpsPerBlock * CPW;
  const int co_block_end =
      co_block + kWarpsPerBlock * CPW < a.Cout ? co_block + kWarpsPerBlock * CPW : static_cast<int>(a.Cout);
  int64_t first_channel, last_channel;
  block_input_channels(co_block, co_block_end, a.Cin_g, a.Cout_g, &first_channel, &last_channel);
  const int c_begin = static_cast<int>(first_channel), c_end = static_cast<int>(last_channel);
  const int taps_per_channel = static_cast<int>(g.KH * g.KW);
  const int codes = static_cast<int>(a.Cin_g) * taps_per_channel;
  const T* values = static_cast<const T*>(a.w.values);

  int base[kPositionsPerLane];  // staged element of each of the lane's positions (b, ty, tx)
#pragma unroll
  for (int i = 0; i < kPositionsPerLane; ++i) {
    const int p = lane_index + i * G;
    base[i] = 0;  // positions past the tile read a valid element; their sums are dropped
    if (p < tile_positions) {
      const int b = p / (TH * TW), r = p % (TH * TW);
      base[i] = static_cast<int>(tile_position_base(g, t, b, r / TW, r % TW));
    }
  }
  A acc[CPW][kPositionsPerLane];
  int next[CPW], end[CPW], group_base[CPW];
#pragma unroll
  for (int c = 0; c < CPW; ++c) {
    const int co = co_block + warp * CPW + c;
    next[c] = end[c] = group_base[c] = 0;
    if (co < a.Cout) {
      int64_t k0, k1;
      row_range(a.w, co, &k0, &k1);
      next[c] = static_cast<int>(k0);
      end[c] = static_cast<int>(k1);
      group_base[c] = static_cast<int>(co / a.Cout_g * a.Cin_g);
    }
#pragma unroll
    for (int i = 0; i < kPositionsPerLane; ++i) acc[c][i] = A(0);
  }

  const int image_elems = static_cast<int>(t.IH * t.IW);
  const int channel_elems = static_cast<int>(t.TB) * image_elems;
  const int IW = static_cast<int>(t.IW);
  for (int c0 = c_begin; c0 < c_end; c0 += static_cast<int>(t.chunk)) {
    const int c1 = c0 + static_cast<int>(t.chunk) < c_end ? c0 + static_cast<int>(t.chunk) : c_end;
    __syncthreads();  // the previous chunk is no longer read
    const int total = (c1 - c0) * channel_elems;
    for (int e = threadIdx.x; e < total; e += blockDim.x) {
      const int cc = e / channel_elems, r = e - cc * channel_elems;
      const int b = r / image_elems, yx = r - b * image_elems;
      const int y = yx / IW, x = yx - y * IW;
      int64_t u, v;
      tile_source(g, oh0, ow0, y, x, &u, &v);
      const int64_t n = n0 + b;
      T value = store_value<T>(A(0));
      if (n < a.N && u >= 0 && u < g.H && v >= 0 && v < g.W) {
        value = static_cast<const T*>(a.x)[((n * a.Cin + c0 + cc) * g.H + u) * g.W + v];
      }
      staged[e] = value;
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < CPW; ++c) {
      // This chunk's nonzeros of channel c: codes below code_end (ascending codes: a run).
      const int code_begin = (c0 - group_base[c]) * taps_per_channel;
      const int code_end = (c1 - group_base[c]) * taps_per_channel;
      for (;;) {
        const int k = next[c] + lane;
        const int code = k < end[c] ? a.w.col[k] : code_end;
        const unsigned in_chunk = __ballot_sync(kFullMask, code < code_end);
        const int count = in_chunk == kFullMask ? kWarp : __ffs(~in_chunk) - 1;
        if (count == 0) break;
        if (lane < count) {
          TileTap<A> tap{0, A(0)};
          if (code >= code_begin && code >= 0 && code < codes) {  // else malformed: skipped
            int64_t ci, kh, kw;
            decode_tap(code, g.KH, g.KW, &ci, &kh, &kw);
            tap.offset = static_cast<int>(tile_tap_offset(g, t, group_base[c] + ci - c0, kh, kw));
            tap.w = to_acc(values[k]);
          }
          taps[warp][lane] = tap;
        }
        __syncwarp();
        for (int j = lane_group; j < count; j += groups_of_lanes) {
          const TileTap<A> tap = taps[warp][j];
          const T* src = staged + tap.offset;
#pragma unroll
          for (int i = 0; i < kPositionsPerLane; ++i) acc[c][i] += tap.w * A(to_acc(src[base[i]]));
        }
        __syncwarp();
        next[c] += count;
        if (count < kWarp) break;
      }
    }
  }

  // Sum the lane groups (lanes lane ^ G, lane ^ 2G, ... hold the same positions).
#pragma unroll
  for (int c = 0; c < CPW; ++c) {
#pragma unroll
    for (int i = 0; i < kPositionsPerLane; ++i) {
      for (int offset = G; offset < kWarp; offset *= 2) {
        acc[c][i] += __shfl_xor_sync(kFullMask, acc[c][i], offset);
      }
    }
  }
  if (lane_group != 0) return;
  const int64_t positions = g.OH * g.OW;
#pragma unroll
  for (int c = 0; c < CPW; ++c) {
    const int co = co_block + warp * CPW + c;
    if (co >= a.Cout) continue;
    const A bias = a.w.bias != nullptr ? A(to_acc(static_cast<const T*>(a.w.bias)[co])) : A(0);
#pragma unroll
    for (int i = 0; i < kPositionsPerLane; ++i) {
      const int p = lane_index + i * G;
      if (p >= tile_positions) continue;
      const int b = p / (TH * TW), r = p % (TH * TW);
      const int64_t n = n0 + b, oh = oh0 + r / TW, ow = ow0 + r % TW;
      if (n >= a.N || oh >= g.OH || ow >= g.OW) continue;
      const int64_t out_index = (n * a.Cout + co) * positions + oh * g.OW + ow;
      const A res = a.residual != nullptr ? A(to_acc(static_cast<const T*>(a.residual)[out_index])) : A(0);
      static_cast<T*>(a.out)[out_index] = store_value<T>(sparse_epilogue<A>(acc[c][i] + bias, res, a.relu));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
sparse_linear_kernel(SparseLinearCudaArgs a) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  const T* x = static_cast<const T*>(a.x);
  const T* values = static_cast<const T*>(a.w.values);
  T* y = static_cast<T*>(a.y);
  // Warp w handles pairs (o, m) = w, w + warps, ...; o fastest, so neighbouring warps
  // share the row of x.
  for (int64_t pair = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; pair < a.M * a.out; pair += warps) {
    const int64_t m = pair / a.out, o = pair - m * a.out;
    int64_t k0, k1;
    row_range(a.w, o, &k0, &k1);
    const T* xm = x + m * a.in;
    A sum = A(0);
    for (int64_t k = k0 + lane; k < k1; k += kWarp) {
      const int64_t c = a.w.col[k];
      if (c >= 0 && c < a.in) sum += A(to_acc(values[k])) * A(to_acc(xm[c]));
    }
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) {
      if (a.w.bias != nullptr) sum += A(to_acc(static_cast<const T*>(a.w.bias)[o]));
      y[m * a.out + o] = store_value<T>(sum);
    }
  }
}

// Tiled launch: CPW = 4 channels per warp when that still gives every SM two blocks (fewer
// blocks re-stage the same input), else 1.
template <typename T>
cudaError_t launch_conv_tiled(const SparseConvCudaArgs& a, const SparseConvTiling& t, cudaStream_t stream) {
  const int64_t tiles = t.tiles_n * t.tiles_h * t.tiles_w;
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const bool wide = tiles * ceil_div(a.Cout, kWarpsPerBlock * 4) >= 2 * int64_t(sms);
  const int64_t blocks_y = ceil_div(a.Cout, kWarpsPerBlock * (wide ? 4 : 1));
  if (tiles > 2147483647 || blocks_y > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(blocks_y));
  const size_t shared = static_cast<size_t>(t.chunk * t.TB * t.IH * t.IW) * sizeof(T);
  if (wide) {
    sparse_conv2d_tiled_kernel<T, 4><<<grid, kWarp * kWarpsPerBlock, shared, stream>>>(a, t);
  } else {
    sparse_conv2d_tiled_kernel<T, 1><<<grid, kWarp * kWarpsPerBlock, shared, stream>>>(a, t);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_conv_direct(const SparseConvCudaArgs& a, cudaStream_t stream) {
  const int64_t positions = a.g.OH * a.g.OW;
  const int64_t blocks_x = (positions + kWarpPositions - 1) / kWarpPositions;
  const int64_t blocks_y = (a.Cout + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks_x > 2147483647 || blocks_y > 65535) return cudaErrorInvalidConfiguration;
  constexpr int64_t kMaxImages = 65535;  // gridDim.z limit: larger batches take several launches
  for (int64_t n0 = 0; n0 < a.N; n0 += kMaxImages) {
    SparseConvCudaArgs part = a;
    part.N = a.N - n0 < kMaxImages ? a.N - n0 : kMaxImages;
    part.x = static_cast<const T*>(a.x) + n0 * a.Cin * a.g.H * a.g.W;
    part.out = static_cast<T*>(a.out) + n0 * a.Cout * positions;
    if (a.residual != nullptr) part.residual = static_cast<const T*>(a.residual) + n0 * a.Cout * positions;
    const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y), static_cast<unsigned>(part.N));
    sparse_conv2d_direct_kernel<T><<<grid, kWarp * kWarpsPerBlock, 0, stream>>>(part);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_conv(const SparseConvCudaArgs& a, cudaStream_t stream) {
  // The input channels one block reads at most (all of them unless grouped).
  const int64_t block_groups = ceil_div(kWarpsPerBlock * 4, a.Cout_g) + 1;
  const int64_t block_channels = block_groups * a.Cin_g < a.Cin ? block_groups * a.Cin_g : a.Cin;
  const SparseConvTiling t = make_cuda_tiling(a.g, a.N, block_channels, sizeof(T));
  if (t.chunk > 0) return launch_conv_tiled<T>(a, t, stream);
  return launch_conv_direct<T>(a, stream);
}

template <typename T>
cudaError_t launch_linear(const SparseLinearCudaArgs& a, cudaStream_t stream) {
  const int64_t pairs = a.M * a.out;
  int64_t blocks = (pairs + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 65536) blocks = 65536;  // the grid-stride loop covers the rest
  sparse_linear_kernel<T><<<static_cast<unsigned>(blocks), kWarp * kWarpsPerBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

// Calls fn(T{}) with T the C++ type of `dtype`.
template <typename Fn>
cudaError_t dispatch_dtype(SparseDtype dtype, Fn&& fn) {
  switch (dtype) {
    case SparseDtype::kFloat32: return fn(float{});
    case SparseDtype::kFloat64: return fn(double{});
    case SparseDtype::kFloat16: return fn(__half{});
    case SparseDtype::kBFloat16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t sparse_conv2d_cuda_launch(const SparseConvCudaArgs& args, cudaStream_t stream) {
  if (args.N == 0 || args.Cout == 0 || args.g.OH * args.g.OW == 0) return cudaSuccess;
  return dispatch_dtype(args.dtype, [&](auto tag) { return launch_conv<decltype(tag)>(args, stream); });
}

cudaError_t sparse_linear_cuda_launch(const SparseLinearCudaArgs& args, cudaStream_t stream) {
  if (args.M == 0 || args.out == 0) return cudaSuccess;
  return dispatch_dtype(args.dtype, [&](auto tag) { return launch_linear<decltype(tag)>(args, stream); });
}

}  // namespace lostprune
