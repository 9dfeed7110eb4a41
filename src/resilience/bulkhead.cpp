// Bulkhead: a bounded number of slots, a bounded FIFO queue of suspended waiters, and a
// hand-off of each released slot to the oldest waiter. See bulkhead.hpp for the contract.
//
// State: one atomic word, state_ = in_flight | queued << 32 (see bulkhead.hpp).
// Invariants:
//  - in_flight counts slots held by callers plus slots handed to a waiter that has not yet
//    taken (or returned) it; it never exceeds max_concurrent.
//  - queued == queue_.size() whenever mu_ is free: both change together under mu_.
//  - queued > 0 only while in_flight == max_concurrent: a waiter is added only by a CAS
//    from a state with every slot held; a slot is freed (in_flight - 1) only by a CAS from a
//    state with queued == 0, otherwise it is handed to the oldest waiter under mu_ (in_flight
//    unchanged), so nobody can overtake the queue. Taking a free slot needs queued == 0.
//  So the common case, a free slot and nobody waiting, is one CAS to take and one to give
//  back, without the mutex; everything about waiters happens under mu_.
//  - A Waiter lives in the frame of its acquire coroutine. It is in queue_ exactly while its
//    state is kQueued; a releaser moves it to kGranted (taking it out of the queue) and the
//    waiter itself moves it to kDone, taking the slot or passing it on. If the frame is
//    destroyed first (the process ended), WaitGuard does the same under the lock, so the
//    releaser never touches a dead Waiter.
#include "nines/resilience/bulkhead.hpp"

#include <algorithm>
#include <any>

#include "nines/core/check.hpp"

