// CUDA gather: one launch for every tensor of a slicing step. blockIdx.y picks the tensor,
// a grid-stride loop walks its output; elements are moved as opaque words of elem_size bytes.
#include "gather_cuda.h"

namespace lostprune {
namespace {

struct alignas(16) Word16 {
  uint64_t lo, hi;
};

template <typename Word>
__device__ __forceinline__ void copy_elements(const GatherJob& j) {
  const int64_t n = gather_out_numel(j);
  const Word* src = reinterpret_cast<const Word*>(j.src);
  Word* dst = reinterpret_cast<Word*>(j.dst);
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    dst[e] = src[gather_source_index(j, e)];
  }
}

__global__ void gather_channels_kernel(const GatherJob* jobs) {
  const GatherJob j = jobs[blockIdx.y];
  switch (j.elem_size) {
    case 1: copy_elements<uint8_t>(j); break;
    case 2: copy_elements<uint16_t>(j); break;
    case 4: copy_elements<uint32_t>(j); break;
    case 8: copy_elements<uint64_t>(j); break;
    case 16: copy_elements<Word16>(j); break;
    default: break;  // rejected by the host glue
  }
}

}  // namespace

cudaError_t gather_channels_cuda_launch(const GatherJob* jobs_device, int64_t n_jobs, int64_t max_out_numel,
                                        int64_t /*max_elem_size*/, cudaStream_t stream) {
  if (n_jobs == 0 || max_out_numel == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  int64_t blocks = (max_out_numel + kThreads - 1) / kThreads;
  if (blocks > 4096) blocks = 4096;  // grid-stride loop covers the rest
  // gridDim.y is limited to 65535 tensors per launch; the glue splits larger batches.
  dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(n_jobs));
  gather_channels_kernel<<<grid, kThreads, 0, stream>>>(jobs_device);
  return cudaGetLastError();
}

}  // namespace lostprune
