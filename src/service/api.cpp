// The service's HTTP API (docs/api.md): routing, auth, limits, and one process per request.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "api_request.hpp"
#include "internal.hpp"
#include "nines/core/log.hpp"
#include "nines/runtime/supervisor.hpp"
#include "time_format.hpp"

namespace nines::service {

namespace {

using json = nlohmann::json;
using internal::format_unix_ns;
using internal::Parsed;
using internal::RequestError;
using internal::Route;
using internal::Scope;

constexpr std::string_view kKindPrefix = "agent:";
constexpr std::size_t kMaxScanPerPage = 5000;  // store rows read for one filtered page at most

// ---- responses ---------------------------------------------------------------------------------

std::string_view code_of(int status) {
  switch (status) {
    case 400: return "invalid_argument";
    case 401: return "unauthorized";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 409: return "conflict";
    case 413: return "payload_too_large";
    case 429: return "too_many_requests";
    case 503: return "unavailable";
    default: return "internal";
  }
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// The request's responder and the status it answered (for the request metrics).
struct Reply {
  net::HttpResponder responder;
  int status = 0;
  Status respond(int code, net::HttpHeaders headers, std::string body) {
    status = code;
    return responder.respond(code, std::move(headers), std::move(body));
  }
};

void respond_json(Reply& r, int status, const json& body, net::HttpHeaders headers = {}) {
  headers.set("Content-Type", "application/json");
  (void)r.respond(status, std::move(headers), dump(body) + "\n");
}

void respond_error(Reply& r, int status, std::string message, std::string field = {}, net::HttpHeaders headers = {}) {
  json e{{"code", code_of(status)}, {"message", std::move(message)}};
  if (!field.empty()) e["field"] = std::move(field);
  respond_json(r, status, json{{"error", std::move(e)}}, std::move(headers));
}

// An Error of a lower layer as an HTTP status (its message is ours: it names no secret).
int status_of(const Error& e) {
  switch (e.kind()) {
    case ErrorKind::kInvalidArgument: return 400;
    case ErrorKind::kNotFound: return 404;
    case ErrorKind::kAlreadyExists: return 409;
    case ErrorKind::kCancelled:
    case ErrorKind::kTransient:
    case ErrorKind::kTimeout:
    case ErrorKind::kNoProc: return 503;
    default: return 500;
  }
}

// ---- the task object ---------------------------------------------------------------------------

// The API's form of an outcome (agent::outcome_api_json).
json outcome_json(const agent::TaskOutcome& o) { return json::parse(agent::outcome_api_json(o)); }

// The API status of a task's record ("running", or the outcome's status).
std::string api_status(const WorkflowRecord& w, std::optional<agent::TaskOutcome>* outcome_out, agent::Agents* agents) {
  if (w.status == WorkflowStatus::kRunning) return "running";
  std::optional<agent::TaskOutcome> outcome;
  if (agents != nullptr) {
    Result<agent::TaskOutcome> o = agents->outcome(w.id);
    if (o.ok()) outcome = std::move(*o);
  } else if (w.status == WorkflowStatus::kCompleted) {
    Result<agent::TaskOutcome> o = agent::decode_outcome(w.result);
    if (o.ok()) outcome = std::move(*o);
  }
  std::string status = outcome ? std::string(agent::to_string(outcome->status)) : std::string(to_string(w.status));
  if (status == "completed") status = "succeeded";
  if (outcome_out != nullptr) *outcome_out = std::move(outcome);
  return status;
}

}  // namespace

// ---- routing -----------------------------------------------------------------------------------

namespace {

// ---- the routes' work (in the request's process) ------------------------------------------------

std::string new_task_id(Environment& env) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "t-%012llx-%08x", static_cast<unsigned long long>(env.unix_time_ns() / 1'000'000),
                static_cast<unsigned>(env.random_u64()));
  return buf;
}

std::string agent_of(const WorkflowRecord& w) {
  return w.kind.rfind(kKindPrefix, 0) == 0 ? w.kind.substr(kKindPrefix.size()) : std::string();
}

json task_json(Service::Impl& s, const WorkflowRecord& w) {
  const std::string agent = agent_of(w);
  std::optional<agent::TaskOutcome> outcome;
  const std::string status = api_status(w, &outcome, s.agents_of(agent));
  json j{{"id", w.id},
         {"agent", agent},
         {"status", status},
         {"input", w.input},
         {"created_at", format_unix_ns(w.created_at.time_since_epoch().count())},
         {"updated_at", format_unix_ns(w.updated_at.time_since_epoch().count())},
         {"attempt", w.attempt}};
  if (outcome) j["outcome"] = outcome_json(*outcome);
  if (w.status == WorkflowStatus::kNeedsAttention) {
    // What the operator decides on (POST /v1/tasks/{id}/resolve): the effects of unknown outcome.
    json pending = json::array();
    Result<std::vector<EffectRecord>> effects = s.store->load_effects(w.id);
    if (effects.ok()) {
      for (const EffectRecord& e : *effects) {
        if (e.state != EffectState::kNeedsAttention) continue;
        json arguments = json::parse(e.arguments, nullptr, false);
        pending.push_back({{"effect_id", e.effect_id},
                           {"nature", to_string(e.nature)},
                           {"arguments", arguments.is_discarded() ? json(e.arguments) : arguments},
                           {"idempotency_key", e.idempotency_key},
                           {"since", format_unix_ns(e.intent_at.time_since_epoch().count())}});
      }
    }
    j["pending_effects"] = std::move(pending);
  }
  return j;
}

// The task's record when it is an agent task; a 404 (or 5xx) answered otherwise.
std::optional<WorkflowRecord> find_task(Service::Impl& s, const std::string& id, Reply& r) {
  Result<WorkflowRecord> w = s.store->get_workflow(id);
  if (!w.ok()) {
    if (w.error().kind() == ErrorKind::kNotFound) {
      respond_error(r, 404, "task '" + id + "' not found");
    } else {
      respond_error(r, 503, "the store cannot be read: " + std::string(to_string(w.error().kind())));
    }
    return std::nullopt;
  }
  if (agent_of(*w).empty()) {
    respond_error(r, 404, "task '" + id + "' not found");
    return std::nullopt;
  }
  return std::move(*w);
}

void respond_task(Service::Impl& s, const std::string& id, Reply& r, int status, net::HttpHeaders headers = {}) {
  std::optional<WorkflowRecord> w = find_task(s, id, r);
  if (!w) return;
  respond_json(r, status, task_json(s, *w), std::move(headers));
}

// A refused request's answer.
void refuse(Reply& r, const RequestError& e) { respond_error(r, e.status, e.message, e.field); }

Task<> post_task(Service::Impl& s, Context& ctx, const net::HttpServerRequest& req, Reply& r) {
  if (s.draining.load()) {
    respond_error(r, 503, "the service is shutting down: no new tasks", "", net::HttpHeaders{{"Retry-After", "5"}});
    co_return;
  }
  Parsed<internal::SubmitRequest> parsed = internal::parse_submit(req.body, req.headers.get("Idempotency-Key"));
  if (const RequestError* e = std::get_if<RequestError>(&parsed)) {
    refuse(r, *e);
    co_return;
  }
  internal::SubmitRequest& sub = std::get<internal::SubmitRequest>(parsed);
  const std::string& agent = sub.agent;
  const std::string& input = sub.input;
  const std::optional<std::string>& key = sub.idempotency_key;
  std::shared_ptr<const internal::Generation> gen = s.current();
  if (!gen->agents.contains(agent)) {
    std::string names;
    for (const auto& [name, a] : gen->agents) names += (names.empty() ? "" : ", ") + name;
    respond_error(r, 400, "field 'agent': unknown agent '" + agent + "' (agents: " + names + ")", "agent");
    co_return;
  }
  const std::string task_id = !sub.id.empty() ? sub.id : key ? internal::key_task_id(*key) : new_task_id(s.env);
  agent::Agents* group = s.agents_of(agent);
  {
    std::lock_guard lock(s.submit_mu);
    Result<WorkflowRecord> existing = s.store->get_workflow(task_id);
    if (existing.ok()) {
      if (existing->kind == std::string(kKindPrefix) + agent && existing->input == input) {
        respond_json(r, 200, task_json(s, *existing), net::HttpHeaders{{"Location", "/v1/tasks/" + task_id}});
      } else {
        respond_error(r, 409,
                      key ? "this Idempotency-Key was used for another request (task '" + task_id + "')"
                          : "a task '" + task_id + "' exists with another agent or input",
                      key ? "Idempotency-Key" : "id");
      }
      co_return;
    }
    if (existing.error().kind() != ErrorKind::kNotFound) {
      respond_error(r, 503, "the store cannot be read: " + std::string(to_string(existing.error().kind())));
      co_return;
    }
    Status recorded = group->submit(agent, task_id, input, agent::RunOptions{.cap = sub.cap});
    if (!recorded.ok()) {
      respond_error(r, status_of(recorded.error()), recorded.error().message());
      co_return;
    }
  }
  Status launched = co_await s.launch(ctx, agent, task_id, input);
  if (!launched.ok()) {
    // Recorded: it runs at the latest when the service starts again (its group's resumer).
    NINES_LOG(s.env.logger(), LogLevel::kWarning, "task_not_started", "a recorded task could not be started now",
              {"task", task_id}, {"agent", agent}, {"error", launched.error().to_string()});
  }
  respond_task(s, task_id, r, 201, net::HttpHeaders{{"Location", "/v1/tasks/" + task_id}});
}

// GET /v1/tasks: the store's status groups in this order.
constexpr WorkflowStatus kGroups[] = {WorkflowStatus::kRunning, WorkflowStatus::kNeedsAttention,
                                      WorkflowStatus::kCompleted, WorkflowStatus::kFailed, WorkflowStatus::kCancelled};

void list_tasks(Service::Impl& s, const net::HttpServerRequest& req, Reply& r) {
  Parsed<internal::ListQuery> parsed = internal::parse_list_query(req.query());
  if (const RequestError* e = std::get_if<RequestError>(&parsed)) {
    refuse(r, *e);
    return;
  }
  const internal::ListQuery& q = std::get<internal::ListQuery>(parsed);
  const bool* use = q.use;
  const std::string& want = q.want;
  const std::string& agent_filter = q.agent;
  const std::size_t limit = q.limit;
  std::size_t group = q.group;
  std::string after = q.after;
  json tasks = json::array();
  std::optional<std::string> next;
  std::size_t scanned = 0;
  for (; group < 5 && !next; ++group, after.clear()) {
    if (!use[group]) continue;
    for (;;) {
      Result<std::vector<WorkflowRecord>> page = s.store->list_workflows(kGroups[group], after, 200);
      if (!page.ok()) {
        respond_error(r, 503, "the store cannot be read: " + std::string(to_string(page.error().kind())));
        return;
      }
      for (const WorkflowRecord& w : *page) {
        after = w.id;
        ++scanned;
        const std::string agent = agent_of(w);
        if (agent.empty() || (!agent_filter.empty() && agent != agent_filter)) continue;
        json t = task_json(s, w);
        if (!want.empty() && t["status"] != want) continue;
        tasks.push_back(std::move(t));
        if (tasks.size() == limit) break;
      }
      if (tasks.size() == limit || scanned >= kMaxScanPerPage) {
        next = internal::encode_cursor(group, after);
        break;
      }
      if (page->size() < 200) break;
    }
    if (next) break;
  }
  json out{{"tasks", std::move(tasks)}};
  if (next) out["next_cursor"] = *next;
  respond_json(r, 200, out);
}

Task<> task_action(Service::Impl& s, Context& ctx, const net::HttpServerRequest& req, const Route& route, Reply& r) {
  // The body first: a bad request is refused before anything is read or changed.
  Parsed<internal::ActionRequest> parsed = internal::parse_action(route.action, req.body);
  if (const RequestError* e = std::get_if<RequestError>(&parsed)) {
    refuse(r, *e);
    co_return;
  }
  internal::ActionRequest& act = std::get<internal::ActionRequest>(parsed);
  if (route.action == "fork" && s.draining.load()) {
    respond_error(r, 503, "the service is shutting down: no new tasks", "", net::HttpHeaders{{"Retry-After", "5"}});
    co_return;
  }
  std::optional<WorkflowRecord> w = find_task(s, route.task_id, r);
  if (!w) co_return;
  const std::string agent = agent_of(*w);
  agent::Agents* group = s.agents_of(agent);
  if (group == nullptr) {
    respond_error(r, 409, "task '" + w->id + "' is of agent '" + agent + "', which this config does not have");
    co_return;
  }
  if (route.action == "cancel") {
    if (w->status != WorkflowStatus::kRunning && w->status != WorkflowStatus::kNeedsAttention) {
      respond_json(r, 200, task_json(s, *w));
      co_return;
    }
    Status c = group->cancel(w->id);
    if (!c.ok()) {
      respond_error(r, status_of(c.error()), c.error().message());
      co_return;
    }
    // A task in needs_attention is not running anywhere: run it to its cancelled end.
    if (w->status == WorkflowStatus::kNeedsAttention) (void)co_await s.launch(ctx, agent, w->id, w->input);
    respond_task(s, w->id, r, 202);
    co_return;
  }
  if (route.action == "approve" || route.action == "deny") {
    Status d = route.action == "deny"
                   ? group->deny(w->id, act.call_id, act.reason.empty() ? "denied by an operator" : act.reason)
                   : group->approve(w->id, act.call_id);
    if (!d.ok()) {
      respond_error(r, status_of(d.error()), d.error().message(),
                    d.error().kind() == ErrorKind::kInvalidArgument ? "call_id" : "");
      co_return;
    }
    respond_task(s, w->id, r, 200);
    co_return;
  }
  if (route.action == "resolve") {
    if (w->status != WorkflowStatus::kNeedsAttention) {
      respond_error(r, 409, "task '" + w->id + "' is " + std::string(to_string(w->status)) + ", not needs_attention");
      co_return;
    }
    Status d = s.engine->resolve_effect(w->id, act.effect_id,
                                        EffectResolution{.applied = act.applied, .outcome = act.outcome});
    if (!d.ok()) {
      respond_error(r, status_of(d.error()), d.error().message(),
                    d.error().kind() == ErrorKind::kNotFound ? "effect_id" : "");
      co_return;
    }
    Status launched = co_await s.launch(ctx, agent, w->id, w->input);
    if (!launched.ok()) {
      NINES_LOG(s.env.logger(), LogLevel::kWarning, "task_not_started", "a resolved task could not be started now",
                {"task", w->id}, {"error", launched.error().to_string()});
    }
    respond_task(s, w->id, r, 200);
    co_return;
  }
  // fork
  const std::string new_id = act.new_id.empty() ? new_task_id(s.env) : act.new_id;
  Status f;
  {
    std::lock_guard lock(s.submit_mu);
    f = group->fork(w->id, new_id, act.fork);
  }
  if (!f.ok()) {
    respond_error(r, status_of(f.error()), f.error().message());
    co_return;
  }
  Result<WorkflowRecord> forked = s.store->get_workflow(new_id);
  const std::string forked_input = forked.ok() ? forked->input : w->input;
  (void)co_await s.launch(ctx, agent, new_id, forked_input);
  respond_task(s, new_id, r, 201, net::HttpHeaders{{"Location", "/v1/tasks/" + new_id}});
}

void get_events(Service::Impl& s, const net::HttpServerRequest& req, const Route& route, Reply& r) {
  std::optional<WorkflowRecord> w = find_task(s, route.task_id, r);
  if (!w) return;
  const std::string last = internal::last_event_id(req.headers.get("Last-Event-ID"), req.query());
  std::optional<std::string> finished;
  if (w->status != WorkflowStatus::kRunning) finished = api_status(*w, nullptr, s.agents_of(agent_of(*w)));
  r.status = 200;
  s.events->subscribe(w->id, last, r.responder, finished);
}

void get_readyz(Service::Impl& s, Reply& r) {
  std::shared_ptr<const internal::Generation> gen = s.current();
  json checks = json::object();
  bool ready = true;
  Result<int> version = s.store->schema_version();
  checks["store"] = version.ok() ? "ok" : "unreachable: " + std::string(to_string(version.error().kind()));
  ready = ready && version.ok();
  checks["config"] = "loaded";
  checks["draining"] = s.draining.load();
  ready = ready && !s.draining.load();
  const bool tree = s.root != Pid{} && s.rt.alive(s.root);
  checks["supervision"] = tree ? "ok" : "down";
  ready = ready && tree;
  json agents = json::object();
  for (const auto& [name, a] : gen->agents) {
    bool any_closed = false;
    for (std::size_t i = 0; i < a.router->size(); ++i) {
      std::shared_ptr<CircuitBreaker> b = a.router->breaker(i);
      std::optional<TimePoint> until = b->open_until();
      if (b->state() != BreakerState::kOpen || (until && *until <= s.env.now())) any_closed = true;
    }
    agents[name] = any_closed ? "ok" : "every model's breaker is open";
    ready = ready && any_closed;
  }
  checks["agents"] = std::move(agents);
  s.metrics->set_ready(ready);
  respond_json(r, ready ? 200 : 503, json{{"ready", ready}, {"checks", std::move(checks)}});
}

void get_agents(Service::Impl& s, Reply& r) {
  std::shared_ptr<const internal::Generation> gen = s.current();
  json list = json::array();
  for (const auto& [name, a] : gen->agents) {
    list.push_back({{"name", name},
                    {"group", a.group},
                    {"mode", a.mode == AgentMode::kAlwaysOn ? "always_on" : "on_demand"},
                    {"models", a.models},
                    {"tools", a.tools},
                    {"budget",
                     {{"max_steps", a.budget.max_steps},
                      {"max_model_calls", a.budget.max_model_calls},
                      {"max_tokens", a.budget.max_tokens},
                      {"max_cost_usd", a.budget.max_cost_usd},
                      {"max_wall_time_s", a.budget.max_wall_time == kInfinite
                                              ? 0.0
                                              : std::chrono::duration<double>(a.budget.max_wall_time).count()}}}});
  }
  respond_json(r, 200, json{{"agents", std::move(list)}});
}

void get_models(Service::Impl& s, Reply& r) {
  std::shared_ptr<const internal::Generation> gen = s.current();
  json list = json::array();
  for (const ModelConfig& m : gen->config.models) {
    json routes = json::array();
    for (const auto& [name, a] : gen->agents) {
      for (std::size_t i = 0; i < a.router->size(); ++i) {
        if (a.router->route_name(i) != m.name) continue;
        llm::RouteCounters c = a.router->counters(i);
        json left = json::object();
        for (std::size_t k = 0; k < 7; ++k) {
          if (c.left[k] > 0) left[std::string(llm::to_string(static_cast<llm::FallbackReason>(k)))] = c.left[k];
        }
        std::shared_ptr<CircuitBreaker> b = a.router->breaker(i);
        json since = nullptr;
        {
          std::lock_guard lock(s.degraded_mu);
          if (auto it = s.degraded_since.find(name + "/" + m.name); it != s.degraded_since.end()) {
            since = format_unix_ns(it->second);
          }
        }
        routes.push_back({{"agent", name},
                          {"breaker", to_string(b->state())},
                          {"degraded_since", std::move(since)},
                          {"calls", c.calls},
                          {"served", c.served},
                          {"left", std::move(left)}});
      }
    }
    list.push_back({{"name", m.name},
                    {"provider", to_string(m.provider)},
                    {"model", m.model},
                    {"context_window_tokens", m.context_window_tokens},
                    {"limits",
                     {{"requests_per_minute", m.requests_per_minute},
                      {"tokens_per_minute", m.tokens_per_minute},
                      {"max_concurrent_calls", m.max_concurrent_calls}}},
                    {"routes", std::move(routes)}});
  }
  respond_json(r, 200, json{{"models", std::move(list)}});
}

Task<> get_supervision(Service::Impl& s, Context& ctx, Reply& r) {
  std::map<std::string, json> figures;
  for (const ServiceMetrics::SupervisorFigures& f : s.metrics->supervisors()) {
    figures[f.supervisor] = json{{"failures", f.failures},
                                 {"restarts", f.recoveries},
                                 {"mtbf_s", f.mtbf_seconds ? json(*f.mtbf_seconds) : json(nullptr)},
                                 {"mttr_s", f.mttr_seconds ? json(*f.mttr_seconds) : json(nullptr)},
                                 {"availability", f.availability},
                                 {"children_down", f.children_down}};
  }
  auto with_figures = [&figures](json& node, const std::string& label) {
    auto it = figures.find(label);
    node["figures"] = it != figures.end() ? it->second : json(nullptr);
  };
  json root{{"name", "nines"}, {"pid", s.root.to_string()}, {"alive", s.rt.alive(s.root)}};
  with_figures(root, "nines");
  json children = json::array();
  Result<std::vector<ChildInfo>> groups = co_await which_children(ctx, s.root);
  if (groups.ok()) {
    for (const ChildInfo& g : *groups) {
      json group{{"id", g.id},
                 {"pid", g.pid.to_string()},
                 {"restarting", g.restarting},
                 {"type", g.type == ChildType::kSupervisor ? "supervisor" : "worker"}};
      with_figures(group, g.id);
      if (g.pid != Pid{}) {
        Result<std::vector<ChildInfo>> tasks = co_await which_children(ctx, g.pid);
        if (tasks.ok()) {
          group["processes"] = tasks->size();
          json sample = json::array();
          for (std::size_t i = 0; i < tasks->size() && i < 100; ++i) {
            sample.push_back({{"pid", (*tasks)[i].pid.to_string()}, {"restarting", (*tasks)[i].restarting}});
          }
          group["children"] = std::move(sample);
        }
      }
      children.push_back(std::move(group));
    }
  }
  root["children"] = std::move(children);
  respond_json(r, 200, json{{"root", std::move(root)}});
}

Task<> serve_request(Service::Impl& s, Context& ctx, const net::HttpServerRequest& req, const Route& route, Reply& r) {
  if (route.name == "/healthz") {
    respond_json(r, 200, json{{"status", "ok"}});
  } else if (route.name == "/readyz") {
    get_readyz(s, r);
  } else if (route.name == "/metrics") {
    std::string page = s.render_metrics();
    (void)r.respond(200, net::HttpHeaders{{"Content-Type", "text/plain; version=0.0.4; charset=utf-8"}},
                    std::move(page));
  } else if (route.name == "/v1/agents") {
    get_agents(s, r);
  } else if (route.name == "/v1/models") {
    get_models(s, r);
  } else if (route.name == "/v1/supervision") {
    co_await get_supervision(s, ctx, r);
  } else if (route.name == "/v1/tasks") {
    if (req.method == "POST") {
      co_await post_task(s, ctx, req, r);
    } else {
      list_tasks(s, req, r);
    }
  } else if (route.name == "/v1/tasks/{id}") {
    respond_task(s, route.task_id, r, 200);
  } else if (route.action == "events") {
    get_events(s, req, route, r);
  } else {
    co_await task_action(s, ctx, req, route, r);
  }
}

}  // namespace

