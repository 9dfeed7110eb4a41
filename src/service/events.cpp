// Live task events for GET /v1/tasks/{id}/events (internal.hpp, docs/api.md).
#include <nlohmann/json.hpp>

#include <cstdio>
#include <ctime>

#include "internal.hpp"
#include "time_format.hpp"

namespace nines::service::internal {

namespace {

using json = nlohmann::json;

std::string event_type_name(agent::AgentEvent::Type type) { return std::string(agent::to_string(type)); }

// "<boot>.<n>" -> n when the boot matches; nullopt otherwise (another boot, or malformed).
std::optional<std::uint64_t> parse_event_id(std::string_view id, std::string_view boot) {
  const std::size_t dot = id.find('.');
  if (dot == std::string_view::npos || id.substr(0, dot) != boot) return std::nullopt;
  std::uint64_t n = 0;
  std::string_view digits = id.substr(dot + 1);
  if (digits.empty() || digits.size() > 19) return std::nullopt;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return n;
}

}  // namespace

std::string EventHub::frame(const Held& h) const {
  std::string out = "id: " + boot_ + "." + std::to_string(h.n) + "\nevent: " + h.type + "\ndata: " + h.data + "\n\n";
  return out;
}

void EventHub::publish(const agent::AgentEvent& event) {
  json data{{"task_id", event.task_id}, {"agent", event.agent}, {"step", event.step},
            {"tool", event.tool},       {"detail", event.detail}, {"at", format_unix_ns(env_.unix_time_ns())}};
  Held h{.type = event_type_name(event.type), .data = data.dump(-1, ' ', false, json::error_handler_t::replace)};
  std::lock_guard lock(mu_);
  auto [it, fresh] = tasks_.try_emplace(event.task_id);
  TaskLog& log = it->second;
  h.n = log.next++;
  log.last_at = env_.now();
  const bool finished = event.type == agent::AgentEvent::Type::kTaskFinished;
  // A task that ended in needs_attention runs again once resolved: its log is open again.
  log.finished = finished;
  if (finished) log.finished_at = env_.now();
  const std::string bytes = frame(h);
  std::vector<Sub> keep;
  for (Sub& sub : log.subs) {
    if (!sub.responder.write(bytes).ok()) continue;
    if (finished) {
      (void)sub.responder.end();
      continue;
    }
    keep.push_back(std::move(sub));
  }
  log.subs = std::move(keep);
  log.events.push_back(std::move(h));
  while (log.events.size() > kMaxEventsPerTask) log.events.pop_front();
  if (fresh && tasks_.size() > kMaxTasks) evict_locked();
}

void EventHub::subscribe(const std::string& task_id, std::string_view last_event_id, net::HttpResponder responder,
                         std::optional<std::string> finished_status) {
  net::HttpHeaders headers{{"Content-Type", "text/event-stream"}, {"Cache-Control", "no-cache"}};
  std::lock_guard lock(mu_);
  auto it = tasks_.find(task_id);
  if (it == tasks_.end() || it->second.events.empty()) {
    if (finished_status) {
      // Ended before this boot (or its events were dropped): one task_finished from its record.
      if (!responder.start_stream(200, std::move(headers)).ok()) return;
      json data{{"task_id", task_id}, {"detail", *finished_status}, {"replayed", true}};
      Held h{.n = 0, .type = "task_finished", .data = data.dump()};
      (void)responder.write(frame(h));
      (void)responder.end();
      return;
    }
    it = tasks_.try_emplace(task_id).first;
    it->second.last_at = env_.now();
  }
  if (!responder.start_stream(200, std::move(headers)).ok()) return;
  TaskLog& log = it->second;
  const std::optional<std::uint64_t> after = parse_event_id(last_event_id, boot_);
  std::string backlog = "retry: 2000\n\n";
  for (const Held& h : log.events) {
    if (after && h.n <= *after) continue;
    backlog += frame(h);
  }
  if (!responder.write(backlog).ok()) return;
  if (log.finished) {
    (void)responder.end();
    return;
  }
  log.subs.push_back({std::move(responder)});
}

void EventHub::tick() {
  std::lock_guard lock(mu_);
  const TimePoint now = env_.now();
  for (auto it = tasks_.begin(); it != tasks_.end();) {
    TaskLog& log = it->second;
    std::vector<Sub> keep;
    for (Sub& sub : log.subs) {
      if (sub.responder.write(": keep-alive\n\n").ok()) keep.push_back(std::move(sub));
    }
    log.subs = std::move(keep);
    const bool expired = log.subs.empty() && ((log.finished && now - log.finished_at > kKeepAfterEnd) ||
                                              (log.events.empty() && now - log.last_at > kKeepAfterEnd));
    it = expired ? tasks_.erase(it) : std::next(it);
  }
}

void EventHub::close_all() {
  std::lock_guard lock(mu_);
  for (auto& [id, log] : tasks_) {
    for (Sub& sub : log.subs) (void)sub.responder.end();
    log.subs.clear();
  }
}

std::size_t EventHub::streams() const {
  std::lock_guard lock(mu_);
  std::size_t n = 0;
  for (const auto& [id, log] : tasks_) n += log.subs.size();
  return n;
}

void EventHub::evict_locked() {
  // The oldest ended task without streams first, else the least recently active one without
  // streams. (Bounded: kMaxTasks logs of at most kMaxEventsPerTask events.)
  auto victim = tasks_.end();
  for (auto it = tasks_.begin(); it != tasks_.end(); ++it) {
    if (!it->second.subs.empty()) continue;
    if (victim == tasks_.end()) {
      victim = it;
      continue;
    }
    const TaskLog& a = it->second;
    const TaskLog& b = victim->second;
    if (a.finished != b.finished ? a.finished : a.last_at < b.last_at) victim = it;
  }
  if (victim != tasks_.end()) tasks_.erase(victim);
}

}  // namespace nines::service::internal
