// The simulated model: decisions (SimModel::decide), the OpenAI-compatible wire side
// (parse_openai_chat_request, render_openai, handle_http) and the in-process ChatModel
// (SimChatModel). The config lives in sim_config.cpp. See sim.hpp and docs/sim.md.
#include "nines/llm/sim.hpp"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <numbers>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/xoshiro.hpp"
#include "llm/json_util.hpp"
#include "llm/sse_feed.hpp"
#include "nines/llm/openai.hpp"
#include "nines/net/sse.hpp"

namespace nines::llm {

using internal::Json;
using internal::member;

namespace {

constexpr std::int64_t kCreated = 1735689600;  // 2025-01-01T00:00:00Z: a fixed "created"
constexpr std::string_view kFaultIdPrefix = "call_simfault_";
constexpr std::string_view kToolErrorMark = "[tool error] ";  // what the openai codec prepends

// ---- small helpers --------------------------------------------------------------------------

std::int64_t quarter(std::size_t bytes) { return static_cast<std::int64_t>((bytes + 3) / 4); }

double unit(std::uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

Duration from_ms(double ms) { return Duration(static_cast<std::int64_t>(std::llround(ms * 1e6))); }

// Always two draws, so the positions of later draws do not depend on the distribution.
Duration sample_latency(const SimLatency& l, nines::internal::Xoshiro256& rng) {
  const double u1 = unit(rng.next()), u2 = unit(rng.next());
  double ms = 0;
  switch (l.distribution) {
    case SimLatency::Distribution::kFixed: ms = l.ms; break;
    case SimLatency::Distribution::kUniform: ms = l.min_ms + u1 * (l.max_ms - l.min_ms); break;
    case SimLatency::Distribution::kLogNormal: {
      // Box-Muller; 1 - u1 is in (0, 1], so the log is finite.
      const double z = std::sqrt(-2.0 * std::log(1.0 - u1)) * std::cos(2.0 * std::numbers::pi * u2);
      ms = l.median_ms * std::exp(l.sigma * z);
      ms = std::min(ms, l.max_ms > 0 ? l.max_ms : kMaxLatencyMs);
      break;
    }
  }
  return from_ms(std::clamp(ms, 0.0, kMaxLatencyMs));
}

// FNV-1a over length-prefixed fields, finished with a splitmix round.
class Fingerprint {
 public:
  void u64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) byte(static_cast<unsigned char>(v >> (8 * i)));
  }
  void text(std::string_view s) {
    u64(s.size());
    for (char c : s) byte(static_cast<unsigned char>(c));
  }
  std::uint64_t done() const {
    std::uint64_t x = h_;
    return nines::internal::splitmix64(x);
  }

 private:
  void byte(unsigned char b) {
    h_ ^= b;
    h_ *= 0x100000001b3ULL;
  }
  std::uint64_t h_ = 0xcbf29ce484222325ULL;
};

std::uint64_t fingerprint_of(const ChatRequest& r) {
  Fingerprint f;
  f.text(r.model);
  f.u64(r.messages.size());
  for (const Message& m : r.messages) {
    f.u64(static_cast<std::uint64_t>(m.role));
    f.u64(m.content.size());
    for (const ContentPart& p : m.content) {
      f.u64(static_cast<std::uint64_t>(p.type));
      f.text(p.type == ContentPart::Type::kText ? p.text : p.image_url);
    }
    f.u64(m.tool_calls.size());
    for (const ToolCall& c : m.tool_calls) {
      f.text(c.id);
      f.text(c.name);
      f.text(c.arguments_json);
    }
    f.text(m.tool_call_id);
    f.u64(m.is_error ? 1 : 0);
  }
  f.u64(r.tools.size());
  for (const ToolDefinition& t : r.tools) {
    f.text(t.name);
    f.text(t.description);
    f.text(t.parameters_schema_json);
  }
  f.u64(r.max_output_tokens ? static_cast<std::uint64_t>(*r.max_output_tokens) + 1 : 0);
  f.u64(r.stream ? 1 : 0);
  return f.done();
}

// The request's logical position in its task: the first user message (the task's input) and
// how many assistant messages and tool results it already holds. Nothing a client chooses
// about the encoding (tool schemas, error texts, ids, max_tokens) enters it, so two clients
// sending the same conversation get the same draws at the same point.
std::uint64_t position_of(const ChatRequest& r) {
  Fingerprint f;
  auto user =
      std::find_if(r.messages.begin(), r.messages.end(), [](const Message& m) { return m.role == Role::kUser; });
  f.text(user != r.messages.end() ? user->text() : std::string());
  f.u64(static_cast<std::uint64_t>(std::count_if(r.messages.begin(), r.messages.end(),
                                                 [](const Message& m) { return m.role == Role::kAssistant; })));
  f.u64(static_cast<std::uint64_t>(
      std::count_if(r.messages.begin(), r.messages.end(), [](const Message& m) { return m.role == Role::kTool; })));
  return f.done();
}

std::uint64_t draw_key(std::uint64_t seed, std::uint64_t fingerprint, std::uint64_t occurrence) {
  std::uint64_t x = seed;
  x = nines::internal::splitmix64(x) ^ fingerprint;
  x = nines::internal::splitmix64(x) ^ occurrence;
  return nines::internal::splitmix64(x);
}

std::string hex(std::uint64_t v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<std::size_t>(i)] = kDigits[v & 15];
  return s;
}

bool is_injected(const Message& m) {
  if (m.role != Role::kAssistant || m.tool_calls.empty()) return false;
  return std::all_of(m.tool_calls.begin(), m.tool_calls.end(),
                     [](const ToolCall& c) { return c.id.starts_with(kFaultIdPrefix); });
}

std::size_t scenario_turn(const ChatRequest& r) {
  return static_cast<std::size_t>(std::count_if(r.messages.begin(), r.messages.end(), [](const Message& m) {
    return m.role == Role::kAssistant && !is_injected(m);
  }));
}

// The longest prefix of `s` of at most `max` bytes that does not end inside a UTF-8
// sequence (at least one whole code point when max >= 4).
std::size_t utf8_cut(std::string_view s, std::size_t max) {
  if (max >= s.size()) return s.size();
  std::size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return n;
}

