// CUDA sparse conv2d / linear glue: argument checks on the host, one launch on the current
// stream. Compiled by the host compiler; the kernels live in sparse_conv_cuda.cu.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "sparse_conv_args.h"
#include "sparse_conv_cuda.h"

namespace lostprune {
namespace {

CsrWeight csr_weight(const ContiguousInputs& in) {
  return CsrWeight{in.values.const_data_ptr(), in.col_index.const_data_ptr<int32_t>(),
                   in.row_ptr.const_data_ptr<int32_t>(), in.bias_ptr(), in.values.numel()};
}

SparseDtype dtype_tag(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return SparseDtype::kFloat32;
    case at::kDouble: return SparseDtype::kFloat64;
    case at::kHalf: return SparseDtype::kFloat16;
    case at::kBFloat16: return SparseDtype::kBFloat16;
    default: TORCH_CHECK(false, "lostprune sparse ops: unsupported dtype ", x.scalar_type());
  }
}

at::Tensor sparse_conv2d_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                              const at::Tensor& row_ptr, at::IntArrayRef weight_shape,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups, const std::optional<at::Tensor>& residual,
                              bool relu) {
  const SparseConvArgs a = check_sparse_conv2d(x, values, col_index, row_ptr, weight_shape, bias, stride, padding,
                                               dilation, groups, residual, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const ContiguousInputs in = contiguous_inputs(x, values, col_index, row_ptr, bias, residual);
  at::Tensor out = at::empty({a.N, a.Cout, a.g.OH, a.g.OW}, x.options());
  const SparseConvCudaArgs args{in.x.const_data_ptr(),
                                csr_weight(in),
                                out.mutable_data_ptr(),
                                a.N,
                                a.Cin,
                                a.Cout,
                                a.Cin_g,
                                a.Cout_g,
                                a.g,
                                dtype_tag(x),
                                in.residual_ptr(),
                                relu};
  C10_CUDA_CHECK(sparse_conv2d_cuda_launch(args, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

at::Tensor sparse_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                              const at::Tensor& row_ptr, at::IntArrayRef weight_shape,
                              const std::optional<at::Tensor>& bias) {
  const SparseLinearArgs a =
      check_sparse_linear(x, values, col_index, row_ptr, weight_shape, bias, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const ContiguousInputs in = contiguous_inputs(x, values, col_index, row_ptr, bias);
  at::Tensor y = at::empty(sparse_linear_out_shape(x, a.out), x.options());
  const SparseLinearCudaArgs args{in.x.const_data_ptr(), csr_weight(in), y.mutable_data_ptr(), a.M, a.in, a.out,
                                  dtype_tag(x)};
  C10_CUDA_CHECK(sparse_linear_cuda_launch(args, c10::cuda::getCurrentCUDAStream().stream()));
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CUDA, m) {
  m.impl("sparse_conv2d", &sparse_conv2d_cuda);
  m.impl("sparse_linear", &sparse_linear_cuda);
}

}  // namespace lostprune
