// Argument checks of lostprune.nonzero_rows_cols, shared by the CPU and CUDA kernels.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "nonzero_prepare.h"

#include <ATen/ops/view_as_real.h>
#include <ATen/ops/zeros.h>

#include "../common/checks.h"

namespace lostprune {

namespace {
constexpr const char* kOp = "lostprune.nonzero_rows_cols";

bool supported(at::ScalarType s) {
  switch (s) {
    case at::kBool:
    case at::kByte:
    case at::kChar:
    case at::kShort:
    case at::kInt:
    case at::kLong:
    case at::kHalf:
    case at::kBFloat16:
    case at::kFloat:
    case at::kDouble:
    case at::kComplexFloat:
    case at::kComplexDouble: return true;
    default: return false;
  }
}
}  // namespace

NonzeroProblem prepare_nonzero(const at::Tensor& t, c10::DeviceType device_type) {
  check_device_type(kOp, "t", t, device_type);
  TORCH_CHECK(t.dim() >= 2, kOp, ": t must have at least 2 dimensions (rows, columns, ...), got shape ", t.sizes());
  TORCH_CHECK(supported(t.scalar_type()), kOp,
              ": t must be bool, an integer type up to int64, float16, bfloat16, float32, float64 or complex, got ",
              t.scalar_type());
  NonzeroProblem p;
  p.d0 = t.size(0);
  p.d1 = t.size(1);
  // a conjugate view's raw words are its base's; view_as_real wants the conjugation resolved (one copy)
  p.x = t.is_complex() ? at::view_as_real(t.resolve_conj().contiguous()) : t.contiguous();
  p.inner = p.d0 * p.d1 == 0 ? 0 : p.x.numel() / (p.d0 * p.d1);
  p.word_size = p.x.element_size();
  p.floating = at::isFloatingType(p.x.scalar_type());
  const auto flags = t.options().dtype(at::kBool);
  p.rows = at::zeros({p.d0}, flags);
  p.cols = at::zeros({p.d1}, flags);
  return p;
}

}  // namespace lostprune
