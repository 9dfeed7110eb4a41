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
#include "nines/service/metrics.hpp"
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

// One agent as a config generation has it (immutable).
struct AgentView {
  std::string name;
  std::string group;
  AgentMode mode = AgentMode::kOnDemand;
  std::shared_ptr<llm::Router> router;
  std::vector<std::string> models;  // the chain's model names (config)
  std::vector<std::string> tools;   // every tool it may call (config tools and its MCP servers')
  agent::Budget budget;
};

// What a config file made: replaced whole by a reload (Service::reload), read by requests
// through Impl::current() (a request keeps the generation it started with).
struct Generation {
  ServiceConfig config;
  std::map<std::string, std::shared_ptr<llm::ChatModel>> clients;  // by model name
  std::shared_ptr<agent::ToolRegistry> tools;
  std::map<std::string, AgentView> agents;
};

struct GroupRuntime {
  std::string name;
  std::unique_ptr<agent::Agents> agents;
};

// The config file as last seen (reload_if_changed).
struct FileStamp {
  bool exists = false;
  std::int64_t mtime_ns = 0;
  std::int64_t size = 0;
  std::uint64_t inode = 0;
  bool operator==(const FileStamp&) const = default;
};

}  // namespace nines::service::internal

namespace nines::service {

struct Service::Impl : std::enable_shared_from_this<Service::Impl> {
  Impl(Runtime& r, ServiceOptions o) : rt(r), env(r.env()), options(std::move(o)) {}

  Runtime& rt;
  Environment& env;
  ServiceOptions options;

  // Fixed for the service's life: the store, the engine, the HTTP client, the MCP servers and
  // their tools, the groups (each an agent::Agents and its task supervisor), the always-on
  // workers, the event hub and the HTTP server.
  std::unique_ptr<Store> store;  // metered (ServiceMetrics::meter_store)
  std::unique_ptr<WorkflowEngine> engine;
  // Declared after the store: destroyed before it (it reads the store at scrape time).
  std::unique_ptr<ServiceMetrics> metrics;
  std::shared_ptr<net::HttpClient> http;
  std::vector<std::shared_ptr<agent::McpServer>> mcp;
  std::map<std::string, std::vector<std::shared_ptr<agent::Tool>>> mcp_tools;  // by server
  std::map<std::string, internal::GroupRuntime> groups;
  std::map<std::string, std::unique_ptr<agent::AlwaysOnAgent>> always_on;  // by agent
  std::unique_ptr<internal::EventHub> events;
  std::unique_ptr<net::HttpServer> server;

  // The config generation (see Generation).
  mutable std::mutex gen_mu;
  std::shared_ptr<const internal::Generation> gen;
  std::shared_ptr<const internal::Generation> current() const {
    std::lock_guard lock(gen_mu);
    return gen;
  }
  std::mutex reload_mu;  // one reload at a time
  internal::FileStamp stamp;
  std::atomic<std::uint64_t> reloads_ok{0};
  std::atomic<std::uint64_t> reloads_rejected{0};

  Pid owner;  // the service's process: owns the root supervisor and the MCP servers
  Pid root;   // the root supervisor ("nines")
  Pid ticker;

  // When each route's breaker left closed ("<agent>/<route>" -> unix ns), for /v1/models'
  // degraded_since; erased when it closes again. Fed by the breakers' transitions.
  mutable std::mutex degraded_mu;
  std::map<std::string, std::int64_t> degraded_since;

  std::atomic<bool> draining{false};
  std::atomic<bool> stopped{false};
  std::atomic<std::size_t> in_flight{0};
  std::mutex submit_mu;  // one submission's check-and-record at a time
  std::mutex shutdown_mu;

  // Makes a generation from a config: the model clients, the tool registry (native and HTTP
  // tools anew, the MCP servers' tools as they are), a router per agent. kInvalidArgument naming
  // the config key when something cannot be built.
  Result<std::shared_ptr<internal::Generation>> make_generation(
      ServiceConfig config, std::map<std::string, agent::AgentOptions>* agent_options);

  // Builds the tools, agents and supervision tree inside the service's process.
  Task<Status> build(Context& ctx, ServiceConfig config);
  // Service::reload.
  Status reload_now();

  // The /metrics page.
  std::string render_metrics();

  // ---- api.cpp ----
  void handle(net::HttpServerRequest&& request, net::HttpResponder responder);

  // Helpers used by both.
  agent::Agents* agents_of(std::string_view agent_name);
  // Starts a recorded task under its agent's group (or queues it to its always-on worker).
  Task<Status> launch(Context& ctx, std::string agent, std::string task_id, std::string input);
};

}  // namespace nines::service
