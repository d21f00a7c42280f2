// Launchers of the CUDA sparse conv2d / linear. No torch headers: the .cu stays a fast
// nvcc compile. Pointers are device pointers; the dtype tag says what x, values, bias and
// out hold (col_index and row_ptr are always int32).
#pragma once

#include <cuda_runtime_api.h>

#include "sparse_conv.h"

namespace lostprune {

enum class SparseDtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct SparseConvCudaArgs {
  const void* x;        // [N, Cin, H, W], contiguous
  const void* values;   // [nnz]
  const int32_t* col;   // [nnz] tap codes
  const int32_t* row_ptr;  // [Cout + 1]
  const void* bias;     // [Cout] or nullptr
  void* out;            // [N, Cout, OH, OW], contiguous
  int64_t N, Cin, Cout, Cin_g, Cout_g, nnz;
  SparseConvGeometry g;
  SparseDtype dtype;
};

struct SparseLinearCudaArgs {
  const void* x;        // [M, in], contiguous
  const void* values;
  const int32_t* col;   // [nnz] input features
  const int32_t* row_ptr;  // [out + 1]
  const void* bias;     // [out] or nullptr
  void* y;              // [M, out]
  int64_t M, in, out, nnz;
  SparseDtype dtype;
};

// Malformed CSR arrays (checked on the host for CPU only: a check here would synchronize)
// never make the kernels read out of bounds: rows are clamped to [0, nnz] and
// out-of-range codes contribute nothing.
cudaError_t sparse_conv2d_cuda_launch(const SparseConvCudaArgs& args, cudaStream_t stream);
cudaError_t sparse_linear_cuda_launch(const SparseLinearCudaArgs& args, cudaStream_t stream);

}  // namespace lostprune
