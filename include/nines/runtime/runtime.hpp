// nines/runtime/runtime.hpp: the runtime that runs processes.
//
//   auto env = make_real_environment();
//   auto rt = Runtime::create(*env).value();
//   Pid counter = rt->spawn([](Context& ctx) -> Task<> {
//     for (int n = 0;;) {
//       Message m = co_await ctx.receive();
//       if (m.is_call()) ctx.reply(m, ++n);
//     }
//   }, {.name = "counter"}).value();
//   auto client = rt->spawn_watched([&](Context& ctx) -> Task<> {
//     std::string next = "next";  // named first: g++ 12 and temporaries in co_await (task.hpp)
//     Result<Message> r = co_await ctx.call(counter, next, 1s);
//     if (r.ok()) std::printf("%d\n", *r->get<int>());
//   }).value();
//   client.exit->wait();  // blocks this thread (not a process) until the client ends
//   rt->send_exit(counter, ExitReason::kill());
//
//   // Deterministic (tests, simulations): one thread, virtual time, driven by the caller.
//   SimEnvironment sim(/*seed=*/42);
//   auto srt = Runtime::create(sim).value();
//   srt->spawn(...);
//   srt->advance(10s);  // fires the timers due, runs processes in an order drawn from the seed
//
// A Runtime owns a scheduler (N worker threads on a RealEnvironment; the calling thread on a
// SimEnvironment), a process table, a name registry and the supervision event bus. Everything
// it does with time, randomness, threads and I/O goes through its Environment.
//
// Thread-safety: all members may be called from any thread, except run_until_idle() and
// advance(), which drive a deterministic runtime from the thread that owns its
// SimEnvironment.
#pragma once

#include <any>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/runtime/events.hpp"
#include "nines/runtime/process.hpp"

namespace nines {

struct RuntimeOptions {
  unsigned workers = 0;                            // 0: environment default (one per core)
  std::size_t default_mailbox_capacity = 1 << 16;  // messages per mailbox unless spawned with another
  unsigned reductions = 256;                       // receives a process may complete before it yields its worker
  // Real environment: an idle worker waits in the environment's event loop itself and runs
  // the process an event woke, with no hand-off (Environment::poll_events; one thread wake-up
  // per event instead of two). false: the loop thread alone runs event callbacks, so they
  // never wait behind a long process run (at the cost of that hand-off).
  bool poll_in_workers = true;
};

// Outcome of a process, watched from outside the runtime (tests, the CLI).
class ExitWatch {
 public:
  virtual ~ExitWatch() = default;
  virtual bool done() const = 0;
  // Blocks the calling (non-worker) thread until the process exits. Real environment only.
  virtual ExitReason wait() = 0;
  // Precondition: done().
  virtual ExitReason reason() const = 0;
};

class Runtime {
 public:
  // Fails with kInvalidArgument for bad options (for example workers > 1 on a SimEnvironment).
  static Result<std::unique_ptr<Runtime>> create(Environment& env, const RuntimeOptions& options = {});
  // Stops the workers and destroys every process still alive (their coroutines unwind; no
  // exit signals are sent).
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  Environment& env() const;
  const RuntimeOptions& options() const;

  Result<Pid> spawn(Behavior behavior, SpawnOptions options = {});

  // Sends from outside the runtime (the message's from() is Pid{}).
  template <class T>
  Result<void> send(Pid to, T&& value) {
    return send_any(to, std::any(std::forward<T>(value)));
  }
  Result<void> send_any(Pid to, std::any value);
  // Exit signal from outside (Exit::from is Pid{}).
  void send_exit(Pid target, ExitReason reason);

  std::optional<Pid> whereis(const std::string& name) const;
  bool alive(Pid pid) const;
  std::size_t process_count() const;

  SupervisionEvents& events();

  // Watch a process from outside. If it does not exist (or already exited), the watch is
  // done with noproc.
  std::shared_ptr<ExitWatch> watch_exit(Pid pid);

  // Spawns and watches atomically: the watch is in place before the process first runs, so
  // it always sees the real exit reason, however quickly the process ends.
  struct Watched {
    Pid pid;
    std::shared_ptr<ExitWatch> exit;
  };
  Result<Watched> spawn_watched(Behavior behavior, SpawnOptions options = {});

  // ---- deterministic driving (SimEnvironment only) ----
  // Runs runnable processes (in an order drawn from the environment's seed), due timers and
  // ready fds until nothing is left to do at the current virtual time. Returns the number of
  // process runs.
  std::size_t run_until_idle();
  // Moves virtual time forward by d, firing every timer in deadline order and running
  // processes to idle after each, then runs to idle at the final time.
  void advance(Duration d);

  internal::RuntimeCore& core() { return *core_; }

 private:
  explicit Runtime(std::shared_ptr<internal::RuntimeCore> core);
  std::shared_ptr<internal::RuntimeCore> core_;
};

}  // namespace nines
