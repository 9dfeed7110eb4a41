// The API's request parsing (docs/api.md): pure functions from a request's path, query, headers
// and body to what it asks for, or to the 4xx answer it gets. No state is read or changed here,
// so every bad request is refused before the service touches anything; the libFuzzer target
// tests/service/fuzz/request_fuzz.cpp runs them on arbitrary input. Not a public header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "nines/agent/agent.hpp"

namespace nines::service::internal {

enum class Scope : std::uint8_t { kNone, kRead, kOperator };

struct Route {
  std::string name;  // the route's template, for metrics and messages: "/v1/tasks/{id}"
  std::vector<std::string> methods;
  Scope scope = Scope::kRead;  // POST /v1/tasks needs operator (see required_scope)
  std::string task_id;         // {id}, percent-decoded
  std::string action;          // events, cancel, approve, deny, resolve, fork
};

// The route of a path, or nullopt (404).
std::optional<Route> match_route(std::string_view path);
// The scope a request needs (the route's, and operator for POST /v1/tasks).
Scope required_scope(const Route& route, std::string_view method);

// A refused request: the status (400, ...), the message (names what is wrong) and the field.
struct RequestError {
  int status = 400;
  std::string message;
  std::string field;
};
template <class T>
using Parsed = std::variant<T, RequestError>;

// POST /v1/tasks.
struct SubmitRequest {
  std::string agent;
  std::string input;
  std::string id;  // empty: none given
  std::optional<agent::Budget> cap;
  std::optional<std::string> idempotency_key;
};
Parsed<SubmitRequest> parse_submit(std::string_view body, std::optional<std::string_view> idempotency_key);

// GET /v1/tasks. The store's status groups, in listing order: running, needs_attention,
// completed, failed, cancelled.
inline constexpr std::size_t kStatusGroups = 5;
inline constexpr std::size_t kMaxListLimit = 500;
struct ListQuery {
  bool use[kStatusGroups] = {true, true, true, true, true};
  std::string want;  // an outcome status the tasks must have, or empty
  std::string agent;
  std::size_t limit = 50;
  std::size_t group = 0;  // where the cursor resumes
  std::string after;      // ... and after which id
};
Parsed<ListQuery> parse_list_query(std::string_view query);
std::string encode_cursor(std::size_t group, std::string_view after_id);

// The POST /v1/tasks/{id}/<action> bodies.
struct ActionRequest {
  std::string call_id;    // approve, deny
  std::string reason;     // deny
  std::string effect_id;  // resolve
  bool applied = false;   // resolve
  std::string outcome;    // resolve
  std::string new_id;     // fork (empty: a new one)
  agent::ForkOptions fork;
};
Parsed<ActionRequest> parse_action(std::string_view action, std::string_view body);

// GET /v1/tasks/{id}/events: the Last-Event-ID header, else the last_event_id query parameter.
std::string last_event_id(std::optional<std::string_view> header, std::string_view query);

// The token of an `Authorization: Bearer <token>` header (the scheme case-insensitively), or
// empty.
std::string_view bearer_token(std::optional<std::string_view> header);
// Equal, in time that depends only on the lengths.
bool constant_time_equal(std::string_view a, std::string_view b);

// Task ids: 1 to 128 of [A-Za-z0-9._:-].
bool valid_task_id(std::string_view id);
// FNV-1a, 128 bits, as 32 hex digits (ids derived from text: not a cryptographic hash).
std::string fnv1a_128_hex(std::string_view text);
// The task id of an Idempotency-Key: "k-" + fnv1a_128_hex(key).
std::string key_task_id(std::string_view key);

// "a=1&b=x%20y" -> {a: 1, b: "x y"} (a repeated key: the last value).
std::map<std::string, std::string> parse_query(std::string_view query);
std::string percent_decode(std::string_view s);

}  // namespace nines::service::internal