std::vector<std::string> pieces(std::string_view s, std::size_t bytes) {
  std::vector<std::string> out;
  while (!s.empty()) {
    std::size_t n = utf8_cut(s, bytes);
    if (n == 0) n = std::min(s.size(), bytes);  // not UTF-8: cut anyway
    out.emplace_back(s.substr(0, n));
    s.remove_prefix(n);
  }
  return out;
}

Json error_json(std::string_view message, std::string_view type, std::string_view param, std::string_view code) {
  Json e = {{"message", message}, {"type", type}};
  e["param"] = param.empty() ? Json(nullptr) : Json(param);
  e["code"] = code.empty() ? Json(nullptr) : Json(code);
  return Json{{"error", std::move(e)}};
}

void set_error(SimPlan& p, int status, std::string body, Headers extra = {}) {
  p.outcome = SimOutcome::kError;
  p.status = status;
  p.body = std::move(body);
  p.headers = std::move(extra);
}

std::string finish_string(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kToolCalls: return "tool_calls";
    case FinishReason::kContentFilter: return "content_filter";
    case FinishReason::kOther: break;
  }
  return "stop";
}

// ---- tool-call faults -------------------------------------------------------------------------

const ToolDefinition* find_tool(const ChatRequest& r, std::string_view name) {
  for (const ToolDefinition& t : r.tools) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

void mark_injected(Message& m, std::size_t turn) {
  for (std::size_t i = 0; i < m.tool_calls.size(); ++i) {
    m.tool_calls[i].id = std::string(kFaultIdPrefix) + std::to_string(turn) + "_" + std::to_string(i);
  }
}

// Arguments that are not JSON: the valid text cut before its last byte (or, if that still
// parses, with a stray comma).
std::string break_syntax(const std::string& args) {
  std::string cut = args.size() > 1 ? args.substr(0, args.size() - 1) : "{";
  if (!internal::parse_json(cut)) return cut;
  return args + ",";
}

std::string_view json_type_name(const Json& v) {
  if (v.is_string()) return "string";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_array()) return "array";
  if (v.is_object()) return "object";
  return "null";
}

// Valid JSON that violates `schema_text`; nullopt when the schema cannot be read. `detail`
// says which rule is broken.
std::optional<std::string> break_schema(const std::string& tool, const std::string& schema_text,
                                        const std::string& args_text, std::string& detail) {
  std::optional<Json> schema = internal::parse_json(schema_text);
  if (!schema || !schema->is_object()) return std::nullopt;
  std::optional<Json> args = internal::parse_json(args_text);
  Json obj = args && args->is_object() ? *args : Json::object();
  if (const Json* req = member(*schema, "required"); req && req->is_array()) {
    for (const Json& r : *req) {
      if (!r.is_string()) continue;
      obj.erase(r.get<std::string>());
      detail = "tool '" + tool + "': required property '" + r.get<std::string>() + "' left out";
      return internal::dump_json(obj);
    }
  }
  if (const Json* props = member(*schema, "properties"); props && props->is_object()) {
    for (const auto& item : props->items()) {
      std::string_view type = internal::str(member(item.value(), "type"));
      if (type.empty()) continue;
      Json wrong = type == "string" ? Json(12345) : Json("not a " + std::string(type));
      obj[item.key()] = wrong;
      detail = "tool '" + tool + "': property '" + item.key() + "' has type " + std::string(json_type_name(wrong)) +
               " where the schema says " + std::string(type);
      return internal::dump_json(obj);
    }
  }
  detail = "tool '" + tool + "': the arguments are an array where the schema says object";
  return std::string("[]");
}

// ---- the response body ------------------------------------------------------------------------

std::string json_string(std::string_view text) { return internal::dump_json(Json(std::string(text))); }

// The bodies are written as text (nlohmann's object building costs more than the rest of a
// call); only strings go through the JSON serializer, for their escaping.
std::string usage_text(const Usage& u) {
  return "{\"prompt_tokens\":" + std::to_string(u.input_tokens) +
         ",\"completion_tokens\":" + std::to_string(u.output_tokens) +
         ",\"total_tokens\":" + std::to_string(u.input_tokens + u.output_tokens) + "}";
}

std::string completion_body(const ChatResponse& r) {
  const std::string text = r.message.text();
  std::string s = "{\"id\":" + json_string(r.id) +
                  ",\"object\":\"chat.completion\",\"created\":" + std::to_string(kCreated) +
                  ",\"model\":" + json_string(r.model) +
                  ",\"system_fingerprint\":\"nines-sim\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                  "\"content\":";
  s.append(text.empty() && !r.message.tool_calls.empty() ? std::string("null") : json_string(text));
  s.append(",\"refusal\":null");
  if (!r.message.tool_calls.empty()) {
    s.append(",\"tool_calls\":[");
    for (std::size_t i = 0; i < r.message.tool_calls.size(); ++i) {
      const ToolCall& c = r.message.tool_calls[i];
      if (i > 0) s.append(",");
      s.append("{\"id\":").append(json_string(c.id)).append(",\"type\":\"function\",\"function\":{\"name\":");
      s.append(json_string(c.name)).append(",\"arguments\":").append(json_string(c.arguments_json)).append("}}");
    }
    s.append("]");
  }
  s.append("},\"logprobs\":null,\"finish_reason\":").append(json_string(r.raw_finish_reason));
  s.append("}],\"usage\":").append(usage_text(r.usage)).append("}");
  return s;
}

// Writes "data: {chunk}\n\n" events of one response: the part before the delta is the same in
// every chunk, so it is serialized once and only the deltas are (a stream has many chunks).
class ChunkWriter {
 public:
  explicit ChunkWriter(const ChatResponse& r)
      : prefix_("data: {\"id\":" + json_string(r.id) + ",\"object\":\"chat.completion.chunk\",\"created\":" +
                std::to_string(kCreated) + ",\"model\":" + json_string(r.model) +
                ",\"system_fingerprint\":\"nines-sim\",\"choices\":[{\"index\":0,\"delta\":") {}

