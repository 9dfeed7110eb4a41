// What the commands that talk to a running service share (`nines tasks`, `nines run`): reading
// its JSON without exceptions, rendering tasks and events for people, and the HTTP side of its
// API (docs/api.md): requests with the bearer token, answers turned into exit statuses with
// one-line messages, and the event stream, followed across breaks with Last-Event-ID.
//
//   api::Reporter r(io, "nines run");
//   api::Api api{.http = client, .r = r, .base = "http://127.0.0.1:8080", .token = ""};
//   int rc = kTasksOk;
//   Result<api::JsonAnswer> a = co_await api::exchange(ctx, api, api.request("GET", "/v1/tasks/t-1"), "task 't-1'",
//   rc); rc = co_await api::stream_events(ctx, api, "t-1", {.follow = true}, [&](const net::SseEvent& ev) { ... });
//
// Exit statuses are the kTasks* of tasks_cmd.hpp. Messages go through the Reporter, prefixed
// with the command ("nines tasks show: ..."); URLs are printed without user info or query, the
// token never. Internal to apps/nines (not a public header). Thread-safety: none needed; each
// command runs its requests from one process.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/sse.hpp"
#include "nines/runtime/process.hpp"
#include "tasks_cmd.hpp"

namespace nines::cli::api {

using json = nlohmann::json;

// printf into a std::string.
__attribute__((format(printf, 1, 2))) std::string fmt(const char* f, ...);

// ---- JSON fields, read without throwing ------------------------------------------------------

std::string str(const json& j, const char* key, std::string fallback = "");
std::optional<double> number(const json& j, const char* key);
// A whole number as text, a fraction with %g, "-" when missing or not a number.
std::string integer_text(const json& j, const char* key);
// The member, or a null value.
const json& member(const json& j, const char* key);
// Newlines and tabs as spaces.
std::string one_line(std::string text);
std::string dump(const json& j);  // compact, one line, with '\n'

// ---- text for people -------------------------------------------------------------------------

std::string cost_text(const json& outcome);  // "$0.0031" or "-"
// A task object as `nines tasks show` prints it: its fields, then its outcome's.
std::string render_task(const json& task);
// One event on one line: "step 2 tool_result ledger_charge ok".
std::string render_event(const net::SseEvent& ev);
// {"id": ..., "event": ..., "data": {...}} on one line.
std::string event_json_line(const net::SseEvent& ev);

// ---- HTTP ------------------------------------------------------------------------------------

// Percent-encodes all but RFC 3986's unreserved characters (ids, cursors, query values).
std::string pct(std::string_view s);
// 127.*, localhost or [::1]: no proxy from the environment applies.
bool loopback_url(std::string_view url);

// What every message of one command starts with, and where it goes.
class Reporter {
 public:
  Reporter(const TasksIo& io, std::string command) : io_(io), prefix_(std::move(command) + ": ") {}
  void out(const std::string& line) const { io_.out(line); }
  // "<command>: <what>\n" on stderr; returns `code`.
  int fail(int code, const std::string& what) const {
    io_.err(prefix_ + what + "\n");
    return code;
  }
  void note(const std::string& what) const { io_.err(what + "\n"); }

 private:
  const TasksIo& io_;
  std::string prefix_;
};

// The service, as a command talks to it.
struct Api {
  net::HttpClient& http;
  const Reporter& r;
  std::string base;   // the URL without a trailing '/'
  std::string token;  // bearer token; empty: none

  // Accept JSON, the token, a JSON body when there is one; 5 s to connect, 30 s in all.
  net::HttpRequest request(std::string method, const std::string& path_query, std::string body = "") const;
  // Exit 3: the request did not get an answer.
  int unreachable(const Error& e) const;
  // Exit 1 or 4: the service answered with an error status.
  int answered_error(const net::HttpResponse& resp, const std::string& what) const;
};

std::string task_path(const std::string& id, const std::string& suffix = "");

// A 2xx answer parsed as JSON.
struct JsonAnswer {
  int status = 0;
  json body;
};

// Sends one request and hands over a 2xx answer parsed as JSON; otherwise an error, with the
// exit status (reported already) in `rc`.
Task<Result<JsonAnswer>> exchange(Context& ctx, const Api& api, net::HttpRequest req, const std::string& what, int& rc);

struct StreamOptions {
  bool follow = false;        // wait for new events until task_finished, opening the stream again after a break
  std::string last_event_id;  // start after this event
  // Without `follow`: the stream counts as caught up once silent this long (ms).
  std::uint32_t quiet_ms = 1000;
  // With `follow`: reconnects in a row without a new event before giving up (exit 3).
  std::uint32_t max_reconnects = 10;
  // Without `follow`: say on stderr that --follow waits for more, when the stream is caught up.
  bool note_when_caught_up = true;
};

// GET /v1/tasks/{id}/events: calls on_event for each event, in order, and returns kTasksOk after
// task_finished (or, without `follow`, at the end of the stream or once caught up), else the
// exit status of the failure (reported). `last_id` (optional) holds the last event id seen.
Task<int> stream_events(Context& ctx, const Api& api, const std::string& task_id, StreamOptions options,
                        std::function<void(const net::SseEvent&)> on_event, std::string* last_id = nullptr);

}  // namespace nines::cli::api
