// The production environment. This file is the only place in nines allowed to read real
// clocks, use std::random_device and start std::threads (see scripts/check_env_seam.sh).
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/futex.hpp"
#include "core/timer_heap.hpp"
#include "core/xoshiro.hpp"
#include "nines/core/environment.hpp"

namespace nines {
namespace {

class RealThread final : public Thread {
 public:
  explicit RealThread(std::function<void()> body) : t_(std::move(body)) {}
  ~RealThread() override {
    if (t_.joinable()) t_.join();
  }
  void join() override {
    if (t_.joinable()) t_.join();
  }

 private:
  std::thread t_;
};

class RealEnvironment final : public Environment {
 public:
  explicit RealEnvironment(const RealEnvironmentOptions& options)
      : logger_(*this, options.log_level,
                options.log_sink ? options.log_sink
                                 : (options.log_format == LogFormat::kJsonLines ? make_json_lines_sink(stderr)
                                                                                : make_human_sink(stderr)),
                options.log_rate_limit) {
    workers_ = options.workers != 0 ? options.workers : std::max(1u, std::thread::hardware_concurrency());
    base_seed_ = options.seed != 0
                     ? options.seed
                     : (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epfd_ < 0 || wakefd_ < 0) {
      throw std::runtime_error(std::string("cannot create the event loop: ") + std::strerror(errno));
    }
    add_internal(wakefd_, kWakeTag);
    loop_ = std::thread([this] { run_loop(); });
  }

  ~RealEnvironment() override {
    stop_.store(true);
    interrupt_poll();
    wake_monitor();
    loop_.join();
    ::close(epfd_);
    ::close(wakefd_);
  }

  bool deterministic() const override { return false; }

  TimePoint now() const override {
    return TimePoint(std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now().time_since_epoch()));
  }

  std::int64_t unix_time_ns() const override {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

  std::uint64_t random_u64() override {
    thread_local internal::Xoshiro256 rng(0);
    thread_local const RealEnvironment* owner = nullptr;
    if (owner != this) {
      owner = this;
      rng.reseed(base_seed_ ^ (0x9e3779b97f4a7c15ULL * (1 + thread_counter_.fetch_add(1))));
    }
    return rng.next();
  }

  unsigned default_workers() const override { return workers_; }

  // The thread carries `name` (its first 15 bytes: the kernel's limit), so top -H, perf and
  // debuggers show what it is.
  Result<std::unique_ptr<Thread>> start_thread(std::string name, std::function<void()> body) override {
    auto named = [name = name.substr(0, 15), body = std::move(body)] {
      pthread_setname_np(pthread_self(), name.c_str());
      body();
    };
    return std::unique_ptr<Thread>(new RealThread(std::move(named)));
  }

  // The loop waits in epoll until the earliest timer's deadline (armed_). A timer added
  // while the loop runs callbacks needs nothing more (armed_ is TimePoint::min() then: the
  // loop looks at the timers again before it waits); one added from another thread while the
  // loop waits wakes it (eventfd) only when it is due before what the loop waits for. So the
  // loop thread's own timers (the HTTP client's, the runtime's) cost no system call.
  TimerId add_timer(TimePoint deadline, std::function<void()> fn) override {
    bool wake = false;
    TimerId id;
    {
      std::lock_guard lock(mu_);
      id = timers_.add(deadline, std::move(fn));
      if (deadline < armed_) {
        armed_ = deadline;
        wake = true;
      }
    }
    if (wake) {
      std::uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(wakefd_, &one, sizeof one);
    }
    return id;
  }

  bool cancel_timer(TimerId id) override {
    std::lock_guard lock(mu_);
    return timers_.cancel(id);
  }

  Result<WatchId> watch_fd(int fd, unsigned events, std::function<void(unsigned)> fn) override {
    return add_watch(fd, events, std::move(fn), /*rearmable=*/false);
  }

  Result<WatchId> watch_fd_rearmable(int fd, unsigned events, std::function<void(unsigned)> fn) override {
    return add_watch(fd, events, std::move(fn), /*rearmable=*/true);
  }

  bool rearm_watch(WatchId id, unsigned events) override {
    std::lock_guard lock(mu_);
    auto it = watches_.find(id);
    if (it == watches_.end() || !it->second.keep) return false;
    epoll_event ev{};
    ev.events = epoll_bits(events);
    ev.data.u64 = id;
    return epoll_ctl(epfd_, EPOLL_CTL_MOD, it->second.fd, &ev) == 0;
  }

  Logger& logger() override { return logger_; }

  std::uint64_t attach_pollers(std::function<void()> on_unpolled) override {
    std::uint64_t id;
    {
      std::lock_guard lock(hooks_mu_);
      id = next_hook_++;
      hooks_.emplace_back(id, std::move(on_unpolled));
    }
    attached_.fetch_add(1, std::memory_order_seq_cst);
    interrupt_poll();  // the loop thread leaves its wait and turns monitor
    return id;
  }

  void detach_pollers(std::uint64_t id) override {
    {
      std::lock_guard lock(hooks_mu_);  // held while the hooks run: none runs after this
      auto it = std::find_if(hooks_.begin(), hooks_.end(), [id](const auto& h) { return h.first == id; });
      if (it == hooks_.end()) return;
      hooks_.erase(it);
    }
    attached_.fetch_sub(1, std::memory_order_seq_cst);
    wake_monitor();  // back to waiting in epoll itself if it was the last
  }

  bool poll_events(bool block, const std::function<bool()>& may_block) override {
    if (!try_hold()) return false;
    poll_once(block && (!may_block || may_block()));
    release_hold();
    return true;
  }

  void interrupt_poll() override {
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wakefd_, &one, sizeof one);
  }

