// Launcher of the CUDA max-pool. No torch headers: the .cu stays a fast nvcc compile.
#pragma once

#include <cuda_runtime_api.h>

#include "max_pool.h"

namespace lostprune {

// x [planes, in_h, in_w] -> y [planes, out_h, out_w], contiguous. Returns the launch's error code.
template <typename T>
cudaError_t max_pool2d_cuda_launch(const T* x, T* y, int64_t planes, PoolGeometry g, cudaStream_t stream);

}  // namespace lostprune
