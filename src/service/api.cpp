// The service's HTTP API (docs/api.md): routing, auth, limits, and one process per request.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "internal.hpp"
#include "nines/core/log.hpp"
#include "nines/runtime/supervisor.hpp"
#include "time_format.hpp"

namespace nines::service {

namespace {

using json = nlohmann::json;
using internal::format_unix_ns;

constexpr std::string_view kKindPrefix = "agent:";
constexpr std::size_t kMaxListLimit = 500;
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

// ---- request parsing ---------------------------------------------------------------------------

// The body as a JSON object with only `allowed` fields; a 400 message (and the field) otherwise.
struct BodyError {
  std::string message;
  std::string field;
};

std::optional<BodyError> parse_body(const std::string& body, const std::set<std::string>& allowed, json& out,
                                    bool empty_ok) {
  if (body.empty() && empty_ok) {
    out = json::object();
    return std::nullopt;
  }
  out = json::parse(body, nullptr, false);
  if (out.is_discarded()) return BodyError{"the body is not valid JSON", ""};
  if (!out.is_object()) return BodyError{"the body must be a JSON object", ""};
  for (auto it = out.begin(); it != out.end(); ++it) {
    if (!allowed.contains(it.key())) {
      std::string names;
      for (const std::string& a : allowed) names += (names.empty() ? "" : ", ") + a;
      return BodyError{"unknown field '" + it.key() + "' (fields: " + names + ")", it.key()};
    }
  }
  return std::nullopt;
}

std::optional<BodyError> get_string(const json& j, const char* field, std::string& out, bool required) {
  auto it = j.find(field);
  if (it == j.end()) {
    if (required) return BodyError{std::string("field '") + field + "' is required", field};
    return std::nullopt;
  }
  if (!it->is_string()) return BodyError{std::string("field '") + field + "' must be a string", field};
  out = it->get<std::string>();
  return std::nullopt;
}

bool valid_task_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' || c == '-';
  });
}

