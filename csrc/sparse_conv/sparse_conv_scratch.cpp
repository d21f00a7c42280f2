#include "sparse_conv_scratch.h"

#include <cstdint>
#include <memory>

namespace lostprune {
namespace cpu {
namespace {

// Buffers above this size are released after the call instead of kept per thread.
constexpr int64_t kKeepScratchBytes = int64_t(64) << 20;

struct ScratchBuffer {
  std::unique_ptr<char[]> data;
  int64_t bytes = 0;
};

ScratchBuffer& buffer(Slot slot) {
  thread_local ScratchBuffer buffers[kSlots];
  return buffers[slot];
}

}  // namespace

void* scratch_bytes(Slot slot, int64_t bytes) {
  ScratchBuffer& b = buffer(slot);
  bytes += 64;  // room to align the start
  if (b.bytes < bytes) {
    b.data.reset(new char[bytes]);
    b.bytes = bytes;
  }
  const auto addr = reinterpret_cast<uintptr_t>(b.data.get());
  return reinterpret_cast<void*>((addr + 63) & ~uintptr_t(63));
}

void release_large_scratch(std::initializer_list<Slot> slots) {
  for (Slot slot : slots) {
    ScratchBuffer& b = buffer(slot);
    if (b.bytes > kKeepScratchBytes) {
      b.data.reset();
      b.bytes = 0;
    }
  }
}

}  // namespace cpu
}  // namespace lostprune
