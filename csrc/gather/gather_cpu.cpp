// CPU gather: every tensor's output is a sequence of contiguous runs of the source;
// all runs of all tensors form one range that at::parallel_for splits across threads.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "gather_prepare.h"

namespace lostprune {
namespace {

std::vector<at::Tensor> gather_channels_cpu(at::TensorList tensors,
                                            const c10::List<std::optional<at::Tensor>>& rows,
                                            const c10::List<std::optional<at::Tensor>>& cols) {
  GatherPlan plan = prepare_gather(tensors, rows, cols, c10::DeviceType::CPU);
  const auto& jobs = plan.jobs;
  // first_run[t]: index of tensor t's first run in the global range.
  std::vector<int64_t> first_run(jobs.size() + 1, 0);
  for (size_t t = 0; t < jobs.size(); ++t) {
    const int64_t run = gather_run_length(jobs[t]);
    first_run[t + 1] = first_run[t] + (run == 0 ? 0 : gather_out_numel(jobs[t]) / run);
  }
  const int64_t total_runs = first_run.back();
  const int64_t grain = 256;
  at::parallel_for(0, total_runs, grain, [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(first_run.begin(), first_run.end(), begin) - first_run.begin() - 1;
    for (int64_t g = begin; g < end; ++g) {
      while (g >= first_run[t + 1]) ++t;
      const GatherJob& j = jobs[t];
      const int64_t run = gather_run_length(j);
      const int64_t out = (g - first_run[t]) * run;
      std::memcpy(j.dst + out * j.elem_size, j.src + gather_source_index(j, out) * j.elem_size,
                  run * j.elem_size);
    }
  });
  return plan.outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CPU, m) {
  m.impl("gather_channels", &gather_channels_cpu);
}

}  // namespace lostprune