  // delta and usage are JSON text.
  std::string event(std::string_view delta, std::string_view finish = {}, std::string_view usage = {}) const {
    std::string s;
    s.reserve(prefix_.size() + delta.size() + usage.size() + 64);
    s.append(prefix_).append(delta).append(",\"logprobs\":null,\"finish_reason\":");
    s.append(finish.empty() ? std::string("null") : json_string(finish)).append("}]");
    if (!usage.empty()) s.append(",\"usage\":").append(usage);
    s.append("}\n\n");
    return s;
  }

 private:
  std::string prefix_;
};

// The events before data: [DONE]: the role, the content or tool-call pieces, the finish
// reason with usage.
std::vector<std::string> stream_events(const ChatResponse& r, std::int64_t tokens_per_chunk) {
  const std::size_t bytes = static_cast<std::size_t>(std::max<std::int64_t>(1, tokens_per_chunk)) * 4;
  const ChunkWriter w(r);
  std::vector<std::string> out;
  out.push_back(w.event(R"({"role":"assistant","content":""})"));
  for (const std::string& piece : pieces(r.message.text(), bytes)) {
    out.push_back(w.event("{\"content\":" + json_string(piece) + "}"));
  }
  for (std::size_t i = 0; i < r.message.tool_calls.size(); ++i) {
    const ToolCall& c = r.message.tool_calls[i];
    const std::string index = std::to_string(i);
    out.push_back(w.event("{\"tool_calls\":[{\"index\":" + index + ",\"id\":" + json_string(c.id) +
                          ",\"type\":\"function\",\"function\":{\"name\":" + json_string(c.name) +
                          ",\"arguments\":\"\"}}]}"));
    for (const std::string& piece : pieces(c.arguments_json, bytes)) {
      out.push_back(w.event("{\"tool_calls\":[{\"index\":" + index +
                            ",\"function\":{\"arguments\":" + json_string(piece) + "}}]}"));
    }
  }
  out.push_back(w.event("{}", r.raw_finish_reason, usage_text(r.usage)));
  return out;
}

// ---- request parsing ----------------------------------------------------------------------------

Error request_error(std::string_view field, std::string_view what) {
  std::string m(field);
  m.append(": ").append(what);
  return Error(ErrorKind::kInvalidArgument, std::move(m));
}

std::string field_path(std::string_view base, std::size_t i, std::string_view field = {}) {
  std::string p = std::string(base) + "[" + std::to_string(i) + "]";
  if (!field.empty()) p.append(".").append(field);
  return p;
}

Result<std::vector<ContentPart>> parse_content(const Json* content, const std::string& path, Role role) {
  std::vector<ContentPart> parts;
  if (!content || content->is_null()) return parts;
  if (content->is_string()) {
    const std::string& s = content->get_ref<const std::string&>();
    // Message::assistant leaves empty text out; the others keep one (possibly empty) part.
    if (!s.empty() || role != Role::kAssistant) parts.push_back(ContentPart::from_text(s));
    return parts;
  }
  if (!content->is_array()) return request_error(path, "must be a string, an array of parts or null");
  for (std::size_t i = 0; i < content->size(); ++i) {
    const Json& part = (*content)[i];
    std::string ppath = field_path(path, i);
    if (!part.is_object()) return request_error(ppath, "a content part must be an object");
    std::string_view type = internal::str(member(part, "type"));
    if (type == "text" || type == "input_text") {
      const Json* text = member(part, "text");
      if (!text || !text->is_string()) return request_error(ppath + ".text", "must be a string");
      parts.push_back(ContentPart::from_text(text->get<std::string>()));
    } else if (type == "image_url") {
      const Json* img = member(part, "image_url");
      std::string_view url = img && img->is_string() ? internal::str(img) : internal::str(member(img, "url"));
      if (url.empty()) return request_error(ppath + ".image_url.url", "must be a non-empty string");
      parts.push_back(ContentPart::from_image_url(std::string(url)));
    } else if (type == "refusal") {
      parts.push_back(ContentPart::from_text(std::string(internal::str(member(part, "refusal")))));
    } else {
      return request_error(ppath + ".type",
                           "unsupported content part type \"" + std::string(type) + "\" (text and image_url are)");
    }
  }
  return parts;
}

// The openai codec marks a failed tool result with "[tool error] " in front of its text.
void unmark_tool_error(Message& m) {
  if (m.content.empty() || m.content[0].type != ContentPart::Type::kText) return;
  std::string& t = m.content[0].text;
  if (!t.starts_with(kToolErrorMark)) return;
  m.is_error = true;
  if (t.size() == kToolErrorMark.size() && m.content.size() > 1) {
    m.content.erase(m.content.begin());
  } else {
    t.erase(0, kToolErrorMark.size());
  }
}

Result<Message> parse_message(const Json& j, std::size_t index) {
  const std::string path = field_path("messages", index);
  if (!j.is_object()) return request_error(path, "a message must be an object");
  const Json* role_j = member(j, "role");
  if (!role_j || !role_j->is_string()) return request_error(path + ".role", "required, a string");
  const std::string& role = role_j->get_ref<const std::string&>();
  Message m;
  if (role == "system" || role == "developer") {
    m.role = Role::kSystem;
  } else if (role == "user") {
    m.role = Role::kUser;
  } else if (role == "assistant") {
    m.role = Role::kAssistant;
  } else if (role == "tool") {
    m.role = Role::kTool;
  } else {
    return request_error(path + ".role",
                         "unsupported role \"" + role + "\" (system, developer, user, assistant, tool)");
  }
  Result<std::vector<ContentPart>> content = parse_content(member(j, "content"), path + ".content", m.role);
  if (!content.ok()) return std::move(content).error();
  m.content = std::move(content).value();

  if (const Json* calls = member(j, "tool_calls"); calls && !calls->is_null()) {
    if (m.role != Role::kAssistant)
      return request_error(path + ".tool_calls", "only an assistant message has tool calls");
    if (!calls->is_array()) return request_error(path + ".tool_calls", "must be an array");
    for (std::size_t i = 0; i < calls->size(); ++i) {
      const Json& c = (*calls)[i];
      const std::string cpath = field_path(path + ".tool_calls", i);
      if (!c.is_object()) return request_error(cpath, "a tool call must be an object");
      const Json* fn = member(c, "function");
      if (!fn || !fn->is_object()) return request_error(cpath + ".function", "required, an object");
      std::string_view name = internal::str(member(fn, "name"));
      if (name.empty()) return request_error(cpath + ".function.name", "required, a non-empty string");
      ToolCall call{.id = std::string(internal::str(member(c, "id"))), .name = std::string(name)};
      if (call.id.empty()) call.id = "call_" + std::to_string(i);
      const Json* args = member(fn, "arguments");
      if (args && args->is_string()) {
        call.arguments_json = args->get<std::string>();
      } else if (args && args->is_object()) {
        call.arguments_json = internal::dump_json(*args);
      } else if (args && !args->is_null()) {
        return request_error(cpath + ".function.arguments", "must be a string of JSON");
      }
      if (call.arguments_json.empty()) call.arguments_json = "{}";
      m.tool_calls.push_back(std::move(call));
    }
  }
  if (m.role == Role::kTool) {
    std::string_view id = internal::str(member(j, "tool_call_id"));
    if (id.empty()) return request_error(path + ".tool_call_id", "required for a tool message");
    m.tool_call_id = std::string(id);
    unmark_tool_error(m);
  }
  return m;
}

