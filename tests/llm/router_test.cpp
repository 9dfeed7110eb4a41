// The router (llm/router.hpp): fallback down the chain, size checks, compaction, limits and
// streaming restarts, with scripted models on the virtual clock.
#include "nines/llm/router.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <deque>
#include <string>
#include <vector>

#include "nines/llm/context.hpp"
#include "nines/llm/sim.hpp"
#include "nines/store/memory_store.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines::llm {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

using namespace std::chrono_literals;

// One scripted answer of a fake model.
struct Step {
  std::optional<ErrorKind> error;  // nullopt: answer
  bool auth = false;               // a 401-like failure (ApiFailure::auth)
  std::optional<Duration> retry_after;
  std::vector<std::string> pieces = {"ok"};  // streamed text (the answer is their concatenation)
  bool cut_after_pieces = false;             // stream the pieces, then fail with `error`
  Duration takes = 10ms;
  std::int64_t input_tokens = 100;
};

// A ChatModel that plays a script (then answers "ok" forever) and records what it was asked.
class ScriptedModel final : public ChatModel {
 public:
  explicit ScriptedModel(std::string name, std::vector<Step> script = {})
      : name_(std::move(name)), script_(script.begin(), script.end()) {}

  Task<ChatOutcome> complete(Context& ctx, const ChatRequest& req, TextSink on_text) override {
    requests.push_back(req);
    Step s = script_.empty() ? Step{} : script_.front();
    if (!script_.empty()) script_.pop_front();
    auto slept = co_await ctx.sleep(s.takes);
    if (!slept.ok()) co_return ChatOutcome{slept.error(), std::nullopt};
    if (s.error && !s.cut_after_pieces) co_return failure(ctx, s);
    std::string text;
    for (const std::string& p : s.pieces) {
      text += p;
      if (req.stream && on_text) on_text(p);
    }
    if (s.error) co_return failure(ctx, s);
    ChatResponse r;
    r.model = req.model;
    r.message = Message::assistant(text);
    r.finish_reason = FinishReason::kStop;
    r.usage = {.input_tokens = s.input_tokens, .output_tokens = 5};
    co_return ChatOutcome{std::move(r), std::nullopt};
  }

  std::vector<ChatRequest> requests;

 private:
  ChatOutcome failure(Context& ctx, const Step& s) {
    Error e(*s.error, name_ + " scripted failure");
    if (s.retry_after) e = std::move(e).with_retry_at(ctx.now() + *s.retry_after);
    std::optional<ApiFailure> f;
    if (s.auth) f = ApiFailure{.error = e, .status = 401, .auth = true};
    return ChatOutcome{std::move(e), std::move(f)};
  }

  std::string name_;
  std::deque<Step> script_;
};

// A sizer that counts each byte of text as a token, and records observations.
class ByteCountSizer final : public PromptSizer {
 public:
  std::int64_t estimate(const ChatRequest& r) const override {
    std::int64_t n = 0;
    for (const Message& m : r.messages) n += static_cast<std::int64_t>(m.text().size());
    return n;
  }
  void observe(std::string_view model, std::int64_t estimated, std::int64_t reported) override {
    observed.push_back(std::string(model) + ":" + std::to_string(estimated) + "->" + std::to_string(reported));
  }
  std::vector<std::string> observed;
};

RetryOptions retries(int attempts) {
  RetryOptions o;
  o.max_attempts = attempts;
  o.backoff = Backoff::constant(100ms);
  o.max_retry_after = 5s;
  return o;
}

ModelRouteOptions route(std::string name, std::shared_ptr<ChatModel> model, std::int64_t window = 1000) {
  ModelRouteOptions o;
  o.name = name;
  o.model = "model-" + name;
  o.client = std::move(model);
  o.context_window_tokens = window;
  o.max_output_tokens = 100;
  o.retry = retries(3);
  return o;
}

ChatRequest prompt(std::string text = "hello", bool stream = false) {
  ChatRequest r;
  r.messages = {Message::system("sys"), Message::user(std::move(text))};
  r.stream = stream;
  return r;
}

struct Harness {
  test::SimRuntime s;
  std::shared_ptr<ByteCountSizer> sizer = std::make_shared<ByteCountSizer>();

  std::unique_ptr<Router> make(std::vector<ModelRouteOptions> chain, Compactor compactor = {}) {
    RouterOptions o{.name = "r", .chain = std::move(chain), .sizer = sizer, .compactor = std::move(compactor)};
    auto r = Router::create(s.env, std::move(o));
    EXPECT_THAT(r, IsOk());
    return std::move(r).value();
  }

