// nines/llm/router.hpp: a model chain with graceful degradation.
//
// A Router holds an agent's chain of models: the primary first, then fallbacks (another
// provider, a smaller model, ...). Each model (a route) has its own circuit breaker, retry
// policy, request and token rate limits, concurrency limit and attempt timeout, composed by
// the resilience layer's Pipeline (pipeline.hpp):
//
//   retry -> breaker -> bulkhead -> attempt timeout -> requests-per-minute and
//         tokens-per-minute limiters -> the model
//
// (The local limiters wait at most max_limiter_wait, and within the attempt timeout; a
// limiter that would need longer, or could never admit the call (more tokens than
// tokens_per_minute), makes the router leave the route at once, kRateLimited, without a
// retry and without counting a breaker failure: the provider was never asked.)
//
//   auto router = llm::Router::create(env, {.name = "planner", .chain = {
//       {.name = "openai/gpt-4o", .model = "gpt-4o", .client = openai, .context_window_tokens = 128000},
//       {.name = "anthropic/sonnet", .model = "claude-sonnet-4-5", .client = anthropic,
//        .context_window_tokens = 200000}}}).value();
//   // inside a process:
//   llm::ChatRequest req{.messages = {...}};
//   Result<llm::RoutedResponse> r = co_await router->route(ctx, req);
//   // r->served_by, r->degraded, r->fallbacks (which model failed and why)
//
// The router goes down the chain, for each route:
//  1. Size check, before any call: the prompt's estimated tokens (the route's sizer) plus the
//     reserved output (the request's max_output_tokens, else the route's max_output_tokens)
//     must fit the route's context window; otherwise the route is skipped (kWindowTooSmall).
//     If no route of the chain fits and a compactor is set, the prompt is compacted once for
//     the largest window among the routes still usable and the chain is walked again.
//  2. The call through the route's pipeline. Transient failures, timeouts and 429s are
//     retried by the route's retry policy (honouring the server's retry time); the breaker
//     sees every attempt.
//  3. On success the answer is returned, with served_by = the route's name and degraded =
//     true when it is not the chain's first route or the prompt was compacted.
//  4. On failure, the reason is recorded and the router falls back to the next route:
//       kCircuitOpen        the breaker refused the call (open, or forced open after an auth
//                           failure)
//       kRetriesExhausted   retryable failures until the retry policy gave up
//       kRateLimited        a 429 (or the local limiter) asked for longer than the policy's
//                           max_retry_after, or the limiter's max wait
//       kContextOverflow    the provider said the prompt does not fit. With a compactor the
//                           prompt is first compacted for this route and the call tried once
//                           more; if it still overflows (or there is no compactor) the router
//                           falls back only to routes with a larger window than this one
//       kAuthFailure        401/403: the route's breaker is forced open (isolate()): the same
//                           key cannot succeed; reset() it after fixing the key
//       kPermanentError     any other error of that provider (400, 404 model not found, a
//                           spent quota): the next provider may accept the request
//     The router does not fall back (it returns the error as it is) for kInvalidArgument
//     (the request is malformed: every route would refuse it), kCancelled and
//     kDeadlineExceeded (the caller's deadline passed: no time is left for a fallback).
//  5. When every route failed or was skipped, the call fails with the last route's error
//     kind (kContextOverflow if every route was skipped for size) and a message naming each
//     route and why it was left.
//
// Token usage: each answer's reported input tokens correct the route's sizer (when it has an
// observer), and settle the tokens-per-minute limiter (estimate taken before the call,
// actual usage after).
//
// Streaming: with req.stream the sink gets the text as it arrives. A retry or a fallback
// after some text was delivered starts the answer again: on_restart is called first (a
// display clears what it showed), then the new attempt's text arrives from its beginning.
//
// Ownership and thread-safety: a Router is immutable after create() except for its policies'
// and counters' shared state (thread-safe); any number of processes may route through it at
// once. It shares its routes' clients (shared_ptr). A call in flight holds the routes (their
// policies and clients) itself, so the Router may be destroyed or replaced (a configuration
// reload) while processes are suspended in route(). Router also implements ChatModel (the
// ChatResponse's model is the model that answered), e.g. to serve as a summarizer.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/llm/message.hpp"
#include "nines/llm/model.hpp"
#include "nines/llm/tokens.hpp"
#include "nines/resilience/circuit_breaker.hpp"
#include "nines/resilience/retry.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines::llm {

// Estimates the prompt tokens of a request for one model (request.model is the route's
// model). observe() is told the estimate and the usage the model reported, to correct later
// estimates. Implementations must be thread-safe.
class PromptSizer {
 public:
  virtual ~PromptSizer() = default;
  virtual std::int64_t estimate(const ChatRequest& request) const = 0;
  virtual void observe(std::string_view /*model*/, std::int64_t /*estimated_input_tokens*/,
                       std::int64_t /*reported_input_tokens*/) {}
};

// A conservative sizer for any model: one token per 3 bytes of text, arguments and schemas,
// plus 8 per message and 16 per tool. Over-estimates English (about 4 bytes per token).
std::shared_ptr<PromptSizer> make_byte_sizer();

// The calibrated estimator of tokens.hpp (per tokenizer family, corrected per model by the
// usage responses report). The router's default, with an estimator of its own.
std::shared_ptr<PromptSizer> make_token_sizer(std::shared_ptr<TokenEstimator> estimator);

// Makes a request's prompt fit budget_tokens (the prompt alone: the window minus the
// reserved output). after_overflow: a provider refused the prompt although the estimate said
// it fits, so aim lower. Returns the compacted request, or an error (e.g. kContextOverflow
// when the system prompt and pinned messages alone are too big).
using Compactor = std::function<Task<Result<ChatRequest>>(Context& ctx, const ChatRequest& request,
                                                          std::int64_t budget_tokens, bool after_overflow)>;

