// The deterministic environment: one thread, a virtual clock, one seeded generator.
#include <poll.h>

#include <map>
#include <vector>

#include "core/xoshiro.hpp"
#include "nines/core/check.hpp"
#include "nines/core/environment.hpp"

namespace nines {

// The virtual clock starts at a fixed, non-zero point so that "now - 10 s" is still valid.
static constexpr TimePoint kSimStart = TimePoint(std::chrono::hours(1));
// 2026-01-01T00:00:00Z, the wall-clock epoch of every simulation.
static constexpr std::int64_t kSimUnixEpochNs = 1767225600LL * 1'000'000'000LL;

struct SimEnvironment::State {
  explicit State(std::uint64_t seed) : rng(seed) {}
  internal::Xoshiro256 rng;
  TimePoint now = kSimStart;
  std::uint64_t next_id = 1;
  std::map<std::pair<TimePoint, TimerId>, std::function<void()>> timers;
  std::map<TimerId, TimePoint> timer_index;
  struct Watch {
    WatchId id;
    int fd;
    unsigned events;
    std::function<void(unsigned)> fn;
  };
  std::vector<Watch> watches;
};

SimEnvironment::SimEnvironment(std::uint64_t seed)
    : seed_(seed),
      state_(std::make_unique<State>(seed)),
      capture_(std::make_shared<CaptureSink>()),
      logger_(*this, LogLevel::kDebug, capture_) {}
SimEnvironment::~SimEnvironment() = default;

TimePoint SimEnvironment::now() const { return state_->now; }

std::int64_t SimEnvironment::unix_time_ns() const { return kSimUnixEpochNs + (state_->now - kSimStart).count(); }

std::uint64_t SimEnvironment::random_u64() { return state_->rng.next(); }

Result<std::unique_ptr<Thread>> SimEnvironment::start_thread(std::string name, std::function<void()>) {
  return Error(ErrorKind::kInvalidArgument,
               "the deterministic environment runs on one thread; cannot start thread '" + name + "'");
}

TimerId SimEnvironment::add_timer(TimePoint deadline, std::function<void()> fn) {
  TimerId id = state_->next_id++;
  state_->timers.emplace(std::make_pair(deadline, id), std::move(fn));
  state_->timer_index.emplace(id, deadline);
  return id;
}

bool SimEnvironment::cancel_timer(TimerId id) {
  auto it = state_->timer_index.find(id);
  if (it == state_->timer_index.end()) return false;
  state_->timers.erase(std::make_pair(it->second, id));
  state_->timer_index.erase(it);
  return true;
}

Result<WatchId> SimEnvironment::watch_fd(int fd, unsigned events, std::function<void(unsigned)> fn) {
  if (fd < 0) return Error(ErrorKind::kInvalidArgument, "watch_fd: negative fd " + std::to_string(fd));
  if ((events & (kFdReadable | kFdWritable)) == 0) {
    return Error(ErrorKind::kInvalidArgument, "watch_fd: no readable/writable event requested");
  }
  WatchId id = state_->next_id++;
  state_->watches.push_back({id, fd, events, std::move(fn)});
  return id;
}

bool SimEnvironment::cancel_watch(WatchId id) {
  auto& w = state_->watches;
  for (auto it = w.begin(); it != w.end(); ++it) {
    if (it->id == id) {
      w.erase(it);
      return true;
    }
  }
  return false;
}

TimePoint SimEnvironment::next_timer_deadline() const {
  return state_->timers.empty() ? TimePoint::max() : state_->timers.begin()->first.first;
}

void SimEnvironment::set_now(TimePoint t) {
  if (t > state_->now) state_->now = t;
}

std::size_t SimEnvironment::fire_due_timers() {
  std::size_t fired = 0;
  // One at a time: a callback may add or cancel timers.
  while (!state_->timers.empty() && state_->timers.begin()->first.first <= state_->now) {
    auto it = state_->timers.begin();
    auto fn = std::move(it->second);
    state_->timer_index.erase(it->first.second);
    state_->timers.erase(it);
    fn();
    ++fired;
  }
  return fired;
}

std::size_t SimEnvironment::poll_fds() {
  auto& w = state_->watches;
  if (w.empty()) return 0;
  std::vector<pollfd> fds;
  fds.reserve(w.size());
  for (auto& x : w) {
    short ev = 0;
    if (x.events & kFdReadable) ev |= POLLIN;
    if (x.events & kFdWritable) ev |= POLLOUT;
    fds.push_back({x.fd, ev, 0});
  }
  if (::poll(fds.data(), fds.size(), 0) <= 0) return 0;
  std::vector<std::pair<std::function<void(unsigned)>, unsigned>> ready;
  std::vector<State::Watch> keep;
  for (std::size_t i = 0; i < w.size(); ++i) {
    unsigned bits = 0;
    if (fds[i].revents & POLLIN) bits |= kFdReadable;
    if (fds[i].revents & POLLOUT) bits |= kFdWritable;
    if (fds[i].revents & (POLLERR | POLLHUP | POLLNVAL)) bits |= kFdError;
    if (bits != 0) {
      ready.emplace_back(std::move(w[i].fn), bits);
    } else {
      keep.push_back(std::move(w[i]));
    }
  }
  w = std::move(keep);
  for (auto& [fn, bits] : ready) fn(bits);
  return ready.size();
}

std::size_t SimEnvironment::pending_watches() const { return state_->watches.size(); }

}  // namespace nines
