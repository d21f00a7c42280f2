// Torch-side glue shared by the CPU and CUDA sensitivity kernels: argument checks with clear
// messages and the layer geometry.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "sensitivity.h"

namespace lostprune {

// What the sensitivity ops return: one value per weight, or one per input channel.
enum class SensitivityLevel { kWeight, kChannel };

struct SensitivityProblem {
  SensGeometry geo;
  int64_t batch = 0;
  SensitivityReduce reduce = SensitivityReduce::kMean;
  at::Tensor x;                       // contiguous [B, Cin, H, W]
  at::Tensor weight;                  // contiguous [Cout, Cin / groups, kh, kw]
  std::optional<at::Tensor> running;  // contiguous, shaped like the output
};

SensitivityProblem prepare_sensitivity(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups, c10::string_view reduce,
                                       const std::optional<at::Tensor>& running, SensitivityLevel level,
                                       c10::DeviceType device_type);

}  // namespace lostprune
