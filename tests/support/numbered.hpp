// numbered("f", 3) == "f3": the ids and texts tests make in loops.
//
// Why a helper and not "f" + std::to_string(i): g++ 12.2 (Debian 12's) at -O3 reports a false
// -Wrestrict ("__builtin_memcpy ... may overlap") inside libstdc++'s basic_string::_M_replace,
// which operator+(const char*, std::string&&) reaches through insert(0, ...), when the literal
// is one character; with -Werror the Release build fails. Appending to a string made from the
// prefix takes another path (_M_append) that does not trip it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace nines::test {

inline std::string numbered(std::string_view prefix, std::int64_t n) {
  std::string s(prefix);
  s += std::to_string(n);
  return s;
}

}  // namespace nines::test
