// nines/llm/errors.hpp: model API failures as resilience error kinds.
//
// map_api_error reads an HTTP status, the response headers and the body of the OpenAI Chat
// Completions API (and servers that copy it: vLLM, llama.cpp, Ollama) or of the Anthropic
// Messages API and says what kind of failure it is, so retry, breaker and router act on it.
// The table, with the documented facts behind each row, is in docs/llm.md:
//
//   401, 403                                  kPermanent, auth = true (open the breaker)
//   context too long (400 code/message, 413)  kContextOverflow
//   429 insufficient_quota (OpenAI),          kPermanent, quota = true
//   429 spend/credit limit (Anthropic)
//   429                                       kRateLimited, retry_at from the headers
//   408, 409, 5xx, 529                        kTransient
//   other 4xx (400, 402, 404, 422, ...)       kPermanent
//   header x-should-retry: true | false       overrides transient <-> permanent
//
// Retry time of a 429, first found wins: retry-after-ms (milliseconds), retry-after (seconds
// or an HTTP date), then the providers' reset headers: OpenAI x-ratelimit-reset-{requests,
// tokens} ("1s", "6m0s", "20ms"), Anthropic anthropic-ratelimit-*-reset (RFC 3339). Of the
// reset headers, those of a limit whose matching *-remaining header is "0" count; if none is
// at 0, all present count; the latest one is taken. A time in the past means "now".
//
// Secrets: error messages quote the provider's error message (it says what was wrong), but
// never a key: anything that looks like one (sk-..., sk-ant-..., Bearer ...) and the key the
// caller passes are replaced by "[redacted]". Headers are never quoted.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/llm/codec.hpp"  // Provider, ApiFailure
#include "nines/llm/wire.hpp"

namespace nines::llm {

// Maps a failed response (status outside 200..299, or an error object inside a 2xx body or
// a stream: pass status 0 and the error JSON; the kind then follows the error type). The
// body may be anything (HTML from a proxy, empty, truncated): the status decides then.
// api_key, when given, is redacted from every quoted text as well.
ApiFailure map_api_error(Provider provider, int status, const Headers& headers, std::string_view body, const Now& now,
                         std::string_view api_key = {});

// Whether an error came from map_api_error with auth = true, or is malformed (a body that
// was not the expected JSON, a stream without its terminal event counts separately: see
// is_truncated_stream). These read markers in the message ("[auth]", "[malformed]",
// "[truncated]"), so they survive with_context and encode_error/decode_error.
bool is_auth_failure(const Error& error);
bool is_malformed(const Error& error);
bool is_truncated_stream(const Error& error);

// A transient error for a body that is not the expected JSON; `what` says what was wrong
// (it is redacted). Carries the "[malformed]" marker.
Error malformed_error(Provider provider, std::string_view what, std::string_view api_key = {});

// Replaces every key-looking token (sk-..., sk-ant-..., "Bearer <token>") and every
// occurrence of api_key (if at least 8 characters) by "[redacted]".
std::string redact_secrets(std::string_view text, std::string_view api_key = {});

// Parsers for the time formats of the headers above; nullopt for anything malformed.
// "6m0s", "1s", "20ms", "1h2m3.5s", "0.5s", "250us" (Go's time.Duration format).
std::optional<Duration> parse_go_duration(std::string_view text);
// RFC 9110 HTTP date (IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT", and the obsolete
// RFC 850 and asctime forms): Unix seconds.
std::optional<std::int64_t> parse_http_date(std::string_view text);
// RFC 3339 date-time ("2024-05-01T12:00:30Z", "...30.25+02:00"): Unix nanoseconds.
std::optional<std::int64_t> parse_rfc3339(std::string_view text);

// The explicit "come back then" any response may carry: retry-after-ms (milliseconds), then
// Retry-After (seconds, or an HTTP date), as a time on now.monotonic's clock; nullopt if
// neither is there or parses. (Also used by the agent layer's HTTP tools.)
std::optional<TimePoint> retry_after_from_headers(const Headers& headers, const Now& now);

// The retry time a 429 response's headers give (rules above), if any.
std::optional<TimePoint> retry_time_from_headers(const Headers& headers, const Now& now);

}  // namespace nines::llm
