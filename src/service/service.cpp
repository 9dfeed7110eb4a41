// The service: builds the runtime objects of a ServiceConfig and runs them (service.hpp).
#include "nines/service/service.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>
#include <future>
#include <set>
#include <utility>

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
      return std::shared_ptr<llm::ChatModel>(
          std::make_shared<llm::ModelClient>(std::move(*codec), http, llm::ModelClientOptions{.timeouts = m.http_timeouts}));
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
      return std::shared_ptr<llm::ChatModel>(
          std::make_shared<llm::ModelClient>(std::move(*codec), http, llm::ModelClientOptions{.timeouts = m.http_timeouts}));
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

// Everything built inside the service's process (MCP servers need one), then the process waits
// for the stop message.
struct StopService {};

}  // namespace

Result<std::unique_ptr<Service>> Service::start(Runtime& rt, ServiceOptions options) {
  auto impl = std::make_shared<Impl>(rt, std::move(options));
  Environment& env = impl->env;

  ConfigResult loaded = load_config(impl->options.config_path, impl->options.sources);
  if (!loaded.ok()) return Error(ErrorKind::kInvalidArgument, loaded.error_text());
  impl->config = std::move(*loaded.config);
  ServiceConfig& config = impl->config;
  if (impl->options.port) config.server.port = *impl->options.port;
  if (!is_loopback(config.server.address) && config.server.tokens.empty()) {
    return Error(ErrorKind::kInvalidArgument, "server.address '" + config.server.address +
                                                  "' is not loopback: the API needs auth tokens (server.auth.tokens)");
  }
  env.logger().set_level(config.logging.level);

  Result<std::unique_ptr<Store>> store = open_store(config.store);
  if (!store.ok()) return std::move(store).error().with_context("store");
  impl->store = std::move(*store);
  Result<std::unique_ptr<WorkflowEngine>> engine = WorkflowEngine::create(env, *impl->store);
  if (!engine.ok()) return std::move(engine).error();
  impl->engine = std::move(*engine);
  Result<std::unique_ptr<net::HttpClient>> http = net::HttpClient::create(env);
  if (!http.ok()) return std::move(http).error().with_context("http client");
  impl->http = std::move(*http);

  for (const ModelConfig& m : config.models) {
    Result<std::shared_ptr<llm::ChatModel>> c = make_client(m, *impl->http);
    if (!c.ok()) return std::move(c).error();
    impl->clients.emplace(m.name, std::move(*c));
  }

  char boot[16];
  std::snprintf(boot, sizeof boot, "%08x", static_cast<unsigned>(env.random_u64()));
  impl->events = std::make_unique<internal::EventHub>(env, boot);

  // The service's process: MCP servers, tools, agents and the supervision tree.
  auto ready = std::make_shared<std::promise<Status>>();
  std::future<Status> ready_future = ready->get_future();
  std::weak_ptr<Impl> weak = impl;
  Result<Pid> owner = rt.spawn(
      [weak, ready](Context& ctx) -> Task<> {
        std::shared_ptr<Impl> self = weak.lock();
        if (!self) co_return;
        Status built = co_await self->build(ctx);
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
  net::HttpServerOptions so;
  so.bind_address = config.server.address;
  so.port = config.server.port;
  so.max_body_bytes = config.server.max_body_bytes;
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
            {"url", impl->server->base_url()}, {"agents", impl->agents.size()}, {"store", impl->store->backend()});
  return std::unique_ptr<Service>(new Service(impl));
}

Task<Status> Service::Impl::build(Context& ctx) {
  // Tools: native (by name), HTTP, then every MCP server's.
  std::vector<std::shared_ptr<agent::Tool>> all;
  for (const ToolConfig& t : config.tools) {
    if (t.kind == ToolConfig::Kind::kNative) {
      auto it = std::find_if(options.native_tools.begin(), options.native_tools.end(),
                             [&](const auto& tool) { return tool && tool->spec().name == t.spec.name; });
      if (it == options.native_tools.end()) {
        co_return Error(ErrorKind::kInvalidArgument,
                        "tools." + t.spec.name + ": no native tool of that name is built into this program");
      }
      all.push_back(*it);
      continue;
    }
    agent::HttpToolOptions o = t.http;
    for (const auto& [name, value] : t.headers) o.headers.add(name, value.reveal());
    Result<std::shared_ptr<agent::Tool>> tool = agent::make_http_tool(t.spec, std::move(o), http);
    if (!tool.ok()) co_return std::move(tool).error().with_context("tools." + t.spec.name);
    all.push_back(std::move(*tool));
  }
  std::map<std::string, std::vector<std::string>> mcp_tools;  // server -> tool names
  for (const McpServerConfig& m : config.mcp_servers) {
    agent::McpServerOptions o = m.options;
    for (const auto& [name, value] : m.env) o.env.emplace_back(name, value.reveal());
    Result<std::shared_ptr<agent::McpServer>> started = co_await agent::McpServer::start(ctx, std::move(o));
    if (!started.ok()) co_return std::move(started).error().with_context("mcp_servers." + m.options.name);
    for (std::shared_ptr<agent::Tool>& tool : (*started)->tools()) {
      mcp_tools[m.options.name].push_back(tool->spec().name);
      all.push_back(std::move(tool));
    }
    mcp.push_back(std::move(*started));
  }
  Result<std::shared_ptr<agent::ToolRegistry>> registry = agent::ToolRegistry::create(env, std::move(all));
  if (!registry.ok()) co_return std::move(registry).error().with_context("tools");
  tools = std::move(*registry);

  // Groups and their agents.
  SupervisorSpec root_spec{.name = "nines", .strategy = Strategy::kOneForOne, .intensity = 10,
                           .period = std::chrono::seconds(60)};
  for (const GroupConfig& g : config.groups) {
    agent::AgentsOptions ao = g.options;
    ao.resume_on_start = true;
    Result<std::unique_ptr<agent::Agents>> created = agent::Agents::create(env, *engine, tools, ao);
    if (!created.ok()) co_return std::move(created).error().with_context("supervision.groups." + g.name);
    internal::GroupRuntime group{.name = g.name, .agents = std::move(*created)};
    std::weak_ptr<Impl> weak = weak_from_this();
    group.agents->add_observer([weak](const agent::AgentEvent& event) {
      if (std::shared_ptr<Impl> self = weak.lock()) self->events->publish(event);
    });
    for (const std::string& name : g.agents) {
      const AgentConfig* a = config.find_agent(name);
      NINES_CHECK(a != nullptr);
      agent::AgentOptions opts = a->options;
      llm::RouterOptions ro{.name = name};
      for (const std::string& model_name : a->models) {
        const ModelConfig* m = config.find_model(model_name);
        NINES_CHECK(m != nullptr);
        ro.chain.push_back({.name = m->name,
                            .model = m->model,
                            .client = clients.at(m->name),
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
      if (!router.ok()) co_return std::move(router).error().with_context("agents." + name);
      opts.router = std::move(*router);
      for (const std::string& mcp_name : a->mcp_servers) {
        for (const std::string& tool : mcp_tools[mcp_name]) {
          if (std::find(opts.tools.begin(), opts.tools.end(), tool) == opts.tools.end()) opts.tools.push_back(tool);
        }
      }
      internal::AgentRuntime rt_agent{.name = name,
                                      .group = g.name,
                                      .mode = a->mode,
                                      .router = opts.router,
                                      .models = a->models,
                                      .tools = opts.tools,
                                      .budget = opts.budget};
      if (Status s = group.agents->add_agent(std::move(opts)); !s.ok()) {
        co_return std::move(s).error().with_context("agents." + name);
      }
      agents.emplace(name, std::move(rt_agent));
    }
    root_spec.children.push_back(group.agents->supervisor_child("group:" + g.name));
    groups.emplace(g.name, std::move(group));
  }
  Result<Pid> sup = start_supervisor_link(ctx, root_spec);
  if (!sup.ok()) co_return std::move(sup).error().with_context("supervision tree");
  root = *sup;

  // Always-on agents: a worker each (under a supervisor of its own, linked to this process).
  for (const AgentConfig& a : config.agents) {
    if (a.mode != AgentMode::kAlwaysOn) continue;
    internal::AgentRuntime& ar = agents.at(a.options.name);
    agent::AlwaysOnOptions o = a.always_on;
    o.agent = a.options.name;
    o.name = "always_on:" + a.options.name;
    for (const WatermarkConfig& w : a.watermarks) {
      o.watermarks.push_back({.name = w.name,
                              .probe = w.name == "open_fds" ? agent::open_fds_probe() : agent::resident_bytes_probe(),
                              .limit = w.limit});
    }
    Result<std::unique_ptr<agent::AlwaysOnAgent>> worker =
        agent::AlwaysOnAgent::create(*groups.at(ar.group).agents, std::move(o));
    if (!worker.ok()) co_return std::move(worker).error().with_context("agents." + a.options.name);
    Result<Pid> started = (*worker)->start(ctx);
    if (!started.ok()) co_return std::move(started).error().with_context("agents." + a.options.name);
    ar.always_on = std::move(*worker);
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
  auto it = agents.find(std::string(agent_name));
  if (it == agents.end()) return nullptr;
  return groups.at(it->second.group).agents.get();
}

const internal::AgentRuntime* Service::Impl::agent_runtime(std::string_view agent_name) const {
  auto it = agents.find(std::string(agent_name));
  return it == agents.end() ? nullptr : &it->second;
}

Task<Status> Service::Impl::launch(Context& ctx, std::string agent, std::string task_id, std::string input) {
  auto it = agents.find(agent);
  if (it == agents.end()) co_return Error(ErrorKind::kNotFound, "no agent named '" + agent + "'");
  if (it->second.always_on) {
    Status s = it->second.always_on->submit(task_id, std::move(input));
    // A full queue leaves the task recorded as running: the group's resumer runs it at the
    // next start; until then it waits (docs/service.md).
    co_return s;
  }
  agent::Agents& group = *groups.at(it->second.group).agents;
  if (group.running_here(task_id)) co_return ok_status();
  Result<Pid> pid = co_await group.start(ctx, std::move(agent), std::move(task_id), std::move(input));
  if (!pid.ok()) co_return std::move(pid).error();
  co_return ok_status();
}

std::string Service::Impl::render_metrics() {
  // Interim page until the metrics registry is wired (docs/metrics.md).
  std::string page = "# HELP nines_up Whether the service is serving.\n# TYPE nines_up gauge\nnines_up 1\n";
  return page;
}

// ---- lifecycle ---------------------------------------------------------------------------------

Service::Service(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Service::~Service() { shutdown(Duration::zero()); }

std::uint16_t Service::port() const { return impl_->server ? impl_->server->port() : 0; }
std::string Service::base_url() const { return impl_->server ? impl_->server->base_url() : std::string(); }
const ServiceConfig& Service::config() const { return impl_->config; }

Status Service::reload() {
  return Error(ErrorKind::kInvalidArgument, "hot reload is not built yet: restart the service to apply a new config");
}

std::size_t Service::shutdown(Duration grace) {
  Impl& s = *impl_;
  std::lock_guard lock(s.shutdown_mu);
  if (s.stopped.exchange(true)) return 0;
  s.draining.store(true);
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
  NINES_LOG(s.env.logger(), LogLevel::kNotice, "service_stopped", "nines serve: stopped",
            {"tasks_left_running", left});
  return left;
}

}  // namespace nines::service
