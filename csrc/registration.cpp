// Every lostprune op schema, in one place. Kernels register per backend with
// TORCH_LIBRARY_IMPL next to their implementation; fake (meta) implementations and
// Python references live in lostprune/ops/.
#include <torch/library.h>

TORCH_LIBRARY(lostprune, m) {
  // Structured channel slicing (docs/methods.md §Slicing): per tensor, keep rows (dim 0) and/or cols (dim 1).
  m.def("gather_channels(Tensor[] tensors, Tensor?[] rows, Tensor?[] cols) -> Tensor[]");
  // Live rows (dim 0) and columns (dim 1) of a weight or mask: which hold a nonzero (bool [d0], bool [d1]);
  // what slicing removes. One streaming read of every element (csrc/nonzero/nonzero.h).
  m.def("nonzero_rows_cols(Tensor t) -> (Tensor, Tensor)");
  // Masked sparse conv / linear (docs/architecture.md, Kernels): the weight packed as CSR over
  // [Cout, Cin/g*KH*KW] (values, int32 col_index = tap code, int32 row_ptr); see
  // csrc/sparse_conv/sparse_conv.h. Fused epilogue: out = relu?(conv + bias + residual) (BatchNorm
  // folded by the caller).
  m.def(
      "sparse_conv2d(Tensor x, Tensor values, Tensor col_index, Tensor row_ptr, int[] weight_shape, "
      "Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "Tensor? residual=None, bool relu=False) -> Tensor");
  m.def(
      "sparse_linear(Tensor x, Tensor values, Tensor col_index, Tensor row_ptr, int[] weight_shape, "
      "Tensor? bias) -> Tensor");
  // Sensitivity scoring (docs/methods.md §Sensitivities): x [B, Cin, H, W], weight [Cout, Cin/g, kh, kw];
  // max over the batch (and over `running`, to stream batches). Linear = 1x1 conv. Returns
  // (scores, output): with `with_output` the layer's output conv(x, weight) (no bias) that
  // scoring computes anyway, so a data pass need not convolve twice; else an empty tensor.
  m.def(
      "weight_sensitivity(Tensor x, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, str reduce, Tensor? running, bool with_output=False) -> (Tensor, Tensor)");
  m.def(
      "channel_sensitivity(Tensor x, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, Tensor? running, bool with_output=False) -> (Tensor, Tensor)");
  // Max-pooling of NCHW planes (floor mode, no dilation), exactly torch's max_pool2d: padding
  // reads as -inf, NaN propagates. A vectorized CPU kernel (torch's NCHW CPU pool is scalar).
  m.def("max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");
  // The vector ISA the CPU kernels were compiled for ("AVX-512", "AVX2", ...; common/simd.h).
  m.def("cpu_vector_isa() -> str");
}
