// CUDA max-pool glue: checks on the host, one kernel launch on the current stream. Compiled
// by the host compiler; the kernel lives in max_pool_cuda.cu.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "max_pool_cuda.h"
#include "max_pool_prepare.h"

namespace lostprune {
namespace {

at::Tensor max_pool2d_cuda(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding) {
  const c10::cuda::CUDAGuard guard(x.device());
  PoolProblem p = prepare_max_pool(x, kernel_size, stride, padding, c10::DeviceType::CUDA);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "max_pool2d_cuda", [&] {
    C10_CUDA_CHECK(max_pool2d_cuda_launch<scalar_t>(p.x.const_data_ptr<scalar_t>(), p.out.mutable_data_ptr<scalar_t>(),
                                                    p.planes, p.geo, stream.stream()));
  });
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CUDA, m) { m.impl("max_pool2d", &max_pool2d_cuda); }

}  // namespace lostprune
