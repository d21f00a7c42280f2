// Unit tests of csrc/sensitivity/sensitivity.h: geometry, im2col indexing, the valid-column
// ranges, the sign split and the eps rule shared by the CPU and CUDA kernels.
#include <cstdint>

#include "../../csrc/sensitivity/sensitivity.h"
#include "check.h"

using namespace lostprune;

// Brute force: is output column o's tap at offset dx inside [0, in)?
static bool inside(int64_t o, int64_t stride, int64_t dx, int64_t in) {
  const int64_t i = o * stride + dx;
  return i >= 0 && i < in;
}

int main() {
  // Output extents as torch computes them (csrc/common/conv_geometry.h).
  LP_CHECK(conv_out_size(32, 3, 1, 1, 1) == 32);
  LP_CHECK(conv_out_size(32, 3, 2, 1, 1) == 16);
  LP_CHECK(conv_out_size(7, 3, 1, 0, 2) == 3);
  LP_CHECK(conv_out_size(3, 5, 1, 0, 1) == 0);  // does not fit
  // A span of -1 with stride 2: truncating division would give 1 output, torch gives 0.
  LP_CHECK(conv_out_size(2, 3, 2, 0, 1) == 0);

  // Geometry of a grouped, dilated, strided, non-square conv.
  const SensGeometry g = make_geometry(4, 9, 7, 6, 2, 3, 2, 2, 1, 1, 2, 1, 2);
  LP_CHECK(g.out_h == 5 && g.out_w == 9);
  LP_CHECK(group_in_channels(g) == 2 && group_out_channels(g) == 3);
  LP_CHECK(edges_per_output(g) == 12 && positions(g) == 45 && image_numel(g) == 4 * 9 * 7);

  // edge_input_offset against the definition, for every edge, position and group.
  int mismatches = 0;
  for (int64_t group = 0; group < g.groups; ++group) {
    for (int64_t r = 0; r < edges_per_output(g); ++r) {
      const int64_t c = group * 2 + r / 6, ky = (r % 6) / 2, kx = r % 2;
      for (int64_t q = 0; q < positions(g); ++q) {
        const int64_t oy = q / g.out_w, ox = q % g.out_w;
        const int64_t iy = oy * g.sh - g.ph + ky * g.dh, ix = ox * g.sw - g.pw + kx * g.dw;
        const int64_t expect =
            (iy < 0 || iy >= g.in_h || ix < 0 || ix >= g.in_w) ? -1 : (c * g.in_h + iy) * g.in_w + ix;
        mismatches += edge_input_offset(g, group, r, q) != expect;
      }
      const EdgeTap tap = edge_tap(g, group, r);
      LP_CHECK(tap.channel == c && tap.dy == ky * g.dh - g.ph && tap.dx == kx * g.dw - g.pw);
    }
  }
  LP_CHECK(mismatches == 0);

  // valid_outputs is exactly the set of in-range columns, for many offsets and strides.
  for (int64_t stride = 1; stride <= 3; ++stride) {
    for (int64_t dx = -5; dx <= 5; ++dx) {
      for (int64_t in = 1; in <= 7; ++in) {
        for (int64_t out = 1; out <= 8; ++out) {
          const ValidRange v = valid_outputs(dx, stride, in, out);
          LP_CHECK(v.lo <= v.hi && v.lo >= 0 && v.hi <= out);
          for (int64_t o = 0; o < out; ++o) LP_CHECK(inside(o, stride, dx, in) == (o >= v.lo && o < v.hi));
        }
      }
    }
  }

  // Sign split: two non-negative pseudo-inputs that sum to |a|.
  LP_CHECK(split_activation(2.5f, 1) == 2.5f && split_activation(2.5f, -1) == 0.0f);
  LP_CHECK(split_activation(-1.5, 1) == 0.0 && split_activation(-1.5, -1) == 1.5);

  // eps rule: float32 eps itself is "z <= eps", so 0; just above gives 1/z; doubles too.
  LP_CHECK(inverse_or_zero(0.0f) == 0.0f);
  LP_CHECK(inverse_or_zero(kSensitivityEps) == 0.0f);
  LP_CHECK(inverse_or_zero(4.0f) == 0.25f);
  LP_CHECK(inverse_or_zero(1e-9) == 0.0);
  LP_CHECK(inverse_or_zero(2e-7) == 1.0 / 2e-7);

  // Reductions over positions.
  LP_CHECK(reduce_scale<double>(SensitivityReduce::kMean, 4) == 0.25);
  LP_CHECK(reduce_scale<double>(SensitivityReduce::kMax, 4) == 1.0);
  LP_CHECK(reduce_step(SensitivityReduce::kMean, 1.0, 2.0) == 3.0);
  LP_CHECK(reduce_step(SensitivityReduce::kMax, 1.0, 2.0) == 2.0);
  LP_CHECK(reduce_step(SensitivityReduce::kMax, 3.0, 2.0) == 3.0);
  LP_TEST_MAIN_END();
}
