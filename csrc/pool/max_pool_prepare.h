// Torch-side glue shared by the CPU and CUDA max-pool kernels: argument checks with clear
// messages, the geometry and the output.
#pragma once

#include <ATen/core/Tensor.h>

#include "max_pool.h"

namespace lostprune {

struct PoolProblem {
  PoolGeometry geo;
  int64_t planes = 0;  // batch x channels
  at::Tensor x;        // contiguous [N, C, H, W]
  at::Tensor out;      // contiguous [N, C, out_h, out_w], uninitialized
};

PoolProblem prepare_max_pool(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, c10::DeviceType device_type);

}  // namespace lostprune
