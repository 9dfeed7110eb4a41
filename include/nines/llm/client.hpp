// nines/llm/client.hpp: a model client, a Codec (openai.hpp, anthropic.hpp) joined to the net
// layer's HttpClient and SseParser.
//
//   auto http = net::HttpClient::create(env).value();            // one per pool, shared
//   llm::ModelClient client(llm::make_openai_codec({.base_url = url, .api_key = key}).value(), *http);
//   // inside a process:
//   llm::ChatRequest req{.model = "gpt-4o-mini", .messages = {...}};
//   Result<ChatResponse> r = co_await client.chat(ctx, req);
//   auto on_text = [&](std::string_view piece) { show(piece); };
//   Result<ChatResponse> s = co_await client.chat_stream(ctx, req, on_text);
//
// (g++ 12, see runtime/task.hpp: name the request and the callback before the co_await, as
// above; never write `co_await client.chat(ctx, ChatRequest{...})`.)
//
// Failures (Result), with the resilience kinds the policies act on:
//  - build_call's kInvalidArgument (empty model or messages, a tool schema that is not JSON).
//  - The HTTP client's errors as they are: kTransient (refused, reset, DNS, cut short),
//    kTimeout, kDeadlineExceeded (the process deadline), kBulkheadFull, kCancelled, ...
//  - A status outside 200..299: Codec::map_error (errors.hpp) with "now" read from the
//    context's environment: kRateLimited with retry_at, kTransient (408, 409, 5xx, 529),
//    kContextOverflow, kPermanent ("[auth]" for 401/403: is_auth_failure). Callers that need
//    the whole ApiFailure (auth, quota, status, type, code) use the *_detailed calls.
//  - A 2xx body that is not the expected JSON: kTransient "[malformed]" (is_malformed).
//  - A stream that ends before its terminal event (OpenAI `data: [DONE]`, Anthropic
//    `message_stop`), by a clean end or by a cut connection: kTransient "[truncated]"
//    (is_truncated_stream), never a success, whatever text on_text already saw. A timeout or
//    the deadline while reading keeps its own kind (kTimeout, kDeadlineExceeded).
//  - No error message contains the API key: the codec redacts what it quotes, and the net
//    layer never quotes header values.
//
// Ownership and thread-safety: the client owns its codec and borrows the HttpClient, which
// must outlive it. It is immutable, so any number of processes may call it at once.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/llm/codec.hpp"
#include "nines/llm/message.hpp"
#include "nines/llm/model.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines::llm {

struct ModelClientOptions {
  // Per-request timeouts; nullopt: the HttpClient's defaults.
  std::optional<net::HttpTimeouts> timeouts;
  // A failed (non-2xx) streaming response's body is read up to this many bytes to map it.
  std::size_t max_error_body_bytes = 64u << 10;
};

// ChatOutcome (model.hpp): failure is set for a non-2xx response (mapped by Codec::map_error);
// an error object in a 2xx body or an error event in a stream gives only the Error.
class ModelClient final : public ChatModel {
 public:
  ModelClient(std::unique_ptr<Codec> codec, net::HttpClient& http, ModelClientOptions options = {});

  Provider provider() const { return codec_->provider(); }
  const Codec& codec() const { return *codec_; }

  // One request, the whole response at once (req.stream is ignored: never a stream).
  Task<Result<ChatResponse>> chat(Context& ctx, const ChatRequest& req);

  // One streamed request (req.stream is ignored: always a stream); on_text gets each piece of
  // assistant text as its event arrives (may be empty: no call). The result is the whole
  // response, once the terminal event arrived.
  Task<Result<ChatResponse>> chat_stream(Context& ctx, const ChatRequest& req,
                                         std::function<void(std::string_view text)> on_text);

  // As chat / chat_stream, with the mapped ApiFailure of a provider error (auth, quota, ...).
  Task<ChatOutcome> chat_detailed(Context& ctx, const ChatRequest& req);
  Task<ChatOutcome> chat_stream_detailed(Context& ctx, const ChatRequest& req,
                                         std::function<void(std::string_view text)> on_text);

  // ChatModel: chat_stream_detailed when req.stream, chat_detailed otherwise.
  Task<ChatOutcome> complete(Context& ctx, const ChatRequest& req, TextSink on_text) override;

 private:
  // A non-streamed call: start_call (not a coroutine) makes the HTTP request's task, which
  // holds the request; run_call awaits it and outcome_of maps the response. So the frame
  // every call in flight holds has no copy of the request or of the mapping's locals.
  Task<ChatOutcome> start_call(Context& ctx, Result<HttpCall> call);
  Task<ChatOutcome> run_call(Context& ctx, Task<Result<net::HttpResponse>> pending);
  ChatOutcome outcome_of(Context& ctx, Result<net::HttpResponse>&& resp) const;
  static Task<ChatOutcome> failed(Error e);
  Task<ChatOutcome> run_stream(Context& ctx, Result<HttpCall> call, std::function<void(std::string_view)> on_text);

  std::unique_ptr<Codec> codec_;
  net::HttpClient& http_;
  ModelClientOptions options_;
};

}  // namespace nines::llm
