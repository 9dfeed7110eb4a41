// Names of the fault points (the list and what each stands for: nines/core/fault.hpp).
#include "nines/core/fault.hpp"

#include <cstdlib>
#include <string>

namespace nines {

namespace {
constexpr std::array<std::string_view, kFaultPointCount> kNames = {
    "store_commit_fail", "store_commit_slow", "committer_crash", "timer_late",
    "mailbox_full",      "http_stall",        "http_reset",
};
}  // namespace

std::string_view to_string(FaultPoint point) {
  const auto i = static_cast<std::size_t>(point);
  return i < kNames.size() ? kNames[i] : "unknown";
}

std::optional<FaultPoint> parse_fault_point(std::string_view name) {
  for (std::size_t i = 0; i < kNames.size(); ++i) {
    if (kNames[i] == name) return static_cast<FaultPoint>(i);
  }
  return std::nullopt;
}

Result<FaultOptions> parse_fault_options(std::string_view spec) {
  FaultOptions o;
  while (!spec.empty()) {
    std::size_t comma = spec.find(',');
    std::string_view item = spec.substr(0, comma);
    spec = comma == std::string_view::npos ? std::string_view() : spec.substr(comma + 1);
    if (item.empty()) continue;
    auto bad = [&] {
      return Error(ErrorKind::kInvalidArgument,
                   "fault options: '" + std::string(item) + "' is not <fault point>=<probability in [0, 1]>");
    };
    std::size_t eq = item.find('=');
    if (eq == std::string_view::npos) return bad();
    std::string_view name = item.substr(0, eq);
    std::optional<FaultPoint> point = parse_fault_point(name);
    if (!point && name != "all") return bad();
    const std::string value(item.substr(eq + 1));
    char* end = nullptr;
    const double p = std::strtod(value.c_str(), &end);
    if (value.empty() || end != value.c_str() + value.size() || !(p >= 0 && p <= 1)) return bad();
    if (point) {
      o.set(*point, p);
    } else {
      o.probability.fill(p);
    }
  }
  return o;
}

}  // namespace nines
