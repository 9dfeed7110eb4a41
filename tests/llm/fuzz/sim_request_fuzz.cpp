// libFuzzer target: what a client may send the sim server. The whole input is one request
// body, given to parse_openai_chat_request and, through SimModel::handle_http, to the sim's
// decision and rendering (a small context window, every fault possible). Checks that nothing
// crashes, leaks or hangs; that a refused body gets a 400 with a JSON error; and that an
// accepted one gets a reply whose status is one the sim documents.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "nines/llm/sim.hpp"

namespace {

nines::llm::SimModel& sim() {
  static auto model = nines::llm::SimModel::from_json(R"({
    "seed": 3, "context_window_tokens": 2000, "max_tracked_requests": 1000,
    "scenario": [{"tool_calls": [{"name": "search", "arguments": {"q": "x"}}]}, {"answer": "done"}],
    "faults": {"rate_limited": {"probability": 0.05}, "server_error": {"probability": 0.05},
               "unavailable": {"probability": 0.05}, "overloaded": {"probability": 0.05},
               "timeout": {"probability": 0.05, "hang_ms": 10}, "cut_stream": {"probability": 0.05},
               "malformed_json": {"probability": 0.05}, "hallucinated_tool": {"probability": 0.05},
               "invalid_tool_args": {"probability": 0.05}, "loop": {"probability": 0.05},
               "context_overflow": {"probability": 0.05}}})")
                          .value();
  return *model;
}

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  nines::Result<nines::llm::ChatRequest> parsed = nines::llm::parse_openai_chat_request(body);
  nines::llm::SimHttpReply reply = sim().handle_http("POST", "/v1/chat/completions", body);
  if (!parsed.ok()) {
    check(reply.status == 400);
    check(!reply.body.empty() && reply.body.front() == '{');
    return 0;
  }
  const int s = reply.status;
  check(s == 200 || s == 400 || s == 429 || s == 500 || s == 503 || s == 529);
  if (reply.stream) check(reply.chunks.size() == reply.chunk_delays.size());
  return 0;
}
