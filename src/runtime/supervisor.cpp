// Supervisors: a process that traps exits, links to its children and restarts them by its
// strategy, within its restart intensity.
#include "nines/runtime/supervisor.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <list>
#include <unordered_map>
#include <unordered_set>

#include "nines/core/check.hpp"
#include "runtime/process_internal.hpp"

namespace nines {

using internal::Process;
using internal::RuntimeCore;

struct SupervisorAccess {
  static StartContext make(Process* sup, const std::any* arg) { return StartContext(sup, arg); }
};

namespace {

// ---- requests (calls to the supervisor process) ----
struct StartChildReq {
  ChildSpec spec;
};
struct StartDynamicReq {
  std::any arg;
};
struct TerminateByIdReq {
  std::string id;
};
struct TerminateByPidReq {
  Pid pid;
};
struct RestartChildReq {
  std::string id;
};
struct DeleteChildReq {
  std::string id;
};
struct WhichChildrenReq {};
struct CountChildrenReq {};
// Sent to itself when a delayed (backoff) or retried restart is due.
struct RestartDue {
  std::vector<std::uint64_t> keys;
};

struct Child {
  std::uint64_t key = 0;
  ChildSpec spec;
  Pid pid;
  std::any arg;
  TimePoint started_at{};
  int attempt = 0;       // restarts since the child last ran healthily (backoff)
  ExitReason last_exit;  // of its last run (what a restart is reported with)
  bool restarting = false;
  bool dynamic = false;  // a simple_one_for_one instance
};

ShutdownSpec effective_shutdown(const ChildSpec& c) {
  if (c.shutdown) return *c.shutdown;
  return c.type == ChildType::kSupervisor ? ShutdownSpec::infinity()
                                          : ShutdownSpec::after(std::chrono::milliseconds(5000));
}

std::string label_of(const SupervisorSpec& spec, Pid pid) {
  return spec.name.empty() ? "supervisor " + pid.to_string() : spec.name;
}

Result<void> validate_child(const ChildSpec& c, const std::string& where) {
  if (c.id.empty()) return Error(ErrorKind::kInvalidArgument, where + ": id is empty");
  if (!c.start) return Error(ErrorKind::kInvalidArgument, where + " ('" + c.id + "'): start function is empty");
  if (c.significant && c.restart == RestartType::kPermanent) {
    return Error(ErrorKind::kInvalidArgument,
                 where + " ('" + c.id + "'): a significant child must be transient or temporary");
  }
  if (c.shutdown && c.shutdown->kind == ShutdownSpec::Kind::kTimeout && c.shutdown->timeout < Duration::zero()) {
    return Error(ErrorKind::kInvalidArgument, where + " ('" + c.id + "'): shutdown timeout is negative");
  }
  if (c.backoff) {
    const BackoffOptions& b = *c.backoff;
    if (b.min_delay < Duration::zero() || b.max_delay < b.min_delay) {
      return Error(ErrorKind::kInvalidArgument, where + " ('" + c.id + "'): backoff needs 0 <= min_delay <= max_delay");
    }
    if (!(b.multiplier >= 1.0) || !(b.jitter >= 0.0 && b.jitter <= 1.0)) {
      return Error(ErrorKind::kInvalidArgument,
                   where + " ('" + c.id + "'): backoff needs multiplier >= 1 and jitter in [0, 1]");
    }
  }
  return {};
}

Result<void> validate(const SupervisorSpec& spec) {
  std::string who = "supervisor '" + spec.name + "'";
  if (spec.intensity < 0) return Error(ErrorKind::kInvalidArgument, who + ": intensity is negative");
  if (spec.period <= Duration::zero()) return Error(ErrorKind::kInvalidArgument, who + ": period must be > 0");
  if (spec.strategy == Strategy::kSimpleOneForOne && spec.children.size() != 1) {
    return Error(ErrorKind::kInvalidArgument,
                 who + ": simple_one_for_one needs exactly one child spec (the template), got " +
                     std::to_string(spec.children.size()));
  }
  std::unordered_set<std::string> ids;
  for (std::size_t i = 0; i < spec.children.size(); ++i) {
    const ChildSpec& c = spec.children[i];
    std::string where = who + ": children[" + std::to_string(i) + "]";
    if (auto r = validate_child(c, where); !r.ok()) return r;
    if (!ids.insert(c.id).second) {
      return Error(ErrorKind::kInvalidArgument, where + ": duplicate child id '" + c.id + "'");
    }
  }
  return {};
}

class Sup {
 public:
  Sup(RuntimeCore& core, SupervisorSpec spec, Pid parent) : core_(core), spec_(std::move(spec)), parent_(parent) {}

