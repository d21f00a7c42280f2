#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "sparse_conv_args.h"

#include <c10/util/Exception.h>

#include "../common/checks.h"

namespace lostprune {
namespace {

void check_dtype_for_backend(const char* op, const at::Tensor& x, c10::DeviceType device_type) {
  check_floating(op, "x", x);
  const auto t = x.scalar_type();
  if (device_type == c10::DeviceType::CPU) {
    TORCH_CHECK(t == at::kFloat || t == at::kDouble, op, ": the CPU kernel supports float32 and float64 inputs, got ",
                t, " (float16 / bfloat16 run on CUDA; on CPU convert with x.float())");
  }
}

// values / col_index / row_ptr: the CSR arrays of the packed weight.
void check_packed(const char* op, const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                  const at::Tensor& row_ptr, int64_t rows) {
  check_same_device(op, "values (packed weight)", values, "x", x);
  check_same_device(op, "col_index (packed weight)", col_index, "x", x);
  check_same_device(op, "row_ptr (packed weight)", row_ptr, "x", x);
  check_same_dtype(op, "values", values, "x", x);
  check_dim(op, "values", values, 1);
  check_dim(op, "col_index", col_index, 1);
  check_dim(op, "row_ptr", row_ptr, 1);
  TORCH_CHECK(col_index.scalar_type() == at::kInt, op, ": col_index must be int32, got ", col_index.scalar_type());
  TORCH_CHECK(row_ptr.scalar_type() == at::kInt, op, ": row_ptr must be int32, got ", row_ptr.scalar_type());
  TORCH_CHECK(col_index.numel() == values.numel(), op, ": col_index has ", col_index.numel(),
              " entries but values has ", values.numel(), "; both hold one entry per nonzero");
  TORCH_CHECK(row_ptr.numel() == rows + 1, op, ": row_ptr has ", row_ptr.numel(),
              " entries but weight_shape[0] = ", rows, " output channels need ", rows + 1);
  TORCH_CHECK(values.numel() < (int64_t(1) << 31), op, ": at most 2^31 - 1 nonzeros, got ", values.numel());
}

void check_bias(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t out) {
  if (!bias.has_value()) return;
  check_same_device(op, "bias", *bias, "x", x);
  check_same_dtype(op, "bias", *bias, "x", x);
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out, op, ": bias must have shape [", out,
              "] (one entry per output channel), got ", bias->sizes());
}

void check_pair(const char* op, const char* arg, at::IntArrayRef v, int64_t min) {
  TORCH_CHECK(v.size() == 2, op, ": ", arg, " must have 2 entries (height, width), got ", v);
  TORCH_CHECK(v[0] >= min && v[1] >= min, op, ": ", arg, " entries must be >= ", min, ", got ", v);
}

}  // namespace

SparseConvArgs check_sparse_conv2d(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                                   const at::Tensor& row_ptr, at::IntArrayRef weight_shape,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                   const std::optional<at::Tensor>& residual, c10::DeviceType device_type) {
  constexpr const char* op = "lostprune.sparse_conv2d";
  TORCH_CHECK(x.device().type() == device_type, op, ": x is on ", x.device(), ", expected a ",
              c10::DeviceTypeName(device_type), " tensor");
  check_dtype_for_backend(op, x, device_type);
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK(weight_shape.size() == 4, op, ": weight_shape must be [Cout, Cin / groups, KH, KW], got ", weight_shape);
  for (int64_t s : weight_shape) {
    TORCH_CHECK(s >= 1, op, ": weight_shape entries must be >= 1, got ", weight_shape);
  }
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  SparseConvArgs a{};
  a.N = x.size(0);
  a.Cin = x.size(1);
  a.Cout = weight_shape[0];
  a.Cin_g = weight_shape[1];
  a.groups = groups;
  TORCH_CHECK(a.Cout % groups == 0, op, ": weight_shape[0] = ", a.Cout,
              " output channels are not divisible by groups = ", groups);
  a.Cout_g = a.Cout / groups;
  TORCH_CHECK(a.Cin == a.Cin_g * groups, op, ": x has ", a.Cin, " channels but the packed weight expects ",
              a.Cin_g * groups, " (", a.Cin_g, " per group x ", groups, " groups)");
  check_packed(op, x, values, col_index, row_ptr, a.Cout);
  check_bias(op, x, bias, a.Cout);
  a.nnz = values.numel();
  a.g = make_geometry(x.size(2), x.size(3), weight_shape[2], weight_shape[3], stride[0], stride[1], padding[0],
                      padding[1], dilation[0], dilation[1]);
  TORCH_CHECK(a.g.OH >= 1 && a.g.OW >= 1, op, ": input of size ", x.size(2), "x", x.size(3), " is too small for a ",
              weight_shape[2], "x", weight_shape[3], " kernel with padding ", padding, " and dilation ", dilation,
              " (output would be ", a.g.OH, "x", a.g.OW, ")");
  if (residual.has_value()) {
    check_same_device(op, "residual", *residual, "x", x);
    check_same_dtype(op, "residual", *residual, "x", x);
    const std::vector<int64_t> out{a.N, a.Cout, a.g.OH, a.g.OW};
    TORCH_CHECK(residual->sizes() == at::IntArrayRef(out), op, ": residual must have the output's shape ",
                at::IntArrayRef(out), " (it is added before the ReLU, without broadcasting), got ", residual->sizes());
  }
  return a;
}

SparseLinearArgs check_sparse_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                                     const at::Tensor& row_ptr, at::IntArrayRef weight_shape,
                                     const std::optional<at::Tensor>& bias, c10::DeviceType device_type) {
  constexpr const char* op = "lostprune.sparse_linear";
  TORCH_CHECK(x.device().type() == device_type, op, ": x is on ", x.device(), ", expected a ",
              c10::DeviceTypeName(device_type), " tensor");
  check_dtype_for_backend(op, x, device_type);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension [..., in_features]");
  TORCH_CHECK(weight_shape.size() == 2, op, ": weight_shape must be [out_features, in_features], got ", weight_shape);
  TORCH_CHECK(weight_shape[0] >= 1 && weight_shape[1] >= 1, op, ": weight_shape entries must be >= 1, got ",
              weight_shape);
  SparseLinearArgs a{};
  a.out = weight_shape[0];
  a.in = weight_shape[1];
  TORCH_CHECK(x.size(-1) == a.in, op, ": x has ", x.size(-1),
              " features in its last dimension but the packed weight expects ", a.in);
  a.M = a.in == 0 ? 0 : x.numel() / a.in;
  check_packed(op, x, values, col_index, row_ptr, a.out);
  check_bias(op, x, bias, a.out);
  a.nnz = values.numel();
  return a;
}

ContiguousInputs contiguous_inputs(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                                   const at::Tensor& row_ptr, const std::optional<at::Tensor>& bias,
                                   const std::optional<at::Tensor>& residual) {
  ContiguousInputs c{x.contiguous(),       values.contiguous(), col_index.contiguous(),
                     row_ptr.contiguous(), std::nullopt,        std::nullopt};
  if (bias.has_value()) c.bias = bias->contiguous();
  if (residual.has_value()) c.residual = residual->contiguous();
  return c;
}

std::vector<int64_t> sparse_linear_out_shape(const at::Tensor& x, int64_t out) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  return shape;
}

}  // namespace lostprune
