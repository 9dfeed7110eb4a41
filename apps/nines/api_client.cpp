// The shared side of the commands that talk to a running service: api_client.hpp.
#include "api_client.hpp"

#include <algorithm>
#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <utility>
#include <vector>

namespace nines::cli {

// Declared in tasks_cmd.hpp; here because every command that talks to the service uses them.
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

namespace api {

using namespace std::chrono_literals;

std::string fmt(const char* f, ...) {
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

// ---- JSON fields, read without throwing ------------------------------------------------------

std::string str(const json& j, const char* key, std::string fallback) {
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

namespace {

void field(std::string& text, const char* name, const std::string& value) {
  if (value.empty()) return;
  text += fmt("%-12s%s\n", name, one_line(value).c_str());
}

}  // namespace

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

// ---- the service -----------------------------------------------------------------------------

std::string task_path(const std::string& id, const std::string& suffix) { return "/v1/tasks/" + pct(id) + suffix; }

net::HttpRequest Api::request(std::string method, const std::string& path_query, std::string body) const {
  net::HttpRequest req;
  req.method = std::move(method);
  req.url = base + path_query;
  req.headers.add("Accept", "application/json");
  if (!token.empty()) req.headers.add("Authorization", "Bearer " + token);
  if (!body.empty()) req.headers.add("Content-Type", "application/json");
  req.body = std::move(body);
  req.timeouts = net::HttpTimeouts{.connect = 5s, .first_byte = 30s, .idle = 30s, .total = 30s};
  return req;
}

int Api::unreachable(const Error& e) const {
  const bool timeout = e.kind() == ErrorKind::kTimeout || e.kind() == ErrorKind::kDeadlineExceeded;
  return r.fail(kTasksUnreachable,
                std::string(timeout ? "no answer from the service at " : "cannot reach the service at ") +
                    net::redact_url(base) + " (" + e.message() +
                    "); is it running? Start it with 'nines serve -c FILE', or point --url (or NINES_URL) at it");
}

int Api::answered_error(const net::HttpResponse& resp, const std::string& what) const {
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

Task<Result<JsonAnswer>> exchange(Context& ctx, const Api& api, net::HttpRequest req, const std::string& what,
                                  int& rc) {
  Result<net::HttpResponse> resp = co_await api.http.request(ctx, std::move(req));
  if (!resp.ok()) {
    rc = api.unreachable(resp.error());
    co_return resp.error();
  }
  if (resp->status < 200 || resp->status > 299) {
    rc = api.answered_error(*resp, what);
    co_return Error(ErrorKind::kPermanent, "error status");
  }
  JsonAnswer a{.status = resp->status, .body = json::parse(resp->body, nullptr, false)};
  if (a.body.is_discarded()) {
    rc = api.r.fail(kTasksServiceError, "the service's answer (" + std::to_string(resp->status) +
                                            ") is not JSON: " + one_line(resp->body.substr(0, 200)));
    co_return Error(ErrorKind::kPermanent, "not JSON");
  }
  rc = kTasksOk;
  co_return a;
}

Task<int> stream_events(Context& ctx, const Api& api, const std::string& task_id, StreamOptions o,
                        std::function<void(const net::SseEvent&)> on_event, std::string* last_id_out) {
  net::SseParser parser;
  std::string last_id = o.last_event_id;
  std::uint32_t reconnects = 0;
  bool connected_once = false;
  const std::string what = "task '" + task_id + "'";
  for (;;) {
    net::HttpRequest req = api.request("GET", task_path(task_id, "/events"));
    req.headers.set("Accept", "text/event-stream");
    if (!last_id.empty()) req.headers.add("Last-Event-ID", last_id);
    const Duration quiet = std::chrono::milliseconds(std::max<std::uint32_t>(o.quiet_ms, 1));
    // Followed: no total timeout; the service sends a keep-alive every 15 s, so 60 s of
    // silence is a dead connection. Not followed: silence means every held event is in.
    req.timeouts = o.follow ? net::HttpTimeouts{.connect = 5s, .first_byte = 30s, .idle = 60s, .total = kInfinite}
                            : net::HttpTimeouts{.connect = 5s, .first_byte = 30s, .idle = quiet, .total = 30s};
    std::string trouble;  // why a followed stream is opened again
    Result<net::HttpStream> stream = co_await api.http.stream(ctx, std::move(req));
    if (!stream.ok()) {
      if (!o.follow || !connected_once) co_return api.unreachable(stream.error());
      trouble = stream.error().message();
    } else if (stream->status() != 200) {
      // The error body of a non-200 stream: read it whole (bounded by the client).
      net::HttpResponse resp{.status = stream->status(), .headers = stream->headers(), .body = ""};
      for (;;) {
        Result<std::optional<std::string>> piece = co_await stream->next(ctx);
        if (!piece.ok() || !piece->has_value()) break;
        resp.body += **piece;
      }
      co_return api.answered_error(resp, what);
    } else {
      connected_once = true;
      for (;;) {
        Result<std::optional<std::string>> piece = co_await stream->next(ctx);
        if (!piece.ok()) {
          if (!o.follow && piece.error().kind() == ErrorKind::kTimeout) {
            if (o.note_when_caught_up) api.r.note("(no more events held for now; --follow waits for new ones)");
            co_return kTasksOk;
          }
          if (!o.follow) {
            co_return api.r.fail(kTasksUnreachable, "the event stream from " + net::redact_url(api.base) +
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
          co_return api.r.fail(kTasksServiceError, "the event stream: " + st.error().message());
        }
        for (const net::SseEvent& ev : events) {
          if (!ev.id.empty()) last_id = ev.id;
          if (last_id_out != nullptr) *last_id_out = last_id;
          on_event(ev);
          reconnects = 0;
          if (ev.type == "task_finished") co_return kTasksOk;
        }
        if (!parser.last_event_id().empty()) last_id = parser.last_event_id();
        if (last_id_out != nullptr) *last_id_out = last_id;
      }
    }
    if (++reconnects > o.max_reconnects) {
      co_return api.r.fail(kTasksUnreachable, "the event stream from " + net::redact_url(api.base) + " broke (" +
                                                  trouble + "), " + std::to_string(o.max_reconnects) +
                                                  " reconnects failed; giving up");
    }
    api.r.note("(" + trouble + "; reconnecting" + (last_id.empty() ? "" : " after event " + last_id) + ")");
    (void)co_await ctx.sleep(1s);
  }
}

}  // namespace api
}  // namespace nines::cli
