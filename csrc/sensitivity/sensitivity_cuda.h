// Launcher of the CUDA sensitivity reduction. No torch headers: the .cu stays a fast nvcc
// compile. z (hence V = 1/z) comes from cuDNN in the glue; this kernel does the reduction.
#pragma once

#include <cuda_runtime_api.h>

#include "sensitivity.h"

namespace lostprune {

// For n_points non-negative data points xs [n_points, Cin, H, W] with inverses
// v [n_points, groups, 2 (sign), Cout/groups, P] and weight [Cout, edges], folds into
// acc [Cout, edges] (with max) the reduction over positions of A * V^{sign w}: per data point
// sums for kMean (then max over data points), max over data points and positions for kMax.
// acc must hold non-negative values (zeros to start). T is float or double.
template <typename T>
cudaError_t sensitivity_reduce_cuda_launch(const T* xs, const T* v, const T* weight, T* acc, const SensGeometry& g,
                                           int64_t n_points, SensitivityReduce reduce, cudaStream_t stream);

}  // namespace lostprune