  RuntimeCore& core_;
  SupervisorSpec spec_;
  Pid parent_;
  Pid self_;
  Process* proc_ = nullptr;
  std::string label_;
  std::list<Child> children_;
  std::unordered_map<std::uint64_t, std::list<Child>::iterator> by_pid_;
  std::unordered_map<std::uint64_t, std::list<Child>::iterator> by_key_;
  std::deque<TimePoint> restarts_;
  std::uint64_t restart_count_ = 0;
  std::uint64_t next_key_ = 1;

  bool simple() const { return spec_.strategy == Strategy::kSimpleOneForOne; }

  void emit(SupervisionEventType type, Child* c, Pid child = {}, ExitReason reason = {},
            Duration delay = Duration::zero(), bool by_supervisor = false) {
    if (type == SupervisionEventType::kChildExited && c != nullptr) c->last_exit = reason;
    SupervisionEvent ev{type,
                        core_.env.now(),
                        core_.env.unix_time_ns(),
                        self_,
                        label_,
                        c ? c->spec.id : std::string(),
                        child,
                        std::move(reason),
                        delay,
                        by_supervisor};
    core_.events.emit(ev);
  }

  std::list<Child>::iterator add_child(ChildSpec spec, std::any arg, bool dynamic) {
    Child c;
    c.key = next_key_++;
    c.spec = std::move(spec);
    c.arg = std::move(arg);
    c.dynamic = dynamic;
    children_.push_back(std::move(c));
    auto it = std::prev(children_.end());
    bool fresh = by_key_.emplace(it->key, it).second;
    NINES_CHECK_MSG(fresh, "supervisor: child key reused");
    check_indexes();
    return it;
  }

  void erase_child(std::list<Child>::iterator it) {
    if (it->pid) by_pid_.erase(it->pid.id);
    std::size_t erased = by_key_.erase(it->key);
    NINES_CHECK_MSG(erased == 1, "supervisor: erasing a child its key index does not know");
    children_.erase(it);
    check_indexes();
  }

  // The indexes agree with the list: every child has its key in by_key_, and only running
  // children are in by_pid_ (cheap size checks; the entries are checked where they are used).
  void check_indexes() const {
    NINES_DCHECK(by_key_.size() == children_.size());
    NINES_DCHECK(by_pid_.size() <= children_.size());
  }

  // Keys grow with each add_child and children_ is in start order, so a group given in start
  // order has strictly increasing keys.
  static bool in_start_order(const std::vector<std::uint64_t>& keys) {
    return std::adjacent_find(keys.begin(), keys.end(), std::greater_equal<>()) == keys.end();
  }

  // Runs the child's start function. On success the child is running and linked.
  Result<Pid> start_one(Child& c, bool is_restart) {
    // Starting a child that runs would orphan the running one (still linked, never stopped).
    NINES_CHECK_MSG(!c.pid, "supervisor '" + label_ + "': child '" + c.spec.id + "' is started while it runs");
    StartContext sc = SupervisorAccess::make(proc_, &c.arg);
    Result<Pid> r = [&]() -> Result<Pid> {
      try {
        return c.spec.start(sc);
      } catch (const std::exception& ex) {
        return Error(ErrorKind::kStartFailed, std::string("start function threw: ") + ex.what());
      }
    }();
    if (!r.ok()) {
      NINES_LOG(core_.env.logger(), LogLevel::kError, "child_start_failed", "supervisor could not start a child",
                {"supervisor", label_}, {"child", c.spec.id}, {"error", r.error().to_string()});
      emit(SupervisionEventType::kChildStartFailed, &c, Pid{},
           ExitReason::crash("start_failed", r.error().to_string()));
      return Error(ErrorKind::kStartFailed,
                   "supervisor '" + label_ + "': child '" + c.spec.id + "' failed to start: " + r.error().message());
    }
    c.pid = *r;
    c.restarting = false;
    c.started_at = core_.env.now();
    bool fresh = by_pid_.emplace(c.pid.id, by_key_.at(c.key)).second;
    NINES_CHECK_MSG(fresh, "supervisor: pid " + c.pid.to_string() + " indexed for two children");
    if (is_restart) {
      // Notice, not error: the exit itself was reported (process_crashed) if it was abnormal;
      // this is the supervisor doing its job, which an operator still wants to see.
      NINES_LOG(core_.env.logger(), LogLevel::kNotice, "child_restarted", "supervisor restarted a child",
                {"supervisor", label_}, {"child", c.spec.id}, {"pid", c.pid.to_string()},
                {"reason", c.last_exit.to_string()}, {"restarts", restarts_.size()}, {"intensity", spec_.intensity});
    }
    emit(is_restart ? SupervisionEventType::kChildRestarted : SupervisionEventType::kChildStarted, &c, c.pid);
    return c.pid;
  }

