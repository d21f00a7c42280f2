// Scoped IEEE float32 for the cuDNN convolutions and cuBLAS matmuls a kernel's result depends
// on. On Ampere and later, torch lets cuDNN use TF32 for float32 convolutions by default
// (10-bit mantissa: ~1e-3 relative error), which would make the CUDA ops disagree with the
// CPU ones. The guard switches TF32 off and restores the caller's setting on destruction
// (the setting is process-wide, like torch.backends.cudnn.flags()). Torch-side only.
#pragma once

#include <ATen/Context.h>
#include <torch/version.h>

namespace lostprune {

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
// Per-operation precisions (torch >= 2.9): saved and restored exactly, whichever API
// (allow_tf32 or fp32_precision) the caller used.
class ExactFloat32Guard {
 public:
  ExactFloat32Guard()
      : conv_(at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV)),
        matmul_(at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL)) {
    at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, at::Float32Precision::IEEE);
    at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL,
                                            at::Float32Precision::IEEE);
  }
  ~ExactFloat32Guard() {
    at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, conv_);
    at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, matmul_);
  }
  ExactFloat32Guard(const ExactFloat32Guard&) = delete;
  ExactFloat32Guard& operator=(const ExactFloat32Guard&) = delete;

 private:
  at::Float32Precision conv_, matmul_;
};
#else
class ExactFloat32Guard {
 public:
  ExactFloat32Guard() : cudnn_(at::globalContext().allowTF32CuDNN()), cublas_(at::globalContext().allowTF32CuBLAS()) {
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~ExactFloat32Guard() {
    at::globalContext().setAllowTF32CuDNN(cudnn_);
    at::globalContext().setAllowTF32CuBLAS(cublas_);
  }
  ExactFloat32Guard(const ExactFloat32Guard&) = delete;
  ExactFloat32Guard& operator=(const ExactFloat32Guard&) = delete;

 private:
  bool cudnn_, cublas_;
};
#endif

}  // namespace lostprune
