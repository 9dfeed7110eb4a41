#include "nines/runtime/exit_reason.hpp"

namespace nines {

std::string_view to_string(ExitReason::Kind kind) {
  switch (kind) {
    case ExitReason::Kind::kNormal: return "normal";
    case ExitReason::Kind::kShutdown: return "shutdown";
    case ExitReason::Kind::kKill: return "kill";
    case ExitReason::Kind::kKilled: return "killed";
    case ExitReason::Kind::kCrash: return "crash";
    case ExitReason::Kind::kNoProc: return "noproc";
  }
  return "unknown";
}

std::string ExitReason::to_string() const {
  switch (kind) {
    case Kind::kShutdown: return detail.empty() ? "shutdown" : "{shutdown, " + detail + "}";
    case Kind::kCrash: return "crash: " + type + (detail.empty() ? "" : ": " + detail);
    default: return std::string(nines::to_string(kind));
  }
}

}  // namespace nines
