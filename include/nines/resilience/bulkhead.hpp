// nines/resilience/bulkhead.hpp: a bulkhead, the concurrency limit around an external call.
//
// At most `max_concurrent` calls hold a slot at once; up to `max_queue` more wait for one, in
// FIFO order, for at most `queue_timeout` (and never past the process deadline). Anything
// beyond that is rejected at once with a typed error, so one slow dependency cannot tie up
// every process that calls it.
//
//   auto bh = Bulkhead::create("llm", env, {.max_concurrent = 8, .max_queue = 100}).value();
//   // in a process:
//   Result<std::string> r = co_await bh->call<std::string>(ctx, [&](Context& c) { return ask(c); });
//   // or, holding the slot explicitly:
//   auto slot = co_await bh->acquire(ctx);
//   if (!slot.ok()) co_return slot.error();   // kBulkheadFull or kDeadlineExceeded
//   ... the call ...                          // the slot is released when `slot` is destroyed
//
// Errors from acquire:
//  - kBulkheadFull, at once, when no slot is free and the queue is full (or there is none):
//    the message says "queue full" (or "no queue"); counted as rejected_queue_full.
//  - kBulkheadFull after `queue_timeout` in the queue: the message says "queue wait timed
//    out"; counted as rejected_queue_timeout.
//  - kDeadlineExceeded when the process deadline (Context::deadline) passes first, or has
//    passed already (no slot is taken then, even a free one); counted as rejected_deadline.
//
// How waiting works: a process waiting for a slot is suspended in Context::await_external
// (no worker thread blocks). A release hands its slot straight to the oldest waiter (the
// in-flight count does not drop in between, so a newcomer cannot overtake the queue) and
// completes that waiter's Completion. A waiter that times out just as a slot is handed to it
// gives the slot back (to the next waiter, or to the free pool): a slot is never lost or
// counted twice. A waiter whose process ends while queued (killed, runtime stopped) leaves
// the queue, or returns a slot handed to it, when its coroutine frame is destroyed.
//
// Ownership: Bulkhead objects are shared (std::shared_ptr). A BulkheadSlot refers to its
// bulkhead without owning it (one shared reference per call would put a contended reference
// count on every call's path): the bulkhead must outlive its slots, as it does when the
// caller holds it (or a Pipeline holding it) across the call; call() holds it itself. A
// process waiting in acquire() keeps its bulkhead alive while it waits, not afterwards: the
// slot it then gets needs the bulkhead held by someone, like any other.
//
// Thread-safety: a Bulkhead may be shared by any number of processes on any workers; every
// member is thread-safe. Taking a free slot and releasing one nobody waits for are one
// compare-and-swap each on a word holding both the slots held and the waiters (no lock);
// queueing, hand-offs and timeouts take the bulkhead's mutex. A BulkheadSlot is a value owned by one process (not
// thread-safe itself). The observer is called on the thread of the process whose call caused the event, outside the
// bulkhead's lock; it must be thread-safe, short, and must not block. Events from different processes may reach it
// slightly out of order.
#pragma once

#include <any>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/striped_counters.hpp"
#include "nines/core/time.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines {

// Why acquire did not get a slot.
enum class BulkheadRejection : std::uint8_t {
  kQueueFull,     // no free slot and no room in the queue (kBulkheadFull, at once)
  kQueueTimeout,  // waited queue_timeout in the queue (kBulkheadFull)
  kDeadline,      // the process deadline passed before a slot was free (kDeadlineExceeded)
};

std::string_view to_string(BulkheadRejection reason);

enum class BulkheadEventType : std::uint8_t {
  kAcquired,   // a slot was granted (at once or after waiting: see `waited`)
  kRejected,   // acquire failed (see `reason`)
  kReleased,   // a slot was released (handed to a waiter or back to the free pool)
  kAbandoned,  // a waiter's process ended while it was queued
};

struct BulkheadEvent {
  BulkheadEventType type = BulkheadEventType::kAcquired;
  BulkheadRejection reason = BulkheadRejection::kQueueFull;  // kRejected only
  Duration waited{};                                         // kAcquired, kRejected: time spent in the queue (0: none)
  std::size_t in_flight = 0;                                 // slots held right after the event
  std::size_t queued = 0;                                    // waiters right after the event
};