std::string percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else if (s[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::map<std::string, std::string> parse_query(std::string_view q) {
  std::map<std::string, std::string> out;
  while (!q.empty()) {
    const std::size_t amp = q.find('&');
    std::string_view part = q.substr(0, amp);
    const std::size_t eq = part.find('=');
    std::string key = percent_decode(part.substr(0, eq));
    std::string value = eq == std::string_view::npos ? std::string() : percent_decode(part.substr(eq + 1));
    if (!key.empty()) out[std::move(key)] = std::move(value);
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return out;
}

// FNV-1a, 128 bits: an Idempotency-Key's task id ("k-" + 32 hex digits).
__extension__ typedef unsigned __int128 u128;

std::string key_task_id(std::string_view key) {
  u128 h = (static_cast<u128>(0x6c62272e07bb0142ULL) << 64) | 0x62b821756295c58dULL;
  const u128 prime = (static_cast<u128>(0x0000000001000000ULL) << 64) | 0x000000000000013BULL;
  for (unsigned char c : key) {
    h ^= c;
    h *= prime;
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "k-%016llx%016llx", static_cast<unsigned long long>(h >> 64),
                static_cast<unsigned long long>(h));
  return buf;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const std::size_t n = std::max(a.size(), b.size());
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

std::string hex_encode(std::string_view s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::optional<std::string> hex_decode(std::string_view s) {
  if (s.size() % 2 != 0) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < s.size(); i += 2) {
    auto v = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = v(s[i]), lo = v(s[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

// ---- the task object ---------------------------------------------------------------------------

json outcome_json(const agent::TaskOutcome& o) {
  json errors = json::object();
  for (const auto& [kind, n] : o.tool_errors) errors[kind] = n;
  return json{{"status", agent::to_string(o.status)},
              {"answer", o.answer},
              {"reason", o.reason},
              {"steps", o.steps},
              {"model_calls", o.model_calls},
              {"tool_calls", o.tool_calls},
              {"input_tokens", o.input_tokens},
              {"output_tokens", o.output_tokens},
              {"cost_usd", o.cost_usd},
              {"models", o.models},
              {"degraded", o.degraded},
              {"retries", o.retries},
              {"fallbacks", o.fallbacks},
              {"restarts", o.restarts},
              {"tool_errors", std::move(errors)},
              {"wall_time_s", std::chrono::duration<double>(o.wall_time).count()}};
}

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

enum class Scope : std::uint8_t { kNone, kRead, kOperator };

struct Route {
  std::string name;  // for metrics: "/v1/tasks/{id}"
  std::vector<std::string> methods;
  Scope scope = Scope::kRead;
  std::string task_id;  // {id}
  std::string action;   // cancel, approve, ...
};

// Which route a path is, or nullopt (404).
std::optional<Route> match(std::string_view path) {
  if (path == "/healthz") return Route{"/healthz", {"GET", "HEAD"}, Scope::kNone};
  if (path == "/readyz") return Route{"/readyz", {"GET", "HEAD"}, Scope::kNone};
  if (path == "/metrics") return Route{"/metrics", {"GET"}, Scope::kRead};
  if (path == "/v1/agents") return Route{"/v1/agents", {"GET"}, Scope::kRead};
  if (path == "/v1/models") return Route{"/v1/models", {"GET"}, Scope::kRead};
  if (path == "/v1/supervision") return Route{"/v1/supervision", {"GET"}, Scope::kRead};
  if (path == "/v1/tasks") return Route{"/v1/tasks", {"GET", "POST"}, Scope::kRead};
  constexpr std::string_view prefix = "/v1/tasks/";
  if (path.rfind(prefix, 0) != 0) return std::nullopt;
  std::string_view rest = path.substr(prefix.size());
  const std::size_t slash = rest.find('/');
  std::string id = percent_decode(rest.substr(0, slash));
  if (id.empty()) return std::nullopt;
  if (slash == std::string_view::npos) return Route{"/v1/tasks/{id}", {"GET"}, Scope::kRead, id};
  std::string_view action = rest.substr(slash + 1);
  if (action == "events") return Route{"/v1/tasks/{id}/events", {"GET"}, Scope::kRead, id, "events"};
  for (std::string_view a : {"cancel", "approve", "deny", "resolve", "fork"}) {
    if (action == a) {
      return Route{"/v1/tasks/{id}/" + std::string(a), {"POST"}, Scope::kOperator, id, std::string(a)};
    }
  }
  return std::nullopt;
}

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

std::optional<BodyError> parse_budget(const json& j, agent::Budget& b) {
  if (!j.is_object()) return BodyError{"field 'budget' must be an object", "budget"};
  b = agent::Budget{.max_steps = 0};
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string field = "budget." + it.key();
    const json& v = it.value();
    if (it.key() == "max_steps" || it.key() == "max_model_calls" || it.key() == "max_tokens") {
      if (!v.is_number_integer() || v.get<std::int64_t>() < 0) {
        return BodyError{"field '" + field + "' must be a whole number >= 0", field};
      }
      const std::int64_t n = v.get<std::int64_t>();
      (it.key() == "max_steps" ? b.max_steps : it.key() == "max_model_calls" ? b.max_model_calls : b.max_tokens) = n;
    } else if (it.key() == "max_cost_usd" || it.key() == "max_wall_time_s") {
      if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 1e9) {
        return BodyError{"field '" + field + "' must be a number from 0 to 1e9", field};
      }
      if (it.key() == "max_cost_usd") {
        b.max_cost_usd = v.get<double>();
      } else {
        const double secs = v.get<double>();
        b.max_wall_time =
            secs > 0 ? std::chrono::duration_cast<Duration>(std::chrono::duration<double>(secs)) : kInfinite;
      }
    } else {
      return BodyError{"unknown field '" + field +
                           "' (fields: max_steps, max_model_calls, max_tokens, max_cost_usd, max_wall_time_s)",
                       field};
    }
  }
  return std::nullopt;
}

Task<> post_task(Service::Impl& s, Context& ctx, const net::HttpServerRequest& req, Reply& r) {
  if (s.draining.load()) {
    respond_error(r, 503, "the service is shutting down: no new tasks", "", net::HttpHeaders{{"Retry-After", "5"}});
    co_return;
  }
  json body;
  if (auto e = parse_body(req.body, {"agent", "input", "id", "budget"}, body, false)) {
    respond_error(r, 400, e->message, e->field);
    co_return;
  }
  std::string agent, input, id;
  if (auto e = get_string(body, "agent", agent, true)) {
    respond_error(r, 400, e->message, e->field);
    co_return;
  }
  if (auto e = get_string(body, "input", input, true)) {
    respond_error(r, 400, e->message, e->field);
    co_return;
  }
  if (auto e = get_string(body, "id", id, false)) {
    respond_error(r, 400, e->message, e->field);
    co_return;
  }
  std::shared_ptr<const internal::Generation> gen = s.current();
  if (!gen->agents.contains(agent)) {
    std::string names;
    for (const auto& [name, a] : gen->agents) names += (names.empty() ? "" : ", ") + name;
    respond_error(r, 400, "field 'agent': unknown agent '" + agent + "' (agents: " + names + ")", "agent");
    co_return;
  }
  if (!id.empty() && !valid_task_id(id)) {
    respond_error(r, 400, "field 'id': 1 to 128 of [A-Za-z0-9._:-]", "id");
    co_return;
  }
  std::optional<agent::Budget> cap;
  if (auto it = body.find("budget"); it != body.end()) {
    agent::Budget b;
    if (auto e = parse_budget(*it, b)) {
      respond_error(r, 400, e->message, e->field);
      co_return;
    }
    cap = b;
  }
  std::optional<std::string_view> key = req.headers.get("Idempotency-Key");
  if (key) {
    const bool printable = std::all_of(key->begin(), key->end(), [](char c) { return c >= 0x20 && c < 0x7f; });
    if (key->empty() || key->size() > 256 || !printable) {
      respond_error(r, 400, "header 'Idempotency-Key': 1 to 256 printable ASCII characters", "Idempotency-Key");
      co_return;
    }
    if (!id.empty()) {
      respond_error(r, 400, "give either an 'id' or an Idempotency-Key header, not both", "id");
      co_return;
    }
  }
  const std::string task_id = !id.empty() ? id : key ? key_task_id(*key) : new_task_id(s.env);
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
    Status recorded = group->submit(agent, task_id, input, agent::RunOptions{.cap = cap});
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
  std::map<std::string, std::string> q = parse_query(req.query());
  for (const auto& [k, v] : q) {
    if (k != "status" && k != "agent" && k != "limit" && k != "cursor") {
      respond_error(r, 400, "unknown query parameter '" + k + "' (status, agent, limit, cursor)", k);
      return;
    }
  }
  std::size_t limit = 50;
  if (q.count("limit")) {
    const std::string& l = q["limit"];
    std::size_t n = 0;
    bool ok = !l.empty() && l.size() <= 4 && std::all_of(l.begin(), l.end(), ::isdigit);
    if (ok) n = std::stoul(l);
    if (!ok || n < 1 || n > kMaxListLimit) {
      respond_error(r, 400, "query 'limit': a whole number from 1 to 500", "limit");
      return;
    }
    limit = n;
  }
  const std::string status = q.count("status") ? q["status"] : "";
  bool use[5] = {true, true, true, true, true};
  std::string want;  // an outcome status to match, or empty
  if (!status.empty()) {
    std::fill(std::begin(use), std::end(use), false);
    if (status == "running") {
      use[0] = true;
    } else if (status == "needs_attention") {
      use[1] = true;
    } else if (status == "finished") {
      use[2] = use[3] = use[4] = true;
    } else if (status == "succeeded" || status == "budget_exceeded" || status == "loop_detected") {
      use[2] = true;
      want = status;
    } else if (status == "failed") {
      use[2] = use[3] = true;
      want = status;
    } else if (status == "cancelled") {
      use[2] = use[4] = true;
      want = status;
    } else {
      respond_error(r, 400,
                    "query 'status': one of running, needs_attention, finished, succeeded, failed, budget_exceeded, "
                    "loop_detected, cancelled",
                    "status");
      return;
    }
  }
  const std::string agent_filter = q.count("agent") ? q["agent"] : "";
  std::size_t group = 0;
  std::string after;
  if (q.count("cursor")) {
    std::optional<std::string> c = hex_decode(q["cursor"]);
    const std::size_t nl = c ? c->find('\n') : std::string::npos;
    if (!c || nl != 1 || (*c)[0] < '0' || (*c)[0] > '4') {
      respond_error(r, 400, "query 'cursor': not a cursor this service gave", "cursor");
      return;
    }
    group = static_cast<std::size_t>((*c)[0] - '0');
    after = c->substr(2);
  }
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
        next = hex_encode(std::string(1, static_cast<char>('0' + group)) + "\n" + after);
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
  std::optional<WorkflowRecord> w = find_task(s, route.task_id, r);
  if (!w) co_return;
  const std::string agent = agent_of(*w);
  agent::Agents* group = s.agents_of(agent);
  if (group == nullptr) {
    respond_error(r, 409, "task '" + w->id + "' is of agent '" + agent + "', which this config does not have");
    co_return;
  }
  json body;
  if (route.action == "cancel") {
    if (auto e = parse_body(req.body, {}, body, true)) {
      respond_error(r, 400, e->message, e->field);
      co_return;
    }
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
    const bool deny = route.action == "deny";
    if (auto e =
            parse_body(req.body, deny ? std::set<std::string>{"call_id", "reason"} : std::set<std::string>{"call_id"},
                       body, false)) {
      respond_error(r, 400, e->message, e->field);
      co_return;
    }
    std::string call_id, reason;
    if (auto e = get_string(body, "call_id", call_id, true)) {
      respond_error(r, 400, e->message, e->field);
      co_return;
    }
    if (auto e = get_string(body, "reason", reason, false)) {
      respond_error(r, 400, e->message, e->field);
      co_return;
    }
    Status d = deny ? group->deny(w->id, call_id, reason.empty() ? "denied by an operator" : reason)
                    : group->approve(w->id, call_id);
    if (!d.ok()) {
      respond_error(r, status_of(d.error()), d.error().message(),
                    d.error().kind() == ErrorKind::kInvalidArgument ? "call_id" : "");
      co_return;
    }
    respond_task(s, w->id, r, 200);
    co_return;
  }
  if (route.action == "resolve") {
    if (auto e = parse_body(req.body, {"effect_id", "applied", "outcome"}, body, false)) {
      respond_error(r, 400, e->message, e->field);
      co_return;
    }
    std::string effect_id, outcome;
    if (auto e = get_string(body, "effect_id", effect_id, true)) {
      respond_error(r, 400, e->message, e->field);
      co_return;
    }
    if (auto e = get_string(body, "outcome", outcome, false)) {
      respond_error(r, 400, e->message, e->field);
      co_return;
    }
    auto applied = body.find("applied");
    if (applied == body.end() || !applied->is_boolean()) {
      respond_error(r, 400, "field 'applied' is required: true (the effect happened) or false (it did not)", "applied");
      co_return;
    }
    if (w->status != WorkflowStatus::kNeedsAttention) {
      respond_error(r, 409, "task '" + w->id + "' is " + std::string(to_string(w->status)) + ", not needs_attention");
      co_return;
    }
    Status d = s.engine->resolve_effect(w->id, effect_id,
                                        EffectResolution{.applied = applied->get<bool>(), .outcome = outcome});
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
  if (route.action == "fork") {
    if (s.draining.load()) {
      respond_error(r, 503, "the service is shutting down: no new tasks", "", net::HttpHeaders{{"Retry-After", "5"}});
      co_return;
    }
    if (auto e = parse_body(req.body, {"id", "at_turn", "input"}, body, true)) {
      respond_error(r, 400, e->message, e->field);
      co_return;
    }
    std::string new_id, input;
    if (auto e = get_string(body, "id", new_id, false)) {
      respond_error(r, 400, e->message, e->field);
      co_return;
    }
    if (!new_id.empty() && !valid_task_id(new_id)) {
      respond_error(r, 400, "field 'id': 1 to 128 of [A-Za-z0-9._:-]", "id");
      co_return;
    }
    agent::ForkOptions fo;
    if (auto it = body.find("at_turn"); it != body.end()) {
      if (!it->is_number_integer() || it->get<std::int64_t>() < 0) {
        respond_error(r, 400, "field 'at_turn' must be a whole number >= 0", "at_turn");
        co_return;
      }
      fo.at_turn = it->get<std::int64_t>();
    }
    if (body.contains("input")) {
      if (auto e = get_string(body, "input", input, false)) {
        respond_error(r, 400, e->message, e->field);
        co_return;
      }
      fo.input = input;
    }
    if (new_id.empty()) new_id = new_task_id(s.env);
    Status f;
    {
      std::lock_guard lock(s.submit_mu);
      f = group->fork(w->id, new_id, fo);
    }
    if (!f.ok()) {
      respond_error(r, status_of(f.error()), f.error().message());
      co_return;
    }
    Result<WorkflowRecord> forked = s.store->get_workflow(new_id);
    const std::string forked_input = forked.ok() ? forked->input : w->input;
    (void)co_await s.launch(ctx, agent, new_id, forked_input);
    respond_task(s, new_id, r, 201, net::HttpHeaders{{"Location", "/v1/tasks/" + new_id}});
    co_return;
  }
  respond_error(r, 404, "no route");
}

void get_events(Service::Impl& s, const net::HttpServerRequest& req, const Route& route, Reply& r) {
  std::optional<WorkflowRecord> w = find_task(s, route.task_id, r);
  if (!w) return;
  std::map<std::string, std::string> q = parse_query(req.query());
  std::string last;
  if (std::optional<std::string_view> h = req.headers.get("Last-Event-ID")) {
    last = std::string(*h);
  } else if (q.count("last_event_id")) {
    last = q["last_event_id"];
  }
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
        routes.push_back({{"agent", name},
                          {"breaker", to_string(b->state())},
                          {"calls", c.calls},
                          {"served", c.served},
                          {"left", std::move(left)}});
      }
    }
    list.push_back({{"name", m.name},
                    {"provider", to_string(m.provider)},
                    {"model", m.model},
                    {"context_window_tokens", m.context_window_tokens},
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
  std::optional<Route> route = match(request.path());
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
  Scope need = route->scope;
  if (route->name == "/v1/tasks" && request.method == "POST") need = Scope::kOperator;
  if (need != Scope::kNone && !config.server.tokens.empty()) {
    std::optional<std::string_view> auth = request.headers.get("Authorization");
    std::string_view token;
    if (auth && auth->size() > 7 && std::equal(auth->begin(), auth->begin() + 7, "Bearer ", [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        })) {
      token = auth->substr(7);
    }
    const AuthToken* found = nullptr;
    for (const AuthToken& t : config.server.tokens) {
      // Every token is compared (no early exit), each in constant time.
      if (constant_time_equal(token, t.token.reveal()) && !token.empty()) found = &t;
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
