// nines/resilience/circuit_breaker.hpp: circuit breakers and a keyed registry of them.
//
//   auto breaker = CircuitBreaker::create("payments", env, {.minimum_calls = 10, .open_duration = 30s}).value();
//   // in a process: the call runs only when the breaker admits it (kCircuitOpen otherwise)
//   Result<std::string> r = co_await breaker->call<std::string>(ctx, [&]() -> Task<Result<std::string>> {
//     co_return co_await payments.charge(ctx, order);
//   });
//   // or by hand, around anything:
//   if (Result<CircuitBreaker::Permit> p = breaker->try_acquire(); p.ok()) {
//     ... the call ...; p->success(elapsed);  // or p->failure(error, elapsed)
//   }
//   // one breaker per dependency, made on first use:
//   auto registry = CircuitBreakerRegistry::create(env).value();
//   std::shared_ptr<CircuitBreaker> b = registry->get("anthropic/claude-sonnet");
//
// A CircuitBreaker stops calling an external system that is failing, gives it time to
// recover, then lets a few trial calls through to find out whether it has.
//
//   closed ──trip──> open ──open duration passed, next call request──> half-open
//     ^                ^                                                  │
//     │                └──────────── trials failed (or slow) ─────────────┤
//     └──────────────────────────── trials succeeded ─────────────────────┘
//
//  - closed: every call is admitted and its outcome recorded. It trips (opens) when
//    `consecutive_failures` failures follow one another, or when, with at least
//    `minimum_calls` calls in the sliding window, the failure rate or the slow-call rate
//    reaches its threshold. The window holds the last `window_size` calls (count-based) or
//    the calls of the last `window_duration` in `window_buckets` buckets (time-based).
//  - open: every call is rejected at once with kCircuitOpen. Transitions are lazy: the first
//    call request after the open duration has passed on the environment clock moves it to
//    half-open (state() keeps reporting kOpen until then). The open duration is fixed or
//    grows with each consecutive reopening (multiplier, maximum, jitter).
//  - half-open: admits `half_open_trials` trial calls; others are rejected while they run.
//    Their rates are taken over all `half_open_trials`: it reopens as soon as the failures
//    (or slow calls) among them make a rate reach its threshold (any failed trial, when no
//    failure_rate_threshold is set), and closes once all trials have reported below them.
//  - forced open (isolate()): rejects everything and never leaves by itself.
//  - disabled (disable()): admits everything and records nothing.
//  reset() / close() return it to closed with an empty window from any state.
//
// Which failures count: the breaker's Classifier reads each failure's kind; kinds in
// `failure_kinds` (default: transient, timeout, rate_limited) count as failures, every other
// kind (a permanent 400 caused by one bad prompt, a cancellation, ...) is ignored: neither a
// success nor a failure, and it frees its half-open trial slot. A Permit destroyed without a
// report counts as ignored.
//
// Ownership: CircuitBreaker::create returns a shared_ptr. A Permit refers to its breaker
// without owning it (a shared reference per call would put one contended reference count on
// every call's path): the breaker must outlive its permits, as it naturally does when the
// caller holds the breaker (or a Pipeline holding it) across the call. The Environment must
// outlive every breaker (and registry) created on it. A registry keeps every breaker it
// created; callers may hold them longer.
//
// Metrics: counters() is a cumulative snapshot (state, permits, outcomes, slow calls,
// rejections by reason, transitions) for a scraper to read; subscribe() pushes transitions.
//
// Thread-safety: CircuitBreaker and CircuitBreakerRegistry are thread-safe (one mutex per
// breaker, which a closed breaker's hot path does not take: see circuit_breaker.cpp; the
// registry has its own). A Permit is a value owned by one caller and is not
// thread-safe. Transition subscribers are called without any breaker lock held, in the order
// the transitions happened, on the thread of some caller of the breaker (not necessarily the
// one whose call caused the transition); they may call into the breaker, and must be quick.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/resilience/classify.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines {

enum class BreakerState : std::uint8_t {
  kClosed,      // admits calls, records outcomes in the sliding window
  kOpen,        // rejects calls until the open duration has passed
  kHalfOpen,    // admits a limited number of trial calls
  kForcedOpen,  // isolate(): rejects calls until reset()/close()/disable()
  kDisabled,    // disable(): admits calls, records nothing
};

std::string_view to_string(BreakerState state);

