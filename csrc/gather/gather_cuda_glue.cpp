// CUDA gather glue: checks and descriptors on the host, one kernel launch on the
// current stream. Compiled by the host compiler; the kernel lives in gather_cuda.cu.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>

#include "gather_cuda.h"
#include "gather_prepare.h"

namespace lostprune {
namespace {

std::vector<at::Tensor> gather_channels_cuda(at::TensorList tensors, const c10::List<std::optional<at::Tensor>>& rows,
                                             const c10::List<std::optional<at::Tensor>>& cols) {
  if (tensors.empty()) return {};
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  GatherPlan plan = prepare_gather(tensors, rows, cols, c10::DeviceType::CUDA);
  for (size_t t = 1; t < tensors.size(); ++t) {
    TORCH_CHECK(tensors[t].device() == tensors[0].device(), "lostprune.gather_channels: tensors[", t, "] is on ",
                tensors[t].device(), " but tensors[0] is on ", tensors[0].device());
  }
  const int64_t n = static_cast<int64_t>(plan.jobs.size());
  const int64_t bytes = n * static_cast<int64_t>(sizeof(GatherJob));
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), plan.jobs.data(), bytes);
  at::Tensor device_jobs = host.to(tensors[0].device(), /*non_blocking=*/true);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int64_t kMaxJobsPerLaunch = 65535;  // gridDim.y limit
  const auto* jobs = reinterpret_cast<const GatherJob*>(device_jobs.const_data_ptr());
  for (int64_t first = 0; first < n; first += kMaxJobsPerLaunch) {
    const int64_t count = std::min(kMaxJobsPerLaunch, n - first);
    C10_CUDA_CHECK(
        gather_channels_cuda_launch(jobs + first, count, plan.max_out_numel, plan.max_elem_size, stream.stream()));
  }
  // device_jobs is freed on return, but the caching allocator only reuses it for work
  // queued after the kernel on this stream; torch's pinned allocator likewise holds the
  // staging buffer until the copy has finished.
  return plan.outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CUDA, m) { m.impl("gather_channels", &gather_channels_cuda); }

}  // namespace lostprune
