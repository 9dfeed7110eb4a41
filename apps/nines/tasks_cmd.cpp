// `nines tasks ...`: the service's task routes (docs/api.md) as commands, and a direct look at the
// store for when no service runs. The contract: tasks_cmd.hpp; the reference: docs/cli.md.
//
// Over HTTP every command is one request (list --all: one per page; events: a stream, opened
// again after a break with --follow) made from one process on a private environment, on the
// net layer's HttpClient (connect timeout 5 s, 30 s for a whole request; a followed event
// stream has no total timeout). The answers are JSON, read with nlohmann-json without
// exceptions: a field missing or of another type shows as "-".
#include "tasks_cmd.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/sse.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/store/postgres_store.hpp"
#include "nines/store/sqlite_store.hpp"
#include "nines/store/store.hpp"
#include "nines/workflow/workflow.hpp"

namespace nines::cli {

namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

constexpr std::uint32_t kMaxPages = 100'000;  // list --all: a service that never ends its cursor chain
constexpr std::uint32_t kAllPageSize = 500;   // list --all without --limit: the largest page the API gives

// printf into a std::string.
__attribute__((format(printf, 1, 2))) std::string fmt(const char* f, ...) {
  va_list args;
  va_start(args, f);
  va_list copy;
  va_copy(copy, args);
  const int n = std::vsnprintf(nullptr, 0, f, copy);
  va_end(copy);
  std::string s(n > 0 ? static_cast<std::size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(s.data(), s.size() + 1, f, args);
  va_end(args);
  return s;
}

// What every message of one command starts with, and where it goes.
class Reporter {
 public:
  Reporter(const TasksIo& io, const std::string& command) : io_(io), prefix_("nines tasks " + command + ": ") {}
  void out(const std::string& line) const { io_.out(line); }
  // "nines tasks show: <what>\n" on stderr; returns `code`.
  int fail(int code, const std::string& what) const {
    io_.err(prefix_ + what + "\n");
    return code;
  }
  void note(const std::string& what) const { io_.err(what + "\n"); }

 private:
  const TasksIo& io_;
  std::string prefix_;
};

// ---- JSON fields, read without throwing ------------------------------------------------------

std::string str(const json& j, const char* key, std::string fallback = "") {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}

std::optional<double> number(const json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

std::string integer_text(const json& j, const char* key) {
  auto it = j.is_object() ? j.find(key) : j.end();
  if (it == j.end() || !it->is_number()) return "-";
  if (it->is_number_integer()) return std::to_string(it->get<std::int64_t>());
  return fmt("%g", it->get<double>());
}

const json& member(const json& j, const char* key) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}

// A field's value as one line of text: strings as they are, the rest as compact JSON.
std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  return text;
}

// ---- text for people -------------------------------------------------------------------------

std::string cost_text(const json& outcome) {
  std::optional<double> c = number(outcome, "cost_usd");
  return c ? fmt("$%.4f", *c) : "-";
}

// One row per task: id, agent, status, steps, cost, updated.
std::string render_table(const std::vector<json>& tasks) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"ID", "AGENT", "STATUS", "STEPS", "COST", "UPDATED"});
  for (const json& t : tasks) {
    const json& o = member(t, "outcome");
    rows.push_back({str(t, "id", "-"), str(t, "agent", "-"), str(t, "status", "-"), integer_text(o, "steps"),
                    cost_text(o), str(t, "updated_at", "-")});
  }
  std::vector<std::size_t> width(rows.front().size(), 0);
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::string text;
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      std::string cell = r[i];
      if (i + 1 < r.size()) cell.resize(width[i] + 2, ' ');
      line += cell;
    }
    text += line + "\n";
  }
  return text;
}

void field(std::string& text, const char* name, const std::string& value) {
  if (value.empty()) return;
  text += fmt("%-12s%s\n", name, one_line(value).c_str());
}

