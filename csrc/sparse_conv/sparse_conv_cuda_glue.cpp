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

SparseDtype dtype_tag(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return SparseDtype::kFloat32;
    case at::kDouble: return SparseDtype::kFloat64;
    case at::kHalf: return SparseDtype::kFloat16;
    case at::kBFloat16: return SparseDtype::kBFloat16;
    default: TORCH_CHECK(false, "lostprune sparse ops: unsupported dtype ", x.scalar_type());
  }
}

const void* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr() : nullptr;
}

at::Tensor sparse_conv2d_cuda(const at::Tensor& x, const at::Tensor& values,
                              const at::Tensor& col_index, const at::Tensor& row_ptr,
                              at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups) {
  const SparseConvArgs a = check_sparse_conv2d(x, values, col_index, row_ptr, weight_shape, bias,
                                               stride, padding, dilation, groups,
                                               c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), vc = values.contiguous();
  const at::Tensor cc = col_index.contiguous(), rc = row_ptr.contiguous();
  std::optional<at::Tensor> bc;
  if (bias.has_value()) bc = bias->contiguous();
  at::Tensor out = at::empty({a.N, a.Cout, a.g.OH, a.g.OW}, x.options());
  SparseConvCudaArgs args{};
  args.x = xc.const_data_ptr();
  args.values = vc.const_data_ptr();
  args.col = cc.const_data_ptr<int32_t>();
  args.row_ptr = rc.const_data_ptr<int32_t>();
  args.bias = optional_ptr(bc);
  args.out = out.mutable_data_ptr();
  args.N = a.N;
  args.Cin = a.Cin;
  args.Cout = a.Cout;
  args.Cin_g = a.Cin_g;
  args.Cout_g = a.Cout_g;
  args.nnz = a.nnz;
  args.g = a.g;
  args.dtype = dtype_tag(x);
  C10_CUDA_CHECK(sparse_conv2d_cuda_launch(args, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

at::Tensor sparse_linear_cuda(const at::Tensor& x, const at::Tensor& values,
                              const at::Tensor& col_index, const at::Tensor& row_ptr,
                              at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias) {
  const SparseLinearArgs a = check_sparse_linear(x, values, col_index, row_ptr, weight_shape, bias,
                                                 c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), vc = values.contiguous();
  const at::Tensor cc = col_index.contiguous(), rc = row_ptr.contiguous();
  std::optional<at::Tensor> bc;
  if (bias.has_value()) bc = bias->contiguous();
  at::Tensor y = at::empty(sparse_linear_out_shape(x, a.out), x.options());
  SparseLinearCudaArgs args{};
  args.x = xc.const_data_ptr();
  args.values = vc.const_data_ptr();
  args.col = cc.const_data_ptr<int32_t>();
  args.row_ptr = rc.const_data_ptr<int32_t>();
  args.bias = optional_ptr(bc);
  args.y = y.mutable_data_ptr();
  args.M = a.M;
  args.in = a.in;
  args.out = a.out;
  args.nnz = a.nnz;
  args.dtype = dtype_tag(x);
  C10_CUDA_CHECK(sparse_linear_cuda_launch(args, c10::cuda::getCurrentCUDAStream().stream()));
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CUDA, m) {
  m.impl("sparse_conv2d", &sparse_conv2d_cuda);
  m.impl("sparse_linear", &sparse_linear_cuda);
}

}  // namespace lostprune