  Result<RoutedResponse> run(Router& router, const ChatRequest& req, const Router::StreamHooks* hooks = nullptr,
                             Duration* took = nullptr) {
    std::optional<Result<RoutedResponse>> out;
    s.spawn([&](Context& ctx) -> Task<> {
      TimePoint t0 = ctx.now();
      if (hooks) {
        out.emplace(co_await router.route(ctx, req, *hooks));
      } else {
        out.emplace(co_await router.route(ctx, req));
      }
      if (took) *took = ctx.now() - t0;
    });
    s.rt->advance(1h);
    EXPECT_TRUE(out.has_value());
    return std::move(*out);
  }
};

// Runs `n` calls one after another in one process (no virtual time between them); their
// results and how long each took.
std::vector<std::pair<Result<RoutedResponse>, Duration>> run_in_a_row(Harness& h, Router& router, int n) {
  std::vector<std::pair<Result<RoutedResponse>, Duration>> out;
  h.s.spawn([&](Context& ctx) -> Task<> {
    for (int i = 0; i < n; ++i) {
      ChatRequest req = prompt();
      TimePoint t0 = ctx.now();
      Result<RoutedResponse> r = co_await router.route(ctx, req);
      out.emplace_back(std::move(r), ctx.now() - t0);
    }
  });
  h.s.rt->advance(1h);
  return out;
}

std::size_t reason_index(FallbackReason r) { return static_cast<std::size_t>(r); }

TEST(Router, PrimaryAnswersUndegraded) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a");
  auto b = std::make_shared<ScriptedModel>("b");
  auto router = h.make({route("a", a), route("b", b)});
  auto r = h.run(*router, prompt());
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "a");
  EXPECT_FALSE(r->degraded);
  EXPECT_TRUE(r->fallbacks.empty());
  ASSERT_EQ(a->requests.size(), 1u);
  EXPECT_EQ(a->requests[0].model, "model-a");        // the route's model is sent
  EXPECT_EQ(a->requests[0].max_output_tokens, 100);  // and its output reserve
  EXPECT_TRUE(b->requests.empty());
  EXPECT_EQ(router->counters(0).served, 1u);
}

TEST(Router, TransientFailuresAreRetriedOnTheSameRoute) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>(
      "a", std::vector<Step>{{.error = ErrorKind::kTransient}, {.error = ErrorKind::kTimeout}});
  auto router = h.make({route("a", a), route("b", std::make_shared<ScriptedModel>("b"))});
  Duration took{};
  auto r = h.run(*router, prompt(), nullptr, &took);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "a");
  EXPECT_EQ(a->requests.size(), 3u);
  EXPECT_EQ(took, 230ms);  // three 10 ms calls, two 100 ms backoffs
}

TEST(Router, FallsBackWhenRetriesAreExhaustedAndSaysWhy) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>(3, Step{.error = ErrorKind::kTransient}));
  auto b = std::make_shared<ScriptedModel>("b");
  auto router = h.make({route("a", a), route("b", b)});
  auto r = h.run(*router, prompt());
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "b");
  EXPECT_TRUE(r->degraded);
  ASSERT_EQ(r->fallbacks.size(), 1u);
  EXPECT_EQ(r->fallbacks[0].route, "a");
  EXPECT_EQ(r->fallbacks[0].reason, FallbackReason::kRetriesExhausted);
  EXPECT_THAT(r->fallbacks[0].error.message(), HasSubstr("route 'a'"));
  EXPECT_EQ(b->requests.at(0).model, "model-b");
  EXPECT_EQ(router->counters(0).left[reason_index(FallbackReason::kRetriesExhausted)], 1u);
  EXPECT_EQ(router->counters(1).served, 1u);
}

