// nines/resilience/hedging.hpp: hedged requests. A second attempt starts after a delay while
// the first is still running; the first success wins and the loser is cancelled.
//
// Hedging is off unless a caller builds a policy and routes a call through it:
//
//   HedgingPolicy hedge = HedgingPolicy::create({.max_attempts = 2, .delay = 800ms}).value();
//   auto ask = [question](Context& c) -> Task<Result<Reply>> { co_return co_await llm_ask(c, question); };
//   Result<Reply> r = co_await hedge.run<Reply>(ctx, ask);   // name the lambda first (g++ 12)
//
// How run() works (hedging.cpp, internal::hedge_run):
//  - Every attempt runs in a process of its own, spawned with spawn_link and monitored by the
//    caller, so attempts truly run at the same time although the caller is one process. The
//    attempt process calls attempt(its own Context) and sends the outcome back as a message
//    tagged with a reference unique to this run (stale replies of earlier runs, or of other
//    policies, never match); the caller takes replies by selective receive on that reference.
//  - Attempt 1 starts at once (unless ctx.deadline() has passed: kDeadlineExceeded, nothing
//    started). Attempt k+1 starts `delay` after attempt k started, while fewer than
//    max_attempts have started and none has succeeded.
//  - A failed attempt is read by the classifier (default: the error's own kind):
//     * a kind that is not retryable (classify.hpp is_retryable: kPermanent, kCancelled,
//       kDeadlineExceeded, ...) ends the run at once with that error (other attempts are
//       cancelled): another copy of the same request would fail the same way;
//     * a kind for which `hedge_at_once` is true (default: kTransient, kTimeout,
//       kMailboxFull) starts the next attempt at once instead of waiting for the delay (a
//       fast failure costs no latency); the delay to the attempt after it counts from then;
//     * any other retryable kind (default: kRateLimited) leaves the schedule as it is.
//  - The first success wins. Every attempt still running is then cancelled: the caller
//    unlinks it, sends it an exit signal `kill` and waits for its Down. When run() returns,
//    no process it started is alive, and no message of this run is left in the caller's
//    mailbox (late replies of the losers are removed).
//  - All attempts failed: the last failure, its kind kept, "hedging: all N attempts failed"
//    prepended.
//  - The caller's deadline (ctx.deadline()) bounds everything: no attempt starts at or after
//    it, each attempt process runs under the same deadline (Context::with_deadline inside it,
//    so its own waits end with kDeadlineExceeded by then), and when it passes run() cancels
//    every attempt still running and returns kDeadlineExceeded naming the attempt count.
//  - If the calling process dies (killed, shut down, crashed) during run(), its attempt
//    processes die with it: they are linked to it. An attempt unlinks itself from the caller
//    just before it exits normally, so a caller that traps exits gets no Exit messages.
//  - An exception thrown by an attempt is a bug, not a failure: it is carried back to the
//    caller, the other attempts are cancelled, and it is rethrown from run(). An attempt
//    process that exits without a result (its reply could not be delivered, or it was killed
//    from outside while the caller traps exits) counts as a kTransient failure.
//
// Lifetime of what attempts use: each attempt process gets its own copy of the attempt
// function. When run() returns every attempt process has exited, so references into the
// caller's frame are safe then; but if the caller is killed mid-run its attempts die
// asynchronously (on the real scheduler one may still be running on another worker for a
// moment), so an attempt should capture by value (or by shared_ptr) what it uses.
//
// Ownership and thread-safety: HedgingPolicy is a cheap handle (one shared_ptr) to immutable
// options and shared counters; copies share both. run() is const and may be called by any
// number of processes on any threads at once; counters are atomics. The classifier and
// hedge_at_once are called from the calling process (concurrently when processes share a
// policy), so they must be thread-safe then.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/resilience/classify.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines {

struct HedgingOptions {
  // Attempts in all, the first included. Default 2 (one hedge). Must be in [1, 16]
  // (1: never hedge; the single attempt still runs in a process of its own).
  int max_attempts = 2;
  // Wait after an attempt starts before the next one starts. Default 1 s; pick it near the
  // dependency's p95 latency so only the slow tail is hedged. Must be >= 0 (0: all attempts
  // start at once). kInfinite: hedge only after a failure for which hedge_at_once is true.
  Duration delay = std::chrono::seconds(1);
  // Reads each failure's kind. Default (empty): the kind the error carries.
  Classifier classifier;
  // For a failure whose (classified, retryable) kind this returns true, the next attempt
  // starts at once instead of after `delay`. Default (empty): kTransient, kTimeout and
  // kMailboxFull yes; kRateLimited (and any other) no.
  std::function<bool(ErrorKind)> hedge_at_once;
};

inline bool hedge_at_once_by_default(ErrorKind k) {
  return k == ErrorKind::kTransient || k == ErrorKind::kTimeout || k == ErrorKind::kMailboxFull;
}

