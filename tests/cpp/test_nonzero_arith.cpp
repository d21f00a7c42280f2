// Unit tests of csrc/nonzero/nonzero.h: the word-level nonzero test and the row scan shared
// by the CPU and CUDA nonzero_rows_cols kernels.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../../csrc/nonzero/nonzero.h"
#include "check.h"

using lostprune::is_nonzero_word;
using lostprune::nonzero_bits;

static uint32_t bits_of(float f) {
  uint32_t w;
  std::memcpy(&w, &f, sizeof w);
  return w;
}

static uint64_t bits_of(double d) {
  uint64_t w;
  std::memcpy(&w, &d, sizeof w);
  return w;
}

int main() {
  // Floating point: the sign bit alone does not count (-0.0 == 0); NaN, infinities and the
  // smallest subnormal do.
  const uint32_t f = nonzero_bits<uint32_t>(true);
  LP_CHECK(f == 0x7fffffffu);
  LP_CHECK(!is_nonzero_word(bits_of(0.0f), f) && !is_nonzero_word(bits_of(-0.0f), f));
  LP_CHECK(is_nonzero_word(bits_of(std::numeric_limits<float>::quiet_NaN()), f));
  LP_CHECK(is_nonzero_word(bits_of(-std::numeric_limits<float>::infinity()), f));
  LP_CHECK(is_nonzero_word(bits_of(std::numeric_limits<float>::denorm_min()), f));
  LP_CHECK(is_nonzero_word(bits_of(-1.0f), f));
  const uint64_t d = nonzero_bits<uint64_t>(true);
  LP_CHECK(!is_nonzero_word(bits_of(-0.0), d) &&
           is_nonzero_word(bits_of(-std::numeric_limits<double>::denorm_min()), d));
  LP_CHECK(nonzero_bits<uint16_t>(true) == 0x7fff && nonzero_bits<uint8_t>(true) == 0x7f);
  // Integers and bool: every bit counts (int8 -128 is 0x80, the "sign" bit alone).
  LP_CHECK(nonzero_bits<uint8_t>(false) == 0xff && is_nonzero_word<uint8_t>(0x80, nonzero_bits<uint8_t>(false)));
  LP_CHECK(nonzero_bits<uint64_t>(false) == ~uint64_t(0));

  // Element -> (row, column) of a [d0, d1, inner] view.
  LP_CHECK(lostprune::nonzero_row_of(0, 3, 2) == 0 && lostprune::nonzero_col_of(0, 3, 2) == 0);
  LP_CHECK(lostprune::nonzero_row_of(17, 3, 2) == 2 && lostprune::nonzero_col_of(17, 3, 2) == 2);
  LP_CHECK(lostprune::nonzero_row_of(7, 3, 2) == 1 && lostprune::nonzero_col_of(7, 3, 2) == 0);

  // A [4, 3, 2] float tensor: row 1 all zero (with a -0.0), column 1 live only in the last row
  // (after every row is known live), column 2 live only through a NaN.
  std::vector<float> x(24, 0.0f);
  x[0] = 1.0f;                                                 // row 0, column 0
  x[1 * 6 + 1 * 2 + 1] = -0.0f;                                // row 1, column 1: not a nonzero
  x[2 * 6 + 0 * 2 + 1] = -2.0f;                                // row 2, column 0
  x[3 * 6 + 1 * 2 + 1] = 3.0f;                                 // row 3, column 1
  x[2 * 6 + 2 * 2] = std::numeric_limits<float>::quiet_NaN();  // row 2, column 2
  std::vector<uint32_t> words(24);
  std::memcpy(words.data(), x.data(), sizeof(float) * 24);
  unsigned char rows[4] = {9, 9, 9, 9}, cols[3] = {9, 9, 9};
  std::vector<uint32_t> acc(6, 0);
  lostprune::nonzero_scan_rows(words.data(), 0, 4, 6, f, rows, acc.data());
  lostprune::nonzero_columns(acc.data(), 3, 2, cols);
  LP_CHECK(rows[0] == 1 && rows[1] == 0 && rows[2] == 1 && rows[3] == 1);
  LP_CHECK(cols[0] == 1 && cols[1] == 1 && cols[2] == 1);
  LP_CHECK(acc[2] == 0 && acc[3] != 0);  // column 1: the -0.0's sign bit left out, row 3's 3.0 in
  // Two chunks of rows with accumulators of their own, OR-ed: the same answer; the first chunk
  // alone saw column 0 only.
  unsigned char rows2[4], first_cols[3];
  std::vector<uint32_t> first(6, 0), second(6, 0);
  lostprune::nonzero_scan_rows(words.data(), 0, 2, 6, f, rows2, first.data());
  lostprune::nonzero_scan_rows(words.data(), 2, 4, 6, f, rows2, second.data());
  for (int r = 0; r < 4; ++r) LP_CHECK(rows2[r] == rows[r]);
  lostprune::nonzero_columns(first.data(), 3, 2, first_cols);
  LP_CHECK(first_cols[0] == 1 && first_cols[1] == 0 && first_cols[2] == 0);
  for (int j = 0; j < 6; ++j) LP_CHECK((first[j] | second[j]) == acc[j]);
  // An all-zero tensor: nothing live.
  std::vector<uint32_t> zeros(24, 0x80000000u), acc0(6, 0);  // every element -0.0
  unsigned char rows0[4], cols0[3];
  lostprune::nonzero_scan_rows(zeros.data(), 0, 4, 6, f, rows0, acc0.data());
  lostprune::nonzero_columns(acc0.data(), 3, 2, cols0);
  for (int r = 0; r < 4; ++r) LP_CHECK(rows0[r] == 0);
  for (int c = 0; c < 3; ++c) LP_CHECK(cols0[c] == 0);
  LP_TEST_MAIN_END();
}
