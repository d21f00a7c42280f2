// CUDA nonzero_rows_cols glue: checks on the host, one kernel launch on the current stream.
// Compiled by the host compiler; the kernel lives in nonzero_cuda.cu.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "nonzero_cuda.h"
#include "nonzero_prepare.h"

namespace lostprune {
namespace {

template <typename Word>
cudaError_t launch(const NonzeroProblem& p, cudaStream_t stream) {
  return nonzero_rows_cols_cuda_launch<Word>(static_cast<const Word*>(p.x.const_data_ptr()), p.d0, p.d1, p.inner,
                                             p.floating, reinterpret_cast<unsigned char*>(p.rows.data_ptr<bool>()),
                                             reinterpret_cast<unsigned char*>(p.cols.data_ptr<bool>()), stream);
}

std::tuple<at::Tensor, at::Tensor> nonzero_rows_cols_cuda(const at::Tensor& t) {
  const c10::cuda::CUDAGuard guard(t.device());
  NonzeroProblem p = prepare_nonzero(t, c10::DeviceType::CUDA);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  switch (p.word_size) {
    case 1: C10_CUDA_CHECK(launch<uint8_t>(p, stream)); break;
    case 2: C10_CUDA_CHECK(launch<uint16_t>(p, stream)); break;
    case 4: C10_CUDA_CHECK(launch<uint32_t>(p, stream)); break;
    default: C10_CUDA_CHECK(launch<uint64_t>(p, stream)); break;  // 8: the largest size admitted
  }
  return {p.rows, p.cols};
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CUDA, m) { m.impl("nonzero_rows_cols", &nonzero_rows_cols_cuda); }

}  // namespace lostprune
