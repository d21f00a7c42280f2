// CUDA sensitivity glue: checks, the sign split, z from cuDNN (one convolution with the
// positive and negative weight parts as 2 x Cout outputs, in IEEE float32: no TF32), V = 1/z
// with the eps rule, then the shared-memory reduction kernel, chunk by chunk of data points
// so memory stays bounded. The layer's output, when asked, is one more cuDNN convolution of x
// (in IEEE float32 like z): on the GPU that is faster than assembling it from z+ - z-.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/exact_fp32.h"
#include "sensitivity_cuda.h"
#include "sensitivity_prepare.h"

namespace lostprune {
namespace {

constexpr const char* kWeightOp = "lostprune.weight_sensitivity";
constexpr const char* kChannelOp = "lostprune.channel_sensitivity";

// acc [Cout, edges]: the max over data points of the reduction of A * V (before |w| * scale).
at::Tensor accumulate_cuda(const char* op, const SensitivityProblem& p, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation) {
  const SensGeometry& g = p.geo;
  const int64_t edges = edges_per_output(g);
  TORCH_CHECK(p.x.isfinite().all().item<bool>(), op, ": x (the layer input) contains NaN or inf");
  TORCH_CHECK(p.weight.isfinite().all().item<bool>(), op, ": weight contains NaN or inf");
  at::Tensor acc = at::zeros({g.out_channels, edges}, p.x.options());
  if (p.batch == 0) return acc;
  // Weights as 2 x Cout outputs ordered [group, sign, unit]: z+ and z- in one convolution.
  const int64_t cout_g = group_out_channels(g);
  const at::Tensor w = p.weight.view({g.groups, cout_g, -1});
  const at::Tensor split_weight = at::stack({at::clamp_min(w, 0), at::clamp_min(w.neg(), 0)}, 1)
                                      .reshape({2 * g.out_channels, p.weight.size(1), g.kh, g.kw});
  const at::Tensor negative_flags = p.x.lt(0).flatten(1).any(1);
  const at::Tensor negative_count = negative_flags.to(at::kLong).cumsum(0).cpu();  // one sync
  const int64_t* cumulative = negative_count.const_data_ptr<int64_t>();
  // Chunks of images whose pseudo-inputs and V together stay within about the batch's size.
  const int64_t per_image = 2 * (image_numel(g) + 2 * g.out_channels * positions(g));
  const int64_t chunk = std::max<int64_t>(1, p.x.numel() / std::max<int64_t>(per_image, 1));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const ExactFloat32Guard exact;  // TF32 z would be ~1e-3 off, beyond the CPU op's agreement
  for (int64_t n0 = 0; n0 < p.batch; n0 += chunk) {
    const int64_t n1 = std::min(p.batch, n0 + chunk);
    const at::Tensor images = p.x.slice(0, n0, n1);
    std::vector<at::Tensor> parts{at::clamp_min(images, 0)};
    const int64_t n_negative = cumulative[n1 - 1] - (n0 > 0 ? cumulative[n0 - 1] : 0);
    if (n_negative > 0) {  // the a- data points of the images that have negative entries
      const at::Tensor index = negative_flags.slice(0, n0, n1).nonzero().view({-1});
      parts.push_back(at::clamp_min(images.index_select(0, index).neg(), 0));
    }
    const at::Tensor points = parts.size() == 1 ? parts[0].contiguous() : at::cat(parts).contiguous();
    at::Tensor z = at::conv2d(points, split_weight, {}, stride, padding, dilation, g.groups);
    at::Tensor inv = at::reciprocal(z);
    inv.masked_fill_(z.le(kSensitivityEps), 0);
    inv = inv.contiguous();
    AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "sensitivity_reduce_cuda", [&] {
      C10_CUDA_CHECK(sensitivity_reduce_cuda_launch<scalar_t>(
          points.const_data_ptr<scalar_t>(), inv.const_data_ptr<scalar_t>(), p.weight.const_data_ptr<scalar_t>(),
          acc.mutable_data_ptr<scalar_t>(), g, points.size(0), p.reduce, stream.stream()));
    });
  }
  return acc;
}

// conv(x, weight) without bias in IEEE float32 when asked, else an empty tensor (the schema returns two).
at::Tensor layer_output(const SensitivityProblem& p, bool with_output, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
  if (!with_output) return at::empty({0}, p.x.options());
  const ExactFloat32Guard exact;
  return at::conv2d(p.x, p.weight, {}, stride, padding, dilation, p.geo.groups);
}

std::tuple<at::Tensor, at::Tensor> weight_sensitivity_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                           at::IntArrayRef stride, at::IntArrayRef padding,
                                                           at::IntArrayRef dilation, int64_t groups,
                                                           c10::string_view reduce,
                                                           const std::optional<at::Tensor>& running, bool with_output) {
  const c10::cuda::CUDAGuard guard(x.device());
  const SensitivityProblem p = prepare_sensitivity(kWeightOp, x, weight, stride, padding, dilation, groups, reduce,
                                                   running, SensitivityLevel::kWeight, c10::DeviceType::CUDA);
  const at::Tensor acc = accumulate_cuda(kWeightOp, p, stride, padding, dilation);
  const double scale = reduce_scale<double>(p.reduce, positions(p.geo));
  at::Tensor out = at::abs(p.weight).reshape(acc.sizes()).mul(acc).mul(scale).reshape(p.weight.sizes());
  return {p.running ? at::maximum(out, *p.running) : out, layer_output(p, with_output, stride, padding, dilation)};
}

std::tuple<at::Tensor, at::Tensor> channel_sensitivity_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                                            at::IntArrayRef dilation, int64_t groups,
                                                            const std::optional<at::Tensor>& running,
                                                            bool with_output) {
  const c10::cuda::CUDAGuard guard(x.device());
  const SensitivityProblem p = prepare_sensitivity(kChannelOp, x, weight, stride, padding, dilation, groups, "max",
                                                   running, SensitivityLevel::kChannel, c10::DeviceType::CUDA);
  const SensGeometry& g = p.geo;
  const at::Tensor acc = accumulate_cuda(kChannelOp, p, stride, padding, dilation);
  at::Tensor scores = at::abs(p.weight).reshape(acc.sizes()).mul(acc);
  at::Tensor out = scores.view({g.groups, group_out_channels(g), group_in_channels(g), g.kh * g.kw})
                       .amax({1, 3})
                       .reshape({g.in_channels});
  return {p.running ? at::maximum(out, *p.running) : out, layer_output(p, with_output, stride, padding, dilation)};
}

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CUDA, m) {
  m.impl("weight_sensitivity", &weight_sensitivity_cuda);
  m.impl("channel_sensitivity", &channel_sensitivity_cuda);
}

}  // namespace lostprune
