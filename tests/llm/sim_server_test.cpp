// The sim over HTTP (llm/sim_server.hpp): every fault the sim injects, each as its own test,
// as the real client path sees it: ModelClient (OpenAI codec) -> HttpClient -> loopback ->
// net::HttpServer -> SimModel. Real environment (sockets), so only lower bounds of time are
// asserted, never upper ones.
#include "nines/llm/sim_server.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "nines/llm/client.hpp"
#include "nines/llm/errors.hpp"
#include "nines/llm/openai.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/runtime.hpp"
#include "support/status_matchers.hpp"

namespace nines::llm {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

using namespace std::chrono_literals;

constexpr const char* kWeatherSchema =
    R"({"type":"object","properties":{"location":{"type":"string"}},"required":["location"]})";

ChatRequest weather_request(bool stream = false) {
  ChatRequest r{.model = "sim-test", .stream = stream};
  r.messages = {Message::system("You are terse."), Message::user("Weather in Paris?")};
  r.tools.push_back(
      {.name = "get_weather", .description = "Current weather", .parameters_schema_json = kWeatherSchema});
  r.tools.push_back({.name = "get_time"});
  return r;
}

// The request after one tool round (so `loop` has something to repeat).
ChatRequest with_history(ChatRequest r) {
  r.messages.push_back(
      Message::assistant("", {{.id = "call_a", .name = "get_time", .arguments_json = R"({"tz":"CET"})"}}));
  r.messages.push_back(Message::tool_result("call_a", "12:00"));
  return r;
}

// A scenario: call get_weather, then answer. Faults are forced with the schedule.
std::string config(const std::string& extra) {
  return R"({"seed": 5, "scenario": [
      {"tool_calls": [{"name": "get_weather", "arguments": {"location": "Paris"}}]},
      {"answer": "Sunny, 21 degrees, in Paris today."}],
    "output": {"tokens_per_chunk": 2})" +
         (extra.empty() ? std::string() : ", " + extra) + "}";
}

struct Fixture {
  explicit Fixture(const std::string& sim_config, net::HttpTimeouts timeouts = {}) {
    sim = SimModel::from_json(sim_config).value();
    server = SimServer::start(*env, sim, {}).value();
    net::HttpClientOptions options;
    options.proxy = "";
    http = net::HttpClient::create(*env, std::move(options)).value();
    client = std::make_unique<ModelClient>(make_openai_codec({.base_url = server->base_url()}).value(), *http,
                                           ModelClientOptions{.timeouts = timeouts});
  }
  ~Fixture() {
    client.reset();
    http.reset();
    server.reset();
  }

  struct Call {
    ChatOutcome outcome{Error(ErrorKind::kInternal, "not run"), std::nullopt};
    std::vector<std::string> texts;
    Duration took{0};
    TimePoint ended;
  };

  Call call(const ChatRequest& req) {
    Call c;
    auto w = rt->spawn_watched([&](Context& ctx) -> Task<> {
                 auto scope = ctx.with_timeout(20s);
                 TimePoint t0 = ctx.now();
                 TextSink sink = [&](std::string_view t) { c.texts.emplace_back(t); };
                 ChatOutcome o = co_await client->complete(ctx, req, sink);
                 c.took = ctx.now() - t0;
                 c.ended = ctx.now();
                 c.outcome = std::move(o);
               }).value();
    EXPECT_TRUE(w.exit->wait().is_normal());
    return c;
  }

  std::unique_ptr<Environment> env = make_real_environment({.workers = 2, .seed = 11});
  std::unique_ptr<Runtime> rt = Runtime::create(*env).value();
  std::shared_ptr<SimModel> sim;
  std::unique_ptr<SimServer> server;
  std::unique_ptr<net::HttpClient> http;
  std::unique_ptr<ModelClient> client;
};

std::string forced(const char* fault) { return std::string(R"("schedule": [{"call": 1, "fault": ")") + fault + "\"}]"; }

TEST(SimServer, TheScenarioProgressesOverHttp) {
  Fixture f(config(""));
  auto first = f.call(weather_request());
  ASSERT_THAT(first.outcome.result, IsOk());
  ASSERT_EQ(first.outcome.result->message.tool_calls.size(), 1u);
  EXPECT_EQ(first.outcome.result->message.tool_calls[0].name, "get_weather");
  EXPECT_EQ(first.outcome.result->finish_reason, FinishReason::kToolCalls);
  ChatRequest next = weather_request(true);
  next.messages.push_back(first.outcome.result->message);
  next.messages.push_back(Message::tool_result(first.outcome.result->message.tool_calls[0].id, "sunny, 21C"));
  auto second = f.call(next);
  ASSERT_THAT(second.outcome.result, IsOk());
  EXPECT_EQ(second.outcome.result->message.text(), "Sunny, 21 degrees, in Paris today.");
  EXPECT_GT(second.texts.size(), 3u);  // streamed in pieces of 2 tokens
  EXPECT_GT(second.outcome.result->usage.input_tokens, 0);
  EXPECT_EQ(f.server->stats().requests, 2u);
}

