// Every lostprune op schema, in one place. Kernels register per backend with
// TORCH_LIBRARY_IMPL next to their implementation; fake (meta) implementations and
// Python references live in lostprune/ops/.
#include <torch/library.h>

TORCH_LIBRARY(lostprune, m) {
  // Structured channel slicing (SPEC §6): per tensor, keep rows (dim 0) and/or cols (dim 1).
  m.def("gather_channels(Tensor[] tensors, Tensor?[] rows, Tensor?[] cols) -> Tensor[]");
}
