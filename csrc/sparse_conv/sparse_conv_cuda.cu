// CUDA masked sparse conv2d / linear: work proportional to the nonzeros.
//
// Conv: one warp per (output channel, run of kWarpPositions output positions); every lane
// holds kPositionsPerLane positions in registers. The warp decodes its channel's next 32
// nonzeros into shared memory (tap code -> input channel offset, row and column shift),
// then every lane walks them: one broadcast read and, per position, a bounds-checked load
// (coalesced along the output row at stride 1) and a multiply-add in float (double for
// float64). The block's warps take neighbouring output channels of the same positions,
// which then share the input through L1.
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

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
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
sparse_conv2d_kernel(SparseConvCudaArgs a) {
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
  for (int64_t pair = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       pair < a.M * a.out; pair += warps) {
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

template <typename T>
cudaError_t launch_conv(const SparseConvCudaArgs& a, cudaStream_t stream) {
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
    const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y),
                    static_cast<unsigned>(part.N));
    sparse_conv2d_kernel<T><<<grid, kWarp * kWarpsPerBlock, 0, stream>>>(part);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
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