// Why a transition happened.
enum class BreakerReason : std::uint8_t {
  kFailureRate,          // closed -> open: failure rate over the window reached its threshold
  kSlowCallRate,         // closed -> open: slow-call rate over the window reached its threshold
  kConsecutiveFailures,  // closed -> open: `consecutive_failures` failures in a row
  kOpenDurationElapsed,  // open -> half-open: a call request came after the open duration
  kTrialsSucceeded,      // half-open -> closed: all trials reported, rates below thresholds
  kTrialsFailed,         // half-open -> open: the trials' failure rate reached its threshold
  kTrialsSlow,           // half-open -> open: the trials' slow-call rate reached its threshold
  kIsolated,             // isolate()
  kDisabled,             // disable()
  kReset,                // reset()
  kClosedManually,       // close()
};

std::string_view to_string(BreakerReason reason);

enum class BreakerWindow : std::uint8_t {
  kCountBased,  // the last `window_size` recorded calls
  kTimeBased,   // the calls recorded in the last `window_duration`
};

// Counted calls of a window (or of the half-open trials). Ignored calls are not in it.
struct BreakerFigures {
  std::uint64_t calls = 0;  // successes + failures
  std::uint64_t failures = 0;
  std::uint64_t slow_calls = 0;            // successes or failures that took >= slow_call_duration
  double failure_rate = 0;                 // failures / calls, in [0, 1]; 0 when calls == 0
  double slow_call_rate = 0;               // slow_calls / calls, in [0, 1]; 0 when calls == 0
  std::uint32_t consecutive_failures = 0;  // current streak (closed state only)
};

// One state change of one breaker.
struct BreakerTransition {
  std::string breaker;  // the breaker's name
  BreakerState from = BreakerState::kClosed;
  BreakerState to = BreakerState::kClosed;
  BreakerReason reason = BreakerReason::kReset;
  // The figures the breaker was judging as it left `from`: the sliding window when leaving
  // closed, the trial calls when leaving half-open, the figures that opened it when leaving
  // open (and whatever was current when leaving forced-open or disabled).
  BreakerFigures figures;
  TimePoint at{};                 // environment monotonic time
  std::int64_t unix_time_ns = 0;  // environment wall time
  Duration open_for{0};           // to == kOpen: how long it stays open before admitting a trial
};

// Cumulative counters (never reset, reset() included), for metrics.
struct BreakerCounters {
  BreakerState state = BreakerState::kClosed;
  std::uint64_t permitted = 0;   // permits granted (not counting the disabled state)
  std::uint64_t successes = 0;   // permits reported as success
  std::uint64_t failures = 0;    // permits reported with an error of a counted kind
  std::uint64_t ignored = 0;     // ignore(), an error of another kind, or no report at all
  std::uint64_t slow_calls = 0;  // successes and failures that were slow
  std::uint64_t rejections = 0;  // try_acquire refused: the sum of the three below
  std::uint64_t rejected_open = 0;
  std::uint64_t rejected_half_open = 0;  // all trial slots taken
  std::uint64_t rejected_forced_open = 0;
  std::uint64_t transitions = 0;  // events emitted (reset() of a closed breaker included)
  std::uint64_t opened = 0;       // transitions into kOpen
};

struct CircuitBreakerOptions {
  // ---- sliding window (failure rate and slow-call rate) ----
  BreakerWindow window = BreakerWindow::kCountBased;  // default: count-based
  // kCountBased: the window holds the last `window_size` recorded calls. Calls; >= 1.
  // Default 100.
  std::size_t window_size = 100;
  // kTimeBased: the window covers the last `window_duration`, kept in `window_buckets`
  // buckets of window_duration / window_buckets each; a bucket expires as a whole, so the
  // window spans between (buckets - 1) and buckets bucket widths. Default 60 s, 10 buckets
  // (6 s each). Duration > 0; buckets >= 1 and no more than window_duration in ns.
  Duration window_duration = std::chrono::seconds(60);
  std::size_t window_buckets = 10;
  // Rates are undefined (never trip) until the window holds this many calls. Calls; >= 1;
  // count-based: <= window_size. Default 20.
  std::size_t minimum_calls = 20;
  // Trips when failures / calls >= this. Fraction in (0, 1]; nullopt: off. Default 0.5.
  std::optional<double> failure_rate_threshold = 0.5;
  // Trips when slow calls / calls >= this. Fraction in (0, 1]; nullopt: off. Default off.
  std::optional<double> slow_call_rate_threshold;
  // A call (success or failure) that took at least this long is slow. > 0. Default 60 s.
  Duration slow_call_duration = std::chrono::seconds(60);

