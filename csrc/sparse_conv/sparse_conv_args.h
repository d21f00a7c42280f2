// Torch-side argument checks shared by the CPU and CUDA sparse conv / linear kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "sparse_conv.h"

namespace lostprune {

struct SparseLinearArgs {
  int64_t M, in, out, nnz;  // M: rows of x (all leading dimensions flattened)
};

// Shapes, dtypes and devices of every argument; errors name the argument and the allowed
// values; the dtypes allowed depend on the backend (CPU: float32 / float64).
SparseConvArgs check_sparse_conv2d(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                                   const at::Tensor& row_ptr, at::IntArrayRef weight_shape,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                   const std::optional<at::Tensor>& residual, c10::DeviceType device_type);

SparseLinearArgs check_sparse_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                                     const at::Tensor& row_ptr, at::IntArrayRef weight_shape,
                                     const std::optional<at::Tensor>& bias, c10::DeviceType device_type);

// The inputs as contiguous tensors (copies only where needed), kept alive by the caller.
struct ContiguousInputs {
  at::Tensor x, values, col_index, row_ptr;
  std::optional<at::Tensor> bias, residual;

  const void* bias_ptr() const { return bias.has_value() ? bias->const_data_ptr() : nullptr; }
  const void* residual_ptr() const { return residual.has_value() ? residual->const_data_ptr() : nullptr; }
};

ContiguousInputs contiguous_inputs(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                                   const at::Tensor& row_ptr, const std::optional<at::Tensor>& bias,
                                   const std::optional<at::Tensor>& residual = std::nullopt);

// The output shape of sparse_linear: x's leading dimensions + [out].
std::vector<int64_t> sparse_linear_out_shape(const at::Tensor& x, int64_t out);

}  // namespace lostprune
