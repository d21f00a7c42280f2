#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "gather_prepare.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "../common/checks.h"

namespace lostprune {
namespace {

constexpr const char* kOp = "lostprune.gather_channels";

// Validates one index set and returns it contiguous. The range check reads the values
// on the host: slicing runs once per model, so a sync here is cheap insurance.
at::Tensor checked_index(const at::Tensor& index, const at::Tensor& tensor, int64_t t, int64_t dim) {
  const char* which = dim == 0 ? "rows" : "cols";
  TORCH_CHECK(index.scalar_type() == at::kLong, kOp, ": ", which, "[", t,
              "] must be an int64 tensor of kept indices, got ", index.scalar_type());
  TORCH_CHECK(index.dim() == 1, kOp, ": ", which, "[", t, "] must be 1-D, got shape ", index.sizes());
  TORCH_CHECK(index.numel() > 0, kOp, ": ", which, "[", t, "] is empty; keep at least one index along dim ", dim,
              " of tensors[", t, "]");
  TORCH_CHECK(index.device() == tensor.device(), kOp, ": ", which, "[", t, "] is on ", index.device(), " but tensors[",
              t, "] is on ", tensor.device());
  const int64_t size = tensor.size(dim);
  at::Tensor host = index.device().is_cpu() ? index.contiguous() : index.cpu();
  const int64_t bad = first_out_of_range(host.const_data_ptr<int64_t>(), host.numel(), size);
  TORCH_CHECK(bad < 0, kOp, ": ", which, "[", t, "][", bad, "] = ", bad < 0 ? 0 : host.const_data_ptr<int64_t>()[bad],
              " is out of range for dim ", dim, " of tensors[", t, "] (allowed 0..", size - 1, ")");
  return index.contiguous();
}

}  // namespace

GatherPlan prepare_gather(at::TensorList tensors, const c10::List<std::optional<at::Tensor>>& rows,
                          const c10::List<std::optional<at::Tensor>>& cols, c10::DeviceType device_type) {
  const int64_t n = static_cast<int64_t>(tensors.size());
  TORCH_CHECK(static_cast<int64_t>(rows.size()) == n, kOp, ": rows has ", rows.size(), " entries but tensors has ", n,
              "; pass one index set (or None) per tensor");
  TORCH_CHECK(static_cast<int64_t>(cols.size()) == n, kOp, ": cols has ", cols.size(), " entries but tensors has ", n,
              "; pass one index set (or None) per tensor");
  GatherPlan plan;
  plan.outputs.reserve(n);
  plan.jobs.reserve(n);
  for (int64_t t = 0; t < n; ++t) {
    const at::Tensor& src_in = tensors[t];
    TORCH_CHECK(src_in.device().type() == device_type, kOp, ": tensors[", t, "] is on ", src_in.device(),
                ", expected a ", c10::DeviceTypeName(device_type), " tensor");
    TORCH_CHECK(src_in.dim() >= 1, kOp, ": tensors[", t, "] is a scalar; nothing to slice");
    const std::optional<at::Tensor> row = rows.get(t);
    const std::optional<at::Tensor> col = cols.get(t);
    TORCH_CHECK(!col.has_value() || src_in.dim() >= 2, kOp, ": cols[", t, "] is given but tensors[", t,
                "] has only one dimension");
    const int64_t es = static_cast<int64_t>(src_in.element_size());
    TORCH_CHECK(es == 1 || es == 2 || es == 4 || es == 8 || es == 16, kOp, ": tensors[", t,
                "] has unsupported element size ", es);

    at::Tensor src = src_in.contiguous();
    GatherJob job{};
    job.src = static_cast<const char*>(src.const_data_ptr());
    job.d0 = src.size(0);
    job.d1 = src.dim() >= 2 ? src.size(1) : 1;
    job.inner = job.d0 * job.d1 == 0 ? 0 : src.numel() / (job.d0 * job.d1);
    job.elem_size = es;
    std::vector<int64_t> out_shape = src.sizes().vec();
    job.r0 = job.d0;
    job.r1 = job.d1;
    if (row.has_value()) {
      at::Tensor idx = checked_index(*row, src_in, t, 0);
      job.rows = idx.const_data_ptr<int64_t>();
      job.r0 = out_shape[0] = idx.numel();
      plan.keep_alive.push_back(idx);
    }
    if (col.has_value()) {
      at::Tensor idx = checked_index(*col, src_in, t, 1);
      job.cols = idx.const_data_ptr<int64_t>();
      job.r1 = out_shape[1] = idx.numel();
      plan.keep_alive.push_back(idx);
    }
    at::Tensor out = at::empty(out_shape, src.options());
    job.dst = static_cast<char*>(out.data_ptr());
    plan.keep_alive.push_back(src);
    plan.outputs.push_back(out);
    plan.jobs.push_back(job);
    plan.max_out_numel = std::max(plan.max_out_numel, out.numel());
    plan.max_elem_size = std::max(plan.max_elem_size, es);
  }
  return plan;
}

}  // namespace lostprune