TEST(Router, AFallbackIsLoggedWithTheRouteTheReasonAndTheNextRoute) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>(3, Step{.error = ErrorKind::kTransient}));
  auto b = std::make_shared<ScriptedModel>("b", std::vector<Step>{{.error = ErrorKind::kPermanent, .auth = true}});
  auto c = std::make_shared<ScriptedModel>("c");
  auto router = h.make({route("a", a), route("b", b), route("c", c)});
  auto r = h.run(*router, prompt());
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "c");
  CaptureSink& logs = h.s.env.captured_logs();
  auto lines = logs.records("model_fallback");
  ASSERT_EQ(lines.size(), 2u) << logs.dump();
  EXPECT_EQ(lines[0].level, LogLevel::kWarning);
  EXPECT_EQ(lines[0].field("router"), "r");
  EXPECT_EQ(lines[0].field("route"), "a");
  EXPECT_EQ(lines[0].field("next"), "b");
  EXPECT_EQ(lines[0].field("reason"), "retries_exhausted");
  EXPECT_EQ(lines[0].field("error_kind"), "transient");
  EXPECT_EQ(lines[0].field("error"), "route 'a': retry: gave up after 3 attempts: a scripted failure");
  EXPECT_EQ(lines[1].field("route"), "b");
  EXPECT_EQ(lines[1].field("next"), "c");
  EXPECT_EQ(lines[1].field("reason"), "auth_failure");
  // The auth failure forced b's breaker open, which is reported too.
  auto forced = logs.records("breaker_forced_open");
  ASSERT_EQ(forced.size(), 1u) << logs.dump();
  EXPECT_EQ(forced[0].field("breaker"), "r/b");

  // The last route failing has no next route.
  logs.clear();
  auto only = std::make_shared<ScriptedModel>("only", std::vector<Step>(3, Step{.error = ErrorKind::kTransient}));
  auto single = h.make({route("only", only)});
  EXPECT_FALSE(h.run(*single, prompt()).ok());
  lines = logs.records("model_fallback");
  ASSERT_EQ(lines.size(), 1u) << logs.dump();
  EXPECT_EQ(lines[0].field("next"), std::nullopt);
  EXPECT_EQ(lines[0].message, "model route failed; no route left to try");
}

TEST(Router, AnOpenBreakerIsSkippedWithoutCallingTheModel) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>(100, Step{.error = ErrorKind::kTransient}));
  auto b = std::make_shared<ScriptedModel>("b");
  auto ra = route("a", a);
  ra.retry = retries(1);
  ra.breaker = CircuitBreakerOptions{.consecutive_failures = 2, .open_duration = 4min};
  auto router = h.make({ra, route("b", b)});
  auto calls = run_in_a_row(h, *router, 3);  // no virtual time between them: it stays open
  ASSERT_EQ(calls.size(), 3u);
  for (auto& c : calls) ASSERT_THAT(c.first, IsOk());
  EXPECT_EQ(a->requests.size(), 2u);  // the third call did not reach it
  EXPECT_EQ(calls[0].first->fallbacks.at(0).reason, FallbackReason::kRetriesExhausted);
  EXPECT_EQ(calls[2].first->served_by, "b");
  EXPECT_EQ(calls[2].first->fallbacks.at(0).reason, FallbackReason::kCircuitOpen);
}

TEST(Router, AuthFailureForcesTheBreakerOpenAndFallsBack) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>{{.error = ErrorKind::kPermanent, .auth = true}});
  auto b = std::make_shared<ScriptedModel>("b");
  auto router = h.make({route("a", a), route("b", b)});
  auto r = h.run(*router, prompt());
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "b");
  EXPECT_EQ(r->fallbacks.at(0).reason, FallbackReason::kAuthFailure);
  EXPECT_EQ(a->requests.size(), 1u);  // permanent: not retried
  EXPECT_EQ(router->breaker(0)->state(), BreakerState::kForcedOpen);
  ASSERT_THAT(h.run(*router, prompt()), IsOk());
  EXPECT_EQ(a->requests.size(), 1u);  // stays out until reset
  router->breaker(0)->reset();
  auto again = h.run(*router, prompt());
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->served_by, "a");
}

// Regression: the auth flag of one route's failure was kept for the next route; a route
// whose breaker refused the call (so no attempt ran) was then taken for an auth failure and
// forced open for good.
TEST(Router, AnOpenBreakerAfterAnAuthFailureIsNotTakenForOne) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>{{.error = ErrorKind::kTransient},
                                                                  {.error = ErrorKind::kTransient},
                                                                  {.error = ErrorKind::kTransient},
                                                                  {.error = ErrorKind::kPermanent, .auth = true}});
  auto b = std::make_shared<ScriptedModel>("b", std::vector<Step>{{.error = ErrorKind::kTransient}});
  auto c = std::make_shared<ScriptedModel>("c");
  auto rb = route("b", b);
  rb.retry = retries(1);
  rb.breaker = CircuitBreakerOptions{.consecutive_failures = 1, .open_duration = 4min};
  auto router = h.make({route("a", a), rb, route("c", c)});
  // First call: a exhausts its retries, b fails once (its breaker opens), c answers. Second
  // call at once: a's key is refused, b's breaker is still open, c answers.
  auto calls = run_in_a_row(h, *router, 2);
  ASSERT_EQ(calls.size(), 2u);
  ASSERT_THAT(calls[0].first, IsOk());
  ASSERT_EQ(calls[0].first->fallbacks.size(), 2u);
  EXPECT_EQ(calls[0].first->fallbacks[1].reason, FallbackReason::kRetriesExhausted);
  auto& r = calls[1].first;
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "c");
  ASSERT_EQ(r->fallbacks.size(), 2u);
  EXPECT_EQ(r->fallbacks[0].reason, FallbackReason::kAuthFailure);
  EXPECT_EQ(r->fallbacks[1].reason, FallbackReason::kCircuitOpen);
  EXPECT_THAT(r->fallbacks[1].error, StatusIs(ErrorKind::kCircuitOpen));
  EXPECT_EQ(router->breaker(0)->state(), BreakerState::kForcedOpen);
  EXPECT_EQ(router->breaker(1)->state(), BreakerState::kOpen);  // not isolated: it recovers by itself
  EXPECT_EQ(b->requests.size(), 1u);
}