  // OTP: restarts older than `period` are forgotten; more than `intensity` left: give up.
  bool record_restart() {
    TimePoint now = core_.env.now();
    // The window is in time order (the clock is monotonic), so forgetting from the front works.
    NINES_DCHECK(restarts_.empty() || restarts_.back() <= now);
    restarts_.push_back(now);
    while (!restarts_.empty() && now - restarts_.front() > spec_.period) restarts_.pop_front();
    ++restart_count_;
    NINES_DCHECK(!restarts_.empty() && now - restarts_.front() <= spec_.period);
    NINES_DCHECK(restarts_.size() <= restart_count_);
    return restarts_.size() <= static_cast<std::size_t>(spec_.intensity);
  }

  Duration backoff_delay(Child& c) {
    if (!c.spec.backoff) return Duration::zero();
    const BackoffOptions& b = *c.spec.backoff;
    if (core_.env.now() - c.started_at >= b.reset_after) c.attempt = 0;
    double base = static_cast<double>(b.min_delay.count()) * std::pow(b.multiplier, c.attempt);
    double d = base * (1.0 + b.jitter * core_.env.random_double());
    d = std::min(d, static_cast<double>(b.max_delay.count()));
    ++c.attempt;
    return Duration(static_cast<Duration::rep>(d));
  }
};

using SupPtr = std::shared_ptr<Sup>;

// If the child already exited by itself, takes its EXIT (still queued: we are still linked, so
// it was not dropped) and reports that exit with the child's own reason, as OTP's
// monitor_child does, rather than as a noproc stop by the supervisor. True if it did.
Task<bool> took_own_exit(Context& ctx, Sup& s, Child& c) {
  Pid pid = c.pid;
  if (ctx.runtime().alive(pid)) co_return false;
  std::function<bool(const Message&)> is_its_exit = [pid](const Message& m) {
    auto* e = m.get<Exit>();
    return e && e->from == pid;
  };
  std::optional<Message> queued = co_await ctx.receive_if(is_its_exit, Duration::zero());
  if (!queued) co_return false;
  s.by_pid_.erase(pid.id);
  c.pid = {};
  s.emit(SupervisionEventType::kChildExited, &c, pid, queued->get<Exit>()->reason);
  co_return true;
}

// Stops one running child by its shutdown spec and waits until it is gone.
Task<> terminate(Context& ctx, Sup& s, Child& c) {
  if (!c.pid) co_return;
  Pid pid = c.pid;
  bool gone = co_await took_own_exit(ctx, s, c);
  if (gone) co_return;
  // As OTP does: monitor, then unlink, so the Down always comes (even if the child unlinked
  // itself) and no EXIT piles up in the mailbox. An EXIT already queued is ignored later.
  MonitorRef ref = ctx.monitor(pid);
  ctx.unlink(pid);
  ShutdownSpec sd = effective_shutdown(c.spec);
  std::optional<Down> down;
  // Its kill (brutal_kill, or after the shutdown timeout) is meant: not reported as a crash.
  if (sd.kind == ShutdownSpec::Kind::kBrutalKill) {
    ctx.kill_on_purpose(pid);
    down = co_await ctx.wait_down(ref);
  } else {
    ctx.send_exit(pid, ExitReason::shutdown());
    down = co_await ctx.wait_down(ref, sd.kind == ShutdownSpec::Kind::kTimeout ? sd.timeout : kInfinite);
    if (!down) {
      ctx.kill_on_purpose(pid);
      down = co_await ctx.wait_down(ref);
    }
  }
  s.by_pid_.erase(pid.id);
  c.pid = {};
  s.emit(SupervisionEventType::kChildExited, &c, pid, down ? down->reason : ExitReason::noproc(), Duration::zero(),
         true);
}

// Stops every child: static ones one by one in reverse start order; dynamic ones all at once.
Task<> terminate_all(Context& ctx, Sup& s) {
  if (!s.simple()) {
    for (auto it = s.children_.rbegin(); it != s.children_.rend(); ++it) co_await terminate(ctx, s, *it);
    co_return;
  }
  ShutdownSpec sd = effective_shutdown(s.spec_.children.front());
  std::unordered_map<std::uint64_t, std::list<Child>::iterator> pending;  // monitor ref -> child
  std::unordered_map<std::uint64_t, ExitReason> own_exit;                 // pid -> reason of an EXIT received
  for (auto it = s.children_.begin(); it != s.children_.end(); ++it) {
    if (!it->pid) continue;
    MonitorRef ref = ctx.monitor(it->pid);
    ctx.unlink(it->pid);
    pending.emplace(ref.id, it);
    if (sd.kind == ShutdownSpec::Kind::kBrutalKill) {
      ctx.kill_on_purpose(it->pid);
    } else {
      ctx.send_exit(it->pid, ExitReason::shutdown());
    }
  }
  Duration budget = sd.kind == ShutdownSpec::Kind::kTimeout ? sd.timeout : kInfinite;
  TimePoint deadline = add_saturating(ctx.now(), budget);
  bool killed = false;
  while (!pending.empty()) {
    Duration left = deadline == TimePoint::max() ? kInfinite : std::max(Duration::zero(), deadline - ctx.now());
    // A plain receive: the supervisor is going away, so it consumes everything. Selective
    // receive would rescan a mailbox that may hold many stale EXITs for every Down.
    auto m = co_await ctx.receive_for(killed ? kInfinite : left);
    if (!m) {
      for (auto& [ref, it] : pending) ctx.kill_on_purpose(it->pid);
      killed = true;
      continue;
    }
    if (m->is_call()) {
      ctx.reply(*m, Error(ErrorKind::kCancelled, "supervisor '" + s.label_ + "' is shutting down"));
      continue;
    }
    if (auto* e = m->get<Exit>()) {
      // A child that exited by itself before it was asked: its Down will say noproc, so keep
      // its own reason for it (as OTP's monitor_child does), without a selective receive.
      if (s.by_pid_.count(e->from.id) != 0) own_exit.emplace(e->from.id, e->reason);
      continue;
    }
    auto* d = m->get<Down>();
    if (d == nullptr || pending.count(d->ref.id) == 0) continue;
    auto it = pending.at(d->ref.id);
    pending.erase(d->ref.id);
    s.by_pid_.erase(it->pid.id);
    Pid pid = it->pid;
    it->pid = {};
    auto own = own_exit.find(pid.id);
    if (d->reason.kind == ExitReason::Kind::kNoProc && own != own_exit.end()) {
      s.emit(SupervisionEventType::kChildExited, &*it, pid, own->second);
    } else {
      s.emit(SupervisionEventType::kChildExited, &*it, pid, d->reason, Duration::zero(), true);
    }
  }
}

[[noreturn]] void exit_supervisor(Context& ctx, Sup& s, ExitReason reason) {
  s.emit(SupervisionEventType::kSupervisorStopped, nullptr, Pid{}, reason);
  ctx.exit(std::move(reason));
}

// `child` and `why`: the last exit (or failed start) that took it over its restart intensity.
Task<> give_up(Context& ctx, Sup& s, Child& child, std::string why) {
  NINES_LOG(s.core_.env.logger(), LogLevel::kError, "supervisor_gave_up",
            "supervisor reached its restart intensity: stops its children and exits", {"supervisor", s.label_},
            {"intensity", s.spec_.intensity}, {"period_s", to_seconds(s.spec_.period)}, {"child", child.spec.id},
            {"reason", why});
  // As OTP: the report says reached_max_restart_intensity (the event, the log line above);
  // the exit reason the parent sees is plain `shutdown`.
  s.emit(SupervisionEventType::kIntensityExceeded, &child, Pid{},
         ExitReason::shutdown("reached_max_restart_intensity"));
  co_await terminate_all(ctx, s);
  ExitReason reason = ExitReason::shutdown();
  s.emit(SupervisionEventType::kEscalated, nullptr, s.parent_, reason);
  exit_supervisor(ctx, s, std::move(reason));
}

// Starts the children `keys` (in order). A failed start counts as a restart and is retried.
Task<> restart_group(Context& ctx, Sup& s, std::vector<std::uint64_t> keys) {
  NINES_DCHECK(Sup::in_start_order(keys));
  for (std::size_t i = 0; i < keys.size(); ++i) {
    auto kit = s.by_key_.find(keys[i]);
    if (kit == s.by_key_.end()) continue;  // deleted meanwhile
    Child& c = *kit->second;
    if (c.pid) continue;  // already running (restarted by hand)
    Result<Pid> started = s.start_one(c, true);
    if (started.ok()) continue;
    if (!s.record_restart()) co_await give_up(ctx, s, c, started.error().message());
    std::vector<std::uint64_t> rest(keys.begin() + static_cast<std::ptrdiff_t>(i), keys.end());
    for (auto k : rest) {
      if (auto it = s.by_key_.find(k); it != s.by_key_.end()) it->second->restarting = true;
    }
    Duration delay = s.backoff_delay(c);
    if (delay > Duration::zero()) s.emit(SupervisionEventType::kRestartDelayed, &c, Pid{}, {}, delay);
    ctx.send_after(ctx.self(), delay, RestartDue{std::move(rest)});
    co_return;
  }
}

Task<> on_child_exit(Context& ctx, Sup& s, std::list<Child>::iterator it, ExitReason reason) {
  Child& c = *it;
  Pid old = c.pid;
  NINES_DCHECK(old.valid());
  std::size_t indexed = s.by_pid_.erase(old.id);
  NINES_CHECK_MSG(indexed == 1, "supervisor: child " + old.to_string() + " exited but was not indexed");
  c.pid = {};
  s.emit(SupervisionEventType::kChildExited, &c, old, reason);

  bool restart =
      c.spec.restart == RestartType::kPermanent || (c.spec.restart == RestartType::kTransient && !reason.is_clean());
  if (!restart) {
    bool significant = c.spec.significant;
    if (c.spec.restart == RestartType::kTemporary || c.dynamic) s.erase_child(it);
    if (significant && s.spec_.auto_shutdown != AutoShutdown::kNever) {
      bool fire = s.spec_.auto_shutdown == AutoShutdown::kAnySignificant ||
                  std::none_of(s.children_.begin(), s.children_.end(),
                               [](const Child& x) { return x.spec.significant && x.pid; });
      if (fire) {
        s.emit(SupervisionEventType::kAutoShutdown, nullptr);
        co_await terminate_all(ctx, s);
        exit_supervisor(ctx, s, ExitReason::shutdown());
      }
    }
    co_return;
  }
  if (!s.record_restart()) co_await give_up(ctx, s, c, reason.to_string());

  // The group restarted together, in start order.
  std::vector<std::list<Child>::iterator> group;
  switch (s.spec_.strategy) {
    case Strategy::kOneForOne:
    case Strategy::kSimpleOneForOne: group.push_back(it); break;
    case Strategy::kOneForAll:
      for (auto g = s.children_.begin(); g != s.children_.end(); ++g) group.push_back(g);
      break;
    case Strategy::kRestForOne:
      for (auto g = it; g != s.children_.end(); ++g) group.push_back(g);
      break;
  }
  // The exited child is in its group: one_for_all takes every child, rest_for_one starts at it.
  NINES_DCHECK(std::find(group.begin(), group.end(), it) != group.end());
  NINES_DCHECK(s.spec_.strategy != Strategy::kRestForOne || group.front() == it);
  // Stop the others in reverse order; temporary ones are not restarted (OTP).
  for (auto g = group.rbegin(); g != group.rend(); ++g) {
    if (*g != it) co_await terminate(ctx, s, **g);
  }
  std::vector<std::uint64_t> keys;
  for (auto g : group) {
    if (g != it && g->spec.restart == RestartType::kTemporary) {
      s.erase_child(g);
      continue;
    }
    if (g != it && g->spec.restart == RestartType::kTransient && g->pid) continue;
    keys.push_back(g->key);
  }
  NINES_DCHECK(Sup::in_start_order(keys));
  Duration delay = s.backoff_delay(c);
  if (delay > Duration::zero()) {
    for (auto k : keys) s.by_key_.at(k)->restarting = true;
    s.emit(SupervisionEventType::kRestartDelayed, &c, Pid{}, {}, delay);
    ctx.send_after(ctx.self(), delay, RestartDue{std::move(keys)});
    co_return;
  }
  co_await restart_group(ctx, s, std::move(keys));
}

std::list<Child>::iterator find_static(Sup& s, const std::string& id) {
  return std::find_if(s.children_.begin(), s.children_.end(),
                      [&](const Child& c) { return !c.dynamic && c.spec.id == id; });
}

Task<> handle_call(Context& ctx, Sup& s, Message& m) {
  if (auto* r = m.get<StartChildReq>()) {
    if (s.simple()) {
      ctx.reply(m, Result<Pid>(Error(ErrorKind::kInvalidArgument,
                                     "supervisor '" + s.label_ + "' is simple_one_for_one: use start_dynamic_child")));
      co_return;
    }
    if (auto v = validate_child(r->spec, "start_child"); !v.ok()) {
      ctx.reply(m, Result<Pid>(v.error()));
      co_return;
    }
    if (find_static(s, r->spec.id) != s.children_.end()) {
      ctx.reply(m, Result<Pid>(Error(ErrorKind::kAlreadyExists,
                                     "supervisor '" + s.label_ + "' already has a child '" + r->spec.id + "'")));
      co_return;
    }
    auto it = s.add_child(std::move(r->spec), {}, false);
    auto started = s.start_one(*it, false);
    if (!started.ok()) s.erase_child(it);
    ctx.reply(m, std::move(started));
  } else if (auto* d = m.get<StartDynamicReq>()) {
    if (!s.simple()) {
      ctx.reply(m, Result<Pid>(Error(ErrorKind::kInvalidArgument,
                                     "supervisor '" + s.label_ + "' is not simple_one_for_one: use start_child")));
      co_return;
    }
    auto it = s.add_child(s.spec_.children.front(), std::move(d->arg), true);
    auto started = s.start_one(*it, false);
    if (!started.ok()) s.erase_child(it);
    ctx.reply(m, std::move(started));
  } else if (auto* t = m.get<TerminateByIdReq>()) {
    auto it = find_static(s, t->id);
    if (it == s.children_.end()) {
      ctx.reply(
          m, Result<void>(Error(ErrorKind::kNotFound, "supervisor '" + s.label_ + "' has no child '" + t->id + "'")));
      co_return;
    }
    co_await terminate(ctx, s, *it);
    it->restarting = false;
    if (it->spec.restart == RestartType::kTemporary) s.erase_child(it);
    ctx.reply(m, Result<void>());
  } else if (auto* tp = m.get<TerminateByPidReq>()) {
    auto f = s.by_pid_.find(tp->pid.id);
    if (f == s.by_pid_.end()) {
      ctx.reply(m, Result<void>(Error(ErrorKind::kNotFound,
                                      "supervisor '" + s.label_ + "' has no child " + tp->pid.to_string())));
      co_return;
    }
    auto it = f->second;
    co_await terminate(ctx, s, *it);
    if (it->dynamic || it->spec.restart == RestartType::kTemporary) s.erase_child(it);
    ctx.reply(m, Result<void>());
  } else if (auto* rc = m.get<RestartChildReq>()) {
    auto it = find_static(s, rc->id);
    if (it == s.children_.end()) {
      ctx.reply(
          m, Result<Pid>(Error(ErrorKind::kNotFound, "supervisor '" + s.label_ + "' has no child '" + rc->id + "'")));
    } else if (it->pid) {
      ctx.reply(m, Result<Pid>(Error(ErrorKind::kAlreadyExists, "child '" + rc->id + "' is running")));
    } else {
      ctx.reply(m, s.start_one(*it, true));
    }
  } else if (auto* dc = m.get<DeleteChildReq>()) {
    auto it = find_static(s, dc->id);
    if (it == s.children_.end()) {
      ctx.reply(
          m, Result<void>(Error(ErrorKind::kNotFound, "supervisor '" + s.label_ + "' has no child '" + dc->id + "'")));
    } else if (it->pid) {
      ctx.reply(
          m, Result<void>(Error(ErrorKind::kInvalidArgument, "child '" + dc->id + "' is running: terminate it first")));
    } else {
      s.erase_child(it);
      ctx.reply(m, Result<void>());
    }
  } else if (m.is<WhichChildrenReq>()) {
    std::vector<ChildInfo> out;
    out.reserve(s.children_.size());
    for (const Child& c : s.children_) out.push_back({c.spec.id, c.pid, c.spec.type, c.restarting});
    ctx.reply(m, Result<std::vector<ChildInfo>>(std::move(out)));
  } else if (m.is<CountChildrenReq>()) {
    ChildCounts n;
    n.specs = s.children_.size();
    for (const Child& c : s.children_) {
      if (c.pid) ++n.active;
      (c.spec.type == ChildType::kSupervisor ? n.supervisors : n.workers)++;
    }
    n.restarts = s.restart_count_;
    ctx.reply(m, Result<ChildCounts>(n));
  }
}

Task<> supervisor_main(Context& ctx, SupPtr sp) {
  Sup& s = *sp;
  for (;;) {
    Message m = co_await ctx.receive();
    if (auto* e = m.get<Exit>()) {
      if (e->from == s.parent_ || !e->from.valid()) {
        // Asked to stop, by the parent or from outside: children first, in reverse order.
        ExitReason reason = e->reason;
        co_await terminate_all(ctx, s);
        exit_supervisor(ctx, s, std::move(reason));
      }
      auto f = s.by_pid_.find(e->from.id);
      if (f == s.by_pid_.end()) continue;  // a child already stopped and forgotten
      co_await on_child_exit(ctx, s, f->second, e->reason);
    } else if (auto* due = m.get<RestartDue>()) {
      // Only children still waiting: terminate_child cancels a pending restart (as in OTP, the
      // child stays stopped until restart_child), and restart_child may have started it already.
      std::erase_if(due->keys, [&s](std::uint64_t k) {
        auto it = s.by_key_.find(k);
        return it == s.by_key_.end() || !it->second->restarting;
      });
      co_await restart_group(ctx, s, std::move(due->keys));
    } else if (m.is_call()) {
      co_await handle_call(ctx, s, m);
    }
  }
}

Result<Pid> start_supervisor_impl(RuntimeCore& core, const SupervisorSpec& spec, Process* parent) {
  if (auto v = validate(spec); !v.ok()) return v.error();
  auto sp = std::make_shared<Sup>(core, spec, parent ? parent->pid : Pid{});
  SpawnOptions so;
  so.name = spec.name;
  so.mailbox_capacity = spec.mailbox_capacity;
  so.trap_exit = true;
  auto pr = core.spawn([sp](Context& c) { return supervisor_main(c, sp); }, so, parent ? parent->pid : Pid{},
                       /*held=*/true);
  if (!pr.ok()) return std::move(pr).error();
  Process* p = pr->get();
  sp->self_ = p->pid;
  sp->proc_ = p;
  sp->label_ = label_of(spec, p->pid);
  if (!sp->simple()) {
    for (const ChildSpec& cs : spec.children) {
      auto it = sp->add_child(cs, {}, false);
      auto r = sp->start_one(*it, false);
      if (r.ok()) continue;
      // Undo: kill what started (reverse order), then drop the supervisor unlinked.
      for (auto c = sp->children_.rbegin(); c != sp->children_.rend(); ++c) {
        if (!c->pid) continue;
        core.signal(c->pid, internal::SignalKind::kExit, p->pid, internal::kExpectedKillRef, ExitReason::kill());
        // Its start was reported, so its exit is too (kill is untrappable: the reason is sure).
        sp->emit(SupervisionEventType::kChildExited, &*c, c->pid, ExitReason::killed(), Duration::zero(), true);
      }
      p->links.clear();
      core.finalize(p, ExitReason::shutdown("start failed"));
      return std::move(r).error();
    }
  }
  sp->emit(SupervisionEventType::kSupervisorStarted, nullptr, p->pid);
  if (parent) parent->links.push_back(p->pid);
  core.release(p);
  return p->pid;
}

template <class T>
Result<T> unwrap(Result<Message> r) {
  if (!r.ok()) return std::move(r).error();
  if (auto* v = r->get<Result<T>>()) return std::move(*v);
  if (auto* e = r->get<Error>()) return *e;  // e.g. "shutting down"
  return NINES_BUG("supervisor replied with an unexpected type");
}

}  // namespace

// ---------------------------------------------------------------- public API

Result<Pid> StartContext::spawn_link(Behavior behavior, SpawnOptions options) {
  auto r = sup_->rt->spawn(std::move(behavior), options, sup_->pid, false);
  if (!r.ok()) return std::move(r).error();
  sup_->links.push_back((*r)->pid);
  return (*r)->pid;
}

Result<Pid> StartContext::start_supervisor_link(const SupervisorSpec& spec) {
  return start_supervisor_impl(*sup_->rt, spec, sup_);
}

Pid StartContext::supervisor() const { return sup_->pid; }
Runtime& StartContext::runtime() const { return *sup_->rt->facade; }

ChildSpec ChildSpec::worker(std::string id, Behavior behavior, SpawnOptions options) {
  ChildSpec c;
  c.id = std::move(id);
  c.type = ChildType::kWorker;
  c.start = [behavior = std::move(behavior), options = std::move(options)](StartContext& sc) {
    return sc.spawn_link(behavior, options);
  };
  return c;
}

ChildSpec ChildSpec::supervisor(std::string id, SupervisorSpec spec) {
  ChildSpec c;
  c.id = std::move(id);
  c.type = ChildType::kSupervisor;
  c.start = [spec = std::move(spec)](StartContext& sc) { return sc.start_supervisor_link(spec); };
  return c;
}

Result<Pid> start_supervisor(Runtime& rt, const SupervisorSpec& spec) {
  return start_supervisor_impl(rt.core(), spec, nullptr);
}

Result<Pid> start_supervisor_link(Context& ctx, const SupervisorSpec& spec) {
  return start_supervisor_impl(ctx.runtime().core(), spec, internal::current_process());
}

// The requests are built in named locals, not as braced temporaries inside the co_await
// operand: GCC 12 relocates such a temporary bitwise, so a short (SSO) std::string in it
// ends up pointing into the coroutine frame and is freed as heap memory.
Task<Result<Pid>> start_child(Context& ctx, Pid sup, ChildSpec spec, Duration timeout) {
  StartChildReq req{std::move(spec)};
  co_return unwrap<Pid>(co_await ctx.call(sup, std::move(req), timeout));
}

Task<Result<Pid>> start_dynamic_child(Context& ctx, Pid sup, std::any arg, Duration timeout) {
  StartDynamicReq req{std::move(arg)};
  co_return unwrap<Pid>(co_await ctx.call(sup, std::move(req), timeout));
}

Task<Result<void>> terminate_child(Context& ctx, Pid sup, std::string id, Duration timeout) {
  TerminateByIdReq req{std::move(id)};
  co_return unwrap<void>(co_await ctx.call(sup, std::move(req), timeout));
}

Task<Result<void>> terminate_child(Context& ctx, Pid sup, Pid child, Duration timeout) {
  TerminateByPidReq req{child};
  co_return unwrap<void>(co_await ctx.call(sup, std::move(req), timeout));
}

Task<Result<Pid>> restart_child(Context& ctx, Pid sup, std::string id, Duration timeout) {
  RestartChildReq req{std::move(id)};
  co_return unwrap<Pid>(co_await ctx.call(sup, std::move(req), timeout));
}

Task<Result<void>> delete_child(Context& ctx, Pid sup, std::string id, Duration timeout) {
  DeleteChildReq req{std::move(id)};
  co_return unwrap<void>(co_await ctx.call(sup, std::move(req), timeout));
}

Task<Result<std::vector<ChildInfo>>> which_children(Context& ctx, Pid sup, Duration timeout) {
  WhichChildrenReq req{};
  co_return unwrap<std::vector<ChildInfo>>(co_await ctx.call(sup, std::move(req), timeout));
}

Task<Result<ChildCounts>> count_children(Context& ctx, Pid sup, Duration timeout) {
  CountChildrenReq req{};
  co_return unwrap<ChildCounts>(co_await ctx.call(sup, std::move(req), timeout));
}

}  // namespace nines
