// Error mapping (errors.hpp): every row of the table in docs/llm.md, from fixtures of both
// APIs' error bodies, the retry-time headers in all their forms, and key redaction.
#include "nines/llm/errors.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "llm/fixtures.hpp"
#include "nines/resilience/classify.hpp"
#include "support/status_matchers.hpp"

namespace nines::llm {
namespace {
using ::nines::test::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

using test::fixture;

// 2023-11-14T22:13:20Z, a Tuesday.
constexpr std::int64_t kUnixNow = 1'700'000'000;
const Now kNow{.monotonic = TimePoint(1000s), .unix_time_ns = kUnixNow * 1'000'000'000};

ApiFailure openai(int status, std::string_view body, const Headers& headers = {}) {
  return map_api_error(Provider::kOpenAi, status, headers, body, kNow);
}
ApiFailure anthropic(int status, std::string_view body, const Headers& headers = {}) {
  return map_api_error(Provider::kAnthropic, status, headers, body, kNow);
}

// --- 429: rate limited, with the retry time from the headers ---------------------------------

TEST(ErrorMapping, RateLimitedWithoutRetryHintHasNoRetryTime) {
  ApiFailure f = anthropic(429, fixture("anthropic/error_rate_limit.json"));
  EXPECT_THAT(f.error, StatusIs(ErrorKind::kRateLimited));
  EXPECT_FALSE(f.error.retry_at().has_value());
  EXPECT_FALSE(f.auth);
  EXPECT_FALSE(f.quota);
  EXPECT_EQ(f.error_type, "rate_limit_error");
  EXPECT_THAT(f.error.message(),
              HasSubstr("anthropic: http 429 rate limited: rate_limit_error: This request would exceed"));
  EXPECT_THAT(f.error.message(), HasSubstr("(request req_011CSHoEeqs5C35K2UUqR7Fa)"));
}

TEST(ErrorMapping, RetryAfterMsIsMilliseconds) {
  ApiFailure f = openai(429, "{}", {{"retry-after-ms", "1500"}});
  EXPECT_THAT(f.error, StatusIs(ErrorKind::kRateLimited));
  EXPECT_EQ(f.error.retry_at(), kNow.monotonic + 1500ms);
}

TEST(ErrorMapping, RetryAfterMsWinsOverRetryAfter) {
  ApiFailure f = openai(429, "{}", {{"Retry-After", "30"}, {"Retry-After-Ms", "250.5"}});
  EXPECT_EQ(f.error.retry_at(), kNow.monotonic + 250500us);
}

TEST(ErrorMapping, RetryAfterSeconds) {
  ApiFailure f = anthropic(429, fixture("anthropic/error_rate_limit.json"), {{"retry-after", "30"}});
  EXPECT_EQ(f.error.retry_at(), kNow.monotonic + 30s);
}

TEST(ErrorMapping, RetryAfterHttpDate) {
  // 45 s after kUnixNow.
  ApiFailure f = openai(429, "{}", {{"retry-after", "Tue, 14 Nov 2023 22:14:05 GMT"}});
  EXPECT_EQ(f.error.retry_at(), kNow.monotonic + 45s);
}

TEST(ErrorMapping, RetryAfterHttpDateInThePastMeansNow) {
  ApiFailure f = openai(429, "{}", {{"retry-after", "Tue, 14 Nov 2023 22:00:00 GMT"}});
  EXPECT_EQ(f.error.retry_at(), kNow.monotonic);
}

TEST(ErrorMapping, RetryAfterWinsOverResetHeaders) {
  ApiFailure f = anthropic(429, "{}",
                           {{"anthropic-ratelimit-tokens-reset", "2023-11-14T22:15:00Z"},
                            {"anthropic-ratelimit-tokens-remaining", "0"},
                            {"retry-after", "7"}});
  EXPECT_EQ(f.error.retry_at(), kNow.monotonic + 7s);
}

TEST(ErrorMapping, OpenAiResetOfTheExhaustedLimit) {
  // Tokens ran out (remaining 0): their reset counts, not the requests' one.
  ApiFailure f = openai(429, fixture("openai/error_rate_limit.json"),
                        {{"x-ratelimit-limit-requests", "60"},
                         {"x-ratelimit-remaining-requests", "59"},
                         {"x-ratelimit-reset-requests", "1s"},
                         {"x-ratelimit-remaining-tokens", "0"},
                         {"x-ratelimit-reset-tokens", "6m0s"}});
  EXPECT_THAT(f.error, StatusIs(ErrorKind::kRateLimited));
  EXPECT_EQ(f.error.retry_at(), kNow.monotonic + 6min);
}

TEST(ErrorMapping, OpenAiResetLatestWhenNoLimitIsAtZero) {
  ApiFailure f = openai(429, "{}", {{"x-ratelimit-reset-requests", "20ms"}, {"x-ratelimit-reset-tokens", "1.5s"}});
  EXPECT_EQ(f.error.retry_at(), kNow.monotonic + 1500ms);
}

TEST(ErrorMapping, AnthropicResetIsAnRfc3339Time) {
  ApiFailure f = anthropic(429, fixture("anthropic/error_rate_limit.json"),
                           {{"anthropic-ratelimit-requests-remaining", "12"},
                            {"anthropic-ratelimit-requests-reset", "2023-11-14T22:13:21Z"},
                            {"anthropic-ratelimit-input-tokens-remaining", "0"},
                            {"anthropic-ratelimit-input-tokens-reset", "2023-11-14T23:13:50+01:00"}});
  EXPECT_EQ(f.error.retry_at(), kNow.monotonic + 30s);
}

TEST(ErrorMapping, OpenAiTryAgainInMessageWhenNoHeaders) {
  ApiFailure f = openai(429, fixture("openai/error_rate_limit.json"));
  EXPECT_THAT(f.error, StatusIs(ErrorKind::kRateLimited));
  EXPECT_EQ(f.error.retry_at(), kNow.monotonic + 1800ms);
  EXPECT_EQ(f.error_code, "rate_limit_exceeded");
}

TEST(ErrorMapping, UnparseableRetryHeadersAreIgnored) {
  ApiFailure f = openai(429, "{}",
                        {{"retry-after-ms", "soon"},
                         {"retry-after", "-5"},
                         {"x-ratelimit-reset-tokens", "6 minutes"},
                         {"anthropic-ratelimit-tokens-reset", "tomorrow"}});
  EXPECT_THAT(f.error, StatusIs(ErrorKind::kRateLimited));
  EXPECT_FALSE(f.error.retry_at().has_value());
}

// --- 429s that waiting cannot fix ------------------------------------------------------------

TEST(ErrorMapping, OpenAiInsufficientQuotaIsPermanent) {
  ApiFailure f = openai(429, fixture("openai/error_insufficient_quota.json"), {{"retry-after", "1"}});
  EXPECT_THAT(f.error, StatusIs(ErrorKind::kPermanent));
  EXPECT_TRUE(f.quota);
  EXPECT_FALSE(f.auth);
  EXPECT_FALSE(f.error.retry_at().has_value());
  EXPECT_FALSE(is_retryable(f.error.kind()));
}

TEST(ErrorMapping, AnthropicSpendLimitIsPermanent) {
  ApiFailure f = anthropic(429, fixture("anthropic/error_spend_limit.json"));
  EXPECT_THAT(f.error, StatusIs(ErrorKind::kPermanent));
  EXPECT_TRUE(f.quota);
  for (std::string_view message :
       {"Your credit balance is too low to access the Anthropic API.", "You have exceeded your spend limit.",
        "Usage credits are required for long context requests."}) {
    std::string body =
        R"({"type":"error","error":{"type":"rate_limit_error","message":")" + std::string(message) + "\"}}";
    EXPECT_THAT(anthropic(429, body).error, StatusIs(ErrorKind::kPermanent)) << message;
  }
}

// --- transient -------------------------------------------------------------------------------

TEST(ErrorMapping, TimeoutConflictServerErrorsAndOverloadAreTransient) {
  for (int status : {408, 409, 500, 502, 503, 504, 520, 529}) {
    EXPECT_THAT(openai(status, "").error, StatusIs(ErrorKind::kTransient)) << status;
    EXPECT_THAT(anthropic(status, "").error, StatusIs(ErrorKind::kTransient)) << status;
  }
  ApiFailure overloaded = anthropic(529, fixture("anthropic/error_overloaded.json"));
  EXPECT_THAT(overloaded.error, StatusIs(ErrorKind::kTransient));
  EXPECT_EQ(overloaded.error.message(),
            "anthropic: http 529 overloaded: overloaded_error: Overloaded (request req_011CSHoEeqs5C35K2UUqR7Fb)");
  EXPECT_THAT(anthropic(500, fixture("anthropic/error_api.json")).error, StatusIs(ErrorKind::kTransient));
  EXPECT_THAT(openai(500, fixture("openai/error_server.json")).error, StatusIs(ErrorKind::kTransient));
}

TEST(ErrorMapping, TransientKeepsRetryAfterButNotResetHeaders) {
  ApiFailure with = anthropic(503, "", {{"retry-after", "12"}});
  EXPECT_EQ(with.error.retry_at(), kNow.monotonic + 12s);
  // OpenAI sends its reset headers with every response: a 500 is not about them.
  ApiFailure without = openai(500, "", {{"x-ratelimit-reset-tokens", "6m0s"}, {"x-ratelimit-remaining-tokens", "0"}});
  EXPECT_FALSE(without.error.retry_at().has_value());
}

TEST(ErrorMapping, NonJsonBodyIsQuotedRedactedAndBounded) {
  std::string html = "<html><body><h1>502 Bad Gateway</h1>" + std::string(5000, 'x') + "</body></html>";
  ApiFailure f = openai(502, html);
  EXPECT_THAT(f.error, StatusIs(ErrorKind::kTransient,
                                HasSubstr("openai: http 502 server error: body: <html><body><h1>502 Bad Gateway")));
  EXPECT_LT(f.error.message().size(), 600u);
  EXPECT_THAT(openai(503, "").error.message(), HasSubstr("(empty body)"));
}

// --- context overflow ------------------------------------------------------------------------

TEST(ErrorMapping, ContextOverflowOfBothApis) {
  ApiFailure o = openai(400, fixture("openai/error_context_length.json"));
  EXPECT_THAT(o.error, StatusIs(ErrorKind::kContextOverflow));
  EXPECT_EQ(o.error_code, "context_length_exceeded");
  ApiFailure a = anthropic(400, fixture("anthropic/error_prompt_too_long.json"));
  EXPECT_THAT(a.error,
              StatusIs(ErrorKind::kContextOverflow, HasSubstr("prompt is too long: 208473 tokens > 200000 maximum")));
  // Not retryable as is: the router compacts or falls back instead.
  EXPECT_FALSE(is_retryable(ErrorKind::kContextOverflow));
}

TEST(ErrorMapping, ContextOverflowOfCompatibleServers) {
  // vLLM (flat error object, status in "code"), llama.cpp server, Anthropic's max_tokens form.
  EXPECT_THAT(
      openai(
          400,
          R"({"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion).","type":"BadRequestError","param":null,"code":400})")
          .error,
      StatusIs(ErrorKind::kContextOverflow));
  EXPECT_THAT(
      openai(
          400,
          R"({"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":9000,"n_ctx":8192}})")
          .error,
      StatusIs(ErrorKind::kContextOverflow));
  EXPECT_THAT(
      anthropic(
          400,
          R"({"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000, decrease input length or `max_tokens` and try again"}})")
          .error,
      StatusIs(ErrorKind::kContextOverflow));
  // 413: the request is too large in bytes; a shorter prompt is the fix too.
  EXPECT_THAT(
      anthropic(
          413,
          R"({"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}})")
          .error,
      StatusIs(ErrorKind::kContextOverflow));
}

