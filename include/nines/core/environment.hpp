// nines/core/environment.hpp: the one seam through which nines reaches time, randomness,
// threads and the event loop.
//
// Code outside the environment never reads a real clock, calls rand/std::random_device or
// starts a std::thread (scripts/check_env_seam.sh enforces this in the test command). Two
// implementations exist:
//  - RealEnvironment: the monotonic clock, a seeded per-thread generator, real threads and an
//    epoll event loop on a thread of its own.
//  - SimEnvironment: one thread, a virtual clock that moves only when told, one seeded
//    generator; timers fire and file descriptors are polled only when the owner drives it.
//    The same seed always gives the same sequence. Only it fires fault points
//    (core/fault.hpp), and only those set_faults turns on.
//
//   auto env = make_real_environment({.log_level = LogLevel::kInfo});  // production
//   TimePoint t = env->now();                                          // never a real clock directly
//   std::uint64_t r = env->random_u64();
//   env->add_timer(t + 1s, [] { ... });                               // on the event-loop thread
//
//   SimEnvironment sim(/*seed=*/7);  // tests: nothing moves until the owner drives it
//   sim.add_timer(sim.now() + 5s, [&] { fired = true; });
//   sim.set_now(sim.now() + 5s);
//   sim.fire_due_timers();           // fired == true; the same seed gives the same run
//   // Runtime::create(sim) drives all of this itself (Runtime::advance).
//
// Thread-safety: every member of Environment may be called from any thread. Event-loop
// callbacks run one at a time, on the loop thread or on a thread that called poll_events
// (real), or inside the driving call (sim); they must be short and must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "nines/core/fault.hpp"
#include "nines/core/log.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"

namespace nines {

using TimerId = std::uint64_t;  // 0 is never a valid id
using WatchId = std::uint64_t;  // 0 is never a valid id

// Readiness bits for watch_fd.
inline constexpr unsigned kFdReadable = 1;
inline constexpr unsigned kFdWritable = 2;
inline constexpr unsigned kFdError = 4;  // error or hang-up; always reported

class Thread {
 public:
  virtual ~Thread() = default;
  virtual void join() = 0;
};

class Environment {
 public:
  virtual ~Environment() = default;

  // True for SimEnvironment: one thread, virtual time, driven by its owner.
  virtual bool deterministic() const = 0;

  // Monotonic time. Never goes backwards.
  virtual TimePoint now() const = 0;
  // Wall-clock time as nanoseconds since the Unix epoch, for timestamps shown to people.
  // In the sim it is a fixed epoch plus the virtual monotonic time.
  virtual std::int64_t unix_time_ns() const = 0;

  // Uniformly distributed 64 random bits.
  virtual std::uint64_t random_u64() = 0;
  // Uniform in [0, 1).
  double random_double() { return static_cast<double>(random_u64() >> 11) * 0x1.0p-53; }
  // Uniform in [0, n); n > 0.
  std::uint64_t random_below(std::uint64_t n) { return n == 0 ? 0 : random_u64() % n; }

  // Number of worker threads a runtime uses by default (real: one per core; sim: 1).
  virtual unsigned default_workers() const = 0;

  // Starts a thread running body. The sim refuses (it has exactly one thread): error
  // kInvalidArgument.
  virtual Result<std::unique_ptr<Thread>> start_thread(std::string name, std::function<void()> body) = 0;

  // Event loop: runs fn once at or after deadline. Returns a non-zero id.
  virtual TimerId add_timer(TimePoint deadline, std::function<void()> fn) = 0;
  // True if the timer was cancelled before it fired (its callback will not run).
  virtual bool cancel_timer(TimerId id) = 0;

  // One-shot readiness watch: fn(ready_bits) runs once when fd is ready for one of `events`
  // (kFdReadable and/or kFdWritable) or has an error. Fails with kInvalidArgument for a bad
  // fd or events == 0.
  virtual Result<WatchId> watch_fd(int fd, unsigned events, std::function<void(unsigned)> fn) = 0;
  // Re-armable readiness watch: like watch_fd, fn(ready_bits) runs once when fd is ready,
  // but the watch stays registered, disarmed, until rearm_watch arms it again (from any
  // thread; the events may change). For a socket watched again after every event (the HTTP
  // client's connections), one system call per event instead of the two a new one-shot
  // watch costs; and unlike a level-triggered watch it never fires again while the work its
  // callback queued is still waiting. Removed by cancel_watch. Errors as watch_fd.
  virtual Result<WatchId> watch_fd_rearmable(int fd, unsigned events, std::function<void(unsigned)> fn) = 0;
  // Arms a re-armable watch for `events` (kFdReadable and/or kFdWritable). Arming one that is
  // armed changes its events. False if the watch is gone (or was a one-shot watch).
  virtual bool rearm_watch(WatchId id, unsigned events) = 0;
  // True if the watch was removed before its callback ran (a re-armable watch: if it was
  // still registered; a callback already taken for running by the loop thread may still run
  // once, so fn must check whether it is still wanted).
  virtual bool cancel_watch(WatchId id) = 0;

