// nines/llm/codec.hpp: one model API's wire format, without the wire.
//
// A Codec turns a ChatRequest into the HTTP call to make (build_call), and what came back
// into a ChatResponse: a whole body (parse_response), or a stream of server-sent events fed
// one by one to a StreamAccumulator (start_stream). Failed HTTP responses become errors with
// the resilience kinds (map_error, errors.hpp). It does no I/O and reads no clock: the
// transport (net layer) moves the bytes, the caller passes "now".
//
//   auto codec = make_openai_codec({.base_url = "http://127.0.0.1:8000/v1"}).value();
//   HttpCall call = codec->build_call(request).value();       // POST call.body to call.url
//   ... status 200, whole body:   Result<ChatResponse> r = codec->parse_response(body);
//   ... status 200, SSE stream:   auto acc = codec->start_stream();
//                                 for each event: auto d = acc->on_event(name, data);
//                                                 if (!d.ok()) stop; print d->text;
//                                 at end of stream: Result<ChatResponse> r = acc->finish();
//   ... any other status:         ApiFailure f = codec->map_error(status, headers, body, now);
//
// Failures, and what the caller does with them:
//  - build_call: kInvalidArgument (empty model or messages; a tool schema that is not JSON).
//  - parse_response, on_event: a body or event that is not the expected JSON is kTransient
//    with is_malformed() true, and counted (malformed_count). An error object in a 2xx body
//    or an error event in a stream (Anthropic `error`, e.g. overloaded) is mapped like an HTTP
//    error (map_error with status 0: the error type decides the kind).
//  - finish: a stream that ended before its terminal event (OpenAI `data: [DONE]`, Anthropic
//    `message_stop`) is kTransient with is_truncated_stream() true, and counted
//    (truncated_count): never a success, however much text came before.
//  - Every error message is free of the API key (errors.hpp).
//
// Ownership and thread-safety: a Codec is immutable after creation except for its counters
// (atomics), so one codec may serve any number of threads at once. A StreamAccumulator
// belongs to one stream and one caller at a time; it keeps the codec's counters alive
// (shared), so it may outlive the codec.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/llm/message.hpp"
#include "nines/llm/wire.hpp"

namespace nines::llm {

// The model APIs nines speaks; each has a codec (make_openai_codec in openai.hpp,
// make_anthropic_codec in anthropic.hpp).
enum class Provider : std::uint8_t { kOpenAi, kAnthropic };

constexpr std::string_view to_string(Provider provider) {
  switch (provider) {
    case Provider::kOpenAi: return "openai";
    case Provider::kAnthropic: return "anthropic";
  }
  return "unknown";
}

// A mapped failure: the Error the policies act on, plus what the provider client needs to
// know beyond the kind.
struct ApiFailure {
  Error error;
  int status = 0;          // HTTP status (0: none, e.g. an error event inside a stream)
  bool auth = false;       // credential refused (401/403): open this provider's breaker,
                           // retrying or falling back with the same key cannot help
  bool quota = false;      // billing quota or spend limit (permanent 429)
  std::string error_type;  // the body's error type, e.g. "rate_limit_error" (may be empty)
  std::string error_code;  // the body's error code, e.g. "context_length_exceeded"
};

// What one stream event contributed.
struct StreamDelta {
  std::string text;   // assistant text this event added (often empty: tool-call pieces, pings)
  bool done = false;  // the terminal event arrived; finish() now gives the response
};

class StreamAccumulator {
 public:
  virtual ~StreamAccumulator() = default;

  // Feeds one server-sent event: its event name (empty when the stream names none, as
  // OpenAI's) and its data, as the SSE parser delivered them. After a failure every later
  // call returns the same error; events after the terminal one are ignored.
  virtual Result<StreamDelta> on_event(std::string_view event, std::string_view data) = 0;

  // The stream ended (the connection closed or the caller stopped reading). The complete
  // response if the terminal event arrived; otherwise the error that stopped the stream, or
  // a transient "[truncated]" error. May be called more than once.
  virtual Result<ChatResponse> finish() = 0;

  // True once the terminal event arrived.
  virtual bool done() const = 0;
};

class Codec {
 public:
  virtual ~Codec() = default;

  virtual Provider provider() const = 0;

  virtual Result<HttpCall> build_call(const ChatRequest& request) const = 0;
  virtual Result<ChatResponse> parse_response(std::string_view body) const = 0;
  virtual std::unique_ptr<StreamAccumulator> start_stream() const = 0;

  // map_api_error (errors.hpp) for this provider, with this codec's key redacted.
  virtual ApiFailure map_error(int status, const Headers& headers, std::string_view body, const Now& now) const = 0;

  // Bodies or events that were not the expected JSON, and streams that ended without their
  // terminal event, since the codec was created (its accumulators included).
  virtual std::uint64_t malformed_count() const = 0;
  virtual std::uint64_t truncated_count() const = 0;
};

}  // namespace nines::llm
