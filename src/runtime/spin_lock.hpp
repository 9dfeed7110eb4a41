// Internal: a one-byte lock for the per-process critical sections (a few pointer moves).
// std::mutex is 40 bytes; with a million processes that is 40 MB for locks alone. Spins
// briefly, then yields the CPU so a preempted holder can finish (2 cores, VMs).
#pragma once

#include <sched.h>

#include <atomic>

namespace nines::internal {

class SpinLock {
 public:
  void lock() noexcept {
    for (;;) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      for (int spins = 0; locked_.load(std::memory_order_relaxed); ++spins) {
        if (spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();
#endif
        } else {
          sched_yield();
        }
      }
    }
  }
  bool try_lock() noexcept { return !locked_.exchange(true, std::memory_order_acquire); }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

}  // namespace nines::internal
