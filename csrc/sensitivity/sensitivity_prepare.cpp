#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "sensitivity_prepare.h"

#include <c10/util/Exception.h>

#include <vector>

#include "../common/checks.h"

namespace lostprune {
namespace {

void check_pair(const char* op, const char* arg, at::IntArrayRef values, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, op, ": ", arg, " must have 2 entries (height, width), got ", values.size());
  for (const int64_t v : values) {
    TORCH_CHECK(v >= minimum, op, ": ", arg, " must be >= ", minimum, ", got ", values);
  }
}

}  // namespace

SensitivityProblem prepare_sensitivity(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups, c10::string_view reduce,
                                       const std::optional<at::Tensor>& running, SensitivityLevel level,
                                       c10::DeviceType device_type) {
  check_dim(op, "x", x, 4);
  check_dim(op, "weight", weight, 4);
  check_device_type(op, "x", x, device_type);
  check_same_device(op, "weight", weight, "x", x);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type(),
              " (the Python wrapper computes half precision in float32)");
  check_same_dtype(op, "weight", weight, "x", x);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  const int64_t cin = x.size(1);
  const int64_t cout = weight.size(0);
  TORCH_CHECK(cin % groups == 0 && cout % groups == 0, op, ": groups=", groups, " must divide the input channels (",
              cin, ") and the output channels (", cout, ")");
  TORCH_CHECK(weight.size(1) * groups == cin, op, ": weight has shape ", weight.sizes(), ", which with groups=", groups,
              " expects ", weight.size(1) * groups, " input channels, but x has ", cin, " (shape ", x.sizes(), ")");
  TORCH_CHECK(weight.size(2) >= 1 && weight.size(3) >= 1 && cout >= 1, op, ": weight must be non-empty, got shape ",
              weight.sizes());
  SensitivityProblem p;
  p.geo = make_geometry(cin, x.size(2), x.size(3), cout, groups, weight.size(2), weight.size(3), stride[0], stride[1],
                        padding[0], padding[1], dilation[0], dilation[1]);
  TORCH_CHECK(p.geo.out_h >= 1 && p.geo.out_w >= 1, op, ": the kernel (", weight.size(2), "x", weight.size(3),
              ", dilation ", dilation, ") does not fit the padded input (", x.size(2), "x", x.size(3), ", padding ",
              padding, ")");
  if (reduce == "mean") {
    p.reduce = SensitivityReduce::kMean;
  } else if (reduce == "max") {
    p.reduce = SensitivityReduce::kMax;
  } else {
    TORCH_CHECK(false, op, ": reduce must be 'mean' or 'max', got '", std::string(reduce), "'");
  }
  p.batch = x.size(0);
  p.x = x.contiguous();
  p.weight = weight.contiguous();
  if (running.has_value()) {
    const at::Tensor& r = *running;
    const std::vector<int64_t> expect =
        level == SensitivityLevel::kWeight ? weight.sizes().vec() : std::vector<int64_t>{cin};
    const char* what = level == SensitivityLevel::kWeight ? "the weight's" : "one per input channel";
    TORCH_CHECK(r.sizes() == at::IntArrayRef(expect), op, ": running must have shape ", at::IntArrayRef(expect), " (",
                what, "), got ", r.sizes());
    check_same_device(op, "running", r, "x", x);
    check_same_dtype(op, "running", r, "x", x);
    p.running = r.contiguous();
  }
  return p;
}

}  // namespace lostprune
