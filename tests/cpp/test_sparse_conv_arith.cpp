// Unit tests of csrc/sparse_conv/sparse_conv.h: the phase-plane layout shared by the CPU
// kernel (planes + one offset per nonzero), the tap decoding and the tile plan and staged
// indexing of the CUDA kernel (emulated here block by block on the CPU); the CPU kernel's band
// chunk budget (sparse_conv_tiles.h).
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../../csrc/sparse_conv/sparse_conv.h"
#include "../../csrc/sparse_conv/sparse_conv_tiles.h"
#include "check.h"

using lostprune::SparseConvGeometry;

// Input value at (c, u, v) of a C x H x W image, zero outside (the padding).
static float input_at(int64_t c, int64_t u, int64_t v, int64_t H, int64_t W) {
  if (u < 0 || u >= H || v < 0 || v >= W) return 0.0f;
  return float(1 + c * 10000 + u * 100 + v);
}

// Builds the planes with plane_source and checks that every output position reads, through
// tap_offset, exactly the padded input element the convolution needs.
static void check_layout(int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph,
                         int64_t pw, int64_t dh, int64_t dw) {
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

// Emulates the CUDA tiled kernel's indexing on the CPU: for every tile and block of
// kBlockChannels output channels, stages the input chunk by chunk through tile_source and
// accumulates every tap through tile_position_base + tile_tap_offset; compares with a direct
// convolution. Checks the plan's invariants on the way.
static void check_cuda_tiling(int64_t N, int64_t Cin, int64_t Cout, int64_t groups, int64_t H, int64_t W, int64_t KH,
                              int64_t KW, int64_t s, int64_t p, int64_t d, int64_t elem_bytes = 4) {
  constexpr int64_t kBlockChannels = 32;
  const SparseConvGeometry g = lostprune::make_geometry(H, W, KH, KW, s, s, p, p, d, d);
  const int64_t Cin_g = Cin / groups, Cout_g = Cout / groups;
  const int64_t block_groups = lostprune::ceil_div(kBlockChannels, Cout_g) + 1;
  const int64_t block_channels = block_groups * Cin_g < Cin ? block_groups * Cin_g : Cin;
  const lostprune::SparseConvTiling t = lostprune::make_cuda_tiling(g, N, block_channels, elem_bytes);
  const int64_t tile_positions = t.TB * t.TH * t.TW;
  LP_CHECK(tile_positions >= 1 && tile_positions <= lostprune::kCudaTilePositions);
  LP_CHECK(t.group_lanes >= 1 && t.group_lanes <= 32 && (t.group_lanes & (t.group_lanes - 1)) == 0);
  LP_CHECK(4 * t.group_lanes >= tile_positions);                           // every position has a lane
  LP_CHECK(t.group_lanes == 1 || 2 * t.group_lanes < tile_positions + 4);  // and lanes are not wasted
  LP_CHECK(t.chunk >= 1 && t.chunk <= block_channels);
  LP_CHECK(t.chunk * t.TB * t.IH * t.IW * elem_bytes <= lostprune::kCudaTileBytes);
  LP_CHECK(t.tiles_n * t.TB >= N && (t.tiles_n - 1) * t.TB < N);
  LP_CHECK(t.tiles_h * t.TH >= g.OH && (t.tiles_h - 1) * t.TH < g.OH);
  LP_CHECK(t.tiles_w * t.TW >= g.OW && (t.tiles_w - 1) * t.TW < g.OW);

  auto x_at = [&](int64_t n, int64_t c, int64_t u, int64_t v) {
    return double((n * 7 + c * 13 + u * 5 + v * 3) % 17) - 8.0;
  };
  auto w_at = [&](int64_t co, int64_t ci, int64_t kh, int64_t kw) {  // ~40 % zeros
    const int64_t h = (co * 31 + ci * 17 + kh * 7 + kw * 3) % 11;
    return h < 4 ? 0.0 : double(h) - 6.5;
  };
  std::vector<double> out(N * Cout * g.OH * g.OW, 0.0);
  std::vector<double> staged;
  for (int64_t tile = 0; tile < t.tiles_n * t.tiles_h * t.tiles_w; ++tile) {
    const int64_t n0 = tile / (t.tiles_h * t.tiles_w) * t.TB;
    const int64_t oh0 = tile / t.tiles_w % t.tiles_h * t.TH, ow0 = tile % t.tiles_w * t.TW;
    for (int64_t co0 = 0; co0 < Cout; co0 += kBlockChannels) {
      const int64_t co1 = co0 + kBlockChannels < Cout ? co0 + kBlockChannels : Cout;
      int64_t c_begin, c_end;
      lostprune::block_input_channels(co0, co1, Cin_g, Cout_g, &c_begin, &c_end);
      LP_CHECK(c_end - c_begin <= block_channels);
      for (int64_t c0 = c_begin; c0 < c_end; c0 += t.chunk) {
        const int64_t c1 = c0 + t.chunk < c_end ? c0 + t.chunk : c_end;
        staged.assign((c1 - c0) * t.TB * t.IH * t.IW, 0.0);
        for (int64_t cc = 0; cc < c1 - c0; ++cc)
          for (int64_t b = 0; b < t.TB; ++b)
            for (int64_t y = 0; y < t.IH; ++y)
              for (int64_t x = 0; x < t.IW; ++x) {
                int64_t u, v;
                lostprune::tile_source(g, oh0, ow0, y, x, &u, &v);
                const bool inside = n0 + b < N && u >= 0 && u < H && v >= 0 && v < W;
                staged[((cc * t.TB + b) * t.IH + y) * t.IW + x] = inside ? x_at(n0 + b, c0 + cc, u, v) : 0.0;
              }
        for (int64_t co = co0; co < co1; ++co) {
          const int64_t gb = co / Cout_g * Cin_g;
          for (int64_t ci = 0; ci < Cin_g; ++ci) {
            if (gb + ci < c0 || gb + ci >= c1) continue;  // another chunk's nonzeros
            for (int64_t kh = 0; kh < KH; ++kh)
              for (int64_t kw = 0; kw < KW; ++kw) {
                const double w = w_at(co, ci, kh, kw);
                if (w == 0.0) continue;
                const int64_t off = lostprune::tile_tap_offset(g, t, gb + ci - c0, kh, kw);
                for (int64_t q = 0; q < tile_positions; ++q) {
                  const int64_t b = q / (t.TH * t.TW), r = q % (t.TH * t.TW);
                  const int64_t n = n0 + b, oh = oh0 + r / t.TW, ow = ow0 + r % t.TW;
                  if (n >= N || oh >= g.OH || ow >= g.OW) continue;
                  const int64_t index = off + lostprune::tile_position_base(g, t, b, r / t.TW, r % t.TW);
                  LP_CHECK(index >= 0 && index < int64_t(staged.size()));
                  out[((n * Cout + co) * g.OH + oh) * g.OW + ow] += w * staged[index];
                }
              }
          }
        }
      }
    }
  }
  int bad = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t co = 0; co < Cout; ++co)
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          double want = 0.0;
          const int64_t gb = co / Cout_g * Cin_g;
          for (int64_t ci = 0; ci < Cin_g; ++ci)
            for (int64_t kh = 0; kh < KH; ++kh)
              for (int64_t kw = 0; kw < KW; ++kw) {
                const int64_t u = oh * s + kh * d - p, v = ow * s + kw * d - p;
                if (u >= 0 && u < H && v >= 0 && v < W) want += w_at(co, ci, kh, kw) * x_at(n, gb + ci, u, v);
              }
          bad += out[((n * Cout + co) * g.OH + oh) * g.OW + ow] != want;  // small integers: exact
        }
  LP_CHECK(bad == 0);
}