// --- other 4xx: permanent; 401/403: permanent and auth -----------------------------------------

TEST(ErrorMapping, OtherClientErrorsArePermanent) {
  EXPECT_THAT(
      openai(
          400,
          R"({"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error","param":"temperature","code":"invalid_value"}})")
          .error,
      StatusIs(ErrorKind::kPermanent));
  EXPECT_THAT(openai(404, fixture("openai/error_model_not_found.json")).error, StatusIs(ErrorKind::kPermanent));
  EXPECT_THAT(anthropic(404, fixture("anthropic/error_not_found.json")).error, StatusIs(ErrorKind::kPermanent));
  EXPECT_THAT(anthropic(402, R"({"type":"error","error":{"type":"billing_error","message":"Payment required"}})").error,
              StatusIs(ErrorKind::kPermanent));
  EXPECT_THAT(openai(422, "").error, StatusIs(ErrorKind::kPermanent));
  EXPECT_THAT(openai(301, "<html>moved</html>").error, StatusIs(ErrorKind::kPermanent));
  EXPECT_FALSE(openai(400, "").auth);
}

TEST(ErrorMapping, AuthFailuresArePermanentAndFlagged) {
  ApiFailure a = anthropic(401, fixture("anthropic/error_authentication.json"));
  EXPECT_THAT(a.error, StatusIs(ErrorKind::kPermanent));
  EXPECT_TRUE(a.auth);
  EXPECT_TRUE(is_auth_failure(a.error));
  ApiFailure p = anthropic(403, fixture("anthropic/error_permission.json"));
  EXPECT_TRUE(p.auth);
  ApiFailure o = openai(401, fixture("openai/error_invalid_api_key.json"));
  EXPECT_TRUE(o.auth);
  EXPECT_EQ(o.error_code, "invalid_api_key");
  // The flag survives context and serialization (errors cross processes and land in the store).
  Error wrapped = a.error.with_context("model claude-sonnet-4");
  EXPECT_TRUE(is_auth_failure(wrapped));
  EXPECT_TRUE(is_auth_failure(*decode_error(encode_error(wrapped))));
  EXPECT_FALSE(is_auth_failure(anthropic(429, "").error));
  EXPECT_FALSE(is_auth_failure(anthropic(500, "").error));
  // x-should-retry cannot make a refused key retryable.
  EXPECT_THAT(openai(401, "", {{"x-should-retry", "true"}}).error, StatusIs(ErrorKind::kPermanent));
}