TEST(SimServer, RateLimitedIs429WithTheRetryTime) {
  Fixture f(config(R"("faults": {"rate_limited": {"retry_after_ms": 3000}}, )" + forced("rate_limited")));
  auto c = f.call(weather_request());
  ASSERT_FALSE(c.outcome.result.ok());
  const Error& e = c.outcome.result.error();
  EXPECT_THAT(e, StatusIs(ErrorKind::kRateLimited));
  ASSERT_TRUE(e.retry_at().has_value());
  EXPECT_GE(*e.retry_at(), c.ended + 2900ms);  // retry-after-ms: 3000, read when the reply came
  ASSERT_TRUE(c.outcome.failure.has_value());
  EXPECT_EQ(c.outcome.failure->status, 429);
  EXPECT_FALSE(c.outcome.failure->quota);
  auto again = f.call(weather_request());  // call 2 is not forced: it answers
  EXPECT_THAT(again.outcome.result, IsOk());
}

void expect_transient_status(const char* fault, int status) {
  Fixture f(config(forced(fault)));
  auto c = f.call(weather_request());
  ASSERT_THAT(c.outcome.result, StatusIs(ErrorKind::kTransient));
  ASSERT_TRUE(c.outcome.failure.has_value());
  EXPECT_EQ(c.outcome.failure->status, status);
}

TEST(SimServer, ServerErrorIs500Transient) { expect_transient_status("server_error", 500); }
TEST(SimServer, UnavailableIs503Transient) { expect_transient_status("unavailable", 503); }
TEST(SimServer, OverloadedIs529Transient) { expect_transient_status("overloaded", 529); }

TEST(SimServer, TimeoutHangsUntilTheClientGivesUp) {
  net::HttpTimeouts t;
  t.first_byte = 300ms;
  Fixture f(config(R"("faults": {"timeout": {"hang_ms": 60000}}, )" + forced("timeout")), t);
  auto c = f.call(weather_request());
  ASSERT_THAT(c.outcome.result, StatusIs(ErrorKind::kTimeout));
  EXPECT_GE(c.took, 300ms);
}

// A client that gave up (or was killed) leaves its request in flight at the server until the
// reply's delay has passed: what bench/peers/agents reads right after a kill.
TEST(SimServer, InFlightCountsRepliesNotYetPlayedEvenWhenTheClientLeft) {
  net::HttpTimeouts t;
  t.first_byte = 300ms;
  Fixture f(config(R"("faults": {"timeout": {"hang_ms": 60000}}, )" + forced("timeout")), t);
  EXPECT_EQ(f.server->stats().in_flight, 0u);
  auto c = f.call(weather_request());
  ASSERT_THAT(c.outcome.result, StatusIs(ErrorKind::kTimeout));
  EXPECT_EQ(f.server->stats().in_flight, 1u);  // the server still plays its 60 s hang
  f.server->reset_stats();
  EXPECT_EQ(f.server->stats().in_flight, 1u);  // a gauge: a reset leaves it
}

TEST(SimServer, AHangEndsWithTheConnectionDroppedAfterHangMs) {
  Fixture f(config(R"("faults": {"timeout": {"hang_ms": 200}}, )" + forced("timeout")));
  auto c = f.call(weather_request());
  ASSERT_THAT(c.outcome.result, StatusIs(ErrorKind::kTransient));
  EXPECT_GE(c.took, 200ms);
}

TEST(SimServer, LatencyIsAddedBeforeTheFirstByte) {
  Fixture f(config(R"("latency": {"first_byte": {"distribution": "fixed", "ms": 150}})"));
  auto c = f.call(weather_request());
  ASSERT_THAT(c.outcome.result, IsOk());
  EXPECT_GE(c.took, 150ms);
  EXPECT_GE(f.server->stats().latency_p50, 150ms);  // the server's own time includes it
  // ... and each reply says it, in a header the client's response carries.
  auto server_us = find_header(c.outcome.result->headers, "x-sim-server-us");
  ASSERT_TRUE(server_us.has_value());
  EXPECT_GE(std::stoll(std::string(*server_us)), 150000);
  EXPECT_LE(std::chrono::microseconds(std::stoll(std::string(*server_us))), c.took);
  // ... and the two ends of it on the environment's clock, inside the call as the client saw it.
  auto span = find_header(c.outcome.result->headers, "x-sim-span-ns");
  ASSERT_TRUE(span.has_value());
  const std::string text(*span);
  const std::size_t dash = text.find('-');
  ASSERT_NE(dash, std::string::npos) << text;
  const TimePoint start{Duration(std::stoll(text.substr(0, dash)))};
  const TimePoint head{Duration(std::stoll(text.substr(dash + 1)))};
  EXPECT_GE(head - start, 150ms);
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::microseconds>(head - start).count(),
            std::stoll(std::string(*server_us)));
  EXPECT_GE(start, c.ended - c.took);
  EXPECT_LE(head, c.ended);
}

