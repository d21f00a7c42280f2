// CPU masked sparse linear (docs/architecture.md, Kernels): one sparse dot product per output
// for a single row, several rows as a 1x1 convolution (sparse_conv_cpu.cpp), where every
// nonzero is one axpy over all rows.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <vector>

#include "sparse_conv_args.h"
#include "sparse_conv_cpu.h"

namespace lostprune {
namespace {

// Nonzeros x rows per thread below which a parallel region costs more than it saves.
constexpr int64_t kGrainNonzeros = 16384;

// sum_k values[k] * x[col[k]] over k in [k0, k1): one sparse dot product.
template <typename S>
S sparse_dot(const S* x, const S* values, const int32_t* col, int64_t k0, int64_t k1) {
  int64_t k = k0;
  S sum = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (; k + 32 <= k1; k += 32) {  // two gathers in flight
      const __m512i i0 = _mm512_loadu_si512(col + k), i1 = _mm512_loadu_si512(col + k + 16);
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + k), _mm512_i32gather_ps(i0, x, 4), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(values + k + 16), _mm512_i32gather_ps(i1, x, 4), acc1);
    }
    if (k + 16 <= k1) {
      const __m512i i0 = _mm512_loadu_si512(col + k);
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + k), _mm512_i32gather_ps(i0, x, 4), acc0);
      k += 16;
    }
    sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  }
#endif
  S s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (; k + 4 <= k1; k += 4) {
    s0 += values[k] * x[col[k]];
    s1 += values[k + 1] * x[col[k + 1]];
    s2 += values[k + 2] * x[col[k + 2]];
    s3 += values[k + 3] * x[col[k + 3]];
  }
  for (; k < k1; ++k) s0 += values[k] * x[col[k]];
  return sum + ((s0 + s1) + (s2 + s3));
}

// y[o] = bias[o] + x . row o, for a single row of x (vectorizing over rows would leave
// every SIMD lane but one idle).
template <typename S>
void sparse_linear_row(const S* x, const S* values, const int32_t* col, const int32_t* row_ptr, const S* bias,
                       const SparseLinearArgs& a, S* y) {
  const int64_t grain = std::max<int64_t>(1, kGrainNonzeros * a.out / std::max<int64_t>(1, a.nnz));
  at::parallel_for(0, a.out, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      y[o] = (bias != nullptr ? bias[o] : S(0)) + sparse_dot(x, values, col, row_ptr[o], row_ptr[o + 1]);
    }
  });
}

at::Tensor sparse_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_index,
                             const at::Tensor& row_ptr, at::IntArrayRef weight_shape,
                             const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "lostprune.sparse_linear";
  const SparseLinearArgs a =
      check_sparse_linear(x, values, col_index, row_ptr, weight_shape, bias, c10::DeviceType::CPU);
  const std::vector<int64_t> out_shape = sparse_linear_out_shape(x, a.out);
  const ContiguousInputs in = contiguous_inputs(x, values, col_index, row_ptr, bias);
  const int32_t* col = in.col_index.const_data_ptr<int32_t>();
  const int32_t* rp = in.row_ptr.const_data_ptr<int32_t>();
  const int64_t bad_row = first_bad_row(rp, a.out, a.nnz);
  TORCH_CHECK(bad_row < 0, op, ": row_ptr is not a valid CSR row pointer at output ", bad_row,
              " (it must start at 0, never decrease and end at nnz = ", a.nnz, ")");
  // As strict as the conv (canonical CSR, in range); a branch-free pass, messages on failure.
  int32_t fails = 0;
  for (int64_t o = 0; o < a.out; ++o) {
    const int32_t k0 = rp[o], k1 = rp[o + 1];
    fails |= k1 > k0 && (col[k0] < 0 || col[k1 - 1] >= a.in);
    for (int32_t k = k0 + 1; k < k1; ++k) fails |= col[k] <= col[k - 1];
  }
  for (int64_t o = 0; fails && o < a.out; ++o) {
    for (int32_t k = rp[o]; k < rp[o + 1]; ++k) {
      TORCH_CHECK(col[k] >= 0 && col[k] < a.in, op, ": col_index[", k, "] = ", col[k],
                  " is out of range for weight_shape [", a.out, ", ", a.in, "] (allowed 0..", a.in - 1, ")");
      TORCH_CHECK(k == rp[o] || col[k] > col[k - 1], op,
                  ": col_index must increase strictly within each row (canonical CSR, as ",
                  "pack_weight makes it); col_index[", k, "] = ", col[k], " follows ", col[k - 1]);
    }
  }
  if (a.M >= 2) {
    // Several rows: a 1x1 convolution over a 1 x M image whose channels are x's columns, so
    // every nonzero is one axpy over all rows (from two rows on that beats a dot per row).
    const at::Tensor image = in.x.reshape({a.M, a.in}).t().reshape({1, a.in, 1, a.M});
    const int64_t shape[] = {a.out, a.in, 1, 1};
    const int64_t ones[] = {1, 1}, zeros[] = {0, 0};
    const at::Tensor y = sparse_conv2d_cpu(image, in.values, in.col_index, in.row_ptr, shape, in.bias, ones, zeros,
                                           ones, 1, std::nullopt, false);
    return y.reshape({a.out, a.M}).t().contiguous().reshape(out_shape);
  }
  at::Tensor y = at::empty(out_shape, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparse_linear_cpu", [&] {
    sparse_linear_row<scalar_t>(in.x.const_data_ptr<scalar_t>(), in.values.const_data_ptr<scalar_t>(), col, rp,
                                static_cast<const scalar_t*>(in.bias_ptr()), a, y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CPU, m) { m.impl("sparse_linear", &sparse_linear_cpu); }

}  // namespace lostprune