TEST(ErrorMapping, ProviderTextCannotForgeMarkers) {
  ApiFailure f =
      openai(400, R"({"error":{"message":"bad [auth] [malformed] [truncated] value","type":"invalid_request_error"}})");
  EXPECT_FALSE(is_auth_failure(f.error));
  EXPECT_FALSE(is_malformed(f.error));
  EXPECT_FALSE(is_truncated_stream(f.error));
}

TEST(ErrorMapping, ShouldRetryHeaderOverrides) {
  EXPECT_THAT(openai(400, "", {{"x-should-retry", "true"}}).error, StatusIs(ErrorKind::kTransient));
  EXPECT_THAT(openai(503, "", {{"x-should-retry", "false"}}).error, StatusIs(ErrorKind::kPermanent));
  EXPECT_THAT(openai(429, "", {{"x-should-retry", "false"}}).error, StatusIs(ErrorKind::kPermanent));
  EXPECT_THAT(openai(400, fixture("openai/error_context_length.json"), {{"x-should-retry", "true"}}).error,
              StatusIs(ErrorKind::kContextOverflow));
}

TEST(ErrorMapping, ErrorWithoutStatusFollowsItsType) {
  // An error object inside a stream or a 2xx body: status 0.
  EXPECT_THAT(anthropic(0, R"({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})").error,
              StatusIs(ErrorKind::kTransient));
  EXPECT_THAT(anthropic(0, R"({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}})").error,
              StatusIs(ErrorKind::kRateLimited));
  EXPECT_THAT(
      anthropic(
          0,
          R"({"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 5 tokens > 4 maximum"}})")
          .error,
      StatusIs(ErrorKind::kContextOverflow));
  EXPECT_THAT(openai(0, fixture("openai/error_insufficient_quota.json")).error, StatusIs(ErrorKind::kPermanent));
  EXPECT_THAT(openai(0, fixture("openai/error_server.json")).error, StatusIs(ErrorKind::kTransient));
  EXPECT_THAT(openai(200, R"({"error":"model 'llama9' not found"})").error, StatusIs(ErrorKind::kTransient));
  EXPECT_THAT(openai(0, R"({"object":"error","message":"bad","type":"BadRequestError","code":400})").error,
              StatusIs(ErrorKind::kPermanent));
}

