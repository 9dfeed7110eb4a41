#include "runtime/scheduler.hpp"

#include <algorithm>
#include <atomic>
#include <climits>

#include "core/futex.hpp"
#include "nines/core/check.hpp"
#include "runtime/process_internal.hpp"

namespace nines::internal {
namespace {

class ThreadedScheduler;

struct Worker {
  ThreadedScheduler* owner = nullptr;
  unsigned index = 0;
  Process* lifo = nullptr;  // touched only by this worker's thread
  unsigned lifo_streak = 0;
  TimePoint last_poll{};  // this worker's last look at the event loop
  std::mutex mu;
  std::deque<Process*> local;
  std::unique_ptr<Thread> thread;
};

thread_local Worker* tls_worker = nullptr;

class ThreadedScheduler final : public Scheduler {
 public:
  ThreadedScheduler(RuntimeCore& core, unsigned n) : core_(core), workers_(n) {
    for (unsigned i = 0; i < n; ++i) {
      workers_[i] = std::make_unique<Worker>();
      workers_[i]->owner = this;
      workers_[i]->index = i;
    }
  }

  ~ThreadedScheduler() override { stop(); }

  Result<void> start() override {
    // The workers poll the event loop when idle (Environment::poll_events): the worker that
    // waits for an event runs the process it wakes, with no hand-off.
    if (core_.options.poll_in_workers) poller_id_ = core_.env.attach_pollers([this] { on_unpolled(); });
    for (auto& w : workers_) {
      Worker* wp = w.get();
      auto t = core_.env.start_thread("nines-worker-" + std::to_string(wp->index), [this, wp] { loop(wp); });
      if (!t.ok()) {
        stop();
        return std::move(t).error();
      }
      w->thread = std::move(*t);
    }
    return {};
  }

  void stop() override {
    stop_.store(true);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(epoch_, INT_MAX);
    core_.env.interrupt_poll();  // a worker waiting in the loop: it holds the loop, so it sees this
    for (auto& w : workers_) {
      if (w->thread) {
        w->thread->join();
        w->thread.reset();
      }
    }
    if (poller_id_ != 0) core_.env.detach_pollers(std::exchange(poller_id_, 0));
  }

  void push(Process* p) override {
    Worker* w = tls_worker;
    if (w && w->owner == this) {
      if (w->lifo == nullptr) {
        w->lifo = p;
        return;
      }
      Process* old = w->lifo;
      w->lifo = p;
      {
        std::lock_guard lock(w->mu);
        w->local.push_back(old);
      }
    } else {
      std::lock_guard lock(global_mu_);
      global_.push_back(p);
    }
    wake_one();
  }

  std::vector<Process*> drain_queued() override {
    // Only once the workers are gone: a worker's LIFO slot is its own while it runs.
    NINES_DCHECK(stop_.load() &&
                 std::none_of(workers_.begin(), workers_.end(), [](const auto& w) { return w->thread != nullptr; }));
    std::vector<Process*> out;
    for (auto& w : workers_) {
      if (w->lifo) out.push_back(std::exchange(w->lifo, nullptr));
      std::lock_guard lock(w->mu);
      out.insert(out.end(), w->local.begin(), w->local.end());
      w->local.clear();
    }
    std::lock_guard lock(global_mu_);
    out.insert(out.end(), global_.begin(), global_.end());
    global_.clear();
    return out;
  }

 private:
  static constexpr unsigned kMaxLifoStreak = 32;
  static constexpr int kSpinsBeforeSleep = 64;
  static constexpr std::size_t kMaxSteal = 64;
  static constexpr Duration kPollInterval = std::chrono::microseconds(200);

  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  void wake_one() {
    if (sleepers_.load(std::memory_order_seq_cst) == 0) return;
    // One wake in flight is enough: the woken worker looks for all queued work. Without this
    // a producer pays a futex call per push while the sleeper is still waking up.
    if (waking_.exchange(true, std::memory_order_acq_rel)) return;
    // A futex on the epoch: one system call to wake a sleeper, and no mutex for the sleeper
    // and the waker to hand back and forth. A worker asleep on the futex is woken rather than
    // the one waiting in the event loop, which goes on waiting for events.
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    if (futex_sleepers_.load(std::memory_order_seq_cst) > 0) {
      futex_wake(epoch_, 1);
    } else if (polling_.load(std::memory_order_seq_cst)) {
      core_.env.interrupt_poll();
    }
  }

  // The environment's monitor found nobody polling for a while: if a worker sleeps on the
  // futex while none waits in the loop, wake it; idle, it takes the loop.
  void on_unpolled() {
    if (futex_sleepers_.load(std::memory_order_seq_cst) == 0 || polling_.load(std::memory_order_seq_cst)) return;
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(epoch_, 1);
  }

  Process* pop_local(Worker* w) {
    std::lock_guard lock(w->mu);
    if (w->local.empty()) return nullptr;
    Process* p = w->local.front();
    w->local.pop_front();
    return p;
  }