  bool cancel_watch(WatchId id) override {
    std::lock_guard lock(mu_);
    auto it = watches_.find(id);
    if (it == watches_.end()) return false;
    epoll_ctl(epfd_, EPOLL_CTL_DEL, it->second.fd, nullptr);
    watches_.erase(it);
    return true;
  }

 private:
  static constexpr std::uint64_t kWakeTag = ~0ULL;

  // A re-armable watch's callback is shared with the loop's list of callbacks to run, so a
  // cancel from another thread meanwhile does not destroy it while it runs.
  struct Watch {
    int fd;
    std::function<void(unsigned)> fn;                     // one-shot
    std::shared_ptr<std::function<void(unsigned)>> keep;  // re-armable
  };

  // Every watch is EPOLLONESHOT: disabled by the kernel when it fires. A one-shot watch is
  // then deleted; a re-armable one stays until rearm_watch (EPOLL_CTL_MOD) or cancel_watch.
  static std::uint32_t epoll_bits(unsigned events) {
    return EPOLLONESHOT | ((events & kFdReadable) ? EPOLLIN | EPOLLRDHUP : 0u) |
           ((events & kFdWritable) ? EPOLLOUT : 0u);
  }

  Result<WatchId> add_watch(int fd, unsigned events, std::function<void(unsigned)> fn, bool rearmable) {
    const char* what = rearmable ? "watch_fd_rearmable" : "watch_fd";
    if (fd < 0) return Error(ErrorKind::kInvalidArgument, std::string(what) + ": negative fd " + std::to_string(fd));
    if ((events & (kFdReadable | kFdWritable)) == 0) {
      return Error(ErrorKind::kInvalidArgument, std::string(what) + ": no readable/writable event requested");
    }
    Watch w{fd, {}, {}};
    if (rearmable) {
      w.keep = std::make_shared<std::function<void(unsigned)>>(std::move(fn));
    } else {
      w.fn = std::move(fn);
    }
    std::lock_guard lock(mu_);
    WatchId id = next_id_++;
    epoll_event ev{};
    ev.events = epoll_bits(events);
    ev.data.u64 = id;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      return Error(ErrorKind::kInvalidArgument,
                   std::string(what) + "(" + std::to_string(fd) + "): " + std::strerror(errno));
    }
    watches_.emplace(id, std::move(w));
    return id;
  }

