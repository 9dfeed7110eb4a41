// RFC 3339 UTC times with milliseconds for the API ("2026-12-04T22:31:07.123Z").
#pragma once

#include <cstdint>
#include <cstdio>
#include <ctime>
#include <string>

namespace nines::service::internal {

inline std::string format_unix_ns(std::int64_t ns) {
  if (ns < 0) ns = 0;
  const std::time_t secs = static_cast<std::time_t>(ns / 1'000'000'000);
  const int ms = static_cast<int>((ns / 1'000'000) % 1000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return buf;
}

}  // namespace nines::service::internal
