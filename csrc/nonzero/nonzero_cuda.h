// Launcher of the CUDA nonzero_rows_cols. No torch headers: the .cu stays a fast nvcc compile.
#pragma once

#include <cuda_runtime_api.h>

#include "nonzero.h"

namespace lostprune {

// x: d0 * d1 * inner contiguous words; rows [d0] and cols [d1] zero-filled bytes, set to 1
// where a nonzero lies. Returns the launch's error code.
template <typename Word>
cudaError_t nonzero_rows_cols_cuda_launch(const Word* x, int64_t d0, int64_t d1, int64_t inner, bool floating,
                                          unsigned char* rows, unsigned char* cols, cudaStream_t stream);

}  // namespace lostprune
