// Names of the fault points (the list and what each stands for: nines/core/fault.hpp).
#include "nines/core/fault.hpp"

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

}  // namespace nines