// Regression: the local limiter's refusal on one route was kept for the next route; a route
// whose breaker refused the call was then reported with the previous route's limiter error.
TEST(Router, AnOpenBreakerAfterALocalLimitIsReportedAsCircuitOpen) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a");
  auto c = std::make_shared<ScriptedModel>("c");
  auto ra = route("a", a);
  ra.requests_per_minute = 1;
  ra.max_limiter_wait = 1s;
  auto router = h.make({ra, route("b", std::make_shared<ScriptedModel>("b")), route("c", c)});
  router->breaker(1)->isolate();
  auto calls = run_in_a_row(h, *router, 2);  // the second finds a's bucket empty (60 s to wait)
  ASSERT_EQ(calls.size(), 2u);
  auto& r = calls[1].first;
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "c");
  ASSERT_EQ(r->fallbacks.size(), 2u);
  EXPECT_EQ(r->fallbacks[0].reason, FallbackReason::kRateLimited);
  EXPECT_EQ(r->fallbacks[1].route, "b");
  EXPECT_EQ(r->fallbacks[1].reason, FallbackReason::kCircuitOpen);
  EXPECT_THAT(r->fallbacks[1].error, StatusIs(ErrorKind::kCircuitOpen, Not(HasSubstr("local rate limit"))));
}

// Regression: a call needing more tokens than the route's whole tokens_per_minute made the
// limiter answer kInvalidArgument, which stopped the chain as if the request were malformed.
TEST(Router, ACallLargerThanTheTokensPerMinuteLimitFallsBack) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a");
  auto b = std::make_shared<ScriptedModel>("b");
  auto ra = route("a", a);
  ra.tokens_per_minute = 50;  // the call needs 8 + 100 reserved
  auto router = h.make({ra, route("b", b)});
  auto r = h.run(*router, prompt());
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "b");
  EXPECT_TRUE(a->requests.empty());
  ASSERT_EQ(r->fallbacks.size(), 1u);
  EXPECT_EQ(r->fallbacks[0].reason, FallbackReason::kRateLimited);
  EXPECT_THAT(r->fallbacks[0].error.message(), HasSubstr("tokens_per_minute"));
}

// Regression: the limiters wait inside the attempt timeout; a wait longer than the attempt
// timeout (but within max_limiter_wait) made the limiter answer kDeadlineExceeded, which
// stopped the chain as if the caller's deadline had passed.
TEST(Router, ALimiterWaitLongerThanTheAttemptTimeoutFallsBack) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a");
  auto b = std::make_shared<ScriptedModel>("b");
  auto ra = route("a", a);
  ra.requests_per_minute = 2;  // the third call in a row waits about 30 s
  ra.attempt_timeout = 5s;
  auto router = h.make({ra, route("b", b)});
  auto calls = run_in_a_row(h, *router, 3);
  ASSERT_EQ(calls.size(), 3u);
  auto& r = calls[2].first;
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "b");
  EXPECT_EQ(a->requests.size(), 2u);
  ASSERT_EQ(r->fallbacks.size(), 1u);
  EXPECT_EQ(r->fallbacks[0].reason, FallbackReason::kRateLimited);
  EXPECT_LT(calls[2].second, 1s);  // left at once, not after waiting
}

TEST(Router, ARouteWhoseWindowCannotHoldThePromptIsSkippedBeforeTheCall) {
  Harness h;
  auto small = std::make_shared<ScriptedModel>("small");
  auto big = std::make_shared<ScriptedModel>("big");
  auto router = h.make({route("small", small, 300), route("big", big, 5000)});
  auto r = h.run(*router, prompt(std::string(250, 'x')));  // 253 + 100 reserved > 300
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(small->requests.empty());
  EXPECT_EQ(r->served_by, "big");
  ASSERT_EQ(r->fallbacks.size(), 1u);
  EXPECT_EQ(r->fallbacks[0].reason, FallbackReason::kWindowTooSmall);
  EXPECT_THAT(r->fallbacks[0].error.message(), HasSubstr("the window is 300"));
}

