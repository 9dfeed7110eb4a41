// Bulkhead: a bounded number of slots, a bounded FIFO queue of suspended waiters, and a
// hand-off of each released slot to the oldest waiter. See bulkhead.hpp for the contract.
//
// Invariants (under mu_):
//  - in_flight_ counts slots held by callers plus slots handed to a waiter that has not yet
//    taken (or returned) it; it never exceeds max_concurrent.
//  - The queue is non-empty only while in_flight_ == max_concurrent (a release hands its
//    slot on instead of freeing it, so nobody can overtake the queue).
//  - A Waiter lives in the frame of its acquire coroutine. It is in queue_ exactly while its
//    state is kQueued; a releaser moves it to kGranted (taking it out of the queue) and the
//    waiter itself moves it to kDone, taking the slot or passing it on. If the frame is
//    destroyed first (the process ended), WaitGuard does the same under the lock, so the
//    releaser never touches a dead Waiter.
#include "nines/resilience/bulkhead.hpp"

#include <algorithm>
#include <any>

namespace nines {

struct Bulkhead::Waiter {
  enum class State : std::uint8_t { kQueued, kGranted, kDone };
  State state = State::kQueued;
  std::list<Waiter*>::iterator pos;
  // Set by the await_external start function; empty until the waiter is suspended.
  std::optional<Completion> completion;
};

// Cleans up a wait whose coroutine frame is destroyed while it is still pending.
class Bulkhead::WaitGuard {
 public:
  WaitGuard(Bulkhead& b, Waiter& w) : b_(b), w_(w) {}
  WaitGuard(const WaitGuard&) = delete;
  WaitGuard& operator=(const WaitGuard&) = delete;
  ~WaitGuard() {
    if (armed_) b_.abandon(w_);
  }
  void dismiss() { armed_ = false; }

