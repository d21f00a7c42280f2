// CPU nonzero_rows_cols: the rows split into one chunk per thread; each chunk streams its
// rows (nonzero_scan_rows) into an OR-accumulator of one row's size of its own; the
// accumulators are OR-ed at the end and read per column (nonzero_columns).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "nonzero.h"
#include "nonzero_prepare.h"

namespace lostprune {
namespace {

// Below this many elements per chunk a second thread costs more than it saves.
constexpr int64_t kMinChunkElements = 1 << 16;

template <typename Word>
void scan(const NonzeroProblem& p) {
  const Word* x = static_cast<const Word*>(p.x.const_data_ptr());
  const Word bits = nonzero_bits<Word>(p.floating);
  auto* rows = reinterpret_cast<unsigned char*>(p.rows.mutable_data_ptr<bool>());
  auto* cols = reinterpret_cast<unsigned char*>(p.cols.mutable_data_ptr<bool>());
  const int64_t row_size = p.d1 * p.inner;
  const int64_t by_size = std::max<int64_t>(1, p.d0 * row_size / kMinChunkElements);
  const int64_t chunks = std::min({static_cast<int64_t>(at::get_num_threads()), by_size, p.d0});
  std::vector<Word> acc(chunks * row_size, 0);
  if (chunks <= 1) {
    nonzero_scan_rows(x, 0, p.d0, row_size, bits, rows, acc.data());
  } else {
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        nonzero_scan_rows(x, p.d0 * k / chunks, p.d0 * (k + 1) / chunks, row_size, bits, rows,
                          acc.data() + k * row_size);
      }
    });
    for (int64_t k = 1; k < chunks; ++k) {
      const Word* other = acc.data() + k * row_size;
      for (int64_t j = 0; j < row_size; ++j) acc[j] = static_cast<Word>(acc[j] | other[j]);
    }
  }
  nonzero_columns(acc.data(), p.d1, p.inner, cols);
}

std::tuple<at::Tensor, at::Tensor> nonzero_rows_cols_cpu(const at::Tensor& t) {
  NonzeroProblem p = prepare_nonzero(t, c10::DeviceType::CPU);
  if (p.inner > 0) {
    switch (p.word_size) {
      case 1: scan<uint8_t>(p); break;
      case 2: scan<uint16_t>(p); break;
      case 4: scan<uint32_t>(p); break;
      default: scan<uint64_t>(p); break;  // 8: the largest size prepare_nonzero admits
    }
  }
  return {p.rows, p.cols};
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CPU, m) { m.impl("nonzero_rows_cols", &nonzero_rows_cols_cpu); }

}  // namespace lostprune
