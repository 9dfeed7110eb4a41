// nines/runtime/pid.hpp: process identifiers and references.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <string>

namespace nines {

// Identifies one process of one runtime for its whole life; never reused. Pid{} (0) is "no
// process" (for example the sender of a message sent from outside the runtime).
struct Pid {
  std::uint64_t id = 0;
  bool valid() const { return id != 0; }
  explicit operator bool() const { return valid(); }
  friend auto operator<=>(const Pid&, const Pid&) = default;
  std::string to_string() const { return "<0." + std::to_string(id) + ">"; }
};

// Identifies one monitor (each monitor() call gives a new one).
struct MonitorRef {
  std::uint64_t id = 0;
  friend auto operator<=>(const MonitorRef&, const MonitorRef&) = default;
};

// Identifies one timer started by send_after.
struct TimerRef {
  std::uint64_t id = 0;
  friend auto operator<=>(const TimerRef&, const TimerRef&) = default;
};

}  // namespace nines

template <>
struct std::hash<nines::Pid> {
  std::size_t operator()(const nines::Pid& p) const noexcept { return std::hash<std::uint64_t>{}(p.id); }
};