void Service::Impl::handle(net::HttpServerRequest&& request, net::HttpResponder responder) {
  const TimePoint started = env.now();
  Reply reply{std::move(responder)};
  // Answered here, on the loop thread: counted at once (the route's name or "unmatched": the
  // label values stay bounded whatever paths clients send).
  auto answered = [&](const std::string& route_name) {
    metrics->on_http_request(route_name, request.method, reply.status, env.now() - started);
  };
  std::optional<Route> route = internal::match_route(request.path());
  if (!route) {
    respond_error(reply, 404, "no route " + std::string(request.path()));
    answered("unmatched");
    return;
  }
  if (std::find(route->methods.begin(), route->methods.end(), request.method) == route->methods.end()) {
    std::string allow;
    for (const std::string& m : route->methods) allow += (allow.empty() ? "" : ", ") + m;
    respond_error(reply, 405,
                  "method " + request.method + " is not allowed on " + route->name + " (allowed: " + allow + ")", "",
                  net::HttpHeaders{{"Allow", allow}});
    answered(route->name);
    return;
  }
  std::shared_ptr<const internal::Generation> now = current();
  const ServiceConfig& config = now->config;
  const Scope need = internal::required_scope(*route, request.method);
  if (need != Scope::kNone && !config.server.tokens.empty()) {
    const std::string_view token = internal::bearer_token(request.headers.get("Authorization"));
    const AuthToken* found = nullptr;
    for (const AuthToken& t : config.server.tokens) {
      // Every token is compared (no early exit), each in constant time.
      if (internal::constant_time_equal(token, t.token.reveal()) && !token.empty()) found = &t;
    }
    if (found == nullptr) {
      respond_error(reply, 401, "a bearer token is required (Authorization: Bearer <token>)", "",
                    net::HttpHeaders{{"WWW-Authenticate", "Bearer"}});
      answered(route->name);
      return;
    }
    if (need == Scope::kOperator && found->scope != TokenScope::kOperator) {
      respond_error(reply, 403, "this token may only read (its scope is read)");
      answered(route->name);
      return;
    }
  }
  if (in_flight.fetch_add(1) >= config.server.max_concurrent_requests) {
    in_flight.fetch_sub(1);
    respond_error(reply, 429, "too many requests in progress; try again", "", net::HttpHeaders{{"Retry-After", "1"}});
    answered(route->name);
    return;
  }
  // The work runs in a process of its own: the event loop never waits for the store.
  std::weak_ptr<Impl> weak = weak_from_this();
  auto req = std::make_shared<net::HttpServerRequest>(std::move(request));
  auto route_ptr = std::make_shared<Route>(std::move(*route));
  auto reply_ptr = std::make_shared<Reply>(reply);
  Result<Pid> spawned = rt.spawn([weak, req, route_ptr, reply_ptr, started](Context& ctx) -> Task<> {
    std::shared_ptr<Impl> self = weak.lock();
    if (!self) co_return;
    struct InFlight {
      std::atomic<std::size_t>& n;
      ~InFlight() { n.fetch_sub(1); }
    } counted{self->in_flight};
    co_await serve_request(*self, ctx, *req, *route_ptr, *reply_ptr);
    // 0: the process ended without an answer (it should not): counted as a 500.
    self->metrics->on_http_request(route_ptr->name, req->method, reply_ptr->status == 0 ? 500 : reply_ptr->status,
                                   self->env.now() - started);
  });
  if (!spawned.ok()) {
    in_flight.fetch_sub(1);
    respond_error(reply, 503, "the service cannot take requests now");
    metrics->on_http_request(route_ptr->name, req->method, reply.status, env.now() - started);
  }
}

}  // namespace nines::service
