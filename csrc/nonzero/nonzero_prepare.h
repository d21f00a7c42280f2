// Torch-side glue shared by the CPU and CUDA nonzero_rows_cols kernels: argument checks, the
// [d0, d1, inner] view of the input as words, and the outputs.
#pragma once

#include <ATen/core/Tensor.h>

namespace lostprune {

struct NonzeroProblem {
  at::Tensor x;     // contiguous; complex inputs as their real view
  at::Tensor rows;  // bool [d0], zero-filled
  at::Tensor cols;  // bool [d1], zero-filled
  int64_t d0 = 0, d1 = 0, inner = 0;
  int64_t word_size = 0;  // bytes per element: 1, 2, 4 or 8
  bool floating = false;  // floating point: the sign bit does not count
};

NonzeroProblem prepare_nonzero(const at::Tensor& t, c10::DeviceType device_type);

}  // namespace lostprune
