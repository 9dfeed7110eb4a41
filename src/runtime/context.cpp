// Context, the awaitables and the Runtime facade.
#include <algorithm>

#include "nines/core/check.hpp"
#include "runtime/process_internal.hpp"

namespace nines {

using internal::Delivery;
using internal::Envelope;
using internal::Process;
using internal::RuntimeCore;
using internal::SignalKind;
using internal::WaitKind;

namespace internal {
struct CompletionState {
  std::weak_ptr<RuntimeCore> core;
  Pid pid;
  std::uint64_t token = 0;
  std::atomic<bool> done{false};
};
}  // namespace internal

namespace {

Error noproc_error(const char* what, Pid to) {
  return Error(ErrorKind::kNoProc, std::string(what) + " " + to.to_string() + ": no such process");
}

Error full_error(const char* what, Pid to) {
  return Error(ErrorKind::kMailboxFull, std::string(what) + " " + to.to_string() + ": its mailbox is full");
}

Envelope* make_message(Pid from, std::any value, SignalKind kind = SignalKind::kMessage, std::uint64_t ref = 0) {
  auto* e = new Envelope;
  e->kind = kind;
  e->from = from;
  e->ref = ref;
  e->payload = std::move(value);
  return e;
}

Result<void> to_result(Delivery d, const char* what, Pid to) {
  switch (d) {
    case Delivery::kOk: return {};
    case Delivery::kNoProc: return noproc_error(what, to);
    case Delivery::kFull:
    case Delivery::kBlocked: return full_error(what, to);
  }
  return {};
}

// The process deadline clamps a wait's timeout; `by_deadline` says it is the binding one.
Duration clamp_to_deadline(Process* p, Duration timeout, bool& by_deadline) {
  by_deadline = false;
  if (p->deadline == TimePoint::max()) return timeout;
  Duration left = std::max(Duration::zero(), p->deadline - p->rt->env.now());
  if (left < timeout) {
    by_deadline = true;
    return left;
  }
  return timeout;
}

Error deadline_error(const std::string& what) {
  return Error(ErrorKind::kDeadlineExceeded, what + ": deadline exceeded");
}

// Arms the wait's timeout: a kWake with the wait token and a timeout error.
void arm_timeout(Process* p, Duration timeout) {
  if (timeout == kInfinite) return;
  Pid pid = p->pid;
  std::uint64_t token = p->wait_token;
  p->wait_timer = p->rt->add_timer(timeout, [pid, token](RuntimeCore& rt) {
    rt.signal(pid, SignalKind::kWake, Pid{}, token, Result<std::any>(Error(ErrorKind::kTimeout, "timed out")));
  });
}

}  // namespace

// ---------------------------------------------------------------- receive

bool ReceiveAwaiter::ready(const std::function<bool(const Message&)>* pred) {
  RuntimeCore* rt = p_->rt;
  p_->wait_msg.reset();
  // A poll (timeout 0) always looks, whatever the reductions: it never suspends anyway.
  if (p_->reductions_left > 1 || timeout_ <= Duration::zero()) {
    p_->wait_msg = rt->pop_message(p_, pred);
    if (!p_->wait_msg && rt->drain(p_) && !p_->pending_exit) p_->wait_msg = rt->pop_message(p_, pred);
    if (p_->wait_msg) {
      --p_->reductions_left;
      return true;
    }
    if (timeout_ <= Duration::zero()) return true;  // poll: nothing there
  }
  bool by_deadline = false;
  Duration timeout = clamp_to_deadline(p_, timeout_, by_deadline);
  if (timeout <= Duration::zero() && !p_->wait_msg) return true;  // deadline already passed
  NINES_DCHECK(p_->wait == WaitKind::kNone);                      // one wait at a time
  p_->wait = WaitKind::kReceive;
  p_->wait_token = timeout == kInfinite ? 0 : rt->new_ref();  // only a timeout needs a token
  p_->wait_pred = pred;
  if (p_->reductions_left <= 1) p_->yield_requested = true;
  arm_timeout(p_, timeout);
  return false;
}

void ReceiveAwaiter::await_suspend(std::coroutine_handle<> h) { p_->resume_point = h; }

std::optional<Message> ReceiveAwaiter::await_resume() {
  if (p_->wait == WaitKind::kReceive) p_->rt->clear_wait(p_);
  std::optional<Message> m = std::move(p_->wait_msg);
  p_->wait_msg.reset();
  return m;
}

// ---------------------------------------------------------------- send

bool SendAwaiter::await_ready() {
  RuntimeCore* rt = p_->rt;
  Delivery d = rt->deliver_from(p_, to_, make_message(p_->pid, value_), p_->pid);
  if (d != Delivery::kBlocked) {
    result_ = to_result(d, "send to", to_);
    return true;
  }
  // The target's policy is kSuspendSender and it recorded us: wait for kRoom, at most until
  // the process deadline.
  bool by_deadline = false;
  Duration timeout = clamp_to_deadline(p_, kInfinite, by_deadline);
  if (by_deadline && timeout <= Duration::zero()) {
    result_ = deadline_error("send to " + to_.to_string());
    return true;
  }
  NINES_DCHECK(p_->wait == WaitKind::kNone);  // one wait at a time
  p_->wait = WaitKind::kSend;
  p_->wait_token = rt->new_ref();
  p_->send_to = to_;
  p_->send_value = &value_;
  p_->room_signalled = false;
  if (by_deadline) {
    Pid pid = p_->pid;
    std::uint64_t token = p_->wait_token;
    std::string what = "send to " + to_.to_string();
    p_->wait_timer = rt->add_timer(timeout, [pid, token, what](RuntimeCore& core) {
      core.signal(pid, SignalKind::kWake, Pid{}, token, Result<std::any>(deadline_error(what)));
    });
  }
  return false;
}

void SendAwaiter::await_suspend(std::coroutine_handle<> h) { p_->resume_point = h; }

Result<void> SendAwaiter::await_resume() {
  if (p_->wait == WaitKind::kSend) {
    result_ = std::move(std::get<Result<void>>(p_->wait_result));
    p_->wait_result = {};
    p_->send_value = nullptr;
    p_->rt->clear_wait(p_);
  }
  return std::move(result_);
}

// ---------------------------------------------------------------- call

bool CallAwaiter::await_ready() {
  RuntimeCore* rt = p_->rt;
  Duration timeout = clamp_to_deadline(p_, timeout_, by_deadline_);
  if (by_deadline_ && timeout <= Duration::zero()) {
    result_.emplace(deadline_error("call to " + to_.to_string()));
    return true;
  }
  std::uint64_t mref = rt->new_ref();
  p_->monitoring.emplace_back(mref, to_);
  if (rt->signal(to_, SignalKind::kMonitor, p_->pid, mref) != Delivery::kOk) {
    p_->monitoring.pop_back();
    result_.emplace(noproc_error("call to", to_));
    return true;
  }
  std::uint64_t token = rt->new_ref();
  Delivery d = rt->deliver(to_, make_message(p_->pid, std::move(value_), SignalKind::kCall, token));
  if (d != Delivery::kOk) {
    auto& m = p_->monitoring;
    m.erase(std::find_if(m.begin(), m.end(), [&](auto& x) { return x.first == mref; }));
    rt->signal(to_, SignalKind::kDemonitor, p_->pid, mref);
    result_.emplace(d == Delivery::kNoProc ? noproc_error("call to", to_) : full_error("call to", to_));
    return true;
  }
  NINES_DCHECK(p_->wait == WaitKind::kNone);  // one wait at a time
  p_->wait = WaitKind::kCall;
  p_->wait_token = token;
  p_->call_monitor = mref;
  p_->send_to = to_;
  p_->wait_result = {};
  arm_timeout(p_, timeout);
  return false;
}

void CallAwaiter::await_suspend(std::coroutine_handle<> h) { p_->resume_point = h; }

Result<Message> CallAwaiter::await_resume() {
  if (p_->wait == WaitKind::kCall) {
    result_ = std::move(std::get<Result<Message>>(p_->wait_result));
    p_->wait_result = {};
    if (result_ && !result_->ok() && result_->error().kind() == ErrorKind::kTimeout) {
      result_.emplace(by_deadline_ ? deadline_error("call to " + to_.to_string())
                                   : Error(ErrorKind::kTimeout, "call to " + to_.to_string() + " timed out after " +
                                                                    std::to_string(to_millis(timeout_)) + " ms"));
    }
    p_->rt->clear_wait(p_);
  }
  NINES_CHECK(result_.has_value());
  return std::move(*result_);
}

// ---------------------------------------------------------------- wait_down

bool DownAwaiter::await_ready() {
  // Still in `monitoring` means its Down has not reached the mailbox: wait for it directly.
  // Otherwise it is in the mailbox already (one scan) or the ref is not ours.
  auto& m = p_->monitoring;
  if (std::find_if(m.begin(), m.end(), [&](auto& x) { return x.first == ref_.id; }) == m.end()) {
    MonitorRef ref = ref_;
    std::function<bool(const Message&)> pred = [ref](const Message& msg) {
      auto* d = msg.get<Down>();
      return d && d->ref == ref;
    };
    if (auto msg = p_->rt->pop_message(p_, &pred)) got_ = *msg->get<Down>();
    return true;
  }
  bool by_deadline = false;
  Duration timeout = clamp_to_deadline(p_, timeout_, by_deadline);
  if (timeout <= Duration::zero()) return true;
  NINES_DCHECK(p_->wait == WaitKind::kNone);  // one wait at a time
  p_->wait = WaitKind::kDown;
  p_->wait_token = ref_.id;
  p_->wait_result = {};
  // The timeout's kWake carries the monitor ref, which is this wait's token.
  if (timeout != kInfinite) {
    Pid pid = p_->pid;
    std::uint64_t token = ref_.id;
    p_->wait_timer = p_->rt->add_timer(timeout, [pid, token](RuntimeCore& rt) {
      rt.signal(pid, SignalKind::kWake, Pid{}, token, Result<std::any>(Error(ErrorKind::kTimeout, "timed out")));
    });
  }
  return false;
}

void DownAwaiter::await_suspend(std::coroutine_handle<> h) { p_->resume_point = h; }

std::optional<Down> DownAwaiter::await_resume() {
  if (p_->wait == WaitKind::kDown) {
    if (auto* d = std::get_if<Down>(&p_->wait_result)) got_ = std::move(*d);
    p_->wait_result = {};
    p_->rt->clear_wait(p_);
  }
  return std::move(got_);
}

// ---------------------------------------------------------------- sleep, yield, fd, external

bool WaitAwaiter::await_ready() {
  RuntimeCore* rt = p_->rt;
  if (op_ == Op::kYield) {
    p_->yield_requested = true;
    return false;
  }
  Duration timeout = clamp_to_deadline(p_, timeout_, by_deadline_);
  if (by_deadline_ && timeout <= Duration::zero()) {
    result_.emplace(deadline_error(op_ == Op::kSleep ? "sleep" : op_ == Op::kFd ? "wait_fd" : "await_external"));
    return true;
  }
  NINES_DCHECK(p_->wait == WaitKind::kNone);  // one wait at a time
  p_->wait = WaitKind::kToken;
  p_->wait_token = rt->new_ref();
  p_->wait_result = {};
  Pid pid = p_->pid;
  std::uint64_t token = p_->wait_token;
  switch (op_) {
    case Op::kSleep: {
      // Cut short by the deadline, a sleep ends at the deadline with kDeadlineExceeded.
      Result<std::any> outcome =
          by_deadline_ ? Result<std::any>(deadline_error("sleep")) : Result<std::any>(std::any{});
      p_->wait_timer = rt->add_timer(timeout, [pid, token, outcome](RuntimeCore& core) {
        core.signal(pid, SignalKind::kWake, Pid{}, token, outcome);
      });
      return false;
    }
    case Op::kFd: {
      std::weak_ptr<RuntimeCore> weak = rt->weak_from_this();
      auto w = rt->env.watch_fd(fd_, events_, [weak, pid, token](unsigned bits) {
        if (auto core = weak.lock()) {
          core->signal(pid, SignalKind::kWake, Pid{}, token, Result<std::any>(std::any(bits)));
        }
      });
      if (!w.ok()) {
        result_.emplace(std::move(w).error());
        rt->clear_wait(p_);
        return true;
      }
      p_->wait_watch = *w;
      arm_timeout(p_, timeout);
      return false;
    }
    case Op::kExternal: {
      auto s = std::make_shared<internal::CompletionState>();
      s->core = rt->weak_from_this();
      s->pid = pid;
      s->token = token;
      arm_timeout(p_, timeout);
      start_(Completion(s));
      return false;
    }
    case Op::kYield: break;
  }
  return false;
}

void WaitAwaiter::await_suspend(std::coroutine_handle<> h) { p_->resume_point = h; }

Result<std::any> WaitAwaiter::await_resume() {
  if (op_ == Op::kYield) return std::any{};
  if (p_->wait == WaitKind::kToken) {
    result_ = std::move(std::get<Result<std::any>>(p_->wait_result));
    p_->wait_result = {};
    p_->rt->clear_wait(p_);
  }
  if (!result_) return std::any{};
  if (!result_->ok() && result_->error().kind() == ErrorKind::kTimeout && by_deadline_) {
    return deadline_error(op_ == Op::kFd ? "wait_fd" : "await_external");
  }
  if (!result_->ok() && result_->error().kind() == ErrorKind::kTimeout && op_ != Op::kSleep) {
    return Error(ErrorKind::kTimeout,
                 std::string(op_ == Op::kFd ? "wait_fd(" + std::to_string(fd_) + ")" : std::string("await_external")) +
                     " timed out after " + std::to_string(to_millis(timeout_)) + " ms");
  }
  return std::move(*result_);
}

void Completion::complete(Result<std::any> result) const {
  if (!s_ || s_->done.exchange(true)) return;
  if (auto core = s_->core.lock()) {
    core->signal(s_->pid, SignalKind::kWake, Pid{}, s_->token, std::move(result));
  }
}

// ---------------------------------------------------------------- Context

Pid Context::self() const { return p_->pid; }
Runtime& Context::runtime() const { return *p_->rt->facade; }
Environment& Context::env() const { return p_->rt->env; }
TimePoint Context::now() const { return p_->rt->env.now(); }

ReceiveAnyAwaiter Context::receive() { return ReceiveAnyAwaiter(p_, kInfinite); }
ReceiveAwaiter Context::receive_for(Duration timeout) { return ReceiveAwaiter(p_, timeout); }
ReceiveIfAwaiter Context::receive_if(std::function<bool(const Message&)> pred, Duration timeout) {
  return ReceiveIfAwaiter(p_, timeout, std::move(pred));
}

Result<void> Context::try_send_any(Pid to, std::any value) {
  return to_result(p_->rt->deliver_from(p_, to, make_message(p_->pid, std::move(value))), "send to", to);
}

void Context::reply_any(const Message& request, std::any value) {
  if (!request.is_call()) return;
  p_->rt->signal(request.from(), SignalKind::kReply, p_->pid, request.call_ref(), std::move(value));
}

TimerRef Context::send_after_any(Pid to, Duration delay, std::any value) {
  Pid from = p_->pid;
  TimerId id = p_->rt->add_timer(delay, [to, from, value = std::move(value)](RuntimeCore& rt) {
    Envelope* e = make_message(from, value);
    e->own_timer = to == from;  // a process's own schedule is never dropped (Envelope::own_timer)
    rt.deliver(to, e);
  });
  return TimerRef{id};
}

bool Context::cancel_timer(TimerRef ref) { return p_->rt->env.cancel_timer(ref.id); }

WaitAwaiter Context::sleep(Duration d) { return WaitAwaiter(p_, WaitAwaiter::Op::kSleep, d); }
WaitAwaiter Context::yield() { return WaitAwaiter(p_, WaitAwaiter::Op::kYield, kInfinite); }

WaitAwaiter Context::wait_fd(int fd, unsigned events, Duration timeout) {
  WaitAwaiter w(p_, WaitAwaiter::Op::kFd, timeout);
  w.fd_ = fd;
  w.events_ = events;
  return w;
}

WaitAwaiter Context::await_external(std::function<void(Completion)> start, Duration timeout) {
  WaitAwaiter w(p_, WaitAwaiter::Op::kExternal, timeout);
  w.start_ = std::move(start);
  return w;
}

Result<Pid> Context::spawn(Behavior behavior, SpawnOptions options) {
  auto r = p_->rt->spawn(std::move(behavior), options, Pid{}, false);
  if (!r.ok()) return std::move(r).error();
  return (*r)->pid;
}

Result<Pid> Context::spawn_link(Behavior behavior, SpawnOptions options) {
  auto r = p_->rt->spawn(std::move(behavior), options, p_->pid, false);
  if (!r.ok()) return std::move(r).error();
  p_->links.push_back((*r)->pid);
  return (*r)->pid;
}

void Context::link(Pid other) {
  if (other == p_->pid) return;
  if (std::find(p_->links.begin(), p_->links.end(), other) != p_->links.end()) return;
  p_->links.push_back(other);
  if (p_->rt->signal(other, SignalKind::kLink, p_->pid) != Delivery::kOk) {
    // Erlang: linking a process that does not exist gives an exit signal noproc.
    p_->rt->signal(p_->pid, SignalKind::kLinkExit, other, 0, ExitReason::noproc());
  }
}

void Context::unlink(Pid other) {
  auto& l = p_->links;
  auto it = std::find(l.begin(), l.end(), other);
  if (it == l.end()) return;
  l.erase(it);
  p_->rt->signal(other, SignalKind::kUnlink, p_->pid);
}

MonitorRef Context::monitor(Pid target) {
  std::uint64_t ref = p_->rt->new_ref();
  p_->monitoring.emplace_back(ref, target);
  if (p_->rt->signal(target, SignalKind::kMonitor, p_->pid, ref) != Delivery::kOk) {
    p_->rt->signal(p_->pid, SignalKind::kDown, target, ref, ExitReason::noproc());
  }
  return MonitorRef{ref};
}

DownAwaiter Context::wait_down(MonitorRef ref, Duration timeout) { return DownAwaiter(p_, ref, timeout); }

TimePoint Context::deadline() const { return p_->deadline; }

DeadlineScope Context::with_deadline(TimePoint t) {
  TimePoint previous = p_->deadline;
  p_->deadline = std::min(previous, t);
  return DeadlineScope(p_, previous);
}

DeadlineScope::~DeadlineScope() { p_->deadline = previous_; }

bool Context::demonitor(MonitorRef ref) {
  auto& m = p_->monitoring;
  auto it = std::find_if(m.begin(), m.end(), [&](auto& x) { return x.first == ref.id; });
  if (it == m.end()) return false;
  Pid target = it->second;
  m.erase(it);
  p_->rt->signal(target, SignalKind::kDemonitor, p_->pid, ref.id);
  // A Down already queued for it is dropped: drain() only delivers Downs it still knows.
  return true;
}

void Context::send_exit(Pid target, ExitReason reason) {
  p_->rt->signal(target, SignalKind::kExit, p_->pid, 0, std::move(reason));
}

void Context::kill_on_purpose(Pid target) {
  p_->rt->signal(target, SignalKind::kExit, p_->pid, internal::kExpectedKillRef, ExitReason::kill());
}

void Context::exit(ExitReason reason) { throw ProcessExitRequest{std::move(reason)}; }

void Context::set_trap_exit(bool on) { p_->trap_exit = on; }
bool Context::trap_exit() const { return p_->trap_exit; }

Result<void> Context::register_name(std::string name) {
  if (name.empty()) return Error(ErrorKind::kInvalidArgument, "register_name: empty name");
  if (!p_->name.empty()) {
    return Error(ErrorKind::kAlreadyExists, p_->pid.to_string() + " is already registered as '" + p_->name + "'");
  }
  if (auto r = p_->rt->register_name(name, p_->pid); !r.ok()) return r;
  p_->name = std::move(name);
  return {};
}

std::optional<Pid> Context::whereis(const std::string& name) const { return p_->rt->whereis(name); }

std::size_t Context::mailbox_size() const {
  std::lock_guard lock(p_->mu);
  return p_->user_count;
}

// ---------------------------------------------------------------- Runtime

Result<std::unique_ptr<Runtime>> Runtime::create(Environment& env, const RuntimeOptions& options) {
  auto core = std::make_shared<RuntimeCore>(env, options);
  if (auto r = core->start(); !r.ok()) return std::move(r).error();
  std::unique_ptr<Runtime> rt(new Runtime(std::move(core)));
  rt->core_->facade = rt.get();
  return rt;
}

Runtime::Runtime(std::shared_ptr<RuntimeCore> core) : core_(std::move(core)) {}
Runtime::~Runtime() { core_->stop(); }

Environment& Runtime::env() const { return core_->env; }
const RuntimeOptions& Runtime::options() const { return core_->options; }

Result<Pid> Runtime::spawn(Behavior behavior, SpawnOptions options) {
  auto r = core_->spawn(std::move(behavior), options, Pid{}, false);
  if (!r.ok()) return std::move(r).error();
  return (*r)->pid;
}

Result<void> Runtime::send_any(Pid to, std::any value) {
  return to_result(core_->deliver(to, make_message(Pid{}, std::move(value))), "send to", to);
}

void Runtime::send_exit(Pid target, ExitReason reason) {
  core_->signal(target, SignalKind::kExit, Pid{}, 0, std::move(reason));
}

std::optional<Pid> Runtime::whereis(const std::string& name) const { return core_->whereis(name); }

bool Runtime::alive(Pid pid) const {
  auto p = core_->lookup(pid);
  if (!p) return false;
  std::lock_guard lock(p->mu);
  return !p->dead;
}

std::size_t Runtime::process_count() const { return core_->live(); }
SupervisionEvents& Runtime::events() { return core_->events; }
std::shared_ptr<ExitWatch> Runtime::watch_exit(Pid pid) { return core_->watch_exit(pid); }

Result<Runtime::Watched> Runtime::spawn_watched(Behavior behavior, SpawnOptions options) {
  auto r = core_->spawn(std::move(behavior), options, Pid{}, /*held=*/true);
  if (!r.ok()) return std::move(r).error();
  Watched w{(*r)->pid, core_->watch_exit((*r)->pid)};
  core_->release(r->get());
  return w;
}
std::size_t Runtime::run_until_idle() { return core_->run_until_idle(); }
void Runtime::advance(Duration d) { core_->advance(d); }

}  // namespace nines
