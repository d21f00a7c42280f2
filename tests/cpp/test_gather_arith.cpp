// Unit tests of csrc/gather/gather.h: index arithmetic shared by the CPU and CUDA kernels.
#include <cstring>
#include <vector>

#include "../../csrc/gather/gather.h"
#include "check.h"

using lostprune::GatherJob;

static std::vector<float> run(const std::vector<float>& src, GatherJob j) {
  std::vector<float> out(lostprune::gather_out_numel(j));
  j.src = reinterpret_cast<const char*>(src.data());
  j.dst = reinterpret_cast<char*>(out.data());
  const int64_t run = lostprune::gather_run_length(j);
  for (int64_t o = 0; o < (int64_t)out.size(); o += run) {
    std::memcpy(j.dst + o * j.elem_size, j.src + lostprune::gather_source_index(j, o) * j.elem_size, run * j.elem_size);
  }
  return out;
}

int main() {
  // A [4, 3, 2] tensor holding 0..23.
  std::vector<float> src(24);
  for (int i = 0; i < 24; ++i) src[i] = float(i);
  const int64_t rows[] = {3, 1};
  const int64_t cols[] = {2, 0};

  GatherJob both{nullptr, nullptr, rows, cols, 4, 3, 2, 2, 2, 4};
  LP_CHECK(lostprune::gather_run_length(both) == 2);
  std::vector<float> out = run(src, both);
  const float expect_both[] = {22, 23, 18, 19, 10, 11, 6, 7};
  LP_CHECK(out.size() == 8);
  for (int i = 0; i < 8; ++i) LP_CHECK(out[i] == expect_both[i]);

  // Row-wise with columns (the CPU kernel's unit): row base + kept column * inner.
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t c = 0; c < 2; ++c) {
      for (int64_t k = 0; k < 2; ++k) {
        LP_CHECK(lostprune::gather_row_base(both, r) + cols[c] * 2 + k ==
                 lostprune::gather_source_index(both, (r * 2 + c) * 2 + k));
      }
    }
  }
  LP_CHECK(lostprune::gather_row_base(both, 0) == 18);

  GatherJob rows_only{nullptr, nullptr, rows, nullptr, 4, 3, 2, 2, 3, 4};
  LP_CHECK(lostprune::gather_run_length(rows_only) == 6);  // whole rows are contiguous
  out = run(src, rows_only);
  for (int i = 0; i < 6; ++i) LP_CHECK(out[i] == float(18 + i));
  for (int i = 0; i < 6; ++i) LP_CHECK(out[6 + i] == float(6 + i));

  GatherJob cols_only{nullptr, nullptr, nullptr, cols, 4, 3, 2, 4, 2, 4};
  out = run(src, cols_only);
  LP_CHECK(out.size() == 16);
  LP_CHECK(out[0] == 4 && out[1] == 5 && out[2] == 0 && out[3] == 1 && out[4] == 10);

  GatherJob none{nullptr, nullptr, nullptr, nullptr, 4, 3, 2, 4, 3, 4};
  LP_CHECK(lostprune::gather_run_length(none) == 24);
  LP_CHECK(lostprune::gather_source_index(none, 17) == 17);

  const int64_t idx[] = {0, 5, 2, -1};
  LP_CHECK(lostprune::first_out_of_range(idx, 3, 6) == -1);
  LP_CHECK(lostprune::first_out_of_range(idx, 3, 5) == 1);
  LP_CHECK(lostprune::first_out_of_range(idx, 4, 6) == 3);
  LP_TEST_MAIN_END();
}
