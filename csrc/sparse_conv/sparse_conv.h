// Masked sparse convolution: the arithmetic shared by the CPU kernel, the CUDA kernel and
// the C++ unit tests.
//
// Packed weight (built once per layer, see lostprune/ops/sparse.py): CSR over the weight
// viewed as [Cout, Cin/g * KH * KW]. row_ptr[Cout + 1] (int32) delimits each output
// channel's nonzeros, col_index[nnz] (int32) is the tap code ci * KH * KW + kh * KW + kw
// (ci local to the group), values[nnz] the weights.
//
// CPU input layout ("phase planes"): the zero-padded input of every channel is split into
// stride phases, plane (a, b) holding xpad[y * sh + a][x * sw + b], each plane Hq x Wq.
// Output position (oh, ow) then reads, for tap (kh, kw), element
//     tap_offset(kh, kw) + oh * Wq + ow
// of its channel's planes: one constant offset per nonzero, whatever the stride, padding or
// dilation. Numbering the outputs on the Wq-wide grid (q = oh * Wq + ow, the columns
// ow >= OW being discarded) makes every nonzero an axpy over one contiguous run of q.
#pragma once

#include "../common/conv_geometry.h"
#include "../common/macros.h"

namespace lostprune {

// Planes start on multiples of this many elements (64 bytes of float32: one AVX-512 vector).
constexpr int64_t kPlaneAlign = 16;

// Phases along one axis: the distinct values of (k * dil) % stride over taps k < kernel.
// Only the phases some tap reads get a plane (a 1x1 stride-2 conv reads one of four).
LP_HD bool phase_used(int64_t kernel, int64_t stride, int64_t dil, int64_t phase) {
  for (int64_t k = 0; k < kernel; ++k) {
    if ((k * dil) % stride == phase) return true;
  }
  return false;
}

// Index of `phase` among the used phases (number of used phases below it).
LP_HD int64_t phase_index(int64_t kernel, int64_t stride, int64_t dil, int64_t phase) {
  int64_t index = 0;
  for (int64_t a = 0; a < phase; ++a) index += phase_used(kernel, stride, dil, a) ? 1 : 0;
  return index;
}

LP_HD int64_t phase_count(int64_t kernel, int64_t stride, int64_t dil) {
  return phase_index(kernel, stride, dil, stride);
}

// The `index`-th used phase (inverse of phase_index).
LP_HD int64_t nth_phase(int64_t kernel, int64_t stride, int64_t dil, int64_t index) {
  for (int64_t a = 0; a < stride; ++a) {
    if (phase_used(kernel, stride, dil, a)) {
      if (index == 0) return a;
      --index;
    }
  }
  return -1;
}

struct SparseConvGeometry {
  int64_t H, W;    // input size
  int64_t KH, KW;  // kernel size
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t OH, OW;          // output size
  int64_t ny, nx;          // used phases along rows / columns
  int64_t Hq, Wq;          // phase-plane size
  int64_t plane;           // Hq * Wq
  int64_t plane_stride;    // plane rounded up to kPlaneAlign elements, so planes start aligned
  int64_t channel_stride;  // elements per input channel in the phase layout: ny * nx * plane_stride
  int64_t max_dx;          // largest column shift of a tap (over-read past a channel's last row)
};

LP_HD SparseConvGeometry make_geometry(int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph,
                                       int64_t pw, int64_t dh, int64_t dw) {
  SparseConvGeometry g{};
  // clang-format off
  g.H = H; g.W = W; g.KH = KH; g.KW = KW;
  g.sh = sh; g.sw = sw; g.ph = ph; g.pw = pw; g.dh = dh; g.dw = dw;
  // clang-format on
  g.OH = conv_out_size(H, KH, sh, ph, dh);
  g.OW = conv_out_size(W, KW, sw, pw, dw);
  g.ny = phase_count(KH, sh, dh);
  g.nx = phase_count(KW, sw, dw);
  g.Hq = g.OH + (KH - 1) * dh / sh;
  g.max_dx = (KW - 1) * dw / sw;
  g.Wq = g.OW + g.max_dx;
  g.plane = g.Hq * g.Wq;
  g.plane_stride = (g.plane + kPlaneAlign - 1) / kPlaneAlign * kPlaneAlign;
  g.channel_stride = g.ny * g.nx * g.plane_stride;
  return g;
}

// Sizes of one sparse_conv2d call (the CPU kernel's; CUDA has SparseConvCudaArgs).
struct SparseConvArgs {
  int64_t N, Cin, Cout, Cin_g, Cout_g, groups, nnz;
  SparseConvGeometry g;
};

// Offset of tap (kh, kw) within its input channel's phase planes.
LP_HD int64_t tap_offset(const SparseConvGeometry& g, int64_t kh, int64_t kw) {
  const int64_t r = kh * g.dh, c = kw * g.dw;
  const int64_t plane_index = phase_index(g.KH, g.sh, g.dh, r % g.sh) * g.nx + phase_index(g.KW, g.sw, g.dw, c % g.sw);
  return plane_index * g.plane_stride + (r / g.sh) * g.Wq + c / g.sw;
}

// Plane offset of output pixel p numbered densely (p = oh * OW + ow): its input for a tap
// lies at tap_offset + this in the channel's planes.
LP_HD int64_t pixel_plane_offset(const SparseConvGeometry& g, int64_t p) {
  const int64_t oh = p / g.OW;
  return oh * g.Wq + (p - oh * g.OW);
}

// Input coordinates (row u, column v, in the unpadded input; may be out of range = zero)
// that element (y, x) of plane `plane_index` holds.
LP_HD void plane_source(const SparseConvGeometry& g, int64_t plane_index, int64_t y, int64_t x, int64_t* u,
                        int64_t* v) {
  const int64_t a = nth_phase(g.KH, g.sh, g.dh, plane_index / g.nx);
  const int64_t b = nth_phase(g.KW, g.sw, g.dw, plane_index % g.nx);
  *u = y * g.sh + a - g.ph;
  *v = x * g.sw + b - g.pw;
}

// The fused epilogue (BatchNorm already folded into the weights and bias): the residual
// (0 when the call has none) is added, then ReLU when asked. NaN stays NaN, as in torch.relu.
template <typename S>
LP_HD S sparse_epilogue(S acc, S residual, bool relu) {
  const S v = acc + residual;
  return relu && v < S(0) ? S(0) : v;
}

// ---------------------------------------------------------------- CUDA tiles
// The CUDA kernel gives each block a tile of output positions (TB whole images when a map is
// small, else TH rows x TW columns of one image) for 8 to 32 neighbouring output channels,
// and stages the input the tile reads in shared memory, a chunk of input channels at a
// time: laid out [channel][image][IH][IW], zero where the input is padding, so the inner
// loop is one shared load and one multiply-add per nonzero and position, with no bounds checks.
constexpr int64_t kCudaTilePositions = 128;  // 32 lanes x 4 positions
constexpr int64_t kCudaTileBytes = 32768;    // shared memory for the staged input

struct SparseConvTiling {
  int64_t TB, TH, TW;                 // tile: images x output rows x output columns
  int64_t IH, IW;                     // staged input rows / columns per (channel, image)
  int64_t tiles_n, tiles_h, tiles_w;  // tiles along the batch, the rows, the columns
  int64_t chunk;                      // input channels staged at once; 0: too wide to stage
  int64_t group_lanes;                // G: lanes that share a nonzero; 32 / G lanes split them
};

LP_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Input rows (or columns) that `out` consecutive output rows read.
LP_HD int64_t tile_input_extent(int64_t out, int64_t stride, int64_t kernel, int64_t dil) {
  return (out - 1) * stride + (kernel - 1) * dil + 1;
}

// The tile plan for a batch of N images whose blocks read up to `block_channels` input
// channels each, staged as elements of `elem_bytes` bytes.
LP_HD SparseConvTiling make_cuda_tiling(const SparseConvGeometry& g, int64_t N, int64_t block_channels,
                                        int64_t elem_bytes) {
  SparseConvTiling t{};
  // Whole rows when they fit, balanced so the last tile is not mostly empty.
  t.TW = ceil_div(g.OW, ceil_div(g.OW, kCudaTilePositions));
  const int64_t rows = kCudaTilePositions / t.TW;
  t.TH = ceil_div(g.OH, ceil_div(g.OH, rows < 1 ? 1 : rows));
  t.TB = 1;
  if (t.TH == g.OH && t.TW == g.OW) {  // small maps: several images per tile fill the lanes
    const int64_t images = kCudaTilePositions / (g.OH * g.OW);
    t.TB = images < 1 ? 1 : (images > N ? N : images);
    t.TB = ceil_div(N, ceil_div(N, t.TB));
  }
  const int64_t budget = kCudaTileBytes / elem_bytes;  // elements
  // shrink until one channel of the tile fits
  for (;;) {
    t.IH = tile_input_extent(t.TH, g.sh, g.KH, g.dh);
    t.IW = tile_input_extent(t.TW, g.sw, g.KW, g.dw);
    if (t.TB * t.IH * t.IW <= budget) break;
    if (t.TB > 1) {
      t.TB = ceil_div(t.TB, 2);
    } else if (t.TH > 1) {
      t.TH = ceil_div(t.TH, 2);
    } else if (t.TW > 1) {
      t.TW = ceil_div(t.TW, 2);
    } else {
      break;
    }
  }
  t.tiles_n = ceil_div(N, t.TB);
  t.tiles_h = ceil_div(g.OH, t.TH);
  t.tiles_w = ceil_div(g.OW, t.TW);
  const int64_t per_channel = t.TB * t.IH * t.IW;
  t.chunk = per_channel <= budget ? budget / per_channel : 0;
  if (t.chunk > block_channels) t.chunk = block_channels;
  // Each lane holds 4 positions: G lanes cover the tile, the warp's 32 / G groups of lanes
  // take every (32 / G)-th nonzero and are summed at the end (small tiles keep lanes busy).
  const int64_t need = ceil_div(t.TB * t.TH * t.TW, 4);
  t.group_lanes = 1;
  while (t.group_lanes < need && t.group_lanes < 32) t.group_lanes *= 2;
  return t;
}

// Position (b, ty, tx) of a tile -> its first staged element; tap (channel cc of the chunk,
// kh, kw) -> the offset added to it. Their sum indexes the staged [cc][b][y][x] input.
LP_HD int64_t tile_position_base(const SparseConvGeometry& g, const SparseConvTiling& t, int64_t b, int64_t ty,
                                 int64_t tx) {
  return (b * t.IH + ty * g.sh) * t.IW + tx * g.sw;
}

LP_HD int64_t tile_tap_offset(const SparseConvGeometry& g, const SparseConvTiling& t, int64_t cc, int64_t kh,
                              int64_t kw) {
  return (cc * t.TB * t.IH + kh * g.dh) * t.IW + kw * g.dw;
}

// Where staged element (b, y, x) of tile (n0, oh0, ow0) comes from: image n0 + b, input row
// *u and column *v (out of range: padding, staged as zero).
LP_HD void tile_source(const SparseConvGeometry& g, int64_t oh0, int64_t ow0, int64_t y, int64_t x, int64_t* u,
                       int64_t* v) {
  *u = oh0 * g.sh - g.ph + y;
  *v = ow0 * g.sw - g.pw + x;
}

// Input channels [*first, *last) that output channels [co0, co1) read (a contiguous range:
// consecutive output channels belong to consecutive groups).
LP_HD void block_input_channels(int64_t co0, int64_t co1, int64_t Cin_g, int64_t Cout_g, int64_t* first,
                                int64_t* last) {
  *first = (co0 / Cout_g) * Cin_g;
  *last = ((co1 - 1) / Cout_g + 1) * Cin_g;
}

// Tap code of the packed format -> (local input channel, kh, kw).
LP_HD void decode_tap(int64_t code, int64_t KH, int64_t KW, int64_t* ci, int64_t* kh, int64_t* kw) {
  const int64_t taps = KH * KW;
  *ci = code / taps;
  const int64_t t = code - *ci * taps;
  *kh = t / KW;
  *kw = t - *kh * KW;
}

// Index of the first row whose CSR pointers are inconsistent (row_ptr[0] != 0, decreasing,
// or the last one != nnz), or -1 when row_ptr is valid.
LP_HD int64_t first_bad_row(const int32_t* row_ptr, int64_t rows, int64_t nnz) {
  if (row_ptr[0] != 0) return 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (row_ptr[r + 1] < row_ptr[r]) return r;
  }
  return row_ptr[rows] == nnz ? -1 : rows;
}

}  // namespace lostprune
