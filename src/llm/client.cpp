#include "nines/llm/client.hpp"

#include <string>
#include <utility>
#include <vector>

#include "llm/sse_feed.hpp"
#include "nines/net/sse.hpp"

namespace nines::llm {

namespace {

net::HttpRequest to_http_request(HttpCall call, const std::optional<net::HttpTimeouts>& timeouts) {
  net::HttpRequest req;
  req.method = "POST";
  req.url = std::move(call.url);
  for (Header& h : call.headers) req.headers.add(std::move(h.name), std::move(h.value));
  req.body = std::move(call.body);
  req.timeouts = timeouts;
  return req;
}

Headers to_llm_headers(const net::HttpHeaders& headers) {
  Headers out;
  out.reserve(headers.size());
  for (const auto& f : headers.fields()) out.push_back(Header{f.name, f.value});
  return out;
}

bool is_2xx(int status) { return status >= 200 && status <= 299; }

Now now_of(Context& ctx) { return Now{ctx.now(), ctx.env().unix_time_ns()}; }

}  // namespace

ModelClient::ModelClient(std::unique_ptr<Codec> codec, net::HttpClient& http, ModelClientOptions options)
    : codec_(std::move(codec)), http_(http), options_(std::move(options)) {}

Task<Result<ChatResponse>> ModelClient::chat(Context& ctx, const ChatRequest& req) {
  ChatOutcome out = co_await chat_detailed(ctx, req);
  co_return std::move(out.result);
}

Task<Result<ChatResponse>> ModelClient::chat_stream(Context& ctx, const ChatRequest& req,
                                                    std::function<void(std::string_view)> on_text) {
  ChatOutcome out = co_await chat_stream_detailed(ctx, req, std::move(on_text));
  co_return std::move(out.result);
}

// The request is read before the first suspension (build_call runs here, not in the
// coroutine), so the caller's ChatRequest only has to live until the call is awaited.
Task<ChatOutcome> ModelClient::chat_detailed(Context& ctx, const ChatRequest& req) {
  if (!req.stream) return start_call(ctx, codec_->build_call(req));
  ChatRequest copy = req;
  copy.stream = false;
  return start_call(ctx, codec_->build_call(copy));
}

Task<ChatOutcome> ModelClient::chat_stream_detailed(Context& ctx, const ChatRequest& req,
                                                    std::function<void(std::string_view)> on_text) {
  if (req.stream) return run_stream(ctx, codec_->build_call(req), std::move(on_text));
  ChatRequest copy = req;
  copy.stream = true;
  return run_stream(ctx, codec_->build_call(copy), std::move(on_text));
}

Task<ChatOutcome> ModelClient::complete(Context& ctx, const ChatRequest& req, TextSink on_text) {
  if (req.stream) return run_stream(ctx, codec_->build_call(req), std::move(on_text));
  return start_call(ctx, codec_->build_call(req));
}

Task<ChatOutcome> ModelClient::failed(Error e) { co_return ChatOutcome{std::move(e), std::nullopt}; }

Task<ChatOutcome> ModelClient::start_call(Context& ctx, Result<HttpCall> call) {
  if (!call.ok()) return failed(std::move(call).error());
  return run_call(ctx, http_.request(ctx, to_http_request(std::move(call).value(), options_.timeouts)));
}

Task<ChatOutcome> ModelClient::run_call(Context& ctx, Task<Result<net::HttpResponse>> pending) {
  Result<net::HttpResponse> resp = co_await std::move(pending);
  co_return outcome_of(ctx, std::move(resp));
}

ChatOutcome ModelClient::outcome_of(Context& ctx, Result<net::HttpResponse>&& resp) const {
  if (!resp.ok()) return ChatOutcome{std::move(resp).error(), std::nullopt};
  if (is_2xx(resp->status)) {
    Result<ChatResponse> parsed = codec_->parse_response(resp->body);
    if (parsed.ok()) parsed->headers = to_llm_headers(resp->headers);
    return ChatOutcome{std::move(parsed), std::nullopt};
  }
  ApiFailure f = codec_->map_error(resp->status, to_llm_headers(resp->headers), resp->body, now_of(ctx));
  Error e = f.error;
  return ChatOutcome{std::move(e), std::move(f)};
}

Task<ChatOutcome> ModelClient::run_stream(Context& ctx, Result<HttpCall> call,
                                          std::function<void(std::string_view)> on_text) {
  if (!call.ok()) co_return ChatOutcome{std::move(call).error(), std::nullopt};
  net::HttpRequest hreq = to_http_request(std::move(call).value(), options_.timeouts);
  Result<net::HttpStream> opened = co_await http_.stream(ctx, std::move(hreq));
  if (!opened.ok()) co_return ChatOutcome{std::move(opened).error(), std::nullopt};
  net::HttpStream stream = std::move(opened).value();

  if (!is_2xx(stream.status())) {
    // The error body: read what arrives (bounded), then map it. A read error only shortens
    // the body: the status decides then.
    std::string body;
    for (;;) {
      Result<std::optional<std::string>> piece = co_await stream.next(ctx);
      if (!piece.ok() || !piece->has_value()) break;
      body += **piece;
      if (body.size() >= options_.max_error_body_bytes) {
        body.resize(options_.max_error_body_bytes);
        break;
      }
    }
    ApiFailure f = codec_->map_error(stream.status(), to_llm_headers(stream.headers()), body, now_of(ctx));
    Error e = f.error;
    co_return ChatOutcome{std::move(e), std::move(f)};
  }

  std::unique_ptr<StreamAccumulator> acc = codec_->start_stream();
  net::SseParser parser;
  std::vector<net::SseEvent> events;
  for (;;) {
    Result<std::optional<std::string>> piece = co_await stream.next(ctx);
    if (!piece.ok()) {
      if (acc->done()) break;                    // the answer is complete; what came after does not matter
      Result<ChatResponse> fin = acc->finish();  // the truncated error, counted
      Error cause = std::move(piece).error();
      if (cause.kind() != ErrorKind::kTransient || fin.ok()) co_return ChatOutcome{std::move(cause), std::nullopt};
      Error e = std::move(fin).error().with_context(cause.message());
      co_return ChatOutcome{std::move(e), std::nullopt};
    }
    if (!piece->has_value()) break;  // the end of the body
    if (std::optional<Error> e = internal::feed_sse(parser, *acc, **piece, on_text, events)) {
      co_return ChatOutcome{std::move(*e), std::nullopt};
    }
  }
  parser.finish();
  Result<ChatResponse> done = acc->finish();
  if (done.ok()) done->headers = to_llm_headers(stream.headers());
  co_return ChatOutcome{std::move(done), std::nullopt};
}

}  // namespace nines::llm
