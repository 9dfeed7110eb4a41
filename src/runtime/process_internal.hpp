// Internal: the process object, its signal queue and the runtime core that schedules it.
// Never included from a public header.
//
// Ownership and threads:
//  - A Process is reference counted (ProcessRef). The process table holds one reference while
//    it is alive; a run queue entry holds one while it is scheduled.
//  - Fields under `mu` (inbox, mailbox, counters, flags) may be touched by any thread holding
//    mu. Every other field is owned by the single worker currently running the process
//    (`scheduled` guarantees one at a time), or by the thread that spawned a held process
//    before releasing it.
#pragma once

#include <any>
#include <atomic>
#include <condition_variable>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "nines/core/check.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/runtime.hpp"
#include "runtime/spin_lock.hpp"

namespace nines::internal {

enum class SignalKind : std::uint8_t {
  kMessage,    // user message
  kCall,       // user request (ref = call ref)
  kReply,      // reply to a call (ref = call ref)
  kExit,       // exit signal sent with exit/2 (payload ExitReason)
  kLinkExit,   // exit signal from a linked process that exited (payload ExitReason)
  kLink,       // from wants a link
  kUnlink,     // from removed its link
  kMonitor,    // from monitors us with ref
  kDemonitor,  // from dropped monitor ref
  kDown,       // a process we monitor (ref) exited (payload ExitReason)
  kWake,       // a wait token fired (ref = token, payload Result<std::any>)
  kRoom,       // a mailbox we wait to send to has room
};

struct Envelope {
  Envelope* next = nullptr;
  SignalKind kind = SignalKind::kMessage;
  bool system = false;  // an Exit/Down message in a mailbox: never dropped, not counted
  // A timer a process set for itself (send_after to self): its own schedule (a supervisor's
  // delayed restart), so it is delivered, and counted, even over capacity or when the
  // kMailboxFull fault point fires; never the one dropped by kDropOldest either.
  bool own_timer = false;
  Pid from;
  std::uint64_t ref = 0;
  std::any payload;

  bool is_user() const { return kind == SignalKind::kMessage || kind == SignalKind::kCall; }
};

struct EnvelopeQueue {
  Envelope* head = nullptr;
  Envelope* tail = nullptr;

  bool empty() const { return head == nullptr; }
  void push(Envelope* e) {
    e->next = nullptr;
    if (tail)
      tail->next = e;
    else
      head = e;
    tail = e;
  }
  Envelope* pop() {
    Envelope* e = head;
    if (e) {
      head = e->next;
      if (!head) tail = nullptr;
      e->next = nullptr;
    }
    return e;
  }
  // Removes `e`, whose predecessor is `prev` (nullptr when e is the head).
  void unlink(Envelope* prev, Envelope* e) {
    NINES_DCHECK(e != nullptr && (prev != nullptr ? prev->next == e : head == e));
    if (prev)
      prev->next = e->next;
    else
      head = e->next;
    if (tail == e) tail = prev;
    e->next = nullptr;
  }
  void append(EnvelopeQueue& other) {
    NINES_DCHECK(&other != this);
    if (other.empty()) return;
    if (tail)
      tail->next = other.head;
    else
      head = other.head;
    tail = other.tail;
    other.head = other.tail = nullptr;
  }
  EnvelopeQueue take() {
    EnvelopeQueue q = *this;
    head = tail = nullptr;
    return q;
  }
  void clear() {
    while (Envelope* e = pop()) delete e;
  }
};

enum class WaitKind : std::uint8_t { kNone, kReceive, kCall, kToken, kSend, kDown };

// The `ref` of a kExit kill signal sent on purpose (Context::kill_on_purpose: a supervisor's
// brutal_kill or shutdown timeout, a hedge's cancelled attempt): the target's `killed` exit is
// expected and not reported as a crash.
inline constexpr std::uint64_t kExpectedKillRef = 1;

class ExitWatchImpl;

class Process {
 public:
  Process(RuntimeCore* rt, Pid pid, Behavior behavior, const SpawnOptions& options, std::size_t capacity);
  ~Process();

  void retain() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() {
    const std::uint32_t before = refs_.fetch_sub(1, std::memory_order_acq_rel);
    NINES_DCHECK(before != 0);  // a reference released twice
    if (before == 1) delete this;
  }

