// Shared by the nines side of every bench/peers/* benchmark: one JSON line per metric,
// {"bench": ..., "system": "nines", "metric": ..., "value": ..., "unit": ...}, flushed at once
// so a harness reading the pipe sees each result as soon as it is measured.
#pragma once

#include <cstdio>

namespace nines::bench {

inline void emit(const char* bench, const char* metric, double value, const char* unit) {
  std::printf("{\"bench\":\"%s\",\"system\":\"nines\",\"metric\":\"%s\",\"value\":%.6g,\"unit\":\"%s\"}\n", bench,
              metric, value, unit);
  std::fflush(stdout);
}

}  // namespace nines::bench
