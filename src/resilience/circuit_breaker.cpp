// Circuit breaker state machine, sliding windows and the keyed registry
// (nines/resilience/circuit_breaker.hpp).
//
// Everything a breaker knows is guarded by its one mutex (Impl::mu), except what the hot path
// of a closed breaker touches: the state and epoch are mirrored in one atomic word (`gate`,
// written only under the mutex, at each transition), the streak of consecutive failures is
// an atomic, and the per-call counters are striped (core/striped_counters.hpp). So admitting
// a call to a closed breaker, and reporting its success or a non-counted error, take no lock
// and write no shared cache line; a counted failure, a half-open trial and every transition
// take the mutex. A permit issued from a stale reading of `gate` behaves exactly like one
// issued just before the transition: its report is counted but not judged (epochs differ).
//
// Transition events are queued under the mutex and delivered outside it by whichever caller
// finds no delivery in progress, so subscribers see them in order and may call back into the
// breaker.
#include "nines/resilience/circuit_breaker.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <limits>
#include <optional>

#include "nines/core/check.hpp"
#include "nines/core/striped_counters.hpp"

namespace nines {

std::string_view to_string(BreakerState state) {
  switch (state) {
    case BreakerState::kClosed: return "closed";
    case BreakerState::kOpen: return "open";
    case BreakerState::kHalfOpen: return "half_open";
    case BreakerState::kForcedOpen: return "forced_open";
    case BreakerState::kDisabled: return "disabled";
  }
  return "unknown";
}

std::string_view to_string(BreakerReason reason) {
  switch (reason) {
    case BreakerReason::kFailureRate: return "failure_rate";
    case BreakerReason::kSlowCallRate: return "slow_call_rate";
    case BreakerReason::kConsecutiveFailures: return "consecutive_failures";
    case BreakerReason::kOpenDurationElapsed: return "open_duration_elapsed";
    case BreakerReason::kTrialsSucceeded: return "trials_succeeded";
    case BreakerReason::kTrialsFailed: return "trials_failed";
    case BreakerReason::kTrialsSlow: return "trials_slow";
    case BreakerReason::kIsolated: return "isolated";
    case BreakerReason::kDisabled: return "disabled";
    case BreakerReason::kReset: return "reset";
    case BreakerReason::kClosedManually: return "closed_manually";
  }
  return "unknown";
}

namespace {

std::string seconds_text(Duration d) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.3f s", to_seconds(d));
  return buf;
}

std::string number_text(double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

Status invalid(const std::string& name, const std::string& what) {
  return Error(ErrorKind::kInvalidArgument, "circuit breaker '" + name + "': " + what);
}

bool is_fraction_open_closed(double v) { return std::isfinite(v) && v > 0.0 && v <= 1.0; }

Status validate(const std::string& name, const CircuitBreakerOptions& o) {
  if (name.empty()) return Error(ErrorKind::kInvalidArgument, "circuit breaker: name must not be empty");
  if (o.window == BreakerWindow::kCountBased) {
    if (o.window_size < 1) return invalid(name, "window_size must be >= 1 call (got 0)");
    if (o.minimum_calls > o.window_size) {
      return invalid(name, "minimum_calls (" + std::to_string(o.minimum_calls) + ") must be <= window_size (" +
                               std::to_string(o.window_size) + ") for a count-based window");
    }
  } else {
    if (o.window_duration <= Duration::zero()) {
      return invalid(name, "window_duration must be > 0 (got " + std::to_string(o.window_duration.count()) + " ns)");
    }
    if (o.window_buckets < 1) return invalid(name, "window_buckets must be >= 1 (got 0)");
    if (static_cast<std::uint64_t>(o.window_duration.count()) < o.window_buckets) {
      return invalid(name, "window_buckets (" + std::to_string(o.window_buckets) +
                               ") must not exceed window_duration in ns (" + std::to_string(o.window_duration.count()) +
                               ")");
    }
  }
  if (o.minimum_calls < 1) return invalid(name, "minimum_calls must be >= 1 (got 0)");
  if (o.failure_rate_threshold && !is_fraction_open_closed(*o.failure_rate_threshold)) {
    return invalid(name, "failure_rate_threshold must be a fraction in (0, 1] (got " +
                             number_text(*o.failure_rate_threshold) + ")");
  }
  if (o.slow_call_rate_threshold && !is_fraction_open_closed(*o.slow_call_rate_threshold)) {
    return invalid(name, "slow_call_rate_threshold must be a fraction in (0, 1] (got " +
                             number_text(*o.slow_call_rate_threshold) + ")");
  }
  if (o.slow_call_duration <= Duration::zero()) {
    return invalid(name,
                   "slow_call_duration must be > 0 (got " + std::to_string(o.slow_call_duration.count()) + " ns)");
  }
  if (!o.failure_rate_threshold && !o.slow_call_rate_threshold && o.consecutive_failures == 0) {
    return invalid(name,
                   "no trip condition: set failure_rate_threshold, slow_call_rate_threshold or "
                   "consecutive_failures");
  }
  if (o.open_duration <= Duration::zero()) {
    return invalid(name, "open_duration must be > 0 (got " + std::to_string(o.open_duration.count()) + " ns)");
  }
  if (!std::isfinite(o.open_duration_multiplier) || o.open_duration_multiplier < 1.0) {
    return invalid(name, "open_duration_multiplier must be >= 1 (got " + number_text(o.open_duration_multiplier) + ")");
  }
  if (o.max_open_duration < o.open_duration) {
    return invalid(name, "max_open_duration (" + seconds_text(o.max_open_duration) + ") must be >= open_duration (" +
                             seconds_text(o.open_duration) + ")");
  }
  if (!std::isfinite(o.open_duration_jitter) || o.open_duration_jitter < 0.0 || o.open_duration_jitter > 1.0) {
    return invalid(
        name, "open_duration_jitter must be a fraction in [0, 1] (got " + number_text(o.open_duration_jitter) + ")");
  }
  if (o.half_open_trials < 1) return invalid(name, "half_open_trials must be >= 1 call (got 0)");
  if (!o.classifier) return invalid(name, "classifier must not be empty");
  return ok_status();
}

double ratio(std::uint64_t part, std::uint64_t whole) {
  return whole == 0 ? 0.0 : static_cast<double>(part) / static_cast<double>(whole);
}

BreakerFigures make_figures(std::uint64_t calls, std::uint64_t failures, std::uint64_t slow, std::uint32_t streak) {
  BreakerFigures f;
  f.calls = calls;
  f.failures = failures;
  f.slow_calls = slow;
  f.failure_rate = ratio(failures, calls);
  f.slow_call_rate = ratio(slow, calls);
  f.consecutive_failures = streak;
  return f;
}

// The closed state's sliding window: a ring of the last N outcomes (count-based) or a ring
// of time buckets (time-based). Totals are kept incrementally. Not thread-safe.
class SlidingWindow {
 public:
  SlidingWindow(const CircuitBreakerOptions& o, TimePoint now) : time_based_(o.window == BreakerWindow::kTimeBased) {
    if (time_based_) {
      buckets_.resize(o.window_buckets);
      width_ = o.window_duration / static_cast<Duration::rep>(o.window_buckets);
    } else {
      ring_.resize(o.window_size);
    }
    clear(now);
  }

  void clear(TimePoint now) {
    calls_ = failures_ = slow_ = 0;
    std::fill(ring_.begin(), ring_.end(), std::uint8_t{0});
    next_ = filled_ = 0;
    std::fill(buckets_.begin(), buckets_.end(), Bucket{});
    if (time_based_) head_ = bucket_index(now);
  }

  void record(TimePoint now, bool failure, bool slow) {
    if (time_based_) {
      advance(now);
      Bucket& b = buckets_[slot(head_)];
      ++b.calls;
      b.failures += failure;
      b.slow += slow;
    } else {
      if (filled_ == ring_.size()) {
        std::uint8_t old = ring_[next_];
        --calls_;
        failures_ -= (old & kFailureBit) != 0;
        slow_ -= (old & kSlowBit) != 0;
      } else {
        ++filled_;
      }
      ring_[next_] = static_cast<std::uint8_t>((failure ? kFailureBit : 0) | (slow ? kSlowBit : 0));
      next_ = (next_ + 1) % ring_.size();
    }
    ++calls_;
    failures_ += failure;
    slow_ += slow;
  }

  // Totals at `now` (expires old buckets of a time-based window first).
  BreakerFigures figures(TimePoint now, std::uint32_t streak) {
    if (time_based_) advance(now);
    return make_figures(calls_, failures_, slow_, streak);
  }

 private:
  static constexpr std::uint8_t kFailureBit = 1;
  static constexpr std::uint8_t kSlowBit = 2;
  struct Bucket {
    std::uint64_t calls = 0;
    std::uint64_t failures = 0;
    std::uint64_t slow = 0;
  };

  std::int64_t bucket_index(TimePoint t) const {
    std::int64_t ns = t.time_since_epoch().count();
    std::int64_t w = width_.count();
    std::int64_t q = ns / w;
    if (ns % w != 0 && ns < 0) --q;  // floor
    return q;
  }
  std::size_t slot(std::int64_t index) const {
    auto n = static_cast<std::int64_t>(buckets_.size());
    return static_cast<std::size_t>(((index % n) + n) % n);
  }
  // Moves the head to now's bucket, emptying every bucket that left the window (at most all
  // of them, however long the gap).
  void advance(TimePoint now) {
    std::int64_t index = bucket_index(now);
    if (index <= head_) return;  // the clock never goes back
    std::int64_t steps = std::min<std::int64_t>(index - head_, static_cast<std::int64_t>(buckets_.size()));
    for (std::int64_t k = 1; k <= steps; ++k) {
      Bucket& b = buckets_[slot(head_ + k)];
      calls_ -= b.calls;
      failures_ -= b.failures;
      slow_ -= b.slow;
      b = Bucket{};
    }
    head_ = index;
  }

  bool time_based_;
  // count-based
  std::vector<std::uint8_t> ring_;
  std::size_t next_ = 0;
  std::size_t filled_ = 0;
  // time-based
  std::vector<Bucket> buckets_;
  Duration width_{1};
  std::int64_t head_ = 0;  // index (time / width) of the newest bucket
  // totals of the window
  std::uint64_t calls_ = 0;
  std::uint64_t failures_ = 0;
  std::uint64_t slow_ = 0;
};

}  // namespace

struct CircuitBreaker::Impl {
  using Subscriber = std::function<void(const BreakerTransition&)>;
  using List = std::vector<std::pair<SubscriptionId, Subscriber>>;

