// The runtime core: process table, signal delivery, the run loop of one process, exits.
#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <typeinfo>

#include "nines/core/check.hpp"
#include "runtime/process_internal.hpp"
#include "runtime/scheduler.hpp"

namespace nines::internal {

Process*& current_process() {
  thread_local Process* p = nullptr;
  return p;
}

// ---------------------------------------------------------------- Process

Process::Process(RuntimeCore* rt_, Pid pid_, Behavior behavior_, const SpawnOptions& options, std::size_t cap)
    : rt(rt_),
      pid(pid_),
      capacity(static_cast<std::uint32_t>(std::min<std::size_t>(cap, UINT32_MAX))),
      overflow(options.overflow),
      ctx(this),
      behavior(std::move(behavior_)),
      trap_exit(options.trap_exit) {}

Process::~Process() {
  inbox.clear();
  mailbox.clear();
  if (root) root.destroy();
}

// ---------------------------------------------------------------- ExitWatch

bool ExitWatchImpl::done() const {
  std::lock_guard lock(mu_);
  return done_;
}

ExitReason ExitWatchImpl::wait() {
  std::unique_lock lock(mu_);
  if (deterministic_) {
    NINES_CHECK_MSG(done_, "ExitWatch::wait() would block the only thread of a deterministic runtime");
    return reason_;
  }
  cv_.wait(lock, [&] { return done_; });
  return reason_;
}

ExitReason ExitWatchImpl::reason() const {
  std::lock_guard lock(mu_);
  return reason_;
}

void ExitWatchImpl::set(ExitReason r) {
  {
    std::lock_guard lock(mu_);
    if (done_) return;
    done_ = true;
    reason_ = std::move(r);
  }
  cv_.notify_all();
}

// ---------------------------------------------------------------- RuntimeCore

RuntimeCore::RuntimeCore(Environment& env_, const RuntimeOptions& options_) : env(env_), options(options_) {
  // Start each shard with room for a few thousand processes: growing a map rehashes all of it.
  for (auto& s : shards_) s.map.reserve(4096);
}

RuntimeCore::~RuntimeCore() {
  stop();
  // A wake that looked its process up just before stop() marked it dead may have queued it
  // after stop() drained the queue; its thread held this core (weak_ptr::lock) meanwhile.
  if (scheduler_) {
    for (Process* p : scheduler_->drain_queued()) p->release();
  }
}

Result<void> RuntimeCore::start() {
  if (env.deterministic()) {
    if (options.workers > 1) {
      return Error(ErrorKind::kInvalidArgument, "RuntimeOptions.workers = " + std::to_string(options.workers) +
                                                    ": a deterministic environment runs exactly one worker");
    }
    scheduler_ = make_deterministic_scheduler(*this);
  } else {
    unsigned n = options.workers != 0 ? options.workers : env.default_workers();
    if (n > 1024) return Error(ErrorKind::kInvalidArgument, "RuntimeOptions.workers > 1024");
    scheduler_ = make_threaded_scheduler(*this, n);
  }
  if (options.default_mailbox_capacity == 0) {
    return Error(ErrorKind::kInvalidArgument, "RuntimeOptions.default_mailbox_capacity must be > 0");
  }
  if (options.reductions == 0) return Error(ErrorKind::kInvalidArgument, "RuntimeOptions.reductions must be > 0");
  return scheduler_->start();
}

void RuntimeCore::stop() {
  if (stopped_ || !scheduler_) return;
  stopped_ = true;
  scheduler_->stop();
  for (Process* p : scheduler_->drain_queued()) p->release();
  // Destroy every live process's coroutine (unwinding its locals), then drop the table's refs.
  std::vector<Process*> all;
  for (auto& s : shards_) {
    std::lock_guard lock(s.mu);
    for (auto& [id, p] : s.map) all.push_back(p);
    s.map.clear();
  }
  // First, before any coroutine unwinds: every process is marked dead, so nothing can queue
  // it any more (a send from an unwinding destructor, or a wake from the environment's loop
  // thread, e.g. an fd that turned readable as the workers exited, gets kNoProc instead of
  // queueing the process on the stopped scheduler, where it would never be released and its
  // behavior's resources, an OS child among them, would leak); and every pending timer and fd
  // watch is withdrawn from the environment, as finalize does via clear_wait: an unwinding
  // coroutine may close an fd another process waits on, and the loop thread must be done with
  // it (cancel_watch synchronizes with the loop) before it is closed and its number reused.
  for (Process* p : all) {
    if (p->wait_timer != 0) env.cancel_timer(std::exchange(p->wait_timer, 0));
    if (p->wait_watch != 0) env.cancel_watch(std::exchange(p->wait_watch, 0));
    std::lock_guard lock(p->mu);
    p->dead = true;
  }
  for (Process* p : all) {
    if (p->root) {
      auto r = std::exchange(p->root, {});
      r.destroy();
    }
    std::vector<std::shared_ptr<ExitWatchImpl>> watches;
    {
      std::lock_guard lock(p->mu);
      if (p->waiters) watches.swap(p->waiters->exit_watches);
    }
    for (auto& w : watches) w->set(ExitReason::shutdown("runtime stopped"));
  }
  for (Process* p : all) clear_last_target(p);
  // Whatever was queued while they were still alive.
  for (Process* p : scheduler_->drain_queued()) p->release();
  for (Process* p : all) p->release();
  live_.store(0);
}

Result<ProcessRef> RuntimeCore::spawn(Behavior behavior, const SpawnOptions& so, Pid link_to, bool held) {
  if (!behavior) return Error(ErrorKind::kInvalidArgument, "spawn: empty behavior");
  if (stopped_) return Error(ErrorKind::kCancelled, "spawn: the runtime is stopped");
  std::size_t cap = so.mailbox_capacity != 0 ? so.mailbox_capacity : options.default_mailbox_capacity;
  Pid pid{next_pid_.fetch_add(1, std::memory_order_relaxed)};
  auto* p = new Process(this, pid, std::move(behavior), so, cap);
  ProcessRef ref(p, /*adopt=*/true);
  if (!so.name.empty()) {
    if (auto r = register_name(so.name, pid); !r.ok()) return std::move(r).error();
    p->name = so.name;
  }
  if (link_to.valid()) p->links.push_back(link_to);
  {
    Shard& s = shard(pid);
    std::lock_guard lock(s.mu);
    p->retain();  // the table's reference
    s.map.emplace(pid.id, p);
  }
  live_.fetch_add(1, std::memory_order_relaxed);
  p->scheduled = true;  // queued now, or held until release()
  if (!held) schedule(p);
  return ref;
}

void RuntimeCore::release(Process* p) { schedule(p); }

ProcessRef RuntimeCore::lookup(Pid pid) const {
  Shard& s = shard(pid);
  std::lock_guard lock(s.mu);
  auto it = s.map.find(pid.id);
  if (it == s.map.end()) return {};
  return ProcessRef(it->second);
}

void RuntimeCore::table_remove(Pid pid) {
  Process* p = nullptr;
  {
    Shard& s = shard(pid);
    std::lock_guard lock(s.mu);
    auto it = s.map.find(pid.id);
    if (it == s.map.end()) return;
    p = it->second;
    s.map.erase(it);
  }
  live_.fetch_sub(1, std::memory_order_relaxed);
  p->release();
}

void RuntimeCore::schedule(Process* p) {
  // Whoever queues it set `scheduled` (under mu) or owns it already: nobody clears it until
  // it has run, so this read races with no write.
  NINES_DCHECK(p->scheduled);
  p->retain();
  scheduler_->push(p);
}

Delivery RuntimeCore::deliver(Pid to, Envelope* e, Pid blocked_sender) {
  ProcessRef t = lookup(to);
  if (!t) {
    delete e;
    return Delivery::kNoProc;
  }
  return deliver_to(t.get(), e, blocked_sender);
}

Delivery RuntimeCore::deliver_from(Process* sender, Pid to, Envelope* e, Pid blocked_sender) {
  if (sender->last_target == nullptr || sender->last_target->pid != to) {
    ProcessRef t = lookup(to);
    if (!t) {
      delete e;
      return Delivery::kNoProc;
    }
    clear_last_target(sender);
    sender->last_target = t.detach();
  }
  return deliver_to(sender->last_target, e, blocked_sender);
}

void RuntimeCore::clear_last_target(Process* p) {
  if (p->last_target) std::exchange(p->last_target, nullptr)->release();
}

Delivery RuntimeCore::deliver_to(Process* t, Envelope* e, Pid blocked_sender) {
  NINES_DCHECK(e != nullptr && e->next == nullptr && !e->system);
  Envelope* dropped = nullptr;
  bool need_schedule = false;
  {
    std::lock_guard lock(t->mu);
    if (t->dead) {
      delete e;
      return Delivery::kNoProc;
    }
    if (e->is_user()) {
      // The fault point stands for a full mailbox; a suspended sender is woken by a receive,
      // so it fires for kSuspendSender only when there is a message to receive. A process's own
      // timer is delivered whatever the fill (Envelope::own_timer).
      const bool full =
          t->user_count >= t->capacity ||
          ((t->user_count > 0 || t->overflow != OverflowPolicy::kSuspendSender) && env.fault(FaultPoint::kMailboxFull));
      if (!e->own_timer && full) {
        switch (t->overflow) {
          case OverflowPolicy::kReject: delete e; return Delivery::kFull;
          case OverflowPolicy::kSuspendSender:
            delete e;
            if (!blocked_sender.valid()) return Delivery::kFull;
            t->waiters_locked().blocked_senders.push_back(blocked_sender);
            return Delivery::kBlocked;
          case OverflowPolicy::kDropOldest: {
            // The oldest user message: in the mailbox if it has one, else in the inbox.
            for (EnvelopeQueue* q : {&t->mailbox, &t->inbox}) {
              Envelope* prev = nullptr;
              for (Envelope* x = q->head; x; prev = x, x = x->next) {
                if (x->is_user() && !x->system && !x->own_timer) {
                  q->unlink(prev, x);
                  dropped = x;
                  break;
                }
              }
              if (dropped) break;
            }
            // None found when they are all in the batch drain() holds or are the process's own
            // timers: counted, not droppable (the mailbox is over capacity until they land).
            if (dropped) --t->user_count;
            break;
          }
        }
      }
      ++t->user_count;
    }
    if (e->is_user() && t->inbox.empty() && !t->draining) {
      // Nothing unprocessed ahead of it: straight to the mailbox (order is kept).
      t->mailbox.push(e);
      t->mailbox_pushes.fetch_add(1, std::memory_order_release);
    } else {
      t->inbox.push(e);
      t->has_signals.store(true, std::memory_order_release);
    }
    if (!t->scheduled) {
      t->scheduled = true;
      need_schedule = true;
    }
  }
  delete dropped;
  if (need_schedule) schedule(t);
  return Delivery::kOk;
}

Delivery RuntimeCore::signal(Pid to, SignalKind kind, Pid from, std::uint64_t ref, std::any payload) {
  auto* e = new Envelope;
  e->kind = kind;
  e->from = from;
  e->ref = ref;
  e->payload = std::move(payload);
  return deliver(to, e);
}

namespace {

template <class T>
bool erase_first(std::vector<T>& v, const T& x) {
  auto it = std::find(v.begin(), v.end(), x);
  if (it == v.end()) return false;
  *it = v.back();
  v.pop_back();
  return true;
}

ExitReason reason_of(const Envelope& e) {
  if (auto* r = std::any_cast<ExitReason>(&e.payload)) return *r;
  return ExitReason::noproc();
}

std::string current_exception_type() {
  std::type_info* t = abi::__cxa_current_exception_type();
  if (t == nullptr) return "unknown";
  int status = 0;
  char* d = abi::__cxa_demangle(t->name(), nullptr, nullptr, &status);
  std::string s = (status == 0 && d) ? d : t->name();
  std::free(d);
  return s;
}

ExitReason exit_reason_from(std::exception_ptr ep) {
  try {
    std::rethrow_exception(ep);
  } catch (const ProcessExitRequest& r) {
    if (r.reason.kind == ExitReason::Kind::kKill) return ExitReason::killed();
    return r.reason;
  } catch (const std::exception& ex) {
    return ExitReason::crash(current_exception_type(), ex.what());
  } catch (...) {
    return ExitReason::crash(current_exception_type(), "");
  }
}

}  // namespace

// drain(), one signal kind at a time. Each returns true when it keeps `e` for the mailbox (a
// message, or an Exit or Down turned into one) and false when the signal is consumed.
namespace {

// A reply completes the call it answers, if that call still waits; a late reply is dropped.
bool apply_reply(Process* p, Envelope* e) {
  if (p->wait == WaitKind::kCall && e->ref == p->wait_token && !p->wait_done) {
    p->wait_result = Result<Message>(Message(e->from, std::move(e->payload)));
    p->wait_done = true;
  }
  return false;
}

// An exit signal (exit/2) or a linked process's exit: a kill is untrappable; otherwise a
// trapping process gets an Exit message, and any other process dies of an abnormal reason.
bool apply_exit_signal(Process* p, Envelope* e) {
  if (e->kind == SignalKind::kLinkExit && !erase_first(p->links, e->from)) return false;  // unlinked meanwhile
  ExitReason r = reason_of(*e);
  if (r.kind == ExitReason::Kind::kKill && e->kind == SignalKind::kExit) {
    if (!p->pending_exit) {
      p->pending_exit = std::make_unique<ExitReason>(ExitReason::killed());
      p->exit_signal_from = e->from;
      p->kill_expected = e->ref == kExpectedKillRef;
    }
    return false;
  }
  if (p->trap_exit) {
    e->system = true;
    e->payload = Exit{e->from, std::move(r)};
    e->kind = SignalKind::kMessage;
    return true;
  }
  if (!r.is_normal() && !p->pending_exit) {
    p->pending_exit = std::make_unique<ExitReason>(std::move(r));
    p->exit_signal_from = e->from;
  }
  return false;
}

// A monitored process exited: it ends a call or a wait_down waiting for it, else it becomes
// a Down message. A Down for a monitor dropped meanwhile is dropped.
bool apply_down(Process* p, Envelope* e) {
  auto& m = p->monitoring;
  auto it = std::find_if(m.begin(), m.end(), [&](auto& x) { return x.first == e->ref; });
  if (it == m.end()) return false;  // demonitored meanwhile
  m.erase(it);
  ExitReason r = reason_of(*e);
  if (p->wait == WaitKind::kCall && p->call_monitor == e->ref) {
    if (!p->wait_done) {
      p->wait_result = Result<Message>(
          Error(ErrorKind::kNoProc, "call to " + e->from.to_string() + ": the process exited (" + r.to_string() + ")"));
      p->wait_done = true;
      p->call_monitor = 0;
    }
    return false;
  }
  if (p->wait == WaitKind::kDown && p->wait_token == e->ref) {
    p->wait_result = Down{MonitorRef{e->ref}, e->from, std::move(r)};
    p->wait_done = true;
    return false;
  }
  e->system = true;
  e->payload = Down{MonitorRef{e->ref}, e->from, std::move(r)};
  e->kind = SignalKind::kMessage;
  return true;
}

// A wait token fired (a timer, a watched fd, a completion): it ends the wait it belongs to,
// if that wait is still the current one.
bool apply_wake(Process* p, Envelope* e) {
  // Tokens are never 0 (new_ref starts at 1) and clear_wait() zeroes the token, so a wake
  // cannot match a process that waits for nothing.
  NINES_DCHECK(p->wait != WaitKind::kNone || p->wait_token == 0);
  if (p->wait_token != e->ref || p->wait_done) return false;
  switch (p->wait) {
    case WaitKind::kToken:
      if (auto* r = std::any_cast<Result<std::any>>(&e->payload))
        p->wait_result = std::move(*r);
      else
        p->wait_result = Result<std::any>(std::any{});
      p->wait_done = true;
      break;
    case WaitKind::kCall:
      p->wait_result = Result<Message>(Error(ErrorKind::kTimeout, "call to " + p->send_to.to_string() + " timed out"));
      p->wait_done = true;
      break;
    case WaitKind::kReceive:
    case WaitKind::kDown: p->wait_timed_out = true; break;
    case WaitKind::kSend: {
      auto* r = std::any_cast<Result<std::any>>(&e->payload);
      p->wait_result = r && !r->ok() ? Result<void>(r->error()) : Result<void>();
      p->wait_done = true;
      break;
    }
    case WaitKind::kNone: break;
  }
  return false;
}

bool apply_signal(Process* p, Envelope* e) {
  switch (e->kind) {
    case SignalKind::kMessage:
    case SignalKind::kCall: return true;
    case SignalKind::kReply: return apply_reply(p, e);
    case SignalKind::kExit:
    case SignalKind::kLinkExit: return apply_exit_signal(p, e);
    case SignalKind::kLink:
      if (std::find(p->links.begin(), p->links.end(), e->from) == p->links.end()) p->links.push_back(e->from);
      return false;
    case SignalKind::kUnlink: erase_first(p->links, e->from); return false;
    case SignalKind::kMonitor: p->watchers.emplace_back(e->ref, e->from); return false;
    case SignalKind::kDemonitor: {
      auto& w = p->watchers;
      auto it = std::find_if(w.begin(), w.end(), [&](auto& x) { return x.first == e->ref; });
      if (it != w.end()) w.erase(it);
      return false;
    }
    case SignalKind::kDown: return apply_down(p, e);
    case SignalKind::kWake: return apply_wake(p, e);
    case SignalKind::kRoom:
      if (p->wait == WaitKind::kSend) p->room_signalled = true;
      return false;
  }
  return false;
}

}  // namespace

// Processes every signal waiting in the inbox, in order: takes the inbox as one batch,
// applies each signal (apply_signal), then appends the messages among them to the mailbox.
// Returns true if it moved anything into the mailbox. Only the running process drains
// itself, so there is never more than one batch in flight.
bool RuntimeCore::drain(Process* p) {
  NINES_DCHECK(current_process() == p);
  if (!p->has_signals.load(std::memory_order_acquire)) return false;
  EnvelopeQueue batch;
  {
    std::lock_guard lock(p->mu);
    p->has_signals.store(false, std::memory_order_relaxed);
    if (p->inbox.empty()) return false;
    NINES_DCHECK(!p->draining);
    NINES_DCHECK(!p->dead);
    batch = p->inbox.take();
    p->draining = true;  // later messages queue behind this batch
  }
  EnvelopeQueue to_mailbox;
  while (Envelope* e = batch.pop()) {
    if (apply_signal(p, e)) {
      NINES_DCHECK(e->kind == SignalKind::kMessage || e->kind == SignalKind::kCall);
      to_mailbox.push(e);
    } else {
      delete e;
    }
  }
  std::lock_guard lock(p->mu);
  NINES_DCHECK(p->draining);
  p->draining = false;
  if (to_mailbox.empty()) return false;
  p->mailbox.append(to_mailbox);
  p->mailbox_pushes.fetch_add(1, std::memory_order_release);
  return true;
}

std::optional<Message> RuntimeCore::pop_message(Process* p, const std::function<bool(const Message&)>* pred) {
  Envelope* got = nullptr;
  Pid wake_sender;
  {
    std::lock_guard lock(p->mu);
    const std::uint64_t pushes = p->mailbox_pushes.load(std::memory_order_relaxed);
    Envelope* prev = nullptr;
    for (Envelope* e = p->mailbox.head; e; prev = e, e = e->next) {
      if (pred != nullptr) {
        // The predicate sees a Message view of the envelope without copying the payload.
        Message view(e->from, {}, e->kind == SignalKind::kCall ? e->ref : 0);
        std::swap(view.payload(), e->payload);
        bool match = (*pred)(view);
        std::swap(view.payload(), e->payload);
        if (!match) continue;
      }
      p->mailbox.unlink(prev, e);
      got = e;
      break;
    }
    // Only a scan that found nothing proves that nothing waits until the next push.
    p->scanned_pushes = got ? Process::kNotScanned : pushes;
    if (got && !got->system) {
      --p->user_count;
      if (p->waiters && !p->waiters->blocked_senders.empty() && p->user_count < p->capacity) {
        auto& b = p->waiters->blocked_senders;
        wake_sender = b.front();
        b.erase(b.begin());
      }
    }
  }
  if (wake_sender.valid()) signal(wake_sender, SignalKind::kRoom, p->pid);
  if (!got) return std::nullopt;
  Message m(got->from, std::move(got->payload), got->kind == SignalKind::kCall ? got->ref : 0);
  delete got;
  return m;
}

void RuntimeCore::clear_wait(Process* p) {
  if (p->wait_timer != 0) {
    env.cancel_timer(p->wait_timer);
    p->wait_timer = 0;
  }
  if (p->wait_watch != 0) {
    env.cancel_watch(p->wait_watch);
    p->wait_watch = 0;
  }
  if (p->call_monitor != 0) {
    auto& m = p->monitoring;
    auto it = std::find_if(m.begin(), m.end(), [&](auto& x) { return x.first == p->call_monitor; });
    if (it != m.end()) {
      signal(it->second, SignalKind::kDemonitor, p->pid, p->call_monitor);
      m.erase(it);
    }
    p->call_monitor = 0;
  }
  p->wait = WaitKind::kNone;
  p->wait_token = 0;
  p->wait_done = false;
  p->wait_timed_out = false;
  p->wait_pred = nullptr;
}

bool RuntimeCore::wait_satisfied(Process* p) {
  switch (p->wait) {
    case WaitKind::kNone: return true;
    case WaitKind::kReceive: {
      // Nothing pushed since the last scan: no need to lock and look.
      if (p->mailbox_pushes.load(std::memory_order_acquire) == p->scanned_pushes) return p->wait_timed_out;
      if (auto m = pop_message(p, p->wait_pred)) {
        p->wait_msg = std::move(m);
        return true;
      }
      return p->wait_timed_out;
    }
    case WaitKind::kCall:
    case WaitKind::kToken: return p->wait_done;
    case WaitKind::kDown: return p->wait_done || p->wait_timed_out;
    case WaitKind::kSend: {
      if (p->wait_done) return true;  // the deadline passed first
      if (!p->room_signalled) return false;
      p->room_signalled = false;
      auto* e = new Envelope;
      e->kind = SignalKind::kMessage;
      e->from = p->pid;
      e->payload = *p->send_value;
      Delivery d = deliver_from(p, p->send_to, e, p->pid);
      if (d == Delivery::kBlocked) return false;  // registered again as a blocked sender
      p->wait_result =
          d == Delivery::kOk
              ? Result<void>{}
              : Result<void>(Error(ErrorKind::kNoProc, "send to " + p->send_to.to_string() + ": no such process"));
      return true;
    }
  }
  return false;
}

void RuntimeCore::run(Process* p) {
  // A queue entry means scheduled; scheduled stays set from exit on, so a dead process is
  // never queued again.
  NINES_DCHECK(p->scheduled);
  NINES_DCHECK(!p->dead);
  Process*& cur = current_process();
  Process* saved = cur;
  cur = p;
  drain(p);
  p->reductions_left = options.reductions;
  while (!p->pending_exit) {
    if (!p->started) {
      p->started = true;
      try {
        Task<> t = p->behavior(p->ctx);
        p->root = t.release();
      } catch (...) {
        finalize(p, exit_reason_from(std::current_exception()));
        cur = saved;
        return;
      }
      p->root.resume();
    } else if (p->yield_requested) {
      p->yield_requested = false;
      if (p->wait == WaitKind::kReceive && !wait_satisfied(p)) break;
      p->resume_point.resume();
    } else if (wait_satisfied(p)) {
      p->resume_point.resume();
    } else {
      break;
    }
    if (p->root.done()) {
      auto ep = p->root.promise().exception;
      finalize(p, ep ? exit_reason_from(ep) : ExitReason::normal());
      cur = saved;
      return;
    }
    if (p->yield_requested) break;
    // Signals that arrived while it ran may satisfy the new wait at once.
    drain(p);
    if (--p->reductions_left == 0) {
      p->yield_requested = true;
      break;
    }
  }
  if (p->pending_exit) {
    ExitReason r = std::move(*p->pending_exit);
    p->pending_exit.reset();
    finalize(p, std::move(r), /*by_signal=*/true);
    cur = saved;
    return;
  }
  bool again;
  {
    std::lock_guard lock(p->mu);
    again = p->yield_requested || !p->inbox.empty() ||
            (p->wait == WaitKind::kReceive && p->mailbox_pushes.load(std::memory_order_relaxed) != p->scanned_pushes);
    if (!again) p->scheduled = false;
  }
  if (again) schedule(p);
  cur = saved;
}

// Every exit passes here. OTP reports neither normal nor shutdown exits (the process was
// done, or was asked to stop); nor is a kill its supervisor sent on purpose reported. Every
// other exit is: an exception, an abnormal exit(), a kill from anyone else, an exit signal
// from a linked process (`signal_from` names the sender, so a crash spreading through links
// reads as such).
void RuntimeCore::report_exit(const Process* p, const ExitReason& reason, bool by_signal) {
  switch (reason.kind) {
    case ExitReason::Kind::kNormal:
    case ExitReason::Kind::kShutdown: return;
    case ExitReason::Kind::kKilled:
      if (by_signal && p->kill_expected) return;
      break;
    default: break;
  }
  Logger& logger = env.logger();
  if (!logger.enabled(LogLevel::kError)) return;
  const std::string pid = p->pid.to_string();
  const std::string why = reason.to_string();
  const std::string from = p->exit_signal_from.valid() ? p->exit_signal_from.to_string() : std::string("outside");
  LogField fields[4] = {{"pid", pid}, {"reason", why}, {"name", p->name}, {"signal_from", from}};
  std::size_t n = 2;
  if (!p->name.empty()) fields[n++] = fields[2];
  if (by_signal) fields[n++] = fields[3];
  logger.log_fields(LogLevel::kError, "process_crashed", "process crashed", std::span<const LogField>(fields, n));
}

void RuntimeCore::finalize(Process* p, ExitReason reason, bool by_signal) {
  NINES_DCHECK(current_process() == p || !p->started);
  report_exit(p, reason, by_signal);
  if (p->wait != WaitKind::kNone) clear_wait(p);
  NINES_DCHECK(p->wait == WaitKind::kNone && p->wait_timer == 0 && p->wait_watch == 0 && p->call_monitor == 0);
  if (p->root) {
    // Unwinds the process's coroutines (their destructors may still send).
    auto r = std::exchange(p->root, {});
    r.destroy();
  }
  p->behavior = nullptr;
  clear_last_target(p);
  EnvelopeQueue inbox, mailbox;
  std::vector<Pid> blocked;
  std::vector<std::shared_ptr<ExitWatchImpl>> watches;
  {
    std::lock_guard lock(p->mu);
    // Exactly one exit per process: a second would signal its links and watchers twice.
    NINES_CHECK_MSG(!p->dead, "finalize: " + p->pid.to_string() + " has exited already");
    p->dead = true;
    inbox = p->inbox.take();
    mailbox = p->mailbox.take();
    if (p->waiters) {
      blocked.swap(p->waiters->blocked_senders);
      watches.swap(p->waiters->exit_watches);
    }
    p->user_count = 0;
  }
  // Links and monitors that arrived before death still see the real reason.
  while (Envelope* e = inbox.pop()) {
    if (e->kind == SignalKind::kLink) {
      if (std::find(p->links.begin(), p->links.end(), e->from) == p->links.end()) p->links.push_back(e->from);
    } else if (e->kind == SignalKind::kMonitor) {
      p->watchers.emplace_back(e->ref, e->from);
    } else if (e->kind == SignalKind::kUnlink) {
      erase_first(p->links, e->from);
    } else if (e->kind == SignalKind::kDemonitor) {
      auto& w = p->watchers;
      auto it = std::find_if(w.begin(), w.end(), [&](auto& x) { return x.first == e->ref; });
      if (it != w.end()) w.erase(it);
    }
    delete e;
  }
  mailbox.clear();
  if (!p->name.empty()) unregister_name(p->name, p->pid);
  table_remove(p->pid);  // from here on, signals to p find no process
  for (Pid l : p->links) signal(l, SignalKind::kLinkExit, p->pid, 0, reason);
  p->links.clear();
  for (auto& [ref, w] : p->watchers) signal(w, SignalKind::kDown, p->pid, ref, reason);
  p->watchers.clear();
  for (auto& [ref, t] : p->monitoring) signal(t, SignalKind::kDemonitor, p->pid, ref);
  p->monitoring.clear();
  for (Pid b : blocked) signal(b, SignalKind::kRoom, p->pid);
  for (auto& w : watches) w->set(reason);
  NINES_DCHECK(p->last_target == nullptr && !p->root);
}

Result<void> RuntimeCore::register_name(const std::string& name, Pid pid) {
  std::lock_guard lock(names_mu_);
  auto [it, inserted] = names_.emplace(name, pid);
  if (!inserted) {
    return Error(ErrorKind::kAlreadyExists, "name '" + name + "' is already registered to " + it->second.to_string());
  }
  return {};
}

void RuntimeCore::unregister_name(const std::string& name, Pid pid) {
  std::lock_guard lock(names_mu_);
  auto it = names_.find(name);
  if (it != names_.end() && it->second == pid) names_.erase(it);
}

std::optional<Pid> RuntimeCore::whereis(const std::string& name) const {
  std::lock_guard lock(names_mu_);
  auto it = names_.find(name);
  if (it == names_.end()) return std::nullopt;
  return it->second;
}

std::shared_ptr<ExitWatch> RuntimeCore::watch_exit(Pid pid) {
  auto w = std::make_shared<ExitWatchImpl>(env.deterministic());
  ProcessRef p = lookup(pid);
  if (!p) {
    w->set(ExitReason::noproc());
    return w;
  }
  {
    std::lock_guard lock(p->mu);
    if (!p->dead) {
      p->waiters_locked().exit_watches.push_back(w);
      return w;
    }
  }
  w->set(ExitReason::noproc());
  return w;
}

TimerId RuntimeCore::add_timer(Duration delay, std::function<void(RuntimeCore&)> fn) {
  std::weak_ptr<RuntimeCore> weak = weak_from_this();
  TimePoint at = add_saturating(env.now(), delay);
  if (env.fault(FaultPoint::kTimerLate)) at = add_saturating(at, env.fault_delay(FaultPoint::kTimerLate));
  return env.add_timer(at, [weak, fn = std::move(fn)] {
    if (auto core = weak.lock()) fn(*core);
  });
}

std::size_t RuntimeCore::run_until_idle() {
  NINES_CHECK_MSG(env.deterministic(), "run_until_idle() drives a deterministic runtime only");
  auto& sim = static_cast<SimEnvironment&>(env);
  std::size_t runs = 0;
  for (;;) {
    std::size_t n = scheduler_->run_ready();
    runs += n;
    std::size_t fired = sim.fire_due_timers();
    std::size_t ready = sim.poll_fds();
    if (n == 0 && fired == 0 && ready == 0) break;
  }
  return runs;
}

void RuntimeCore::advance(Duration d) {
  NINES_CHECK_MSG(env.deterministic(), "advance() drives a deterministic runtime only");
  auto& sim = static_cast<SimEnvironment&>(env);
  TimePoint target = add_saturating(sim.now(), d);
  run_until_idle();
  for (;;) {
    TimePoint next = sim.next_timer_deadline();
    if (next > target) break;
    sim.set_now(next);
    run_until_idle();
  }
  sim.set_now(target);
  run_until_idle();
}

}  // namespace nines::internal