TEST(Router, ContextOverflowFallsBackOnlyToALargerWindow) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>{{.error = ErrorKind::kContextOverflow}});
  auto same = std::make_shared<ScriptedModel>("same");
  auto bigger = std::make_shared<ScriptedModel>("bigger");
  auto router = h.make({route("a", a, 1000), route("same", same, 1000), route("bigger", bigger, 2000)});
  auto r = h.run(*router, prompt());
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "bigger");
  EXPECT_EQ(a->requests.size(), 1u);  // context overflow is not retried as is
  EXPECT_TRUE(same->requests.empty());
  ASSERT_EQ(r->fallbacks.size(), 2u);
  EXPECT_EQ(r->fallbacks[0].reason, FallbackReason::kContextOverflow);
  EXPECT_EQ(r->fallbacks[1].reason, FallbackReason::kWindowTooSmall);
}

TEST(Router, ContextOverflowIsCompactedAndRetriedOnce) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>(
      "a", std::vector<Step>{{.error = ErrorKind::kContextOverflow}, {.error = ErrorKind::kContextOverflow}});
  auto b = std::make_shared<ScriptedModel>("b");
  std::vector<std::string> compactions;
  Compactor compact = [&](Context&, const ChatRequest& req, std::int64_t budget,
                          bool after_overflow) -> Task<Result<ChatRequest>> {
    compactions.push_back(std::to_string(budget) + (after_overflow ? " after overflow" : ""));
    ChatRequest smaller = req;
    smaller.messages.back() = Message::user("short");
    co_return smaller;
  };
  // First call: overflow, compaction, the retry answers.
  auto router = h.make({route("a", a, 1000), route("b", b, 4000)}, compact);
  ScriptedModel* pa = a.get();
  auto r1 = h.run(*router, prompt());
  ASSERT_THAT(r1, IsOk());
  EXPECT_EQ(r1->served_by, "b");  // the compacted retry overflowed too (second scripted step)
  EXPECT_EQ(pa->requests.size(), 2u);
  EXPECT_EQ(pa->requests[1].messages.back().text(), "short");
  ASSERT_EQ(compactions.size(), 1u);  // once, not in a loop
  EXPECT_EQ(compactions[0], "900 after overflow");
  EXPECT_EQ(b->requests.at(0).messages.back().text(), "hello");  // the larger window gets the whole prompt
  // Second call: a succeeds after compaction.
  auto a2 = std::make_shared<ScriptedModel>("a2", std::vector<Step>{{.error = ErrorKind::kContextOverflow}});
  auto router2 = h.make({route("a2", a2, 1000)}, compact);
  auto r2 = h.run(*router2, prompt());
  ASSERT_THAT(r2, IsOk());
  EXPECT_EQ(r2->served_by, "a2");
  EXPECT_TRUE(r2->compacted);
  EXPECT_TRUE(r2->degraded);
  EXPECT_EQ(router2->counters(0).compactions, 1u);
}

TEST(Router, WhenNoWindowFitsThePromptIsCompactedForTheLargest) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a");
  auto b = std::make_shared<ScriptedModel>("b");
  std::int64_t seen_budget = 0;
  std::string seen_model;
  Compactor compact = [&](Context&, const ChatRequest& req, std::int64_t budget, bool) -> Task<Result<ChatRequest>> {
    seen_budget = budget;
    seen_model = req.model;
    ChatRequest smaller = req;
    smaller.messages.back() = Message::user(std::string(static_cast<std::size_t>(budget - 10), 'y'));
    co_return smaller;
  };
  auto router = h.make({route("a", a, 500), route("b", b, 800)}, compact);
  auto r = h.run(*router, prompt(std::string(5000, 'x')));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(seen_budget, 700);
  EXPECT_EQ(seen_model, "model-b");  // compacted for the route it was compacted for
  EXPECT_EQ(r->served_by, "b");
  EXPECT_TRUE(r->compacted);
  EXPECT_TRUE(a->requests.empty());
}

TEST(Router, WithoutACompactorAPromptTooBigForEveryWindowIsAContextOverflow) {
  Harness h;
  auto router = h.make({route("a", std::make_shared<ScriptedModel>("a"), 500)});
  auto r = h.run(*router, prompt(std::string(5000, 'x')));
  ASSERT_THAT(r, StatusIs(ErrorKind::kContextOverflow, HasSubstr("a: window_too_small")));
}

TEST(Router, WhenEveryRouteFailsTheErrorNamesEachAndWhy) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>(3, Step{.error = ErrorKind::kTransient}));
  auto b = std::make_shared<ScriptedModel>("b", std::vector<Step>{{.error = ErrorKind::kPermanent}});
  auto router = h.make({route("a", a), route("b", b)});
  auto r = h.run(*router, prompt());
  ASSERT_THAT(r, StatusIs(ErrorKind::kPermanent));
  const std::string& m = r.error().message();
  EXPECT_THAT(m, HasSubstr("router 'r'"));
  EXPECT_THAT(m, HasSubstr("a: retries_exhausted"));
  EXPECT_THAT(m, HasSubstr("b: permanent_error"));
}

