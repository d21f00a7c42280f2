// CPU masked sparse conv2d (docs/architecture.md, Kernels): work proportional to the nonzeros. The SIMD
// micro-kernels are in sparse_conv_simd.h, the phase planes in sparse_conv_planes.cpp.
//
// Per image (or group of L small images interleaved pixel by pixel) the input is copied
// once into phase planes (sparse_conv.h): padding, stride and dilation become one constant
// offset per tap. Outputs are cut into tiles of up to kTileVectors vectors, and every
// output channel's nonzeros into chunks of consecutive tap codes (CSR order) sized so that
// what a tile reads of a chunk stays in cache (L1, or L2 for sparse weights: band_budget in
// sparse_conv_tiles.h) while all output channels pass over it. Loops run tile > chunk >
// output channel; partial tiles wait in a small buffer between chunks.
//
// Two ways to read a chunk:
// - band: the tile's im2col rows of the chunk's codes are gathered once into an aligned
//   buffer, pixels numbered densely; each nonzero then loads whole aligned vectors (a
//   misaligned 64-byte load spans two cache lines and costs two). Used for single images
//   when enough output channels read each row to repay the gather.
// - direct: nonzeros read the planes in place, pixels numbered on the planes' Wq-wide grid
//   (columns past OW discarded). Used for interleaved groups, whose offsets are whole
//   vectors already, and for layers with little reuse per row (grouped convs, few outputs).
//
// Each (output channel, chunk) range of nonzeros is found by the first tile a thread
// computes (the kernel stops at the chunk's last code), so planning costs nothing per
// nonzero beyond one validation pass.
//
// Threads: one parallel region per call, no barrier. A thread owns whole images (or
// groups) when there are enough, else an nnz-balanced block of output channels.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "sparse_conv_cpu.h"

#include "sparse_conv_args.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "sparse_conv_planes.h"
#include "sparse_conv_scratch.h"
#include "sparse_conv_tiles.h"

namespace lostprune {
namespace cpu {
namespace {

constexpr const char* kOp = "lostprune.sparse_conv2d";
constexpr int64_t kMaxInterleavedPixels = 96;  // batch-interleave images up to this many pixels
// Work per thread below which a parallel region costs more than it saves (fork/join of a
// few microseconds; much more when the machine is oversubscribed).
constexpr int64_t kGrainFmas = 32768;

// Output-channel blocks with about equal nonzeros: block u is [bounds[u], bounds[u + 1]).
std::vector<int64_t> channel_blocks(const int32_t* row_ptr, int64_t rows, int64_t blocks) {
  std::vector<int64_t> bounds(blocks + 1, rows);
  bounds[0] = 0;
  const int64_t nnz = row_ptr[rows];
  for (int64_t u = 1; u < blocks; ++u) {
    const int64_t target = nnz * u / blocks;
    const int64_t row = std::upper_bound(row_ptr, row_ptr + rows + 1, target) - row_ptr - 1;
    bounds[u] = std::clamp<int64_t>(row, bounds[u - 1], rows);
  }
  return bounds;
}

// `images` images at x (NCHW) into out, laid out G at a time. One parallel region and no
// barrier inside it (under contention every extra fork/join can cost a scheduler time
// slice). A thread owns whole groups (groups >= threads), else a share of the tiles (so no
// band row is gathered twice), else (fewer tiles than threads) an nnz-balanced block of
// output channels; it fills the planes of the groups it works on itself (O(input), small
// next to the convolution).
template <typename S>
void run_conv(const SparseConvArgs& a, int64_t G, const S* x, const S* values, const int32_t* col, const int32_t* rp,
              const S* bias, S* out, const Epilogue<S>& epilogue, int64_t images) {
  constexpr int L = Simd<S>::L;
  const SparseConvGeometry& g = a.g;
  const Layout lay = make_layout<S>(a, G);
  const int64_t in_image = a.Cin * g.H * g.W, out_image = a.Cout * g.OH * g.OW;
  const int64_t n_planes = planes_numel(a.Cin, g, G);
  const int64_t groups = images / G;
  const int64_t fmas = a.nnz * std::max<int64_t>(groups, 1) * ((lay.pixels + L - 1) / L);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), fmas / kGrainFmas));
  const bool by_group = groups >= threads;
  const bool by_tile = !by_group && lay.tiles >= threads;
  const int64_t units = by_group ? std::max<int64_t>(groups, 1) : threads;
  const std::vector<int64_t> blocks = channel_blocks(rp, a.Cout, by_group || by_tile ? 1 : units);

  // At most `threads` chunks of units: one per thread, or inline.
  at::parallel_for(0, units, by_group ? (units + threads - 1) / threads : 1, [&](int64_t begin, int64_t end) {
    const bool split_channels = !by_group && !by_tile;
    const int64_t co_begin = split_channels ? blocks[begin] : 0;
    const int64_t co_end = split_channels ? blocks[end] : a.Cout;
    const int64_t first = by_group ? begin : 0, last = by_group ? std::min(end, groups) : groups;
    const int64_t tile_begin = by_tile ? lay.tiles * begin / units : 0;
    const int64_t tile_end = by_tile ? lay.tiles * end / units : lay.tiles;
    if (co_begin < co_end && first < last && tile_begin < tile_end) {
      int32_t* bounds = scratch<int32_t>(kBounds, (lay.chunks + 1) * (co_end - co_begin));
      bool scanned = false;
      S* planes = scratch<S>(kPlanes, n_planes);
      std::fill(planes + a.Cin * g.channel_stride * G, planes + n_planes, S(0));  // over-read tail
      for (int64_t grp = first; grp < last; ++grp) {
        fill_planes(x + grp * G * in_image, in_image, G, g, 0, a.Cin, planes);
        conv_tiles(planes, lay, a, col, rp, values, bias, co_begin, co_end, out + grp * G * out_image, out_image,
                   epilogue.at(grp * G * out_image), bounds, scanned, tile_begin, tile_end);
      }
    }
    release_large_scratch({kPlanes, kBand, kPartialTiles, kBounds});
  });
  release_large_scratch({kPlanTable});
}

