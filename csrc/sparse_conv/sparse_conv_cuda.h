// Launchers of the CUDA sparse conv2d / linear. No torch headers: the .cu stays a fast
// nvcc compile. Pointers are device pointers; the dtype tag says what x, values, bias and
// out hold (col_index and row_ptr are always int32).
#pragma once

#include <cuda_runtime_api.h>

#include "sparse_conv.h"

namespace lostprune {

enum class SparseDtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// The packed weight and bias: CSR over [rows, cols] (see sparse_conv.h).
struct CsrWeight {
  const void* values;      // [nnz]
  const int32_t* col;      // [nnz] tap codes (conv) or input features (linear)
  const int32_t* row_ptr;  // [rows + 1]
  const void* bias;        // [rows] or nullptr
  int64_t nnz;
};

struct SparseConvCudaArgs {
  const void* x;  // [N, Cin, H, W], contiguous
  CsrWeight w;
  void* out;  // [N, Cout, OH, OW], contiguous
  int64_t N, Cin, Cout, Cin_g, Cout_g;
  SparseConvGeometry g;
  SparseDtype dtype;
  const void* residual;  // like out, or nullptr: the fused epilogue (sparse_epilogue)
  bool relu;
};

struct SparseLinearCudaArgs {
  const void* x;  // [M, in], contiguous
  CsrWeight w;
  void* y;  // [M, out]
  int64_t M, in, out;
  SparseDtype dtype;
};

// Malformed CSR arrays (checked on the host for CPU only: a check here would synchronize)
// never make the kernels read out of bounds: rows are clamped to [0, nnz] and
// out-of-range codes contribute nothing.
cudaError_t sparse_conv2d_cuda_launch(const SparseConvCudaArgs& args, cudaStream_t stream);
cudaError_t sparse_linear_cuda_launch(const SparseLinearCudaArgs& args, cudaStream_t stream);

}  // namespace lostprune
