// The service's internals, shared by service.cpp (building and the lifecycle), api.cpp (the HTTP
// routes) and events.cpp (the live event streams). Not a public header.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/agent/always_on.hpp"
#include "nines/agent/mcp.hpp"
#include "nines/agent/registry.hpp"
#include "nines/llm/model.hpp"
#include "nines/llm/router.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/http_server.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/service/config.hpp"
#include "nines/service/service.hpp"
#include "nines/store/store.hpp"
#include "nines/workflow/workflow.hpp"

namespace nines::service::internal {

// Live events of tasks for GET /v1/tasks/{id}/events (docs/api.md): the last kMaxEventsPerTask
// events of each task, in memory, kept kKeepAfterEnd after the task's end, and the streams that
// follow each task. Thread-safe.
class EventHub {
 public:
  static constexpr std::size_t kMaxEventsPerTask = 256;
  static constexpr std::size_t kMaxTasks = 10'000;
  static constexpr Duration kKeepAfterEnd = std::chrono::minutes(10);

  EventHub(Environment& env, std::string boot) : env_(env), boot_(std::move(boot)) {}

  const std::string& boot() const { return boot_; }

  // An event of a task (from its process).
  void publish(const agent::AgentEvent& event);

  // Starts a stream for `task_id` on `responder` (headers sent here): the held events after
  // `last_event_id` (all of them when it is empty or of another boot), then live ones. If
  // `finished_outcome` is set (the task ended and no event of it is held), one task_finished
  // event built from it is sent and the stream ends.
  void subscribe(const std::string& task_id, std::string_view last_event_id, net::HttpResponder responder,
                 std::optional<std::string> finished_status);

  // Writes a keep-alive comment to every stream, drops closed streams and expired tasks.
  void tick();

  // Ends every stream (shutdown).
  void close_all();

  std::size_t streams() const;

 private:
  struct Held {
    std::uint64_t n = 0;
    std::string type;
    std::string data;  // JSON
  };
  struct Sub {
    net::HttpResponder responder;
  };
  struct TaskLog {
    std::deque<Held> events;
    std::uint64_t next = 1;
    bool finished = false;
    TimePoint finished_at{};
    TimePoint last_at{};
    std::vector<Sub> subs;
  };
  std::string frame(const Held& h) const;
  void evict_locked();

  Environment& env_;
  const std::string boot_;
  mutable std::mutex mu_;
  std::map<std::string, TaskLog, std::less<>> tasks_;
};

// One agent as the service runs it.
struct AgentRuntime {
  std::string name;
  std::string group;
  AgentMode mode = AgentMode::kOnDemand;
  std::shared_ptr<llm::Router> router;
  std::vector<std::string> models;  // the chain's model names (config)
  std::vector<std::string> tools;   // every tool it may call (config tools and its MCP servers')
  agent::Budget budget;
  std::unique_ptr<agent::AlwaysOnAgent> always_on;  // kAlwaysOn
};

struct GroupRuntime {
  std::string name;
  std::unique_ptr<agent::Agents> agents;
};

}  // namespace nines::service::internal

namespace nines::service {

struct Service::Impl : std::enable_shared_from_this<Service::Impl> {
  Impl(Runtime& r, ServiceOptions o) : rt(r), env(r.env()), options(std::move(o)) {}

  Runtime& rt;
  Environment& env;
  ServiceOptions options;
  ServiceConfig config;

  std::unique_ptr<Store> store;
  std::unique_ptr<WorkflowEngine> engine;
  std::shared_ptr<net::HttpClient> http;
  std::map<std::string, std::shared_ptr<llm::ChatModel>> clients;  // by model name
  std::vector<std::shared_ptr<agent::McpServer>> mcp;
  std::shared_ptr<agent::ToolRegistry> tools;
  std::map<std::string, internal::GroupRuntime> groups;
  std::map<std::string, internal::AgentRuntime> agents;
  std::unique_ptr<internal::EventHub> events;
  std::unique_ptr<net::HttpServer> server;

  Pid owner;  // the service's process: owns the root supervisor and the MCP servers
  Pid root;   // the root supervisor ("nines")
  Pid ticker;

  std::atomic<bool> draining{false};
  std::atomic<bool> stopped{false};
  std::atomic<std::size_t> in_flight{0};
  std::mutex submit_mu;  // one submission's check-and-record at a time
  std::mutex shutdown_mu;

  // Builds the tools, agents and supervision tree inside the service's process.
  Task<Status> build(Context& ctx);

  // The /metrics page.
  std::string render_metrics();

  // ---- api.cpp ----
  void handle(net::HttpServerRequest&& request, net::HttpResponder responder);

  // Helpers used by both.
  agent::Agents* agents_of(std::string_view agent_name);
  const internal::AgentRuntime* agent_runtime(std::string_view agent_name) const;
  // Starts a recorded task under its agent's group (or queues it to its always-on worker).
  Task<Status> launch(Context& ctx, std::string agent, std::string task_id, std::string input);
};

}  // namespace nines::service