  Impl(const std::string& breaker_name, Environment& environment, const CircuitBreakerOptions& options, TimePoint now)
      : name(breaker_name),
        env(environment),
        o(options),
        window_kept(options.failure_rate_threshold.has_value() || options.slow_call_rate_threshold.has_value()),
        window(options, now) {}

  // `gate`: epoch << 3 | state.
  static std::uint64_t gate_word(std::uint64_t epoch, BreakerState state) {
    return epoch << 3 | static_cast<std::uint64_t>(state);
  }
  static BreakerState gate_state(std::uint64_t g) { return static_cast<BreakerState>(g & 7); }
  static std::uint64_t gate_epoch(std::uint64_t g) { return g >> 3; }
  enum Counter : std::size_t { kPermitted, kSuccesses, kFailures, kIgnored, kSlowCalls, kCounterCount };

  // The state machine; every member below needs `mu` held.
  BreakerFigures trial_figures() const;
  BreakerFigures current_figures(TimePoint now);
  Duration next_open_duration();
  void transition(BreakerState to, BreakerReason reason, const BreakerFigures& figures, TimePoint now);
  // `run`: the streak as the failure just reported made it.
  void check_closed(TimePoint now, std::uint32_t run);
  void check_half_open(TimePoint now);
  // Delivers queued events outside the lock, in order, unless another caller is doing so
  // (it will deliver these too). Called with the lock held; returns with it held.
  void deliver_events(std::unique_lock<std::mutex>& lock);
  // The default report of a transition (docs/logging.md), where subscribers are called.
  bool logged(BreakerState from, BreakerState to) const;
  void log_transition(const BreakerTransition& ev) const;

