// CPU gather: every tensor's output is a sequence of units — output rows where columns are
// selected, else contiguous runs of the source; the units of all tensors form one range
// that at::parallel_for splits across threads.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gather_prepare.h"

namespace lostprune {
namespace {

struct Word16 {
  unsigned char bytes[16];
};

// Output row r of a job with column selection: its kept columns, `inner` elements each —
// often a single element (1x1 convs, linear layers), where a memcpy per run would cost
// more than the copy itself.
template <typename Word>
void gather_row(const GatherJob& j, int64_t r) {
  const Word* src = reinterpret_cast<const Word*>(j.src) + gather_row_base(j, r);
  Word* dst = reinterpret_cast<Word*>(j.dst) + r * j.r1 * j.inner;
  const int64_t inner = j.inner;
  if (inner == 1) {
    for (int64_t c = 0; c < j.r1; ++c) dst[c] = src[j.cols[c]];
    return;
  }
  for (int64_t c = 0; c < j.r1; ++c) {
    std::memcpy(dst + c * inner, src + j.cols[c] * inner, inner * sizeof(Word));
  }
}

void gather_row_any(const GatherJob& j, int64_t r) {
  switch (j.elem_size) {
    case 1: gather_row<uint8_t>(j, r); break;
    case 2: gather_row<uint16_t>(j, r); break;
    case 4: gather_row<uint32_t>(j, r); break;
    case 8: gather_row<uint64_t>(j, r); break;
    default: gather_row<Word16>(j, r); break;  // 16: the only other size prepare_gather admits
  }
}

// Work units of a job: output rows with column selection, else contiguous runs.
int64_t gather_units(const GatherJob& j) {
  if (j.cols != nullptr) return gather_out_numel(j) == 0 ? 0 : j.r0;
  const int64_t run = gather_run_length(j);
  return run == 0 ? 0 : gather_out_numel(j) / run;
}

std::vector<at::Tensor> gather_channels_cpu(at::TensorList tensors, const c10::List<std::optional<at::Tensor>>& rows,
                                            const c10::List<std::optional<at::Tensor>>& cols) {
  GatherPlan plan = prepare_gather(tensors, rows, cols, c10::DeviceType::CPU);
  const auto& jobs = plan.jobs;
  // first_unit[t]: index of tensor t's first unit in the global range.
  std::vector<int64_t> first_unit(jobs.size() + 1, 0);
  for (size_t t = 0; t < jobs.size(); ++t) first_unit[t + 1] = first_unit[t] + gather_units(jobs[t]);
  const int64_t grain = 64;
  at::parallel_for(0, first_unit.back(), grain, [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(first_unit.begin(), first_unit.end(), begin) - first_unit.begin() - 1;
    for (int64_t g = begin; g < end; ++g) {
      while (g >= first_unit[t + 1]) ++t;
      const GatherJob& j = jobs[t];
      if (j.cols != nullptr) {
        gather_row_any(j, g - first_unit[t]);
        continue;
      }
      const int64_t run = gather_run_length(j);
      const int64_t out = (g - first_unit[t]) * run;
      std::memcpy(j.dst + out * j.elem_size, j.src + gather_source_index(j, out) * j.elem_size, run * j.elem_size);
    }
  });
  return plan.outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CPU, m) { m.impl("gather_channels", &gather_channels_cpu); }

}  // namespace lostprune
