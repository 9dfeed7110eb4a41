// Hedging: the non-template body of HedgingPolicy::run (hedging.hpp).
#include "nines/resilience/hedging.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <string>
#include <utility>

namespace nines {

namespace internal {

inline constexpr int kMaxHedgeAttempts = 16;

// Immutable options plus counters, shared by a policy's copies and its running calls.
struct HedgeCore {
  explicit HedgeCore(const HedgingOptions& o) : options(o) {}
  const HedgingOptions options;
  mutable std::atomic<std::uint64_t> runs{0};
  mutable std::atomic<std::uint64_t> attempts{0};
  mutable std::atomic<std::uint64_t> hedges{0};
  mutable std::atomic<std::uint64_t> hedges_at_once{0};
  mutable std::atomic<std::uint64_t> successes{0};
  mutable std::atomic<std::uint64_t> failures{0};
  mutable std::atomic<std::uint64_t> deadline_exceeded{0};
  mutable std::atomic<std::uint64_t> cancelled{0};
  mutable std::array<std::atomic<std::uint64_t>, kMaxHedgeAttempts> wins{};

  ErrorKind classify(const Error& e) const { return options.classifier ? options.classifier(e) : e.kind(); }
  bool at_once(ErrorKind k) const {
    return options.hedge_at_once ? options.hedge_at_once(k) : hedge_at_once_by_default(k);
  }
};

}  // namespace internal

namespace {

using internal::HedgeAttemptInfo;
using internal::HedgeCore;
using internal::HedgeOutcome;
using internal::HedgeReply;

Error invalid(std::string message) { return Error(ErrorKind::kInvalidArgument, std::move(message)); }

std::string attempts_text(std::size_t n) { return std::to_string(n) + (n == 1 ? " attempt" : " attempts"); }

// Unique per run across the whole program, so no run takes another run's reply.
std::uint64_t next_run_ref() {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

struct Slot {
  Pid pid;
  MonitorRef monitor;
  bool running = true;  // no outcome received yet
  bool down = false;    // its Down was taken
};

// One run's bookkeeping.
class HedgeRun {
 public:
  HedgeRun(const HedgeCore& core, Context& ctx, internal::HedgeSpawner spawner)
      : core_(core), ctx_(ctx), spawner_(std::move(spawner)), ref_(next_run_ref()), deadline_(ctx.deadline()) {}

  std::uint64_t ref() const { return ref_; }
  TimePoint deadline() const { return deadline_; }
  std::vector<Slot>& slots() { return slots_; }
  bool more() const { return static_cast<int>(slots_.size()) < max_attempts_; }
  int running() const {
    return static_cast<int>(std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.running; }));
  }

  // Starts the next attempt; false (and the error noted) if it could not be spawned.
  bool start(bool at_once) {
    HedgeAttemptInfo info;
    info.run = ref_;
    info.index = static_cast<int>(slots_.size());
    info.caller = ctx_.self();
    info.deadline = deadline_;
    Result<Pid> pid = ctx_.spawn_link(spawner_(info));
    if (!pid.ok()) {
      last_error_ = std::move(pid).error().with_context("hedging: starting attempt " + std::to_string(info.index + 1));
      max_attempts_ = static_cast<int>(slots_.size());  // start no more
      return false;
    }
    Slot s;
    s.pid = *pid;
    s.monitor = ctx_.monitor(*pid);
    slots_.push_back(s);
    core_.attempts.fetch_add(1, std::memory_order_relaxed);
    if (info.index > 0) {
      core_.hedges.fetch_add(1, std::memory_order_relaxed);
      if (at_once) core_.hedges_at_once.fetch_add(1, std::memory_order_relaxed);
    }
    next_at_ = add_saturating(ctx_.now(), core_.options.delay);
    return true;
  }

  TimePoint next_at() const { return next_at_; }

  void note_failure(Error e) { last_error_ = std::move(e); }
  const std::optional<Error>& last_error() const { return last_error_; }

  void stop_starting() { max_attempts_ = static_cast<int>(slots_.size()); }