  const std::string& name;  // the breaker's; it outlives its Impl
  Environment& env;
  const CircuitBreakerOptions& o;
  // A rate threshold is set, so the closed state records every outcome in `window` (under
  // the mutex). Without one only the streak is judged and no window is kept.
  const bool window_kept;

  // Read without the lock (the hot path); written under it, with `state` and `epoch`.
  std::atomic<std::uint64_t> gate{gate_word(1, BreakerState::kClosed)};
  StripedCounters<kCounterCount> hot;  // permitted, outcomes, slow calls

  std::mutex mu;
  BreakerState state = BreakerState::kClosed;
  std::uint64_t epoch = 1;  // grows at every transition

  // closed
  SlidingWindow window;
  // Consecutive failures (low 32 bits) and the epoch they belong to (its low 32 bits, high
  // half): a success resets the streak without the lock, by a compare-and-swap that fails
  // if the breaker has moved to another period since the success's permit was issued.
  std::atomic<std::uint64_t> streak_word{std::uint64_t{1} << 32};  // epoch 1, no streak
  static std::uint64_t streak_of(std::uint64_t w) { return w & 0xffffffffu; }
  static std::uint64_t streak_epoch_of(std::uint64_t w) { return w >> 32; }
  std::uint32_t streak() const {
    return static_cast<std::uint32_t>(streak_of(streak_word.load(std::memory_order_relaxed)));
  }
  // Under mu: a new period starts with no streak.
  void reset_streak(std::uint64_t for_epoch) {
    streak_word.store((for_epoch & 0xffffffffu) << 32, std::memory_order_relaxed);
  }
  // Under mu: one more failure; the new streak (saturating).
  std::uint32_t add_failure() {
    std::uint64_t w = streak_word.load(std::memory_order_relaxed);
    for (;;) {
      if (streak_of(w) == 0xffffffffu) return 0xffffffffu;
      if (streak_word.compare_exchange_weak(w, w + 1, std::memory_order_relaxed))
        return static_cast<std::uint32_t>(streak_of(w) + 1);
    }
  }
  // Without the lock: a success of period `epoch` ends the streak, if that is still the period.
  void success_resets_streak(std::uint64_t of_epoch) {
    std::uint64_t w = streak_word.load(std::memory_order_relaxed);
    while (streak_of(w) != 0 && streak_epoch_of(w) == (of_epoch & 0xffffffffu)) {
      if (streak_word.compare_exchange_weak(w, w & ~std::uint64_t{0xffffffffu}, std::memory_order_relaxed)) return;
    }
  }

