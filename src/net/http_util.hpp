// Small text helpers of the net layer's HTTP code (client and server). Internal.
#pragma once

#include <cstring>
#include <string_view>

#include "core/ascii.hpp"

namespace nines::net::internal {

using ::nines::internal::ascii_lower;
using ::nines::internal::iequals;

// Without leading spaces/tabs and trailing spaces/tabs/CR/LF.
inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

// An RFC 9110 token (methods, header names).
inline bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c <= 32 || c >= 127 || std::strchr("\"(),/:;<=>?@[\\]{}", c) != nullptr) return false;
  }
  return true;
}

}  // namespace nines::net::internal
