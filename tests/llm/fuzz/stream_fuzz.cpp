// libFuzzer target: the stream accumulators of both providers.
// Input: byte 0 picks the provider (bit 0); the remaining bytes are events, one per line,
// "name<TAB>data" or just "data". Checks that nothing crashes, leaks or hangs, and the
// stream contract: finish() succeeds exactly when the terminal event arrived and no error
// stopped the stream; a failure is transient or a mapped API error; no key in errors.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "nines/llm/anthropic.hpp"
#include "nines/llm/openai.hpp"

namespace {

constexpr std::string_view kKey = "sk-fuzz-key-0123456789";

nines::llm::Codec& codec(bool anthropic) {
  static auto openai =
      nines::llm::make_openai_codec({.api_key = std::string(kKey), .max_response_bytes = 4096}).value();
  static auto claude =
      nines::llm::make_anthropic_codec({.api_key = std::string(kKey), .max_response_bytes = 4096}).value();
  return anthropic ? *claude : *openai;
}

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool anthropic = data[0] & 1;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  auto acc = codec(anthropic).start_stream();

  bool failed = false;
  std::size_t text_bytes = 0;
  while (!rest.empty()) {
    std::size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    std::string_view name;
    if (std::size_t tab = line.find('\t'); tab != std::string_view::npos) {
      name = line.substr(0, tab);
      line = line.substr(tab + 1);
    }
    nines::Result<nines::llm::StreamDelta> d = acc->on_event(name, line);
    if (!d.ok()) {
      failed = true;
      check(d.error().message().find(kKey) == std::string::npos);
    } else {
      check(!failed);  // once failed, always failed
      text_bytes += d->text.size();
    }
  }
  check(text_bytes <= 4096 + 8);
  nines::Result<nines::llm::ChatResponse> r = acc->finish();
  check(r.ok() == (acc->done() && !failed));
  if (!r.ok()) {
    check(r.error().message().find(kKey) == std::string::npos);
    check(r.error().kind() != nines::ErrorKind::kInternal);
  } else {
    check(r->message.role == nines::llm::Role::kAssistant);
  }
  return 0;
}
