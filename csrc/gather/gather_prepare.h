// Torch-side glue shared by the CPU and CUDA gather: argument checks, output allocation
// and the list of GatherJob descriptors (pointers into the tensors it keeps alive).
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "gather.h"

namespace lostprune {

struct GatherPlan {
  std::vector<at::Tensor> outputs;
  std::vector<at::Tensor> keep_alive;  // contiguous copies of inputs and indices
  std::vector<GatherJob> jobs;
  int64_t max_out_numel = 0;
  int64_t max_elem_size = 0;
};

GatherPlan prepare_gather(at::TensorList tensors, const c10::List<std::optional<at::Tensor>>& rows,
                          const c10::List<std::optional<at::Tensor>>& cols, c10::DeviceType device_type);

}  // namespace lostprune
