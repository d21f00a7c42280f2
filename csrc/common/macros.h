// Portable qualifiers so one inline function serves the CPU backend, the CUDA
// backend and the plain C++ unit tests (which compile with neither torch nor nvcc).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LP_HD __host__ __device__ __forceinline__
#define LP_DEVICE __device__ __forceinline__
#else
#define LP_HD inline
#define LP_DEVICE inline
#endif

#include <stdint.h>
