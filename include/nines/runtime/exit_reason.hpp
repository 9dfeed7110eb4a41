// nines/runtime/exit_reason.hpp: why a process exited, with OTP's meanings.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace nines {

struct ExitReason {
  enum class Kind : std::uint8_t {
    kNormal,    // finished its work; linked processes that do not trap exits ignore it
    kShutdown,  // asked to stop (by its supervisor); optional detail ({shutdown, Detail})
    kKill,      // only as a signal: untrappable; the target then exits with kKilled
    kKilled,    // died from a kill signal
    kCrash,     // an exception escaped the process: `type` is the exception's type
    kNoProc,    // the process did not exist (monitor/link of a dead pid)
  };

  Kind kind = Kind::kNormal;
  std::string detail;  // shutdown detail, or the crash's message
  std::string type;    // crash only: the exception type, e.g. "std::runtime_error"

  static ExitReason normal() { return {}; }
  static ExitReason shutdown(std::string detail = {}) { return {Kind::kShutdown, std::move(detail), {}}; }
  static ExitReason kill() { return {Kind::kKill, {}, {}}; }
  static ExitReason killed() { return {Kind::kKilled, {}, {}}; }
  static ExitReason crash(std::string type, std::string message) {
    return {Kind::kCrash, std::move(message), std::move(type)};
  }
  static ExitReason noproc() { return {Kind::kNoProc, {}, {}}; }

  bool is_normal() const { return kind == Kind::kNormal; }
  // OTP: normal, shutdown and {shutdown, _} are not failures (a transient child is not restarted).
  bool is_clean() const { return kind == Kind::kNormal || kind == Kind::kShutdown; }

  // "normal", "shutdown", "{shutdown, detail}", "killed", "noproc",
  // "crash: std::runtime_error: message".
  std::string to_string() const;

  friend bool operator==(const ExitReason&, const ExitReason&) = default;
};

std::string_view to_string(ExitReason::Kind kind);

}  // namespace nines
