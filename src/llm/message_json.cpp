#include "llm/message_json.hpp"

#include <utility>

namespace nines::llm {
namespace internal {
namespace {

Error bad(std::string_view where, std::string_view what) {
  std::string m = "message JSON: ";
  if (!where.empty()) {
    m += where;
    m += ": ";
  }
  m += what;
  return Error(ErrorKind::kInvalidArgument, std::move(m));
}

std::string path(std::string_view where, std::string_view field) {
  if (where.empty()) return std::string(field);
  std::string p(where);
  if (!field.empty() && field.front() != '[') p += '.';
  p += field;
  return p;
}

std::string quoted_value(const Json& j) {
  std::string s = dump_json(j);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

std::string type_name(const Json& j) { return j.type_name(); }

// A string member: absent -> fallback (when not required); present but not a string -> error.
Result<std::string> string_field(const Json& obj, std::string_view where, std::string_view key, bool required) {
  const Json* v = member(obj, key);
  if (!v) {
    if (required) return bad(path(where, key), "missing");
    return std::string();
  }
  if (!v->is_string()) return bad(path(where, key), "expected a string, got " + type_name(*v));
  return v->get<std::string>();
}

Result<bool> bool_field(const Json& obj, std::string_view where, std::string_view key) {
  const Json* v = member(obj, key);
  if (!v) return false;
  if (!v->is_boolean()) return bad(path(where, key), "expected true or false, got " + type_name(*v));
  return v->get<bool>();
}

std::optional<Role> role_from(std::string_view s) {
  if (s == "system") return Role::kSystem;
  if (s == "user") return Role::kUser;
  if (s == "assistant") return Role::kAssistant;
  if (s == "tool") return Role::kTool;
  return std::nullopt;
}

}  // namespace

Json message_to_json(const Message& m) {
  Json j = Json::object();
  j["v"] = kMessageJsonVersion;
  j["role"] = std::string(to_string(m.role));
  if (!m.content.empty()) {
    Json parts = Json::array();
    for (const ContentPart& p : m.content) {
      if (p.type == ContentPart::Type::kText)
        parts.push_back({{"type", "text"}, {"text", p.text}});
      else
        parts.push_back({{"type", "image_url"}, {"url", p.image_url}});
    }
    j["content"] = std::move(parts);
  }
  if (!m.tool_calls.empty()) {
    Json calls = Json::array();
    for (const ToolCall& c : m.tool_calls) {
      calls.push_back({{"id", c.id}, {"name", c.name}, {"arguments", c.arguments_json}});
    }
    j["tool_calls"] = std::move(calls);
  }
  if (!m.tool_call_id.empty()) j["tool_call_id"] = m.tool_call_id;
  if (m.is_error) j["is_error"] = true;
  if (m.pinned) j["pinned"] = true;
  return j;
}

Result<Message> message_from_json(const Json& j, std::string_view where) {
  if (!j.is_object()) return bad(where, "expected an object, got " + type_name(j));
  if (const Json* v = member(j, "v")) {
    auto version = integer(v);
    if (!version) return bad(path(where, "v"), "expected an integer, got " + quoted_value(*v));
    if (*version > kMessageJsonVersion || *version < 1) {
      return bad(path(where, "v"), "version " + std::to_string(*version) + " is not supported (this binary reads " +
                                       std::to_string(kMessageJsonVersion) + ")");
    }
  }
  Message m;
  auto role = string_field(j, where, "role", true);
  if (!role.ok()) return std::move(role).error();
  auto r = role_from(*role);
  if (!r) {
    return bad(path(where, "role"), "expected one of system, user, assistant, tool, got " + quoted_value(Json(*role)));
  }
  m.role = *r;

  if (const Json* content = member(j, "content")) {
    if (!content->is_array()) return bad(path(where, "content"), "expected an array, got " + type_name(*content));
    for (std::size_t i = 0; i < content->size(); ++i) {
      const Json& part = (*content)[i];
      const std::string at = path(where, "content[" + std::to_string(i) + "]");
      if (!part.is_object()) return bad(at, "expected an object, got " + type_name(part));
      auto type = string_field(part, at, "type", true);
      if (!type.ok()) return std::move(type).error();
      if (*type == "text") {
        auto text = string_field(part, at, "text", true);
        if (!text.ok()) return std::move(text).error();
        m.content.push_back(ContentPart::from_text(std::move(*text)));
      } else if (*type == "image_url") {
        auto url = string_field(part, at, "url", true);
        if (!url.ok()) return std::move(url).error();
        m.content.push_back(ContentPart::from_image_url(std::move(*url)));
      } else {
        return bad(path(at, "type"), "expected \"text\" or \"image_url\", got " + quoted_value(Json(*type)));
      }
    }
  }
  if (const Json* calls = member(j, "tool_calls")) {
    if (!calls->is_array()) return bad(path(where, "tool_calls"), "expected an array, got " + type_name(*calls));
    for (std::size_t i = 0; i < calls->size(); ++i) {
      const Json& c = (*calls)[i];
      const std::string at = path(where, "tool_calls[" + std::to_string(i) + "]");
      if (!c.is_object()) return bad(at, "expected an object, got " + type_name(c));
      auto id = string_field(c, at, "id", false);
      if (!id.ok()) return std::move(id).error();
      auto name = string_field(c, at, "name", true);
      if (!name.ok()) return std::move(name).error();
      auto args = string_field(c, at, "arguments", false);
      if (!args.ok()) return std::move(args).error();
      m.tool_calls.push_back(ToolCall{.id = std::move(*id),
                                      .name = std::move(*name),
                                      .arguments_json = args->empty() ? std::string("{}") : std::move(*args)});
    }
  }
  auto call_id = string_field(j, where, "tool_call_id", false);
  if (!call_id.ok()) return std::move(call_id).error();
  m.tool_call_id = std::move(*call_id);
  auto is_error = bool_field(j, where, "is_error");
  if (!is_error.ok()) return std::move(is_error).error();
  m.is_error = *is_error;
  auto pinned = bool_field(j, where, "pinned");
  if (!pinned.ok()) return std::move(pinned).error();
  m.pinned = *pinned;
  return m;
}

Result<Json> parse_for_decode(std::string_view text, std::string_view what) {
  if (!nesting_within(text, kMaxJsonDepth)) {
    return Error(ErrorKind::kInvalidArgument,
                 std::string(what) + ": not JSON: nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  }
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    std::string reason = e.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 3: ..." -> from "parse error".
    if (auto p = reason.find("] "); p != std::string::npos) reason = reason.substr(p + 2);
    return Error(ErrorKind::kInvalidArgument, std::string(what) + ": not JSON: " + reason);
  }
}

}  // namespace internal

std::string encode_message(const Message& message) { return internal::dump_json(internal::message_to_json(message)); }

Result<Message> decode_message(std::string_view json) {
  auto j = internal::parse_for_decode(json, "message JSON");
  if (!j.ok()) return std::move(j).error();
  return internal::message_from_json(*j, "");
}

}  // namespace nines::llm
