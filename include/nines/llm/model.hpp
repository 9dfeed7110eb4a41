// nines/llm/model.hpp: ChatModel, the one interface every model sits behind.
//
// The router (router.hpp), the context manager's summarizer and the agents call models only
// through this interface, so a model reached over HTTP (ModelClient, client.hpp), the
// simulated model `sim` run in-process (sim.hpp), and a test double are interchangeable.
//
//   llm::ChatRequest req{.model = "gpt-4o-mini", .messages = {...}, .stream = true};
//   auto on_text = [&](std::string_view piece) { show(piece); };
//   llm::ChatOutcome out = co_await model.complete(ctx, req, on_text);
//
// complete() streams when req.stream is true (on_text gets each piece of assistant text as
// it arrives; it may be empty) and asks for the whole response at once otherwise (on_text is
// not called). Either way the result is the whole response, or the error with the resilience
// kind the policies act on (client.hpp lists them), plus the whole mapped ApiFailure when a
// provider answered with an error status.
//
// Thread-safety: implementations are safe to call from any number of processes at once.
#pragma once

#include <functional>
#include <optional>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/llm/errors.hpp"
#include "nines/llm/message.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines::llm {

using TextSink = std::function<void(std::string_view text)>;

// A chat call's result plus, for a provider error response, the whole mapped failure (auth,
// quota, status, type, code). An error that did not come from a provider response (a
// timeout, a refused connection, a cut stream) has no failure.
struct ChatOutcome {
  Result<ChatResponse> result;
  std::optional<ApiFailure> failure;
};

class ChatModel {
 public:
  virtual ~ChatModel() = default;

  // One call. See the file comment. The request and the sink must outlive the call
  // (g++ 12, see runtime/task.hpp: name them before the co_await).
  virtual Task<ChatOutcome> complete(Context& ctx, const ChatRequest& req, TextSink on_text) = 0;
};

}  // namespace nines::llm