 private:
  const HedgeCore& core_;
  Context& ctx_;
  internal::HedgeSpawner spawner_;
  const std::uint64_t ref_;
  const TimePoint deadline_;
  int max_attempts_ = core_.options.max_attempts;
  std::vector<Slot> slots_;
  TimePoint next_at_ = TimePoint::max();
  std::optional<Error> last_error_;
};

// Waits for the Down of monitor `ref`. Past the caller's deadline wait_down returns at once,
// so it then yields until the Down (which a kill makes certain) has arrived.
Task<> await_down(Context& ctx, MonitorRef ref) {
  for (;;) {
    std::optional<Down> d = co_await ctx.wait_down(ref);
    if (d.has_value()) co_return;
    (void)co_await ctx.yield();
  }
}

// Cancels every attempt still running, waits for the Down of every attempt, then removes
// the replies of this run still in the mailbox (losers that answered before the kill).
Task<> finish(const HedgeCore& core, Context& ctx, HedgeRun& run) {
  for (Slot& s : run.slots()) {
    if (!s.running) continue;
    ctx.unlink(s.pid);           // the kill must not come back to the caller as an exit signal
    ctx.kill_on_purpose(s.pid);  // a cancellation, not a crash to report
    core.cancelled.fetch_add(1, std::memory_order_relaxed);
  }
  for (Slot& s : run.slots()) {
    if (s.down) continue;
    co_await await_down(ctx, s.monitor);
    s.down = true;
  }
  // A fresh run of the process (yield) so the polls below are not cut short by its
  // reduction count; every reply of this run precedes its sender's Down, so all are queued.
  (void)co_await ctx.yield();
  const std::uint64_t ref = run.ref();
  std::function<bool(const Message&)> stale = [ref](const Message& m) {
    const auto* r = m.get<HedgeReply>();
    return r != nullptr && r->run == ref;
  };
  for (;;) {
    std::optional<Message> m = co_await ctx.receive_if(stale, Duration::zero());
    if (!m.has_value()) break;
  }
}

Error deadline_error(std::size_t started) {
  return Error(ErrorKind::kDeadlineExceeded, "hedging: deadline exceeded after " + attempts_text(started) + " started");
}

}  // namespace

