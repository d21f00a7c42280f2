// Live rows and columns of a tensor viewed as [d0, d1, inner] (a conv or linear weight, a
// mask): row r (column c) is live when one of its elements is nonzero. The arithmetic shared
// by the CPU kernel, the CUDA kernel and the C++ unit tests. Elements are read as unsigned
// words of their size, so one test serves every dtype (complex tensors come as their real view).
#pragma once

#include "../common/macros.h"

namespace lostprune {

// The bits of an element that decide "nonzero": all of them for integers and bool; all but
// the sign bit for floating point, where -0.0 == 0 and NaN and the infinities are nonzero.
template <typename Word>
LP_HD Word nonzero_bits(bool floating) {
  const Word all = static_cast<Word>(~static_cast<Word>(0));
  return floating ? static_cast<Word>(all >> 1) : all;
}

template <typename Word>
LP_HD bool is_nonzero_word(Word w, Word bits) {
  return (w & bits) != 0;
}

// Whether any of the n words from p is nonzero (one OR over the block, no branch per element).
template <typename Word>
LP_HD bool block_has_nonzero(const Word* p, int64_t n, Word bits) {
  Word any = 0;
  for (int64_t i = 0; i < n; ++i) any |= static_cast<Word>(p[i] & bits);
  return any != 0;
}

// Row and column of element i of the [d0, d1, inner] view (d1 * inner > 0).
LP_HD int64_t nonzero_row_of(int64_t i, int64_t d1, int64_t inner) { return i / (d1 * inner); }
LP_HD int64_t nonzero_col_of(int64_t i, int64_t d1, int64_t inner) { return (i / inner) % d1; }

// Rows [r_begin, r_end) of x (rows of row_size words): rows[r] = 1 where row r holds a
// nonzero, else 0; acc (row_size words) OR-ed with every row's deciding bits, so column c is
// live where its block acc[c * inner, (c + 1) * inner) is nonzero (nonzero_columns). One
// streaming pass without branches: it vectorizes, and reads each element once.
template <typename Word>
LP_HD void nonzero_scan_rows(const Word* x, int64_t r_begin, int64_t r_end, int64_t row_size, Word bits,
                             unsigned char* rows, Word* acc) {
  for (int64_t r = r_begin; r < r_end; ++r) {
    const Word* row = x + r * row_size;
    Word any = 0;
    for (int64_t j = 0; j < row_size; ++j) {
      const Word v = static_cast<Word>(row[j] & bits);
      acc[j] = static_cast<Word>(acc[j] | v);
      any = static_cast<Word>(any | v);
    }
    rows[r] = any != 0 ? 1 : 0;
  }
}

// cols[c] = 1 where block c of acc (d1 blocks of inner words, from nonzero_scan_rows) is nonzero.
template <typename Word>
LP_HD void nonzero_columns(const Word* acc, int64_t d1, int64_t inner, unsigned char* cols) {
  for (int64_t c = 0; c < d1; ++c)
    cols[c] = block_has_nonzero(acc + c * inner, inner, static_cast<Word>(~Word(0))) ? 1 : 0;
}

}  // namespace lostprune