  void add_internal(int fd, std::uint64_t tag) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  }

  // epoll_pwait2 (nanosecond timeouts) where the kernel has it (Linux 5.11); where it fails
  // otherwise than EINTR (ENOSYS on an older kernel, EPERM or ENOSYS under a seccomp profile
  // that does not know it), epoll_wait from then on, its timeout rounded up to a millisecond
  // (never early: a wake-up before the deadline would only loop).
  int wait_events(epoll_event* events, int max, const timespec* timeout) {
    if (use_pwait2_) {
      int n = epoll_pwait2(epfd_, events, max, timeout, nullptr);
      if (n >= 0 || errno == EINTR) return n;
      use_pwait2_ = false;
    }
    int ms = -1;
    if (timeout != nullptr) {
      const std::int64_t ns = static_cast<std::int64_t>(timeout->tv_sec) * 1'000'000'000 + timeout->tv_nsec;
      ms = static_cast<int>(std::min<std::int64_t>((ns + 999'999) / 1'000'000, std::numeric_limits<int>::max()));
    }
    return epoll_wait(epfd_, events, max, ms);
  }

  // The loop is run by whoever holds it (held_): the loop thread, or a thread in
  // poll_events. Everything below up to release_hold is the holder's alone.
  bool try_hold() { return !held_.load(std::memory_order_relaxed) && !held_.exchange(true, std::memory_order_acquire); }
  void release_hold() { held_.store(false, std::memory_order_release); }

  // One turn: waits (if `block`: until an fd is ready, the earliest timer is due or
  // interrupt_poll) for events, then runs the callbacks of the ready fds and the due timers.
  void poll_once(bool block) {
    polls_.fetch_add(1, std::memory_order_relaxed);
    timespec timeout{};  // zero: do not wait
    timespec* wait = &timeout;
    if (block) {
      std::lock_guard lock(mu_);
      armed_ = timers_.earliest();
      if (armed_ == TimePoint::max()) {
        wait = nullptr;  // no timer: wait for fds or a wake-up
      } else {
        const TimePoint t = now();
        const std::int64_t ns = armed_ <= t ? 0 : (armed_ - t).count();  // no overflow for a deadline long past
        timeout.tv_sec = ns / 1'000'000'000;
        timeout.tv_nsec = ns % 1'000'000'000;
      }
    }
    if (block) waiting_.store(true, std::memory_order_relaxed);
    int n = wait_events(events_, kMaxEvents, wait);
    if (block) {
      waiting_.store(false, std::memory_order_relaxed);
      std::lock_guard lock(mu_);
      armed_ = TimePoint::min();  // running: timers added now are seen before the next wait
    }
    if (n < 0) return;  // EINTR
    for (int i = 0; i < n; ++i) {
      std::uint64_t tag = events_[i].data.u64;
      if (tag == kWakeTag) {
        std::uint64_t v;
        [[maybe_unused]] auto r = ::read(wakefd_, &v, sizeof v);
      } else {
        std::lock_guard lock(mu_);
        auto it = watches_.find(tag);
        if (it == watches_.end()) continue;
        unsigned bits = 0;
        if (events_[i].events & (EPOLLIN | EPOLLRDHUP)) bits |= kFdReadable;
        if (events_[i].events & EPOLLOUT) bits |= kFdWritable;
        if (events_[i].events & (EPOLLERR | EPOLLHUP)) bits |= kFdError;
        if (it->second.keep) {
          ready_rearmable_.emplace_back(it->second.keep, bits);
        } else {
          epoll_ctl(epfd_, EPOLL_CTL_DEL, it->second.fd, nullptr);
          ready_.emplace_back(std::move(it->second.fn), bits);
          watches_.erase(it);
        }
      }
    }
    {
      std::lock_guard lock(mu_);
      timers_.take_due(now(), due_);
    }
    for (auto& [fn, bits] : ready_) fn(bits);
    ready_.clear();
    for (auto& [fn, bits] : ready_rearmable_) (*fn)(bits);
    ready_rearmable_.clear();
    for (auto& fn : due_) fn();
    due_.clear();
  }

  void wake_monitor() {
    monitor_word_.fetch_add(1, std::memory_order_seq_cst);
    internal::futex_wake(monitor_word_, 1);
  }

  // With no pollers attached the loop thread runs the loop itself, waiting in epoll. With
  // pollers it is a monitor (Go's sysmon): it wakes every period and, if nobody started a
  // poll since and nobody holds the loop (every poller busy running processes, or all asleep
  // after a race with the monitor's own poll), polls without waiting and asks the pollers to
  // take the loop back (on_unpolled). The period starts at kMonitorMin and doubles up to
  // kMonitorMax while the monitor finds the loop polled (so a steadily polled loop costs it
  // few wake-ups); it is kMonitorIdle while a poller waits in epoll (the events wake that
  // one), and drops back to kMonitorMin when the monitor had to poll. So an event waits at
  // most about kMonitorIdle for its callback when every poller got stuck in a run at once,
  // kMonitorMin while they stay stuck; otherwise it is the next poller's.
  void run_loop() {
    std::chrono::nanoseconds period = kMonitorMin;
    while (!stop_.load()) {
      const std::uint32_t word = monitor_word_.load(std::memory_order_seq_cst);
      if (attached_.load(std::memory_order_seq_cst) == 0) {
        if (try_hold()) {
          poll_once(/*block=*/true);
          release_hold();
        } else {
          monitor_wait(word, std::chrono::milliseconds(1));  // a poller still finishing its turn
        }
        continue;
      }
      const std::uint64_t seen = polls_.load(std::memory_order_relaxed);
      monitor_wait(word, period);
      if (stop_.load() || attached_.load(std::memory_order_seq_cst) == 0) continue;
      if (waiting_.load(std::memory_order_relaxed)) {
        period = kMonitorIdle;  // a poller waits for events: they wake it, nothing to watch
        continue;
      }
      if (polls_.load(std::memory_order_relaxed) != seen || held_.load(std::memory_order_relaxed) || !try_hold()) {
        period = std::clamp<std::chrono::nanoseconds>(period * 2, kMonitorMin, kMonitorMax);
        continue;
      }
      period = kMonitorMin;
      poll_once(/*block=*/false);
      release_hold();
      std::lock_guard lock(hooks_mu_);
      for (auto& [id, fn] : hooks_) fn();
    }
  }

  void monitor_wait(std::uint32_t word, std::chrono::nanoseconds period) {
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(period.count() / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(period.count() % 1'000'000'000);
    internal::futex_wait(monitor_word_, word, &ts);
  }

  static constexpr int kMaxEvents = 64;
  static constexpr std::chrono::milliseconds kMonitorMin{10};
  static constexpr std::chrono::milliseconds kMonitorMax{100};
  static constexpr std::chrono::milliseconds kMonitorIdle{1000};

  Logger logger_;  // first: the loop thread may log until it is joined
  unsigned workers_;
  std::uint64_t base_seed_;
  std::atomic<std::uint64_t> thread_counter_{0};
  int epfd_ = -1, wakefd_ = -1;
  std::atomic<bool> stop_{false};
  // The loop's holder (try_hold) alone:
  std::atomic<bool> held_{false};
  bool use_pwait2_ = true;
  epoll_event events_[kMaxEvents];
  std::vector<std::function<void()>> due_;
  std::vector<std::pair<std::function<void(unsigned)>, unsigned>> ready_;
  std::vector<std::pair<std::shared_ptr<std::function<void(unsigned)>>, unsigned>> ready_rearmable_;
  std::atomic<std::uint64_t> polls_{0};  // turns started, by anyone
  std::atomic<bool> waiting_{false};     // the holder waits in epoll
  // Pollers (attach_pollers) and the loop thread's monitor wait.
  std::atomic<int> attached_{0};
  std::atomic<std::uint32_t> monitor_word_{0};
  std::mutex hooks_mu_;
  std::uint64_t next_hook_ = 1;
  std::vector<std::pair<std::uint64_t, std::function<void()>>> hooks_;
  std::mutex mu_;
  TimePoint armed_ = TimePoint::min();  // what the loop waits for; min(): it is not waiting
  WatchId next_id_ = 1;                 // watches
  internal::TimerHeap timers_;
  std::unordered_map<WatchId, Watch> watches_;
  std::thread loop_;
};

}  // namespace

std::unique_ptr<Environment> make_real_environment(const RealEnvironmentOptions& options) {
  return std::make_unique<RealEnvironment>(options);
}

}  // namespace nines
