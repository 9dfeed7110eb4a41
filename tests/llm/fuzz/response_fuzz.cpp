// libFuzzer target: whole response bodies and error bodies, both providers.
// Input: byte 0 picks the provider (bit 0) and an HTTP status (the rest); the remaining bytes
// are the body. Checks that nothing crashes, leaks or hangs, and the contract's invariants:
// a failed parse is transient (malformed or a mapped API error), and no error ever
// carries the codec's key.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "nines/llm/anthropic.hpp"
#include "nines/llm/openai.hpp"

namespace {

constexpr std::string_view kKey = "sk-fuzz-key-0123456789";

nines::llm::Codec& codec(bool anthropic) {
  static auto openai = nines::llm::make_openai_codec({.api_key = std::string(kKey)}).value();
  static auto claude = nines::llm::make_anthropic_codec({.api_key = std::string(kKey)}).value();
  return anthropic ? *claude : *openai;
}

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool anthropic = data[0] & 1;
  const int statuses[] = {0, 200, 400, 401, 403, 404, 408, 409, 413, 429, 500, 503, 529, 302};
  const int status = statuses[(data[0] >> 1) % std::size(statuses)];
  std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  nines::llm::Codec& c = codec(anthropic);

  nines::Result<nines::llm::ChatResponse> r = c.parse_response(body);
  if (!r.ok()) {
    check(r.error().message().find(kKey) == std::string::npos);
    check(nines::llm::is_malformed(r.error()) || r.error().message().find(": error event") != std::string::npos);
  }

  nines::llm::Headers headers = {{"retry-after", std::string(body.substr(0, 40))},
                                 {"x-ratelimit-reset-tokens", std::string(body.substr(0, 16))},
                                 {"anthropic-ratelimit-tokens-reset", std::string(body.substr(0, 32))}};
  nines::llm::Now now{nines::TimePoint(nines::Duration(1'000'000'000)), 1'700'000'000'000'000'000};
  nines::llm::ApiFailure f = c.map_error(status, headers, body, now);
  check(f.error.message().find(kKey) == std::string::npos);
  check(!f.auth || f.error.kind() == nines::ErrorKind::kPermanent);
  if (f.error.retry_at()) check(*f.error.retry_at() >= now.monotonic);
  return 0;
}