namespace nines {

namespace {

constexpr std::uint64_t kOneQueued = std::uint64_t{1} << 32;
constexpr std::uint64_t kMaxSide = std::uint64_t{1} << 31;
std::uint64_t in_flight_of(std::uint64_t s) { return s & 0xffffffffu; }
std::uint64_t queued_of(std::uint64_t s) { return s >> 32; }

}  // namespace

struct Bulkhead::Waiter {
  enum class State : std::uint8_t { kQueued, kGranted, kDone };
  State state = State::kQueued;
  // The only moves: kQueued -> kGranted (a releaser handed it a slot), kQueued -> kDone (it
  // left the queue), kGranted -> kDone (it took the slot or passed it on).
  void move_to(State next) {
    NINES_DCHECK((state == State::kQueued && next != State::kQueued) ||
                 (state == State::kGranted && next == State::kDone));
    state = next;
  }
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
  if (Bulkhead* owner = std::exchange(owner_, nullptr)) owner->release_slot();
}

Result<std::shared_ptr<Bulkhead>> Bulkhead::create(std::string name, Environment& env, const BulkheadOptions& options) {
  if (name.empty()) return Error(ErrorKind::kInvalidArgument, "bulkhead: name must not be empty");
  std::string where = "bulkhead '" + name + "': ";
  if (options.max_concurrent == 0 || options.max_concurrent > kMaxSide) {
    return Error(ErrorKind::kInvalidArgument, where + "max_concurrent must be between 1 and 2^31 (got " +
                                                  std::to_string(options.max_concurrent) + ")");
  }
  if (options.max_queue > kMaxSide) {
    return Error(ErrorKind::kInvalidArgument,
                 where + "max_queue must be at most 2^31 (got " + std::to_string(options.max_queue) + ")");
  }
  if (options.queue_timeout < Duration::zero()) {
    return Error(ErrorKind::kInvalidArgument, where + "queue_timeout must not be negative (got " +
                                                  std::to_string(options.queue_timeout.count()) + " ns)");
  }
  return std::shared_ptr<Bulkhead>(new Bulkhead(std::move(name), env, options));
}

Bulkhead::Bulkhead(std::string name, Environment& env, const BulkheadOptions& options)
    : name_(std::move(name)), env_(&env), options_(options) {}

Bulkhead::~Bulkhead() = default;

BulkheadCounters Bulkhead::counters() const {
  std::lock_guard lock(mu_);
  BulkheadCounters c = counters_;
  const std::uint64_t st = state_.load(std::memory_order_acquire);
  c.in_flight = in_flight_of(st);
  c.queued = queued_of(st);
  c.acquired += hot_.get(0);
  c.released = hot_.get(1);
  c.peak_in_flight = peak_in_flight_.load(std::memory_order_relaxed);
  return c;
}

std::size_t Bulkhead::in_flight() const { return in_flight_of(state_.load(std::memory_order_acquire)); }

std::size_t Bulkhead::queued() const { return queued_of(state_.load(std::memory_order_acquire)); }

bool Bulkhead::take_free() {
  std::uint64_t st = state_.load(std::memory_order_relaxed);
  do {
    if (queued_of(st) != 0 || in_flight_of(st) >= options_.max_concurrent) return false;
  } while (!state_.compare_exchange_weak(st, st + 1, std::memory_order_acquire, std::memory_order_relaxed));
  note_acquired(in_flight_of(st) + 1);
  return true;
}

void Bulkhead::note_acquired(std::uint64_t in_flight_now) {
  hot_.add(0);
  // A racy maximum: read (shared, cheap) first, write only a new peak.
  std::uint64_t peak = peak_in_flight_.load(std::memory_order_relaxed);
  while (in_flight_now > peak &&
         !peak_in_flight_.compare_exchange_weak(peak, in_flight_now, std::memory_order_relaxed)) {
  }
}

bool Bulkhead::give_back_free() {
  std::uint64_t st = state_.load(std::memory_order_relaxed);
  do {
    if (queued_of(st) != 0) return false;
    NINES_DCHECK(in_flight_of(st) > 0);
  } while (!state_.compare_exchange_weak(st, st - 1, std::memory_order_release, std::memory_order_relaxed));
  return true;
}

void Bulkhead::notify(const BulkheadEvent& e) const {
  if (options_.observer) options_.observer(e);
}

BulkheadEvent Bulkhead::event_locked(BulkheadEventType type) const {
  BulkheadEvent e;
  e.type = type;
  const std::uint64_t st = state_.load(std::memory_order_acquire);
  e.in_flight = in_flight_of(st);
  e.queued = queued_of(st);
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
    // Nobody queued, and nobody can queue without mu_: a plain give-back.
    bool freed = give_back_free();
    NINES_CHECK_MSG(freed, "bulkhead: waiters counted with an empty queue");
    return std::nullopt;
  }
  // Hand the slot to the oldest waiter; in_flight stays the same.
  Waiter* w = queue_.front();
  queue_.pop_front();
  const std::uint64_t before = state_.fetch_sub(kOneQueued, std::memory_order_acq_rel);
  // Waiters exist only while every slot is held, and the count moves with queue_ under mu_.
  NINES_DCHECK(in_flight_of(before) == options_.max_concurrent);
  NINES_DCHECK(queued_of(before) == queue_.size() + 1);
  w->move_to(Waiter::State::kGranted);
  return w->completion;  // empty if it is not suspended yet: start_wait completes it then
}

void Bulkhead::release_slot() {
  hot_.add(1);
  if (give_back_free()) {
    if (options_.observer) {
      BulkheadEvent e;
      e.type = BulkheadEventType::kReleased;
      const std::uint64_t st = state_.load(std::memory_order_relaxed);
      e.in_flight = in_flight_of(st);
      e.queued = queued_of(st);
      notify(e);
    }
    return;
  }
  std::optional<Completion> next;
  BulkheadEvent e;
  {
    std::lock_guard lock(mu_);
    next = release_locked();
    e = event_locked(BulkheadEventType::kReleased);
  }
  if (next) next->complete(std::any{});
  notify(e);
}

void Bulkhead::start_wait(Waiter& w, Completion c) {
  {
    std::lock_guard lock(mu_);
    // The waiter is suspending: it cannot have finished its wait yet.
    NINES_DCHECK(w.state != Waiter::State::kDone && !w.completion);
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
      state_.fetch_sub(kOneQueued, std::memory_order_acq_rel);
    } else if (w.state == Waiter::State::kGranted) {
      next = release_locked();
    } else {
      return;
    }
    w.move_to(Waiter::State::kDone);
    ++counters_.abandoned;
    e = event_locked(BulkheadEventType::kAbandoned);
  }
  if (next) next->complete(std::any{});
  notify(e);
}

