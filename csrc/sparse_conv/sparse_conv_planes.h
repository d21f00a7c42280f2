// Phase planes (sparse_conv.h) of the CPU sparse convolution: the zero-padded input split
// into stride phases, filled once per image (or group of interleaved images) per call.
#pragma once

#include <cstdint>

#include "sparse_conv.h"

namespace lostprune {
namespace cpu {

constexpr int64_t kMaxPhasePlanes = 64;  // ny * nx, checked by the caller

// Elements one group of G images occupies in the phase layout of Cin channels, including
// the tail that the last tile's vectors and the widest tap may read past the final plane.
inline int64_t planes_numel(int64_t Cin, const SparseConvGeometry& g, int64_t G) {
  return (Cin * g.channel_stride + g.max_dx + 3 * kPlaneAlign) * G;
}

// Planes of input channels [c_begin, c_end) of the G images at x (each [Cin, H, W],
// image_stride elements apart), image j of a group in lane j of every pixel (G = 1: one
// image). Alignment gaps are zeroed: they are read as garbage columns.
template <typename S>
void fill_planes(const S* x, int64_t image_stride, int64_t G, const SparseConvGeometry& geometry, int64_t c_begin,
                 int64_t c_end, S* planes);

}  // namespace cpu
}  // namespace lostprune
