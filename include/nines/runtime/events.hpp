// nines/runtime/events.hpp: what supervisors report.
//
// Every child start, exit (with its reason), restart, delayed restart, failed start,
// give-up (restart intensity exceeded), escalation and auto shutdown is an event with a
// timestamp. Subscribers are called synchronously on the worker thread of the supervisor that
// emits: they must be thread-safe and quick (copy what they need and return). Counters are
// kept for every event type, whether or not anyone subscribes; later layers compute MTBF and
// MTTR per supervisor and per child from the events.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "nines/core/time.hpp"
#include "nines/runtime/exit_reason.hpp"
#include "nines/runtime/pid.hpp"

namespace nines {

enum class SupervisionEventType : std::uint8_t {
  kSupervisorStarted,  // all static children started
  kSupervisorStopped,  // the supervisor exited; reason says why
  kChildStarted,       // first start of a child (static or dynamic)
  kChildExited,        // a child exited (reason); `by_supervisor` when the supervisor stopped it
  kChildRestarted,     // a child was started again after an exit
  kRestartDelayed,     // a restart waits for its backoff delay (`delay`)
  kChildStartFailed,   // a child's start function failed (reason.detail has the error)
  kIntensityExceeded,  // too many restarts in the period: the supervisor gives up; child_id: the
                       // child that went over; reason: {shutdown, reached_max_restart_intensity}
                       // (the supervisor itself then exits with plain shutdown, as in OTP)
  kEscalated,          // the supervisor exits and leaves the decision to its parent
  kAutoShutdown,       // a significant child's exit shut the supervisor down
};
inline constexpr std::size_t kSupervisionEventTypes = 10;

std::string_view to_string(SupervisionEventType type);

struct SupervisionEvent {
  SupervisionEventType type;
  TimePoint at;               // environment monotonic time
  std::int64_t unix_time_ns;  // environment wall time
  Pid supervisor;
  std::string supervisor_name;
  std::string child_id;  // empty for supervisor-level events
  Pid child;
  ExitReason reason;
  Duration delay{0};           // kRestartDelayed only
  bool by_supervisor = false;  // kChildExited only
};

class SupervisionEvents {
 public:
  using Subscriber = std::function<void(const SupervisionEvent&)>;
  using SubscriptionId = std::uint64_t;

  SubscriptionId subscribe(Subscriber fn);
  void unsubscribe(SubscriptionId id);

  // Number of events of `type` emitted so far.
  std::uint64_t count(SupervisionEventType type) const {
    return counts_[static_cast<std::size_t>(type)].load(std::memory_order_relaxed);
  }

  void emit(const SupervisionEvent& event);
  bool has_subscribers() const { return has_subscribers_.load(std::memory_order_acquire); }

 private:
  using List = std::vector<std::pair<SubscriptionId, Subscriber>>;
  mutable std::mutex mu_;
  std::shared_ptr<const List> subscribers_ = std::make_shared<List>();
  SubscriptionId next_id_ = 1;
  std::atomic<bool> has_subscribers_{false};
  std::array<std::atomic<std::uint64_t>, kSupervisionEventTypes> counts_{};
};

}  // namespace nines