// Counters since the policy was created, shared by its copies. Each counter is read
// atomically; a snapshot taken while runs are in progress may mix moments.
struct HedgingStats {
  std::uint64_t runs = 0;               // run() calls that started
  std::uint64_t attempts = 0;           // attempt processes started (first attempts included)
  std::uint64_t hedges = 0;             // of those, attempts after the first
  std::uint64_t hedges_at_once = 0;     // of the hedges, started at once after a failure
  std::uint64_t successes = 0;          // runs that returned a value
  std::uint64_t failures = 0;           // runs that returned an error (deadline included)
  std::uint64_t deadline_exceeded = 0;  // of the failures, ended by the caller's deadline
  std::uint64_t cancelled = 0;          // attempts killed while still running
  std::vector<std::uint64_t> wins;      // wins[i]: successes served by attempt i (0-based);
                                        // max_attempts entries
};

namespace internal {

struct HedgeCore;

// What an attempt process is told: which run it belongs to and where to reply.
struct HedgeAttemptInfo {
  std::uint64_t run = 0;  // the run's unique reference
  int index = 0;          // 0-based attempt number
  Pid caller;
  TimePoint deadline = TimePoint::max();  // the caller's deadline when the run started
};

// The message an attempt process sends to its caller. `value` holds a Result<T> (ok) of the
// run's T; exactly one of value, error, exception is set.
struct HedgeReply {
  std::uint64_t run = 0;
  int index = 0;
  std::shared_ptr<void> value;
  std::optional<Error> error;
  std::exception_ptr exception;
};

// How a run ended; exactly one of value, error, exception is set.
struct HedgeOutcome {
  std::shared_ptr<void> value;  // the winner's Result<T>
  std::optional<Error> error;
  std::exception_ptr exception;
};

using HedgeSpawner = std::function<Behavior(const HedgeAttemptInfo&)>;

// The non-template body of HedgingPolicy::run: scheduling, receiving, cancelling, counting.
// `spawner` makes the behavior of one attempt process. Defined in hedging.cpp.
Task<HedgeOutcome> hedge_run(std::shared_ptr<const HedgeCore> core, Context& ctx, HedgeSpawner spawner);

}  // namespace internal

class HedgingPolicy {
 public:
  // kInvalidArgument naming the field ("HedgingOptions.max_attempts must be in [1, 16] (got 0)").
  static Result<HedgingPolicy> create(const HedgingOptions& options);

  const HedgingOptions& options() const;
  HedgingStats stats() const;

  // Runs attempt(Context&) -> Task<Result<T>> hedged (see the top of this file). Must be
  // awaited inside a nines process, by the process `ctx` belongs to. The attempt is called
  // with the Context of the attempt's own process, never with `ctx`.
  template <class T>
  Task<Result<T>> run(Context& ctx, std::function<Task<Result<T>>(Context&)> attempt) const {
    return run_impl<T>(core_, ctx, std::move(attempt));
  }

 private:
  explicit HedgingPolicy(std::shared_ptr<const internal::HedgeCore> core) : core_(std::move(core)) {}

  template <class T>
  static Task<Result<T>> run_impl(std::shared_ptr<const internal::HedgeCore> core, Context& ctx,
                                  std::function<Task<Result<T>>(Context&)> attempt) {
    internal::HedgeSpawner spawner = [attempt = std::move(attempt)](const internal::HedgeAttemptInfo& info) {
      Behavior b = [attempt, info](Context& c) -> Task<> { return attempt_body<T>(c, attempt, info); };
      return b;
    };
    internal::HedgeOutcome out = co_await internal::hedge_run(std::move(core), ctx, std::move(spawner));
    if (out.exception) std::rethrow_exception(out.exception);
    if (out.value) co_return std::move(*std::static_pointer_cast<Result<T>>(out.value));
    co_return std::move(*out.error);
  }

  // The body of one attempt process.
  template <class T>
  static Task<> attempt_body(Context& c, std::function<Task<Result<T>>(Context&)> attempt,
                             internal::HedgeAttemptInfo info) {
    DeadlineScope scope = c.with_deadline(info.deadline);
    internal::HedgeReply reply;
    reply.run = info.run;
    reply.index = info.index;
    try {
      Result<T> r = co_await attempt(c);
      if (r.ok()) {
        reply.value = std::make_shared<Result<T>>(std::move(r));
      } else {
        reply.error.emplace(std::move(r).error());
      }
    } catch (const ProcessExitRequest&) {
      throw;  // Context::exit inside the attempt: the process ends as asked
    } catch (...) {
      reply.exception = std::current_exception();
    }
    // Never suspends; if the reply cannot be queued, the caller sees this process's Down.
    (void)c.try_send(info.caller, std::move(reply));
    c.unlink(info.caller);  // a normal exit then sends the caller no exit signal at all
  }

  std::shared_ptr<const internal::HedgeCore> core_;
};

}  // namespace nines