// `show` (and the other commands that answer with the task): the fields, then the outcome.
std::string render_task(const json& t) {
  std::string text;
  field(text, "id", str(t, "id", "-"));
  field(text, "agent", str(t, "agent", "-"));
  field(text, "status", str(t, "status", "-"));
  field(text, "input", str(t, "input"));
  field(text, "created", str(t, "created_at"));
  field(text, "updated", str(t, "updated_at"));
  if (member(t, "attempt").is_number()) field(text, "attempt", integer_text(t, "attempt"));
  const json& o = member(t, "outcome");
  if (!o.is_object()) return text;
  field(text, "answer", str(o, "answer"));
  const bool waits = str(t, "status") == "needs_attention" || str(o, "status") == "needs_attention";
  field(text, waits ? "waits for" : "reason", str(o, "reason"));
  if (member(o, "steps").is_number()) {
    field(text, "steps",
          fmt("%s (model calls %s, tool calls %s)", integer_text(o, "steps").c_str(),
              integer_text(o, "model_calls").c_str(), integer_text(o, "tool_calls").c_str()));
  }
  if (member(o, "input_tokens").is_number()) {
    field(text, "tokens",
          fmt("%s in, %s out", integer_text(o, "input_tokens").c_str(), integer_text(o, "output_tokens").c_str()));
  }
  if (member(o, "cost_usd").is_number()) field(text, "cost", cost_text(o));
  if (const json& m = member(o, "models"); m.is_array() && !m.empty()) {
    std::string models;
    for (const json& name : m)
      models += (models.empty() ? "" : ", ") + (name.is_string() ? name.get<std::string>() : name.dump());
    if (member(o, "degraded").is_boolean() && member(o, "degraded").get<bool>()) models += " (degraded)";
    field(text, "models", models);
  }
  if (member(o, "retries").is_number()) {
    field(text, "recovery",
          fmt("retries %s, fallbacks %s, restarts %s", integer_text(o, "retries").c_str(),
              integer_text(o, "fallbacks").c_str(), integer_text(o, "restarts").c_str()));
  }
  if (const json& e = member(o, "tool_errors"); e.is_object() && !e.empty()) {
    std::string errors;
    for (auto it = e.begin(); it != e.end(); ++it)
      errors += (errors.empty() ? "" : ", ") + it.key() + " " + it.value().dump();
    field(text, "tool errors", errors);
  }
  if (std::optional<double> w = number(o, "wall_time_s")) field(text, "wall time", fmt("%.3f s", *w));
  return text;
}

// One event on one line: "step 2 tool_result ledger_charge ok".
std::string render_event(const net::SseEvent& ev) {
  const json data = json::parse(ev.data, nullptr, false);
  std::string line;
  if (member(data, "step").is_number()) line = "step " + integer_text(data, "step") + " ";
  line += ev.type;
  for (const char* key : {"tool", "detail"}) {
    const std::string v = str(data, key);
    if (!v.empty()) line += " " + one_line(v);
  }
  if (data.is_discarded()) line += " " + one_line(ev.data);
  return line + "\n";
}