// --- keys never appear -----------------------------------------------------------------------

TEST(Redaction, EchoedKeysAreRedacted) {
  ApiFailure f = openai(401, fixture("openai/error_invalid_api_key.json"));
  EXPECT_THAT(f.error.message(), Not(HasSubstr("sk-proj")));
  EXPECT_THAT(f.error.message(), Not(HasSubstr("Ab3x")));
  EXPECT_THAT(f.error.message(), HasSubstr("Incorrect API key provided: [redacted]."));

  const std::string key = "sk-ant-api03-R2D2C3PO_abcdefghijklmnopqrstuvwxyz0123456789-AAAA";
  std::string body =
      R"({"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key )" + key + "\"}}";
  ApiFailure a = anthropic(401, body);
  EXPECT_THAT(a.error.message(), Not(HasSubstr("R2D2C3PO")));
}

TEST(Redaction, TheCallersKeyIsRedactedWhateverItLooksLike) {
  const std::string key = "vllm-token-9f8e7d6c5b4a";
  ApiFailure f = map_api_error(Provider::kOpenAi, 401, {},
                               R"({"error":{"message":"bad token vllm-token-9f8e7d6c5b4a","type":"auth"}})", kNow, key);
  EXPECT_THAT(f.error.message(), Not(HasSubstr(key)));
  // Also in non-JSON bodies and request ids.
  ApiFailure g = map_api_error(Provider::kOpenAi, 500, {{"x-request-id", key}}, "proxy says " + key, kNow, key);
  EXPECT_THAT(g.error.message(), Not(HasSubstr(key)));
}

