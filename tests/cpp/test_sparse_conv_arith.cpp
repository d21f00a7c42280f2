// Unit tests of csrc/sparse_conv/sparse_conv.h: the phase-plane layout shared by the CPU
// kernel (planes + one offset per nonzero) and the tap decoding the CUDA kernel uses.
#include <cmath>
#include <limits>
#include <cstdint>
#include <vector>

#include "../../csrc/sparse_conv/sparse_conv.h"
#include "check.h"

using lostprune::SparseConvGeometry;

// Input value at (c, u, v) of a C x H x W image, zero outside (the padding).
static float input_at(int64_t c, int64_t u, int64_t v, int64_t H, int64_t W) {
  if (u < 0 || u >= H || v < 0 || v >= W) return 0.0f;
  return float(1 + c * 10000 + u * 100 + v);
}

// Builds the planes with plane_source and checks that every output position reads, through
// tap_offset, exactly the padded input element the convolution needs.
static void check_layout(int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh,
                         int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  SparseConvGeometry g = lostprune::make_geometry(H, W, KH, KW, sh, sw, ph, pw, dh, dw);
  LP_CHECK(g.OH == (H + 2 * ph - dh * (KH - 1) - 1) / sh + 1);
  LP_CHECK(g.Wq >= g.OW + g.max_dx);
  LP_CHECK(g.plane_stride % lostprune::kPlaneAlign == 0 && g.plane_stride >= g.plane);
  LP_CHECK(g.channel_stride == g.ny * g.nx * g.plane_stride);
  std::vector<float> planes(C * g.channel_stride + g.max_dx + 64, -1.0f);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t p = 0; p < g.ny * g.nx; ++p) {
      for (int64_t y = 0; y < g.Hq; ++y) {
        for (int64_t x = 0; x < g.Wq; ++x) {
          int64_t u, v;
          lostprune::plane_source(g, p, y, x, &u, &v);
          planes[c * g.channel_stride + p * g.plane_stride + y * g.Wq + x] = input_at(c, u, v, H, W);
        }
      }
    }
  }
  int bad = 0;
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t kh = 0; kh < KH; ++kh) {
      for (int64_t kw = 0; kw < KW; ++kw) {
        const int64_t off = c * g.channel_stride + lostprune::tap_offset(g, kh, kw);
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const float want = input_at(c, oh * sh + kh * dh - ph, ow * sw + kw * dw - pw, H, W);
            bad += planes[off + oh * g.Wq + ow] != want;
            // the band path numbers pixels densely: the same element through pixel_plane_offset
            bad += planes[off + lostprune::pixel_plane_offset(g, oh * g.OW + ow)] != want;
          }
        }
      }
    }
  }
  LP_CHECK(bad == 0);
}

int main() {
  LP_CHECK(lostprune::conv_out_size(32, 3, 1, 1, 1) == 32);
  LP_CHECK(lostprune::conv_out_size(56, 3, 2, 1, 1) == 28);
  LP_CHECK(lostprune::conv_out_size(7, 5, 1, 0, 2) == -1);  // too small: the op rejects it

  // Phases: a 1x1 stride-2 conv reads one of the two phases per axis, a 3x3 reads both.
  LP_CHECK(lostprune::phase_count(1, 2, 1) == 1);
  LP_CHECK(lostprune::phase_count(3, 2, 1) == 2);
  LP_CHECK(lostprune::phase_count(2, 4, 2) == 2);  // taps at 0 and 2: phases {0, 2}
  LP_CHECK(lostprune::phase_index(2, 4, 2, 2) == 1 && lostprune::nth_phase(2, 4, 2, 1) == 2);
  LP_CHECK(lostprune::phase_count(3, 1, 5) == 1);

  check_layout(2, 9, 11, 3, 3, 1, 1, 1, 1, 1, 1);
  check_layout(3, 10, 7, 3, 3, 2, 2, 1, 1, 1, 1);
  check_layout(2, 15, 15, 1, 1, 2, 2, 0, 0, 1, 1);
  check_layout(2, 12, 13, 5, 5, 3, 3, 2, 2, 2, 2);
  check_layout(1, 9, 9, 3, 3, 1, 1, 4, 4, 3, 3);
  check_layout(2, 4, 5, 1, 3, 1, 2, 0, 1, 2, 1);
  check_layout(1, 33, 31, 7, 7, 2, 2, 3, 3, 1, 1);
  check_layout(1, 8, 8, 2, 2, 4, 4, 1, 1, 2, 2);
  check_layout(2, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1);
  check_layout(2, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1);
  check_layout(2, 28, 28, 3, 3, 2, 2, 1, 1, 1, 1);

  int64_t ci, kh, kw;
  lostprune::decode_tap(5 * 9 + 2 * 3 + 1, 3, 3, &ci, &kh, &kw);
  LP_CHECK(ci == 5 && kh == 2 && kw == 1);
  lostprune::decode_tap(7, 1, 1, &ci, &kh, &kw);
  LP_CHECK(ci == 7 && kh == 0 && kw == 0);

  const int32_t good[] = {0, 2, 2, 5};
  const int32_t decreasing[] = {0, 3, 2, 5};
  const int32_t short_end[] = {0, 2, 2, 4};
  const int32_t bad_start[] = {1, 2, 2, 5};
  LP_CHECK(lostprune::first_bad_row(good, 3, 5) == -1);
  LP_CHECK(lostprune::first_bad_row(decreasing, 3, 5) == 1);
  LP_CHECK(lostprune::first_bad_row(short_end, 3, 5) == 3);
  LP_CHECK(lostprune::first_bad_row(bad_start, 3, 5) == 0);

  LP_CHECK(lostprune::sparse_epilogue(1.5f, 2.0f, false) == 3.5f);
  LP_CHECK(lostprune::sparse_epilogue(1.5f, -2.0f, false) == -0.5f);
  LP_CHECK(lostprune::sparse_epilogue(1.5f, -2.0f, true) == 0.0f);
  LP_CHECK(lostprune::sparse_epilogue(-1.0, 0.0, true) == 0.0);
  LP_CHECK(lostprune::sparse_epilogue(2.0, 0.0, true) == 2.0);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  LP_CHECK(std::isnan(lostprune::sparse_epilogue(nan, 0.0f, true)));  // like torch.relu
  LP_TEST_MAIN_END();
}
