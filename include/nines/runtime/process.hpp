// nines/runtime/process.hpp: lightweight processes and what they can do.
//
//   Task<> worker(Context& ctx) {
//     for (;;) {
//       Message m = co_await ctx.receive();  // suspends this process only
//       const std::string* job = m.get<std::string>();
//       if (job && m.is_call()) ctx.reply(m, "done: " + *job);
//     }
//   }
//   // in another process:
//   Pid w = ctx.spawn_link(worker).value();  // linked: if either crashes, the other gets its exit
//   std::string job = "job-1";                // named first (g++ 12, task.hpp)
//   Result<Message> r = co_await ctx.call(w, job, 2s);  // kTimeout if no reply within 2 s
//   auto deadline = ctx.with_timeout(5s);     // every wait below ends by then (kDeadlineExceeded)
//   std::optional<Message> next = co_await ctx.receive_for(1s);  // nullopt: nothing within 1 s
//
// A process is a coroutine (Task<>) with its own bounded mailbox and state, run by the
// runtime's M:N scheduler on a fixed pool of worker threads; it is not an OS thread. While it
// waits (for a message, a reply, a timer, a file descriptor, outside work, or room in a full
// mailbox) it is suspended and costs memory only; no worker thread blocks.
//
// Context is the process's handle on the runtime, valid for the life of the process. It is
// not thread-safe: use it only from the process's own coroutines.
//
// Signals between two processes arrive in the order they were sent (per sender -> receiver
// pair), as in Erlang.
#pragma once

#include <any>
#include <coroutine>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/runtime/exit_reason.hpp"
#include "nines/runtime/message.hpp"
#include "nines/runtime/pid.hpp"
#include "nines/runtime/task.hpp"

namespace nines {

class Context;
class Runtime;

namespace internal {
class Process;
class RuntimeCore;
struct CompletionState;
}  // namespace internal

// A process body. It is stored in the process, so a lambda's captures live as long as the
// process does.
using Behavior = std::function<Task<>(Context&)>;

// What a send does when the target's mailbox is full.
enum class OverflowPolicy : std::uint8_t {
  kReject,         // the send fails at once with kMailboxFull (the default)
  kDropOldest,     // the oldest queued message is dropped to make room
  kSuspendSender,  // a sending process is suspended until there is room; senders outside
                   // the runtime (no process to suspend) get kMailboxFull
};

inline constexpr Duration kDefaultCallTimeout = std::chrono::milliseconds(5000);

struct SpawnOptions {
  std::string name;                  // registered name; empty: none. Taken -> kAlreadyExists
  std::size_t mailbox_capacity = 0;  // messages; 0: the runtime's default
  OverflowPolicy overflow = OverflowPolicy::kReject;
  bool trap_exit = false;  // exit signals become Exit messages (kill is never trapped)
};

// Lets outside work (a network reply, a child OS process, a thread pool) wake a process
// waiting in Context::await_external. Copyable, thread-safe; the first complete() wins, later
// ones are ignored; completing after the process gave up or exited is harmless.
class Completion {
 public:
  void complete(Result<std::any> result) const;

 private:
  friend class WaitAwaiter;
  explicit Completion(std::shared_ptr<internal::CompletionState> s) : s_(std::move(s)) {}
  std::shared_ptr<internal::CompletionState> s_;
};

// ---- awaitables (returned by Context; co_await them at once) ----

// Kept small: it lives in the frame of every process waiting for a message. The message
// itself waits in the process, not here.
class ReceiveAwaiter {
 public:
  bool await_ready() { return ready(nullptr); }
  void await_suspend(std::coroutine_handle<> h);
  std::optional<Message> await_resume();

 protected:
  friend class Context;
  ReceiveAwaiter(internal::Process* p, Duration timeout) : p_(p), timeout_(timeout) {}
  bool ready(const std::function<bool(const Message&)>* pred);
  internal::Process* p_;
  Duration timeout_;
};

// co_await ctx.receive() -> Message (waits as long as it takes).
class ReceiveAnyAwaiter : public ReceiveAwaiter {
 public:
  Message await_resume() { return *ReceiveAwaiter::await_resume(); }

 private:
  friend class Context;
  using ReceiveAwaiter::ReceiveAwaiter;
};

// co_await ctx.receive_if(pred, timeout) -> std::optional<Message>.
class ReceiveIfAwaiter : public ReceiveAwaiter {
 public:
  bool await_ready() { return ready(&pred_); }

