// Channel-slicing gather: the arithmetic shared by the CPU kernel, the CUDA kernel and
// the C++ unit tests. Each source tensor is viewed as [d0, d1, inner]; the output keeps
// the listed rows (dim 0) and/or columns (dim 1) and every inner element.
#pragma once

#include "../common/macros.h"

namespace lostprune {

// One tensor to gather. Plain data, identical layout on host and device.
struct GatherJob {
  const char* src;
  char* dst;
  const int64_t* rows;    // kept indices along dim 0, or nullptr for all of them
  const int64_t* cols;    // kept indices along dim 1, or nullptr for all of them
  int64_t d0, d1, inner;  // source viewed as [d0, d1, inner]
  int64_t r0, r1;         // output extent along dims 0 and 1
  int64_t elem_size;      // bytes per element: the gather only moves bytes
};

LP_HD int64_t gather_out_numel(const GatherJob& j) { return j.r0 * j.r1 * j.inner; }

// Length of the contiguous runs the output is made of: without column selection a whole
// row [d1, inner] is contiguous in the source; without any selection, the whole tensor.
LP_HD int64_t gather_run_length(const GatherJob& j) {
  if (j.cols != nullptr) return j.inner;
  if (j.rows != nullptr) return j.d1 * j.inner;
  return j.d0 * j.d1 * j.inner;
}

// Source element index of output element `out`.
LP_HD int64_t gather_source_index(const GatherJob& j, int64_t out) {
  const int64_t k = out % j.inner;
  const int64_t rc = out / j.inner;
  const int64_t c = rc % j.r1;
  const int64_t r = rc / j.r1;
  const int64_t src_r = j.rows != nullptr ? j.rows[r] : r;
  const int64_t src_c = j.cols != nullptr ? j.cols[c] : c;
  return (src_r * j.d1 + src_c) * j.inner + k;
}

// Source element index where output row r's data starts: kept column c, element k of it,
// lies at gather_row_base(j, r) + cols[c] * inner + k (the CPU kernel's unit with columns).
LP_HD int64_t gather_row_base(const GatherJob& j, int64_t r) {
  return (j.rows != nullptr ? j.rows[r] : r) * j.d1 * j.inner;
}

// Index of the first out-of-range entry of idx[0..n) for an extent of `size`, or -1.
LP_HD int64_t first_out_of_range(const int64_t* idx, int64_t n, int64_t size) {
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] < 0 || idx[i] >= size) return i;
  }
  return -1;
}

}  // namespace lostprune