BulkheadSlot Bulkhead::try_enter() {
  if (!take_free()) return BulkheadSlot();
  if (options_.observer) notify(event_locked(BulkheadEventType::kAcquired));
  return BulkheadSlot(this);
}

Result<BulkheadSlot> Bulkhead::try_acquire() {
  if (BulkheadSlot slot = try_enter(); slot.held()) return slot;
  BulkheadEvent e;
  std::size_t in_flight = 0;
  {
    std::lock_guard lock(mu_);
    count_rejection_locked(BulkheadRejection::kQueueFull, Duration::zero());
    e = event_locked(BulkheadEventType::kRejected);
    e.reason = BulkheadRejection::kQueueFull;
    in_flight = e.in_flight;
  }
  notify(e);
  return Error(ErrorKind::kBulkheadFull, "bulkhead '" + name_ + "': full (" + std::to_string(in_flight) + " of " +
                                             std::to_string(options_.max_concurrent) +
                                             " calls in flight; try_acquire does not wait)");
}

// What enter_or_queue decided. kAcquired and kRejected carry the event to report (and
// kRejected the error); kQueued: `w` is in the queue and must wait.
struct Bulkhead::Entry {
  enum class Kind : std::uint8_t { kAcquired, kRejected, kQueued };
  Kind kind = Kind::kQueued;
  BulkheadEvent event;
  std::optional<Error> error;
};

// What finish_wait decided: granted, or the reason of the rejection; `next` is a waiter
// to wake (after unlocking) when a slot handed over too late was passed on.
struct Bulkhead::WaitOutcome {
  bool granted = false;
  BulkheadRejection reason = BulkheadRejection::kQueueTimeout;
  BulkheadEvent event;
  std::optional<Completion> next;
};

Task<Result<BulkheadSlot>> Bulkhead::acquire(Context& ctx) {
  const TimePoint start = env_->now();
  if (ctx.deadline() > start) {
    if (BulkheadSlot slot = try_enter(); slot.held()) co_return slot;
  }

  // Slow paths: already late, no room to wait, or queue (a slot may also have come free).
  Waiter w;
  Entry entry = enter_or_queue(ctx, start, w);
  if (entry.kind != Entry::Kind::kQueued) {
    notify(entry.event);
    if (entry.kind == Entry::Kind::kRejected) co_return std::move(*entry.error);
    co_return BulkheadSlot(this);
  }
  std::shared_ptr<Bulkhead> self = shared_from_this();  // a waiter keeps its bulkhead alive

  // Wait for a hand-off, suspended. The guard cleans up if this frame is destroyed while
  // waiting (the process was killed or the runtime stopped).
  WaitGuard guard(*this, w);
  std::function<void(Completion)> start_fn = [this, &w](Completion c) { start_wait(w, std::move(c)); };
  Result<std::any> r = co_await ctx.await_external(std::move(start_fn), options_.queue_timeout);
  guard.dismiss();

  WaitOutcome outcome = finish_wait(w, r, env_->now() - start);
  NINES_DCHECK(w.state == Waiter::State::kDone);
  if (outcome.next) outcome.next->complete(std::any{});
  notify(outcome.event);
  if (outcome.granted) co_return BulkheadSlot(this);
  co_return wait_error(outcome, std::move(r));
}