TEST(Router, AMalformedRequestStopsTheChain) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>{{.error = ErrorKind::kInvalidArgument}});
  auto b = std::make_shared<ScriptedModel>("b");
  auto router = h.make({route("a", a), route("b", b)});
  auto r = h.run(*router, prompt());
  ASSERT_THAT(r, StatusIs(ErrorKind::kInvalidArgument));
  EXPECT_TRUE(b->requests.empty());
}

TEST(Router, ARetryTimeBeyondThePolicysLimitFallsBackAtOnce) {
  Harness h;
  auto a =
      std::make_shared<ScriptedModel>("a", std::vector<Step>{{.error = ErrorKind::kRateLimited, .retry_after = 2s},
                                                             {.error = ErrorKind::kRateLimited, .retry_after = 10min}});
  auto b = std::make_shared<ScriptedModel>("b");
  auto router = h.make({route("a", a), route("b", b)});
  Duration took{};
  auto r = h.run(*router, prompt(), nullptr, &took);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "b");
  EXPECT_EQ(r->fallbacks.at(0).reason, FallbackReason::kRateLimited);
  EXPECT_EQ(a->requests.size(), 2u);  // the 2 s wait was honoured, the 10 min one was not
  EXPECT_GE(took, 2s);
  EXPECT_LT(took, 3s);
}

TEST(Router, RequestsPerMinuteAreEnforcedLocally) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a");
  auto ra = route("a", a);
  ra.requests_per_minute = 2;
  auto router = h.make({ra});
  auto calls = run_in_a_row(h, *router, 3);
  ASSERT_EQ(calls.size(), 3u);
  for (auto& c : calls) ASSERT_THAT(c.first, IsOk());
  EXPECT_EQ(calls[0].second, 10ms);
  EXPECT_EQ(calls[1].second, 10ms);
  EXPECT_GE(calls[2].second, 29s);  // the third waits for the bucket (2 per minute: one every 30 s)
  EXPECT_LE(calls[2].second, 31s);
}

TEST(Router, TokensPerMinuteTakeTheEstimateAndSettleWithUsage) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>{{.input_tokens = 400}});
  auto b = std::make_shared<ScriptedModel>("b");
  auto ra = route("a", a);
  ra.tokens_per_minute = 600;
  ra.max_limiter_wait = 1s;
  auto router = h.make({ra, route("b", b)});
  // Estimate 8 + 100 reserved = 108; reported 400 + 5: the bucket is charged 405 and keeps
  // 195. The second call (108, settled at 105) leaves 90; a third would wait ~2 s for 108,
  // more than max_limiter_wait: the route is left for b.
  auto calls = run_in_a_row(h, *router, 3);
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(h.sizer->observed.at(0), "model-a:8->400");
  ASSERT_THAT(calls[1].first, IsOk());
  EXPECT_EQ(calls[1].first->served_by, "a");
  auto& r = calls[2].first;
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "b");
  EXPECT_EQ(r->fallbacks.at(0).reason, FallbackReason::kRateLimited);
}

TEST(Router, AStreamRestartedByARetryTellsTheSinkFirst) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>(
      "a", std::vector<Step>{{.error = ErrorKind::kTransient, .pieces = {"Hel"}, .cut_after_pieces = true},
                             {.pieces = {"Hel", "lo"}}});
  auto router = h.make({route("a", a)});
  std::vector<std::string> seen;
  Router::StreamHooks hooks{.on_text = [&](std::string_view t) { seen.emplace_back(t); },
                            .on_restart = [&] { seen.emplace_back("<restart>"); }};
  ChatRequest req = prompt("hi", true);
  auto r = h.run(*router, req, &hooks);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(seen, (std::vector<std::string>{"Hel", "<restart>", "Hel", "lo"}));
  EXPECT_EQ(r->response.message.text(), "Hello");
}

TEST(Router, RouterIsAChatModel) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>(3, Step{.error = ErrorKind::kTransient}));
  auto router = h.make({route("a", a), route("b", std::make_shared<ScriptedModel>("b"))});
  ChatModel& model = *router;
  std::optional<ChatOutcome> out;
  h.s.spawn([&](Context& ctx) -> Task<> {
    ChatRequest req = prompt();
    TextSink none;
    out.emplace(co_await model.complete(ctx, req, none));
  });
  h.s.rt->advance(1h);
  ASSERT_TRUE(out && out->result.ok());
  EXPECT_EQ(out->result->model, "model-b");
}

