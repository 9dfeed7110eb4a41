// nines/resilience/rate_limiter.hpp: a token-bucket rate limiter, for requests and for
// weighted units (the tokens-per-minute limit of a model API).
//
// The bucket holds at most `capacity` units and refills continuously at `refill_units` per
// `refill_period` (10 per second: one unit every 100 ms, not ten at each full second). The
// refill is computed lazily from the environment clock at each call, in exact integer
// arithmetic (no timers, no drift): on the virtual clock, "when" is exact to the nanosecond,
// rounded up.
//
//   // 500 requests per minute, bursts of 50:
//   auto rpm = RateLimiter::create("llm-rpm", env, {.capacity = 50, .refill_units = 500,
//                                                   .refill_period = 1min}).value();
//   // 90,000 tokens per minute, waiting at most 20 s for room:
//   auto tpm = RateLimiter::create("llm-tpm", env, {.capacity = 90'000, .refill_units = 90'000,
//                                                   .refill_period = 1min, .max_wait = 20s}).value();
//   // in a process:
//   if (auto ok = co_await tpm->acquire(ctx, estimated_tokens); !ok.ok()) co_return ok.error();
//   ... the call ...
//   tpm->adjust(int64_t(actual_tokens) - int64_t(estimated_tokens));  // settle the estimate
//
// acquire(ctx, units), by mode:
//  - kWait (default): takes the units at once if the bucket has them, else reserves them and
//    sleeps (co_await ctx.sleep: the process is suspended, others run) until the refill has
//    paid for them. Waiters are served in FIFO order: a reservation goes behind every earlier
//    one, so a large request is never starved by small ones. It never waits past
//    ctx.deadline() nor past max_wait: when the wait it would need is longer, it fails at
//    once (kDeadlineExceeded / kRateLimited with retry_at) instead of waiting in vain.
//  - kReject: never waits: kRateLimited at once, with Error::retry_at() set to the earliest
//    time at which the same request would succeed (if nobody else takes units meanwhile).
// Errors: units > capacity is kInvalidArgument (it could never succeed). A process deadline
// already passed is kDeadlineExceeded. More than max_waiters waiting is kRateLimited with
// retry_at. units == 0 succeeds at once.
//
// A waiter whose process ends while it sleeps (killed, runtime stopped) gives its reserved
// units back when its coroutine frame is destroyed.
//
// Ownership: RateLimiter objects are shared (std::shared_ptr); a process waiting in acquire()
// keeps its limiter alive.
//
// Thread-safety: every member may be called from any thread and any process at once. The
// observer is called on the calling thread, outside the limiter's lock; it must be
// thread-safe, short, must not block and must not throw.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines {

enum class RateLimitMode : std::uint8_t {
  kWait,    // wait (suspended) for the refill, within max_wait and the process deadline
  kReject,  // never wait: kRateLimited with retry_at
};

// Why acquire did not take its units.
enum class RateLimitRejection : std::uint8_t {
  kNoTokens,        // not enough units, and this call does not wait (kReject, try_acquire)
  kMaxWait,         // the wait needed is longer than max_wait (kRateLimited)
  kTooManyWaiters,  // max_waiters processes are already waiting (kRateLimited)
  kDeadline,        // the wait needed ends after the process deadline (kDeadlineExceeded)
  kTooLarge,        // units > capacity (kInvalidArgument)
};

std::string_view to_string(RateLimitRejection reason);

enum class RateLimiterEventType : std::uint8_t {
  kAcquired,   // units taken (at once, or after waiting: see `waited`)
  kRejected,   // acquire failed (see `reason`)
  kAbandoned,  // a waiter's process ended while it slept; its units were given back
};

struct RateLimiterEvent {
  RateLimiterEventType type = RateLimiterEventType::kAcquired;
  RateLimitRejection reason = RateLimitRejection::kNoTokens;  // kRejected only
  std::uint64_t units = 0;
  Duration waited{};                  // kAcquired: time slept before taking the units
  std::optional<TimePoint> retry_at;  // kRejected with kRateLimited: when it would succeed
};

using RateLimiterObserver = std::function<void(const RateLimiterEvent&)>;