 private:
  friend class Context;
  ReceiveIfAwaiter(internal::Process* p, Duration timeout, std::function<bool(const Message&)> pred)
      : ReceiveAwaiter(p, timeout), pred_(std::move(pred)) {}
  std::function<bool(const Message&)> pred_;
};

class SendAwaiter {
 public:
  bool await_ready();
  void await_suspend(std::coroutine_handle<> h);
  Result<void> await_resume();

 private:
  friend class Context;
  SendAwaiter(internal::Process* p, Pid to, std::any v) : p_(p), to_(to), value_(std::move(v)) {}
  internal::Process* p_;
  Pid to_;
  std::any value_;
  Result<void> result_;
};

class CallAwaiter {
 public:
  bool await_ready();
  void await_suspend(std::coroutine_handle<> h);
  Result<Message> await_resume();

 private:
  friend class Context;
  CallAwaiter(internal::Process* p, Pid to, std::any v, Duration timeout)
      : p_(p), to_(to), value_(std::move(v)), timeout_(timeout) {}
  internal::Process* p_;
  Pid to_;
  std::any value_;
  Duration timeout_;
  bool by_deadline_ = false;  // the process deadline, not `timeout_`, bounds this wait
  std::optional<Result<Message>> result_;
};

class DownAwaiter {
 public:
  bool await_ready();
  void await_suspend(std::coroutine_handle<> h);
  std::optional<Down> await_resume();

 private:
  friend class Context;
  DownAwaiter(internal::Process* p, MonitorRef ref, Duration timeout) : p_(p), ref_(ref), timeout_(timeout) {}
  internal::Process* p_;
  MonitorRef ref_;
  Duration timeout_;
  std::optional<Down> got_;
};

// Sleep, yield, fd readiness and outside work share one shape: suspend until a token fires.
class WaitAwaiter {
 public:
  enum class Op : std::uint8_t { kSleep, kYield, kFd, kExternal };
  bool await_ready();
  void await_suspend(std::coroutine_handle<> h);
  Result<std::any> await_resume();

 private:
  friend class Context;
  WaitAwaiter(internal::Process* p, Op op, Duration timeout) : p_(p), op_(op), timeout_(timeout) {}
  internal::Process* p_;
  Op op_;
  Duration timeout_;
  bool by_deadline_ = false;
  int fd_ = -1;
  unsigned events_ = 0;
  std::function<void(Completion)> start_;
  std::optional<Result<std::any>> result_;
};

class Context;

// Restores the previous deadline of its process when it goes out of scope.
class DeadlineScope {
 public:
  DeadlineScope(const DeadlineScope&) = delete;
  DeadlineScope& operator=(const DeadlineScope&) = delete;
  ~DeadlineScope();

 private:
  friend class Context;
  DeadlineScope(internal::Process* p, TimePoint previous) : p_(p), previous_(previous) {}
  internal::Process* p_;
  TimePoint previous_;
};

class Context {
 public:
  Pid self() const;
  Runtime& runtime() const;
  Environment& env() const;
  TimePoint now() const;

  // ---- receiving ----
  // The next message, in arrival order.
  ReceiveAnyAwaiter receive();
  // The next message, or nullopt after `timeout`.
  ReceiveAwaiter receive_for(Duration timeout);
  // Selective receive: the first queued message for which pred is true (others stay queued,
  // in order), or nullopt after `timeout`. pred must be a pure function of the message.
  ReceiveIfAwaiter receive_if(std::function<bool(const Message&)> pred, Duration timeout = kInfinite);

  // ---- sending ----
  // Fire and forget. Fails with kNoProc if `to` does not exist, kMailboxFull if its mailbox is
  // full and its policy is kReject; under kSuspendSender this process waits for room.
  template <class T>
  SendAwaiter send(Pid to, T&& value) {
    return SendAwaiter(p_, to, std::any(std::forward<T>(value)));
  }
  // Never suspends: under kSuspendSender a full mailbox gives kMailboxFull.
  template <class T>
  Result<void> try_send(Pid to, T&& value) {
    return try_send_any(to, std::any(std::forward<T>(value)));
  }
  Result<void> try_send_any(Pid to, std::any value);

  // Request and reply: the result is the reply message, or kTimeout after `timeout`, kNoProc
  // if `to` does not exist or exits before replying (the error names its exit reason),
  // kMailboxFull if the request could not be queued. Never hangs. A late reply is dropped.
  template <class T>
  CallAwaiter call(Pid to, T&& request, Duration timeout = kDefaultCallTimeout) {
    return CallAwaiter(p_, to, std::any(std::forward<T>(request)), timeout);
  }
  // Answers a request received with is_call(). Replying twice or to a non-call is ignored.
  template <class T>
  void reply(const Message& request, T&& value) {
    reply_any(request, std::any(std::forward<T>(value)));
  }
  void reply_any(const Message& request, std::any value);