  RuntimeCore* const rt;
  const Pid pid;
  const std::uint32_t capacity;
  const OverflowPolicy overflow;

  // ---- guarded by mu ----
  SpinLock mu;
  EnvelopeQueue inbox;           // every signal, in arrival order
  EnvelopeQueue mailbox;         // messages ready for receive, in arrival order
  std::uint32_t user_count = 0;  // user messages in inbox + mailbox
  // Counts pushes into the mailbox: a receiver compares it with what it last scanned to know
  // whether a message arrived while it was running.
  // Written under mu; atomic so the owner can see "nothing new" without taking the lock.
  std::atomic<std::uint64_t> mailbox_pushes{0};
  bool scheduled = false;  // queued, running or held: a sender must not queue it again
  bool draining = false;   // drain() holds a batch taken from the inbox
  bool dead = false;
  // Rarely used, so allocated on first use: processes waiting for room in this mailbox
  // (kSuspendSender) and outside watchers of this process's exit.
  struct Waiters {
    std::vector<Pid> blocked_senders;
    std::vector<std::shared_ptr<ExitWatchImpl>> exit_watches;
  };
  std::unique_ptr<Waiters> waiters;
  Waiters& waiters_locked() {
    if (!waiters) waiters = std::make_unique<Waiters>();
    return *waiters;
  }

  // Set (under mu) when the inbox holds signals; lets drain() skip the lock when it is empty.
  std::atomic<bool> has_signals{false};

  // ---- owned by the running worker ----
  static constexpr std::uint64_t kNotScanned = ~0ULL;
  std::uint64_t scanned_pushes = kNotScanned;  // mailbox_pushes at the last scan that found nothing
  // The last process this one sent to, kept referenced so repeated sends skip the process
  // table (see RuntimeCore::deliver_from). Cleared at exit and when the runtime stops.
  Process* last_target = nullptr;
  Context ctx;
  Behavior behavior;
  std::coroutine_handle<Task<>::promise_type> root;
  std::coroutine_handle<> resume_point;
  bool started = false;
  bool trap_exit = false;
  bool yield_requested = false;
  std::string name;
  std::vector<Pid> links;
  std::vector<std::pair<std::uint64_t, Pid>> watchers;    // monitors others hold on us
  std::vector<std::pair<std::uint64_t, Pid>> monitoring;  // monitors we hold on others
  std::unique_ptr<ExitReason> pending_exit;               // set when a signal killed it; acted on after the slice
  Pid exit_signal_from;                   // who sent the exit signal behind pending_exit (invalid: from outside)
  bool kill_expected = false;             // pending_exit is a kill its supervisor sent on purpose (not reported)
  TimePoint deadline = TimePoint::max();  // see Context::deadline
  unsigned reductions_left = 0;

  // The one thing the process is suspended on.
  WaitKind wait = WaitKind::kNone;
  std::uint64_t wait_token = 0;
  TimerId wait_timer = 0;
  WatchId wait_watch = 0;
  bool wait_done = false;
  bool wait_timed_out = false;
  const std::function<bool(const Message&)>* wait_pred = nullptr;
  std::optional<Message> wait_msg;  // receive
  // call: Result<Message>; sleep/fd/external: Result<std::any>; send: Result<void>; Down.
  std::variant<std::monostate, Result<Message>, Result<std::any>, Result<void>, Down> wait_result;
  std::uint64_t call_monitor = 0;
  Pid send_to;
  std::any* send_value = nullptr;
  bool room_signalled = false;