  // open
  TimePoint open_until{};
  std::uint32_t reopenings = 0;  // half-open -> open since the last close

  // half-open
  std::uint32_t trials_in_flight = 0;
  std::uint64_t trial_successes = 0;
  std::uint64_t trial_failures = 0;
  std::uint64_t trial_slow = 0;

  // open, forced open, disabled: the figures it left its last judging state with
  BreakerFigures frozen;

  BreakerCounters counters;

  // events
  std::shared_ptr<const List> subscribers = std::make_shared<List>();
  SubscriptionId next_subscription = 1;
  std::vector<BreakerTransition> pending;
  bool delivering = false;
};

namespace {

// The event and level a transition into `to` is reported with; nullopt: not reported (a reset
// of a closed breaker changes no state).
struct TransitionReport {
  std::string_view event;
  LogLevel level;
  std::string_view message;
};

std::optional<TransitionReport> report_of(BreakerState from, BreakerState to) {
  switch (to) {
    case BreakerState::kOpen:
      return TransitionReport{"breaker_opened", LogLevel::kWarning, "circuit breaker opened: calls are refused"};
    case BreakerState::kHalfOpen:
      return TransitionReport{"breaker_half_open", LogLevel::kInfo, "circuit breaker half-open: trial calls admitted"};
    case BreakerState::kClosed:
      if (from == BreakerState::kClosed) return std::nullopt;
      return TransitionReport{"breaker_closed", LogLevel::kNotice, "circuit breaker closed: calls flow again"};
    case BreakerState::kForcedOpen:
      return TransitionReport{"breaker_forced_open", LogLevel::kWarning,
                              "circuit breaker forced open: calls are refused until it is reset"};
    case BreakerState::kDisabled:
      return TransitionReport{"breaker_disabled", LogLevel::kNotice,
                              "circuit breaker disabled: every call is admitted, none recorded"};
  }
  return std::nullopt;
}

}  // namespace

bool CircuitBreaker::Impl::logged(BreakerState from, BreakerState to) const {
  std::optional<TransitionReport> r = report_of(from, to);
  return r && env.logger().enabled(r->level);
}

void CircuitBreaker::Impl::log_transition(const BreakerTransition& ev) const {
  std::optional<TransitionReport> r = report_of(ev.from, ev.to);
  if (!r) return;
  Logger& logger = env.logger();
  if (!logger.enabled(r->level)) return;
  // The figures it was judging as it left `from` (BreakerTransition::figures); how long it
  // stays open, when it opened.
  const BreakerFigures& f = ev.figures;
  const LogField fields[] = {{"breaker", ev.breaker},
                             {"from", to_string(ev.from)},
                             {"reason", to_string(ev.reason)},
                             {"calls", f.calls},
                             {"failures", f.failures},
                             {"failure_rate", f.failure_rate},
                             {"slow_calls", f.slow_calls},
                             {"consecutive_failures", f.consecutive_failures},
                             {"open_for_s", to_seconds(ev.open_for)}};
  const std::size_t n = ev.to == BreakerState::kOpen ? std::size(fields) : std::size(fields) - 1;
  logger.log_fields(r->level, r->event, r->message, std::span<const LogField>(fields, n));
}

void CircuitBreaker::Impl::deliver_events(std::unique_lock<std::mutex>& lock) {
  if (delivering || pending.empty()) return;
  delivering = true;
  struct Guard {
    Impl& impl;
    std::unique_lock<std::mutex>& lock;
    ~Guard() {
      if (!lock.owns_lock()) lock.lock();
      impl.delivering = false;
    }
  } guard{*this, lock};
  while (!pending.empty()) {
    std::vector<BreakerTransition> batch;
    batch.swap(pending);
    std::shared_ptr<const List> subs = subscribers;
    lock.unlock();
    for (const BreakerTransition& ev : batch) {
      log_transition(ev);
      for (const auto& [id, fn] : *subs) fn(ev);
    }
    lock.lock();
  }
}

// ---- Permit ----

CircuitBreaker::Permit::Permit(Permit&& o) noexcept
    : breaker_(std::exchange(o.breaker_, nullptr)), epoch_(o.epoch_), trial_(o.trial_) {}

CircuitBreaker::Permit& CircuitBreaker::Permit::operator=(Permit&& o) noexcept {
  if (this != &o) {
    if (breaker_) ignore();
    breaker_ = std::exchange(o.breaker_, nullptr);
    epoch_ = o.epoch_;
    trial_ = o.trial_;
  }
  return *this;
}

CircuitBreaker::Permit::~Permit() {
  if (breaker_) ignore();
}

void CircuitBreaker::Permit::success(Duration elapsed) {
  if (!breaker_) return;
  CircuitBreaker* b = std::exchange(breaker_, nullptr);
  b->report(epoch_, trial_, Outcome::kSuccess, elapsed);
}

void CircuitBreaker::Permit::failure(const Error& error, Duration elapsed) {
  if (!breaker_) return;
  CircuitBreaker* b = std::exchange(breaker_, nullptr);
  b->report_failure(epoch_, trial_, error, elapsed);
}

void CircuitBreaker::Permit::ignore() {
  if (!breaker_) return;
  CircuitBreaker* b = std::exchange(breaker_, nullptr);
  b->report(epoch_, trial_, Outcome::kIgnored, Duration::zero());
}

// ---- CircuitBreaker ----

Result<std::shared_ptr<CircuitBreaker>> CircuitBreaker::create(std::string name, Environment& env,
                                                               const CircuitBreakerOptions& options) {
  if (Status s = validate(name, options); !s.ok()) return std::move(s).error();
  return std::shared_ptr<CircuitBreaker>(new CircuitBreaker(std::move(name), env, options));
}

CircuitBreaker::CircuitBreaker(std::string name, Environment& env, const CircuitBreakerOptions& options)
    : name_(std::move(name)),
      env_(env),
      options_(options),
      impl_(std::make_unique<Impl>(name_, env_, options_, env.now())) {}

CircuitBreaker::~CircuitBreaker() = default;

BreakerFigures CircuitBreaker::Impl::trial_figures() const {
  return make_figures(trial_successes + trial_failures, trial_failures, trial_slow, 0);
}

BreakerFigures CircuitBreaker::Impl::current_figures(TimePoint now) {
  switch (state) {
    case BreakerState::kClosed: return window.figures(now, streak());
    case BreakerState::kHalfOpen: return trial_figures();
    default: return frozen;
  }
}

// open_duration * multiplier^reopenings, capped, then jittered downwards.
Duration CircuitBreaker::Impl::next_open_duration() {
  double ns = static_cast<double>(o.open_duration.count());
  if (o.open_duration_multiplier > 1.0 && reopenings > 0) {
    ns *= std::pow(o.open_duration_multiplier, static_cast<double>(reopenings));
  }
  auto cap = static_cast<double>(o.max_open_duration.count());
  if (!(ns < cap)) ns = cap;  // also catches inf
  if (o.open_duration_jitter > 0.0) ns *= 1.0 - o.open_duration_jitter * env.random_double();
  auto d = Duration(static_cast<Duration::rep>(ns));
  return std::clamp(d, Duration(1), o.max_open_duration);
}

void CircuitBreaker::Impl::transition(BreakerState to, BreakerReason reason, const BreakerFigures& figures,
                                      TimePoint now) {
  BreakerState from = state;
  state = to;
  ++epoch;
  gate.store(gate_word(epoch, to), std::memory_order_release);
  ++counters.transitions;
  Duration open_for{0};
  switch (to) {
    case BreakerState::kOpen:
      if (from == BreakerState::kHalfOpen) ++reopenings;
      open_for = next_open_duration();
      open_until = add_saturating(now, open_for);
      frozen = figures;
      ++counters.opened;
      break;
    case BreakerState::kHalfOpen:
      trials_in_flight = 0;
      trial_successes = trial_failures = trial_slow = 0;
      break;
    case BreakerState::kClosed:
      window.clear(now);
      reset_streak(epoch);
      reopenings = 0;
      frozen = BreakerFigures{};
      break;
    case BreakerState::kForcedOpen:
    case BreakerState::kDisabled: frozen = figures; break;
  }
  if (subscribers->empty() && !logged(from, to)) return;
  BreakerTransition ev;
  ev.breaker = name;
  ev.from = from;
  ev.to = to;
  ev.reason = reason;
  ev.figures = figures;
  ev.at = now;
  ev.unix_time_ns = env.unix_time_ns();
  ev.open_for = open_for;
  pending.push_back(std::move(ev));
}

// After a counted outcome in closed: trips if a condition holds.
void CircuitBreaker::Impl::check_closed(TimePoint now, std::uint32_t run) {
  BreakerFigures f = window.figures(now, run);
  if (o.consecutive_failures > 0 && run >= o.consecutive_failures) {
    transition(BreakerState::kOpen, BreakerReason::kConsecutiveFailures, f, now);
    return;
  }
  if (f.calls < o.minimum_calls) return;
  if (o.failure_rate_threshold && f.failure_rate >= *o.failure_rate_threshold) {
    transition(BreakerState::kOpen, BreakerReason::kFailureRate, f, now);
  } else if (o.slow_call_rate_threshold && f.slow_call_rate >= *o.slow_call_rate_threshold) {
    transition(BreakerState::kOpen, BreakerReason::kSlowCallRate, f, now);
  }
}

// After a counted trial outcome in half-open: reopens as soon as the trials' rate is certain
// to reach a threshold (the rate is over all half_open_trials, so failures already in can
// only be joined by more), closes once all trials reported below the thresholds.
void CircuitBreaker::Impl::check_half_open(TimePoint now) {
  const double n = o.half_open_trials;
  bool failed = o.failure_rate_threshold ? static_cast<double>(trial_failures) / n >= *o.failure_rate_threshold
                                         : trial_failures > 0;
  if (failed) {
    transition(BreakerState::kOpen, BreakerReason::kTrialsFailed, trial_figures(), now);
  } else if (o.slow_call_rate_threshold && static_cast<double>(trial_slow) / n >= *o.slow_call_rate_threshold) {
    transition(BreakerState::kOpen, BreakerReason::kTrialsSlow, trial_figures(), now);
  } else if (trial_successes + trial_failures >= o.half_open_trials) {
    transition(BreakerState::kClosed, BreakerReason::kTrialsSucceeded, trial_figures(), now);
  }
}

Result<CircuitBreaker::Permit> CircuitBreaker::try_acquire() {
  // Closed or disabled: no lock (see the top of this file).
  const std::uint64_t g = impl_->gate.load(std::memory_order_acquire);
  if (Impl::gate_state(g) == BreakerState::kClosed) {
    impl_->hot.add(Impl::kPermitted);
    return Permit(this, Impl::gate_epoch(g), false);
  }
  if (Impl::gate_state(g) == BreakerState::kDisabled) return Permit(nullptr, Impl::gate_epoch(g), false);

  std::unique_lock lock(impl_->mu);
  std::optional<Result<Permit>> out;
  switch (impl_->state) {
    case BreakerState::kClosed:
      impl_->hot.add(Impl::kPermitted);
      out.emplace(Permit(this, impl_->epoch, false));
      break;
    case BreakerState::kDisabled: out.emplace(Permit(nullptr, impl_->epoch, false)); break;
    case BreakerState::kForcedOpen:
      ++impl_->counters.rejections;
      ++impl_->counters.rejected_forced_open;
      out.emplace(
          Error(ErrorKind::kCircuitOpen,
                "circuit breaker '" + name_ + "' is isolated (forced open): calls are refused until it is reset"));
      break;
    case BreakerState::kOpen: {
      const TimePoint now = env_.now();
      if (now < impl_->open_until) {
        ++impl_->counters.rejections;
        ++impl_->counters.rejected_open;
        out.emplace(Error(ErrorKind::kCircuitOpen, "circuit breaker '" + name_ +
                                                       "' is open: it may admit a trial call in " +
                                                       seconds_text(impl_->open_until - now))
                        .with_retry_at(impl_->open_until));
        break;
      }
      impl_->transition(BreakerState::kHalfOpen, BreakerReason::kOpenDurationElapsed, impl_->frozen, now);
    }
      [[fallthrough]];
    case BreakerState::kHalfOpen:
      if (impl_->trials_in_flight + impl_->trial_successes + impl_->trial_failures < options_.half_open_trials) {
        ++impl_->trials_in_flight;
        impl_->hot.add(Impl::kPermitted);
        out.emplace(Permit(this, impl_->epoch, true));
      } else {
        ++impl_->counters.rejections;
        ++impl_->counters.rejected_half_open;
        out.emplace(Error(ErrorKind::kCircuitOpen, "circuit breaker '" + name_ + "' is half-open and its " +
                                                       std::to_string(options_.half_open_trials) +
                                                       " trial call(s) are taken: try again when they report"));
      }
      break;
  }
  impl_->deliver_events(lock);
  return std::move(*out);
}

void CircuitBreaker::report_failure(std::uint64_t epoch, bool trial, const Error& error, Duration elapsed) {
  ErrorKind kind = options_.classifier(error);
  bool counted = options_.failure_kinds.count(kind) != 0;
  report(epoch, trial, counted ? Outcome::kFailure : Outcome::kIgnored, elapsed);
}

void CircuitBreaker::report(std::uint64_t epoch, bool trial, Outcome outcome, Duration elapsed) {
  const bool slow = outcome != Outcome::kIgnored && elapsed >= options_.slow_call_duration;
  switch (outcome) {
    case Outcome::kSuccess: impl_->hot.add(Impl::kSuccesses); break;
    case Outcome::kFailure: impl_->hot.add(Impl::kFailures); break;
    case Outcome::kIgnored: impl_->hot.add(Impl::kIgnored); break;
  }
  if (slow) impl_->hot.add(Impl::kSlowCalls);
  if (!trial) {
    // Closed-state permits. Without the lock: a stale permit, an ignored outcome, and a
    // success when only the streak is judged (a stray reset of the streak after a
    // transition is harmless: only the closed state reads it, and entering it clears it).
    const std::uint64_t g = impl_->gate.load(std::memory_order_acquire);
    if (Impl::gate_epoch(g) != epoch || outcome == Outcome::kIgnored) return;
    if (outcome == Outcome::kSuccess && !impl_->window_kept) {
      impl_->success_resets_streak(epoch);
      return;
    }
  }
  std::unique_lock lock(impl_->mu);
  if (epoch != impl_->epoch) return;  // issued before a transition: counted, not judged
  if (impl_->state == BreakerState::kClosed && !trial) {
    const bool failure = outcome == Outcome::kFailure;
    if (impl_->window_kept) {
      const TimePoint now = env_.now();
      impl_->window.record(now, failure, slow);
      std::uint32_t run = 0;
      if (failure) {
        run = impl_->add_failure();
      } else {
        impl_->reset_streak(impl_->epoch);
      }
      impl_->check_closed(now, run);
    } else {
      // A counted failure, judged by the streak alone (successes reset it without the lock).
      NINES_DCHECK(failure);
      const std::uint32_t run = impl_->add_failure();
      if (options_.consecutive_failures > 0 && run >= options_.consecutive_failures) {
        impl_->check_closed(env_.now(), run);  // judged on this run, not a re-read
      }
    }
  } else if (impl_->state == BreakerState::kHalfOpen && trial) {
    NINES_DCHECK(impl_->trials_in_flight > 0);
    --impl_->trials_in_flight;
    if (outcome == Outcome::kIgnored) return;  // frees the slot; no events to deliver
    if (outcome == Outcome::kFailure) {
      ++impl_->trial_failures;
    } else {
      ++impl_->trial_successes;
    }
    impl_->trial_slow += slow;
    impl_->check_half_open(env_.now());
  }
  impl_->deliver_events(lock);
}

void CircuitBreaker::isolate() {
  std::unique_lock lock(impl_->mu);
  if (impl_->state != BreakerState::kForcedOpen) {
    TimePoint now = env_.now();
    impl_->transition(BreakerState::kForcedOpen, BreakerReason::kIsolated, impl_->current_figures(now), now);
  }
  impl_->deliver_events(lock);
}

void CircuitBreaker::disable() {
  std::unique_lock lock(impl_->mu);
  if (impl_->state != BreakerState::kDisabled) {
    TimePoint now = env_.now();
    impl_->transition(BreakerState::kDisabled, BreakerReason::kDisabled, impl_->current_figures(now), now);
  }
  impl_->deliver_events(lock);
}

void CircuitBreaker::reset() {
  std::unique_lock lock(impl_->mu);
  TimePoint now = env_.now();
  impl_->transition(BreakerState::kClosed, BreakerReason::kReset, impl_->current_figures(now), now);
  impl_->deliver_events(lock);
}

void CircuitBreaker::close() {
  std::unique_lock lock(impl_->mu);
  if (impl_->state != BreakerState::kClosed) {
    TimePoint now = env_.now();
    impl_->transition(BreakerState::kClosed, BreakerReason::kClosedManually, impl_->current_figures(now), now);
  }
  impl_->deliver_events(lock);
}

BreakerState CircuitBreaker::state() const { return Impl::gate_state(impl_->gate.load(std::memory_order_acquire)); }

BreakerFigures CircuitBreaker::figures() const {
  std::lock_guard lock(impl_->mu);
  return impl_->current_figures(env_.now());
}

BreakerCounters CircuitBreaker::counters() const {
  std::lock_guard lock(impl_->mu);
  BreakerCounters c = impl_->counters;
  c.state = impl_->state;
  c.permitted = impl_->hot.get(Impl::kPermitted);
  c.successes = impl_->hot.get(Impl::kSuccesses);
  c.failures = impl_->hot.get(Impl::kFailures);
  c.ignored = impl_->hot.get(Impl::kIgnored);
  c.slow_calls = impl_->hot.get(Impl::kSlowCalls);
  return c;
}

std::optional<TimePoint> CircuitBreaker::open_until() const {
  std::lock_guard lock(impl_->mu);
  if (impl_->state != BreakerState::kOpen) return std::nullopt;
  return impl_->open_until;
}

CircuitBreaker::SubscriptionId CircuitBreaker::subscribe(std::function<void(const BreakerTransition&)> fn) {
  std::lock_guard lock(impl_->mu);
  auto next = std::make_shared<Impl::List>(*impl_->subscribers);
  SubscriptionId id = impl_->next_subscription++;
  next->emplace_back(id, std::move(fn));
  impl_->subscribers = std::move(next);
  return id;
}

void CircuitBreaker::unsubscribe(SubscriptionId id) {
  std::lock_guard lock(impl_->mu);
  auto next = std::make_shared<Impl::List>(*impl_->subscribers);
  std::erase_if(*next, [&](const auto& s) { return s.first == id; });
  impl_->subscribers = std::move(next);
}

// ---- CircuitBreakerRegistry ----

struct CircuitBreakerRegistry::Listeners {
  using List = std::vector<std::pair<SubscriptionId, std::function<void(const BreakerTransition&)>>>;
  std::mutex mu;
  std::shared_ptr<const List> list = std::make_shared<List>();
  SubscriptionId next_id = 1;