// A compactor without history: fit_messages (context.hpp) on the request's own messages
// (system and pinned kept, large tool outputs shortened, oldest turns dropped), within the
// budget minus the tools' tokens; after an overflow (the provider counted more than the
// estimate), to 70% of the smaller of that and the prompt's own estimate, with tool outputs
// cut to 1,024 tokens. An agent with a stored conversation passes a per-call compactor
// instead that calls ContextManager::compact (summarizing into a checkpoint).
Compactor make_fit_compactor(std::shared_ptr<const TokenEstimator> estimator);

struct ModelRouteOptions {
  // Unique in the chain; in answers, errors and counters (e.g. "openai/gpt-4o"). Required.
  std::string name;
  // Sent as ChatRequest::model. Empty: the request's model is kept.
  std::string model;
  // The model. Required.
  std::shared_ptr<ChatModel> client;
  // The model's context window: prompt plus output, in tokens. > 0.
  std::int64_t context_window_tokens = 128000;
  // Output reserved when the request sets no max_output_tokens (and then sent as the
  // request's max_output_tokens). > 0 and < context_window_tokens.
  std::int64_t max_output_tokens = 4096;
  // Retries of one call on this route. Default: 3 attempts, full jitter 250 ms .. 8 s,
  // server retry times up to 60 s honoured.
  RetryOptions retry = default_retry();
  // nullopt: the default breaker (CircuitBreakerOptions{}: transient, timeouts and 429s count).
  std::optional<CircuitBreakerOptions> breaker;
  // Local limits, 0: none. Per minute, with a burst of one minute's worth.
  std::uint64_t requests_per_minute = 0;
  std::uint64_t tokens_per_minute = 0;
  // Longest a call waits for the local limiters before the route is left (kRateLimited).
  Duration max_limiter_wait = std::chrono::seconds(30);
  // Calls in flight on this route at once, 0: no limit. Calls beyond it wait (bounded by the
  // process deadline) in a queue of at most max_concurrent_calls * 4.
  std::size_t max_concurrent_calls = 0;
  // Bounds each attempt (kInfinite: none; the client's own timeouts still apply).
  Duration attempt_timeout = kInfinite;

  static RetryOptions default_retry();
};

struct RouterOptions {
  // Names the router in errors. Required.
  std::string name;
  // Primary first. At least one route.
  std::vector<ModelRouteOptions> chain;
  // Estimates prompts. Default: make_token_sizer() with an estimator of its own.
  std::shared_ptr<PromptSizer> sizer;
  // Compacts prompts that do not fit. Default none: such routes are only skipped. A call may
  // bring its own (StreamHooks::compactor).
  Compactor compactor;
};

enum class FallbackReason : std::uint8_t {
  kWindowTooSmall,
  kCircuitOpen,
  kRetriesExhausted,
  kRateLimited,
  kContextOverflow,
  kAuthFailure,
  kPermanentError,
};

std::string_view to_string(FallbackReason reason);

// A route the call left, and why.
struct RouteFailure {
  std::string route;
  FallbackReason reason = FallbackReason::kPermanentError;
  Error error;  // what the route returned (for kWindowTooSmall: the size check's verdict)
};

struct RoutedResponse {
  ChatResponse response;
  std::string served_by;                // the route's name
  bool degraded = false;                // not the primary, or the prompt was compacted
  bool compacted = false;               // the compactor changed the prompt
  std::vector<RouteFailure> fallbacks;  // the routes left before, in order
  std::size_t attempts = 0;             // model calls this answer took: 1, plus each retry on any route
  Duration upstream{0};                 // time inside the routes' clients (every attempt's complete())
};

// Counters of one route (a snapshot; each field read atomically on its own).
struct RouteCounters {
  std::uint64_t calls = 0;        // calls that reached this route's pipeline
  std::uint64_t served = 0;       // answers it gave
  std::uint64_t left[7] = {};     // by FallbackReason
  std::uint64_t compactions = 0;  // compactions made for this route
};

class Router final : public ChatModel {
 public:
  // Per call (the name is historical: not only streaming).
  struct StreamHooks {
    TextSink on_text;                  // text as it arrives (req.stream only)
    std::function<void()> on_restart;  // a new attempt or route starts the answer again
    Compactor compactor;               // set: used instead of RouterOptions::compactor
  };

  // kInvalidArgument naming the route and field for a bad option (empty or duplicate names,
  // no client, a window that cannot hold max_output_tokens, bad retry/breaker options).
  static Result<std::unique_ptr<Router>> create(Environment& env, RouterOptions options);
  ~Router() override;

  // See the file comment. The request and hooks are referenced, not copied: they must
  // outlive the call (name them before the co_await).
  Task<Result<RoutedResponse>> route(Context& ctx, const ChatRequest& req);
  Task<Result<RoutedResponse>> route(Context& ctx, const ChatRequest& req, const StreamHooks& hooks);

  // ChatModel: route() with on_text as the sink; failure is never set.
  Task<ChatOutcome> complete(Context& ctx, const ChatRequest& req, TextSink on_text) override;

  const std::string& name() const;
  std::size_t size() const;
  const std::string& route_name(std::size_t i) const;
  RouteCounters counters(std::size_t i) const;
  // The route's breaker (e.g. to reset() it after an auth failure was fixed, or to watch it).
  std::shared_ptr<CircuitBreaker> breaker(std::size_t i) const;

 private:
  struct Impl;
  explicit Router(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;  // each call in flight holds it too
};

}  // namespace nines::llm
