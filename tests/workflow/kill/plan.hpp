// The kill test's workflows: which of the 50 steps are plain steps and which are effects of
// which nature, derived from the workflow's number alone, so the worker, every restart of it
// and the checking test agree without sharing anything.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace nines::killtest {

inline constexpr int kSteps = 50;

inline std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// 'S' a plain step, 'I' idempotent, 'C' checkable, 'U' unsafe effect.
inline char op_type(int workflow, int step) {
  std::uint64_t r = mix(static_cast<std::uint64_t>(workflow) * 1000 + static_cast<std::uint64_t>(step)) % 100;
  if (r < 60) return 'S';
  if (r < 78) return 'I';
  if (r < 96) return 'C';
  return 'U';
}

inline std::string workflow_id(int workflow) { return "wf-" + std::to_string(workflow); }

// What a workflow's run returns when nothing goes wrong, given the idempotency key of each
// effect (by 0-based step; the engine derives keys from the workflow's creation time).
inline std::string expected_result(int workflow, const std::map<int, std::string>& keys) {
  std::string out;
  for (int s = 0; s < kSteps; ++s) {
    if (op_type(workflow, s) == 'S') {
      // Appended, not += "s" + std::to_string(...): g++ 12.2 at -O3 reports a false -Wrestrict
      // on that (tests/support/numbered.hpp says more).
      out += 's';
      out += std::to_string(s + 1);
    } else {
      auto it = keys.find(s);
      out += "applied:" + (it == keys.end() ? std::string("?") : it->second);
    }
    out += ';';
  }
  return out;
}

}  // namespace nines::killtest
