// lostprune::cpu_vector_isa: which SIMD path the CPU kernels were compiled for, so
// `lostprune build` can say when a build cannot use this CPU's fast path.
#include <torch/library.h>

#include <string>

#include "simd.h"

namespace lostprune {
namespace {

std::string cpu_vector_isa() { return simd::kIsa; }

}  // namespace

TORCH_LIBRARY_IMPL(lostprune, CompositeExplicitAutograd, m) { m.impl("cpu_vector_isa", &cpu_vector_isa); }

}  // namespace lostprune
