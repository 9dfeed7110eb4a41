// nines/runtime/supervisor.hpp: OTP supervisors (one_for_one, one_for_all, rest_for_one,
// simple_one_for_one), restart intensity with escalation, restart types, shutdown specs,
// significant children with auto_shutdown, and per-child restart backoff (beyond OTP, as in
// Akka).
//
//   SupervisorSpec workers{.name = "workers", .strategy = Strategy::kOneForOne, .intensity = 3, .period = 5s};
//   workers.children.push_back(ChildSpec::worker("fetcher", fetcher, {.name = "fetcher"}));
//   ChildSpec indexer = ChildSpec::worker("indexer", index_loop);
//   indexer.restart = RestartType::kTransient;  // restarted only after an abnormal exit
//   indexer.backoff = BackoffOptions{};         // 100 ms, 200 ms, ... between restarts
//   workers.children.push_back(std::move(indexer));
//   SupervisorSpec root{.name = "root", .strategy = Strategy::kOneForAll};
//   root.children.push_back(ChildSpec::supervisor("workers", std::move(workers)));
//   Pid sup = start_supervisor(*rt, root).value();  // every child started, or kStartFailed
//   // from a process, at run time (named first: g++ 12, task.hpp):
//   ChildSpec extra = ChildSpec::worker("extra", extra_loop);
//   Result<Pid> pid = co_await start_child(ctx, *ctx.whereis("workers"), std::move(extra));
//   // stop the tree: children stop in reverse order
//   rt->send_exit(sup, ExitReason::shutdown());
//
// Only its parent's exit signals stop a supervisor, as in OTP: a `shutdown` from another
// process (ctx.send_exit) reaches it as a message and is ignored. A root (start_supervisor)
// has no parent process: stop it from outside, Runtime::send_exit (from Pid{}), also from
// inside a process (ctx.runtime().send_exit(sup, ExitReason::shutdown())); a linked one
// (start_supervisor_link) stops with the process it is linked to.
//
// A supervisor is a process that traps exits and links to its children. Its start is
// synchronous: start_supervisor() returns after every child started, in order, or returns
// kStartFailed naming the first child that failed (the children already started are killed,
// nothing is left running). Children stop in reverse order. When more than `intensity`
// restarts happen within `period`, the supervisor stops all its children and exits with
// reason `shutdown`, as OTP's does; like OTP's supervisor report, the kIntensityExceeded event
// (child_id: the child whose exit or failed start went over; reason:
// {shutdown, reached_max_restart_intensity}) and the supervisor_gave_up log line say why. Its
// parent supervisor then applies its own strategy (escalation). Every start, exit, restart, give-up and escalation is
// reported on Runtime::events().
//
// The control functions (start_child, terminate_child, ...) are calls to the supervisor
// process and may be used from any process.
#pragma once

#include <any>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/runtime/process.hpp"

namespace nines {

class Runtime;
struct SupervisorSpec;

enum class Strategy : std::uint8_t {
  kOneForOne,        // restart only the failed child
  kOneForAll,        // stop all the others (reverse order), restart all (in order)
  kRestForOne,       // stop the children started after it, restart it and them
  kSimpleOneForOne,  // all children are dynamic instances of the one template child
};

enum class RestartType : std::uint8_t {
  kPermanent,  // always restarted
  kTransient,  // restarted only after an abnormal exit (not normal, shutdown, {shutdown, _})
  kTemporary,  // never restarted, also not when a sibling's failure takes it down
};

enum class ChildType : std::uint8_t { kWorker, kSupervisor };

enum class AutoShutdown : std::uint8_t {
  kNever,           // default
  kAnySignificant,  // shut down when any significant child exits by itself
  kAllSignificant,  // shut down when all significant children have exited by themselves
};

struct ShutdownSpec {
  enum class Kind : std::uint8_t { kBrutalKill, kTimeout, kInfinity };
  Kind kind = Kind::kTimeout;
  Duration timeout = std::chrono::milliseconds(5000);  // kTimeout: wait this long, then kill

