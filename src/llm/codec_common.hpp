// Internal: what the OpenAI and Anthropic codecs share.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/llm/codec.hpp"
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
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
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

// What both providers' stream accumulators share: the codec's counters, the key to redact,
// the response bound, and the error that ends the stream (kept: every later call returns it).
template <Provider kProvider>
class StreamBase : public StreamAccumulator {
 public:
  StreamBase(std::shared_ptr<CodecCounters> counters, std::string api_key, std::size_t max_bytes)
      : counters_(std::move(counters)), api_key_(std::move(api_key)), max_bytes_(max_bytes) {}

 protected:
  Error malformed(std::string_view what) {
    counters_->malformed.fetch_add(1, std::memory_order_relaxed);
    return malformed_error(kProvider, what, api_key_);
  }
  Result<StreamDelta> fail_malformed(std::string_view what) { return fail(malformed(what)); }
  Result<StreamDelta> fail(Error e) {
    error_ = e;
    return e;
  }

  std::shared_ptr<CodecCounters> counters_;
  std::string api_key_;
  std::size_t max_bytes_;
  std::optional<Error> error_;
};

// What every codec does the same way around its provider's wire format: the options (the
// base URL without trailing slashes), the malformed/truncated counters it shares with its
// streams, starting a stream, mapping an HTTP failure, counting a malformed body.
// Options needs base_url, api_key and max_response_bytes; Stream is constructed from
// (counters, api key, max bytes).
template <class Options, class Stream, Provider kProvider>
class CodecBase : public Codec {
 public:
  explicit CodecBase(Options o) : options_(std::move(o)) {
    options_.base_url = trim_slashes(std::move(options_.base_url));
  }

  Provider provider() const override { return kProvider; }

  std::unique_ptr<StreamAccumulator> start_stream() const override {
    return std::make_unique<Stream>(counters_, options_.api_key, options_.max_response_bytes);
  }

  ApiFailure map_error(int status, const Headers& headers, std::string_view body, const Now& now) const override {
    return map_api_error(kProvider, status, headers, body, now, options_.api_key);
  }

  std::uint64_t malformed_count() const override { return counters_->malformed.load(std::memory_order_relaxed); }
  std::uint64_t truncated_count() const override { return counters_->truncated.load(std::memory_order_relaxed); }

 protected:
  Error malformed(std::string_view what) const {
    counters_->malformed.fetch_add(1, std::memory_order_relaxed);
    return malformed_error(kProvider, what, options_.api_key);
  }

  Options options_;
  std::shared_ptr<CodecCounters> counters_ = std::make_shared<CodecCounters>();
};

}  // namespace nines::llm::internal