TEST(SimServer, ACutStreamIsTruncatedNeverASuccess) {
  Fixture f(config(R"("faults": {"cut_stream": {"after_chunks": 3}}, )" + forced("cut_stream")));
  auto c = f.call(with_history(weather_request(true)));  // turn 1: the answer, streamed
  ASSERT_THAT(c.outcome.result, StatusIs(ErrorKind::kTransient));
  EXPECT_TRUE(is_truncated_stream(c.outcome.result.error())) << c.outcome.result.error().to_string();
}

TEST(SimServer, MalformedJsonIsAMalformedTransientFailure) {
  Fixture f(config(forced("malformed_json")));
  auto c = f.call(weather_request());
  ASSERT_THAT(c.outcome.result, StatusIs(ErrorKind::kTransient));
  EXPECT_TRUE(is_malformed(c.outcome.result.error())) << c.outcome.result.error().to_string();
}

TEST(SimServer, AHallucinatedToolIsOneTheRequestDoesNotOffer) {
  Fixture f(config(forced("hallucinated_tool")));
  auto c = f.call(weather_request());
  ASSERT_THAT(c.outcome.result, IsOk());
  ASSERT_FALSE(c.outcome.result->message.tool_calls.empty());
  for (const ToolCall& call : c.outcome.result->message.tool_calls) {
    EXPECT_NE(call.name, "get_weather");
    EXPECT_NE(call.name, "get_time");
  }
}

TEST(SimServer, InvalidToolArgumentsAreDelivered) {
  Fixture f(config(R"("faults": {"invalid_tool_args": {"mode": "syntax"}}, )" + forced("invalid_tool_args")));
  auto c = f.call(weather_request());
  ASSERT_THAT(c.outcome.result, IsOk());
  ASSERT_EQ(c.outcome.result->message.tool_calls.size(), 1u);
  const std::string& args = c.outcome.result->message.tool_calls[0].arguments_json;
  EXPECT_NE(args, R"({"location":"Paris"})");
  EXPECT_FALSE(args.empty());
  EXPECT_NE(args.back(), '}') << args;  // cut before its end: not valid JSON
}

TEST(SimServer, ALoopRepeatsThePreviousToolCall) {
  Fixture f(config(forced("loop")));
  auto c = f.call(with_history(weather_request()));
  ASSERT_THAT(c.outcome.result, IsOk());
  ASSERT_EQ(c.outcome.result->message.tool_calls.size(), 1u);
  EXPECT_EQ(c.outcome.result->message.tool_calls[0].name, "get_time");
  EXPECT_EQ(c.outcome.result->message.tool_calls[0].arguments_json, R"({"tz":"CET"})");
}

TEST(SimServer, ContextOverflowIsItsOwnKind) {
  Fixture f(config(R"("context_window_tokens": 200)"));
  ChatRequest big = weather_request();
  big.messages.push_back(Message::user(std::string(4000, 'x')));
  auto c = f.call(big);
  ASSERT_THAT(c.outcome.result, StatusIs(ErrorKind::kContextOverflow));
  auto injected = Fixture(config(forced("context_overflow"))).call(weather_request());
  ASSERT_THAT(injected.outcome.result, StatusIs(ErrorKind::kContextOverflow));
}

// Regression: each chunk due at once was written from a nested call of the previous one, all
// in one loop callback: a long stream with no per-chunk latency (here 15,000 chunks)
// overflowed the loop thread's stack and took the process down, and the client could not
// read before the whole stream was queued.
TEST(SimServer, ALongStreamWithoutChunkDelaysArrivesWhole) {
  std::string answer;
  for (int i = 0; i < 12000; ++i) answer += "word ";
  Fixture f(R"({"seed": 5, "scenario": [{"answer": ")" + answer + R"("}], "output": {"tokens_per_chunk": 1}})");
  ChatRequest req = weather_request(true);
  req.tools.clear();
  auto c = f.call(req);
  ASSERT_THAT(c.outcome.result, IsOk());
  EXPECT_EQ(c.outcome.result->message.text(), answer);
  EXPECT_EQ(f.server->http_stats().closed_slow_reader, 0u);
}

TEST(SimServer, StatsAreServedAndReset) {
  Fixture f(config(""));
  ASSERT_THAT(f.call(weather_request()).outcome.result, IsOk());
  std::string body;
  auto w = f.rt->spawn_watched([&](Context& ctx) -> Task<> {
                 net::HttpRequest req;
                 req.url = "http://127.0.0.1:" + std::to_string(f.server->port()) + "/sim/stats";
                 auto r = co_await f.http->request(ctx, std::move(req));
                 if (r.ok()) body = r->body;
               })
               .value();
  w.exit->wait();
  EXPECT_THAT(body, HasSubstr("\"requests\": 1"));
  EXPECT_THAT(body, HasSubstr("\"in_flight\": 0"));  // the reply was played to its end
  EXPECT_THAT(body, HasSubstr("\"latency_p99_us\""));
  f.server->reset_stats();
  EXPECT_EQ(f.server->stats().requests, 0u);
}

}  // namespace
}  // namespace nines::llm