Result<ToolDefinition> parse_tool(const Json& j, std::size_t index) {
  const std::string path = field_path("tools", index);
  if (!j.is_object()) return request_error(path, "a tool must be an object");
  std::string_view type = internal::str(member(j, "type"));
  if (!type.empty() && type != "function") {
    return request_error(path + ".type", "unsupported tool type \"" + std::string(type) + "\" (function is)");
  }
  const Json* fn = member(j, "function");
  if (!fn || !fn->is_object()) return request_error(path + ".function", "required, an object");
  ToolDefinition t;
  t.name = std::string(internal::str(member(fn, "name")));
  if (t.name.empty()) return request_error(path + ".function.name", "required, a non-empty string");
  if (const Json* d = member(fn, "description"); d && !d->is_null()) {
    if (!d->is_string()) return request_error(path + ".function.description", "must be a string");
    t.description = d->get<std::string>();
  }
  if (const Json* p = member(fn, "parameters"); p && !p->is_null()) {
    if (!p->is_object()) return request_error(path + ".function.parameters", "must be a JSON Schema object");
    t.parameters_schema_json = internal::dump_json(*p);
  }
  return t;
}

std::string path_of(std::string_view target) { return std::string(target.substr(0, target.find('?'))); }

SimHttpReply json_reply(int status, const Json& body, Headers extra = {}) {
  SimHttpReply r{.status = status, .headers = std::move(extra)};
  r.headers.push_back({"content-type", "application/json"});
  r.body = internal::dump_json(body);
  return r;
}

}  // namespace

// ---- estimates ---------------------------------------------------------------------------------

std::int64_t sim_estimate_prompt_tokens(const ChatRequest& request) {
  std::int64_t n = 3;  // the reply priming
  for (const Message& m : request.messages) {
    n += 4;
    for (const ContentPart& p : m.content)
      n += quarter(p.type == ContentPart::Type::kText ? p.text.size() : p.image_url.size());
    for (const ToolCall& c : m.tool_calls) n += 3 + quarter(c.name.size()) + quarter(c.arguments_json.size());
    n += quarter(m.tool_call_id.size());
  }
  for (const ToolDefinition& t : request.tools) {
    n += 8 + quarter(t.name.size()) + quarter(t.description.size()) + quarter(t.parameters_schema_json.size());
  }
  return n;
}

std::int64_t sim_estimate_output_tokens(const Message& message) {
  std::int64_t n = 0;
  for (const ContentPart& p : message.content)
    n += quarter(p.type == ContentPart::Type::kText ? p.text.size() : p.image_url.size());
  for (const ToolCall& c : message.tool_calls) n += 3 + quarter(c.name.size()) + quarter(c.arguments_json.size());
  return std::max<std::int64_t>(1, n);
}

// ---- the steps of SimModel::decide ------------------------------------------------------------