using BulkheadObserver = std::function<void(const BulkheadEvent&)>;

struct BulkheadOptions {
  // Calls holding a slot at once. At least 1, at most 2^31.
  std::size_t max_concurrent = 10;
  // Processes that may wait for a slot at once. 0: no queue (reject at once when full). At
  // most 2^31.
  std::size_t max_queue = 100;
  // Longest time a process waits in the queue; the process deadline may cut it shorter.
  // kInfinite: wait as long as the deadline allows. 0: never wait (like max_queue = 0).
  // Must not be negative.
  Duration queue_timeout = std::chrono::seconds(1);
  // Optional: told about every acquire, rejection, release and abandoned wait.
  BulkheadObserver observer;
};

// A snapshot. The counters every call bumps are read without a lock while calls run, so a
// snapshot taken under traffic may mix moments (acquired - released may differ from
// in_flight by the calls in between); after the traffic it is exact.
struct BulkheadCounters {
  std::uint64_t acquired = 0;                // slots granted, at once or after waiting
  std::uint64_t acquired_after_wait = 0;     // of those, granted after waiting in the queue
  std::uint64_t released = 0;                // slots released
  std::uint64_t rejected_queue_full = 0;     // rejected at once: queue full or no queue
  std::uint64_t rejected_queue_timeout = 0;  // rejected after queue_timeout in the queue
  std::uint64_t rejected_deadline = 0;       // the process deadline passed first
  std::uint64_t abandoned = 0;               // waiters whose process ended while queued
  std::uint64_t handoffs_returned = 0;       // slots handed to a waiter that had just timed
                                             // out, passed on by it
  Duration total_wait{};                     // queue time of every waiter, granted or not
  std::size_t in_flight = 0;                 // slots held now
  std::size_t queued = 0;                    // processes waiting now
  std::size_t peak_in_flight = 0;            // most slots ever held at once
  std::size_t peak_queued = 0;               // most waiters ever queued at once
};

class Bulkhead;

// One concurrency slot; releases it when destroyed (or by release()). Move-only. An empty
// slot (default-constructed or moved from) releases nothing.
class BulkheadSlot {
 public:
  BulkheadSlot() = default;
  BulkheadSlot(BulkheadSlot&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)) {}
  BulkheadSlot& operator=(BulkheadSlot&& o) noexcept {
    if (this != &o) {
      release();
      owner_ = std::exchange(o.owner_, nullptr);
    }
    return *this;
  }
  BulkheadSlot(const BulkheadSlot&) = delete;
  BulkheadSlot& operator=(const BulkheadSlot&) = delete;
  ~BulkheadSlot() { release(); }

  bool held() const { return owner_ != nullptr; }
  // Releases the slot now (hands it to the oldest waiter, if any). Idempotent.
  void release();

 private:
  friend class Bulkhead;
  explicit BulkheadSlot(Bulkhead* owner) : owner_(owner) {}
  Bulkhead* owner_ = nullptr;  // not owned; null: empty
};

class Bulkhead : public std::enable_shared_from_this<Bulkhead> {
 public:
  // Fails with kInvalidArgument naming the field: empty name, max_concurrent == 0, negative
  // queue_timeout. `env` must outlive the bulkhead and be the environment of the runtime
  // whose processes use it (its clock times the queue waits).
  static Result<std::shared_ptr<Bulkhead>> create(std::string name, Environment& env, const BulkheadOptions& options);

  Bulkhead(const Bulkhead&) = delete;
  Bulkhead& operator=(const Bulkhead&) = delete;
  ~Bulkhead();

  // A slot, at once if one is free, else after waiting in the queue (the process is
  // suspended; others run). Errors: see the top of this file. Call from inside a process
  // only; co_await it at once.
  Task<Result<BulkheadSlot>> acquire(Context& ctx);

  // Never waits: a free slot or kBulkheadFull (counted as rejected_queue_full). Usable from
  // any thread, inside a process or not.
  Result<BulkheadSlot> try_acquire();