// Index of the first nonzero that breaks canonical CSR (codes in [0, codes), strictly
// increasing within each row), or -1. A branch-free pass per row (it vectorizes); the
// exact position is searched only in a failing row.
int64_t first_bad_code(const int32_t* col, const int32_t* row_ptr, int64_t rows, int64_t codes) {
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t k0 = row_ptr[r], k1 = row_ptr[r + 1];
    if (k1 == k0) continue;
    int32_t fails = col[k0] < 0 || col[k1 - 1] >= codes;
    for (int32_t k = k0 + 1; k < k1; ++k) fails |= col[k] <= col[k - 1];
    if (!fails) continue;
    for (int32_t k = k0; k < k1; ++k) {
      if (col[k] < 0 || col[k] >= codes || (k > k0 && col[k] <= col[k - 1])) return k;
    }
  }
  return -1;
}

// Whole groups of SIMD-lanes images of small planes run interleaved, the rest one image at
// a time.
template <typename S>
void sparse_conv2d_kernel(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                          const at::Tensor& row_ptr, const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& residual, bool relu, const SparseConvArgs& a,
                          at::Tensor& out) {
  constexpr int64_t L = Simd<S>::L;
  const SparseConvGeometry& g = a.g;
  const int32_t* col = col_index.const_data_ptr<int32_t>();
  const int32_t* rp = row_ptr.const_data_ptr<int32_t>();
  const int64_t bad_row = first_bad_row(rp, a.Cout, a.nnz);
  TORCH_CHECK(bad_row < 0, kOp, ": row_ptr is not a valid CSR row pointer at output channel ", bad_row,
              " (it must start at 0, never decrease and end at nnz = ", a.nnz, ")");
  const int64_t codes = a.Cin_g * g.KH * g.KW;
  const int64_t k = first_bad_code(col, rp, a.Cout, codes);
  if (k >= 0) {
    const int64_t row = std::upper_bound(rp, rp + a.Cout + 1, k) - rp - 1;
    TORCH_CHECK(col[k] >= 0 && col[k] < codes, kOp, ": col_index[", k, "] = ", col[k],
                " is out of range for weight_shape [", a.Cout, ", ", a.Cin_g, ", ", g.KH, ", ", g.KW, "] (allowed 0..",
                codes - 1, ")");
    TORCH_CHECK(false, kOp, ": col_index must increase strictly within each row (canonical CSR, as ",
                "pack_weight makes it); col_index[", k, "] = ", col[k], " follows ", k > rp[row] ? col[k - 1] : 0);
  }
  TORCH_CHECK(g.ny * g.nx <= kMaxPhasePlanes, kOp, ": at most ", kMaxPhasePlanes, " stride phases, got ", g.ny * g.nx);
  for (int64_t G : {int64_t(1), L}) {
    TORCH_CHECK(fits_int32_offsets(a, G), kOp, ": input too large for 32-bit offsets (", a.Cin_g,
                " channels per group of ", g.channel_stride * G, " elements)");
  }
  const S* xp = x.const_data_ptr<S>();
  const S* vp = values.const_data_ptr<S>();
  const S* bp = bias.has_value() ? bias->const_data_ptr<S>() : nullptr;
  S* op_out = out.mutable_data_ptr<S>();
  const Epilogue<S> epilogue{residual.has_value() ? residual->const_data_ptr<S>() : nullptr, relu};

  // Small images leave lanes idle; interleaved, a tile spans the batch instead. Large
  // images keep their own planes: a tile's band over a whole group would not fit L1.
  const bool interleave = g.OH * g.Wq <= kMaxInterleavedPixels;
  const int64_t grouped = interleave && a.N >= L ? a.N / L * L : 0;
  if (grouped > 0) run_conv<S>(a, L, xp, vp, col, rp, bp, op_out, epilogue, grouped);
  if (a.N > grouped || a.N == 0) {
    const int64_t done = grouped * a.Cout * g.OH * g.OW;
    run_conv<S>(a, 1, xp + grouped * a.Cin * g.H * g.W, vp, col, rp, bp, op_out + done, epilogue.at(done),
                a.N - grouped);
  }
}

}  // namespace
}  // namespace cpu

at::Tensor sparse_conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                             const at::Tensor& row_ptr, at::IntArrayRef weight_shape,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups, const std::optional<at::Tensor>& residual,
                             bool relu) {
  const SparseConvArgs a = check_sparse_conv2d(x, values, col_index, row_ptr, weight_shape, bias, stride, padding,
                                               dilation, groups, residual, c10::DeviceType::CPU);
  const ContiguousInputs in = contiguous_inputs(x, values, col_index, row_ptr, bias, residual);
  at::Tensor out = at::empty({a.N, a.Cout, a.g.OH, a.g.OW}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparse_conv2d_cpu", [&] {
    cpu::sparse_conv2d_kernel<scalar_t>(in.x, in.values, in.col_index, in.row_ptr, in.bias, in.residual, relu, a, out);
  });
  return out;
}

TORCH_LIBRARY_IMPL(lostprune, CPU, m) { m.impl("sparse_conv2d", &sparse_conv2d_cpu); }

}  // namespace lostprune