namespace {

// One body for the real window check and the injected fault, so clients cannot tell them apart.
void set_overflow(SimPlan& p, std::string message) {
  set_error(p, 400,
            internal::dump_json(error_json(message, "invalid_request_error", "messages", "context_length_exceeded")));
}

// Checked before any fault: a prompt that cannot fit fails the same way on every call.
bool exceeds_window(SimPlan& p, const ChatRequest& request, const SimConfig& config) {
  const std::int64_t reserved = request.max_output_tokens.value_or(0);
  if (p.prompt_tokens + reserved <= config.context_window_tokens) return false;
  std::string m = "This model's maximum context length is " + std::to_string(config.context_window_tokens) +
                  " tokens. However, you requested " + std::to_string(p.prompt_tokens + reserved) + " tokens (" +
                  std::to_string(p.prompt_tokens) + " in the messages, " + std::to_string(reserved) +
                  " in the completion). Please reduce the length of the messages or completion.";
  p.fault_detail = "prompt estimate " + std::to_string(p.prompt_tokens) + " + max output " + std::to_string(reserved) +
                   " > context window " + std::to_string(config.context_window_tokens);
  set_overflow(p, std::move(m));
  return true;
}

// A scheduled fault wins over the drawn one, so a test can pin a fault to one call.
SimFault pick_fault(const SimConfig& config, std::uint64_t call, double fault_draw) {
  auto scheduled = std::lower_bound(config.schedule.begin(), config.schedule.end(), call,
                                    [](const SimScheduledFault& s, std::uint64_t c) { return s.call < c; });
  if (scheduled != config.schedule.end() && scheduled->call == call) return scheduled->fault;
  double cumulative = 0;
  for (std::size_t i = 1; i < kSimFaultCount; ++i) {
    cumulative += config.faults.probability[i];
    if (fault_draw < cumulative) return static_cast<SimFault>(i);
  }
  return SimFault::kNone;
}

// The headers real APIs send with a 429, so clients can honour the retry time.
void set_rate_limited(SimPlan& p, std::int64_t ms, const std::string& model) {
  const std::int64_t secs = (ms + 999) / 1000;
  std::string m = "Rate limit reached for " + model + " (simulated) on requests per min (RPM). Please try again in " +
                  std::to_string(ms) + "ms.";
  set_error(p, 429, internal::dump_json(error_json(m, "requests", "", "rate_limit_exceeded")),
            {{"retry-after-ms", std::to_string(ms)},
             {"retry-after", std::to_string(secs)},
             {"x-ratelimit-remaining-requests", "0"},
             {"x-ratelimit-reset-requests", std::to_string(ms) + "ms"}});
  p.fault_detail = "429, retry after " + std::to_string(ms) + " ms";
}

// Faults that replace the answer; false for the others, which need the scripted answer first.
bool replace_answer(SimPlan& p, SimFault fault, const SimConfig& config, const std::string& model) {
  switch (fault) {
    case SimFault::kRateLimited: set_rate_limited(p, config.faults.retry_after_ms, model); return true;
    case SimFault::kServerError:
      set_error(p, 500,
                internal::dump_json(
                    error_json("The server had an error while processing your request. Sorry about that! (simulated)",
                               "server_error", "", "")));
      p.fault_detail = "500";
      return true;
    case SimFault::kUnavailable:
      set_error(p, 503,
                internal::dump_json(error_json("The server is temporarily unavailable. (simulated)", "server_error", "",
                                               "service_unavailable")));
      p.fault_detail = "503";
      return true;
    case SimFault::kOverloaded:
      set_error(p, 529, internal::dump_json(error_json("Overloaded (simulated)", "overloaded_error", "", "")));
      p.fault_detail = "529";
      return true;
    case SimFault::kTimeout:
      p.outcome = SimOutcome::kHang;
      p.first_byte_delay = Duration::zero();
      p.hang = std::chrono::milliseconds(config.faults.hang_ms);
      p.fault_detail = "no answer for " + std::to_string(config.faults.hang_ms) + " ms";
      return true;
    case SimFault::kContextOverflow:
      set_overflow(p, "This model's maximum context length is " + std::to_string(config.context_window_tokens) +
                          " tokens. However, your messages resulted in " + std::to_string(p.prompt_tokens) +
                          " tokens. Please reduce the length of the messages. (simulated context_overflow fault)");
      p.fault_detail = "injected (prompt estimate " + std::to_string(p.prompt_tokens) + " tokens)";
      return true;
    default: return false;
  }
}

// Past the scenario's end, after_last_turn picks the turn; nullptr when it says error.
const SimTurn* scripted_turn(const SimConfig& config, std::size_t turn) {
  static const SimTurn kDefaultTurn{.answer = std::string(kDefaultSimAnswer)};
  if (turn < config.scenario.size()) return &config.scenario[turn];
  if (config.after_last_turn == SimAfterLastTurn::kRepeatLast) return &config.scenario.back();
  if (config.after_last_turn != SimAfterLastTurn::kRepeatFinal) return nullptr;
  auto last = std::find_if(config.scenario.rbegin(), config.scenario.rend(),
                           [](const SimTurn& t) { return t.tool_calls.empty(); });
  return last != config.scenario.rend() ? &*last : &kDefaultTurn;
}

// An exhausted scenario is a 400 the client can read, not a made-up answer.
void set_exhausted(SimPlan& p, const SimConfig& config) {
  std::string m = "The simulated scenario has " + std::to_string(config.scenario.size()) +
                  " turns; this request is at turn " + std::to_string(p.turn) + " (after_last_turn: error).";
  set_error(p, 400, internal::dump_json(error_json(m, "invalid_request_error", "messages", "sim_scenario_exhausted")));
  p.fault_detail = "scenario exhausted";
}

// The scripted answer, cut at max_output_tokens the way a real model stops at its limit.
void write_turn(SimPlan& p, const SimTurn& turn, const ChatRequest& request) {
  Message& msg = p.response.message;
  msg.role = Role::kAssistant;
  if (!turn.tool_calls.empty()) {
    for (std::size_t i = 0; i < turn.tool_calls.size(); ++i) {
      msg.tool_calls.push_back(ToolCall{.id = "call_sim_" + std::to_string(p.turn) + "_" + std::to_string(i),
                                        .name = turn.tool_calls[i].name,
                                        .arguments_json = turn.tool_calls[i].arguments_json});
    }
    return;
  }
  std::string text = turn.answer;
  if (request.max_output_tokens && quarter(text.size()) > *request.max_output_tokens) {
    text.resize(utf8_cut(text, static_cast<std::size_t>(*request.max_output_tokens) * 4));
    p.response.finish_reason = FinishReason::kLength;
  }
  if (!text.empty()) msg.content.push_back(ContentPart::from_text(std::move(text)));
}

// Why a fault that changes the answer does not apply to this request; nullopt when it applied.
using NotApplicable = std::optional<std::string>;

// Only a stream can be cut mid-answer.
NotApplicable cut_stream(SimPlan& p, const ChatRequest& request) {
  if (!request.stream) return "not a stream";
  p.outcome = SimOutcome::kCutStream;
  p.fault_detail = p.cut_after_chunks ? "cut after " + std::to_string(*p.cut_after_chunks) + " events"
                                      : "cut after " + std::to_string(p.cut_after_fraction) + " of the events";
  return std::nullopt;
}

// A name no tool of the request has, so the agent's tool lookup must fail.
NotApplicable hallucinate_tool(SimPlan& p, const ChatRequest& request) {
  std::string name = "sim_unknown_tool";
  for (int n = 2; find_tool(request, name); ++n) name = "sim_unknown_tool_" + std::to_string(n);
  p.response.message = Message::assistant("", {ToolCall{.name = name, .arguments_json = "{}"}});
  mark_injected(p.response.message, p.turn);
  p.fault_detail =
      "called tool '" + name + "', which is not among the request's " + std::to_string(request.tools.size()) + " tools";
  return std::nullopt;
}

// Schema breaks need the tool's schema; without it the arguments are broken as JSON instead.
NotApplicable break_tool_args(SimPlan& p, const ChatRequest& request, SimArgsBreak mode, std::uint64_t mode_draw) {
  Message& msg = p.response.message;
  if (msg.tool_calls.empty()) {
    if (request.tools.empty()) return "no tool call to break and no tools in the request";
    msg = Message::assistant("", {ToolCall{.name = request.tools[0].name, .arguments_json = "{}"}});
  }
  ToolCall& target = msg.tool_calls[0];
  const ToolDefinition* tool = find_tool(request, target.name);
  const bool schema_mode = mode == SimArgsBreak::kSchema || (mode == SimArgsBreak::kEither && (mode_draw & 1) != 0);
  std::optional<std::string> broken;
  if (schema_mode && tool)
    broken = break_schema(target.name, tool->parameters_schema_json, target.arguments_json, p.fault_detail);
  if (!broken) {
    broken = break_syntax(target.arguments_json);
    p.fault_detail = "tool '" + target.name + "': the arguments are not valid JSON (" + *broken + ")";
    if (schema_mode) p.fault_detail += "; the tool's schema is not in the request";
  }
  target.arguments_json = std::move(*broken);
  mark_injected(msg, p.turn);
  return std::nullopt;
}

// A loop repeats the last real tool call, which only exists after one.
NotApplicable repeat_tool_call(SimPlan& p, const ChatRequest& request) {
  auto prev = std::find_if(request.messages.rbegin(), request.messages.rend(),
                           [](const Message& m) { return m.role == Role::kAssistant && !m.tool_calls.empty(); });
  if (prev == request.messages.rend()) return "no earlier assistant tool call to repeat";
  Message& msg = p.response.message;
  msg = Message::assistant("", prev->tool_calls);
  mark_injected(msg, p.turn);
  p.fault_detail = "repeats messages[" + std::to_string(request.messages.rend() - prev - 1) + "]'s " +
                   std::to_string(msg.tool_calls.size()) + " tool call(s), first " + msg.tool_calls[0].name;
  return std::nullopt;
}

// Faults that change the answer, or the way it arrives. Returns the fault in effect: kNone when
// it does not apply to this request, so it is not counted as injected.
SimFault change_answer(SimPlan& p, SimFault fault, const ChatRequest& request, const SimConfig& config,
                       std::uint64_t mode_draw) {
  NotApplicable skip;
  switch (fault) {
    case SimFault::kCutStream: skip = cut_stream(p, request); break;
    case SimFault::kMalformedJson:
      p.outcome = SimOutcome::kMalformed;
      p.fault_detail = request.stream ? "one stream event is cut JSON" : "the body is cut JSON";
      break;
    case SimFault::kHallucinatedTool: skip = hallucinate_tool(p, request); break;
    case SimFault::kInvalidToolArgs: skip = break_tool_args(p, request, config.faults.invalid_args, mode_draw); break;
    case SimFault::kLoop: skip = repeat_tool_call(p, request); break;
    default: break;
  }
  if (!skip) return fault;
  p.fault_detail = std::string(to_string(fault)) + " does not apply: " + *skip;
  return SimFault::kNone;
}

// Finish reason and usage follow the final message, so they stay true after a fault changed it.
void settle_response(SimPlan& p) {
  const Message& msg = p.response.message;
  if (!msg.tool_calls.empty()) {
    p.response.finish_reason = FinishReason::kToolCalls;
  } else if (p.response.finish_reason != FinishReason::kLength) {
    p.response.finish_reason = FinishReason::kStop;
  }
  p.response.raw_finish_reason = finish_string(p.response.finish_reason);
  p.response.usage = Usage{.input_tokens = p.prompt_tokens, .output_tokens = sim_estimate_output_tokens(msg)};
}

}  // namespace

