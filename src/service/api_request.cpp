// The API's request parsing (api_request.hpp).
#include "api_request.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <set>

namespace nines::service::internal {

namespace {

using json = nlohmann::json;

RequestError bad(std::string message, std::string field = {}) {
  return RequestError{.status = 400, .message = std::move(message), .field = std::move(field)};
}

// The body as a JSON object with only `allowed` fields.
std::optional<RequestError> parse_body(std::string_view body, const std::set<std::string>& allowed, json& out,
                                       bool empty_ok) {
  if (body.empty() && empty_ok) {
    out = json::object();
    return std::nullopt;
  }
  out = json::parse(body.begin(), body.end(), nullptr, false);
  if (out.is_discarded()) return bad("the body is not valid JSON");
  if (!out.is_object()) return bad("the body must be a JSON object");
  for (auto it = out.begin(); it != out.end(); ++it) {
    if (!allowed.contains(it.key())) {
      std::string names;
      for (const std::string& a : allowed) names += (names.empty() ? "" : ", ") + a;
      if (names.empty()) names = "none";
      return bad("unknown field '" + it.key() + "' (fields: " + names + ")", it.key());
    }
  }
  return std::nullopt;
}

std::optional<RequestError> get_string(const json& j, const char* field, std::string& out, bool required) {
  auto it = j.find(field);
  if (it == j.end()) {
    if (required) return bad(std::string("field '") + field + "' is required", field);
    return std::nullopt;
  }
  if (!it->is_string()) return bad(std::string("field '") + field + "' must be a string", field);
  out = it->get<std::string>();
  return std::nullopt;
}

std::optional<RequestError> parse_budget(const json& j, agent::Budget& b) {
  if (!j.is_object()) return bad("field 'budget' must be an object", "budget");
  b = agent::Budget{.max_steps = 0};
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string field = "budget." + it.key();
    const json& v = it.value();
    if (it.key() == "max_steps" || it.key() == "max_model_calls" || it.key() == "max_tokens") {
      if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<std::int64_t>() < 0) ||
          (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))) {
        return bad("field '" + field + "' must be a whole number >= 0", field);
      }
      const std::int64_t n = v.get<std::int64_t>();
      (it.key() == "max_steps" ? b.max_steps : it.key() == "max_model_calls" ? b.max_model_calls : b.max_tokens) = n;
    } else if (it.key() == "max_cost_usd" || it.key() == "max_wall_time_s") {
      if (!v.is_number() || !(v.get<double>() >= 0 && v.get<double>() <= 1e9)) {
        return bad("field '" + field + "' must be a number from 0 to 1e9", field);
      }
      if (it.key() == "max_cost_usd") {
        b.max_cost_usd = v.get<double>();
      } else {
        const double secs = v.get<double>();
        b.max_wall_time =
            secs > 0 ? std::chrono::duration_cast<Duration>(std::chrono::duration<double>(secs)) : kInfinite;
      }
    } else {
      return bad("unknown field '" + field +
                     "' (fields: max_steps, max_model_calls, max_tokens, max_cost_usd, max_wall_time_s)",
                 field);
    }
  }
  return std::nullopt;
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
  auto v = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  for (std::size_t i = 0; i < s.size(); i += 2) {
    const int hi = v(s[i]), lo = v(s[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

__extension__ typedef unsigned __int128 u128;

}  // namespace

std::optional<Route> match_route(std::string_view path) {
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

Scope required_scope(const Route& route, std::string_view method) {
  if (route.name == "/v1/tasks" && method == "POST") return Scope::kOperator;
  return route.scope;
}

Parsed<SubmitRequest> parse_submit(std::string_view body_text, std::optional<std::string_view> idempotency_key) {
  json body;
  if (auto e = parse_body(body_text, {"agent", "input", "id", "budget"}, body, false)) return *e;
  SubmitRequest out;
  if (auto e = get_string(body, "agent", out.agent, true)) return *e;
  if (auto e = get_string(body, "input", out.input, true)) return *e;
  if (auto e = get_string(body, "id", out.id, false)) return *e;
  if (body.contains("id") && !valid_task_id(out.id)) return bad("field 'id': 1 to 128 of [A-Za-z0-9._:-]", "id");
  if (auto it = body.find("budget"); it != body.end()) {
    agent::Budget b;
    if (auto e = parse_budget(*it, b)) return *e;
    out.cap = b;
  }
  if (idempotency_key) {
    const std::string_view key = *idempotency_key;
    const bool printable = std::all_of(key.begin(), key.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
    if (key.empty() || key.size() > 256 || !printable) {
      return bad("header 'Idempotency-Key': 1 to 256 printable ASCII characters", "Idempotency-Key");
    }
    if (!out.id.empty()) return bad("give either an 'id' or an Idempotency-Key header, not both", "id");
    out.idempotency_key = std::string(key);
  }
  return out;
}

Parsed<ListQuery> parse_list_query(std::string_view query) {
  std::map<std::string, std::string> q = parse_query(query);
  for (const auto& [k, v] : q) {
    if (k != "status" && k != "agent" && k != "limit" && k != "cursor") {
      return bad("unknown query parameter '" + k + "' (status, agent, limit, cursor)", k);
    }
  }
  ListQuery out;
  if (auto it = q.find("limit"); it != q.end()) {
    const std::string& l = it->second;
    const bool digits =
        !l.empty() && l.size() <= 4 && std::all_of(l.begin(), l.end(), [](char c) { return c >= '0' && c <= '9'; });
    const std::size_t n = digits ? std::stoul(l) : 0;
    if (n < 1 || n > kMaxListLimit) return bad("query 'limit': a whole number from 1 to 500", "limit");
    out.limit = n;
  }
  if (auto it = q.find("status"); it != q.end()) {
    const std::string& status = it->second;
    std::fill(std::begin(out.use), std::end(out.use), false);
    if (status == "running") {
      out.use[0] = true;
    } else if (status == "needs_attention") {
      out.use[1] = true;
    } else if (status == "finished") {
      out.use[2] = out.use[3] = out.use[4] = true;
    } else if (status == "succeeded" || status == "budget_exceeded" || status == "loop_detected") {
      out.use[2] = true;
      out.want = status;
    } else if (status == "failed") {
      out.use[2] = out.use[3] = true;
      out.want = status;
    } else if (status == "cancelled") {
      out.use[2] = out.use[4] = true;
      out.want = status;
    } else {
      return bad(
          "query 'status': one of running, needs_attention, finished, succeeded, failed, budget_exceeded, "
          "loop_detected, cancelled",
          "status");
    }
  }
  if (auto it = q.find("agent"); it != q.end()) out.agent = it->second;
  if (auto it = q.find("cursor"); it != q.end()) {
    std::optional<std::string> c = hex_decode(it->second);
    if (!c || c->size() < 2 || (*c)[1] != '\n' || (*c)[0] < '0' || (*c)[0] > '4') {
      return bad("query 'cursor': not a cursor this service gave", "cursor");
    }
    out.group = static_cast<std::size_t>((*c)[0] - '0');
    out.after = c->substr(2);
  }
  return out;
}

std::string encode_cursor(std::size_t group, std::string_view after_id) {
  return hex_encode(std::string(1, static_cast<char>('0' + group)) + "\n" + std::string(after_id));
}

Parsed<ActionRequest> parse_action(std::string_view action, std::string_view body_text) {
  json body;
  ActionRequest out;
  if (action == "cancel") {
    if (auto e = parse_body(body_text, {}, body, true)) return *e;
    return out;
  }
  if (action == "approve" || action == "deny") {
    const bool deny = action == "deny";
    if (auto e =
            parse_body(body_text, deny ? std::set<std::string>{"call_id", "reason"} : std::set<std::string>{"call_id"},
                       body, false)) {
      return *e;
    }
    if (auto e = get_string(body, "call_id", out.call_id, true)) return *e;
    if (out.call_id.empty()) return bad("field 'call_id' must not be empty", "call_id");
    if (auto e = get_string(body, "reason", out.reason, false)) return *e;
    return out;
  }
  if (action == "resolve") {
    if (auto e = parse_body(body_text, {"effect_id", "applied", "outcome"}, body, false)) return *e;
    if (auto e = get_string(body, "effect_id", out.effect_id, true)) return *e;
    if (auto e = get_string(body, "outcome", out.outcome, false)) return *e;
    auto applied = body.find("applied");
    if (applied == body.end() || !applied->is_boolean()) {
      return bad("field 'applied' is required: true (the effect happened) or false (it did not)", "applied");
    }
    out.applied = applied->get<bool>();
    return out;
  }
  if (action == "fork") {
    if (auto e = parse_body(body_text, {"id", "at_turn", "input"}, body, true)) return *e;
    if (auto e = get_string(body, "id", out.new_id, false)) return *e;
    if (body.contains("id") && !valid_task_id(out.new_id)) {
      return bad("field 'id': 1 to 128 of [A-Za-z0-9._:-]", "id");
    }
    if (auto it = body.find("at_turn"); it != body.end()) {
      if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<std::int64_t>() < 0) ||
          (it->is_number_unsigned() && it->get<std::uint64_t>() > 1'000'000)) {
        return bad("field 'at_turn' must be a whole number from 0 to 1000000", "at_turn");
      }
      out.fork.at_turn = it->get<std::int64_t>();
    }
    if (body.contains("input")) {
      std::string input;
      if (auto e = get_string(body, "input", input, false)) return *e;
      out.fork.input = std::move(input);
    }
    return out;
  }
  return RequestError{.status = 404, .message = "no action '" + std::string(action) + "'"};
}

std::string last_event_id(std::optional<std::string_view> header, std::string_view query) {
  if (header) return std::string(*header);
  std::map<std::string, std::string> q = parse_query(query);
  auto it = q.find("last_event_id");
  return it == q.end() ? std::string() : it->second;
}

std::string_view bearer_token(std::optional<std::string_view> header) {
  if (!header || header->size() <= 7) return {};
  constexpr std::string_view scheme = "bearer ";
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>((*header)[i])) != scheme[i]) return {};
  }
  return header->substr(7);
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

bool valid_task_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' || c == '-';
  });
}

std::string fnv1a_128_hex(std::string_view text) {
  u128 h = (static_cast<u128>(0x6c62272e07bb0142ULL) << 64) | 0x62b821756295c58dULL;
  const u128 prime = (static_cast<u128>(0x0000000001000000ULL) << 64) | 0x000000000000013BULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= prime;
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(h >> 64),
                static_cast<unsigned long long>(h));
  return buf;
}

std::string key_task_id(std::string_view key) { return "k-" + fnv1a_128_hex(key); }

std::string percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2])));
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

}  // namespace nines::service::internal
