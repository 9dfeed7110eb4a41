// nines/core/striped_counters.hpp: event counters that many threads bump at once without sharing a cache line.
//
// A policy shared by every worker (a breaker, a bulkhead, a retry policy) counts each call.
// One std::atomic per counter puts every worker's increments on the same cache line, which
// then moves between cores on every call: on two cores that alone costs more than the rest of
// the policy. StripedCounters<N> keeps kStripes copies of its N counters, each copy on its own
// cache line; a thread adds to the copy picked by a per-thread index (threads get indices
// round robin, so up to kStripes threads never share one), and a read sums the copies.
//
// A read while others add sees each counter at some moment between the start and the end of
// the read (each counter is monotonic); different counters may be from different moments.
// Memory: kStripes * 64 bytes per 8 counters (1 KiB for up to 8).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace nines {

inline constexpr std::size_t kCounterStripes = 16;

// This thread's stripe, in [0, kCounterStripes).
inline std::size_t counter_stripe() noexcept {
  static std::atomic<std::size_t> next{0};
  thread_local const std::size_t stripe = next.fetch_add(1, std::memory_order_relaxed) % kCounterStripes;
  return stripe;
}

template <std::size_t N>
class StripedCounters {
 public:
  static_assert(N >= 1);

  void add(std::size_t counter, std::uint64_t n = 1) noexcept {
    stripes_[counter_stripe()].c[counter].fetch_add(n, std::memory_order_relaxed);
  }
  std::uint64_t get(std::size_t counter) const noexcept {
    std::uint64_t sum = 0;
    for (const Stripe& s : stripes_) sum += s.c[counter].load(std::memory_order_relaxed);
    return sum;
  }

 private:
  struct alignas(64) Stripe {
    std::array<std::atomic<std::uint64_t>, N> c{};
  };
  std::array<Stripe, kCounterStripes> stripes_{};
};

}  // namespace nines