  // ---- time ----
  // Sends `value` to `to` (from this process) after `delay`. A timer sent to this process
  // itself is delivered even when its mailbox is full (over capacity; never dropped by
  // kDropOldest): a process's own schedule is not lost to a burst of other messages. Sent to
  // another process, it is an ordinary send (the target's overflow policy applies; a full
  // kReject or kSuspendSender mailbox drops it).
  template <class T>
  TimerRef send_after(Pid to, Duration delay, T&& value) {
    return send_after_any(to, delay, std::any(std::forward<T>(value)));
  }
  TimerRef send_after_any(Pid to, Duration delay, std::any value);
  // True if the timer was cancelled before it fired.
  bool cancel_timer(TimerRef ref);
  WaitAwaiter sleep(Duration d);
  // Lets other processes run; this one is queued again at once.
  WaitAwaiter yield();

  // ---- outside work ----
  // Waits until fd is ready for `events` (kFdReadable / kFdWritable): the ready bits, or
  // kTimeout, or kInvalidArgument for a bad fd.
  WaitAwaiter wait_fd(int fd, unsigned events, Duration timeout = kInfinite);
  // Calls start(completion) and waits until the completion is completed (its result) or
  // `timeout` passes (kTimeout). The mechanism for network replies and child OS processes.
  WaitAwaiter await_external(std::function<void(Completion)> start, Duration timeout = kInfinite);

  // ---- deadlines ----
  // The deadline this process's waits honour: TimePoint::max() when there is none. When it
  // passes first, call, sleep, wait_fd, await_external, wait_down and a suspended send end
  // with kDeadlineExceeded (a call that is already late is not sent at all), and
  // receive_for/receive_if return nullopt. This is how a deadline propagates into nested
  // calls: whatever they await inside this process cannot outlive it.
  TimePoint deadline() const;
  // Until the scope ends, the deadline is min(current deadline, t): nested scopes can only
  // shorten it.
  [[nodiscard]] DeadlineScope with_deadline(TimePoint t);
  [[nodiscard]] DeadlineScope with_timeout(Duration d) { return with_deadline(add_saturating(now(), d)); }

  // ---- processes ----
  Result<Pid> spawn(Behavior behavior, SpawnOptions options = {});
  // Spawns and links atomically (the child cannot exit unlinked).
  Result<Pid> spawn_link(Behavior behavior, SpawnOptions options = {});
  // Bidirectional, at most one per pair. Linking a process that does not exist delivers an
  // exit signal with reason noproc to this process.
  void link(Pid other);
  void unlink(Pid other);
  // One-way and stackable. A Down message arrives when `target` exits, at once (reason
  // noproc) if it does not exist.
  MonitorRef monitor(Pid target);
  // True if the monitor was active; a Down for it will not be delivered afterwards.
  bool demonitor(MonitorRef ref);
  // Waits for the Down of monitor `ref` without scanning the mailbox for it (other messages
  // stay queued): the Down, or nullopt after `timeout` (the monitor stays active) or if `ref`
  // is not an active monitor of this process.
  DownAwaiter wait_down(MonitorRef ref, Duration timeout = kInfinite);
  // Sends an exit signal (Erlang's exit/2). kill cannot be trapped; normal is ignored by a
  // target that does not trap exits.
  void send_exit(Pid target, ExitReason reason);
  // send_exit(target, ExitReason::kill()) from an owner stopping work it started (a supervisor
  // shutting a child down, a hedge cancelling its losing attempts): the target's `killed`
  // exit is expected, so the runtime does not report it as a crash (docs/logging.md).
  void kill_on_purpose(Pid target);
  // Ends this process now with `reason` (normal, shutdown, ...), unwinding its coroutines.
  [[noreturn]] void exit(ExitReason reason);
  void set_trap_exit(bool on);
  bool trap_exit() const;
  Result<void> register_name(std::string name);
  std::optional<Pid> whereis(const std::string& name) const;

  // Messages queued in this process's mailbox.
  std::size_t mailbox_size() const;

 private:
  friend class internal::Process;
  explicit Context(internal::Process* p) : p_(p) {}
  internal::Process* p_;
};

// Thrown by Context::exit to unwind the process; caught by the runtime. Never catch it.
struct ProcessExitRequest {
  ExitReason reason;
};

}  // namespace nines