Bulkhead::Entry Bulkhead::enter_or_queue(const Context& ctx, TimePoint start, Waiter& w) {
  Entry entry;
  std::lock_guard lock(mu_);
  std::uint64_t st = state_.load(std::memory_order_relaxed);
  for (;;) {
    if (ctx.deadline() <= start) {
      count_rejection_locked(BulkheadRejection::kDeadline, Duration::zero());
      entry.kind = Entry::Kind::kRejected;
      entry.event = event_locked(BulkheadEventType::kRejected);
      entry.event.reason = BulkheadRejection::kDeadline;
      entry.error.emplace(ErrorKind::kDeadlineExceeded, prefix() + "the deadline passed before acquiring a slot");
      return entry;
    }
    if (queued_of(st) == 0 && in_flight_of(st) < options_.max_concurrent) {
      // Freed since the first look (queued is 0 and stays 0: it changes only under mu_).
      if (!state_.compare_exchange_weak(st, st + 1, std::memory_order_acquire, std::memory_order_relaxed)) continue;
      note_acquired(in_flight_of(st) + 1);
      entry.kind = Entry::Kind::kAcquired;
      entry.event = event_locked(BulkheadEventType::kAcquired);
      return entry;
    }
    if (options_.max_queue == 0 || options_.queue_timeout <= Duration::zero() || queue_.size() >= options_.max_queue) {
      count_rejection_locked(BulkheadRejection::kQueueFull, Duration::zero());
      entry.kind = Entry::Kind::kRejected;
      entry.event = event_locked(BulkheadEventType::kRejected);
      entry.event.reason = BulkheadRejection::kQueueFull;
      std::string queue = options_.max_queue == 0 || options_.queue_timeout <= Duration::zero()
                              ? std::string("no queue")
                              : "queue full: " + std::to_string(queue_.size()) + " of " +
                                    std::to_string(options_.max_queue) + " waiting";
      entry.error.emplace(ErrorKind::kBulkheadFull, prefix() + "full (" + std::to_string(in_flight_of(st)) + " of " +
                                                        std::to_string(options_.max_concurrent) + " calls in flight, " +
                                                        queue + ")");
      return entry;
    }
    // Every slot held (or others queued already): join the queue. The CAS fails if a slot
    // was freed meanwhile; then look again.
    if (!state_.compare_exchange_weak(st, st + kOneQueued, std::memory_order_acq_rel, std::memory_order_relaxed)) {
      continue;
    }
    // Joined from a state with every slot held (or a queue already behind them).
    NINES_DCHECK(in_flight_of(st) == options_.max_concurrent);
    w.pos = queue_.insert(queue_.end(), &w);
    NINES_DCHECK(queued_of(st) + 1 == queue_.size());
    counters_.peak_queued = std::max(counters_.peak_queued, queue_.size());
    entry.kind = Entry::Kind::kQueued;
    return entry;
  }
}

Bulkhead::WaitOutcome Bulkhead::finish_wait(Waiter& w, const Result<std::any>& r, Duration waited) {
  WaitOutcome out;
  std::lock_guard lock(mu_);
  if (w.state == Waiter::State::kGranted) {
    w.move_to(Waiter::State::kDone);
    if (r.ok()) {
      out.granted = true;
      hot_.add(0);
      ++counters_.acquired_after_wait;
      counters_.total_wait += waited;
      out.event = event_locked(BulkheadEventType::kAcquired);
      out.event.waited = waited;
      return out;
    }
    // Timed out just as the slot was handed over: pass it on, never keep or lose it.
    ++counters_.handoffs_returned;
    out.next = release_locked();
  } else {
    NINES_DCHECK(w.state == Waiter::State::kQueued);
    // Still queued: the wait ended without a hand-off (a timeout, a deadline; r.ok() here
    // is a bug, which wait_error reports).
    queue_.erase(w.pos);
    state_.fetch_sub(kOneQueued, std::memory_order_acq_rel);
    w.move_to(Waiter::State::kDone);
  }
  if (!r.ok() && r.error().kind() == ErrorKind::kDeadlineExceeded) out.reason = BulkheadRejection::kDeadline;
  count_rejection_locked(out.reason, waited);
  out.event = event_locked(BulkheadEventType::kRejected);
  out.event.reason = out.reason;
  out.event.waited = waited;
  return out;
}

Error Bulkhead::wait_error(const WaitOutcome& outcome, Result<std::any> r) const {
  if (outcome.reason == BulkheadRejection::kDeadline) {
    return Error(ErrorKind::kDeadlineExceeded, prefix() + "the deadline passed after " +
                                                   std::to_string(to_millis(outcome.event.waited)) +
                                                   " ms in the queue, before a slot was free");
  }
  if (r.ok()) return NINES_BUG_LOG(env_->logger(), prefix() + "woken in the queue without a slot");
  if (r.error().kind() != ErrorKind::kTimeout) return std::move(r).error().with_context("bulkhead '" + name_ + "'");
  return Error(ErrorKind::kBulkheadFull, prefix() + "queue wait timed out after " +
                                             std::to_string(to_millis(options_.queue_timeout)) + " ms (" +
                                             std::to_string(options_.max_concurrent) + " calls in flight)");
}

}  // namespace nines
