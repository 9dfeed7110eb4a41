// nines/llm/wire.hpp: what a provider codec hands to the HTTP transport and gets back.
//
// The codecs (openai.hpp, anthropic.hpp) do no I/O: they turn a ChatRequest into an
// HttpCall (URL, headers, JSON body) and turn what came back (a body, or server-sent events
// already split into event name + data by the SSE parser) into a ChatResponse or an Error.
// These are the plain types at that border; the transport adapts them to its own.
//
// Secrets: HttpCall::headers carries the API key. Never log an HttpCall or put its headers
// into an error; errors built by this layer never contain a key (errors.hpp).
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nines/core/time.hpp"

namespace nines::llm {

struct Header {
  std::string name;
  std::string value;
  friend bool operator==(const Header&, const Header&) = default;
};
using Headers = std::vector<Header>;

// The value of the first header named `name` (ASCII case-insensitive), if any.
std::optional<std::string_view> find_header(const Headers& headers, std::string_view name);

// One HTTP request to make: always a POST of a JSON body.
struct HttpCall {
  std::string url;
  Headers headers;  // includes the credential: never log
  std::string body;
  bool stream = false;  // the response is server-sent events
};

// "Now", read once by the caller from its Environment and passed in, so that turning a
// server's retry time ("retry-after: 30", an HTTP date, an RFC 3339 reset time) into a
// TimePoint is deterministic in tests: both clocks at the same instant.
struct Now {
  TimePoint monotonic;        // Environment::now()
  std::int64_t unix_time_ns;  // Environment::unix_time_ns()
};

}  // namespace nines::llm