  // ---- consecutive failures ----
  // Trips after this many failures in a row (any success ends the streak; ignored calls do
  // not). Failures; 0: off. Default 0 (off).
  std::uint32_t consecutive_failures = 0;

  // ---- open state ----
  // How long it stays open the first time. > 0. Default 30 s.
  Duration open_duration = std::chrono::seconds(30);
  // Each consecutive reopening (half-open -> open without closing in between) multiplies the
  // open duration by this: open_duration * multiplier^reopenings. >= 1; 1: fixed. Default 1.
  double open_duration_multiplier = 1.0;
  // Cap of the grown open duration. >= open_duration. Default 5 min.
  Duration max_open_duration = std::chrono::minutes(5);
  // Each open duration d is drawn uniformly from [d * (1 - jitter), d] (env.random_double()),
  // so breakers that opened together do not probe together and max_open_duration is never
  // exceeded. Fraction in [0, 1]. Default 0 (no jitter).
  double open_duration_jitter = 0.0;

  // ---- half-open state ----
  // Trial calls admitted in half-open. Calls; >= 1. Default 1. An ignored trial frees its
  // slot for another. When no failure_rate_threshold is set, any failed trial reopens it.
  std::uint32_t half_open_trials = 1;

  // ---- what counts ----
  // Error kinds (after classification) that count as failures; any other kind is ignored.
  // Default: transient, timeout, rate_limited. May be empty (only slow calls can trip it).
  std::set<ErrorKind> failure_kinds = {ErrorKind::kTransient, ErrorKind::kTimeout, ErrorKind::kRateLimited};
  // Reads a failure's kind. Non-null. Default: the kind the error carries.
  Classifier classifier = classify_default;
};

class CircuitBreaker : public std::enable_shared_from_this<CircuitBreaker> {
 public:
  using SubscriptionId = std::uint64_t;

  // The right to make one call. Report its outcome exactly once; later reports are no-ops.
  // Destroyed without a report, it counts as ignored (and frees its half-open slot).
  // Move-only; not thread-safe.
  class [[nodiscard]] Permit {
   public:
    Permit(Permit&& o) noexcept;
    Permit& operator=(Permit&& o) noexcept;
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit();

    // The call succeeded after `elapsed` (slow when elapsed >= slow_call_duration).
    void success(Duration elapsed);
    // The call failed after `elapsed`: a failure when the classifier gives a kind in
    // failure_kinds (then also slow if it took long), ignored otherwise.
    void failure(const Error& error, Duration elapsed);
    // The call neither succeeded nor failed as far as the breaker is concerned.
    void ignore();

    // Admitted as a half-open trial call.
    bool trial() const { return trial_; }
    // The breaker's state period the permit was issued in; it grows at every transition. A
    // report from an earlier period is counted but does not affect the state.
    std::uint64_t epoch() const { return epoch_; }
    // True once reported (or when issued by a disabled breaker, which records nothing).
    bool reported() const { return breaker_ == nullptr; }

   private:
    friend class CircuitBreaker;
    Permit(CircuitBreaker* breaker, std::uint64_t epoch, bool trial)
        : breaker_(breaker), epoch_(epoch), trial_(trial) {}
    CircuitBreaker* breaker_;  // not owned; null: reported, or inert (disabled)
    std::uint64_t epoch_ = 0;
    bool trial_ = false;
  };

  // Fails with kInvalidArgument naming the field for bad options or an empty name.
  static Result<std::shared_ptr<CircuitBreaker>> create(std::string name, Environment& env,
                                                        const CircuitBreakerOptions& options);
  ~CircuitBreaker();
  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;

  const std::string& name() const { return name_; }
  const CircuitBreakerOptions& options() const { return options_; }

  // A permit, or kCircuitOpen at once (naming the breaker and, when open, when it may admit
  // a trial; the error's retry_at() is that time). Every rejection is counted. When open and
  // the open duration has passed, this call moves it to half-open and takes a trial slot.
  Result<Permit> try_acquire();

  // Acquires, runs `co_await fn()` (which must give a Result<T>), times it with ctx.now()
  // and reports the outcome; the task keeps the breaker alive until it ends. When rejected, fn is not run and the
  // kCircuitOpen error is returned. If fn throws (or the process is stopped), the call counts as ignored. fn is
  // referenced, not copied: co_await the returned task at once.
  template <class T, class F>
  Task<Result<T>> call(Context& ctx, F&& fn);

