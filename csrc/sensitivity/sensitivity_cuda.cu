// CUDA sensitivity reduction with shared-memory tiles. A block owns kUnits output units (of
// one group) x kEdges edges; per tile of kPositions positions it stages the im2col tile of A
// (gathered straight from the input) and the units' V+ / V- in shared memory, and every
// thread folds A * V^{sign w} for its kPerThread edges of one unit. blockIdx.z splits the data
// points; blocks meet in acc through an atomic max (values are non-negative, so the float's
// bit pattern orders like an integer).
#include "sensitivity_cuda.h"

namespace lostprune {
namespace {

constexpr int kUnits = 16;
constexpr int kEdgeLanes = 16;  // threads per unit
constexpr int kPerThread = 4;   // edges per thread, strided by kEdgeLanes
constexpr int kEdges = kEdgeLanes * kPerThread;
constexpr int kPositions = 32;
constexpr int kThreads = kUnits * kEdgeLanes;

__device__ __forceinline__ void atomic_max_nonneg(float* addr, float value) {
  atomicMax(reinterpret_cast<int*>(addr), __float_as_int(value));
}

__device__ __forceinline__ void atomic_max_nonneg(double* addr, double value) {
  atomicMax(reinterpret_cast<long long*>(addr), __double_as_longlong(value));
}

template <typename T, bool kMean>
__global__ void __launch_bounds__(kThreads)
sensitivity_reduce_kernel(const T* __restrict__ xs, const T* __restrict__ v, const T* __restrict__ weight,
                          T* __restrict__ acc, SensGeometry g, int64_t n_points, int unit_tiles) {
  __shared__ T a_tile[kEdges][kPositions + 1];
  __shared__ T v_tile[2][kUnits][kPositions];
  const int64_t edges = edges_per_output(g);
  const int64_t n_positions = positions(g);
  const int64_t cout_g = group_out_channels(g);
  const int64_t group = blockIdx.y / unit_tiles;
  const int64_t unit0 = (blockIdx.y % unit_tiles) * kUnits;  // within the group
  const int64_t edge0 = static_cast<int64_t>(blockIdx.x) * kEdges;
  const int local_unit = threadIdx.x / kEdgeLanes;
  const int lane = threadIdx.x % kEdgeLanes;
  const int64_t unit = group * cout_g + unit0 + local_unit;  // global output channel
  const bool unit_ok = unit0 + local_unit < cout_g;

  int sign[kPerThread];  // 0: V+, 1: V-
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t r = edge0 + lane + k * kEdgeLanes;
    sign[k] = unit_ok && r < edges && weight[unit * edges + r] > T(0) ? 0 : 1;
  }
  T best[kPerThread] = {};
  // Data points [d0, d1) of this block.
  const int64_t per_slice = (n_points + gridDim.z - 1) / gridDim.z;
  const int64_t d0 = blockIdx.z * per_slice;
  const int64_t d1 = d0 + per_slice < n_points ? d0 + per_slice : n_points;
  const int64_t numel = image_numel(g);
  for (int64_t d = d0; d < d1; ++d) {
    T sum[kPerThread] = {};
    const T* image = xs + d * numel;
    const T* v_point = v + d * g.out_channels * 2 * n_positions;  // [groups, 2, cout_g, P]
    for (int64_t p0 = 0; p0 < n_positions; p0 += kPositions) {
      for (int i = threadIdx.x; i < kEdges * kPositions; i += kThreads) {
        const int e = i / kPositions, t = i % kPositions;
        const int64_t r = edge0 + e, p = p0 + t;
        T value = T(0);
        if (r < edges && p < n_positions) {
          const int64_t offset = edge_input_offset(g, group, r, p);
          if (offset >= 0) value = image[offset];
        }
        a_tile[e][t] = value;
      }
      for (int i = threadIdx.x; i < 2 * kUnits * kPositions; i += kThreads) {
        const int s = i / (kUnits * kPositions), u = (i / kPositions) % kUnits, t = i % kPositions;
        const int64_t p = p0 + t;
        T value = T(0);
        if (unit0 + u < cout_g && p < n_positions) {
          value = v_point[((group * 2 + s) * cout_g + unit0 + u) * n_positions + p];
        }
        v_tile[s][u][t] = value;
      }
      __syncthreads();
      for (int t = 0; t < kPositions; ++t) {
        const T vp = v_tile[0][local_unit][t], vn = v_tile[1][local_unit][t];
        for (int k = 0; k < kPerThread; ++k) {
          const T value = a_tile[lane + k * kEdgeLanes][t] * (sign[k] == 0 ? vp : vn);
          if (kMean) {
            sum[k] += value;
          } else {
            best[k] = reduce_step(SensitivityReduce::kMax, best[k], value);
          }
        }
      }
      __syncthreads();
    }
    if (kMean) {
      for (int k = 0; k < kPerThread; ++k) best[k] = reduce_step(SensitivityReduce::kMax, best[k], sum[k]);
    }
  }
  if (!unit_ok) return;
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t r = edge0 + lane + k * kEdgeLanes;
    if (r < edges && best[k] > T(0)) atomic_max_nonneg(acc + unit * edges + r, best[k]);
  }
}

}  // namespace

template <typename T>
cudaError_t sensitivity_reduce_cuda_launch(const T* xs, const T* v, const T* weight, T* acc, const SensGeometry& g,
                                           int64_t n_points, SensitivityReduce reduce, cudaStream_t stream) {
  if (n_points == 0) return cudaSuccess;
  const int64_t edges = edges_per_output(g);
  const int unit_tiles = static_cast<int>((group_out_channels(g) + kUnits - 1) / kUnits);
  const int64_t gx = (edges + kEdges - 1) / kEdges;
  const int64_t gy = g.groups * unit_tiles;
  if (gx > 2147483647LL || gy > 65535) return cudaErrorInvalidConfiguration;
  // Enough blocks to fill the device; each slice of data points ends in one atomic per output.
  int64_t gz = (2048 + gx * gy - 1) / (gx * gy);
  if (gz > n_points) gz = n_points;
  if (gz > 65535) gz = 65535;
  if (gz < 1) gz = 1;
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz));
  if (reduce == SensitivityReduce::kMean) {
    sensitivity_reduce_kernel<T, true><<<grid, kThreads, 0, stream>>>(xs, v, weight, acc, g, n_points, unit_tiles);
  } else {
    sensitivity_reduce_kernel<T, false><<<grid, kThreads, 0, stream>>>(xs, v, weight, acc, g, n_points, unit_tiles);
  }
  return cudaGetLastError();
}

template cudaError_t sensitivity_reduce_cuda_launch<float>(const float*, const float*, const float*, float*,
                                                           const SensGeometry&, int64_t, SensitivityReduce,
                                                           cudaStream_t);
template cudaError_t sensitivity_reduce_cuda_launch<double>(const double*, const double*, const double*, double*,
                                                            const SensGeometry&, int64_t, SensitivityReduce,
                                                            cudaStream_t);

}  // namespace lostprune
