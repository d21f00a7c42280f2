// The tile loop of the CPU sparse convolution (no torch: the drivers in sparse_conv_cpu.cpp
// add threads and argument checks). See sparse_conv_cpu.cpp for the scheme.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "sparse_conv.h"
#include "sparse_conv_scratch.h"
#include "sparse_conv_simd.h"

namespace lostprune {
namespace cpu {

// The layout's tunables (measured on the machines of benchmarks/results/sparse.md).
//
// A band chunk trades two costs: each (output channel, chunk) pays a fixed overhead (its
// partial tile loaded and stored, a loop entry and exit), each nonzero pays its loads, more
// when the band outgrows L1. Per-layer sweeps (3x3 and 1x1 ResNet layers, 5-50 % dense,
// budgets 24-192 KB, AVX-512) put the best budget near band_bytes_x_density / density:
// about the same nonzeros per chunk run whatever the density. Layers whose partial tiles
// (output channels x row) outgrow band_partials_bytes pay more per run and want longer
// runs: the constant grows with the square root of the excess.
struct Tuning {
  int64_t band_bytes_x_density = 7 << 10;  // the budget times the weight density
  int64_t band_partials_bytes = 64 << 10;
  int64_t min_band_bytes = 32 << 10;     // about L1
  int64_t max_band_bytes = 192 << 10;    // a fifth of a 1 MB L2, beside planes and partials
  int64_t direct_band_bytes = 32 << 10;  // what one direct tile reads of a chunk
  double min_band_reuse = 4.0;           // output channels per band row that repay its gather
  int64_t min_chunk_nonzeros = 24;       // direct: per output channel, pays for reloading its tile
};

constexpr int64_t kPrefetchChannels = 4;  // chunk passes fetch the nonzeros of this many channels ahead

// Whether offsets within one group's planes (G images interleaved) fit in int32.
inline bool fits_int32_offsets(const SparseConvArgs& a, int64_t G) {
  return (a.Cin_g * a.g.channel_stride + a.g.max_dx + 64) * G < (int64_t(1) << 31);
}

// Bytes of band one chunk may hold (Tuning) for weights of this density whose partial
// tiles take partials_bytes.
inline int64_t band_budget(const Tuning& tune, double density, int64_t partials_bytes) {
  const double excess = std::max(1.0, double(partials_bytes) / double(tune.band_partials_bytes));
  const double budget = double(tune.band_bytes_x_density) * std::sqrt(excess) / std::max(density, 1e-9);
  return std::llround(std::clamp(budget, double(tune.min_band_bytes), double(tune.max_band_bytes)));
}

// How one call cuts its work (the same for every thread).
struct Layout {
  int64_t G = 1;  // images interleaved per pixel
  bool band = false;
  int64_t pixels = 0;        // per image: OH * OW (band) or OH * Wq (direct), times G
  int64_t tile_vectors = 0;  // vectors per full tile
  int64_t tiles = 0;
  int64_t chunk_codes = 0;            // tap codes per chunk
  int64_t chunks = 0;                 // per group
  int64_t codes = 0;                  // per group: Cin_g * KH * KW
  const int32_t* tap_off = nullptr;   // per tap: offset in a channel's planes (times G)
  const int32_t* code_off = nullptr;  // direct: per code, offset in the group's planes
};

// Where a direct tile's pixels start: p0 (elements, G images interleaved) as output row oh and
// column ow of the Wq-wide numbering. Computed once per tile, not per output channel (two
// 64-bit divisions showed in the stem's profile).
struct DirectTileStart {
  int64_t oh, ow;
};

inline DirectTileStart direct_tile_start(int64_t p0, int64_t G, const SparseConvGeometry& g) {
  const int64_t q = p0 / G;
  return {q / g.Wq, q % g.Wq};
}

// Outputs n elements of a direct tile starting at `start` through the epilogue into channel
// plane out [OH, OW]; image j of a group at out + j * image_stride, `e` positioned like out.
template <typename S>
void store_direct_tile(const S* tile, DirectTileStart start, int64_t n, int64_t G, const SparseConvGeometry& g, S* out,
                       int64_t image_stride, const Epilogue<S>& e) {
  int64_t oh = start.oh, ow = start.ow;
  int64_t i = 0;
  const int64_t pixels = n / G;
  while (i < pixels && oh < g.OH) {
    const int64_t run = std::min(g.OW - ow, pixels - i);
    if (run > 0) {
      S* dst = out + oh * g.OW + ow;
      for (int64_t j = 0; j < G; ++j) {
        store_run(dst + j * image_stride, tile + i * G + j, G, run, e.at(oh * g.OW + ow + j * image_stride));
      }
    }
    i += g.Wq - ow;
    ++oh;
    ow = 0;
  }
}

// One chunk of one tile for output channels [co_begin, co_end) of a group: band rows at
// base + code * row_stride, or direct offsets base + table[code]. bounds[c * channels + i]
// is where channel co_begin + i's nonzeros of chunk c start (`first` of the thread's
// channels); while kScan, the kernel finds bounds[(c + 1) * channels + i] itself.
template <typename S>
struct ChunkPass {
  const S* base;
  int64_t row_stride;
  const int32_t* table;  // nullptr: band rows
  int32_t code_end;      // the chunk's end
  int64_t c;             // chunk index
  bool first_chunk, last_chunk;
  int64_t channels;  // the thread's channels (bounds row length)
  int64_t first;     // the thread's first channel
  S* partial;        // per channel of the thread, when chunks > 1
  S* tile_out;
  // last chunk: the tile's pixels [p0, p0 + n) go through the epilogue into out
  int64_t p0, n;
};

template <typename S, int T, bool kScan>
void chunk_pass(const ChunkPass<S>& cp, const SparseConvArgs& a, const Layout& lay, const int32_t* col,
                const int32_t* rp, const S* values, const S* bias, int64_t co_begin, int64_t co_end, int32_t* bounds,
                S* out, int64_t out_image, const Epilogue<S>& epilogue) {
  const int64_t out_plane = a.g.OH * a.g.OW;
  // Locals: stores to the tiles and bounds could otherwise alias the pass's fields.
  const S* const base = cp.base;
  const int64_t row_stride = cp.row_stride;
  const int32_t* const table = cp.table;
  const int32_t code_end = cp.code_end;
  const bool first_chunk = cp.first_chunk, last_chunk = cp.last_chunk;
  S* const partial = cp.partial;
  S* const tile_out = cp.tile_out;
  const int32_t* b_now = bounds + cp.c * cp.channels - cp.first;
  int32_t* b_next = bounds + (cp.c + 1) * cp.channels - cp.first;
  int32_t* b_first = bounds - cp.first;
  const DirectTileStart start = lay.band ? DirectTileStart{0, 0} : direct_tile_start(cp.p0, lay.G, a.g);
  for (int64_t co = co_begin; co < co_end; ++co) {
    // Each channel's nonzeros of this chunk start a new stretch of col / values (rows of
    // the CSR are far apart): fetch a few channels ahead.
    if (co + kPrefetchChannels < co_end) {
      const int64_t ahead = kScan && first_chunk ? rp[co + kPrefetchChannels] : b_now[co + kPrefetchChannels];
      __builtin_prefetch(col + ahead);
      __builtin_prefetch(values + ahead);
    }
    S* part = partial != nullptr ? partial + (co - cp.first) * row_stride : tile_out;
    const TileAcc<S> io{first_chunk ? nullptr : part, bias != nullptr ? bias[co] : S(0), last_chunk ? tile_out : part};
    const int64_t k0 = kScan && first_chunk ? rp[co] : b_now[co];
    const int64_t k1 = kScan ? rp[co + 1] : b_next[co];
    const int64_t stop =
        table != nullptr
            ? tile_kernel<S, T, kScan, true>(base, 0, table, col, values, k0, k1, code_end, io)
            : tile_kernel<S, T, kScan, false>(base, row_stride, nullptr, col, values, k0, k1, code_end, io);
    if (kScan) {
      if (first_chunk) b_first[co] = static_cast<int32_t>(k0);
      b_next[co] = static_cast<int32_t>(stop);
    }
    if (!last_chunk) continue;
    S* dst = out + co * out_plane;
    const Epilogue<S> e = epilogue.at(co * out_plane);
    if (lay.band) {
      store_run(dst + cp.p0, tile_out, 1, cp.n, e.at(cp.p0));
    } else {
      store_direct_tile(tile_out, start, cp.n, lay.G, a.g, dst, out_image, e);
    }
  }
}

template <typename S, bool kScan>
void dispatch_chunk_pass(int vectors, const ChunkPass<S>& cp, const SparseConvArgs& a, const Layout& lay,
                         const int32_t* col, const int32_t* rp, const S* values, const S* bias, int64_t co_begin,
                         int64_t co_end, int32_t* bounds, S* out, int64_t out_image, const Epilogue<S>& epilogue) {
  static_assert(kTileVectors == 8, "extend the switch with kTileVectors");
  // clang-format off
  switch (vectors) {
#define LP_TILE_CASE(T)                                                                                       \
  case T:                                                                                                     \
    return chunk_pass<S, T, kScan>(cp, a, lay, col, rp, values, bias, co_begin, co_end, bounds, out, out_image, \
                                   epilogue);
    LP_TILE_CASE(1) LP_TILE_CASE(2) LP_TILE_CASE(3) LP_TILE_CASE(4)
    LP_TILE_CASE(5) LP_TILE_CASE(6) LP_TILE_CASE(7)
#undef LP_TILE_CASE
    default:
      return chunk_pass<S, 8, kScan>(cp, a, lay, col, rp, values, bias, co_begin, co_end, bounds, out, out_image,
                                     epilogue);
  }
  // clang-format on
}

// Output channels [co_begin, co_end), tiles [tile_begin, tile_end), of one image or
// interleaved group (image j's output at out + j * out_image). `bounds` ((chunks + 1) x channels) holds the thread's
// (channel, chunk) ranges, found by the first tile while `scanned` is false.
template <typename S>
void conv_tiles(const S* planes, const Layout& lay, const SparseConvArgs& a, const int32_t* col, const int32_t* rp,
                const S* values, const S* bias, int64_t co_begin, int64_t co_end, S* out, int64_t out_image,
                const Epilogue<S>& epilogue, int32_t* bounds, bool& scanned, int64_t tile_begin, int64_t tile_end) {
  constexpr int L = Simd<S>::L;
  const SparseConvGeometry& g = a.g;
  const int64_t row_stride = lay.tile_vectors * L;
  const int64_t group_stride = a.Cin_g * g.channel_stride * lay.G;
  const int64_t taps = g.KH * g.KW;
  const int64_t channels = co_end - co_begin;
  S* partial = lay.chunks > 1 ? scratch<S>(kPartialTiles, channels * row_stride) : nullptr;
  S* tile_out = scratch<S>(kTileOut, row_stride);
  S* band = lay.band ? scratch<S>(kBand, lay.chunk_codes * row_stride) : nullptr;
  const int64_t group_first = co_begin / a.Cout_g, group_last = (co_end - 1) / a.Cout_g;
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t p0 = t * row_stride;
    const int64_t n = std::min(row_stride, lay.pixels - p0);
    const int vectors = static_cast<int>((n + L - 1) / L);
    BandGather<S> gather;
    if (lay.band) gather = band_gather<S>(g, p0, n);
    for (int64_t gi = group_first; gi <= group_last; ++gi) {
      const S* gplanes = planes + gi * group_stride;
      const int64_t cg_begin = std::max(co_begin, gi * a.Cout_g), cg_end = std::min(co_end, (gi + 1) * a.Cout_g);
      for (int64_t c = 0; c < lay.chunks; ++c) {
        const int64_t code0 = c * lay.chunk_codes, code1 = std::min(lay.codes, code0 + lay.chunk_codes);
        if (lay.band) {
          int64_t ci = code0 / taps, tap = code0 - ci * taps;
          for (int64_t code = code0; code < code1; ++code) {
            gather_band_row(band + (code - code0) * row_stride, gplanes + ci * g.channel_stride + lay.tap_off[tap],
                            gather);
            if (++tap == taps) {
              tap = 0;
              ++ci;
            }
          }
        }
        // clang-format off
        const ChunkPass<S> cp{lay.band ? band - code0 * row_stride : gplanes + p0, row_stride,
                              lay.band ? nullptr : lay.code_off, static_cast<int32_t>(code1), c, c == 0,
                              c + 1 == lay.chunks, channels, co_begin, partial, tile_out, p0, n};
        // clang-format on
        if (scanned) {
          dispatch_chunk_pass<S, false>(vectors, cp, a, lay, col, rp, values, bias, cg_begin, cg_end, bounds, out,
                                        out_image, epilogue);
        } else {
          dispatch_chunk_pass<S, true>(vectors, cp, a, lay, col, rp, values, bias, cg_begin, cg_end, bounds, out,
                                       out_image, epilogue);
        }
      }
    }
    scanned = true;
  }
}

// The layout of a call over images laid out G at a time, and its per-tap / per-code
// offset tables (in the calling thread's scratch). The caller checks that offsets within a
// group's planes fit in int32 (fits_int32_offsets).
template <typename S>
Layout make_layout(const SparseConvArgs& a, int64_t G, const Tuning& tune = Tuning{}) {
  constexpr int64_t L = Simd<S>::L;
  const SparseConvGeometry& g = a.g;
  Layout lay;
  lay.G = G;
  const int64_t taps = g.KH * g.KW;
  lay.codes = a.Cin_g * taps;
  // Output channels that read one band row, on average.
  const double reuse = double(a.nnz) / double(std::max<int64_t>(1, a.groups * lay.codes));
  lay.band = G == 1 && reuse >= tune.min_band_reuse;
  lay.pixels = (lay.band ? g.OH * g.OW : g.OH * g.Wq) * G;
  const int64_t vectors = (lay.pixels + L - 1) / L;
  lay.tiles = std::max<int64_t>(1, (vectors + kTileVectors - 1) / kTileVectors);
  lay.tile_vectors = lay.band ? (vectors + lay.tiles - 1) / lay.tiles : kTileVectors;  // band: balanced
  int32_t* tap_off = scratch<int32_t>(kPlanTable, taps + (lay.band ? 0 : lay.codes));
  for (int64_t kh = 0; kh < g.KH; ++kh) {
    for (int64_t kw = 0; kw < g.KW; ++kw) tap_off[kh * g.KW + kw] = static_cast<int32_t>(tap_offset(g, kh, kw) * G);
  }
  lay.tap_off = tap_off;
  if (lay.band) {
    const int64_t row_bytes = lay.tile_vectors * L * static_cast<int64_t>(sizeof(S));
    const int64_t budget =
        band_budget(tune, double(a.nnz) / double(std::max<int64_t>(1, a.Cout * lay.codes)), a.Cout * row_bytes);
    const int64_t per_chunk = std::max<int64_t>(1, budget / row_bytes);
    lay.chunks = (lay.codes + per_chunk - 1) / per_chunk;
    lay.chunk_codes = (lay.codes + lay.chunks - 1) / lay.chunks;  // balanced
    return lay;
  }
  // Direct: chunks of whole input channels whose band (what a tile reads of each of their
  // planes) stays within kDirectBandBytes, with enough nonzeros per output channel to pay
  // for reloading its partial tile.
  const int64_t tile_pixels = kTileVectors * L / G;
  const int64_t span = std::min(g.plane, tile_pixels + (g.Hq - g.OH) * g.Wq + g.max_dx);
  const int64_t band = std::max<int64_t>(1, g.ny * g.nx * span * static_cast<int64_t>(sizeof(S)) * G);
  const int64_t per_chunk = std::max<int64_t>(1, tune.direct_band_bytes / band);
  const int64_t max_chunks = std::max<int64_t>(1, a.nnz / (a.Cout * tune.min_chunk_nonzeros));
  lay.chunks = std::min((a.Cin_g + per_chunk - 1) / per_chunk, max_chunks);
  lay.chunk_codes = (a.Cin_g + lay.chunks - 1) / lay.chunks * taps;
  lay.chunks = (lay.codes + lay.chunk_codes - 1) / lay.chunk_codes;
  int32_t* code_off = tap_off + taps;
  for (int64_t code = 0; code < lay.codes; ++code) {
    code_off[code] = static_cast<int32_t>((code / taps) * g.channel_stride * G + tap_off[code % taps]);
  }
  lay.code_off = code_off;
  return lay;
}

}  // namespace cpu
}  // namespace lostprune
