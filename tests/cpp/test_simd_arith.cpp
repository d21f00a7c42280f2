// Unit tests of csrc/common/simd.h: the transposing reduction gives every item's exact sum and
// max, for every group size and both element types, at the vector width this file is compiled
// for (tests/test_simd.py compiles it for SSE2, AVX2 and AVX-512).
#include <cstdio>
#include <cstring>

#include "../../csrc/common/simd.h"
#include "check.h"

using namespace lostprune;

template <typename T, int G>
void check_group() {
  constexpr int L = simd::kLanes<T>;
  simd::Vec<T> v[G];
  T sum[G] = {}, best[G] = {};
  for (int g = 0; g < G; ++g) {
    for (int i = 0; i < L; ++i) {
      // small integers: every order of summation is exact
      const T x = T((g * 37 + i * 11) % 23 + 1);
      v[g][i] = x;
      sum[g] += x;
      best[g] = x > best[g] ? x : best[g];
    }
  }
  simd::Vec<T> w[G];
  for (int g = 0; g < G; ++g) w[g] = v[g];
  const simd::Vec<T> total = simd::transpose_reduce<T, G>(v, [](auto a, auto b) { return a + b; });
  const simd::Vec<T> top = simd::transpose_reduce<T, G>(w, [](auto a, auto b) { return a > b ? a : b; });
  for (int i = 0; i < L; ++i) {
    LP_CHECK(total[i] == sum[i % G]);
    LP_CHECK(top[i] == best[i % G]);
  }
  constexpr auto map = simd::fold_lanes<L, G, sizeof(T)>();
  for (int g = 0; g < G; ++g) LP_CHECK(map.lane[g] >= 0 && map.lane[g] < L);
  T out[L] = {};
  simd::store_narrow<T, G>(out, simd::first_lanes<T, G>(total));
  for (int i = 0; i < L; ++i) LP_CHECK(out[i] == (i < G ? sum[i] : T(0)));
  const simd::NarrowVec<T, G> back = simd::load_narrow<T, G>(out);
  LP_CHECK(std::memcmp(&back, out, G * sizeof(T)) == 0);
}

template <typename T>
void check_all() {
  constexpr int L = simd::kLanes<T>;
  check_group<T, 1>();
  check_group<T, 2>();
  if constexpr (L >= 4) check_group<T, 4>();
  if constexpr (L >= 8) check_group<T, 8>();
  if constexpr (L >= 16) check_group<T, 16>();
}

int main() {
  std::printf("vector ISA %s, %d bytes, %d registers\n", simd::kIsa, simd::kVectorBytes, simd::kRegisters);
  LP_CHECK(simd::kLanes<float> * 4 == simd::kVectorBytes && simd::kLanes<double> * 8 == simd::kVectorBytes);
  check_all<float>();
  check_all<double>();
  // unaligned load / store round trip
  float buf[80];
  for (int i = 0; i < 80; ++i) buf[i] = float(i);
  const simd::Vec<float> x = simd::load(buf + 3);
  simd::store(buf + 40, x);
  for (int i = 0; i < simd::kLanes<float>; ++i) LP_CHECK(buf[40 + i] == float(3 + i));
  LP_TEST_MAIN_END();
}
