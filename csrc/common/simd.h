// Native SIMD vectors for the CPU kernels: GCC/Clang vector extensions sized to the widest
// registers the build targets (-march): 64 bytes with AVX-512, 32 with AVX2, 16 otherwise
// (SSE, NEON). One template serves every width: micro-kernels size their register blocks
// from kLanes and kRegisters, so an AVX2 build never spills 64-byte vectors. No torch.
#pragma once

#include <cstdint>
#include <cstring>
#include <utility>

namespace lostprune::simd {

#if defined(__AVX512F__)
inline constexpr int kVectorBytes = 64;
inline constexpr const char* kIsa = "AVX-512";
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr int kVectorBytes = 32;
inline constexpr const char* kIsa = "AVX2";
#elif defined(__AVX__)
inline constexpr int kVectorBytes = 32;
inline constexpr const char* kIsa = "AVX";
#elif defined(__ARM_NEON)
inline constexpr int kVectorBytes = 16;
inline constexpr const char* kIsa = "NEON";
#else
inline constexpr int kVectorBytes = 16;
inline constexpr const char* kIsa = "SSE2";
#endif

// Architectural vector registers: 32 with AVX-512 and on AArch64, 16 with AVX/SSE.
#if defined(__AVX512F__) || defined(__aarch64__)
inline constexpr int kRegisters = 32;
#else
inline constexpr int kRegisters = 16;
#endif

template <typename T>
struct Native {
  static constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(T));
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
};

template <typename T>
using Vec = typename Native<T>::Vec;

template <typename T>
inline constexpr int kLanes = Native<T>::kLanes;

