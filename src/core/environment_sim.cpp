// The deterministic environment: one thread, a virtual clock, one seeded generator.
#include <poll.h>

#include <algorithm>
#include <array>
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

// The fault stream's seed: apart from the main stream's, so faults on or off leave
// random_u64() as it was.
static constexpr std::uint64_t kFaultStream = 0xb0661f7ULL << 32;

struct SimEnvironment::State {
  explicit State(std::uint64_t seed) : rng(seed), fault_rng(seed ^ kFaultStream) {}
  internal::Xoshiro256 rng;
  internal::Xoshiro256 fault_rng;
  FaultOptions faults;
  std::array<std::uint64_t, kFaultPointCount> fired{};
  TimePoint now = kSimStart;
  std::uint64_t next_id = 1;
  std::map<std::pair<TimePoint, TimerId>, std::function<void()>> timers;
  std::map<TimerId, TimePoint> timer_index;
  struct Watch {
    WatchId id;
    int fd;
    unsigned events;
    std::function<void(unsigned)> fn;
    bool rearmable = false;
    bool armed = true;
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

Result<WatchId> SimEnvironment::watch_fd_rearmable(int fd, unsigned events, std::function<void(unsigned)> fn) {
  auto id = watch_fd(fd, events, std::move(fn));
  if (id.ok()) state_->watches.back().rearmable = true;
  return id;
}

bool SimEnvironment::rearm_watch(WatchId id, unsigned events) {
  for (auto& x : state_->watches) {
    if (x.id == id && x.rearmable) {
      x.events = events;
      x.armed = true;
      return true;
    }
  }
  return false;
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
  std::vector<std::size_t> polled;  // indexes of the armed watches
  std::vector<pollfd> fds;
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (!w[i].armed) continue;
    short ev = 0;
    if (w[i].events & kFdReadable) ev |= POLLIN;
    if (w[i].events & kFdWritable) ev |= POLLOUT;
    fds.push_back({w[i].fd, ev, 0});
    polled.push_back(i);
  }
  if (fds.empty() || ::poll(fds.data(), fds.size(), 0) <= 0) return 0;
  // One-shot callbacks are moved out before any runs; a re-armable one (disarmed, kept) is
  // looked up by id when its turn comes, so a callback that cancels a later watch keeps it
  // from running.
  std::vector<std::pair<std::function<void(unsigned)>, unsigned>> ready;
  std::vector<std::pair<WatchId, unsigned>> ready_rearmable;
  std::vector<bool> fired(w.size(), false);
  for (std::size_t k = 0; k < fds.size(); ++k) {
    unsigned bits = 0;
    if (fds[k].revents & POLLIN) bits |= kFdReadable;
    if (fds[k].revents & POLLOUT) bits |= kFdWritable;
    if (fds[k].revents & (POLLERR | POLLHUP | POLLNVAL)) bits |= kFdError;
    if (bits == 0) continue;
    State::Watch& x = w[polled[k]];
    if (x.rearmable) {
      x.armed = false;
      ready_rearmable.emplace_back(x.id, bits);
    } else {
      ready.emplace_back(std::move(x.fn), bits);
      fired[polled[k]] = true;
    }
  }
  std::vector<State::Watch> keep;
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (!fired[i]) keep.push_back(std::move(w[i]));
  }
  w = std::move(keep);
  for (auto& [fn, bits] : ready) fn(bits);
  for (auto [id, bits] : ready_rearmable) {
    auto it = std::find_if(w.begin(), w.end(), [id = id](const State::Watch& x) { return x.id == id; });
    if (it == w.end()) continue;
    auto fn = it->fn;  // a copy: the callback may cancel its own watch
    fn(bits);
  }
  return ready.size() + ready_rearmable.size();
}

std::size_t SimEnvironment::pending_watches() const { return state_->watches.size(); }

void SimEnvironment::set_faults(const FaultOptions& options) {
  state_->faults = options;
  for (double& p : state_->faults.probability) p = p > 0 ? std::min(p, 1.0) : 0.0;  // NaN: off
  state_->faults.max_delay = std::max<Duration>(state_->faults.max_delay, std::chrono::milliseconds(1));
  faults_on_ = state_->faults.any();
}

const FaultOptions& SimEnvironment::faults() const { return state_->faults; }

std::uint64_t SimEnvironment::fault_count(FaultPoint point) const {
  const auto i = static_cast<std::size_t>(point);
  return i < kFaultPointCount ? state_->fired[i] : 0;
}

std::uint64_t SimEnvironment::faults_fired() const {
  std::uint64_t n = 0;
  for (std::uint64_t c : state_->fired) n += c;
  return n;
}

bool SimEnvironment::fault_fires(FaultPoint point) {
  const auto i = static_cast<std::size_t>(point);
  if (i >= kFaultPointCount) return false;
  const double p = state_->faults.probability[i];
  if (p <= 0) return false;  // a point that is off draws nothing: the others' draws stay as they were
  const double u = static_cast<double>(state_->fault_rng.next() >> 11) * 0x1.0p-53;
  if (u >= p) return false;
  ++state_->fired[i];
  return true;
}

Duration SimEnvironment::fault_delay(FaultPoint) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(state_->faults.max_delay).count();
  return std::chrono::milliseconds(1 + static_cast<std::int64_t>(fault_draw(static_cast<std::uint64_t>(ms))));
}

std::uint64_t SimEnvironment::fault_draw(std::uint64_t n) { return n == 0 ? 0 : state_->fault_rng.next() % n; }

}  // namespace nines