std::string event_json_line(const net::SseEvent& ev) {
  json data = json::parse(ev.data, nullptr, false);
  json line = {{"id", ev.id}, {"event", ev.type}, {"data", data.is_discarded() ? json(ev.data) : data}};
  return line.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n"; }

// ---- HTTP ------------------------------------------------------------------------------------

// Percent-encodes all but RFC 3986's unreserved characters (ids, cursors, query values).
std::string pct(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) != 0 || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

bool loopback_url(std::string_view url) {
  const std::size_t scheme = url.find("://");
  std::string_view host = scheme == std::string_view::npos ? url : url.substr(scheme + 3);
  if (std::size_t at = host.find_first_of("/?#"); at != std::string_view::npos) host = host.substr(0, at);
  if (std::size_t at = host.rfind('@'); at != std::string_view::npos) host = host.substr(at + 1);
  if (std::size_t colon = host.rfind(':'); colon != std::string_view::npos && !host.ends_with(']')) {
    host = host.substr(0, colon);  // the port
  }
  return host.starts_with("127.") || host == "localhost" || host == "[::1]";
}

// The service, as this command talks to it.
struct Service {
  net::HttpClient& http;
  const TasksCmdOptions& o;
  const Reporter& r;
  std::string base;  // the URL without a trailing '/'

  std::string task_path(const std::string& suffix = "") const { return "/v1/tasks/" + pct(o.task_id) + suffix; }

  net::HttpRequest request(std::string method, const std::string& path_query, std::string body = "") const {
    net::HttpRequest req;
    req.method = std::move(method);
    req.url = base + path_query;
    req.headers.add("Accept", "application/json");
    if (!o.token.empty()) req.headers.add("Authorization", "Bearer " + o.token);
    if (!body.empty()) req.headers.add("Content-Type", "application/json");
    req.body = std::move(body);
    req.timeouts = net::HttpTimeouts{.connect = 5s, .first_byte = 30s, .idle = 30s, .total = 30s};
    return req;
  }

  // Exit 3: the request did not get an answer.
  int unreachable(const Error& e) const {
    const bool timeout = e.kind() == ErrorKind::kTimeout || e.kind() == ErrorKind::kDeadlineExceeded;
    return r.fail(kTasksUnreachable,
                  std::string(timeout ? "no answer from the service at " : "cannot reach the service at ") +
                      net::redact_url(base) + " (" + e.message() +
                      "); is it running? Start it with 'nines serve -c FILE', or point --url (or NINES_URL) at it");
  }

  // Exit 1 or 4: the service answered with an error status.
  int answered_error(const net::HttpResponse& resp, const std::string& what) const {
    const json body = json::parse(resp.body, nullptr, false);
    const json& error = member(body, "error");
    std::string message = str(error, "message");
    if (message.empty()) {
      if (resp.status == 404) {
        message = what + " not found";
      } else {
        message = "the service answered " + std::to_string(resp.status);
        if (!resp.body.empty()) message += ": " + one_line(resp.body.substr(0, 200));
      }
    }
    message += " (" + std::to_string(resp.status) + ")";
    if (resp.status == 401) message += "; give a token with --token or NINES_TOKEN";
    if (resp.status == 403) message += "; this needs an operator token";
    return r.fail(resp.status == 404 ? kTasksNotFound : kTasksServiceError, message);
  }
};

// Sends one request and hands over a 2xx answer parsed as JSON. Otherwise the exit status.
struct JsonAnswer {
  int status = 0;
  json body;
};

Task<Result<JsonAnswer>> exchange(Context& ctx, const Service& s, net::HttpRequest req, const std::string& what,
                                  int& rc) {
  Result<net::HttpResponse> resp = co_await s.http.request(ctx, std::move(req));
  if (!resp.ok()) {
    rc = s.unreachable(resp.error());
    co_return resp.error();
  }
  if (resp->status < 200 || resp->status > 299) {
    rc = s.answered_error(*resp, what);
    co_return Error(ErrorKind::kPermanent, "error status");
  }
  JsonAnswer a{.status = resp->status, .body = json::parse(resp->body, nullptr, false)};
  if (a.body.is_discarded()) {
    rc = s.r.fail(kTasksServiceError, "the service's answer (" + std::to_string(resp->status) +
                                          ") is not JSON: " + one_line(resp->body.substr(0, 200)));
    co_return Error(ErrorKind::kPermanent, "not JSON");
  }
  rc = kTasksOk;
  co_return a;
}

std::string task_what(const TasksCmdOptions& o) { return "task '" + o.task_id + "'"; }

Task<int> http_list(Context& ctx, const Service& s) {
  const TasksCmdOptions& o = s.o;
  std::vector<json> tasks;
  std::string cursor = o.cursor;
  std::set<std::string> seen_cursors;
  const std::uint32_t limit = o.limit != 0 ? o.limit : (o.all ? kAllPageSize : 0);
  for (std::uint32_t page = 0; page < kMaxPages; ++page) {
    std::string query;
    auto add = [&query](const char* key, const std::string& value) {
      if (!value.empty()) query += std::string(query.empty() ? "?" : "&") + key + "=" + pct(value);
    };
    add("status", o.status);
    add("agent", o.agent);
    add("limit", limit != 0 ? std::to_string(limit) : "");
    add("cursor", cursor);
    int rc = kTasksOk;
    net::HttpRequest req = s.request("GET", "/v1/tasks" + query);  // named: g++ 12 and temporaries in co_await
    Result<JsonAnswer> a = co_await exchange(ctx, s, std::move(req), "the task list", rc);
    if (!a.ok()) co_return rc;
    const json& list = member(a->body, "tasks");
    if (!list.is_array()) co_return s.r.fail(kTasksServiceError, "the service's answer has no \"tasks\" list");
    if (!o.all) {
      if (o.json) {
        s.r.out(dump(a->body));
        co_return kTasksOk;
      }
      s.r.out(render_table(std::vector<json>(list.begin(), list.end())));
      const std::string next = str(a->body, "next_cursor");
      if (!next.empty()) s.r.note("more tasks: --all, or --cursor " + next);
      co_return kTasksOk;
    }
    tasks.insert(tasks.end(), list.begin(), list.end());
    cursor = str(a->body, "next_cursor");
    if (cursor.empty()) break;
    if (!seen_cursors.insert(cursor).second) {
      co_return s.r.fail(kTasksServiceError, "the service gave the cursor '" + cursor + "' twice; stopping");
    }
  }
  if (o.json) {
    s.r.out(dump(json{{"tasks", tasks}}));
  } else {
    s.r.out(render_table(tasks));
  }
  co_return kTasksOk;
}

// show, cancel, approve, deny, resolve, fork: one request answered with a task.
Task<int> http_task_call(Context& ctx, const Service& s) {
  const TasksCmdOptions& o = s.o;
  const std::string& c = o.command;
  net::HttpRequest req;
  if (c == "show") {
    req = s.request("GET", s.task_path());
  } else if (c == "cancel") {
    req = s.request("POST", s.task_path("/cancel"), "{}");
  } else if (c == "approve") {
    req = s.request("POST", s.task_path("/approve"), dump(json{{"call_id", o.call_id}}));
  } else if (c == "deny") {
    json body = {{"call_id", o.call_id}};
    if (!o.reason.empty()) body["reason"] = o.reason;
    req = s.request("POST", s.task_path("/deny"), dump(body));
  } else if (c == "resolve") {
    json body = {{"effect_id", o.effect_id}, {"applied", o.applied.value_or(false)}};
    if (!o.outcome.empty()) body["outcome"] = o.outcome;
    req = s.request("POST", s.task_path("/resolve"), dump(body));
  } else {  // fork
    json body = json::object();
    if (!o.new_id.empty()) body["id"] = o.new_id;
    if (o.at_turn) body["at_turn"] = *o.at_turn;
    if (o.input) body["input"] = *o.input;
    req = s.request("POST", s.task_path("/fork"), dump(body));
  }
  int rc = kTasksOk;
  const std::string what = task_what(o);
  Result<JsonAnswer> a = co_await exchange(ctx, s, std::move(req), what, rc);
  if (!a.ok()) co_return rc;
  if (o.json) {
    s.r.out(dump(a->body));
    co_return kTasksOk;
  }
  const json& t = a->body;
  const std::string status = str(t, "status", "-");
  if (c == "show") {
    s.r.out(render_task(t));
    if (status == "needs_attention") {
      s.r.out("\nAn operator decides: nines tasks resolve " + o.task_id +
              " EFFECT_ID --applied [--outcome TEXT] | --not-applied (the effect is named above)\n");
    }
  } else if (c == "cancel") {
    s.r.out(a->status == 202 ? "task " + o.task_id + ": cancel requested (status " + status + ")\n"
                             : "task " + o.task_id + " has ended already (" + status + "): nothing to cancel\n");
  } else if (c == "approve" || c == "deny") {
    s.r.out("task " + o.task_id + ": call " + o.call_id + (c == "approve" ? " approved" : " denied") + " (status " +
            status + ")\n");
  } else if (c == "resolve") {
    s.r.out("task " + o.task_id + ": effect " + o.effect_id +
            (o.applied.value_or(false) ? " recorded as applied" : " recorded as not applied (it will run again)") +
            "; the task runs again (status " + status + ")\n");
  } else {
    s.r.out("task " + str(t, "id", "-") + ": forked from " + o.task_id + " at turn " +
            std::to_string(o.at_turn.value_or(0)) + " (status " + status + ")\n");
  }
  co_return kTasksOk;
}

// events: the stream, printed as it comes; with --follow opened again after a break.
Task<int> http_events(Context& ctx, const Service& s) {
  const TasksCmdOptions& o = s.o;
  net::SseParser parser;
  std::string last_id = o.last_event_id;
  std::uint32_t reconnects = 0;
  bool connected_once = false;
  for (;;) {
    net::HttpRequest req = s.request("GET", s.task_path("/events"));
    req.headers.set("Accept", "text/event-stream");
    if (!last_id.empty()) req.headers.add("Last-Event-ID", last_id);
    const Duration quiet = std::chrono::milliseconds(std::max<std::uint32_t>(o.quiet_ms, 1));
    // Followed: no total timeout; the service sends a keep-alive every 15 s, so 60 s of
    // silence is a dead connection. Not followed: silence means every held event is in.
    req.timeouts = o.follow ? net::HttpTimeouts{.connect = 5s, .first_byte = 30s, .idle = 60s, .total = kInfinite}
                            : net::HttpTimeouts{.connect = 5s, .first_byte = 30s, .idle = quiet, .total = 30s};
    std::string trouble;  // why a followed stream is opened again
    Result<net::HttpStream> stream = co_await s.http.stream(ctx, std::move(req));
    if (!stream.ok()) {
      if (!o.follow || !connected_once) co_return s.unreachable(stream.error());
      trouble = stream.error().message();
    } else if (stream->status() != 200) {
      // The error body of a non-200 stream: read it whole (bounded by the client).
      net::HttpResponse resp{.status = stream->status(), .headers = stream->headers(), .body = ""};
      for (;;) {
        Result<std::optional<std::string>> piece = co_await stream->next(ctx);
        if (!piece.ok() || !piece->has_value()) break;
        resp.body += **piece;
      }
      co_return s.answered_error(resp, task_what(o));
    } else {
      connected_once = true;
      for (;;) {
        Result<std::optional<std::string>> piece = co_await stream->next(ctx);
        if (!piece.ok()) {
          if (!o.follow && piece.error().kind() == ErrorKind::kTimeout) {
            if (!o.json) s.r.note("(no more events held for now; --follow waits for new ones)");
            co_return kTasksOk;
          }
          if (!o.follow) {
            co_return s.r.fail(kTasksUnreachable, "the event stream from " + net::redact_url(s.base) +
                                                      " broke: " + piece.error().message() +
                                                      " (--follow opens it again after a break)");
          }
          trouble = piece.error().message();
          break;
        }
        if (!piece->has_value()) {
          parser.finish();
          if (!o.follow) co_return kTasksOk;
          trouble = "the stream ended before task_finished";
          break;
        }
        std::vector<net::SseEvent> events;
        if (Status st = parser.feed(**piece, events); !st.ok()) {
          co_return s.r.fail(kTasksServiceError, "the event stream: " + st.error().message());
        }
        for (const net::SseEvent& ev : events) {
          s.r.out(o.json ? event_json_line(ev) : render_event(ev));
          reconnects = 0;
          if (ev.type == "task_finished") co_return kTasksOk;
        }
        if (!parser.last_event_id().empty()) last_id = parser.last_event_id();
      }
    }
    if (++reconnects > o.max_reconnects) {
      co_return s.r.fail(kTasksUnreachable, "the event stream from " + net::redact_url(s.base) + " broke (" + trouble +
                                                "), " + std::to_string(o.max_reconnects) +
                                                " reconnects failed; giving up");
    }
    s.r.note("(" + trouble + "; reconnecting" + (last_id.empty() ? "" : " after event " + last_id) + ")");
    (void)co_await ctx.sleep(1s);
  }
}

Task<> run_http_process(Context& ctx, net::HttpClient& http, const TasksCmdOptions& o, const Reporter& r, int& rc) {
  std::string base = o.url;
  while (base.ends_with('/')) base.pop_back();
  Service s{.http = http, .o = o, .r = r, .base = base};
  if (o.command == "list") {
    rc = co_await http_list(ctx, s);
  } else if (o.command == "events") {
    rc = co_await http_events(ctx, s);
  } else {
    rc = co_await http_task_call(ctx, s);
  }
}

int run_http(const TasksCmdOptions& o, const Reporter& r) {
  if (!o.url.starts_with("http://") && !o.url.starts_with("https://")) {
    return r.fail(kTasksUsageError, "--url: expected an http:// or https:// URL, got '" + net::redact_url(o.url) + "'");
  }
  auto env = make_real_environment({.workers = 1, .seed = 1, .log_level = LogLevel::kError});
  auto rt = Runtime::create(*env, {.workers = 1});
  if (!rt.ok()) return r.fail(kTasksServiceError, rt.error().to_string());
  net::HttpClientOptions options;
  if (loopback_url(o.url)) options.proxy = "";  // a proxy from the environment is no way to loopback
  auto http = net::HttpClient::create(*env, std::move(options));
  if (!http.ok()) return r.fail(kTasksServiceError, http.error().to_string());
  int rc = kTasksServiceError;
  net::HttpClient& client = **http;
  auto w = (*rt)->spawn_watched([&](Context& ctx) { return run_http_process(ctx, client, o, r, rc); });
  if (!w.ok()) return r.fail(kTasksServiceError, w.error().to_string());
  ExitReason why = w->exit->wait();
  if (!why.is_normal()) rc = r.fail(kTasksServiceError, "the request ended abnormally: " + why.to_string());
  http->reset();  // before the environment
  return rc;
}

// ---- the store, directly ---------------------------------------------------------------------

constexpr std::string_view kAgentKindPrefix = "agent:";

std::string rfc3339(TimePoint t) {
  const std::int64_t ns = t.time_since_epoch().count();
  std::int64_t secs = ns / 1'000'000'000;
  std::int64_t ms = (ns % 1'000'000'000) / 1'000'000;
  if (ms < 0) {
    ms += 1000;
    secs -= 1;
  }
  const std::time_t tt = static_cast<std::time_t>(secs);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt("%s.%03lldZ", buf, static_cast<long long>(ms));
}

json outcome_json(const agent::TaskOutcome& o) {
  return {{"status", std::string(agent::to_string(o.status))},
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
          {"tool_errors", o.tool_errors},
          {"wall_time_s", to_seconds(o.wall_time)}};
}

// The record as the API's task object. The task's status: the workflow's, except completed,
// which is the recorded outcome's. Outcomes of failed, cancelled and needs_attention
// workflows hold only the status and the reason (the store has no counters for them).
json task_json(const WorkflowRecord& w) {
  json t = {{"id", w.id},
            {"agent", w.kind.substr(kAgentKindPrefix.size())},
            {"status", std::string(to_string(w.status))},
            {"input", w.input},
            {"created_at", rfc3339(w.created_at)},
            {"updated_at", rfc3339(w.updated_at)},
            {"attempt", w.attempt}};
  switch (w.status) {
    case WorkflowStatus::kRunning: break;
    case WorkflowStatus::kCompleted: {
      Result<agent::TaskOutcome> o = agent::decode_outcome(w.result);
      if (o.ok()) {
        t["status"] = std::string(agent::to_string(o->status));
        t["outcome"] = outcome_json(*o);
      } else {
        t["status"] = "failed";
        t["outcome"] = {{"status", "failed"},
                        {"reason", "the recorded outcome cannot be read: " + o.error().message()}};
      }
      break;
    }
    case WorkflowStatus::kNeedsAttention: t["outcome"] = {{"status", "needs_attention"}, {"reason", w.result}}; break;
    case WorkflowStatus::kFailed:
    case WorkflowStatus::kCancelled: {
      std::optional<Error> e = decode_error(w.result);
      t["outcome"] = {{"status", std::string(to_string(w.status))}, {"reason", e ? e->message() : w.result}};
      break;
    }
  }
  return t;
}

bool is_agent_task(const WorkflowRecord& w) { return w.kind.starts_with(kAgentKindPrefix); }

// One status's workflows in id order, read a page at a time.
class StatusPager {
 public:
  StatusPager(Store& store, WorkflowStatus status) : store_(store), status_(status) {}
  // The next record, nullopt at the end; the store's error as it is.
  Result<std::optional<WorkflowRecord>> peek() {
    if (pos_ == page_.size() && !done_) {
      Result<std::vector<WorkflowRecord>> page = store_.list_workflows(status_, after_, kPage);
      if (!page.ok()) return std::move(page).error();
      page_ = std::move(*page);
      pos_ = 0;
      done_ = page_.size() < kPage;
      if (!page_.empty()) after_ = page_.back().id;
    }
    if (pos_ == page_.size()) return std::optional<WorkflowRecord>();
    return std::optional<WorkflowRecord>(page_[pos_]);
  }
  void pop() { ++pos_; }

 private:
  static constexpr std::size_t kPage = 200;
  Store& store_;
  WorkflowStatus status_;
  std::string after_;
  std::vector<WorkflowRecord> page_;
  std::size_t pos_ = 0;
  bool done_ = false;
};

int store_error(const Reporter& r, const Error& e, const std::string& what) {
  if (e.kind() == ErrorKind::kNotFound) return r.fail(kTasksNotFound, what + " not found (" + e.message() + ")");
  if (e.kind() == ErrorKind::kTransient) return r.fail(kTasksUnreachable, "the store: " + e.message());
  return r.fail(kTasksServiceError, "the store: " + e.message());
}

// The same order as the service: running, needs_attention, then every ended task, by id.
int store_list(Store& store, const TasksCmdOptions& o, const Reporter& r) {
  const std::set<std::string> ended = {"succeeded", "failed", "budget_exceeded", "loop_detected", "cancelled"};
  auto wanted = [&](const std::string& status) {
    if (o.status.empty()) return true;
    if (o.status == "finished") return ended.contains(status);
    return status == o.status;
  };
  std::vector<std::vector<WorkflowStatus>> groups;
  if (o.status.empty() || o.status == "running") groups.push_back({WorkflowStatus::kRunning});
  if (o.status.empty() || o.status == "needs_attention") groups.push_back({WorkflowStatus::kNeedsAttention});
  if (o.status != "running" && o.status != "needs_attention") {
    std::vector<WorkflowStatus> g = {WorkflowStatus::kCompleted};
    if (o.status.empty() || o.status == "finished" || o.status == "failed") g.push_back(WorkflowStatus::kFailed);
    if (o.status.empty() || o.status == "finished" || o.status == "cancelled") g.push_back(WorkflowStatus::kCancelled);
    groups.push_back(g);
  }
  const std::size_t limit = o.all ? SIZE_MAX : (o.limit != 0 ? o.limit : 50);
  std::vector<json> tasks;
  bool more = false;
  for (const auto& group : groups) {
    std::vector<StatusPager> pagers;
    for (WorkflowStatus st : group) pagers.emplace_back(store, st);
    for (;;) {
      // The smallest id among the group's statuses next.
      StatusPager* next = nullptr;
      std::optional<WorkflowRecord> rec;
      for (StatusPager& p : pagers) {
        Result<std::optional<WorkflowRecord>> head = p.peek();
        if (!head.ok()) return store_error(r, head.error(), "the task list");
        if (*head && (!rec || (*head)->id < rec->id)) {
          rec = std::move(*head);
          next = &p;
        }
      }
      if (next == nullptr) break;
      next->pop();
      if (!is_agent_task(*rec)) continue;
      if (!o.agent.empty() && rec->kind.substr(kAgentKindPrefix.size()) != o.agent) continue;
      json t = task_json(*rec);
      if (!wanted(str(t, "status"))) continue;
      if (tasks.size() == limit) {
        more = true;
        break;
      }
      tasks.push_back(std::move(t));
    }
    if (more) break;
  }
  if (o.json) {
    r.out(dump(json{{"tasks", tasks}}));
  } else {
    r.out(render_table(tasks));
  }
  if (more) r.note("more tasks: --all, or a larger --limit");
  return kTasksOk;
}

int store_show(Store& store, const TasksCmdOptions& o, const Reporter& r) {
  Result<WorkflowRecord> w = store.get_workflow(o.task_id);
  if (!w.ok()) {
    if (w.error().kind() == ErrorKind::kNotFound) return r.fail(kTasksNotFound, task_what(o) + " not found (404)");
    return store_error(r, w.error(), task_what(o));
  }
  if (!is_agent_task(*w)) {
    return r.fail(kTasksNotFound,
                  task_what(o) + " not found: it is a workflow of kind '" + w->kind + "', not an agent task");
  }
  Result<std::vector<EffectRecord>> effects = store.load_effects(o.task_id);
  if (!effects.ok()) return store_error(r, effects.error(), task_what(o));
  json t = task_json(*w);
  std::vector<const EffectRecord*> waiting;
  for (const EffectRecord& e : *effects) {
    if (e.state == EffectState::kNeedsAttention) waiting.push_back(&e);
  }
  if (o.json) {
    json list = json::array();
    for (const EffectRecord* e : waiting) {
      list.push_back({{"effect_id", e->effect_id},
                      {"nature", std::string(to_string(e->nature))},
                      {"idempotency_key", e->idempotency_key},
                      {"arguments", e->arguments},
                      {"intent_at", rfc3339(e->intent_at)}});
    }
    t["effects_waiting"] = list;  // the store's view only: not a field of the API's task object
    r.out(dump(t));
    return kTasksOk;
  }
  std::string text = render_task(t);
  for (const EffectRecord* e : waiting) {
    text += fmt("\neffect      %s (%s, intent recorded %s)\n", e->effect_id.c_str(),
                std::string(to_string(e->nature)).c_str(), rfc3339(e->intent_at).c_str());
    text += fmt("  key       %s\n  arguments %s\n", e->idempotency_key.c_str(), one_line(e->arguments).c_str());
    text += "  decide:   nines tasks resolve " + o.task_id + " " + e->effect_id + " --store " + o.store +
            " --applied [--outcome TEXT] | --not-applied\n";
  }
  r.out(text);
  return kTasksOk;
}

int store_resolve(Store& store, const TasksCmdOptions& o, const Reporter& r) {
  auto env = make_real_environment({.workers = 1, .seed = 1, .log_level = LogLevel::kError});
  auto engine = WorkflowEngine::create(*env, store, {.commit = WorkflowEngineOptions::Commit::kInline});
  if (!engine.ok()) return r.fail(kTasksServiceError, engine.error().to_string());
  Result<WorkflowRecord> before = store.get_workflow(o.task_id);
  if (!before.ok()) {
    if (before.error().kind() == ErrorKind::kNotFound) return r.fail(kTasksNotFound, task_what(o) + " not found (404)");
    return store_error(r, before.error(), task_what(o));
  }
  const EffectResolution resolution{.applied = o.applied.value_or(false), .outcome = o.outcome};
  if (Status s = (*engine)->resolve_effect(o.task_id, o.effect_id, resolution); !s.ok()) {
    if (s.error().kind() == ErrorKind::kNotFound) {
      return r.fail(kTasksNotFound,
                    "effect '" + o.effect_id + "' of " + task_what(o) + " not found (" + s.error().message() + ")");
    }
    return store_error(r, s.error(), task_what(o));
  }
  Result<WorkflowRecord> after = store.get_workflow(o.task_id);
  if (o.json) {
    if (!after.ok()) return store_error(r, after.error(), task_what(o));
    r.out(dump(task_json(*after)));
    return kTasksOk;
  }
  std::string text = "task " + o.task_id + ": effect " + o.effect_id +
                     (resolution.applied ? " recorded as applied (its outcome goes to the model)"
                                         : " recorded as not applied (it runs again, with its idempotency key)") +
                     "\n";
  if (after.ok() && after->status == WorkflowStatus::kNeedsAttention) {
    text += "the task still needs attention: other effects wait for a decision ('nines tasks show " + o.task_id +
            " --store ...' lists them)\n";
  } else {
    text +=
        "the task is running again in the store, but nothing runs it from here: start the service "
        "('nines serve -c FILE') on this store to resume it\n";
  }
  r.out(text);
  return kTasksOk;
}

int run_store(const TasksCmdOptions& o, const Reporter& r) {
  if (o.command != "list" && o.command != "show" && o.command != "resolve") {
    return r.fail(kTasksUsageError, "needs a running service (--url); with --store only list, show and resolve work");
  }
  const bool postgres = o.store.starts_with("postgres://") || o.store.starts_with("postgresql://");
  const bool sqlite = o.store.starts_with("sqlite:") || o.store.ends_with(".db");
  if (!postgres && !sqlite) {
    return r.fail(kTasksUsageError, "--store: expected sqlite:PATH, a PATH ending in .db, or postgres://..., got '" +
                                        net::redact_url(o.store) + "'");
  }
  const std::string path = o.store.starts_with("sqlite:") ? o.store.substr(7) : o.store;
  std::error_code ec;
  // Opening creates a missing file: a mistyped path would look like an empty store.
  if (sqlite && (path.empty() || !std::filesystem::exists(path, ec))) {
    return r.fail(kTasksUnreachable, "--store: no such file '" + path + "'");
  }
  Result<std::unique_ptr<Store>> store = postgres ? open_postgres_store(o.store) : open_sqlite_store(path);
  if (!store.ok()) {
    return r.fail(kTasksUnreachable,
                  "--store: cannot open " + net::redact_url(o.store) + ": " + store.error().message());
  }
  if (o.command == "list") return store_list(**store, o, r);
  if (o.command == "show") return store_show(**store, o, r);
  return store_resolve(**store, o, r);
}

// What CLI11 checks too, checked again for callers that build options by hand.
std::string usage_problem(const TasksCmdOptions& o) {
  static const std::set<std::string> kCommands = {"list",    "show", "events",  "cancel",
                                                  "approve", "deny", "resolve", "fork"};
  if (!kCommands.contains(o.command)) return "unknown command '" + o.command + "'";
  if (o.command != "list" && o.task_id.empty()) return "ID is required";
  if ((o.command == "approve" || o.command == "deny") && o.call_id.empty()) return "CALL_ID is required";
  if (o.command == "resolve" && o.effect_id.empty()) return "EFFECT_ID is required";
  if (o.command == "resolve" && !o.applied) return "one of --applied and --not-applied is required";
  if (o.command == "resolve" && !*o.applied && !o.outcome.empty()) return "--outcome goes with --applied only";
  if (o.limit > 500) return "--limit: expected a whole number from 1 to 500";
  if (!o.store.empty() && !o.cursor.empty())
    return "--cursor: the service's cursors do not apply to --store (use --all)";
  return "";
}

}  // namespace

TasksIo TasksIo::standard() {
  return TasksIo{.out =
                     [](std::string_view s) {
                       std::fwrite(s.data(), 1, s.size(), stdout);
                       std::fflush(stdout);
                     },
                 .err =
                     [](std::string_view s) {
                       std::fwrite(s.data(), 1, s.size(), stderr);
                       std::fflush(stderr);
                     }};
}

TasksIo TasksIo::to_strings(std::string& out, std::string& err) {
  return TasksIo{.out = [&out](std::string_view s) { out += s; }, .err = [&err](std::string_view s) { err += s; }};
}

int run_tasks(const TasksCmdOptions& o, const TasksIo& io) {
  const Reporter r(io, o.command);
  if (std::string problem = usage_problem(o); !problem.empty()) return r.fail(kTasksUsageError, problem);
  return o.store.empty() ? run_http(o, r) : run_store(o, r);
}

}  // namespace nines::cli