// Regression: a call in flight used the Router's state through a plain pointer; replacing
// the Router (a configuration reload) while a process was suspended in route() left it to
// resume into freed memory.
TEST(Router, ACallInFlightOutlivesItsRouter) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>{{.error = ErrorKind::kTransient}});
  std::unique_ptr<Router> router = h.make({route("a", a)});
  std::optional<Result<RoutedResponse>> out;
  h.s.spawn([&, r = router.get()](Context& ctx) -> Task<> {
    ChatRequest req = prompt();
    Result<RoutedResponse> res = co_await r->route(ctx, req);
    out.emplace(std::move(res));
  });
  h.s.rt->advance(5ms);  // inside the first attempt
  ASSERT_FALSE(out.has_value());
  router.reset();
  a.reset();  // the route's client too: the call keeps it
  h.s.rt->advance(1h);
  ASSERT_TRUE(out.has_value());
  ASSERT_TRUE(out->ok()) << out->error().to_string();  // retried after the transient failure
  EXPECT_EQ((*out)->served_by, "a");
}

TEST(Router, CreateRejectsBadOptionsNamingTheField) {
  Harness h;
  auto m = std::make_shared<ScriptedModel>("m");
  auto err = [&](std::vector<ModelRouteOptions> chain) {
    auto r = Router::create(h.s.env, RouterOptions{.name = "r", .chain = std::move(chain)});
    EXPECT_FALSE(r.ok());
    return r.ok() ? std::string() : r.error().message();
  };
  EXPECT_THAT(err({}), HasSubstr("chain is empty"));
  EXPECT_THAT(err({route("a", m), route("a", m)}), HasSubstr("chain[1]: name 'a' is used twice"));
  EXPECT_THAT(err({route("a", nullptr)}), HasSubstr("'a' has no client"));
  auto tight = route("a", m, 100);
  EXPECT_THAT(err({tight}), HasSubstr("max_output_tokens must be > 0 and < context_window_tokens (100)"));
  auto bad_retry = route("a", m);
  bad_retry.retry.max_attempts = 0;
  EXPECT_THAT(err({bad_retry}), HasSubstr("chain[0]: retry"));
}

TEST(Router, ByteSizerOverEstimatesEnglish) {
  auto sizer = make_byte_sizer();
  ChatRequest r = prompt(std::string(400, 'a'));
  EXPECT_GE(sizer->estimate(r), 400 / 4);
}

TEST(Router, TheDefaultSizerIsTheCalibratedEstimator) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a");
  auto ra = route("a", a, 1000);
  RouterOptions o{.name = "r", .chain = {ra}};  // no sizer: the token estimator
  auto router = Router::create(h.s.env, std::move(o)).value();
  std::string words;
  for (int i = 0; i < 400; ++i) words += "word ";  // 2,000 bytes, about 400 tokens
  auto r = h.run(*router, prompt(words));
  ASSERT_THAT(r, IsOk());  // a bytes/3 estimate (667) + 100 would still fit;
  EXPECT_EQ(r->served_by, "a");
  for (int i = 0; i < 600; ++i) words += "word ";  // now about 1,000 tokens: over the window
  auto too_big = h.run(*router, prompt(words));
  ASSERT_THAT(too_big, StatusIs(ErrorKind::kContextOverflow));
  EXPECT_EQ(a->requests.size(), 1u);
}

TEST(Router, TheFitCompactorDropsTheOldestTurnsAfterAnOverflow) {
  Harness h;
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>{{.error = ErrorKind::kContextOverflow}});
  auto estimator = std::shared_ptr<TokenEstimator>(TokenEstimator::create().value());
  RouterOptions o{.name = "r",
                  .chain = {route("a", a, 4000)},
                  .sizer = make_token_sizer(estimator),
                  .compactor = make_fit_compactor(estimator)};
  auto router = Router::create(h.s.env, std::move(o)).value();
  ChatRequest req;
  req.messages.push_back(Message::system("You are terse."));
  for (int i = 0; i < 40; ++i) {
    req.messages.push_back(Message::user("question " + std::to_string(i) + ": " + std::string(80, 'q')));
    req.messages.push_back(Message::assistant("answer " + std::to_string(i) + ": " + std::string(80, 'a')));
  }
  req.messages.push_back(Message::user("the last question"));
  auto r = h.run(*router, req);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->compacted);
  ASSERT_EQ(a->requests.size(), 2u);
  const auto& retried = a->requests[1].messages;
  EXPECT_LT(retried.size(), req.messages.size());
  EXPECT_EQ(retried.front().text(), "You are terse.");    // the system prompt is kept
  EXPECT_EQ(retried.back().text(), "the last question");  // and the newest turn
}