  static ShutdownSpec brutal_kill() { return {Kind::kBrutalKill, Duration::zero()}; }
  static ShutdownSpec after(Duration timeout) { return {Kind::kTimeout, timeout}; }
  static ShutdownSpec infinity() { return {Kind::kInfinity, Duration::zero()}; }
};

// Delays restarts of a failing child: min_delay * multiplier^n (n = restarts since the child
// last ran healthily for reset_after), multiplied by a random factor in [1, 1 + jitter),
// capped at max_delay. Off unless set on the child.
struct BackoffOptions {
  Duration min_delay = std::chrono::milliseconds(100);
  Duration max_delay = std::chrono::seconds(30);
  double multiplier = 2.0;  // >= 1
  double jitter = 0.2;      // in [0, 1]
  Duration reset_after = std::chrono::seconds(60);
};

// Given to a child's start function: it starts the child linked to the supervisor.
class StartContext {
 public:
  Result<Pid> spawn_link(Behavior behavior, SpawnOptions options = {});
  Result<Pid> start_supervisor_link(const SupervisorSpec& spec);
  Pid supervisor() const;
  Runtime& runtime() const;
  // simple_one_for_one: the argument given to start_dynamic_child (empty otherwise).
  const std::any& arg() const { return *arg_; }

 private:
  friend struct SupervisorAccess;
  StartContext(internal::Process* sup, const std::any* arg) : sup_(sup), arg_(arg) {}
  internal::Process* sup_;
  const std::any* arg_;
};

using StartFn = std::function<Result<Pid>(StartContext&)>;

struct ChildSpec {
  std::string id;  // unique among the supervisor's static children
  StartFn start;
  RestartType restart = RestartType::kPermanent;
  std::optional<ShutdownSpec> shutdown;  // default: workers after(5000 ms), supervisors infinity
  ChildType type = ChildType::kWorker;
  bool significant = false;  // only transient or temporary children may be significant
  std::optional<BackoffOptions> backoff;

  static ChildSpec worker(std::string id, Behavior behavior, SpawnOptions options = {});
  static ChildSpec supervisor(std::string id, SupervisorSpec spec);
};

struct SupervisorSpec {
  std::string name;  // registered name if non-empty; always the label in events
  Strategy strategy = Strategy::kOneForOne;
  int intensity = 3;                          // max restarts within period (Elixir's default 3)...
  Duration period = std::chrono::seconds(5);  // ...per 5 s (OTP's default is 1 per 5 s)
  AutoShutdown auto_shutdown = AutoShutdown::kNever;
  std::vector<ChildSpec> children;   // simple_one_for_one: exactly one, the template
  std::size_t mailbox_capacity = 0;  // 0: runtime default
};

// Starts a supervisor not linked to anything (a root). Errors: kInvalidArgument for a bad
// spec (says which field), kAlreadyExists for a taken name, kStartFailed naming the child.
Result<Pid> start_supervisor(Runtime& rt, const SupervisorSpec& spec);
// Starts a supervisor linked to the calling process.
Result<Pid> start_supervisor_link(Context& ctx, const SupervisorSpec& spec);

struct ChildInfo {
  std::string id;
  Pid pid;  // Pid{} when not running (restarting, or a stopped static child)
  ChildType type;
  bool restarting;  // waiting for a backoff delay or a retried start
};

struct ChildCounts {
  std::size_t specs = 0;
  std::size_t active = 0;
  std::size_t supervisors = 0;
  std::size_t workers = 0;
  std::uint64_t restarts = 0;  // restarts done by this supervisor since it started
};

// Adds a child to a one_for_one/one_for_all/rest_for_one supervisor (kAlreadyExists if the id
// is taken) and starts it.
Task<Result<Pid>> start_child(Context& ctx, Pid sup, ChildSpec spec, Duration timeout = kDefaultCallTimeout);
// simple_one_for_one: starts an instance of the template with `arg` (StartContext::arg()).
Task<Result<Pid>> start_dynamic_child(Context& ctx, Pid sup, std::any arg, Duration timeout = kDefaultCallTimeout);
// Stops a static child by id (its spec stays, restart_child starts it again) or a dynamic one.
Task<Result<void>> terminate_child(Context& ctx, Pid sup, std::string id, Duration timeout = kDefaultCallTimeout);
Task<Result<void>> terminate_child(Context& ctx, Pid sup, Pid child, Duration timeout = kDefaultCallTimeout);
Task<Result<Pid>> restart_child(Context& ctx, Pid sup, std::string id, Duration timeout = kDefaultCallTimeout);
Task<Result<void>> delete_child(Context& ctx, Pid sup, std::string id, Duration timeout = kDefaultCallTimeout);
Task<Result<std::vector<ChildInfo>>> which_children(Context& ctx, Pid sup, Duration timeout = kDefaultCallTimeout);
Task<Result<ChildCounts>> count_children(Context& ctx, Pid sup, Duration timeout = kDefaultCallTimeout);

}  // namespace nines