  // The lock-free first step of acquire(), for composers (the Pipeline) that want to avoid a
  // coroutine when a slot is free: a slot if one is free and nobody is queued, else an empty
  // slot (held() false) and nothing counted: then call acquire(). It does not look at the
  // process deadline (acquire() refuses a passed one): the caller checks that.
  BulkheadSlot try_enter();

  // Runs fn while holding a slot. fn is called as fn(ctx) (or fn() if it takes no Context)
  // and returns something co_await-able whose result converts to Result<T>, typically a
  // Task<Result<T>>. The result is fn's, or the acquire error. The slot is released when fn
  // finishes, fails or throws (the exception propagates). fn is taken by value: it lives in
  // the coroutine frame for the whole call.
  template <class T, class F>
  Task<Result<T>> call(Context& ctx, F fn);

  const std::string& name() const { return name_; }
  const BulkheadOptions& options() const { return options_; }
  BulkheadCounters counters() const;
  std::size_t in_flight() const;
  std::size_t queued() const;

 private:
  struct Waiter;
  class WaitGuard;
  friend class BulkheadSlot;

  Bulkhead(std::string name, Environment& env, const BulkheadOptions& options);

  // Releases one held slot: hands it to the oldest waiter or returns it to the pool.
  void release_slot();
  // Under mu_: the part of release_slot that picks the next holder. Returns the Completion to
  // complete (after unlocking) when a waiter got the slot and is already suspended.
  std::optional<Completion> release_locked();
  // The await_external start function's body.
  void start_wait(Waiter& w, Completion c);
  // The waiter's process ended while it was queued or before it took a handed slot.
  void abandon(Waiter& w);
  // The steps of acquire() after its fast path: enter_or_queue (take a slot that came free,
  // reject, or join the queue), the suspended wait, finish_wait (take the handed slot or
  // leave the queue), then wait_error (what a waiter that got no slot is told).
  struct Entry;
  struct WaitOutcome;
  Entry enter_or_queue(const Context& ctx, TimePoint start, Waiter& w);
  WaitOutcome finish_wait(Waiter& w, const Result<std::any>& r, Duration waited);
  Error wait_error(const WaitOutcome& outcome, Result<std::any> r) const;
  void notify(const BulkheadEvent& e) const;
  BulkheadEvent event_locked(BulkheadEventType type) const;
  void count_rejection_locked(BulkheadRejection reason, Duration waited);
  std::string prefix() const;  // "bulkhead '<name>': " for error messages

  const std::string name_;
  Environment* const env_;
  const BulkheadOptions options_;

  // Takes a slot if one is free and nobody is queued (CAS on state_); false otherwise.
  bool take_free();
  // Gives a slot back if nobody is queued (CAS); false: someone is, hand it off under mu_.
  bool give_back_free();
  void note_acquired(std::uint64_t in_flight_now);

  // Slots held (low 32 bits; including slots handed to a waiter that has not taken them yet)
  // and waiters queued (high 32 bits). Queued waiters exist only while every slot is held:
  // the waiter count grows only by a CAS from a state with every slot held, and slots are
  // freed (not handed off) only when it is zero. The waiter count changes only under mu_,
  // together with queue_.
  std::atomic<std::uint64_t> state_{0};
  std::atomic<std::uint64_t> peak_in_flight_{0};
  StripedCounters<2> hot_;  // acquired at once, released

  mutable std::mutex mu_;
  std::list<Waiter*> queue_;   // oldest first; each Waiter lives in its acquire frame
  BulkheadCounters counters_;  // the rest, under mu_; counters() fills in the others
};

// ---- template implementation ----

template <class T, class F>
Task<Result<T>> Bulkhead::call(Context& ctx, F fn) {
  // The frame keeps the bulkhead alive while its slot is held (the slot does not).
  std::shared_ptr<Bulkhead> self = shared_from_this();
  Result<BulkheadSlot> slot = co_await acquire(ctx);
  if (!slot.ok()) co_return std::move(slot).error();
  if constexpr (std::is_invocable_v<F&, Context&>) {
    Result<T> r = co_await fn(ctx);
    co_return std::move(r);
  } else {
    Result<T> r = co_await fn();
    co_return std::move(r);
  }
}

}  // namespace nines
