// The model router: see include/nines/llm/router.hpp.
#include "nines/llm/router.hpp"

#include <algorithm>
#include <array>
#include <iterator>
#include <memory>
#include <set>
#include <utility>

#include "nines/core/check.hpp"
#include "nines/llm/context.hpp"
#include "nines/llm/errors.hpp"
#include "nines/resilience/bulkhead.hpp"
#include "nines/resilience/pipeline.hpp"
#include "nines/resilience/rate_limiter.hpp"

namespace nines::llm {

namespace {

constexpr std::size_t kReasons = 7;

class ByteSizer final : public PromptSizer {
 public:
  std::int64_t estimate(const ChatRequest& r) const override {
    std::int64_t bytes = 0;
    std::int64_t overhead = 0;
    for (const Message& m : r.messages) {
      overhead += 8;
      for (const ContentPart& p : m.content) bytes += static_cast<std::int64_t>(p.text.size());
      for (const ToolCall& c : m.tool_calls) {
        bytes += static_cast<std::int64_t>(c.name.size() + c.arguments_json.size());
        overhead += 8;
      }
    }
    for (const ToolDefinition& t : r.tools) {
      bytes += static_cast<std::int64_t>(t.name.size() + t.description.size() + t.parameters_schema_json.size());
      overhead += 16;
    }
    return (bytes + 2) / 3 + overhead;
  }
};

class TokenSizer final : public PromptSizer {
 public:
  explicit TokenSizer(std::shared_ptr<TokenEstimator> e) : estimator_(std::move(e)) {}
  std::int64_t estimate(const ChatRequest& r) const override { return estimator_->estimate_request(r); }
  void observe(std::string_view model, std::int64_t estimated, std::int64_t reported) override {
    estimator_->observe(model, estimated, reported);
  }

 private:
  std::shared_ptr<TokenEstimator> estimator_;
};

Error with_route(const Error& e, const std::string& route) { return e.with_context("route '" + route + "'"); }

}  // namespace

std::shared_ptr<PromptSizer> make_byte_sizer() { return std::make_shared<ByteSizer>(); }

std::shared_ptr<PromptSizer> make_token_sizer(std::shared_ptr<TokenEstimator> estimator) {
  return std::make_shared<TokenSizer>(std::move(estimator));
}

Compactor make_fit_compactor(std::shared_ptr<const TokenEstimator> estimator) {
  return [estimator](Context&, const ChatRequest& req, std::int64_t budget,
                     bool after_overflow) -> Task<Result<ChatRequest>> {
    TokenCounter counter = estimator ? estimator->counter(req.model) : TokenCounter(family_for_model(req.model));
    const std::int64_t for_tools = req.tools.empty() ? 0 : counter.tools(req.tools);
    std::int64_t for_messages = budget - for_tools;
    if (after_overflow) {
      // The provider counted more than we did: aim well below what we thought it was.
      std::int64_t current = counter.reply_priming();
      for (const Message& m : req.messages) current += counter.message(m);
      for_messages = std::min(for_messages, current) * 7 / 10;
    }
    FitOptions options{.budget_tokens = for_messages,
                       .model = req.model,
                       .estimator = estimator.get(),
                       .max_tool_output_tokens = after_overflow ? 1024 : 4096};
    if (for_messages <= 0) {
      co_return Error(ErrorKind::kContextOverflow, "the tools alone need " + std::to_string(for_tools) +
                                                       " tokens; the budget is " + std::to_string(budget));
    }
    Result<FitResult> fit = fit_messages(req.messages, options);
    if (!fit.ok()) co_return fit.error();
    ChatRequest out = req;
    out.messages = std::move(fit->messages);
    co_return out;
  };
}

std::string_view to_string(FallbackReason reason) {
  switch (reason) {
    case FallbackReason::kWindowTooSmall: return "window_too_small";
    case FallbackReason::kCircuitOpen: return "circuit_open";
    case FallbackReason::kRetriesExhausted: return "retries_exhausted";
    case FallbackReason::kRateLimited: return "rate_limited";
    case FallbackReason::kContextOverflow: return "context_overflow";
    case FallbackReason::kAuthFailure: return "auth_failure";
    case FallbackReason::kPermanentError: return "permanent_error";
  }
  return "unknown";
}

RetryOptions ModelRouteOptions::default_retry() {
  RetryOptions o;
  o.max_attempts = 3;
  o.backoff = Backoff::full_jitter(std::chrono::milliseconds(250), std::chrono::seconds(8));
  o.max_retry_after = std::chrono::seconds(60);
  return o;
}

struct Router::Impl {
  struct Route {
    ModelRouteOptions options;
    std::shared_ptr<CircuitBreaker> breaker;
    std::shared_ptr<RateLimiter> requests;  // null: no requests-per-minute limit
    std::shared_ptr<RateLimiter> tokens;    // null: no tokens-per-minute limit
    std::optional<Pipeline> pipeline;
    std::atomic<std::uint64_t> calls{0};
    std::atomic<std::uint64_t> served{0};
    std::array<std::atomic<std::uint64_t>, kReasons> left{};
    std::atomic<std::uint64_t> compactions{0};
  };