  // ---- manual control (each is a transition with an event, unless already there) ----
  // Forced open: rejects every call, never transitions by itself.
  void isolate();
  // Admits every call and records nothing, until reset()/close()/isolate().
  void disable();
  // Closed with an empty window, streak and reopen count, from any state (also from closed,
  // which clears the window and emits a closed -> closed event). Counters are kept.
  void reset();
  // As reset(), with reason kClosedManually; a no-op when already closed.
  void close();

  // ---- observation ----
  // The stored state (an open breaker whose open duration has passed still says kOpen until
  // the next call request).
  BreakerState state() const;
  // The current window's figures (closed: the sliding window at now(); half-open: the
  // trials; otherwise the figures that opened it). A breaker with no rate threshold (only
  // consecutive_failures) keeps no window: its closed figures are the streak alone.
  BreakerFigures figures() const;
  // Cumulative. The per-call counters are read without the lock while calls run, so a
  // snapshot under traffic may mix moments (outcomes may briefly exceed permits); after the
  // traffic it is exact.
  BreakerCounters counters() const;
  // When an open breaker may admit a trial; nullopt unless kOpen.
  std::optional<TimePoint> open_until() const;

  // Every transition, in order (see the thread-safety note at the top).
  SubscriptionId subscribe(std::function<void(const BreakerTransition&)> fn);
  void unsubscribe(SubscriptionId id);

 private:
  struct Impl;
  CircuitBreaker(std::string name, Environment& env, const CircuitBreakerOptions& options);
  enum class Outcome : std::uint8_t { kSuccess, kFailure, kIgnored };
  void report(std::uint64_t epoch, bool trial, Outcome outcome, Duration elapsed);
  void report_failure(std::uint64_t epoch, bool trial, const Error& error, Duration elapsed);

  std::string name_;
  Environment& env_;
  CircuitBreakerOptions options_;
  std::unique_ptr<Impl> impl_;
};

template <class T, class F>
Task<Result<T>> CircuitBreaker::call(Context& ctx, F&& fn) {
  // The frame keeps the breaker alive while its permit is out (the permit does not).
  std::shared_ptr<CircuitBreaker> self = shared_from_this();
  Result<Permit> permit = try_acquire();
  if (!permit.ok()) co_return std::move(permit).error();
  TimePoint start = ctx.now();
  Result<T> result = co_await fn();
  Duration elapsed = ctx.now() - start;
  if (result.ok()) {
    permit->success(elapsed);
  } else {
    permit->failure(result.error(), elapsed);
  }
  co_return result;
}

// One breaker per key ("openai/gpt-4o", "tool:search"), created on first use with the
// registry's default options or options configured for that key. Thread-safe.
class CircuitBreakerRegistry {
 public:
  using SubscriptionId = std::uint64_t;

  // Fails with kInvalidArgument (naming the field) for bad default options.
  static Result<std::unique_ptr<CircuitBreakerRegistry>> create(Environment& env,
                                                                const CircuitBreakerOptions& defaults = {});
  ~CircuitBreakerRegistry();
  CircuitBreakerRegistry(const CircuitBreakerRegistry&) = delete;
  CircuitBreakerRegistry& operator=(const CircuitBreakerRegistry&) = delete;

  // Options for `key`'s breaker when it is created. kInvalidArgument for bad options (or an
  // empty key), kAlreadyExists if that breaker exists already (its options are fixed).
  Status configure(std::string key, const CircuitBreakerOptions& options);
  // The breaker for `key`, created on first use (named `key`). Never null. An empty key is
  // a bug (NINES_CHECK: it throws CheckFailure).
  std::shared_ptr<CircuitBreaker> get(std::string_view key);
  // The breaker for `key` if it was created, else null.
  std::shared_ptr<CircuitBreaker> find(std::string_view key) const;
  // Every breaker created so far, ordered by key.
  std::vector<std::shared_ptr<CircuitBreaker>> breakers() const;
  std::size_t size() const;

  // Transitions of every breaker of this registry, present and future.
  SubscriptionId subscribe(std::function<void(const BreakerTransition&)> fn);
  void unsubscribe(SubscriptionId id);

 private:
  struct Listeners;
  CircuitBreakerRegistry(Environment& env, const CircuitBreakerOptions& defaults);

  Environment& env_;
  CircuitBreakerOptions defaults_;
  mutable std::mutex mu_;
  std::map<std::string, CircuitBreakerOptions, std::less<>> configured_;
  std::map<std::string, std::shared_ptr<CircuitBreaker>, std::less<>> breakers_;
  std::shared_ptr<Listeners> listeners_;
};

}  // namespace nines
