// The service: builds the runtime objects of a ServiceConfig and runs them (service.hpp).
#include "nines/service/service.hpp"

#include <arpa/inet.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <future>
#include <set>
#include <utility>

#include "api_request.hpp"
#include "internal.hpp"
#include "nines/agent/http_tool.hpp"
#include "nines/core/check.hpp"
#include "nines/core/log.hpp"
#include "nines/llm/anthropic.hpp"
#include "nines/llm/client.hpp"
#include "nines/llm/openai.hpp"
#include "nines/llm/sim.hpp"
#include "nines/runtime/supervisor.hpp"
#include "nines/store/postgres_store.hpp"
#include "nines/store/sqlite_store.hpp"

namespace nines::service {

namespace {

bool is_loopback(const std::string& address) {
  in_addr v4{};
  if (::inet_pton(AF_INET, address.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, address.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

llm::Headers to_llm_headers(const std::vector<std::pair<std::string, Secret>>& headers) {
  llm::Headers out;
  for (const auto& [name, value] : headers) out.push_back({name, value.reveal()});
  return out;
}

Result<std::shared_ptr<llm::ChatModel>> make_client(const ModelConfig& m, net::HttpClient& http) {
  switch (m.provider) {
    case Provider::kSim: {
      Result<std::shared_ptr<llm::SimModel>> sim = llm::SimModel::create(m.sim.value_or(llm::SimConfig{}));
      if (!sim.ok()) return std::move(sim).error().with_context("model '" + m.name + "'");
      return std::shared_ptr<llm::ChatModel>(std::make_shared<llm::SimChatModel>(std::move(*sim)));
    }
    case Provider::kOpenAi: {
      llm::OpenAiOptions o;
      if (!m.base_url.empty()) o.base_url = m.base_url;
      o.api_key = m.api_key.reveal();
      o.extra_headers = to_llm_headers(m.headers);
      o.max_response_bytes = m.max_response_bytes;
      Result<std::unique_ptr<llm::Codec>> codec = llm::make_openai_codec(std::move(o));
      if (!codec.ok()) return std::move(codec).error().with_context("model '" + m.name + "'");
      return std::shared_ptr<llm::ChatModel>(std::make_shared<llm::ModelClient>(
          std::move(*codec), http, llm::ModelClientOptions{.timeouts = m.http_timeouts}));
    }
    case Provider::kAnthropic: {
      llm::AnthropicOptions o;
      if (!m.base_url.empty()) o.base_url = m.base_url;
      o.api_key = m.api_key.reveal();
      o.version = m.anthropic_version;
      o.extra_headers = to_llm_headers(m.headers);
      o.default_max_tokens = m.max_output_tokens;
      o.max_response_bytes = m.max_response_bytes;
      Result<std::unique_ptr<llm::Codec>> codec = llm::make_anthropic_codec(std::move(o));
      if (!codec.ok()) return std::move(codec).error().with_context("model '" + m.name + "'");
      return std::shared_ptr<llm::ChatModel>(std::make_shared<llm::ModelClient>(
          std::move(*codec), http, llm::ModelClientOptions{.timeouts = m.http_timeouts}));
    }
  }
  return Error(ErrorKind::kInternal, "unknown provider");
}

// The task ids the service makes: "t-" + the submission time in ms (12 hex digits, so that ids
// sort by submission) + "-" + 8 random hex digits.
}  // namespace

// ---- building ----------------------------------------------------------------------------------

namespace {

Result<std::unique_ptr<Store>> open_store(const StoreConfig& s) {
  if (s.kind == StoreConfig::Kind::kSqlite) return open_sqlite_store(s.sqlite_path, s.sqlite);
  PostgresStoreOptions o;
  o.durability = s.postgres_durability;
  o.connect_timeout_s = s.postgres_connect_timeout_s;
  return open_postgres_store(s.postgres_url.reveal(), o);
}

internal::FileStamp file_stamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return {.exists = true,
          .mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec,
          .size = static_cast<std::int64_t>(st.st_size),
          .inode = static_cast<std::uint64_t>(st.st_ino)};
}

// The trace id of a task in the logs: 32 hex digits derived from its id (FNV-1a, 128 bits), so
// every line of one task, across restarts of the service, carries the same one.
std::string trace_id_of(std::string_view task_id) { return internal::fnv1a_128_hex(task_id); }

// A task's events as log lines (JSON lines with task, agent, step and trace ids): its start and
// end at info, what went wrong at notice or warning, the steps themselves at debug.
void log_task_event(Logger& logger, const agent::AgentEvent& e) {
  using Type = agent::AgentEvent::Type;
  LogLevel level = LogLevel::kDebug;
  std::string_view event;
  switch (e.type) {
    case Type::kTaskStarted:
      level = LogLevel::kInfo;
      event = "task_started";
      break;
    case Type::kTaskFinished:
      level = LogLevel::kInfo;
      event = "task_finished";
      break;
    case Type::kStepStarted: event = "step_started"; break;
    case Type::kStepFinished: event = "step_finished"; break;
    case Type::kToolCall: event = "tool_call"; break;
    case Type::kToolResult:
      level = e.detail == "ok" ? LogLevel::kDebug : LogLevel::kWarning;
      event = e.detail == "ok" ? "tool_result" : "tool_error";
      break;
    case Type::kInvalidCall:
      level = LogLevel::kWarning;
      event = "invalid_tool_call";
      break;
    case Type::kRetry:
      level = LogLevel::kInfo;
      event = "model_retry";
      break;
    case Type::kFallback:
      level = LogLevel::kNotice;
      event = "model_fallback";
      break;
    case Type::kGuard:
      level = LogLevel::kWarning;
      event = "guard_stopped_task";
      break;
    case Type::kApprovalWait:
      level = LogLevel::kNotice;
      event = "approval_wait";
      break;
    case Type::kApprovalDecided:
      level = LogLevel::kInfo;
      event = "approval_decided";
      break;
    case Type::kSleep:
      level = LogLevel::kInfo;
      event = "task_sleeps";
      break;
  }
  if (!logger.enabled(level)) return;
  logger.log(level, event, e.detail,
             {{"task", e.task_id},
              {"agent", e.agent},
              {"step", e.step},
              {"tool", e.tool},
              {"trace_id", trace_id_of(e.task_id)}});
}

// Everything built inside the service's process (MCP servers need one), then the process waits
// for the stop message.
struct StopService {};

}  // namespace

Result<std::shared_ptr<internal::Generation>> Service::Impl::make_generation(
    ServiceConfig config, std::map<std::string, agent::AgentOptions>* agent_options) {
  auto g = std::make_shared<internal::Generation>();
  for (const ModelConfig& m : config.models) {
    Result<std::shared_ptr<llm::ChatModel>> c = make_client(m, *http);
    if (!c.ok()) return std::move(c).error();
    g->clients.emplace(
        m.name, metrics->meter_model(std::move(*c), {std::string(to_string(m.provider)), m.name, m.model}, m.price));
  }
  // Tools: native (by name), HTTP, then every MCP server's (the running servers' own).
  std::vector<std::shared_ptr<agent::Tool>> all;
  for (const ToolConfig& t : config.tools) {
    if (t.kind == ToolConfig::Kind::kNative) {
      auto it = std::find_if(options.native_tools.begin(), options.native_tools.end(),
                             [&](const auto& tool) { return tool && tool->spec().name == t.spec.name; });
      if (it == options.native_tools.end()) {
        return Error(ErrorKind::kInvalidArgument,
                     "tools." + t.spec.name + ": no native tool of that name is built into this program");
      }
      all.push_back(*it);
      continue;
    }
    agent::HttpToolOptions o = t.http;
    for (const auto& [name, value] : t.headers) o.headers.add(name, value.reveal());
    Result<std::shared_ptr<agent::Tool>> tool = agent::make_http_tool(t.spec, std::move(o), http);
    if (!tool.ok()) return std::move(tool).error().with_context("tools." + t.spec.name);
    all.push_back(std::move(*tool));
  }
  for (const auto& [mcp_name, tools] : mcp_tools) all.insert(all.end(), tools.begin(), tools.end());
  Result<std::shared_ptr<agent::ToolRegistry>> registry = agent::ToolRegistry::create(env, std::move(all));
  if (!registry.ok()) return std::move(registry).error().with_context("tools");
  g->tools = std::move(*registry);

  for (const GroupConfig& group : config.groups) {
    for (const std::string& name : group.agents) {
      const AgentConfig* a = config.find_agent(name);
      NINES_CHECK(a != nullptr);
      agent::AgentOptions opts = a->options;
      llm::RouterOptions ro{.name = name};
      for (const std::string& model_name : a->models) {
        const ModelConfig* m = config.find_model(model_name);
        NINES_CHECK(m != nullptr);
        ro.chain.push_back({.name = m->name,
                            .model = m->model,
                            .client = g->clients.at(m->name),
                            .context_window_tokens = m->context_window_tokens,
                            .max_output_tokens = m->max_output_tokens,
                            .retry = m->retry,
                            .breaker = m->breaker,
                            .requests_per_minute = m->requests_per_minute,
                            .tokens_per_minute = m->tokens_per_minute,
                            .max_limiter_wait = m->max_limiter_wait,
                            .max_concurrent_calls = m->max_concurrent_calls,
                            .attempt_timeout = m->attempt_timeout});
        opts.prices[m->name] = m->price;
      }
      Result<std::unique_ptr<llm::Router>> router = llm::Router::create(env, std::move(ro));
      if (!router.ok()) return std::move(router).error().with_context("agents." + name);
      opts.router = std::move(*router);
      // degraded_since: the breakers' transitions (the subscriptions go with the router).
      for (std::size_t i = 0; i < opts.router->size(); ++i) {
        std::weak_ptr<Impl> weak = weak_from_this();
        const std::string key = name + "/" + opts.router->route_name(i);
        opts.router->breaker(i)->subscribe([weak, key](const BreakerTransition& t) {
          std::shared_ptr<Impl> self = weak.lock();
          if (!self) return;
          std::lock_guard lock(self->degraded_mu);
          if (t.to == BreakerState::kClosed) {
            self->degraded_since.erase(key);
          } else {
            self->degraded_since.try_emplace(key, t.unix_time_ns);
          }
        });
      }
      for (const std::string& mcp_name : a->mcp_servers) {
        auto it = mcp_tools.find(mcp_name);
        if (it == mcp_tools.end()) continue;
        for (const auto& tool : it->second) {
          const std::string& t = tool->spec().name;
          if (std::find(opts.tools.begin(), opts.tools.end(), t) == opts.tools.end()) opts.tools.push_back(t);
        }
      }
      g->agents.emplace(name, internal::AgentView{.name = name,
                                                  .group = group.name,
                                                  .mode = a->mode,
                                                  .router = opts.router,
                                                  .models = a->models,
                                                  .tools = opts.tools,
                                                  .budget = opts.budget});
      if (agent_options != nullptr) agent_options->emplace(name, std::move(opts));
    }
  }
  g->config = std::move(config);
  return g;
}

Result<std::unique_ptr<Service>> Service::start(Runtime& rt, ServiceOptions options) {
  auto impl = std::make_shared<Impl>(rt, std::move(options));
  Environment& env = impl->env;

  impl->stamp = file_stamp(impl->options.config_path);
  ConfigResult loaded = load_config(impl->options.config_path, impl->options.sources);
  if (!loaded.ok()) return Error(ErrorKind::kInvalidArgument, loaded.error_text());
  ServiceConfig config = std::move(*loaded.config);
  if (impl->options.port) config.server.port = *impl->options.port;
  if (!is_loopback(config.server.address) && config.server.tokens.empty()) {
    return Error(ErrorKind::kInvalidArgument, "server.address '" + config.server.address +
                                                  "' is not loopback: the API needs auth tokens (server.auth.tokens)");
  }
  env.logger().set_level(config.logging.level);

  impl->metrics = std::make_unique<ServiceMetrics>(env);
  Result<std::unique_ptr<Store>> store = open_store(config.store);
  if (!store.ok()) return std::move(store).error().with_context("store");
  impl->store = impl->metrics->meter_store(std::move(*store));
  impl->metrics->attach_store(*impl->store);
  impl->metrics->attach_runtime(rt);
  Result<std::unique_ptr<WorkflowEngine>> engine = WorkflowEngine::create(env, *impl->store);
  if (!engine.ok()) return std::move(engine).error();
  impl->engine = std::move(*engine);
  Result<std::unique_ptr<net::HttpClient>> http = net::HttpClient::create(env);
  if (!http.ok()) return std::move(http).error().with_context("http client");
  impl->http = std::move(*http);

  char boot[16];
  std::snprintf(boot, sizeof boot, "%08x", static_cast<unsigned>(env.random_u64()));
  impl->events = std::make_unique<internal::EventHub>(env, boot);

  // The service's process: MCP servers, tools, agents and the supervision tree.
  auto ready = std::make_shared<std::promise<Status>>();
  std::future<Status> ready_future = ready->get_future();
  std::weak_ptr<Impl> weak = impl;
  auto first = std::make_shared<ServiceConfig>(std::move(config));
  Result<Pid> owner = rt.spawn(
      [weak, ready, first](Context& ctx) -> Task<> {
        std::shared_ptr<Impl> self = weak.lock();
        if (!self) co_return;
        Status built = co_await self->build(ctx, std::move(*first));
        const bool ok = built.ok();
        ready->set_value(std::move(built));
        if (!ok) {
          for (auto& server : self->mcp) co_await server->stop(ctx);
          co_return;
        }
        self.reset();  // the process must not keep the service alive
        for (;;) {
          Message m = co_await ctx.receive();
          if (m.get<StopService>() != nullptr) break;
        }
        std::shared_ptr<Impl> still = weak.lock();
        if (still) {
          if (still->root != Pid{}) ctx.send_exit(still->root, ExitReason::shutdown());
          for (auto& server : still->mcp) co_await server->stop(ctx);
        }
      },
      {.name = "nines_service", .trap_exit = true});
  if (!owner.ok()) return std::move(owner).error();
  impl->owner = *owner;
  if (ready_future.wait_for(impl->options.start_timeout) != std::future_status::ready) {
    rt.send_exit(impl->owner, ExitReason::kill());
    return Error(ErrorKind::kTimeout, "the service did not start within the start timeout (MCP servers?)");
  }
  if (Status s = ready_future.get(); !s.ok()) return s.error();

  // The HTTP API.
  const ServerConfig& sc = impl->current()->config.server;
  net::HttpServerOptions so;
  so.bind_address = sc.address;
  so.port = sc.port;
  so.max_body_bytes = sc.max_body_bytes;
  Result<std::unique_ptr<net::HttpServer>> server =
      net::HttpServer::create(env, so, [weak](net::HttpServerRequest&& request, net::HttpResponder responder) {
        std::shared_ptr<Impl> self = weak.lock();
        if (!self) return;
        self->handle(std::move(request), std::move(responder));
      });
  if (!server.ok()) {
    std::unique_ptr<Service> partial(new Service(impl));
    partial->shutdown(Duration::zero());
    return std::move(server).error().with_context("server");
  }
  impl->server = std::move(*server);
  NINES_LOG(env.logger(), LogLevel::kNotice, "service_started", "nines serve: listening",
            {"url", impl->server->base_url()}, {"agents", impl->current()->agents.size()},
            {"store", impl->store->backend()});
  return std::unique_ptr<Service>(new Service(impl));
}

Task<Status> Service::Impl::build(Context& ctx, ServiceConfig config) {
  for (const McpServerConfig& m : config.mcp_servers) {
    agent::McpServerOptions o = m.options;
    for (const auto& [name, value] : m.env) o.env.emplace_back(name, value.reveal());
    Result<std::shared_ptr<agent::McpServer>> started = co_await agent::McpServer::start(ctx, std::move(o));
    if (!started.ok()) co_return std::move(started).error().with_context("mcp_servers." + m.options.name);
    mcp_tools[m.options.name] = (*started)->tools();
    mcp.push_back(std::move(*started));
  }
  std::map<std::string, agent::AgentOptions> agent_options;
  Result<std::shared_ptr<internal::Generation>> g = make_generation(std::move(config), &agent_options);
  if (!g.ok()) co_return std::move(g).error();
  const ServiceConfig& cfg = (*g)->config;

  // Groups and their agents.
  SupervisorSpec root_spec{
      .name = "nines", .strategy = Strategy::kOneForOne, .intensity = 10, .period = std::chrono::seconds(60)};
  for (const GroupConfig& group_config : cfg.groups) {
    agent::AgentsOptions ao = group_config.options;
    ao.resume_on_start = true;
    Result<std::unique_ptr<agent::Agents>> created = agent::Agents::create(env, *engine, (*g)->tools, ao);
    if (!created.ok()) co_return std::move(created).error().with_context("supervision.groups." + group_config.name);
    internal::GroupRuntime group{.name = group_config.name, .agents = std::move(*created)};
    std::weak_ptr<Impl> weak = weak_from_this();
    group.agents->add_observer([weak](const agent::AgentEvent& event) {
      if (std::shared_ptr<Impl> self = weak.lock()) self->events->publish(event);
    });
    group.agents->add_observer(metrics->observer());
    group.agents->add_observer([weak](const agent::AgentEvent& event) {
      if (std::shared_ptr<Impl> self = weak.lock()) log_task_event(self->env.logger(), event);
    });
    for (const std::string& name : group_config.agents) {
      if (Status s = group.agents->add_agent(std::move(agent_options.at(name))); !s.ok()) {
        co_return std::move(s).error().with_context("agents." + name);
      }
    }
    root_spec.children.push_back(group.agents->supervisor_child("group:" + group_config.name));
    groups.emplace(group_config.name, std::move(group));
  }
  {
    std::lock_guard lock(gen_mu);
    gen = *g;
  }
  for (const auto& [name, view] : (*g)->agents) metrics->add_router(name, view.router);
  metrics->on_config_reload(true);
  Result<Pid> sup = start_supervisor_link(ctx, root_spec);
  if (!sup.ok()) co_return std::move(sup).error().with_context("supervision tree");
  root = *sup;

  // Always-on agents: a worker each (under a supervisor of its own, linked to this process).
  for (const AgentConfig& a : cfg.agents) {
    if (a.mode != AgentMode::kAlwaysOn) continue;
    const internal::AgentView& view = (*g)->agents.at(a.options.name);
    agent::AlwaysOnOptions o = a.always_on;
    o.agent = a.options.name;
    o.name = "always_on:" + a.options.name;
    for (const WatermarkConfig& w : a.watermarks) {
      o.watermarks.push_back({.name = w.name,
                              .probe = w.name == "open_fds" ? agent::open_fds_probe() : agent::resident_bytes_probe(),
                              .limit = w.limit});
    }
    Result<std::unique_ptr<agent::AlwaysOnAgent>> worker =
        agent::AlwaysOnAgent::create(*groups.at(view.group).agents, std::move(o));
    if (!worker.ok()) co_return std::move(worker).error().with_context("agents." + a.options.name);
    Result<Pid> started = (*worker)->start(ctx);
    if (!started.ok()) co_return std::move(started).error().with_context("agents." + a.options.name);
    always_on.emplace(a.options.name, std::move(*worker));
  }

  // The ticker: keep-alive comments on the event streams, expiry of held events.
  std::weak_ptr<Impl> weak = weak_from_this();
  Result<Pid> ticker_pid = ctx.spawn_link([weak](Context& c) -> Task<> {
    for (;;) {
      auto slept = co_await c.sleep(std::chrono::seconds(15));
      if (!slept.ok()) co_return;
      std::shared_ptr<Impl> self = weak.lock();
      if (!self) co_return;
      self->events->tick();
    }
  });
  if (ticker_pid.ok()) ticker = *ticker_pid;
  co_return ok_status();
}

agent::Agents* Service::Impl::agents_of(std::string_view agent_name) {
  std::shared_ptr<const internal::Generation> g = current();
  auto it = g->agents.find(std::string(agent_name));
  if (it == g->agents.end()) return nullptr;
  return groups.at(it->second.group).agents.get();
}

Task<Status> Service::Impl::launch(Context& ctx, std::string agent, std::string task_id, std::string input) {
  std::shared_ptr<const internal::Generation> g = current();
  auto it = g->agents.find(agent);
  if (it == g->agents.end()) co_return Error(ErrorKind::kNotFound, "no agent named '" + agent + "'");
  if (auto worker = always_on.find(agent); worker != always_on.end()) {
    // A full queue leaves the task recorded as running: the group's resumer runs it at the
    // next start; until then it waits (docs/service.md).
    co_return worker->second->submit(task_id, std::move(input));
  }
  agent::Agents& group = *groups.at(it->second.group).agents;
  if (group.running_here(task_id)) co_return ok_status();
  Result<Pid> pid = co_await group.start(ctx, std::move(agent), std::move(task_id), std::move(input));
  if (!pid.ok()) co_return std::move(pid).error();
  co_return ok_status();
}

// ---- hot reload --------------------------------------------------------------------------------

namespace {

// What a reload cannot change while running (the reason, or empty).
std::string unchangeable(const ServiceConfig& now, const ServiceConfig& next) {
  auto part = [](const ServiceConfig& c, int which) {
    ServiceConfig only;
    only.models.clear();
    switch (which) {
      case 0: only.store = c.store; break;
      case 1: only.mcp_servers = c.mcp_servers; break;
      default: break;
    }
    return debug_string(only);
  };
  if (part(now, 0) != part(next, 0)) return "store";
  if (part(now, 1) != part(next, 1)) return "mcp_servers";
  if (now.server.address != next.server.address || now.server.port != next.server.port ||
      now.server.max_body_bytes != next.server.max_body_bytes) {
    return "server.address, server.port or server.max_body_bytes";
  }
  // Groups: the same groups with the same settings; agents may be added to or removed from a
  // group, not moved to another; an agent's mode and always-on settings stay.
  if (now.groups.size() != next.groups.size()) return "supervision.groups (a group added or removed)";
  for (const GroupConfig& g : next.groups) {
    auto it =
        std::find_if(now.groups.begin(), now.groups.end(), [&](const GroupConfig& o) { return o.name == g.name; });
    if (it == now.groups.end()) return "supervision.groups." + g.name + " (a new group)";
    const agent::AgentsOptions &a = it->options, &b = g.options;
    if (a.restart_intensity != b.restart_intensity || a.restart_period != b.restart_period ||
        a.restart_min_delay != b.restart_min_delay || a.restart_max_delay != b.restart_max_delay) {
      return "supervision.groups." + g.name + " (restart settings)";
    }
    for (const std::string& agent : g.agents) {
      for (const GroupConfig& other : now.groups) {
        if (other.name != g.name && std::find(other.agents.begin(), other.agents.end(), agent) != other.agents.end()) {
          return "agents." + agent + " (moved to another group)";
        }
      }
    }
  }
  for (const AgentConfig& a : next.agents) {
    const AgentConfig* old = now.find_agent(a.options.name);
    const bool was_always_on = old != nullptr && old->mode == AgentMode::kAlwaysOn;
    if ((a.mode == AgentMode::kAlwaysOn) != was_always_on && (old != nullptr || a.mode == AgentMode::kAlwaysOn)) {
      return "agents." + a.options.name + ".mode (always_on agents are fixed at start)";
    }
  }
  for (const AgentConfig& a : now.agents) {
    if (a.mode == AgentMode::kAlwaysOn && next.find_agent(a.options.name) == nullptr) {
      return "agents." + a.options.name + " (an always_on agent cannot be removed)";
    }
  }
  return {};
}

}  // namespace

Status Service::Impl::reload_now() {
  std::lock_guard lock(reload_mu);
  auto rejected = [this](Error e) {
    reloads_rejected.fetch_add(1);
    metrics->on_config_reload(false);
    NINES_LOG(env.logger(), LogLevel::kError, "config_reload_rejected",
              "the new config was rejected; the running config is kept", {"file", options.config_path},
              {"error", e.message()});
    return e;
  };
  if (stopped.load()) return rejected(Error(ErrorKind::kCancelled, "the service is stopping"));
  stamp = file_stamp(options.config_path);
  ConfigResult loaded = load_config(options.config_path, options.sources);
  if (!loaded.ok()) return rejected(Error(ErrorKind::kInvalidArgument, loaded.error_text()));
  ServiceConfig next = std::move(*loaded.config);
  std::shared_ptr<const internal::Generation> now = current();
  if (options.port) next.server.port = *options.port;
  if (std::string what = unchangeable(now->config, next); !what.empty()) {
    return rejected(Error(ErrorKind::kInvalidArgument,
                          options.config_path + ": " + what + " changed: restart the service to apply that"));
  }
  std::map<std::string, agent::AgentOptions> agent_options;
  Result<std::shared_ptr<internal::Generation>> g = make_generation(std::move(next), &agent_options);
  if (!g.ok()) return rejected(std::move(g).error());
  // Each group gets its agents' new options (and the new registry) at once.
  for (const GroupConfig& group : (*g)->config.groups) {
    std::vector<agent::AgentOptions> list;
    for (const std::string& name : group.agents) list.push_back(std::move(agent_options.at(name)));
    Status s = groups.at(group.name).agents->reconfigure((*g)->tools, std::move(list));
    if (!s.ok()) {
      // Checked above as far as the config can be: a group already switched keeps its new
      // agents (logged), the others and the service's view stay on the old generation.
      return rejected(std::move(s).error().with_context("supervision.groups." + group.name));
    }
  }
  env.logger().set_level((*g)->config.logging.level);
  const std::size_t agents_now = (*g)->agents.size();
  {
    std::lock_guard glock(gen_mu);
    gen = *g;
  }
  for (const auto& [name, view] : now->agents) {
    if (!(*g)->agents.contains(name)) metrics->remove_router(name);
  }
  for (const auto& [name, view] : (*g)->agents) metrics->add_router(name, view.router);
  {
    std::lock_guard dlock(degraded_mu);
    degraded_since.clear();  // new routers: their breakers start closed
  }
  metrics->on_config_reload(true);
  reloads_ok.fetch_add(1);
  NINES_LOG(env.logger(), LogLevel::kNotice, "config_reloaded", "the new config is applied",
            {"file", options.config_path}, {"agents", agents_now});
  return ok_status();
}

std::string Service::Impl::render_metrics() { return metrics->render(); }

// ---- lifecycle ---------------------------------------------------------------------------------

Service::Service(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Service::~Service() { shutdown(Duration::zero()); }

std::uint16_t Service::port() const { return impl_->server ? impl_->server->port() : 0; }
std::string Service::base_url() const { return impl_->server ? impl_->server->base_url() : std::string(); }
ServiceConfig Service::config() const { return impl_->current()->config; }

Status Service::reload() { return impl_->reload_now(); }

Result<bool> Service::reload_if_changed() {
  internal::FileStamp seen = file_stamp(impl_->options.config_path);
  {
    std::lock_guard lock(impl_->reload_mu);
    if (seen == impl_->stamp) return false;
  }
  Status s = impl_->reload_now();
  if (!s.ok()) return std::move(s).error();
  return true;
}

std::uint64_t Service::reloads() const { return impl_->reloads_ok.load(); }
std::uint64_t Service::reloads_rejected() const { return impl_->reloads_rejected.load(); }

std::size_t Service::shutdown(Duration grace) {
  Impl& s = *impl_;
  std::lock_guard lock(s.shutdown_mu);
  if (s.stopped.exchange(true)) return 0;
  s.draining.store(true);
  if (s.metrics) s.metrics->set_ready(false);
  for (auto& [name, g] : s.groups) g.agents->drain();
  // Wait for the tasks to reach their checkpoints, on the environment's clock.
  const TimePoint until = s.env.now() + std::max(grace, Duration::zero());
  auto running = [&s] {
    std::size_t n = 0;
    for (auto& [name, g] : s.groups) n += g.agents->running_count();
    return n;
  };
  while (running() > 0 && s.env.now() < until) {
    std::promise<void> tick;
    std::future<void> f = tick.get_future();
    auto p = std::make_shared<std::promise<void>>(std::move(tick));
    s.env.add_timer(s.env.now() + std::chrono::milliseconds(20), [p] { p->set_value(); });
    f.wait();
  }
  const std::size_t left = running();
  if (s.server) s.server->stop();
  s.events->close_all();
  if (s.owner != Pid{}) {
    auto watch = s.rt.watch_exit(s.owner);
    (void)s.rt.send(s.owner, StopService{});
    watch->wait();
  }
  NINES_LOG(s.env.logger(), LogLevel::kNotice, "service_stopped", "nines serve: stopped", {"tasks_left_running", left});
  return left;
}

}  // namespace nines::service