  // The event loop run by other threads (a netpoller, as Go's and Tokio's idle workers
  // are): an idle runtime worker waits for events itself and runs the process an event woke,
  // with no hand-off to another thread (one thread wake-up per event instead of two). Only
  // the real environment does this; the sim's defaults do nothing.
  //
  // attach_pollers: from now on threads are expected to call poll_events; the loop thread
  // stops waiting in epoll itself and only watches that somebody polls: when nobody has for
  // 10-100 ms (every poller busy; 1 s while one waits in epoll), it polls without waiting and then calls on_unpolled
  // (the runtime wakes a sleeping worker there to take the loop over). Returns an id for detach_pollers (0: not
  // supported). on_unpolled runs on the loop thread; after detach_pollers returns it never runs again.
  virtual std::uint64_t attach_pollers(std::function<void()> /*on_unpolled*/) { return 0; }
  virtual void detach_pollers(std::uint64_t /*id*/) {}
  // If no other thread runs the loop now: takes it, polls the fds, runs the callbacks of
  // what is ready and of the due timers, gives it back and returns true. It waits for an
  // event (until an fd is ready, the earliest timer's deadline or interrupt_poll) only if
  // `block` and may_block() (called while the loop is held, right before the wait; may be
  // empty) says so. Returns false at once if another thread runs the loop. Never from inside
  // an event-loop callback.
  virtual bool poll_events(bool /*block*/, const std::function<bool()>& /*may_block*/) { return false; }
  // Makes the poll_events that waits now return (or, if none waits, the next wait return at
  // once).
  virtual void interrupt_poll() {}

  // The logger every layer reports through (core/log.hpp): crashes, supervisor give-ups,
  // breaker transitions, model fallbacks, workflows stopped for an operator. It lives as long
  // as the environment.
  virtual Logger& logger() = 0;

  // Fault points (core/fault.hpp): true if `point` fires now. Never in the real environment;
  // in the SimEnvironment only for the points SimEnvironment::set_faults turned on, drawn
  // from the seed. Off, it is one test of a plain bool: no call, no atomic, no allocation.
  bool fault(FaultPoint point) { return faults_on_ && fault_fires(point); }
  // After `point` fired: how long its delay lasts (uniform in [1 ms, FaultOptions::max_delay]).
  // Zero in the real environment.
  virtual Duration fault_delay(FaultPoint) { return Duration::zero(); }
  // After a point fired: a uniform draw in [0, n) for its other choices, from the fault
  // stream (n > 0). 0 in the real environment.
  virtual std::uint64_t fault_draw(std::uint64_t) { return 0; }

 protected:
  // Draws whether `point` fires; reached only while faults_on_.
  virtual bool fault_fires(FaultPoint) { return false; }
  // True while some fault point may fire. Written only by the SimEnvironment, on the thread
  // that owns it; the real environment never sets it.
  bool faults_on_ = false;
};

struct RealEnvironmentOptions {
  unsigned workers = 0;    // 0: one per online core
  std::uint64_t seed = 0;  // 0: seeded from std::random_device
  // Reports at this level and above are logged. Default: notice (OTP's default level).
  LogLevel log_level = LogLevel::kNotice;
  // Where they go; null: stderr, in `log_format`.
  std::shared_ptr<LogSink> log_sink;
  LogFormat log_format = LogFormat::kHuman;
  LogRateLimit log_rate_limit;
};

// Creates the production environment and starts its event-loop thread.
std::unique_ptr<Environment> make_real_environment(const RealEnvironmentOptions& options = {});

// The deterministic environment. Single-threaded: every member must be called from the
// thread that owns it.
class SimEnvironment final : public Environment {
 public:
  explicit SimEnvironment(std::uint64_t seed);
  ~SimEnvironment() override;

  std::uint64_t seed() const { return seed_; }

  bool deterministic() const override { return true; }
  TimePoint now() const override;
  std::int64_t unix_time_ns() const override;
  std::uint64_t random_u64() override;
  unsigned default_workers() const override { return 1; }
  Result<std::unique_ptr<Thread>> start_thread(std::string name, std::function<void()> body) override;
  TimerId add_timer(TimePoint deadline, std::function<void()> fn) override;
  bool cancel_timer(TimerId id) override;
  Result<WatchId> watch_fd(int fd, unsigned events, std::function<void(unsigned)> fn) override;
  Result<WatchId> watch_fd_rearmable(int fd, unsigned events, std::function<void(unsigned)> fn) override;
  bool rearm_watch(WatchId id, unsigned events) override;
  bool cancel_watch(WatchId id) override;

  // Deadline of the earliest pending timer, or TimePoint::max() if none.
  TimePoint next_timer_deadline() const;
  // Moves the virtual clock forward to t (never backwards). Fires nothing.
  void set_now(TimePoint t);
  // Runs the callbacks of all timers due at now(), in deadline order (ties: creation order).
  // Returns how many ran.
  std::size_t fire_due_timers();
  // Polls every watched fd without blocking and runs the callbacks of the ready ones.
  std::size_t poll_fds();
  std::size_t pending_watches() const;

  // Turns fault points on as `options` says (all off: FaultOptions{}). Their draws come from a
  // stream of their own, seeded from seed(): the same seed and options fire the same points at
  // the same moments, and random_u64() gives the same values with faults on or off.
  // A probability outside [0, 1] is clamped.
  void set_faults(const FaultOptions& options);
  const FaultOptions& faults() const;
  // How often `point` fired since this environment was made.
  std::uint64_t fault_count(FaultPoint point) const;
  // How often any point fired.
  std::uint64_t faults_fired() const;
  Duration fault_delay(FaultPoint point) override;
  std::uint64_t fault_draw(std::uint64_t n) override;

  // Level debug, every record kept in captured_logs() (the newest 10,000), time-stamped with
  // virtual time; rate-limited as the real one is, on the virtual clock.
  Logger& logger() override { return logger_; }
  CaptureSink& captured_logs() { return *capture_; }

 private:
  bool fault_fires(FaultPoint point) override;

  struct State;
  std::uint64_t seed_;
  std::unique_ptr<State> state_;
  std::shared_ptr<CaptureSink> capture_;
  Logger logger_;  // after state_: destroyed first (its last report reads the clock)
};

}  // namespace nines