// Regression: after an overflow the budget for the messages was scaled to 70% before the
// "tools alone" check, so the error stated a wrong number of tokens for the tools.
TEST(Router, TheFitCompactorSaysWhatTheToolsNeed) {
  Harness h;
  auto estimator = std::shared_ptr<TokenEstimator>(TokenEstimator::create().value());
  Compactor compact = make_fit_compactor(estimator);
  ChatRequest req = prompt();
  req.model = "gpt-4o";
  req.tools.push_back({.name = "lookup", .description = std::string(4000, 'd')});
  const std::int64_t tools = estimator->counter(req.model).tools(req.tools);
  ASSERT_GT(tools, 200);
  std::vector<std::string> messages;
  h.s.spawn([&](Context& ctx) -> Task<> {
    const bool modes[] = {false, true};
    for (bool after_overflow : modes) {
      Result<ChatRequest> r = co_await compact(ctx, req, 200, after_overflow);
      messages.push_back(r.ok() ? std::string("ok") : r.error().message());
    }
  });
  h.s.rt->advance(1h);
  ASSERT_EQ(messages.size(), 2u);
  const std::string expected = "the tools alone need " + std::to_string(tools) + " tokens; the budget is 200";
  for (const std::string& m : messages) EXPECT_THAT(m, HasSubstr(expected));
}

TEST(Router, APerCallCompactorSummarizesIntoACheckpointInTheStore) {
  Harness h;
  auto store = make_memory_store().value();
  // The summarizer: the sim, in-process, answering a fixed summary.
  auto sim = SimModel::from_json(R"({"scenario": [{"answer": "The user asked 30 questions about Paris."}]})").value();
  auto summarizer = std::make_shared<SimChatModel>(sim);
  auto manager = ContextManager::create({.summarizer_model = "sim-small"}, nullptr, summarizer).value();
  auto a = std::make_shared<ScriptedModel>("a", std::vector<Step>{{.error = ErrorKind::kContextOverflow}});
  auto router = h.make({route("a", a, 4000)});
  std::optional<Result<RoutedResponse>> out;
  std::optional<Conversation> conversation;
  h.s.spawn([&](Context& ctx) -> Task<> {
    conversation.emplace(Conversation::load(*store, "task-1", commit_to_store(*store)).value());
    std::vector<Message> history;
    for (int i = 0; i < 30; ++i) {
      history.push_back(Message::user("question " + std::to_string(i) + " about Paris: " + std::string(120, 'q')));
      history.push_back(Message::assistant("answer " + std::to_string(i) + ": " + std::string(120, 'a')));
    }
    Status appended = co_await conversation->append(ctx, history);
    EXPECT_THAT(appended, IsOk());
    std::vector<Message> live = {Message::system("You are terse."), Message::user("And the weather?")};
    ChatRequest req;
    req.messages = live;
    for (const auto& e : conversation->tail()) req.messages.insert(req.messages.end() - 1, e.message);
    Router::StreamHooks hooks;
    hooks.compactor = [&](Context& c, const ChatRequest& r, std::int64_t budget, bool) -> Task<Result<ChatRequest>> {
      const PromptBudget prompt_budget{r.model, budget};  // named: g++ 12 (see runtime/task.hpp)
      Result<Prepared> p = co_await manager->compact(c, *conversation, live, prompt_budget);
      if (!p.ok()) co_return p.error();
      ChatRequest smaller = r;
      smaller.messages = std::move(p->fit.messages);
      co_return smaller;
    };
    Result<RoutedResponse> r = co_await router->route(ctx, req, hooks);
    out.emplace(std::move(r));
  });
  h.s.rt->advance(1h);
  ASSERT_TRUE(out.has_value());
  ASSERT_TRUE(out->ok()) << out->error().to_string();
  EXPECT_TRUE((*out)->compacted);
  ASSERT_EQ(a->requests.size(), 2u);
  bool summary_in_prompt = false;
  for (const Message& m : a->requests[1].messages) {
    if (m.text().find("The user asked 30 questions about Paris.") != std::string::npos) summary_in_prompt = true;
  }
  EXPECT_TRUE(summary_in_prompt);
  // The checkpoint is durable: a restart loads it, and the full history is still readable.
  auto view = store->load_history("task-1", 100).value();
  ASSERT_TRUE(view.summary.has_value());
  EXPECT_THAT(view.summary->summary, HasSubstr("The user asked 30 questions about Paris."));
  EXPECT_EQ(store->read_history("task-1", 0, 1000).value().size(), 60u);
}

}  // namespace
}  // namespace nines::llm
