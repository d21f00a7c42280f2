// Argument checks with messages that name the op, the argument and what is allowed.
// Torch-side only (used by *_cpu.cpp and *_glue.cpp, never by .cu files).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace lostprune {

inline void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", arg,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ", t.scalar_type());
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                              const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " is on ", t.device(), " but ", ref_arg, " is on ",
              ref.device(), "; move both to the same device");
}

inline void check_same_dtype(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                             const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", arg, " has dtype ", t.scalar_type(), " but ", ref_arg,
              " has dtype ", ref.scalar_type());
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": ", arg, " must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_device_type(const char* op, const char* arg, const at::Tensor& t, c10::DeviceType type) {
  TORCH_CHECK(t.device().type() == type, op, ": ", arg, " must be a ", c10::DeviceTypeName(type),
              " tensor for this kernel, got ", t.device());
}

}  // namespace lostprune
