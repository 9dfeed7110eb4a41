// Internal: reading untrusted response bodies with simdjson's DOM parser, the fast path of the
// codecs' response parsing (a model call's answer is parsed once per call: with nlohmann's
// DOM that was ~10% of a call's CPU at 1,000 calls in flight, bench/README.md). The same
// no-throw helpers as json_util.hpp (member, str, integer, count), over simdjson elements.
// simdjson.h is large: include this header from .cpp files that parse on the hot path only.
#pragma once

#include <simdjson.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "llm/json_util.hpp"

namespace nines::llm::internal {

using Element = simdjson::dom::element;

// Parses `text` into a document and calls fn(root) with it; returns false (without calling
// fn) if `text` is not JSON (syntax, invalid UTF-8) or nests deeper than kMaxJsonDepth. The
// elements fn sees live until fn returns. One parser per thread is reused (its buffers grow to
// the largest document it parsed, up to kReusedCapacity; a larger document gets a parser of
// its own, freed after). fn must not parse again on this thread.
template <typename Fn>
bool with_parsed_json(std::string_view text, Fn&& fn) {
  static constexpr std::size_t kReusedCapacity = 1u << 20;
  struct Reused {
    simdjson::dom::parser parser{kReusedCapacity};
    bool in_use = false;
    bool ready = false;
  };
  thread_local Reused reused;
  auto run = [&](simdjson::dom::parser& p) {
    Element root;
    if (p.parse(text.data(), text.size(), /*realloc_if_needed=*/true).get(root) != simdjson::SUCCESS) return false;
    fn(root);
    return true;
  };
  if (text.size() > kReusedCapacity || reused.in_use) {
    simdjson::dom::parser own(text.size() + 1);
    if (own.allocate(text.size() + 1, kMaxJsonDepth) != simdjson::SUCCESS) return false;
    return run(own);
  }
  if (!reused.ready) {
    // The depth bound is set once: later growth (ensure_capacity) keeps max_depth().
    if (reused.parser.allocate(4096, kMaxJsonDepth) != simdjson::SUCCESS) return false;
    reused.ready = true;
  }
  reused.in_use = true;
  const bool parsed = run(reused.parser);
  reused.in_use = false;
  return parsed;
}

// Member `key` of an object, or nullopt (also when e is not an object). Of duplicate keys,
// the first.
inline std::optional<Element> member(Element e, std::string_view key) {
  simdjson::dom::object o;
  if (e.get(o) != simdjson::SUCCESS) return std::nullopt;
  Element v;
  if (o.at_key(key).get(v) != simdjson::SUCCESS) return std::nullopt;
  return v;
}
inline std::optional<Element> member(const std::optional<Element>& e, std::string_view key) {
  return e ? member(*e, key) : std::nullopt;
}

// The string value, or empty if absent or not a string.
inline std::string_view str(const std::optional<Element>& e) {
  std::string_view s;
  if (!e || e->get(s) != simdjson::SUCCESS) return {};
  return s;
}

// An integer value (a float with an integral value counts), or nullopt.
inline std::optional<std::int64_t> integer(const std::optional<Element>& e) {
  if (!e) return std::nullopt;
  switch (e->type()) {
    case simdjson::dom::element_type::INT64: {
      std::int64_t v = 0;
      if (e->get(v) != simdjson::SUCCESS) return std::nullopt;
      return v;
    }
    case simdjson::dom::element_type::UINT64: {
      std::uint64_t v = 0;
      if (e->get(v) != simdjson::SUCCESS || v > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
      return static_cast<std::int64_t>(v);
    }
    case simdjson::dom::element_type::DOUBLE: {
      double d = 0;
      if (e->get(d) != simdjson::SUCCESS) return std::nullopt;
      if (d >= -9.0e18 && d <= 9.0e18 && static_cast<double>(static_cast<std::int64_t>(d)) == d) {
        return static_cast<std::int64_t>(d);
      }
      return std::nullopt;
    }
    default: return std::nullopt;
  }
}

// A token count: a non-negative integer, else 0.
inline std::int64_t count(const std::optional<Element>& e) {
  auto v = integer(e);
  return v && *v > 0 ? *v : 0;
}

// The element as compact JSON text.
inline std::string minified(Element e) { return simdjson::minify(e); }

// Writing request bodies without building a document first (nlohmann's DOM cost ~3% of a
// call's CPU and ~25 allocations, bench/README.md): `s` as a JSON string, quoted, appended to
// `out`. The escapes are nlohmann's (\" \\ \b \f \n \r \t, \u00XX for other control
// characters; other bytes as they are). Invalid UTF-8 is replaced (U+FFFD), as dump_json does.
inline void append_json_string(std::string& out, std::string_view s) {
  if (!simdjson::validate_utf8(s.data(), s.size())) {
    out += dump_json(Json(std::string(s)));  // rare: nlohmann replaces what is invalid
    return;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t run = 0;  // start of the bytes not yet copied
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default: {
        const char esc[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
        out.append(esc, sizeof esc);
      }
    }
  }
  out.append(s.data() + run, s.size() - run);
  out.push_back('"');
}

// A number as JSON (the shortest text that reads back as the same double); null when it is
// not finite, as nlohmann writes it.
inline void append_json_number(std::string& out, double v) {
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, ec == std::errc() ? end : buf);
}
inline void append_json_number(std::string& out, std::int64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, ec == std::errc() ? end : buf);
}

}  // namespace nines::llm::internal