// ---- SimModel ------------------------------------------------------------------------------------

// Per-fingerprint occurrence counts: kShards shards, each two generations of at most `cap`
// entries. A fingerprint found in the old generation moves to the current one; when the
// current one is full it becomes the old one (the previous old one is dropped), so what
// was not seen for two generations is forgotten and memory stays bounded.
struct SimModel::Tracker {
  static constexpr std::size_t kShards = 16;  // fingerprint >> 60 picks one
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::uint64_t, std::uint64_t> current, previous;
  };
  explicit Tracker(std::size_t max_tracked) : cap(std::max<std::size_t>(1, max_tracked / (2 * kShards))) {}

  std::uint64_t next(std::uint64_t fingerprint) {
    Shard& s = shards[fingerprint >> 60];  // the top bits are well mixed (splitmix)
    std::lock_guard lock(s.mu);
    if (auto it = s.current.find(fingerprint); it != s.current.end()) return it->second++;
    std::uint64_t seen = 0;
    if (auto old = s.previous.find(fingerprint); old != s.previous.end()) {
      seen = old->second;
      s.previous.erase(old);
    }
    if (s.current.size() >= cap) {
      s.previous = std::move(s.current);
      s.current = {};
    }
    s.current.emplace(fingerprint, seen + 1);
    return seen;
  }

  std::size_t cap;
  std::array<Shard, kShards> shards;
};

SimModel::SimModel(SimConfig config)
    : config_(std::move(config)), tracker_(std::make_unique<Tracker>(config_.max_tracked_requests)) {
  if (config_.scenario.empty()) config_.scenario.push_back(SimTurn{.answer = std::string(kDefaultSimAnswer)});
  std::sort(config_.schedule.begin(), config_.schedule.end(),
            [](const SimScheduledFault& a, const SimScheduledFault& b) { return a.call < b.call; });
}

SimModel::~SimModel() = default;

Result<std::shared_ptr<SimModel>> SimModel::create(SimConfig config) {
  if (Status s = validate_sim_config(config); !s.ok()) return std::move(s).error();
  return std::shared_ptr<SimModel>(new SimModel(std::move(config)));
}

Result<std::shared_ptr<SimModel>> SimModel::from_json(std::string_view json) {
  Result<SimConfig> c = parse_sim_config(json);
  if (!c.ok()) return std::move(c).error();
  return create(std::move(c).value());
}

std::uint64_t SimModel::occurrence_of(std::uint64_t fingerprint) { return tracker_->next(fingerprint); }