int main() {
  LP_CHECK(lostprune::conv_out_size(32, 3, 1, 1, 1) == 32);
  LP_CHECK(lostprune::conv_out_size(56, 3, 2, 1, 1) == 28);
  LP_CHECK(lostprune::conv_out_size(7, 5, 1, 0, 2) == 0);  // too small: the op rejects it

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

  // CUDA tile plan and staged indexing: small and odd maps, batches that fill the lanes,
  // strides, dilations, groups, several channel chunks, and tiles too wide for one row.
  check_cuda_tiling(1, 3, 5, 1, 7, 7, 3, 3, 1, 1, 1);     // 49 positions: 16-lane groups
  check_cuda_tiling(3, 4, 6, 1, 4, 4, 3, 3, 1, 1, 1);     // 16 positions, 3 images per tile
  check_cuda_tiling(1, 5, 3, 1, 1, 1, 1, 1, 1, 0, 1);     // one position: every lane splits taps
  check_cuda_tiling(2, 6, 9, 3, 9, 11, 3, 3, 2, 1, 1);    // grouped, stride 2
  check_cuda_tiling(1, 8, 8, 8, 13, 5, 3, 3, 1, 2, 2);    // depthwise, dilation 2
  check_cuda_tiling(1, 3, 4, 1, 33, 31, 7, 7, 2, 3, 1);   // stem shape, odd sizes
  check_cuda_tiling(1, 2, 3, 1, 5, 300, 3, 3, 1, 1, 1);   // wider than a tile: column tiles
  check_cuda_tiling(1, 600, 2, 1, 6, 6, 3, 3, 1, 1, 1);   // many channels: several chunks
  check_cuda_tiling(5, 3, 40, 1, 3, 5, 1, 1, 1, 0, 1);    // 40 output channels: two blocks
  check_cuda_tiling(2, 2, 2, 1, 40, 40, 3, 3, 1, 0, 12);  // dilation 12: small tiles
  check_cuda_tiling(2, 3, 4, 1, 6, 6, 3, 3, 1, 1, 1, 8);  // double: half the budget
  {  // no staging when one input channel of a one-position tile exceeds the budget
    const SparseConvGeometry g = lostprune::make_geometry(120, 120, 3, 3, 1, 1, 0, 0, 50, 50);
    const lostprune::SparseConvTiling t = lostprune::make_cuda_tiling(g, 1, 1, 4);
    LP_CHECK(t.chunk == 0 && t.TB == 1 && t.TH == 1 && t.TW == 1);
  }
  {  // a 56 x 56 map: two full rows per tile, 32 lanes
    const SparseConvGeometry g = lostprune::make_geometry(56, 56, 3, 3, 1, 1, 1, 1, 1, 1);
    const lostprune::SparseConvTiling t = lostprune::make_cuda_tiling(g, 32, 64, 4);
    LP_CHECK(t.TB == 1 && t.TH == 2 && t.TW == 56 && t.group_lanes == 32 && t.IH == 4 && t.IW == 58);
    LP_CHECK(t.chunk == 8192 / (4 * 58));  // 35 of the 64 channels per chunk
  }
  {  // 7 x 7 maps at batch 32: two images per tile
    const SparseConvGeometry g = lostprune::make_geometry(7, 7, 3, 3, 1, 1, 1, 1, 1, 1);
    const lostprune::SparseConvTiling t = lostprune::make_cuda_tiling(g, 32, 512, 4);
    LP_CHECK(t.TB == 2 && t.tiles_n == 16 && t.group_lanes == 32);
  }

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

  {  // band chunk budget: inversely to the density, longer where partial tiles are large, clamped
    const lostprune::cpu::Tuning tune;
    using lostprune::cpu::band_budget;
    LP_CHECK(band_budget(tune, 1.0, 32 << 10) == tune.min_band_bytes);
    LP_CHECK(band_budget(tune, 0.1, 32 << 10) == 10 * tune.band_bytes_x_density);
    LP_CHECK(band_budget(tune, 0.1, 4 * tune.band_partials_bytes) == 20 * tune.band_bytes_x_density);
    LP_CHECK(band_budget(tune, 0.001, 32 << 10) == tune.max_band_bytes);
    LP_CHECK(band_budget(tune, 0.0, 32 << 10) == tune.max_band_bytes);  // an all-zero weight
    int64_t last = 0;
    for (double density = 1.0; density > 0.005; density *= 0.8) {
      const int64_t budget = band_budget(tune, density, 96 << 10);
      LP_CHECK(budget >= last && budget >= tune.min_band_bytes && budget <= tune.max_band_bytes);
      last = budget;
    }
  }

  LP_CHECK(lostprune::sparse_epilogue(1.5f, 2.0f, false) == 3.5f);
  LP_CHECK(lostprune::sparse_epilogue(1.5f, -2.0f, false) == -0.5f);
  LP_CHECK(lostprune::sparse_epilogue(1.5f, -2.0f, true) == 0.0f);
  LP_CHECK(lostprune::sparse_epilogue(-1.0, 0.0, true) == 0.0);
  LP_CHECK(lostprune::sparse_epilogue(2.0, 0.0, true) == 2.0);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  LP_CHECK(std::isnan(lostprune::sparse_epilogue(nan, 0.0f, true)));  // like torch.relu
  LP_TEST_MAIN_END();
}
