// Internal: a raw futex on a 32-bit atomic word (the scheduler's idle workers, the
// environment's monitor). Not std::atomic::wait: libstdc++ 12 yields the CPU four times before
// it sleeps, four more system calls per park, and it has no timeout.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace nines::internal {

// Sleeps while `word` holds `seen` (the kernel compares first: a wake in between is not
// lost), at most `timeout` if not null. Returns on a wake, a timeout, a signal or a mismatch.
inline void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t seen, const timespec* timeout = nullptr) {
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_PRIVATE, seen, timeout, nullptr, 0);
}

// Wakes up to n threads sleeping on `word`.
inline void futex_wake(std::atomic<std::uint32_t>& word, int n) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0);
}

}  // namespace nines::internal
