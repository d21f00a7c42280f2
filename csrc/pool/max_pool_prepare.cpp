// Argument checks of lostprune.max_pool2d (the limits of torch's max_pool2d, floor mode, no
// dilation), shared by the CPU and CUDA kernels.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "max_pool_prepare.h"

#include <ATen/ops/empty.h>

#include "../common/checks.h"

namespace lostprune {

namespace {
constexpr const char* kOp = "lostprune.max_pool2d";

void check_pair(const char* arg, at::IntArrayRef v, int64_t min) {
  TORCH_CHECK(v.size() == 2, kOp, ": ", arg, " must have 2 entries (height, width), got ", v.size());
  TORCH_CHECK(v[0] >= min && v[1] >= min, kOp, ": ", arg, " must be >= ", min, " in both dimensions, got ", v);
}
}  // namespace

PoolProblem prepare_max_pool(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, c10::DeviceType device_type) {
  check_device_type(kOp, "x", x, device_type);
  check_dim(kOp, "x", x, 4);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, kOp,
              ": x must be float32 or float64, got ", x.scalar_type());
  check_pair("kernel_size", kernel_size, 1);
  check_pair("stride", stride, 1);
  check_pair("padding", padding, 0);
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(2 * padding[d] <= kernel_size[d], kOp, ": padding must be at most half the kernel size, got padding ",
                padding, " for kernel_size ", kernel_size);
  }
  PoolProblem p;
  p.geo = make_pool_geometry(x.size(2), x.size(3), kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
                             padding[1]);
  TORCH_CHECK(p.geo.out_h >= 1 && p.geo.out_w >= 1, kOp, ": the output would be ", p.geo.out_h, " x ", p.geo.out_w,
              " for an input of ", x.size(2), " x ", x.size(3), " (kernel_size ", kernel_size, ", stride ", stride,
              ", padding ", padding, "); it must be at least 1 x 1");
  p.planes = x.size(0) * x.size(1);
  p.x = x.contiguous();
  p.out = at::empty({x.size(0), x.size(1), p.geo.out_h, p.geo.out_w}, x.options());
  return p;
}

}  // namespace lostprune
