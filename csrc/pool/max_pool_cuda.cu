// CUDA max-pool: one thread per output element (grid-stride), the window folded with the
// shared pool_max (max_pool.h), so both backends compute the same values.
#include "max_pool_cuda.h"

namespace lostprune {
namespace {

template <typename T>
__global__ void max_pool2d_kernel(const T* x, T* y, int64_t n, PoolGeometry g) {
  const int64_t plane_out = g.out_h * g.out_w;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t plane = i / plane_out, oy = (i % plane_out) / g.out_w, ox = i % g.out_w;
    const PoolRange rows = pool_window(oy, g.kh, g.sh, g.ph, g.in_h);
    const PoolRange cols = pool_window(ox, g.kw, g.sw, g.pw, g.in_w);
    const T* src = x + plane * g.in_h * g.in_w;
    T m = src[rows.lo * g.in_w + cols.lo];
    for (int64_t iy = rows.lo; iy < rows.hi; ++iy) {
      for (int64_t ix = cols.lo; ix < cols.hi; ++ix) m = pool_max(m, src[iy * g.in_w + ix]);
    }
    y[i] = m;
  }
}

}  // namespace

template <typename T>
cudaError_t max_pool2d_cuda_launch(const T* x, T* y, int64_t planes, PoolGeometry g, cudaStream_t stream) {
  const int64_t n = planes * g.out_h * g.out_w;
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 65535) blocks = 65535;  // the grid-stride loop covers the rest
  max_pool2d_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, y, n, g);
  return cudaGetLastError();
}

template cudaError_t max_pool2d_cuda_launch<float>(const float*, float*, int64_t, PoolGeometry, cudaStream_t);
template cudaError_t max_pool2d_cuda_launch<double>(const double*, double*, int64_t, PoolGeometry, cudaStream_t);

}  // namespace lostprune
