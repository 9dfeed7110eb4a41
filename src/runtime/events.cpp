#include "nines/runtime/events.hpp"

namespace nines {

std::string_view to_string(SupervisionEventType type) {
  switch (type) {
    case SupervisionEventType::kSupervisorStarted: return "supervisor_started";
    case SupervisionEventType::kSupervisorStopped: return "supervisor_stopped";
    case SupervisionEventType::kChildStarted: return "child_started";
    case SupervisionEventType::kChildExited: return "child_exited";
    case SupervisionEventType::kChildRestarted: return "child_restarted";
    case SupervisionEventType::kRestartDelayed: return "restart_delayed";
    case SupervisionEventType::kChildStartFailed: return "child_start_failed";
    case SupervisionEventType::kIntensityExceeded: return "intensity_exceeded";
    case SupervisionEventType::kEscalated: return "escalated";
    case SupervisionEventType::kAutoShutdown: return "auto_shutdown";
  }
  return "unknown";
}

SupervisionEvents::SubscriptionId SupervisionEvents::subscribe(Subscriber fn) {
  std::lock_guard lock(mu_);
  auto next = std::make_shared<List>(*subscribers_);
  SubscriptionId id = next_id_++;
  next->emplace_back(id, std::move(fn));
  subscribers_ = std::move(next);
  has_subscribers_.store(true, std::memory_order_release);
  return id;
}

void SupervisionEvents::unsubscribe(SubscriptionId id) {
  std::lock_guard lock(mu_);
  auto next = std::make_shared<List>(*subscribers_);
  std::erase_if(*next, [&](auto& s) { return s.first == id; });
  has_subscribers_.store(!next->empty(), std::memory_order_release);
  subscribers_ = std::move(next);
}

void SupervisionEvents::emit(const SupervisionEvent& event) {
  counts_[static_cast<std::size_t>(event.type)].fetch_add(1, std::memory_order_relaxed);
  if (!has_subscribers()) return;
  std::shared_ptr<const List> subs;
  {
    std::lock_guard lock(mu_);
    subs = subscribers_;
  }
  for (auto& [id, fn] : *subs) fn(event);
}

}  // namespace nines