  // One route() call's state, shared by the attempts (the call lambda captures a pointer).
  struct Call {
    const StreamHooks* hooks = nullptr;
    bool delivered = false;            // text reached the sink since the last (re)start
    bool auth = false;                 // the last attempt's failure was an auth failure
    std::optional<Error> local_limit;  // the last attempt was refused by a local limiter
    std::size_t attempts = 0;          // model calls made (every route, every retry)
    Duration upstream{0};              // time inside the clients' complete()
  };

  Environment& env;
  std::string name;
  std::vector<std::unique_ptr<Route>> routes;
  std::shared_ptr<PromptSizer> sizer;
  Compactor compactor;

  Impl(Environment& e, std::string n) : env(e), name(std::move(n)) {}

  std::int64_t reserve_for(const Route& r, const ChatRequest& req) const {
    return req.max_output_tokens.value_or(r.options.max_output_tokens);
  }

  ChatRequest request_for(const Route& r, const ChatRequest& req) const {
    ChatRequest out = req;
    if (!r.options.model.empty()) out.model = r.options.model;
    if (!out.max_output_tokens) out.max_output_tokens = r.options.max_output_tokens;
    return out;
  }
  // The same without a copy when route r changes nothing of `req` (the common case: one
  // call, one route); else the copy is made in `storage` (on the heap: not in every call's
  // coroutine frame). The result lives as long as both.
  const ChatRequest& request_for(const Route& r, const ChatRequest& req, std::unique_ptr<ChatRequest>& storage) const {
    const bool same_model = r.options.model.empty() || r.options.model == req.model;
    const bool same_max = req.max_output_tokens.has_value();  // else the route's is added
    if (same_model && same_max) return req;
    storage = std::make_unique<ChatRequest>(request_for(r, req));
    return *storage;
  }

