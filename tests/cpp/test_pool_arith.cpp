// Unit tests of csrc/pool/max_pool.h: the window arithmetic and the NaN-propagating max
// shared by the CPU and CUDA max-pool kernels.
#include <cmath>
#include <limits>

#include "../../csrc/pool/max_pool.h"
#include "check.h"

using lostprune::pool_max;
using lostprune::pool_window;

int main() {
  // resnet18's stem pool: 112 -> 56 with a 3-wide window, stride 2, padding 1.
  const lostprune::PoolGeometry g = lostprune::make_pool_geometry(112, 112, 3, 3, 2, 2, 1, 1);
  LP_CHECK(g.out_h == 56 && g.out_w == 56);
  // The first window loses its padding row, the last one reads rows 109..111.
  LP_CHECK(pool_window(0, 3, 2, 1, 112).lo == 0 && pool_window(0, 3, 2, 1, 112).hi == 2);
  LP_CHECK(pool_window(55, 3, 2, 1, 112).lo == 109 && pool_window(55, 3, 2, 1, 112).hi == 112);
  // Floor mode: 9 wide, window 2, stride 2: 4 outputs, the last input column is never read.
  LP_CHECK(lostprune::make_pool_geometry(9, 9, 2, 2, 2, 2, 0, 0).out_w == 4);
  LP_CHECK(pool_window(3, 2, 2, 0, 9).lo == 6 && pool_window(3, 2, 2, 0, 9).hi == 8);
  // Padding on both sides of a window wider than the input.
  LP_CHECK(pool_window(0, 5, 1, 2, 3).lo == 0 && pool_window(0, 5, 1, 2, 3).hi == 3);

  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  LP_CHECK(pool_max(1.0f, 2.0f) == 2.0f && pool_max(2.0f, 1.0f) == 2.0f);
  LP_CHECK(pool_max(-inf, -3.0f) == -3.0f && pool_max(-inf, -inf) == -inf);
  // A NaN wins from either side and stays.
  LP_CHECK(std::isnan(pool_max(1.0f, nan)) && std::isnan(pool_max(nan, 1.0f)) && std::isnan(pool_max(nan, inf)));
  LP_CHECK(std::isnan(pool_max(1.0, std::numeric_limits<double>::quiet_NaN())));
  LP_TEST_MAIN_END();
}
