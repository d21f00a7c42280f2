// Convolution geometry shared by every kernel (CPU, CUDA, C++ unit tests). The Python twin is
// lostprune/ops/_conv_args.py: conv_out_size.
#pragma once

#include "macros.h"

namespace lostprune {

// Output extent of a convolution along one axis, PyTorch's floor((in + 2p - d(k-1) - 1) / s) + 1,
// and 0 when the dilated kernel does not fit: C's division truncates toward zero, so the plain
// formula would give 1 for a span of -1.
LP_HD int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dil) {
  const int64_t span = in + 2 * pad - dil * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

}  // namespace lostprune