  void emit(const BreakerTransition& ev) {
    std::shared_ptr<const List> subs;
    {
      std::lock_guard lock(mu);
      subs = list;
    }
    for (const auto& [id, fn] : *subs) fn(ev);
  }
};

Result<std::unique_ptr<CircuitBreakerRegistry>> CircuitBreakerRegistry::create(Environment& env,
                                                                               const CircuitBreakerOptions& defaults) {
  if (Status s = validate("<registry defaults>", defaults); !s.ok()) return std::move(s).error();
  return std::unique_ptr<CircuitBreakerRegistry>(new CircuitBreakerRegistry(env, defaults));
}

CircuitBreakerRegistry::CircuitBreakerRegistry(Environment& env, const CircuitBreakerOptions& defaults)
    : env_(env), defaults_(defaults), listeners_(std::make_shared<Listeners>()) {}

CircuitBreakerRegistry::~CircuitBreakerRegistry() = default;

Status CircuitBreakerRegistry::configure(std::string key, const CircuitBreakerOptions& options) {
  if (Status s = validate(key, options); !s.ok()) return s;
  std::lock_guard lock(mu_);
  if (breakers_.contains(key)) {
    return Error(ErrorKind::kAlreadyExists,
                 "circuit breaker '" + key + "' exists already: options apply only when it is created");
  }
  configured_.insert_or_assign(std::move(key), options);
  return ok_status();
}

std::shared_ptr<CircuitBreaker> CircuitBreakerRegistry::get(std::string_view key) {
  NINES_CHECK_MSG(!key.empty(), "CircuitBreakerRegistry::get: empty key");
  std::lock_guard lock(mu_);
  if (auto it = breakers_.find(key); it != breakers_.end()) return it->second;
  auto conf = configured_.find(key);
  const CircuitBreakerOptions& options = conf != configured_.end() ? conf->second : defaults_;
  std::shared_ptr<CircuitBreaker> breaker = CircuitBreaker::create(std::string(key), env_, options).value();
  breaker->subscribe([listeners = listeners_](const BreakerTransition& ev) { listeners->emit(ev); });
  breakers_.emplace(std::string(key), breaker);
  return breaker;
}

std::shared_ptr<CircuitBreaker> CircuitBreakerRegistry::find(std::string_view key) const {
  std::lock_guard lock(mu_);
  auto it = breakers_.find(key);
  return it == breakers_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<CircuitBreaker>> CircuitBreakerRegistry::breakers() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<CircuitBreaker>> out;
  out.reserve(breakers_.size());
  for (const auto& [key, b] : breakers_) out.push_back(b);
  return out;
}

std::size_t CircuitBreakerRegistry::size() const {
  std::lock_guard lock(mu_);
  return breakers_.size();
}

CircuitBreakerRegistry::SubscriptionId CircuitBreakerRegistry::subscribe(
    std::function<void(const BreakerTransition&)> fn) {
  std::lock_guard lock(listeners_->mu);
  auto next = std::make_shared<Listeners::List>(*listeners_->list);
  SubscriptionId id = listeners_->next_id++;
  next->emplace_back(id, std::move(fn));
  listeners_->list = std::move(next);
  return id;
}

void CircuitBreakerRegistry::unsubscribe(SubscriptionId id) {
  std::lock_guard lock(listeners_->mu);
  auto next = std::make_shared<Listeners::List>(*listeners_->list);
  std::erase_if(*next, [&](const auto& s) { return s.first == id; });
  listeners_->list = std::move(next);
}

}  // namespace nines
