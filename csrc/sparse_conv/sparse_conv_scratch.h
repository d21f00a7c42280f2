// Per-thread scratch buffers of the CPU sparse kernels: 64-byte aligned, uninitialized,
// kept between calls so steady-state inference neither allocates nor page-faults.
#pragma once

#include <cstdint>
#include <initializer_list>

namespace lostprune {
namespace cpu {

enum Slot { kPlanes, kBand, kPartialTiles, kTileOut, kBounds, kPlanTable, kSlots };

// The calling thread's buffer `slot`, at least `bytes` long (contents undefined).
void* scratch_bytes(Slot slot, int64_t bytes);

template <typename T>
T* scratch(Slot slot, int64_t n) {
  return static_cast<T*>(scratch_bytes(slot, (n > 0 ? n : 1) * static_cast<int64_t>(sizeof(T))));
}

// Frees the calling thread's buffers among `slots` that exceed the size worth keeping.
void release_large_scratch(std::initializer_list<Slot> slots);

}  // namespace cpu
}  // namespace lostprune