namespace internal {

Task<HedgeOutcome> hedge_run(std::shared_ptr<const HedgeCore> core_ptr, Context& ctx, HedgeSpawner spawner) {
  const HedgeCore& core = *core_ptr;
  core.runs.fetch_add(1, std::memory_order_relaxed);
  HedgeOutcome out;
  HedgeRun run(core, ctx, std::move(spawner));

  if (ctx.now() >= run.deadline()) {
    core.failures.fetch_add(1, std::memory_order_relaxed);
    core.deadline_exceeded.fetch_add(1, std::memory_order_relaxed);
    out.error.emplace(ErrorKind::kDeadlineExceeded, "hedging: deadline passed before the first attempt");
    co_return out;
  }
  if (!run.start(false)) {
    core.failures.fetch_add(1, std::memory_order_relaxed);
    out.error = run.last_error();
    co_return out;
  }

  std::vector<Slot>* slots = &run.slots();
  const std::uint64_t ref = run.ref();
  std::function<bool(const Message&)> ours = [ref, slots](const Message& m) {
    if (const auto* r = m.get<HedgeReply>()) return r->run == ref;
    if (const auto* d = m.get<Down>()) {
      return std::any_of(slots->begin(), slots->end(), [&](const Slot& s) { return !s.down && s.monitor == d->ref; });
    }
    return false;
  };

  bool deadline_hit = false;
  for (;;) {
    if (run.running() == 0 && !run.more()) break;  // every attempt failed
    Duration timeout = kInfinite;
    if (run.more() && run.next_at() != TimePoint::max()) {
      timeout = std::max(Duration::zero(), run.next_at() - ctx.now());
    }
    std::optional<Message> msg = co_await ctx.receive_if(ours, timeout);
    if (!msg.has_value()) {
      if (ctx.now() >= run.deadline()) {
        deadline_hit = true;
        break;
      }
      if (run.more() && ctx.now() >= run.next_at()) run.start(false);
      continue;
    }

    std::optional<Error> failure;
    if (auto* d = msg->get<Down>()) {
      for (Slot& s : *slots) {
        if (s.monitor != d->ref) continue;
        s.down = true;
        if (s.running) {
          s.running = false;
          failure.emplace(ErrorKind::kTransient, "hedging: attempt " + std::to_string(&s - slots->data() + 1) +
                                                     " exited without a result (" + d->reason.to_string() + ")");
        }
      }
      if (!failure) continue;
    } else {
      auto* reply = msg->get<HedgeReply>();
      Slot& s = (*slots)[static_cast<std::size_t>(reply->index)];
      s.running = false;
      if (reply->exception) {
        out.exception = reply->exception;
        break;
      }
      if (reply->value) {
        core.successes.fetch_add(1, std::memory_order_relaxed);
        core.wins[static_cast<std::size_t>(reply->index)].fetch_add(1, std::memory_order_relaxed);
        out.value = std::move(reply->value);
        break;
      }
      failure = std::move(reply->error);
    }

    // A failed attempt.
    ErrorKind kind = core.classify(*failure);
    run.note_failure(std::move(*failure));
    if (!is_retryable(kind)) {
      run.stop_starting();
      out.error = run.last_error();
      break;
    }
    if (run.more() && core.at_once(kind) && ctx.now() < run.deadline()) run.start(true);
  }

  co_await finish(core, ctx, run);

  if (out.value || out.exception) co_return out;
  core.failures.fetch_add(1, std::memory_order_relaxed);
  // Ended by the caller's deadline: either its own wait ran out, or an attempt reported the
  // same deadline (its waits end at the same moment) first.
  if (deadline_hit || ctx.now() >= run.deadline()) {
    core.deadline_exceeded.fetch_add(1, std::memory_order_relaxed);
    out.error = deadline_error(run.slots().size());
  } else if (!out.error) {
    // Every attempt failed (or the last one could not start).
    out.error = run.last_error()->with_context("hedging: all " + attempts_text(run.slots().size()) + " failed");
  }
  co_return out;
}

}  // namespace internal

// ---- HedgingPolicy ----

Result<HedgingPolicy> HedgingPolicy::create(const HedgingOptions& options) {
  if (options.max_attempts < 1 || options.max_attempts > internal::kMaxHedgeAttempts) {
    return invalid("HedgingOptions.max_attempts must be in [1, " + std::to_string(internal::kMaxHedgeAttempts) +
                   "] (got " + std::to_string(options.max_attempts) + ")");
  }
  if (options.delay < Duration::zero()) {
    return invalid("HedgingOptions.delay must be >= 0 (got " + std::to_string(options.delay.count()) + " ns)");
  }
  return HedgingPolicy(std::make_shared<const internal::HedgeCore>(options));
}

const HedgingOptions& HedgingPolicy::options() const { return core_->options; }

HedgingStats HedgingPolicy::stats() const {
  HedgingStats s;
  s.runs = core_->runs.load(std::memory_order_relaxed);
  s.attempts = core_->attempts.load(std::memory_order_relaxed);
  s.hedges = core_->hedges.load(std::memory_order_relaxed);
  s.hedges_at_once = core_->hedges_at_once.load(std::memory_order_relaxed);
  s.successes = core_->successes.load(std::memory_order_relaxed);
  s.failures = core_->failures.load(std::memory_order_relaxed);
  s.deadline_exceeded = core_->deadline_exceeded.load(std::memory_order_relaxed);
  s.cancelled = core_->cancelled.load(std::memory_order_relaxed);
  s.wins.resize(static_cast<std::size_t>(core_->options.max_attempts));
  for (std::size_t i = 0; i < s.wins.size(); ++i) s.wins[i] = core_->wins[i].load(std::memory_order_relaxed);
  return s;
}

}  // namespace nines
