// Launcher of the CUDA gather. No torch headers: the .cu stays a fast nvcc compile.
#pragma once

#include <cuda_runtime_api.h>

#include "gather.h"

namespace lostprune {

// jobs_device: n_jobs GatherJob structs in device memory. max_out_numel: the largest
// output among the jobs (sizes the grid). Returns the launch's error code.
cudaError_t gather_channels_cuda_launch(const GatherJob* jobs_device, int64_t n_jobs, int64_t max_out_numel,
                                        int64_t max_elem_size, cudaStream_t stream);

}  // namespace lostprune
