// Links the op library built by CMake and calls lostprune::gather_channels through the
// dispatcher, as a C++ user of libtorch would.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "check.h"

int main() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("lostprune::gather_channels", "")
                .typed<std::vector<at::Tensor>(at::TensorList, const c10::List<std::optional<at::Tensor>>&,
                                               const c10::List<std::optional<at::Tensor>>&)>();
  at::Tensor w = at::arange(24, at::kFloat).reshape({4, 3, 2});
  c10::List<std::optional<at::Tensor>> rows, cols;
  rows.push_back(at::tensor({3, 1}, at::kLong));
  cols.push_back(at::tensor({2, 0}, at::kLong));
  std::vector<at::Tensor> out = op.call({w}, rows, cols);
  LP_CHECK(out.size() == 1);
  LP_CHECK(out[0].sizes() == at::IntArrayRef({2, 2, 2}));
  at::Tensor expect = w.index_select(0, rows.get(0).value()).index_select(1, cols.get(0).value());
  LP_CHECK(at::equal(out[0], expect));

  bool threw = false;
  try {
    c10::List<std::optional<at::Tensor>> bad;
    bad.push_back(at::tensor({7}, at::kLong));
    c10::List<std::optional<at::Tensor>> none;
    none.push_back(std::nullopt);
    op.call({w}, bad, none);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("out of range") != std::string::npos;
  }
  LP_CHECK(threw);
  LP_TEST_MAIN_END();
}