 private:
  std::atomic<std::uint32_t> refs_{1};
};

class ProcessRef {
 public:
  ProcessRef() = default;
  explicit ProcessRef(Process* p, bool adopt = false) : p_(p) {
    if (p_ && !adopt) p_->retain();
  }
  ProcessRef(const ProcessRef& o) : p_(o.p_) {
    if (p_) p_->retain();
  }
  ProcessRef(ProcessRef&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  ProcessRef& operator=(ProcessRef o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~ProcessRef() {
    if (p_) p_->release();
  }
  Process* get() const { return p_; }
  Process* operator->() const { return p_; }
  explicit operator bool() const { return p_ != nullptr; }
  Process* detach() { return std::exchange(p_, nullptr); }

 private:
  Process* p_ = nullptr;
};

class ExitWatchImpl final : public ExitWatch {
 public:
  explicit ExitWatchImpl(bool deterministic) : deterministic_(deterministic) {}
  bool done() const override;
  ExitReason wait() override;
  ExitReason reason() const override;
  void set(ExitReason r);

 private:
  bool deterministic_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  ExitReason reason_;
};

// Outcome of delivering a signal.
// kBlocked: full, and the sender was recorded to be told when there is room.
enum class Delivery : std::uint8_t { kOk, kNoProc, kFull, kBlocked };

class Scheduler;

class RuntimeCore : public std::enable_shared_from_this<RuntimeCore> {
 public:
  RuntimeCore(Environment& env, const RuntimeOptions& options);
  ~RuntimeCore();

  Result<void> start();  // starts the scheduler's workers
  void stop();           // stops workers and destroys every remaining process

  Environment& env;
  const RuntimeOptions options;
  SupervisionEvents events;
  Runtime* facade = nullptr;

  // Creates a process. With `held`, it is not scheduled until release() (its spawner may set
  // it up first; signals to it queue meanwhile). `link_to` is linked atomically.
  Result<ProcessRef> spawn(Behavior behavior, const SpawnOptions& options, Pid link_to, bool held);
  void release(Process* p);

  ProcessRef lookup(Pid pid) const;
  // Queues an envelope for `to` (takes ownership of e in every outcome). For a user message
  // under kSuspendSender with a full mailbox and a valid `blocked_sender`, the sender is
  // recorded to be told when there is room, and kBlocked is returned.
  Delivery deliver(Pid to, Envelope* e, Pid blocked_sender = {});
  // Convenience for control signals.
  Delivery signal(Pid to, SignalKind kind, Pid from, std::uint64_t ref = 0, std::any payload = {});
  // deliver() from a process, through its last_target cache.
  Delivery deliver_from(Process* sender, Pid to, Envelope* e, Pid blocked_sender = {});
  Delivery deliver_to(Process* t, Envelope* e, Pid blocked_sender);
  static void clear_last_target(Process* p);

  void schedule(Process* p);  // p->scheduled is already true; takes a new reference
  void run(Process* p);       // runs one slice of p on this thread

  // Signals processing and waits (used by Context and the awaiters).
  // Returns true if it moved anything into the mailbox.
  bool drain(Process* p);
  bool wait_satisfied(Process* p);
  void clear_wait(Process* p);
  std::optional<Message> pop_message(Process* p, const std::function<bool(const Message&)>* pred);
  // Ends p with `reason`; `by_signal`: the reason is its pending_exit (an exit signal killed it).
  void finalize(Process* p, ExitReason reason, bool by_signal = false);
  // The process_crashed report of an abnormal exit (core/log.hpp), from finalize.
  void report_exit(const Process* p, const ExitReason& reason, bool by_signal);

  std::uint64_t new_ref() { return next_ref_.fetch_add(1, std::memory_order_relaxed); }

  Result<void> register_name(const std::string& name, Pid pid);
  void unregister_name(const std::string& name, Pid pid);
  std::optional<Pid> whereis(const std::string& name) const;

  std::size_t live() const { return live_.load(std::memory_order_relaxed); }
  std::shared_ptr<ExitWatch> watch_exit(Pid pid);

  std::size_t run_until_idle();
  void advance(Duration d);

  // Timers whose callback delivers into this runtime if it still exists.
  TimerId add_timer(Duration delay, std::function<void(RuntimeCore&)> fn);

 private:
  static constexpr std::size_t kShards = 64;
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::uint64_t, Process*> map;
  };
  Shard& shard(Pid pid) const { return shards_[(pid.id * 0x9e3779b97f4a7c15ULL) >> 58]; }
  void table_remove(Pid pid);

  mutable Shard shards_[kShards];
  std::atomic<std::uint64_t> next_pid_{1};
  std::atomic<std::uint64_t> next_ref_{1};
  std::atomic<std::size_t> live_{0};
  mutable std::mutex names_mu_;
  std::unordered_map<std::string, Pid> names_;
  std::unique_ptr<Scheduler> scheduler_;
  bool stopped_ = false;
};

// Where the currently running process lives (nullptr outside processes).
Process*& current_process();

}  // namespace nines::internal
