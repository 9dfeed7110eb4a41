// Internal: what the OpenAI and Anthropic codecs share.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/llm/errors.hpp"

namespace nines::llm::internal {

// Shared by a codec and every accumulator it started, so either may outlive the other.
struct CodecCounters {
  std::atomic<std::uint64_t> malformed{0};
  std::atomic<std::uint64_t> truncated{0};
};

inline std::string trim_slashes(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

inline std::string_view trim_space(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) s.remove_suffix(1);
  return s;
}

// The transient error for a stream that ended before its terminal event.
inline Error truncated_error(Provider provider, std::string_view terminal, std::size_t events, std::size_t text_bytes) {
  std::string m(to_string(provider));
  m.append(": [truncated] the stream ended before ")
      .append(terminal)
      .append(" (")
      .append(std::to_string(events))
      .append(" events, ")
      .append(std::to_string(text_bytes))
      .append(" bytes of text received): the answer is incomplete");
  return Error(ErrorKind::kTransient, std::move(m));
}

inline Error invalid_argument(std::string message) { return Error(ErrorKind::kInvalidArgument, std::move(message)); }

}  // namespace nines::llm::internal