  Process* find_work(Worker* w) {
    if (w->lifo) {
      if (w->lifo_streak < kMaxLifoStreak) {
        ++w->lifo_streak;
        return std::exchange(w->lifo, nullptr);
      }
      // Let the others in the local queue run: the LIFO slot goes to the back. With nobody
      // else queued it keeps running here (demoting it would only invite a thief).
      w->lifo_streak = 0;
      std::lock_guard lock(w->mu);
      if (w->local.empty()) return std::exchange(w->lifo, nullptr);
      w->local.push_back(std::exchange(w->lifo, nullptr));
    }
    w->lifo_streak = 0;
    if (Process* p = pop_local(w)) return p;
    {
      std::lock_guard lock(global_mu_);
      if (!global_.empty()) {
        Process* p = global_.front();
        global_.pop_front();
        return p;
      }
    }
    // Steal half of a victim's queue (at most kMaxSteal), oldest first, so a busy producer
    // and a thief do not meet on the victim's lock for every single process.
    for (std::size_t i = 1; i < workers_.size(); ++i) {
      Worker* v = workers_[(w->index + i) % workers_.size()].get();
      Process* first = nullptr;
      std::vector<Process*> rest;
      {
        std::lock_guard lock(v->mu);
        std::size_t n = std::min<std::size_t>((v->local.size() + 1) / 2, kMaxSteal);
        if (n == 0) continue;
        first = v->local.front();
        v->local.pop_front();
        for (std::size_t k = 1; k < n; ++k) {
          rest.push_back(v->local.front());
          v->local.pop_front();
        }
      }
      if (!rest.empty()) {
        std::lock_guard lock(w->mu);
        w->local.insert(w->local.end(), rest.begin(), rest.end());
      }
      return first;
    }
    return nullptr;
  }

  void loop(Worker* w) {
    tls_worker = w;
    while (!stop_.load(std::memory_order_relaxed)) {
      Process* p = find_work(w);
      // Spin a little before sleeping: waking a sleeping worker costs a futex call on the
      // producer's side, which dominates when work arrives in quick bursts.
      for (int spin = 0; p == nullptr && spin < kSpinsBeforeSleep; ++spin) {
        cpu_relax();
        p = find_work(w);
      }
      if (p == nullptr) {
        // The epoch is read before this worker counts as a sleeper: a wake after that point
        // changes it, and the wait below returns at once.
        std::uint32_t seen = epoch_.load(std::memory_order_seq_cst);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        // Re-arm wakes before the last look. The exchange reads the flag written by any
        // producer that skipped its wake because one was in flight, so that producer's push
        // is visible to the find_work below: no push is left with every worker asleep.
        waking_.exchange(false, std::memory_order_acq_rel);
        p = find_work(w);
        if (p == nullptr) {
          // Wait in the event loop if nobody else does: events run their callbacks here, and
          // the processes they wake land in this worker's LIFO slot. polling_ is set before
          // the last look at the epoch, and a producer bumps the epoch before it reads
          // polling_: either this worker sees the push or the producer interrupts the wait.
          const bool polled = poller_id_ != 0 && core_.env.poll_events(true, [&] {
            polling_.store(true, std::memory_order_seq_cst);
            return epoch_.load(std::memory_order_seq_cst) == seen && !stop_.load();
          });
          polling_.store(false, std::memory_order_seq_cst);
          if (!polled) {
            // Another thread has the loop: sleep on the futex. The kernel compares the epoch
            // with `seen` before it sleeps: a wake in between is not lost. Spurious returns
            // (EINTR) look again.
            futex_sleepers_.fetch_add(1, std::memory_order_seq_cst);
            while (epoch_.load(std::memory_order_seq_cst) == seen && !stop_.load()) futex_wait(epoch_, seen);
            futex_sleepers_.fetch_sub(1, std::memory_order_seq_cst);
          }
          w->last_poll = core_.env.now();
        }
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        if (p == nullptr) {
          // Woken: let the next push wake another sleeper while this one looks for work.
          waking_.exchange(false, std::memory_order_acq_rel);
          continue;
        }
      }
      core_.run(p);
      p->release();  // the queue's reference
      // Busy workers look at the event loop between runs (without waiting) so events are
      // not left for the monitor while nobody is idle: at most every kPollInterval each.
      const TimePoint t = core_.env.now();
      if (poller_id_ != 0 && t - w->last_poll >= kPollInterval) {
        w->last_poll = t;
        core_.env.poll_events(false, {});
      }
    }
    tls_worker = nullptr;
  }

  RuntimeCore& core_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::mutex global_mu_;
  std::deque<Process*> global_;
  std::atomic<std::uint32_t> epoch_{0};  // changed by every wake: idle workers wait on it
  std::atomic<int> sleepers_{0};         // idle workers, in the loop's wait or on the futex
  std::atomic<int> futex_sleepers_{0};   // of which asleep on the futex
  std::atomic<bool> polling_{false};     // a worker is in (or entering) the loop's wait
  std::uint64_t poller_id_ = 0;          // Environment::attach_pollers
  std::atomic<bool> waking_{false};
  std::atomic<bool> stop_{false};
};

class DeterministicScheduler final : public Scheduler {
 public:
  explicit DeterministicScheduler(RuntimeCore& core) : core_(core) {}
  Result<void> start() override { return {}; }
  void stop() override {}
  void push(Process* p) override { ready_.push_back(p); }

  std::size_t run_ready() override {
    std::size_t runs = 0;
    while (!ready_.empty()) {
      std::size_t i = core_.env.random_below(ready_.size());
      Process* p = ready_[i];
      ready_[i] = ready_.back();
      ready_.pop_back();
      core_.run(p);
      p->release();
      ++runs;
    }
    return runs;
  }

  std::vector<Process*> drain_queued() override { return std::exchange(ready_, {}); }

 private:
  RuntimeCore& core_;
  std::vector<Process*> ready_;
};

}  // namespace

std::unique_ptr<Scheduler> make_threaded_scheduler(RuntimeCore& core, unsigned workers) {
  return std::make_unique<ThreadedScheduler>(core, workers);
}

std::unique_ptr<Scheduler> make_deterministic_scheduler(RuntimeCore& core) {
  return std::make_unique<DeterministicScheduler>(core);
}

}  // namespace nines::internal
