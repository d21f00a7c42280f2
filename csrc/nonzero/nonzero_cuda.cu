// CUDA nonzero_rows_cols: one thread per element (grid-stride); a nonzero element marks its
// row and column. Threads only ever store 1, so concurrent stores to one flag agree; a flag
// already set is not stored again.
#include "nonzero_cuda.h"

namespace lostprune {
namespace {

template <typename Word>
__global__ void nonzero_rows_cols_kernel(const Word* x, int64_t n, int64_t d1, int64_t inner, Word bits,
                                         unsigned char* rows, unsigned char* cols) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    if (!is_nonzero_word(x[i], bits)) continue;
    const int64_t r = nonzero_row_of(i, d1, inner), c = nonzero_col_of(i, d1, inner);
    if (!rows[r]) rows[r] = 1;
    if (!cols[c]) cols[c] = 1;
  }
}

}  // namespace

template <typename Word>
cudaError_t nonzero_rows_cols_cuda_launch(const Word* x, int64_t d0, int64_t d1, int64_t inner, bool floating,
                                          unsigned char* rows, unsigned char* cols, cudaStream_t stream) {
  const int64_t n = d0 * d1 * inner;
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 65535) blocks = 65535;  // the grid-stride loop covers the rest
  nonzero_rows_cols_kernel<Word><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      x, n, d1, inner, nonzero_bits<Word>(floating), rows, cols);
  return cudaGetLastError();
}

#define LP_INSTANTIATE(Word)                                                                             \
  template cudaError_t nonzero_rows_cols_cuda_launch<Word>(const Word*, int64_t, int64_t, int64_t, bool, \
                                                           unsigned char*, unsigned char*, cudaStream_t);
LP_INSTANTIATE(uint8_t)
LP_INSTANTIATE(uint16_t)
LP_INSTANTIATE(uint32_t)
LP_INSTANTIATE(uint64_t)
#undef LP_INSTANTIATE

}  // namespace lostprune