TEST(Redaction, Patterns) {
  EXPECT_EQ(redact_secrets("key sk-abcdef123456 end"), "key [redacted] end");
  EXPECT_EQ(redact_secrets("(sk-ant-api03-xyz_ABC-123456)"), "([redacted])");
  EXPECT_EQ(redact_secrets("Authorization: Bearer eyJhbGciOi.J9x/+=="), "Authorization: Bearer [redacted]");
  EXPECT_EQ(redact_secrets("a task-based desk-side sk-1 plan"), "a task-based desk-side sk-1 plan");
  EXPECT_EQ(redact_secrets("my secret is hunter2hunter2!", "hunter2hunter2"), "my secret is [redacted]!");
  EXPECT_EQ(redact_secrets("short key abc", "abc"), "short key abc");  // < 8 characters: not a key
}

TEST(Malformed, MarkerAndKind) {
  Error e = malformed_error(Provider::kAnthropic, "not JSON near sk-abcdefghijkl");
  EXPECT_THAT(e, StatusIs(ErrorKind::kTransient));
  EXPECT_TRUE(is_malformed(e));
  EXPECT_THAT(e.message(), Not(HasSubstr("sk-abcdefghijkl")));
}

// --- time formats ----------------------------------------------------------------------------

TEST(TimeFormats, GoDurations) {
  EXPECT_EQ(parse_go_duration("1s"), Duration(1s));
  EXPECT_EQ(parse_go_duration("6m0s"), Duration(6min));
  EXPECT_EQ(parse_go_duration("20ms"), Duration(20ms));
  EXPECT_EQ(parse_go_duration("1h2m3.5s"), Duration(1h + 2min + 3500ms));
  EXPECT_EQ(parse_go_duration("0.5s"), Duration(500ms));
  EXPECT_EQ(parse_go_duration("250us"), Duration(250us));
  EXPECT_EQ(parse_go_duration("7ns"), Duration(7ns));
  EXPECT_EQ(parse_go_duration("0"), Duration(0));
  for (std::string_view bad : {"", "s", "5", "5x", "-1s", "1s2", "1..5s", "1e3s", "99999999999h"}) {
    EXPECT_EQ(parse_go_duration(bad), std::nullopt) << bad;
  }
}

TEST(TimeFormats, HttpDates) {
  EXPECT_EQ(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777);
  EXPECT_EQ(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), 784111777);
  EXPECT_EQ(parse_http_date("Sun Nov  6 08:49:37 1994"), 784111777);
  EXPECT_EQ(parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT"), kUnixNow);
  for (std::string_view bad : {"", "30", "Sun, 06 Nov 1994 08:49:37", "Sun, 32 Nov 1994 08:49:37 GMT",
                               "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 25:49:37 GMT"}) {
    EXPECT_EQ(parse_http_date(bad), std::nullopt) << bad;
  }
}

TEST(TimeFormats, Rfc3339) {
  const std::int64_t s = 1'000'000'000;
  EXPECT_EQ(parse_rfc3339("2023-11-14T22:13:20Z"), kUnixNow * s);
  EXPECT_EQ(parse_rfc3339("2023-11-14T22:13:20.25Z"), kUnixNow * s + 250'000'000);
  EXPECT_EQ(parse_rfc3339("2023-11-15T00:13:20+02:00"), kUnixNow * s);
  EXPECT_EQ(parse_rfc3339("2023-11-14T17:13:20-05:00"), kUnixNow * s);
  for (std::string_view bad : {"", "2023-11-14", "2023-11-14T22:13:20", "2023-13-14T22:13:20Z", "2023-11-14T22:13Z",
                               "2023-11-14T22:13:20.Z", "2023-11-14T22:13:20Zjunk"}) {
    EXPECT_EQ(parse_rfc3339(bad), std::nullopt) << bad;
  }
}

TEST(Headers, LookupIsCaseInsensitive) {
  Headers h = {{"Retry-After", "3"}, {"x-a", "1"}};
  EXPECT_EQ(find_header(h, "retry-after"), "3");
  EXPECT_EQ(find_header(h, "X-A"), "1");
  EXPECT_EQ(find_header(h, "x-b"), std::nullopt);
}

}  // namespace
}  // namespace nines::llm