 private:
  Bulkhead& b_;
  Waiter& w_;
  bool armed_ = true;
};

std::string Bulkhead::prefix() const { return "bulkhead '" + name_ + "': "; }

std::string_view to_string(BulkheadRejection reason) {
  switch (reason) {
    case BulkheadRejection::kQueueFull: return "queue_full";
    case BulkheadRejection::kQueueTimeout: return "queue_timeout";
    case BulkheadRejection::kDeadline: return "deadline";
  }
  return "unknown";
}

void BulkheadSlot::release() {
  if (auto owner = std::move(owner_)) owner->release_slot();
}

Result<std::shared_ptr<Bulkhead>> Bulkhead::create(std::string name, Environment& env,
                                                   const BulkheadOptions& options) {
  if (name.empty()) return Error(ErrorKind::kInvalidArgument, "bulkhead: name must not be empty");
  std::string where = "bulkhead '" + name + "': ";
  if (options.max_concurrent == 0) {
    return Error(ErrorKind::kInvalidArgument, where + "max_concurrent must be at least 1 (got 0)");
  }
  if (options.queue_timeout < Duration::zero()) {
    return Error(ErrorKind::kInvalidArgument,
                 where + "queue_timeout must not be negative (got " + std::to_string(options.queue_timeout.count()) +
                     " ns)");
  }
  return std::shared_ptr<Bulkhead>(new Bulkhead(std::move(name), env, options));
}

Bulkhead::Bulkhead(std::string name, Environment& env, const BulkheadOptions& options)
    : name_(std::move(name)), env_(&env), options_(options) {}

Bulkhead::~Bulkhead() = default;

BulkheadCounters Bulkhead::counters() const {
  std::lock_guard lock(mu_);
  BulkheadCounters c = counters_;
  c.in_flight = in_flight_;
  c.queued = queue_.size();
  return c;
}

std::size_t Bulkhead::in_flight() const {
  std::lock_guard lock(mu_);
  return in_flight_;
}

std::size_t Bulkhead::queued() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

void Bulkhead::notify(const BulkheadEvent& e) const {
  if (options_.observer) options_.observer(e);
}

BulkheadEvent Bulkhead::event_locked(BulkheadEventType type) const {
  BulkheadEvent e;
  e.type = type;
  e.in_flight = in_flight_;
  e.queued = queue_.size();
  return e;
}

void Bulkhead::count_rejection_locked(BulkheadRejection reason, Duration waited) {
  switch (reason) {
    case BulkheadRejection::kQueueFull: ++counters_.rejected_queue_full; break;
    case BulkheadRejection::kQueueTimeout: ++counters_.rejected_queue_timeout; break;
    case BulkheadRejection::kDeadline: ++counters_.rejected_deadline; break;
  }
  counters_.total_wait += waited;
}

std::optional<Completion> Bulkhead::release_locked() {
  if (queue_.empty()) {
    --in_flight_;
    return std::nullopt;
  }
  // Hand the slot to the oldest waiter; in_flight_ stays the same.
  Waiter* w = queue_.front();
  queue_.pop_front();
  w->state = Waiter::State::kGranted;
  return w->completion;  // empty if it is not suspended yet: start_wait completes it then
}

void Bulkhead::release_slot() {
  std::optional<Completion> next;
  BulkheadEvent e;
  {
    std::lock_guard lock(mu_);
    ++counters_.released;
    next = release_locked();
    e = event_locked(BulkheadEventType::kReleased);
  }
  if (next) next->complete(std::any{});
  notify(e);
}

void Bulkhead::start_wait(Waiter& w, Completion c) {
  {
    std::lock_guard lock(mu_);
    if (w.state == Waiter::State::kQueued) {
      w.completion = std::move(c);
      return;
    }
  }
  // A slot was handed over between queueing and suspending.
  c.complete(std::any{});
}

void Bulkhead::abandon(Waiter& w) {
  std::optional<Completion> next;
  BulkheadEvent e;
  {
    std::lock_guard lock(mu_);
    if (w.state == Waiter::State::kQueued) {
      queue_.erase(w.pos);
    } else if (w.state == Waiter::State::kGranted) {
      next = release_locked();
    } else {
      return;
    }
    w.state = Waiter::State::kDone;
    ++counters_.abandoned;
    e = event_locked(BulkheadEventType::kAbandoned);
  }
  if (next) next->complete(std::any{});
  notify(e);
}

Result<BulkheadSlot> Bulkhead::try_acquire() {
  BulkheadEvent e;
  std::size_t in_flight = 0;
  {
    std::lock_guard lock(mu_);
    if (in_flight_ < options_.max_concurrent) {
      ++in_flight_;
      ++counters_.acquired;
      counters_.peak_in_flight = std::max(counters_.peak_in_flight, in_flight_);
      e = event_locked(BulkheadEventType::kAcquired);
    } else {
      count_rejection_locked(BulkheadRejection::kQueueFull, Duration::zero());
      e = event_locked(BulkheadEventType::kRejected);
      e.reason = BulkheadRejection::kQueueFull;
      in_flight = in_flight_;
    }
  }
  notify(e);
  if (e.type == BulkheadEventType::kAcquired) return BulkheadSlot(shared_from_this());
  return Error(ErrorKind::kBulkheadFull, "bulkhead '" + name_ + "': full (" + std::to_string(in_flight) + " of " +
                                             std::to_string(options_.max_concurrent) +
                                             " calls in flight; try_acquire does not wait)");
}

Task<Result<BulkheadSlot>> Bulkhead::acquire(Context& ctx) {
  std::shared_ptr<Bulkhead> self = shared_from_this();
  const TimePoint start = env_->now();

  // Fast paths: already late, a free slot, or no room to wait.
  std::optional<Error> rejected;
  BulkheadEvent e;
  Waiter w;
  bool queued = false;
  {
    std::lock_guard lock(mu_);
    if (ctx.deadline() <= start) {
      count_rejection_locked(BulkheadRejection::kDeadline, Duration::zero());
      e = event_locked(BulkheadEventType::kRejected);
      e.reason = BulkheadRejection::kDeadline;
      rejected.emplace(ErrorKind::kDeadlineExceeded, prefix() + "the deadline passed before acquiring a slot");
    } else if (in_flight_ < options_.max_concurrent) {
      ++in_flight_;
      ++counters_.acquired;
      counters_.peak_in_flight = std::max(counters_.peak_in_flight, in_flight_);
      e = event_locked(BulkheadEventType::kAcquired);
    } else if (options_.max_queue == 0 || options_.queue_timeout <= Duration::zero() ||
               queue_.size() >= options_.max_queue) {
      count_rejection_locked(BulkheadRejection::kQueueFull, Duration::zero());
      e = event_locked(BulkheadEventType::kRejected);
      e.reason = BulkheadRejection::kQueueFull;
      std::string queue = options_.max_queue == 0 || options_.queue_timeout <= Duration::zero()
                              ? std::string("no queue")
                              : "queue full: " + std::to_string(queue_.size()) + " of " +
                                    std::to_string(options_.max_queue) + " waiting";
      rejected.emplace(ErrorKind::kBulkheadFull, prefix() + "full (" + std::to_string(in_flight_) + " of " +
                                                     std::to_string(options_.max_concurrent) +
                                                     " calls in flight, " + queue + ")");
    } else {
      w.pos = queue_.insert(queue_.end(), &w);
      counters_.peak_queued = std::max(counters_.peak_queued, queue_.size());
      queued = true;
    }
  }
  if (!queued) {
    notify(e);
    if (rejected) co_return std::move(*rejected);
    co_return BulkheadSlot(std::move(self));
  }

  // Wait for a hand-off, suspended. The guard cleans up if this frame is destroyed while
  // waiting (the process was killed or the runtime stopped).
  WaitGuard guard(*this, w);
  std::function<void(Completion)> start_fn = [this, &w](Completion c) { start_wait(w, std::move(c)); };
  Result<std::any> r = co_await ctx.await_external(std::move(start_fn), options_.queue_timeout);
  guard.dismiss();

  const Duration waited = env_->now() - start;
  std::optional<Completion> next;
  bool granted = false;
  BulkheadRejection reason = BulkheadRejection::kQueueTimeout;
  {
    std::lock_guard lock(mu_);
    if (w.state == Waiter::State::kGranted) {
      w.state = Waiter::State::kDone;
      if (r.ok()) {
        granted = true;
        ++counters_.acquired;
        ++counters_.acquired_after_wait;
        counters_.total_wait += waited;
        e = event_locked(BulkheadEventType::kAcquired);
        e.waited = waited;
      } else {
        // Timed out just as the slot was handed over: pass it on, never keep or lose it.
        ++counters_.handoffs_returned;
        next = release_locked();
      }
    } else {
      queue_.erase(w.pos);
      w.state = Waiter::State::kDone;
    }
    if (!granted) {
      if (!r.ok() && r.error().kind() == ErrorKind::kDeadlineExceeded) reason = BulkheadRejection::kDeadline;
      count_rejection_locked(reason, waited);
      e = event_locked(BulkheadEventType::kRejected);
      e.reason = reason;
      e.waited = waited;
    }
  }
  if (next) next->complete(std::any{});
  notify(e);
  if (granted) co_return BulkheadSlot(std::move(self));
  if (reason == BulkheadRejection::kDeadline) {
    co_return Error(ErrorKind::kDeadlineExceeded, prefix() + "the deadline passed after " +
                                                      std::to_string(to_millis(waited)) +
                                                      " ms in the queue, before a slot was free");
  }
  if (r.ok()) {
    // Cannot happen: only a hand-off completes the wait.
    co_return Error(ErrorKind::kInternal, prefix() + "woken in the queue without a slot");
  }
  if (r.error().kind() != ErrorKind::kTimeout) co_return std::move(r).error().with_context("bulkhead '" + name_ + "'");
  co_return Error(ErrorKind::kBulkheadFull, prefix() + "queue wait timed out after " +
                                                std::to_string(to_millis(options_.queue_timeout)) + " ms (" +
                                                std::to_string(options_.max_concurrent) + " calls in flight)");
}

}  // namespace nines
