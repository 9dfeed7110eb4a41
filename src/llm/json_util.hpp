// Internal: small no-throw helpers over nlohmann::json for reading untrusted bodies.
// Never included by a public header (nlohmann stays out of include/nines).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace nines::llm::internal {

using Json = nlohmann::json;

// Deeper documents are refused: serializing one recurses once per level, and no model API
// nests anywhere near this deep.
inline constexpr int kMaxJsonDepth = 256;

// Whether the brackets of `text` (outside strings) nest at most max_depth deep.
inline bool nesting_within(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// The parsed document, or nullopt if `text` is not JSON or nests deeper than kMaxJsonDepth.
// Never throws.
inline std::optional<Json> parse_json(std::string_view text) {
  if (!nesting_within(text, kMaxJsonDepth)) return std::nullopt;
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

// Serializes; invalid UTF-8 in strings is replaced rather than thrown on.
inline std::string dump_json(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// Member `key` of an object, or nullptr (also when j is not an object).
inline const Json* member(const Json& j, std::string_view key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}
inline const Json* member(const Json* j, std::string_view key) { return j ? member(*j, key) : nullptr; }

// The string value, or empty if absent or not a string.
inline std::string_view str(const Json* j) {
  if (!j || !j->is_string()) return {};
  return j->get_ref<const std::string&>();
}

// An integer value (a float with an integral value counts), or nullopt.
inline std::optional<std::int64_t> integer(const Json* j) {
  if (!j) return std::nullopt;
  if (j->is_number_unsigned()) {
    auto v = j->get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<std::int64_t>(v);
  }
  if (j->is_number_integer()) return j->get<std::int64_t>();
  if (j->is_number_float()) {
    double d = j->get<double>();
    if (d >= -9.0e18 && d <= 9.0e18 && static_cast<double>(static_cast<std::int64_t>(d)) == d) {
      return static_cast<std::int64_t>(d);
    }
  }
  return std::nullopt;
}

// A token count: a non-negative integer, else 0.
inline std::int64_t count(const Json* j) {
  auto v = integer(j);
  return v && *v > 0 ? *v : 0;
}

}  // namespace nines::llm::internal