template <typename T>
inline Vec<T> load(const T* p) {  // unaligned
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
inline void store(T* p, Vec<T> v) {  // unaligned
  std::memcpy(p, &v, sizeof v);
}

#define LP_SIMD_INLINE inline __attribute__((always_inline))

// ---------------------------------------------------------------------------------------
// Transposing reduction: G vectors (one per item) -> one vector whose lane g holds item g's
// reduction over its lanes, without a horizontal reduction per item. Each level folds pairs
// of vectors: every segment of 2h lanes is split into its low and high h lanes, and lo + hi
// keeps the halves of both inputs (h = L/2, L/4, ..., 1; once one vector is left it folds
// with itself). Across 128-bit lanes the result takes a's blocks then b's (vshuff32x4,
// vperm2f128); within them blocks alternate a, b (vshufps, vunpcklps): one instruction per
// shuffle. After log2(L) levels each item's total sits in one lane; a last permute puts
// item g in lane g.

// Source lane (0..2L-1 over the pair a, b) of result lane i at half-width h; `bytes`: element size.
constexpr int fold_source(int i, int h, int lanes, int bytes, bool high) {
  if (h * bytes >= 16) {  // whole 128-bit lanes: a's blocks, then b's
    const int half = lanes / 2, from_b = i / half, j = i % half;
    return from_b * lanes + (j / h) * 2 * h + j % h + (high ? h : 0);
  }
  const int block = i / h, offset = i % h;  // within 128-bit lanes: alternate a, b
  return (block % 2 == 0 ? 0 : lanes) + (block / 2) * 2 * h + offset + (high ? h : 0);
}

template <int H, typename T, typename Op, int... I>
LP_SIMD_INLINE Vec<T> fold_pair(Vec<T> a, Vec<T> b, Op op, std::integer_sequence<int, I...>) {
  constexpr int L = sizeof...(I), B = sizeof(T);
  const Vec<T> lo = __builtin_shufflevector(a, b, fold_source(I, H, L, B, false)...);
  const Vec<T> hi = __builtin_shufflevector(a, b, fold_source(I, H, L, B, true)...);
  return op(lo, hi);
}

template <typename T, int H, int N, typename Op>
LP_SIMD_INLINE void fold_levels(Vec<T> (&v)[N], Op op) {
  if constexpr (H >= 1) {
    constexpr int M = N > 1 ? N / 2 : 1;
    Vec<T> next[M];
    for (int m = 0; m < M; ++m) {
      next[m] =
          fold_pair<H, T>(v[2 * m], v[N > 1 ? 2 * m + 1 : 2 * m], op, std::make_integer_sequence<int, kLanes<T>>{});
    }
    for (int m = 0; m < M; ++m) v[m] = next[m];
    fold_levels<T, H / 2, N>(v, op);  // the first M entries are live
  }
}

// lane[g]: the lane of the folded vector that holds item g's total (G <= L, powers of two).
template <int L, int G>
struct FoldLanes {
  int lane[G];
};

template <int L, int G, int Bytes>
constexpr FoldLanes<L, G> fold_lanes() {
  static_assert(G >= 1 && G <= L && (G & (G - 1)) == 0 && (L & (L - 1)) == 0, "G, L: powers of 2, G <= L");
  int owner[G][L] = {};
  for (int g = 0; g < G; ++g) {
    for (int i = 0; i < L; ++i) owner[g][i] = g;
  }
  int n = G;
  for (int h = L / 2; h >= 1; h /= 2) {
    const int m_count = n > 1 ? n / 2 : 1;
    int next[G][L] = {};
    for (int m = 0; m < m_count; ++m) {
      const int a = 2 * m, b = n > 1 ? 2 * m + 1 : 2 * m;
      for (int i = 0; i < L; ++i) {
        const int lo = fold_source(i, h, L, Bytes, false), hi = fold_source(i, h, L, Bytes, true);
        const int from_lo = lo < L ? owner[a][lo] : owner[b][lo - L];
        const int from_hi = hi < L ? owner[a][hi] : owner[b][hi - L];
        next[m][i] = from_lo == from_hi ? from_lo : -1;  // -1: a lane that mixes items
      }
    }
    for (int m = 0; m < m_count; ++m) {
      for (int i = 0; i < L; ++i) owner[m][i] = next[m][i];
    }
    n = m_count;
  }
  FoldLanes<L, G> out{};
  for (int g = 0; g < G; ++g) {
    out.lane[g] = -1;
    for (int i = L - 1; i >= 0; --i) {
      if (owner[0][i] == g) out.lane[g] = i;
    }
  }
  return out;
}

template <typename T, int G, int... I>
LP_SIMD_INLINE Vec<T> gather_items(Vec<T> v, std::integer_sequence<int, I...>) {
  constexpr FoldLanes<kLanes<T>, G> map = fold_lanes<kLanes<T>, G, sizeof(T)>();
  return __builtin_shufflevector(v, v, map.lane[I % G]...);
}

// Lane g of the result: the op-reduction over the lanes of v[g], g < G (lanes >= G repeat
// them). v is clobbered.
template <typename T, int G, typename Op>
LP_SIMD_INLINE Vec<T> transpose_reduce(Vec<T> (&v)[G], Op op) {
  fold_levels<T, kLanes<T> / 2, G>(v, op);
  return gather_items<T, G>(v[0], std::make_integer_sequence<int, kLanes<T>>{});
}

// G consecutive elements as one value: a vector of G (G >= 2) or the element itself.
template <typename T, int G>
struct Narrow {
  typedef T type __attribute__((vector_size(G * sizeof(T))));
};
template <typename T>
struct Narrow<T, 1> {
  using type = T;
};
template <typename T, int G>
using NarrowVec = typename Narrow<T, G>::type;

// The first G lanes of v (G <= L).
template <typename T, int G, int... I>
LP_SIMD_INLINE NarrowVec<T, G> first_lanes(Vec<T> v, std::integer_sequence<int, I...>) {
  if constexpr (G == 1) {
    return v[0];
  } else if constexpr (G == kLanes<T>) {
    return v;
  } else {
    return __builtin_shufflevector(v, v, I...);
  }
}

template <typename T, int G>
LP_SIMD_INLINE NarrowVec<T, G> first_lanes(Vec<T> v) {
  return first_lanes<T, G>(v, std::make_integer_sequence<int, G>{});
}

template <typename T, int G>
LP_SIMD_INLINE NarrowVec<T, G> load_narrow(const T* p) {  // unaligned
  NarrowVec<T, G> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T, int G>
LP_SIMD_INLINE void store_narrow(T* p, NarrowVec<T, G> v) {  // unaligned
  std::memcpy(p, &v, sizeof v);
}

// Lane i: element 2i of the 2 L values a then b (the even elements; pass the vectors one
// element on for the odd ones). One permute (vpermt2ps / vshufps + vpermpd).
template <typename T, int... I>
LP_SIMD_INLINE Vec<T> even_lanes(Vec<T> a, Vec<T> b, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(a, b, (2 * I)...);
}

template <typename T>
LP_SIMD_INLINE Vec<T> even_lanes(Vec<T> a, Vec<T> b) {
  return even_lanes<T>(a, b, std::make_integer_sequence<int, kLanes<T>>{});
}

}  // namespace lostprune::simd