struct RateLimiterOptions {
  // Units the bucket holds when full: the largest burst and the largest single request.
  // 1 .. 2^40.
  std::uint64_t capacity = 10;
  // Units added per refill_period, continuously. 1 .. 2^40.
  std::uint64_t refill_units = 10;
  // The period refill_units refer to (1s: per second, 1min: per minute). > 0.
  Duration refill_period = std::chrono::seconds(1);
  // Units in the bucket at creation. nullopt: full (capacity). At most capacity.
  std::optional<std::uint64_t> initial_units;
  RateLimitMode mode = RateLimitMode::kWait;
  // kWait: the longest a call may wait; a call that would need longer is rejected at once
  // (kRateLimited with retry_at). kInfinite: only the process deadline bounds it. >= 0.
  Duration max_wait = kInfinite;
  // kWait: processes that may wait at once; more are rejected (kRateLimited with retry_at).
  // 1 .. 2^20.
  std::size_t max_waiters = 1024;
  // Optional: told about every acquire, rejection and abandoned wait.
  RateLimiterObserver observer;
};

// A snapshot; the fields are read together under the limiter's lock.
struct RateLimiterCounters {
  std::uint64_t acquired = 0;        // successful acquires (calls)
  std::uint64_t acquired_units = 0;  // units they took
  std::uint64_t waited = 0;          // of the acquires, those that slept first
  Duration total_wait{};             // time those slept, summed
  std::uint64_t rejected_no_tokens = 0;
  std::uint64_t rejected_max_wait = 0;
  std::uint64_t rejected_too_many_waiters = 0;
  std::uint64_t rejected_deadline = 0;
  std::uint64_t rejected_too_large = 0;
  std::uint64_t abandoned = 0;   // waiters whose process ended while sleeping
  std::size_t waiting = 0;       // processes sleeping in acquire now
  std::size_t peak_waiting = 0;  // most ever sleeping at once
};

class RateLimiter : public std::enable_shared_from_this<RateLimiter> {
 public:
  // Fails with kInvalidArgument naming the field (see RateLimiterOptions for the ranges).
  // `env` must outlive the limiter and be the environment of the runtime whose processes use
  // it: its clock drives the refill.
  static Result<std::shared_ptr<RateLimiter>> create(std::string name, Environment& env,
                                                     const RateLimiterOptions& options);

  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;
  ~RateLimiter();

  // Takes `units` from the bucket, waiting or rejecting by options().mode (see the top of
  // this file). Call from inside a process only; co_await it at once.
  Task<Status> acquire(Context& ctx, std::uint64_t units = 1);

  // Never waits, whatever the mode: takes the units now, or kRateLimited with retry_at
  // (kInvalidArgument over capacity). Usable from any thread, inside a process or not.
  Status try_acquire(std::uint64_t units = 1);

  // The first step of acquire(), for composers (the Pipeline) that want to avoid a coroutine
  // and share one clock reading: takes `units` if the bucket holds them at `now` and returns
  // true (counted and observed as an acquire); otherwise false and nothing is counted: then
  // call acquire(). `now` must be a reading of this limiter's environment clock; an older
  // reading only means less refill, never more units. units must be <= capacity. It does not
  // look at the process deadline: the caller checks that.
  bool try_take(std::uint64_t units, TimePoint now);

  // Settles an estimate after the fact (tokens per minute: the actual usage is known only
  // when the reply arrives). delta > 0 takes more units, even into debt (later acquires then
  // wait longer); delta < 0 gives units back, up to capacity.
  void adjust(std::int64_t delta_units);

  // Whole units in the bucket now (refilled to env.now()); negative while units are owed
  // (reserved by waiters or taken by adjust).
  std::int64_t available() const;

  // When `units` would be available if nobody else took any (now, if they are).
  // Precondition: units <= capacity.
  TimePoint available_at(std::uint64_t units) const;

  const std::string& name() const { return name_; }
  const RateLimiterOptions& options() const { return options_; }
  RateLimiterCounters counters() const;

 private:
  struct State;
  class WaitGuard;

  RateLimiter(std::string name, Environment& env, const RateLimiterOptions& options);
  void notify(const RateLimiterEvent& e) const;
  Error too_large(std::uint64_t units) const;
  std::string prefix() const;  // "rate limiter '<name>': " for error messages
  // The waiter's process ended while it slept: give `units` back.
  void abandon(std::uint64_t units);

  const std::string name_;
  Environment* const env_;
  const RateLimiterOptions options_;
  std::unique_ptr<State> state_;  // the bucket (128-bit arithmetic) and counters, under a lock
};

}  // namespace nines
