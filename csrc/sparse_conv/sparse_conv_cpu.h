// The CPU sparse conv2d op, for the CPU sparse linear (which runs several rows as a 1x1
// convolution).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace lostprune {

at::Tensor sparse_conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                             const at::Tensor& row_ptr, at::IntArrayRef weight_shape,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups, const std::optional<at::Tensor>& residual,
                             bool relu);

}  // namespace lostprune