SimCounters SimModel::counters() const {
  SimCounters c;
  c.calls = calls_.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < kSimFaultCount; ++i) c.faults[i] = fault_counts_[i].load(std::memory_order_relaxed);
  c.scenario_exhausted = exhausted_.load(std::memory_order_relaxed);
  c.bad_requests = bad_requests_.load(std::memory_order_relaxed);
  return c;
}

SimPlan SimModel::decide(const ChatRequest& request) {
  SimPlan p;
  p.call = calls_.fetch_add(1, std::memory_order_relaxed) + 1;
  p.fingerprint = config_.fault_key == SimFaultKey::kPosition ? position_of(request) : fingerprint_of(request);
  p.occurrence = occurrence_of(p.fingerprint);
  p.turn = scenario_turn(request);
  p.prompt_tokens = sim_estimate_prompt_tokens(request);
  p.tokens_per_chunk = config_.tokens_per_chunk;
  p.per_chunk = config_.per_chunk;
  p.cut_after_chunks = config_.faults.cut_after_chunks;
  p.cut_after_fraction = config_.faults.cut_after_fraction;

  // The draws, always in this order and number, so that one setting does not shift another's.
  nines::internal::Xoshiro256 rng(draw_key(config_.seed, p.fingerprint, p.occurrence));
  const double fault_draw = unit(rng.next());
  p.first_byte_delay = sample_latency(config_.first_byte, rng);
  const std::uint64_t mode_draw = rng.next();
  p.chunk_seed = rng.next();

  const std::string model = config_.model.empty() ? request.model : config_.model;
  p.response.id = "chatcmpl-sim-" + hex(p.fingerprint) + "-" + std::to_string(p.occurrence);
  p.response.model = model;

  auto finish = [&](SimFault fault) {
    p.fault = fault;
    fault_counts_[static_cast<std::size_t>(fault)].fetch_add(1, std::memory_order_relaxed);
    return std::move(p);
  };

  // The window, always.
  if (exceeds_window(p, request, config_)) return finish(SimFault::kContextOverflow);

  // Scheduled, else drawn.
  SimFault fault = pick_fault(config_, p.call, fault_draw);

  // Faults that replace the answer.
  if (replace_answer(p, fault, config_, model)) return finish(fault);

  // The scripted turn.
  const SimTurn* turn = scripted_turn(config_, p.turn);
  if (turn == nullptr) {
    exhausted_.fetch_add(1, std::memory_order_relaxed);
    set_exhausted(p, config_);
    return finish(SimFault::kNone);
  }
  write_turn(p, *turn, request);

  // Faults that change the answer, or the way it arrives.
  fault = change_answer(p, fault, request, config_, mode_draw);
  settle_response(p);
  return finish(fault);
}

// ---- the wire side -------------------------------------------------------------------------------

SimHttpReply render_openai(const SimPlan& plan, bool stream) {
  SimHttpReply r;
  r.headers.push_back({"x-request-id", "sim-" + std::to_string(plan.call)});
  if (plan.fault != SimFault::kNone) r.headers.push_back({"x-sim-fault", std::string(to_string(plan.fault))});
  switch (plan.outcome) {
    case SimOutcome::kHang:
      r.end = SimReplyEnd::kHang;
      r.hang = plan.hang;
      return r;
    case SimOutcome::kError:
      r.status = plan.status;
      r.first_byte_delay = plan.first_byte_delay;
      r.headers.insert(r.headers.end(), plan.headers.begin(), plan.headers.end());
      r.headers.push_back({"content-type", "application/json"});
      r.body = plan.body;
      return r;
    default: break;
  }
  r.first_byte_delay = plan.first_byte_delay;
  if (!stream) {
    r.headers.push_back({"content-type", "application/json"});
    r.body = completion_body(plan.response);
    // A strict prefix of a JSON object is never a JSON document.
    if (plan.outcome == SimOutcome::kMalformed) r.body.resize(r.body.size() / 2);
    return r;
  }
  r.stream = true;
  r.headers.push_back({"content-type", "text/event-stream"});
  r.headers.push_back({"cache-control", "no-cache"});
  r.chunks = stream_events(plan.response, plan.tokens_per_chunk);
  const std::size_t before_done = r.chunks.size();
  if (plan.outcome == SimOutcome::kMalformed) {
    const std::size_t bad = std::min<std::size_t>(2, before_done - 1);
    std::string& c = r.chunks[bad];  // "data: {...}\n\n" -> "data: {..\n\n"
    c = c.substr(0, 6 + (c.size() - 8) / 2) + "\n\n";
  }
  r.chunks.push_back("data: [DONE]\n\n");
  nines::internal::Xoshiro256 rng(plan.chunk_seed);
  r.chunk_delays.reserve(r.chunks.size());
  for (std::size_t i = 0; i < r.chunks.size(); ++i) {
    const Duration d = sample_latency(plan.per_chunk, rng);
    r.chunk_delays.push_back(i == 0 || i + 1 == r.chunks.size() ? Duration::zero() : d);
  }
  if (plan.outcome == SimOutcome::kCutStream) {
    std::size_t k =
        plan.cut_after_chunks
            ? static_cast<std::size_t>(std::max<std::int64_t>(0, *plan.cut_after_chunks))
            : static_cast<std::size_t>(std::floor(plan.cut_after_fraction * static_cast<double>(before_done)));
    k = std::min(k, before_done);
    r.chunks.resize(k);
    r.chunk_delays.resize(k);
    r.end = SimReplyEnd::kAbort;
  }
  return r;
}