  // Route i is left for `reason`; the model_fallback report names the route tried next.
  void leave(std::size_t i, FallbackReason reason, Error e, std::vector<RouteFailure>& fallbacks) {
    Route& r = *routes[i];
    r.left[static_cast<std::size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
    log_fallback(i, reason, e);
    fallbacks.push_back(RouteFailure{r.options.name, reason, std::move(e)});
  }

  // The error's message is the client's, already redacted (llm/errors.hpp); the logger
  // scrubs it once more.
  void log_fallback(std::size_t i, FallbackReason reason, const Error& e) const {
    Logger& logger = env.logger();
    if (!logger.enabled(LogLevel::kWarning)) return;
    const bool last = i + 1 >= routes.size();
    const LogField fields[] = {{"router", name},
                               {"route", routes[i]->options.name},
                               {"reason", to_string(reason)},
                               {"error_kind", to_string(e.kind())},
                               {"error", e.message()},
                               {"next", last ? std::string_view() : std::string_view(routes[i + 1]->options.name)}};
    logger.log_fields(LogLevel::kWarning, "model_fallback",
                      last ? "model route failed; no route left to try" : "model route failed; trying the next",
                      std::span<const LogField>(fields, last ? std::size(fields) - 1 : std::size(fields)));
  }

  // An attempt's outcome, as the pipeline sees it: the route's token count corrected with the
  // usage the provider reported, the sizer taught, the auth failure noted for the fallback.
  // `sent`: when the attempt began (read here, after the await: an argument's order of
  // evaluation is unspecified).
  Result<ChatResponse> attempted(Route& r, const ChatRequest& req, Call& call, std::uint64_t units, ChatOutcome&& out,
                                 Context& c, TimePoint sent) {
    call.upstream += c.now() - sent;
    call.auth = !out.result.ok() && out.failure && out.failure->auth;
    if (out.result.ok()) {
      const std::int64_t input = out.result->usage.input_tokens;
      const std::int64_t output = out.result->usage.output_tokens;
      if (r.tokens && (input > 0 || output > 0)) {
        r.tokens->adjust(input + output - static_cast<std::int64_t>(units));
      }
      if (input > 0) sizer->observe(req.model, static_cast<std::int64_t>(units) - reserve_for(r, req), input);
    }
    return std::move(out.result);
  }

  // What a route's call needs kept in the awaiting frame (route() or call_compacted()) while
  // the pipeline runs: call_route is not a coroutine.
  struct RouteCallState {
    std::array<std::uint64_t, 2> limiter_units{};  // RunLimits::units points here
    std::optional<Error> refused;                  // RunLimits::refused
    TimePoint caller_deadline{};
  };

  // The route's call ended with `result`: a local limiter's refusal is noted in `call` (see
  // call_route).
  static Result<ChatResponse>&& route_called(Result<ChatResponse>&& result, RouteCallState& st, Call& call,
                                             Context& ctx) {
    if (!result.ok() && st.refused) {
      const ErrorKind kind = st.refused->kind();
      if (kind == ErrorKind::kRateLimited) {
        call.local_limit = std::move(*st.refused);
      } else if (kind == ErrorKind::kInvalidArgument ||
                 (kind == ErrorKind::kDeadlineExceeded && ctx.now() < st.caller_deadline)) {
        call.local_limit = Error(ErrorKind::kRateLimited, st.refused->message());
      }
    }
    return std::move(result);
  }

  // One call on one route through its pipeline: the pipeline's task, to be awaited at once
  // and its result given to route_called. Not a coroutine (a frame less per call in flight):
  // what must outlive it is in `st`, in the awaiting frame. The request must outlive the task.
  // The attempt's own frame is kept small too: the work around its await is in attempted(),
  // and the client's outcome is read in the client's frame (a named task), not copied.
  Task<Result<ChatResponse>> call_route(Context& ctx, Route& r, const ChatRequest& req, std::int64_t estimate,
                                        Call& call, RouteCallState& st) {
    r.calls.fetch_add(1, std::memory_order_relaxed);
    // What an earlier route left here says nothing about this one: when no attempt runs (its
    // breaker refuses the call), neither may be read as this route's.
    call.auth = false;
    call.local_limit.reset();
    const std::uint64_t units = static_cast<std::uint64_t>(std::max<std::int64_t>(1, estimate + reserve_for(r, req)));
    st.caller_deadline = ctx.deadline();
    auto attempt = [&r, &req, &call, units, this](Context& c) -> Task<Result<ChatResponse>> {
      ++call.attempts;
      if (call.delivered) {
        call.delivered = false;
        if (call.hooks->on_restart) call.hooks->on_restart();
      }
      TextSink sink;
      if (req.stream && call.hooks->on_text) {
        sink = [&call](std::string_view text) {
          if (text.empty()) return;
          call.delivered = true;
          call.hooks->on_text(text);
        };
      }
      const TimePoint sent = c.now();
      // A named task: the outcome is read in its frame (a co_await inside the co_return's
      // expression would give this frame a slot for the returned Result too).
      Task<ChatOutcome> completing = r.options.client->complete(c, req, std::move(sink));
      ChatOutcome&& out = co_await completing;
      co_return attempted(r, req, call, units, std::move(out), c, sent);
    };
    // The local limits are the pipeline's limiters (requests, then tokens: this call's
    // estimate), per attempt (each attempt is a request the provider counts), waiting inside
    // the attempt timeout. A limiter that would make the call wait longer than it may refuses
    // at once and ends the route's call (LimiterStep::refusal_ends_run: no retry, no breaker
    // failure): longer than max_limiter_wait (kRateLimited), past the attempt timeout
    // (kDeadlineExceeded while the caller's own deadline has not passed), or for ever
    // (kInvalidArgument: more tokens than tokens_per_minute). The route is then left with
    // kRateLimited: the provider was never asked, and the next route may have room.
    std::size_t limiters = 0;
    if (r.requests) st.limiter_units[limiters++] = 1;
    if (r.tokens) st.limiter_units[limiters++] = units;
    st.refused.reset();
    return r.pipeline->run<ChatResponse>(
        ctx, std::move(attempt),
        RunLimits{.units = std::span<const std::uint64_t>(st.limiter_units.data(), limiters), .refused = &st.refused});
  }

  static bool stops_chain(ErrorKind k) {
    return k == ErrorKind::kInvalidArgument || k == ErrorKind::kCancelled || k == ErrorKind::kDeadlineExceeded;
  }

  static FallbackReason reason_for(const Error& e, bool auth) {
    if (auth) return FallbackReason::kAuthFailure;
    switch (e.kind()) {
      case ErrorKind::kCircuitOpen: return FallbackReason::kCircuitOpen;
      case ErrorKind::kContextOverflow: return FallbackReason::kContextOverflow;
      case ErrorKind::kRateLimited: return FallbackReason::kRateLimited;
      case ErrorKind::kTransient:
      case ErrorKind::kTimeout:
      case ErrorKind::kBulkheadFull:
      case ErrorKind::kBudgetExceeded:
      case ErrorKind::kMailboxFull: return FallbackReason::kRetriesExhausted;
      default: return FallbackReason::kPermanentError;
    }
  }

  Error all_failed(const std::vector<RouteFailure>& fallbacks, ErrorKind kind) const {
    std::string msg = "router '" + name + "': no model could answer:";
    for (const RouteFailure& f : fallbacks) {
      msg += " [" + f.route + ": " + std::string(to_string(f.reason)) + ": " + f.error.message() + "]";
    }
    Error e(kind, std::move(msg));
    // The earliest time any rate-limited route said it may be tried again.
    std::optional<TimePoint> retry_at;
    for (const RouteFailure& f : fallbacks) {
      if (f.error.retry_at() && (!retry_at || *f.error.retry_at() < *retry_at)) retry_at = f.error.retry_at();
    }
    if (kind == ErrorKind::kRateLimited && retry_at) e = std::move(e).with_retry_at(*retry_at);
    return e;
  }

  // The window check of route i for `req`: its estimate, or nullopt after leaving the route
  // (kWindowTooSmall) when the prompt cannot fit.
  std::optional<std::int64_t> admit(std::size_t i, const ChatRequest& req, std::int64_t refused_window,
                                    std::vector<RouteFailure>& fallbacks) {
    const Route& r = *routes[i];
    const std::int64_t reserve = reserve_for(r, req);
    const std::int64_t window = r.options.context_window_tokens;
    if (window <= refused_window) {
      leave(i, FallbackReason::kWindowTooSmall,
            Error(ErrorKind::kContextOverflow, "a route with a window of " + std::to_string(refused_window) +
                                                   " tokens already refused the prompt; this one has " +
                                                   std::to_string(window)),
            fallbacks);
      return std::nullopt;
    }
    const std::int64_t estimate = sizer->estimate(req);
    if (estimate + reserve > window) {
      leave(i, FallbackReason::kWindowTooSmall,
            Error(ErrorKind::kContextOverflow, "the prompt needs about " + std::to_string(estimate) + " tokens plus " +
                                                   std::to_string(reserve) + " reserved for output; the window is " +
                                                   std::to_string(window)),
            fallbacks);
      return std::nullopt;
    }
    return estimate;
  }

  // Route r's provider counted more tokens than estimated (`overflow`, kContextOverflow): the
  // request compacted for r and called once more (`compacted` set then); `overflow` again if
  // the compaction failed. A coroutine of its own, so that its requests are in a frame only
  // when this rare case happens (a frame is allocated per call: it is the memory of a call in
  // flight).
  Task<Result<ChatResponse>> call_compacted(Context& ctx, Route& r, const ChatRequest& req, const Compactor& compact,
                                            Call& call, Result<ChatResponse> overflow, bool& compacted) {
    Result<ChatRequest> smaller =
        co_await compact(ctx, req, r.options.context_window_tokens - reserve_for(r, req), true);
    if (!smaller.ok()) co_return std::move(overflow);
    r.compactions.fetch_add(1, std::memory_order_relaxed);
    const ChatRequest retry_req = request_for(r, *smaller);
    const std::int64_t retry_estimate = sizer->estimate(retry_req);
    compacted = true;
    RouteCallState st;
    co_return route_called(co_await call_route(ctx, r, retry_req, retry_estimate, call, st), st, call, ctx);
  }

  RoutedResponse served(std::size_t i, ChatResponse&& response, bool compacted, const Call& call,
                        std::vector<RouteFailure>& fallbacks) {
    Route& r = *routes[i];
    r.served.fetch_add(1, std::memory_order_relaxed);
    RoutedResponse out;
    out.response = std::move(response);
    out.served_by = r.options.name;
    out.compacted = compacted;
    out.degraded = i != 0 || compacted;
    out.fallbacks = std::move(fallbacks);
    out.attempts = call.attempts;
    out.upstream = call.upstream;
    return out;
  }

  // Route i failed with `error`: true when that ends the whole call (`error` is then the
  // call's error), false after leaving the route for the next.
  bool failed(std::size_t i, Error& error, const Call& call, std::int64_t& refused_window,
              std::vector<RouteFailure>& fallbacks) {
    Route& r = *routes[i];
    error = with_route(call.local_limit ? *call.local_limit : error, r.options.name);
    if (stops_chain(error.kind())) return true;
    const FallbackReason reason = reason_for(error, call.auth);
    if (reason == FallbackReason::kAuthFailure) r.breaker->isolate();
    if (reason == FallbackReason::kContextOverflow) {
      refused_window = std::max(refused_window, r.options.context_window_tokens);
    }
    leave(i, reason, std::move(error), fallbacks);
    return false;
  }

  // Every route was skipped for size: the request compacted once for the largest usable
  // window, as that route will see it (its model: the estimate's tokenizer family), into
  // `out`; `out` stays empty when no route can take any prompt. Its own coroutine, like
  // call_compacted.
  Task<Status> compact_for_chain(Context& ctx, const ChatRequest& original, std::int64_t refused_window,
                                 const Compactor& compact, std::unique_ptr<ChatRequest>& out) {
    std::int64_t best_budget = 0;
    const Route* best = nullptr;
    for (const auto& r : routes) {
      if (r->options.context_window_tokens <= refused_window) continue;
      if (r->breaker->state() == BreakerState::kOpen || r->breaker->state() == BreakerState::kForcedOpen) continue;
      const std::int64_t budget = r->options.context_window_tokens - reserve_for(*r, request_for(*r, original));
      if (budget > best_budget) {
        best_budget = budget;
        best = r.get();
      }
    }
    if (best == nullptr || best_budget <= 0) co_return Status();
    const ChatRequest for_best = request_for(*best, original);
    Result<ChatRequest> smaller = co_await compact(ctx, for_best, best_budget, false);
    if (!smaller.ok()) co_return smaller.error().with_context("router '" + name + "': compacting the prompt");
    out = std::make_unique<ChatRequest>(std::move(smaller).value());
    co_return Status();
  }

  Error final_error(const std::vector<RouteFailure>& fallbacks) const {
    const bool all_size = std::all_of(fallbacks.begin(), fallbacks.end(), [](const RouteFailure& f) {
      return f.reason == FallbackReason::kWindowTooSmall || f.reason == FallbackReason::kContextOverflow;
    });
    const ErrorKind kind = fallbacks.empty() ? ErrorKind::kPermanent
                                             : (all_size ? ErrorKind::kContextOverflow : fallbacks.back().error.kind());
    return all_failed(fallbacks, kind);
  }

  // `self` is this Impl, held by the call's own frame (see the header: the Router may go
  // while a call runs). A parameter rather than a wrapping coroutine: one frame less a call.
  // The frame of this coroutine is memory every call in flight holds, so what only the rare
  // paths need (compaction, the error texts) lives in the helpers above, not in it.
  Task<Result<RoutedResponse>> route(std::shared_ptr<Impl> self, Context& ctx, const ChatRequest& original,
                                     const StreamHooks& hooks) {
    NINES_DCHECK(self.get() == this);
    Call call{.hooks = &hooks};
    const Compactor& compact = hooks.compactor ? hooks.compactor : compactor;
    std::vector<RouteFailure> fallbacks;
    std::unique_ptr<ChatRequest> compacted;  // the whole-chain compaction, once
    std::int64_t refused_window = 0;         // a route with this window refused the prompt
    RouteCallState st;
    std::optional<Task<Result<ChatResponse>>> pending;
    for (int pass = 0; pass < 2; ++pass) {
      bool any_tried = false;
      const ChatRequest& base = compacted ? *compacted : original;
      for (std::size_t i = 0; i < routes.size(); ++i) {
        Route& r = *routes[i];
        std::unique_ptr<ChatRequest> adjusted;
        const ChatRequest& req = request_for(r, base, adjusted);
        const std::optional<std::int64_t> estimate = admit(i, req, refused_window, fallbacks);
        if (!estimate) continue;
        any_tried = true;
        // The result is read where the pipeline's task left it (`pending` owns that frame until
        // the next route's call), not copied into this frame.
        Task<Result<ChatResponse>>& t = pending.emplace(call_route(ctx, r, req, *estimate, call, st));
        Result<ChatResponse>&& result = route_called(co_await t, st, call, ctx);
        bool route_compacted = false;
        if (!result.ok() && result.error().kind() == ErrorKind::kContextOverflow && compact) {
          result = co_await call_compacted(ctx, r, req, compact, call, std::move(result), route_compacted);
        }
        if (result.ok()) {
          co_return served(i, std::move(result).value(), compacted != nullptr || route_compacted, call, fallbacks);
        }
        Error e = std::move(result).error();
        if (failed(i, e, call, refused_window, fallbacks)) co_return e;
      }
      if (any_tried || compacted || !compact) break;
      Status s = co_await compact_for_chain(ctx, original, refused_window, compact, compacted);
      if (!s.ok()) co_return s.error();
      if (!compacted) break;
    }
    co_return final_error(fallbacks);
  }
};

Result<std::unique_ptr<Router>> Router::create(Environment& env, RouterOptions options) {
  if (options.name.empty()) return Error(ErrorKind::kInvalidArgument, "router: name is empty");
  const std::string where = "router '" + options.name + "'";
  if (options.chain.empty()) return Error(ErrorKind::kInvalidArgument, where + ": chain is empty");
  auto impl = std::make_shared<Impl>(env, options.name);
  if (options.sizer) {
    impl->sizer = std::move(options.sizer);
  } else {
    Result<std::unique_ptr<TokenEstimator>> estimator = TokenEstimator::create();
    if (!estimator.ok()) return estimator.error().with_context(where);
    impl->sizer = make_token_sizer(std::shared_ptr<TokenEstimator>(std::move(estimator).value()));
  }
  impl->compactor = std::move(options.compactor);
  std::set<std::string> names;
  for (std::size_t i = 0; i < options.chain.size(); ++i) {
    ModelRouteOptions& o = options.chain[i];
    const std::string at = where + ": chain[" + std::to_string(i) + "]";
    auto bad = [&](const std::string& what) { return Error(ErrorKind::kInvalidArgument, at + ": " + what); };
    if (o.name.empty()) return bad("name is empty");
    if (!names.insert(o.name).second) return bad("name '" + o.name + "' is used twice");
    if (!o.client) return bad("'" + o.name + "' has no client");
    if (o.context_window_tokens <= 0) return bad("context_window_tokens must be > 0");
    if (o.max_output_tokens <= 0 || o.max_output_tokens >= o.context_window_tokens) {
      return bad("max_output_tokens must be > 0 and < context_window_tokens (" +
                 std::to_string(o.context_window_tokens) + "), got " + std::to_string(o.max_output_tokens));
    }
    if (o.max_limiter_wait < Duration::zero()) return bad("max_limiter_wait must be >= 0");
    auto route = std::make_unique<Impl::Route>();
    const std::string key = options.name + "/" + o.name;
    Result<std::shared_ptr<CircuitBreaker>> breaker =
        CircuitBreaker::create(key, env, o.breaker.value_or(CircuitBreakerOptions{}));
    if (!breaker.ok()) return breaker.error().with_context(at + ": breaker");
    route->breaker = std::move(breaker).value();
    Pipeline::Builder builder;
    Result<RetryPolicy> retry = RetryPolicy::create(o.retry);
    if (!retry.ok()) return retry.error().with_context(at + ": retry");
    builder.retry(std::move(retry).value()).circuit_breaker(route->breaker);
    if (o.max_concurrent_calls > 0) {
      Result<std::shared_ptr<Bulkhead>> bulkhead =
          Bulkhead::create(key, env,
                           BulkheadOptions{.max_concurrent = o.max_concurrent_calls,
                                           .max_queue = o.max_concurrent_calls * 4,
                                           .queue_timeout = kInfinite});
      if (!bulkhead.ok()) return bulkhead.error().with_context(at + ": max_concurrent_calls");
      builder.bulkhead(std::move(bulkhead).value());
    }
    auto per_minute = [&](std::uint64_t n, const char* what) -> Result<std::shared_ptr<RateLimiter>> {
      Result<std::shared_ptr<RateLimiter>> l =
          RateLimiter::create(key + "/" + what, env,
                              RateLimiterOptions{.capacity = n,
                                                 .refill_units = n,
                                                 .refill_period = std::chrono::minutes(1),
                                                 .mode = RateLimitMode::kWait,
                                                 .max_wait = o.max_limiter_wait});
      if (!l.ok()) return l.error().with_context(at + ": " + what);
      return l;
    };
    if (o.requests_per_minute > 0) {
      Result<std::shared_ptr<RateLimiter>> l = per_minute(o.requests_per_minute, "requests_per_minute");
      if (!l.ok()) return l.error();
      route->requests = std::move(l).value();
    }
    if (o.tokens_per_minute > 0) {
      Result<std::shared_ptr<RateLimiter>> l = per_minute(o.tokens_per_minute, "tokens_per_minute");
      if (!l.ok()) return l.error();
      route->tokens = std::move(l).value();
    }
    if (route->requests) builder.rate_limiter(route->requests);
    if (route->tokens) builder.rate_limiter(route->tokens);  // units: each call's estimate (call_route)
    builder.limiter_step({.within_attempt_timeout = true, .refusal_ends_run = true});
    if (o.attempt_timeout != kInfinite) builder.attempt_timeout(o.attempt_timeout);
    Result<Pipeline> pipeline = builder.build();
    if (!pipeline.ok()) return pipeline.error().with_context(at);
    route->pipeline.emplace(std::move(pipeline).value());
    route->options = std::move(o);
    impl->routes.push_back(std::move(route));
  }
  return std::unique_ptr<Router>(new Router(std::move(impl)));
}

Router::Router(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Router::~Router() = default;

Task<Result<RoutedResponse>> Router::route(Context& ctx, const ChatRequest& req) {
  static const StreamHooks kNoHooks;
  return impl_->route(impl_, ctx, req, kNoHooks);
}

Task<Result<RoutedResponse>> Router::route(Context& ctx, const ChatRequest& req, const StreamHooks& hooks) {
  return impl_->route(impl_, ctx, req, hooks);
}

Task<ChatOutcome> Router::complete(Context& ctx, const ChatRequest& req, TextSink on_text) {
  StreamHooks hooks{.on_text = std::move(on_text)};
  Result<RoutedResponse> r = co_await impl_->route(impl_, ctx, req, hooks);
  if (!r.ok()) co_return ChatOutcome{std::move(r).error(), std::nullopt};
  co_return ChatOutcome{std::move(r->response), std::nullopt};
}

const std::string& Router::name() const { return impl_->name; }
std::size_t Router::size() const { return impl_->routes.size(); }
const std::string& Router::route_name(std::size_t i) const { return impl_->routes.at(i)->options.name; }

RouteCounters Router::counters(std::size_t i) const {
  const Impl::Route& r = *impl_->routes.at(i);
  RouteCounters c;
  c.calls = r.calls.load(std::memory_order_relaxed);
  c.served = r.served.load(std::memory_order_relaxed);
  for (std::size_t k = 0; k < kReasons; ++k) c.left[k] = r.left[k].load(std::memory_order_relaxed);
  c.compactions = r.compactions.load(std::memory_order_relaxed);
  return c;
}

std::shared_ptr<CircuitBreaker> Router::breaker(std::size_t i) const { return impl_->routes.at(i)->breaker; }

}  // namespace nines::llm
