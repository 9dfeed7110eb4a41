// nines/workflow/codec.hpp: how a step's result becomes the bytes the store keeps, and back.
//
// A type T can be a step result when Codec<T> has
//   static std::string encode(const T& value);
//   static Result<T> decode(std::string_view bytes);   // kInvalidArgument if malformed
// and decode(encode(v)) == v. Provided here: std::string (the bytes themselves), bool,
// std::int64_t, int, double (round-trips exactly). Specialize Codec for your own types, for
// example with JSON text.
#pragma once

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <system_error>

#include "nines/core/result.hpp"

namespace nines {

template <class T>
struct Codec;

template <>
struct Codec<std::string> {
  static std::string encode(const std::string& v) { return v; }
  static Result<std::string> decode(std::string_view b) { return std::string(b); }
};

namespace internal {
template <class I>
Result<I> decode_integer(std::string_view b, const char* type) {
  I v{};
  auto [end, ec] = std::from_chars(b.data(), b.data() + b.size(), v);
  if (ec != std::errc() || end != b.data() + b.size() || b.empty()) {
    return Error(ErrorKind::kInvalidArgument,
                 std::string("codec: '") + std::string(b.substr(0, 32)) + "' is not a valid " + type);
  }
  return v;
}
}  // namespace internal

template <>
struct Codec<std::int64_t> {
  static std::string encode(std::int64_t v) { return std::to_string(v); }
  static Result<std::int64_t> decode(std::string_view b) { return internal::decode_integer<std::int64_t>(b, "int64"); }
};

template <>
struct Codec<int> {
  static std::string encode(int v) { return std::to_string(v); }
  static Result<int> decode(std::string_view b) { return internal::decode_integer<int>(b, "int"); }
};

template <>
struct Codec<bool> {
  static std::string encode(bool v) { return v ? "true" : "false"; }
  static Result<bool> decode(std::string_view b) {
    if (b == "true") return true;
    if (b == "false") return false;
    return Error(ErrorKind::kInvalidArgument, "codec: '" + std::string(b.substr(0, 32)) + "' is not a bool");
  }
};

template <>
struct Codec<double> {
  static std::string encode(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
  }
  static Result<double> decode(std::string_view b) {
    std::string s(b);
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size()) {
      return Error(ErrorKind::kInvalidArgument, "codec: '" + s.substr(0, 32) + "' is not a double");
    }
    return v;
  }
};

}  // namespace nines