Result<ChatRequest> parse_openai_chat_request(std::string_view body) {
  std::optional<Json> doc = internal::parse_json(body);
  if (!doc) return request_error("body", "not valid JSON (or nested deeper than 256 levels)");
  if (!doc->is_object()) return request_error("body", "must be a JSON object");
  ChatRequest r;
  const Json* model = member(*doc, "model");
  if (!model || !model->is_string() || model->get_ref<const std::string&>().empty()) {
    return request_error("model", "required, a non-empty string");
  }
  r.model = model->get<std::string>();
  const Json* messages = member(*doc, "messages");
  if (!messages || !messages->is_array() || messages->empty()) {
    return request_error("messages", "required, a non-empty array");
  }
  for (std::size_t i = 0; i < messages->size(); ++i) {
    Result<Message> m = parse_message((*messages)[i], i);
    if (!m.ok()) return std::move(m).error();
    r.messages.push_back(std::move(m).value());
  }
  if (const Json* tools = member(*doc, "tools"); tools && !tools->is_null()) {
    if (!tools->is_array()) return request_error("tools", "must be an array");
    for (std::size_t i = 0; i < tools->size(); ++i) {
      Result<ToolDefinition> t = parse_tool((*tools)[i], i);
      if (!t.ok()) return std::move(t).error();
      r.tools.push_back(std::move(t).value());
    }
  }
  if (const Json* s = member(*doc, "stream"); s && !s->is_null()) {
    if (!s->is_boolean()) return request_error("stream", "must be a boolean");
    r.stream = s->get<bool>();
  }
  for (std::string_view field : {"max_tokens", "max_completion_tokens"}) {  // the latter wins
    const Json* v = member(*doc, field);
    if (!v || v->is_null()) continue;
    std::optional<std::int64_t> n = internal::integer(v);
    if (!n || *n < 1) return request_error(field, "must be a positive integer");
    r.max_output_tokens = *n;
  }
  if (const Json* t = member(*doc, "temperature"); t && !t->is_null()) {
    if (!t->is_number()) return request_error("temperature", "must be a number");
    r.temperature = t->get<double>();
  }
  if (const Json* n = member(*doc, "n"); n && !n->is_null() && internal::integer(n) != 1) {
    return request_error("n", "only 1 is supported");
  }
  return r;
}

SimHttpReply SimModel::handle_http(std::string_view method, std::string_view target, std::string_view body) {
  const std::string path = path_of(target);
  auto refuse = [&](int status, std::string message, Headers extra = {}) {
    bad_requests_.fetch_add(1, std::memory_order_relaxed);
    return json_reply(status, error_json(message, "invalid_request_error", "", ""), std::move(extra));
  };
  if (path == "/v1/chat/completions" || path == "/chat/completions") {
    if (method != "POST")
      return refuse(405, "Method " + std::string(method) + " is not allowed for " + path + " (POST is)",
                    {{"allow", "POST"}});
    Result<ChatRequest> req = parse_openai_chat_request(body);
    if (!req.ok()) return refuse(400, req.error().message());
    SimPlan plan = decide(*req);
    return render_openai(plan, req->stream);
  }
  if (path == "/v1/models" || path == "/models") {
    if (method != "GET")
      return refuse(405, "Method " + std::string(method) + " is not allowed for " + path + " (GET is)",
                    {{"allow", "GET"}});
    Json model = {{"id", config_.model.empty() ? "sim" : config_.model},
                  {"object", "model"},
                  {"created", kCreated},
                  {"owned_by", "nines-sim"}};
    return json_reply(200, Json{{"object", "list"}, {"data", Json::array({std::move(model)})}});
  }
  return refuse(404, "Invalid URL (" + std::string(method) + " " + path + ")");
}

// ---- in-process ----------------------------------------------------------------------------------

SimChatModel::SimChatModel(std::shared_ptr<SimModel> sim)
    : sim_(std::move(sim)), codec_(make_openai_codec({.base_url = "http://sim.invalid/v1"}).value()) {}

// The request is read before the first suspension, so it only has to live until the call is
// awaited (as ModelClient).
Task<ChatOutcome> SimChatModel::complete(Context& ctx, const ChatRequest& req, TextSink on_text) {
  Result<HttpCall> call = codec_->build_call(req);
  if (!call.ok()) return play(ctx, std::move(call).error(), std::move(on_text));
  return play(ctx, sim_->handle_http("POST", "/v1/chat/completions", call->body), std::move(on_text));
}

Task<ChatOutcome> SimChatModel::play(Context& ctx, Result<SimHttpReply> prepared, TextSink on_text) {
  if (!prepared.ok()) co_return ChatOutcome{std::move(prepared).error(), std::nullopt};
  SimHttpReply reply = std::move(prepared).value();
  if (reply.end == SimReplyEnd::kHang) {
    if (reply.hang > Duration::zero()) {
      Result<std::any> slept = co_await ctx.sleep(reply.hang);
      if (!slept.ok()) co_return ChatOutcome{std::move(slept).error(), std::nullopt};
    }
    Error e(ErrorKind::kTimeout,
            "sim: no response within hang_ms (" + std::to_string(to_millis(reply.hang)) + " ms; the timeout fault)");
    co_return ChatOutcome{std::move(e), std::nullopt};
  }
  if (reply.first_byte_delay > Duration::zero()) {
    Result<std::any> slept = co_await ctx.sleep(reply.first_byte_delay);
    if (!slept.ok()) co_return ChatOutcome{std::move(slept).error(), std::nullopt};
  }
  if (reply.status < 200 || reply.status > 299) {
    const Now now{ctx.now(), ctx.env().unix_time_ns()};
    ApiFailure f = codec_->map_error(reply.status, reply.headers, reply.body, now);
    Error e = f.error;
    co_return ChatOutcome{std::move(e), std::move(f)};
  }
  if (!reply.stream) co_return ChatOutcome{codec_->parse_response(reply.body), std::nullopt};

  std::unique_ptr<StreamAccumulator> acc = codec_->start_stream();
  net::SseParser parser;
  std::vector<net::SseEvent> events;
  for (std::size_t i = 0; i < reply.chunks.size(); ++i) {
    if (reply.chunk_delays[i] > Duration::zero()) {
      Result<std::any> slept = co_await ctx.sleep(reply.chunk_delays[i]);
      if (!slept.ok()) co_return ChatOutcome{std::move(slept).error(), std::nullopt};
    }
    if (std::optional<Error> e = internal::feed_sse(parser, *acc, reply.chunks[i], on_text, events)) {
      co_return ChatOutcome{std::move(*e), std::nullopt};
    }
  }
  parser.finish();
  // After a cut (SimReplyEnd::kAbort) the accumulator has no data: [DONE]: [truncated].
  co_return ChatOutcome{acc->finish(), std::nullopt};
}

}  // namespace nines::llm
