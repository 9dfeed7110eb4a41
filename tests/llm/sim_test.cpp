// The simulated model (llm/sim.hpp): config parsing, scenario progression, determinism, each
// fault as the caller sees it through SimChatModel (on the virtual clock) AND as a client
// reading render_openai's bytes through the openai codec sees it, the schedule, the fault
// rates over 10,000 draws, request parsing and the HTTP routes.
#include "nines/llm/sim.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "llm/fixtures.hpp"
#include "nines/llm/openai.hpp"
#include "nines/net/sse.hpp"
#include "nines/runtime/runtime.hpp"
#include "runtime/test_util.hpp"
#include "support/numbered.hpp"
#include "support/status_matchers.hpp"

namespace nines::llm {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

using nines::test::numbered;
using nines::test::SimRuntime;
using nlohmann::json;

std::shared_ptr<SimModel> make_sim(std::string_view config) {
  auto s = SimModel::from_json(config);
  EXPECT_THAT(s, IsOk());
  return std::move(s).value();
}

std::unique_ptr<Codec> openai() { return make_openai_codec({.base_url = "http://127.0.0.1:1/v1"}).value(); }

constexpr const char* kWeatherSchema =
    R"({"type":"object","properties":{"location":{"type":"string"}},"required":["location"]})";

// A request with two tools and one earlier tool-call round (so loop applies).
ChatRequest weather_request(bool stream = false, std::string question = "Weather in Paris?") {
  ChatRequest r{.model = "sim-test", .stream = stream};
  r.messages.push_back(Message::system("You are terse."));
  r.messages.push_back(Message::user(std::move(question)));
  r.tools.push_back(
      {.name = "get_weather", .description = "Current weather", .parameters_schema_json = kWeatherSchema});
  r.tools.push_back({.name = "get_time"});
  return r;
}

ChatRequest with_history(ChatRequest r) {
  r.messages.push_back(
      Message::assistant("", {{.id = "call_a", .name = "get_time", .arguments_json = R"({"tz":"CET"})"}}));
  r.messages.push_back(Message::tool_result("call_a", "12:00"));
  return r;
}

// Runs `body` in a process of a deterministic runtime, moving the virtual clock from timer to
// timer until the process ends.
void run_process(SimRuntime& s, std::function<Task<>(Context&)> body) {
  auto w = s.rt->spawn_watched(std::move(body)).value();
  for (int i = 0; i < 1'000'000 && !w.exit->done(); ++i) {
    s.rt->run_until_idle();
    if (w.exit->done()) break;
    TimePoint next = s.env.next_timer_deadline();
    if (next == TimePoint::max()) break;
    s.rt->advance(std::max(Duration::zero(), next - s.env.now()));
  }
  ASSERT_TRUE(w.exit->done()) << "the process did not finish";
  EXPECT_TRUE(w.exit->reason().is_normal()) << w.exit->reason().to_string();
}

struct Call {
  ChatOutcome outcome{Error(ErrorKind::kInternal, "not run"), std::nullopt};
  std::vector<std::string> texts;
  Duration took{0};
  Now now{};  // when the call returned
};

// One complete() on the virtual clock; `timeout` bounds it with a process deadline.
Call call_model(SimRuntime& s, ChatModel& model, const ChatRequest& request, Duration timeout = kInfinite) {
  Call c;
  run_process(s, [&](Context& ctx) -> Task<> {
    auto scope = ctx.with_timeout(timeout);
    TimePoint t0 = ctx.now();
    TextSink sink = [&](std::string_view t) { c.texts.emplace_back(t); };
    ChatOutcome o = co_await model.complete(ctx, request, sink);
    c.took = ctx.now() - t0;
    c.now = Now{ctx.now(), ctx.env().unix_time_ns()};
    c.outcome = std::move(o);
  });
  return c;
}

// What a client reading these bytes through the openai codec gets (the other half of "the
// same by construction"): a hang is reported as kTimeout here, as a client timeout would.
Result<ChatResponse> read_reply(const SimHttpReply& r, const Codec& codec, const Now& now,
                                std::vector<std::string>* texts = nullptr) {
  if (r.end == SimReplyEnd::kHang) return Error(ErrorKind::kTimeout, "client timeout: no response");
  if (r.status < 200 || r.status > 299) return codec.map_error(r.status, r.headers, r.body, now).error;
  if (!r.stream) return codec.parse_response(r.body);
  EXPECT_EQ(find_header(r.headers, "content-type"), "text/event-stream");
  auto acc = codec.start_stream();
  net::SseParser parser;
  std::vector<net::SseEvent> events;
  for (const std::string& chunk : r.chunks) {
    events.clear();
    EXPECT_THAT(parser.feed(chunk, events), IsOk());
    for (const auto& ev : events) {
      auto d = acc->on_event({}, ev.data);
      if (!d.ok()) return d.error();
      if (texts && !d->text.empty()) texts->push_back(d->text);
    }
  }
  return acc->finish();
}

// The same request through SimChatModel and as bytes from a twin SimModel (same config, so
// the same decisions).
struct Both {
  Call in_process;
  SimHttpReply reply;
  Result<ChatResponse> from_bytes{Error(ErrorKind::kInternal, "not run")};
  std::vector<std::string> byte_texts;
  SimCounters counters;  // of the in-process SimModel
};

Both run_both(std::string_view config, const ChatRequest& request, Duration timeout = kInfinite) {
  Both b;
  SimRuntime s(1);
  auto sim = make_sim(config);
  SimChatModel model(sim);
  b.in_process = call_model(s, model, request, timeout);
  b.counters = sim->counters();

  auto twin = make_sim(config);
  auto codec = openai();
  HttpCall call = codec->build_call(request).value();
  b.reply = twin->handle_http("POST", "/v1/chat/completions", call.body);
  b.from_bytes = read_reply(b.reply, *codec, b.in_process.now, &b.byte_texts);
  return b;
}

// "call 1 is <fault>" with the given extra fault parameters.
std::string scheduled(std::string_view fault, std::string_view params = "") {
  std::string c = R"({"seed": 3, "scenario": [{"answer": "It is sunny in Paris today, 21 degrees."}], )";
  if (!params.empty()) c += R"("faults": {")" + std::string(fault) + R"(": )" + std::string(params) + "}, ";
  return c + R"("schedule": [{"call": 1, "fault": ")" + std::string(fault) + R"("}]})";
}

// ---- config ---------------------------------------------------------------------------------

TEST(SimConfig, ParsesEveryField) {
  auto c = parse_sim_config(R"({
    "seed": 42, "model": "sim-large",
    "scenario": [
      {"tool_calls": [{"name": "search", "arguments": {"q": "nines"}}, {"name": "clock"}]},
      {"answer": "Done."}
    ],
    "after_last_turn": "repeat_last",
    "context_window_tokens": 8000,
    "output": {"tokens_per_chunk": 2},
    "latency": {"first_byte": {"distribution": "lognormal", "median_ms": 300, "sigma": 0.5, "max_ms": 5000},
                "per_chunk": {"distribution": "uniform", "min_ms": 5, "max_ms": 15}},
    "faults": {"rate_limited": {"probability": 0.1, "retry_after_ms": 2500},
               "server_error": {"probability": 0.01}, "unavailable": {"probability": 0.02},
               "overloaded": {"probability": 0.03}, "timeout": {"probability": 0.04, "hang_ms": 9000},
               "cut_stream": {"probability": 0.05, "after_chunks": 3},
               "malformed_json": {"probability": 0.06}, "hallucinated_tool": {"probability": 0.07},
               "invalid_tool_args": {"probability": 0.08, "mode": "schema"},
               "loop": {"probability": 0.09}, "context_overflow": {"probability": 0.1}},
    "schedule": [{"call": 2, "fault": "none"}, {"call": 1, "fault": "rate_limited"}],
    "max_tracked_requests": 1000
  })");
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->seed, 42u);
  EXPECT_EQ(c->model, "sim-large");
  ASSERT_EQ(c->scenario.size(), 2u);
  ASSERT_EQ(c->scenario[0].tool_calls.size(), 2u);
  EXPECT_EQ(c->scenario[0].tool_calls[0].name, "search");
  EXPECT_EQ(json::parse(c->scenario[0].tool_calls[0].arguments_json), json::parse(R"({"q":"nines"})"));
  EXPECT_EQ(c->scenario[0].tool_calls[1].arguments_json, "{}");
  EXPECT_EQ(c->scenario[1].answer, "Done.");
  EXPECT_EQ(c->after_last_turn, SimAfterLastTurn::kRepeatLast);
  EXPECT_EQ(c->context_window_tokens, 8000);
  EXPECT_EQ(c->tokens_per_chunk, 2);
  EXPECT_EQ(c->first_byte.distribution, SimLatency::Distribution::kLogNormal);
  EXPECT_EQ(c->first_byte.median_ms, 300);
  EXPECT_EQ(c->first_byte.sigma, 0.5);
  EXPECT_EQ(c->first_byte.max_ms, 5000);
  EXPECT_EQ(c->per_chunk.distribution, SimLatency::Distribution::kUniform);
  EXPECT_EQ(c->per_chunk.min_ms, 5);
  EXPECT_EQ(c->per_chunk.max_ms, 15);
  EXPECT_EQ(c->faults.of(SimFault::kRateLimited), 0.1);
  EXPECT_EQ(c->faults.of(SimFault::kContextOverflow), 0.1);
  EXPECT_EQ(c->faults.of(SimFault::kLoop), 0.09);
  EXPECT_EQ(c->faults.retry_after_ms, 2500);
  EXPECT_EQ(c->faults.hang_ms, 9000);
  EXPECT_EQ(c->faults.cut_after_chunks, 3);
  EXPECT_EQ(c->faults.invalid_args, SimArgsBreak::kSchema);
  ASSERT_EQ(c->schedule.size(), 2u);
  EXPECT_EQ(c->schedule[1].call, 1u);
  EXPECT_EQ(c->schedule[1].fault, SimFault::kRateLimited);
  EXPECT_EQ(c->schedule[0].fault, SimFault::kNone);
  EXPECT_EQ(c->max_tracked_requests, 1000u);
}

TEST(SimConfig, EmptyObjectGivesTheDefaults) {
  auto c = parse_sim_config("{}");
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->seed, 0u);
  EXPECT_TRUE(c->scenario.empty());
  EXPECT_EQ(c->after_last_turn, SimAfterLastTurn::kRepeatFinal);
  EXPECT_EQ(c->context_window_tokens, 128000);
  EXPECT_EQ(c->tokens_per_chunk, 4);
  EXPECT_EQ(c->faults.hang_ms, 120000);
  for (double p : c->faults.probability) EXPECT_EQ(p, 0);
}

TEST(SimConfig, EveryErrorNamesTheFieldAndWhatIsWrong) {
  struct Case {
    const char* json;
    const char* message;  // expected in the error
  };
  const Case cases[] = {
      {"not json", "sim config: not valid JSON"},
      {"[1]", "the config must be a JSON object"},
      {R"({"sede": 1})", R"(unknown field "sede")"},
      {R"({"seed": -1})", "seed must be an unsigned 64-bit integer, got -1"},
      {R"({"seed": "7"})", "seed must be an unsigned"},
      {R"({"model": 3})", "model must be a string, got 3"},
      {R"({"scenario": {}})", "scenario must be an array"},
      {R"({"scenario": [3]})", "scenario[0]: a turn must be an object"},
      {R"({"scenario": [{}]})", "scenario[0]: a turn has either tool_calls or answer"},
      {R"({"scenario": [{"answer": "a", "tool_calls": []}]})", "scenario[0]: a turn has either"},
      {R"({"scenario": [{"answer": "a"}, {"tool_calls": []}]})", "scenario[1]: tool_calls is empty"},
      {R"({"scenario": [{"tool_calls": [{"arguments": {}}]}]})",
       "scenario[0].tool_calls[0]: name must be a non-empty string"},
      {R"({"scenario": [{"tool_calls": [{"name": "x", "args": {}}]}]})",
       R"(scenario[0].tool_calls[0]: unknown field "args")"},
      {R"({"scenario": [{"answer": 5}]})", "scenario[0]: answer must be a string"},
      {R"({"after_last_turn": "loop"})",
       "after_last_turn must be one of repeat_final, repeat_last, error, got \"loop\""},
      {R"({"context_window_tokens": 0})", "context_window_tokens must be in [1, "},
      {R"({"context_window_tokens": 1.5})", "context_window_tokens must be an integer, got 1.5"},
      {R"({"output": {"tokens_per_chunk": 0}})", "output: tokens_per_chunk must be in [1, 65536], got 0"},
      {R"({"output": {"chunk": 1}})", R"(output: unknown field "chunk")"},
      {R"({"latency": {"first_byte": {"distribution": "gamma"}}})",
       "latency.first_byte: distribution must be one of fixed, uniform, lognormal"},
      {R"({"latency": {"first_byte": {"distribution": "uniform", "min_ms": 10}}})",
       "latency.first_byte: a uniform distribution needs min_ms and max_ms"},
      {R"({"latency": {"per_chunk": {"distribution": "uniform", "min_ms": 10, "max_ms": 5}}})",
       "latency.per_chunk: min_ms 10 is above max_ms 5"},
      {R"({"latency": {"first_byte": {"distribution": "lognormal", "median_ms": 10, "sigma": -1}}})",
       "latency.first_byte: sigma must be in [0, 10], got -1"},
      {R"({"latency": {"first_byte": {"distribution": "fixed", "median_ms": 10}}})",
       R"(latency.first_byte: unknown field "median_ms")"},
      {R"({"latency": {"first_byte": {"ms": -5}}})", "latency.first_byte: ms must be in [0, 3600000], got -5"},
      {R"({"latency": {"ttfb": {}}})", R"(latency: unknown field "ttfb")"},
      {R"({"faults": {"rate_limited": {"probability": 1.5}}})",
       "sim config: faults.rate_limited: probability must be in [0, 1], got 1.5"},
      {R"({"faults": {"rate_limited": {"probability": "high"}}})", "faults.rate_limited: probability must be a number"},
      {R"({"faults": {"rate_limited": 0.5}})", "faults.rate_limited: must be an object"},
      {R"({"faults": {"gremlins": {"probability": 0.1}}})", R"(faults: unknown fault "gremlins")"},
      {R"({"faults": {"none": {"probability": 0.1}}})", R"(faults: unknown fault "none")"},
      {R"({"faults": {"server_error": {"probability": 0.1, "retry_after_ms": 5}}})",
       R"(faults.server_error: unknown field "retry_after_ms")"},
      {R"({"faults": {"rate_limited": {"probability": 0.6}, "server_error": {"probability": 0.6}}})",
       "faults: the probabilities add up to 1.2, must be at most 1"},
      {R"({"faults": {"timeout": {"hang_ms": 0}}})", "faults.timeout: hang_ms must be in [1, 3600000], got 0"},
      {R"({"faults": {"cut_stream": {"after_chunks": 2, "after_fraction": 0.5}}})",
       "faults.cut_stream: after_chunks and after_fraction exclude each other"},
      {R"({"faults": {"cut_stream": {"after_fraction": 2}}})",
       "faults.cut_stream: after_fraction must be in [0, 1], got 2"},
      {R"({"faults": {"invalid_tool_args": {"mode": "random"}}})",
       "faults.invalid_tool_args: mode must be one of syntax, schema, either"},
      {R"({"schedule": [{"call": 0, "fault": "timeout"}]})", "schedule[0]: call must be in [1, "},
      {R"({"schedule": [{"call": 1}]})", "schedule[0]: an entry needs call and fault"},
      {R"({"schedule": [{"call": 1, "fault": "boom"}]})", R"(schedule[0]: fault "boom" is not a fault name)"},
      {R"({"schedule": [{"call": 1, "fault": "none"}, {"call": 1, "fault": "loop"}]})",
       "schedule[1]: call 1 is scheduled twice"},
      {R"({"max_tracked_requests": 0})", "max_tracked_requests must be in [1, "},
  };
  for (const Case& c : cases) {
    auto r = parse_sim_config(c.json);
    ASSERT_THAT(r, StatusIs(ErrorKind::kInvalidArgument)) << c.json;
    EXPECT_THAT(r.error().message(), HasSubstr(c.message)) << c.json << "\n  got: " << r.error().message();
  }
}

TEST(SimConfig, CreateValidatesAConfigBuiltInCode) {
  SimConfig c;
  c.faults.of(SimFault::kServerError) = 1.25;
  auto r = SimModel::create(c);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message(), HasSubstr("faults.server_error: probability must be in [0, 1], got 1.25"));
  c = SimConfig{};
  c.scenario.push_back({.tool_calls = {{.name = "x", .arguments_json = "{oops"}}});
  r = SimModel::create(c);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message(), HasSubstr("scenario[0].tool_calls[0]: arguments_json is not valid JSON"));
  c = SimConfig{};
  c.schedule = {{.call = 0, .fault = SimFault::kLoop}};
  EXPECT_FALSE(SimModel::create(c).ok());
  EXPECT_THAT(SimModel::create(SimConfig{}), IsOk());
}

// ---- estimates ------------------------------------------------------------------------------

TEST(SimEstimate, TheDocumentedRule) {
  ChatRequest r{.model = "m", .messages = {Message::user("Hello")}};
  EXPECT_EQ(sim_estimate_prompt_tokens(r), 3 + 4 + 2);  // priming + message + ceil(5/4)
  r.messages.push_back(Message::assistant("", {{.id = "c1", .name = "abcd", .arguments_json = "{}"}}));
  EXPECT_EQ(sim_estimate_prompt_tokens(r), 9 + 4 + 3 + 1 + 1);
  r.messages.push_back(Message::tool_result("c1", "12345678"));
  EXPECT_EQ(sim_estimate_prompt_tokens(r), 18 + 4 + 2 + 1);  // text + tool_call_id
  r.tools.push_back({.name = "abcd", .description = "", .parameters_schema_json = "{}"});
  EXPECT_EQ(sim_estimate_prompt_tokens(r), 25 + 8 + 1 + 0 + 1);
  EXPECT_EQ(sim_estimate_output_tokens(Message::assistant("Hi there")), 2);
  EXPECT_EQ(sim_estimate_output_tokens(Message::assistant("")), 1);  // at least 1
}

// ---- scenario --------------------------------------------------------------------------------

constexpr const char* kAgentScenario = R"({
  "seed": 9,
  "scenario": [
    {"tool_calls": [{"name": "search", "arguments": {"q": "nines runtime"}}]},
    {"tool_calls": [{"name": "fetch", "arguments": {"url": "https://a"}}, {"name": "fetch", "arguments": {"url": "https://b"}}]},
    {"answer": "nines is a fault-tolerant runtime for AI agents."}
  ]})";

// An agent loop: call the model, run the tools it asks for, append everything, repeat.
std::vector<std::string> agent_loop(SimRuntime& s, ChatModel& model, bool stream, std::string* answer,
                                    std::string* streamed) {
  std::vector<std::string> steps;
  ChatRequest req{.model = "sim-agent", .messages = {Message::user("What is nines?")}, .stream = stream};
  req.tools = {{.name = "search"}, {.name = "fetch"}};
  for (int i = 0; i < 6; ++i) {
    Call c = call_model(s, model, req);
    EXPECT_THAT(c.outcome.result, IsOk());
    if (!c.outcome.result.ok()) break;
    const ChatResponse& r = *c.outcome.result;
    req.messages.push_back(r.message);
    if (r.finish_reason == FinishReason::kStop) {
      *answer = r.message.text();
      for (auto& t : c.texts) *streamed += t;
      break;
    }
    EXPECT_EQ(r.finish_reason, FinishReason::kToolCalls);
    std::string step;
    for (const ToolCall& call : r.message.tool_calls) {
      step += call.name + json::parse(call.arguments_json).dump() + " ";
      req.messages.push_back(Message::tool_result(call.id, "result of " + call.name));
    }
    steps.push_back(step);
  }
  return steps;
}

TEST(SimScenario, AnAgentLoopProgressesTurnByTurn) {
  for (bool stream : {false, true}) {
    SimRuntime s(1);
    auto sim = make_sim(kAgentScenario);
    SimChatModel model(sim);
    std::string answer, streamed;
    std::vector<std::string> steps = agent_loop(s, model, stream, &answer, &streamed);
    ASSERT_EQ(steps.size(), 2u);
    EXPECT_EQ(steps[0], R"(search{"q":"nines runtime"} )");
    EXPECT_EQ(steps[1], R"(fetch{"url":"https://a"} fetch{"url":"https://b"} )");
    EXPECT_EQ(answer, "nines is a fault-tolerant runtime for AI agents.");
    if (stream) {
      EXPECT_EQ(streamed, answer);
    }
    EXPECT_EQ(sim->counters().calls, 3u);
    EXPECT_EQ(sim->counters().of(SimFault::kNone), 3u);
  }
}

TEST(SimScenario, ResponseCarriesUsageModelIdsAndFinishReason) {
  SimRuntime s(1);
  auto sim = make_sim(R"({"model": "sim-reported", "scenario": [{"answer": "Twelve bytes"}]})");
  SimChatModel model(sim);
  ChatRequest req{.model = "asked", .messages = {Message::user("Hello")}};
  Call c = call_model(s, model, req);
  ASSERT_THAT(c.outcome.result, IsOk());
  EXPECT_EQ(c.outcome.result->model, "sim-reported");
  EXPECT_EQ(c.outcome.result->usage.input_tokens, 9);
  EXPECT_EQ(c.outcome.result->usage.output_tokens, 3);
  EXPECT_EQ(c.outcome.result->finish_reason, FinishReason::kStop);
  EXPECT_TRUE(c.outcome.result->id.starts_with("chatcmpl-sim-"));
  // Without a configured model name, the request's; without a scenario, the default answer.
  auto plain = make_sim("{}");
  SimChatModel plain_model(plain);
  Call d = call_model(s, plain_model, req);
  ASSERT_THAT(d.outcome.result, IsOk());
  EXPECT_EQ(d.outcome.result->model, "asked");
  EXPECT_EQ(d.outcome.result->message.text(), kDefaultSimAnswer);
  // max_output_tokens cuts the answer: finish reason length.
  req.max_output_tokens = 1;
  Call e = call_model(s, model, req);
  ASSERT_THAT(e.outcome.result, IsOk());
  EXPECT_EQ(e.outcome.result->message.text(), "Twel");
  EXPECT_EQ(e.outcome.result->finish_reason, FinishReason::kLength);
}

TEST(SimScenario, PastTheLastTurn) {
  ChatRequest req{.model = "m",
                  .messages = {Message::user("q"), Message::assistant("a1"), Message::user("q2"),
                               Message::assistant("a2"), Message::user("q3")}};
  auto repeat_final = make_sim(R"({"scenario": [{"answer": "first"}, {"tool_calls": [{"name": "t"}]}]})");
  SimPlan p = repeat_final->decide(req);
  EXPECT_EQ(p.turn, 2u);
  EXPECT_EQ(p.response.message.text(), "first");

  auto repeat_last = make_sim(
      R"({"after_last_turn": "repeat_last", "scenario": [{"answer": "first"}, {"tool_calls": [{"name": "t"}]}]})");
  p = repeat_last->decide(req);
  ASSERT_EQ(p.response.message.tool_calls.size(), 1u);
  EXPECT_EQ(p.response.message.tool_calls[0].name, "t");

  auto no_answer = make_sim(R"({"scenario": [{"tool_calls": [{"name": "t"}]}]})");
  EXPECT_EQ(no_answer->decide(req).response.message.text(), kDefaultSimAnswer);

  // error: a permanent 400 the caller sees as such.
  const char* config = R"({"after_last_turn": "error", "scenario": [{"answer": "only"}]})";
  Both b = run_both(config, req);
  ASSERT_THAT(b.in_process.outcome.result, StatusIs(ErrorKind::kPermanent));
  ASSERT_TRUE(b.in_process.outcome.failure.has_value());
  EXPECT_EQ(b.in_process.outcome.failure->status, 400);
  EXPECT_EQ(b.in_process.outcome.failure->error_code, "sim_scenario_exhausted");
  EXPECT_EQ(b.counters.scenario_exhausted, 1u);
  ASSERT_THAT(b.from_bytes, StatusIs(ErrorKind::kPermanent));
}

TEST(SimScenario, AnInjectedToolCallDoesNotUseUpATurn) {
  // Call 1 hallucinates; the agent answers it with a tool error; call 2 is still turn 0.
  auto sim = make_sim(R"({"scenario": [{"tool_calls": [{"name": "get_weather", "arguments": {"location": "Paris"}}]},
                                       {"answer": "Sunny."}],
                          "schedule": [{"call": 1, "fault": "hallucinated_tool"}]})");
  ChatRequest req = weather_request();
  SimPlan first = sim->decide(req);
  ASSERT_EQ(first.fault, SimFault::kHallucinatedTool);
  req.messages.push_back(first.response.message);
  req.messages.push_back(Message::tool_result(first.response.message.tool_calls[0].id, "no such tool", true));
  SimPlan second = sim->decide(req);
  EXPECT_EQ(second.turn, 0u);
  ASSERT_EQ(second.response.message.tool_calls.size(), 1u);
  EXPECT_EQ(second.response.message.tool_calls[0].name, "get_weather");
  req.messages.push_back(second.response.message);
  req.messages.push_back(Message::tool_result(second.response.message.tool_calls[0].id, "21 C"));
  EXPECT_EQ(sim->decide(req).response.message.text(), "Sunny.");
}

// ---- determinism ------------------------------------------------------------------------------

constexpr const char* kNoisy = R"({"seed": %SEED%,
  "latency": {"first_byte": {"distribution": "uniform", "min_ms": 10, "max_ms": 500}},
  "faults": {"rate_limited": {"probability": 0.2}, "server_error": {"probability": 0.1},
             "malformed_json": {"probability": 0.1}, "hallucinated_tool": {"probability": 0.1}}})";

std::string noisy(std::uint64_t seed) {
  std::string c = kNoisy;
  c.replace(c.find("%SEED%"), 6, std::to_string(seed));
  return c;
}

std::vector<std::string> fault_trace(SimModel& sim, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    SimPlan p = sim.decide(weather_request(false, "question " + std::to_string(i)));
    out.push_back(std::string(to_string(p.fault)) + "@" + std::to_string(p.first_byte_delay.count()));
  }
  return out;
}

TEST(SimDeterminism, SameSeedSameFaultsAndDelaysDifferentSeedsDiffer) {
  auto a = make_sim(noisy(11)), b = make_sim(noisy(11)), c = make_sim(noisy(12));
  std::vector<std::string> ta = fault_trace(*a, 300), tb = fault_trace(*b, 300), tc = fault_trace(*c, 300);
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
  std::size_t same = 0;
  for (std::size_t i = 0; i < ta.size(); ++i) same += ta[i] == tc[i];
  EXPECT_LT(same, 60u);  // the delays alone differ almost always
  EXPECT_EQ(a->counters().faults, b->counters().faults);
}

TEST(SimDeterminism, AnIdenticalRetryDrawsAgain) {
  auto sim = make_sim(R"({"seed": 5, "faults": {"server_error": {"probability": 0.5}}})");
  auto twin = make_sim(R"({"seed": 5, "faults": {"server_error": {"probability": 0.5}}})");
  ChatRequest req = weather_request();
  std::vector<SimFault> seen, again;
  for (int i = 0; i < 40; ++i) {
    SimPlan p = sim->decide(req);
    EXPECT_EQ(p.occurrence, static_cast<std::uint64_t>(i));
    seen.push_back(p.fault);
    again.push_back(twin->decide(req).fault);
  }
  EXPECT_EQ(seen, again);
  EXPECT_NE(std::count(seen.begin(), seen.end(), SimFault::kNone), 0);
  EXPECT_NE(std::count(seen.begin(), seen.end(), SimFault::kServerError), 0);
}

TEST(SimDeterminism, ConcurrentCallersGetTheSameDecisionsAsASequentialRun) {
  constexpr int kThreads = 4, kPerThread = 400;
  auto sequential = make_sim(noisy(21));
  std::vector<std::string> expected = fault_trace(*sequential, kThreads * kPerThread);

  auto shared = make_sim(noisy(21));
  std::vector<std::string> got(kThreads * kPerThread);
  auto env = make_real_environment({.workers = 1, .seed = 1});
  std::vector<std::unique_ptr<Thread>> threads;
  for (int t = 0; t < kThreads; ++t) {
    auto th = env->start_thread("sim-" + std::to_string(t), [&, t] {
      for (int i = t; i < kThreads * kPerThread; i += kThreads) {
        SimPlan p = shared->decide(weather_request(false, "question " + std::to_string(i)));
        got[static_cast<std::size_t>(i)] =
            std::string(to_string(p.fault)) + "@" + std::to_string(p.first_byte_delay.count());
      }
    });
    ASSERT_THAT(th, IsOk());
    threads.push_back(std::move(th).value());
  }
  for (auto& th : threads) th->join();
  EXPECT_EQ(got, expected);
  EXPECT_EQ(shared->counters().calls, static_cast<std::uint64_t>(kThreads * kPerThread));
  EXPECT_EQ(shared->counters().faults, sequential->counters().faults);
}

TEST(SimDeterminism, TheOccurrenceTableIsBoundedAndForgetsTheOldest) {
  auto sim = make_sim(R"({"max_tracked_requests": 64})");
  ChatRequest first = weather_request(false, "first");
  EXPECT_EQ(sim->decide(first).occurrence, 0u);
  EXPECT_EQ(sim->decide(first).occurrence, 1u);
  for (int i = 0; i < 5000; ++i) (void)sim->decide(weather_request(false, "other " + std::to_string(i)));
  EXPECT_EQ(sim->decide(first).occurrence, 0u);  // forgotten: counts as new
  // One seen again and again stays remembered while others come and go.
  ChatRequest hot = weather_request(false, "hot");
  for (int i = 0; i < 2000; ++i) {
    EXPECT_EQ(sim->decide(hot).occurrence, static_cast<std::uint64_t>(i));
    (void)sim->decide(weather_request(false, "filler " + std::to_string(i)));
    if (HasFailure()) break;
  }
}

// fault_key "position": two clients serializing the same conversation differently (other tool
// schemas and descriptions, another system prompt, other tool-call ids and error texts,
// max_tokens) get the same faults and delays at the same point of the same task, retries included.
constexpr const char* kPositionKeyed = R"({"seed": 9, "fault_key": "position",
  "latency": {"first_byte": {"distribution": "uniform", "min_ms": 20, "max_ms": 80}},
  "faults": {"server_error": {"probability": 0.3}, "malformed_json": {"probability": 0.2}}})";

// A task's request after `turns` tool rounds, in one of two encodings.
ChatRequest task_request(const std::string& task, int turns, bool other_encoding) {
  ChatRequest r = weather_request(false, "Process order " + task);
  if (other_encoding) {
    r.model = "another-model";
    r.messages[0] = Message::system("Another system prompt.");
    r.tools[0].description = "Weather now, as another client describes it";
    r.tools[0].parameters_schema_json = R"({"type":"object","properties":{"location":{"type":"string"}}})";
    r.max_output_tokens = 512;
  }
  for (int t = 0; t < turns; ++t) {
    const std::string id = (other_encoding ? "call_other_" : "call_sim_") + std::to_string(t);
    r.messages.push_back(Message::assistant("", {{.id = id, .name = "get_time", .arguments_json = "{}"}}));
    r.messages.push_back(Message::tool_result(id, other_encoding ? "noon, as text" : R"({"time":"12:00"})"));
  }
  return r;
}

TEST(SimDeterminism, PositionKeyGivesTheSameFaultsToDifferentlySerializedRequests) {
  auto a = make_sim(kPositionKeyed), b = make_sim(kPositionKeyed);
  EXPECT_EQ(a->config().fault_key, SimFaultKey::kPosition);
  std::vector<std::string> ta, tb;
  std::set<std::uint64_t> keys;
  for (int task = 0; task < 10; ++task) {
    for (int turn = 0; turn < 5; ++turn) {
      ChatRequest ra = task_request("task-" + std::to_string(task), turn, false);
      ChatRequest rb = task_request("task-" + std::to_string(task), turn, true);
      for (int attempt = 0; attempt < 3; ++attempt) {  // retries of one position draw anew, alike
        SimPlan pa = a->decide(ra), pb = b->decide(rb);
        EXPECT_EQ(pa.occurrence, static_cast<std::uint64_t>(attempt));
        EXPECT_EQ(pa.fingerprint, pb.fingerprint);
        keys.insert(pa.fingerprint);
        ta.push_back(std::string(to_string(pa.fault)) + "@" + std::to_string(pa.first_byte_delay.count()));
        tb.push_back(std::string(to_string(pb.fault)) + "@" + std::to_string(pb.first_byte_delay.count()));
      }
    }
  }
  EXPECT_EQ(ta, tb);
  EXPECT_EQ(keys.size(), 50u);  // each (task, turn) its own position
  EXPECT_EQ(a->counters().faults, b->counters().faults);
  EXPECT_NE(a->counters().of(SimFault::kServerError), 0u);
  EXPECT_NE(a->counters().of(SimFault::kNone), 0u);
}

TEST(SimDeterminism, RequestKeyIsTheDefaultAndTellsEncodingsApart) {
  auto sim = make_sim(R"({"seed": 9})");
  EXPECT_EQ(sim->config().fault_key, SimFaultKey::kRequest);
  EXPECT_NE(sim->decide(task_request("task-1", 2, false)).fingerprint,
            sim->decide(task_request("task-1", 2, true)).fingerprint);
  auto pos = make_sim(kPositionKeyed);
  // Another task, or another point of the same task, is another position.
  EXPECT_NE(pos->decide(task_request("task-1", 2, false)).fingerprint,
            pos->decide(task_request("task-2", 2, false)).fingerprint);
  EXPECT_NE(pos->decide(task_request("task-1", 2, false)).fingerprint,
            pos->decide(task_request("task-1", 3, false)).fingerprint);
  // An unknown value is refused, naming the field.
  EXPECT_THAT(parse_sim_config(R"({"fault_key": "bytes"})"), StatusIs(ErrorKind::kInvalidArgument, "fault_key"));
}

// ---- faults, one by one: through SimChatModel and as bytes through the codec --------------------

TEST(SimFaults, RateLimitedIs429WithRetryTime) {
  for (bool stream : {false, true}) {
    Both b = run_both(scheduled("rate_limited", R"({"retry_after_ms": 1500})"), weather_request(stream));
    ASSERT_FALSE(b.in_process.outcome.result.ok());
    const Error& e = b.in_process.outcome.result.error();
    EXPECT_THAT(e, StatusIs(ErrorKind::kRateLimited));
    ASSERT_TRUE(e.retry_at().has_value());
    EXPECT_EQ(*e.retry_at(), b.in_process.now.monotonic + 1500ms);
    ASSERT_TRUE(b.in_process.outcome.failure.has_value());
    EXPECT_EQ(b.in_process.outcome.failure->status, 429);
    EXPECT_EQ(b.in_process.outcome.failure->error_code, "rate_limit_exceeded");
    EXPECT_FALSE(b.in_process.outcome.failure->quota);
    EXPECT_EQ(b.reply.status, 429);
    EXPECT_EQ(find_header(b.reply.headers, "retry-after-ms"), "1500");
    EXPECT_EQ(find_header(b.reply.headers, "retry-after"), "2");
    EXPECT_EQ(find_header(b.reply.headers, "x-sim-fault"), "rate_limited");
    ASSERT_FALSE(b.from_bytes.ok());
    EXPECT_EQ(b.from_bytes.error(), e);
    EXPECT_EQ(b.counters.of(SimFault::kRateLimited), 1u);
  }
}

void expect_transient_status(const char* fault, int status) {
  for (bool stream : {false, true}) {
    Both b = run_both(scheduled(fault), weather_request(stream));
    ASSERT_THAT(b.in_process.outcome.result, StatusIs(ErrorKind::kTransient)) << fault;
    ASSERT_TRUE(b.in_process.outcome.failure.has_value());
    EXPECT_EQ(b.in_process.outcome.failure->status, status);
    EXPECT_EQ(b.reply.status, status);
    EXPECT_FALSE(b.reply.stream);
    ASSERT_FALSE(b.from_bytes.ok());
    EXPECT_EQ(b.from_bytes.error(), b.in_process.outcome.result.error());
    EXPECT_EQ(b.counters.of(*sim_fault_from_string(fault)), 1u);
  }
}

TEST(SimFaults, ServerErrorIs500Transient) { expect_transient_status("server_error", 500); }
TEST(SimFaults, UnavailableIs503Transient) { expect_transient_status("unavailable", 503); }
TEST(SimFaults, OverloadedIs529Transient) { expect_transient_status("overloaded", 529); }

TEST(SimFaults, TimeoutHangsForHangMsThenTimesOut) {
  for (bool stream : {false, true}) {
    Both b = run_both(scheduled("timeout", R"({"hang_ms": 30000})"), weather_request(stream));
    ASSERT_THAT(b.in_process.outcome.result, StatusIs(ErrorKind::kTimeout, HasSubstr("hang_ms")));
    EXPECT_EQ(b.in_process.took, 30s);
    EXPECT_FALSE(b.in_process.outcome.failure.has_value());
    EXPECT_EQ(b.reply.end, SimReplyEnd::kHang);
    EXPECT_EQ(b.reply.hang, 30s);
    EXPECT_TRUE(b.reply.body.empty());
    EXPECT_TRUE(b.reply.chunks.empty());
    ASSERT_THAT(b.from_bytes, StatusIs(ErrorKind::kTimeout));
  }
  // The process deadline comes first: the sleep ends there.
  Both d = run_both(scheduled("timeout", R"({"hang_ms": 30000})"), weather_request(), 2s);
  ASSERT_THAT(d.in_process.outcome.result, StatusIs(ErrorKind::kDeadlineExceeded));
  EXPECT_EQ(d.in_process.took, 2s);
}

TEST(SimFaults, CutStreamIsATruncatedStream) {
  Both b = run_both(scheduled("cut_stream", R"({"after_chunks": 3})"), weather_request(true));
  ASSERT_FALSE(b.in_process.outcome.result.ok());
  const Error& e = b.in_process.outcome.result.error();
  EXPECT_THAT(e, StatusIs(ErrorKind::kTransient));
  EXPECT_TRUE(is_truncated_stream(e)) << e.to_string();
  EXPECT_EQ(b.reply.end, SimReplyEnd::kAbort);
  ASSERT_EQ(b.reply.chunks.size(), 3u);  // role + two pieces of text
  EXPECT_EQ(b.in_process.texts, (std::vector<std::string>{"It is sunny in P", "aris today, 21 d"}));
  EXPECT_EQ(b.byte_texts, b.in_process.texts);
  ASSERT_FALSE(b.from_bytes.ok());
  EXPECT_TRUE(is_truncated_stream(b.from_bytes.error()));
  EXPECT_EQ(b.counters.of(SimFault::kCutStream), 1u);

  // By fraction: half of the events before data: [DONE].
  Both f = run_both(scheduled("cut_stream", R"({"after_fraction": 0.5})"), weather_request(true));
  EXPECT_TRUE(!f.in_process.outcome.result.ok() && is_truncated_stream(f.in_process.outcome.result.error()));
  EXPECT_EQ(f.reply.chunks.size(), 2u);  // floor(0.5 * 5): of role, 3 text pieces, finish
  // Not a stream: the fault does not apply and the call answers.
  Both n = run_both(scheduled("cut_stream"), weather_request(false));
  ASSERT_THAT(n.in_process.outcome.result, IsOk());
  EXPECT_EQ(n.counters.of(SimFault::kCutStream), 0u);
  EXPECT_EQ(n.counters.of(SimFault::kNone), 1u);
}

TEST(SimFaults, MalformedJsonIsMalformed) {
  for (bool stream : {false, true}) {
    Both b = run_both(scheduled("malformed_json"), weather_request(stream));
    ASSERT_FALSE(b.in_process.outcome.result.ok());
    const Error& e = b.in_process.outcome.result.error();
    EXPECT_THAT(e, StatusIs(ErrorKind::kTransient));
    EXPECT_TRUE(is_malformed(e)) << e.to_string();
    EXPECT_EQ(b.reply.status, 200);
    ASSERT_FALSE(b.from_bytes.ok());
    EXPECT_TRUE(is_malformed(b.from_bytes.error()));
    EXPECT_EQ(b.from_bytes.error(), e);
    if (stream) {
      EXPECT_EQ(b.reply.chunks.back(), "data: [DONE]\n\n");  // it is the content, not the ending
      EXPECT_EQ(b.in_process.texts.size(), 1u);              // the text before the bad event
    }
  }
}

TEST(SimFaults, HallucinatedToolCallsAToolTheRequestLacks) {
  for (bool stream : {false, true}) {
    ChatRequest req = weather_request(stream);
    req.tools.push_back({.name = "sim_unknown_tool"});  // taken: the sim picks another name
    Both b = run_both(scheduled("hallucinated_tool"), req);
    ASSERT_THAT(b.in_process.outcome.result, IsOk());
    const ChatResponse& r = *b.in_process.outcome.result;
    EXPECT_EQ(r.finish_reason, FinishReason::kToolCalls);
    ASSERT_EQ(r.message.tool_calls.size(), 1u);
    EXPECT_EQ(r.message.tool_calls[0].name, "sim_unknown_tool_2");
    for (const ToolDefinition& t : req.tools) EXPECT_NE(t.name, r.message.tool_calls[0].name);
    ASSERT_THAT(b.from_bytes, IsOk());
    EXPECT_EQ(b.from_bytes->message.tool_calls, r.message.tool_calls);
    EXPECT_EQ(b.counters.of(SimFault::kHallucinatedTool), 1u);
  }
}

TEST(SimFaults, InvalidToolArgsBreakSyntaxOrSchemaAndSayWhich) {
  const std::string scenario =
      R"({"scenario": [{"tool_calls": [{"name": "get_weather", "arguments": {"location": "Paris"}}]}],
      "faults": {"invalid_tool_args": {"mode": "%MODE%"}}, "schedule": [{"call": 1, "fault": "invalid_tool_args"}]})";
  auto config = [&](const char* mode) {
    std::string c = scenario;
    c.replace(c.find("%MODE%"), 6, mode);
    return c;
  };
  for (bool stream : {false, true}) {
    Both syntax = run_both(config("syntax"), weather_request(stream));
    ASSERT_THAT(syntax.in_process.outcome.result, IsOk());
    const ToolCall& bad = syntax.in_process.outcome.result->message.tool_calls.at(0);
    EXPECT_EQ(bad.name, "get_weather");
    EXPECT_EQ(bad.arguments_json, R"({"location":"Paris")");
    EXPECT_FALSE(json::accept(bad.arguments_json));
    ASSERT_THAT(syntax.from_bytes, IsOk());
    EXPECT_EQ(syntax.from_bytes->message.tool_calls.at(0), bad);

    Both schema = run_both(config("schema"), weather_request(stream));
    ASSERT_THAT(schema.in_process.outcome.result, IsOk());
    const ToolCall& wrong = schema.in_process.outcome.result->message.tool_calls.at(0);
    EXPECT_EQ(wrong.arguments_json, "{}");  // the required "location" left out
    ASSERT_THAT(schema.from_bytes, IsOk());
    EXPECT_EQ(schema.from_bytes->message.tool_calls.at(0), wrong);
  }
  // The plan says which rule was broken.
  auto sim = make_sim(config("schema"));
  SimPlan p = sim->decide(weather_request());
  EXPECT_EQ(p.fault, SimFault::kInvalidToolArgs);
  EXPECT_EQ(p.fault_detail, "tool 'get_weather': required property 'location' left out");
  // A schema without required properties: a property of the wrong type.
  ChatRequest typed = weather_request();
  typed.tools[0].parameters_schema_json = R"({"type":"object","properties":{"location":{"type":"string"}}})";
  p = make_sim(config("schema"))->decide(typed);
  EXPECT_EQ(p.response.message.tool_calls.at(0).arguments_json, R"({"location":12345})");
  EXPECT_EQ(p.fault_detail, "tool 'get_weather': property 'location' has type integer where the schema says string");
  // An answer turn: the first tool of the request is called with broken arguments.
  p = make_sim(
          R"({"faults": {"invalid_tool_args": {"mode": "syntax"}}, "schedule": [{"call": 1, "fault": "invalid_tool_args"}]})")
          ->decide(weather_request());
  EXPECT_EQ(p.fault, SimFault::kInvalidToolArgs);
  EXPECT_EQ(p.response.message.tool_calls.at(0).name, "get_weather");
  EXPECT_FALSE(json::accept(p.response.message.tool_calls.at(0).arguments_json));
  // No tools and no calls: nothing to break.
  ChatRequest bare{.model = "m", .messages = {Message::user("hi")}};
  p = make_sim(R"({"schedule": [{"call": 1, "fault": "invalid_tool_args"}]})")->decide(bare);
  EXPECT_EQ(p.fault, SimFault::kNone);
  EXPECT_THAT(p.fault_detail, HasSubstr("does not apply"));
}

TEST(SimFaults, LoopRepeatsThePreviousToolCallsExactly) {
  for (bool stream : {false, true}) {
    Both b = run_both(scheduled("loop"), with_history(weather_request(stream)));
    ASSERT_THAT(b.in_process.outcome.result, IsOk());
    const ChatResponse& r = *b.in_process.outcome.result;
    ASSERT_EQ(r.message.tool_calls.size(), 1u);
    EXPECT_EQ(r.message.tool_calls[0].name, "get_time");
    EXPECT_EQ(r.message.tool_calls[0].arguments_json, R"({"tz":"CET"})");
    EXPECT_EQ(r.finish_reason, FinishReason::kToolCalls);
    ASSERT_THAT(b.from_bytes, IsOk());
    EXPECT_EQ(b.from_bytes->message.tool_calls, r.message.tool_calls);
    EXPECT_EQ(b.counters.of(SimFault::kLoop), 1u);
  }
  // Nothing to repeat: the call answers normally.
  Both none = run_both(scheduled("loop"), weather_request());
  ASSERT_THAT(none.in_process.outcome.result, IsOk());
  EXPECT_EQ(none.counters.of(SimFault::kLoop), 0u);
}

TEST(SimFaults, ContextOverflowInjectedOrByTheWindow) {
  for (bool stream : {false, true}) {
    Both b = run_both(scheduled("context_overflow"), weather_request(stream));
    ASSERT_THAT(b.in_process.outcome.result, StatusIs(ErrorKind::kContextOverflow));
    ASSERT_TRUE(b.in_process.outcome.failure.has_value());
    EXPECT_EQ(b.in_process.outcome.failure->status, 400);
    EXPECT_EQ(b.in_process.outcome.failure->error_code, "context_length_exceeded");
    ASSERT_FALSE(b.from_bytes.ok());
    EXPECT_EQ(b.from_bytes.error(), b.in_process.outcome.result.error());
  }
  // A prompt over the window overflows always, whatever the schedule says.
  ChatRequest big = weather_request(false, std::string(4000, 'x'));
  Both w = run_both(R"({"context_window_tokens": 1000, "schedule": [{"call": 1, "fault": "none"}]})", big);
  ASSERT_THAT(w.in_process.outcome.result,
              StatusIs(ErrorKind::kContextOverflow, HasSubstr("maximum context length is 1000 tokens")));
  EXPECT_EQ(w.counters.of(SimFault::kContextOverflow), 1u);
  // The reserved output counts too.
  ChatRequest fits = weather_request();
  auto sim = make_sim(R"({"context_window_tokens": 200})");
  EXPECT_EQ(sim->decide(fits).fault, SimFault::kNone);
  fits.max_output_tokens = 200;
  EXPECT_EQ(sim->decide(fits).fault, SimFault::kContextOverflow);
}

// ---- schedule, latency, rates ----------------------------------------------------------------

TEST(SimSchedule, Call1Is429Call2Succeeds) {
  SimRuntime s(1);
  auto sim = make_sim(R"({"scenario": [{"answer": "ok"}], "faults": {"server_error": {"probability": 1}},
                          "schedule": [{"call": 1, "fault": "rate_limited"}, {"call": 2, "fault": "none"},
                                       {"call": 4, "fault": "overloaded"}]})");
  SimChatModel model(sim);
  ChatRequest req = weather_request();
  Call c1 = call_model(s, model, req);
  Call c2 = call_model(s, model, req);
  Call c3 = call_model(s, model, req);
  Call c4 = call_model(s, model, req);
  ASSERT_THAT(c1.outcome.result, StatusIs(ErrorKind::kRateLimited));
  ASSERT_THAT(c2.outcome.result, IsOk());
  EXPECT_EQ(c2.outcome.result->message.text(), "ok");
  ASSERT_FALSE(c3.outcome.result.ok());  // unscheduled: drawn (probability 1)
  EXPECT_EQ(c3.outcome.failure->status, 500);
  ASSERT_FALSE(c4.outcome.result.ok());
  EXPECT_EQ(c4.outcome.failure->status, 529);
  SimCounters n = sim->counters();
  EXPECT_EQ(n.calls, 4u);
  EXPECT_EQ(n.of(SimFault::kRateLimited), 1u);
  EXPECT_EQ(n.of(SimFault::kNone), 1u);
  EXPECT_EQ(n.of(SimFault::kServerError), 1u);
  EXPECT_EQ(n.of(SimFault::kOverloaded), 1u);
}

TEST(SimLatency, FirstByteAndPerChunkDelaysOnTheVirtualClock) {
  const char* config =
      R"({"scenario": [{"answer": "0123456789abcdef0123456789abcdef"}], "output": {"tokens_per_chunk": 2},
      "latency": {"first_byte": {"distribution": "fixed", "ms": 250}, "per_chunk": {"distribution": "fixed", "ms": 10}}})";
  Both plain = run_both(config, weather_request(false));
  ASSERT_THAT(plain.in_process.outcome.result, IsOk());
  EXPECT_EQ(plain.in_process.took, 250ms);
  Both streamed = run_both(config, weather_request(true));
  ASSERT_THAT(streamed.in_process.outcome.result, IsOk());
  // role, 4 pieces of 8 bytes, finish, [DONE]: delays before chunks 1..5.
  ASSERT_EQ(streamed.reply.chunks.size(), 7u);
  EXPECT_EQ(streamed.in_process.took, 250ms + 5 * 10ms);
  EXPECT_EQ(streamed.in_process.texts.size(), 4u);
  EXPECT_EQ(streamed.reply.chunk_delays.front(), 0ms);
  EXPECT_EQ(streamed.reply.chunk_delays.back(), 0ms);
}

TEST(SimLatency, DistributionsOver10000Draws) {
  auto lognormal =
      make_sim(R"({"latency": {"first_byte": {"distribution": "lognormal", "median_ms": 200, "sigma": 0.5}}})");
  auto uniform = make_sim(R"({"latency": {"first_byte": {"distribution": "uniform", "min_ms": 100, "max_ms": 300}}})");
  std::vector<double> ln, un;
  for (int i = 0; i < 10000; ++i) {
    ChatRequest r = weather_request(false, numbered("q", i));
    ln.push_back(to_micros(lognormal->decide(r).first_byte_delay) / 1000);
    un.push_back(to_micros(uniform->decide(r).first_byte_delay) / 1000);
  }
  std::sort(ln.begin(), ln.end());
  // The sample median's standard error is about 1.25 * 0.5 / 100 in log space: 6% is > 9 sigma.
  EXPECT_NEAR(ln[5000], 200, 12);
  EXPECT_NEAR(ln[8413], 200 * std::exp(0.5), 20);  // the 84th percentile: one sigma up
  double sum = 0;
  for (double v : un) {
    EXPECT_GE(v, 100);
    EXPECT_LE(v, 300);
    sum += v;
  }
  EXPECT_NEAR(sum / 10000, 200, 4);  // sd of the mean: 57.7 / 100
}

TEST(SimFaults, ProbabilitiesAreHonouredOver10000Calls) {
  auto sim = make_sim(R"({"seed": 77, "faults": {
      "rate_limited": {"probability": 0.1}, "server_error": {"probability": 0.05}, "unavailable": {"probability": 0.05},
      "overloaded": {"probability": 0.05}, "timeout": {"probability": 0.05}, "cut_stream": {"probability": 0.05},
      "malformed_json": {"probability": 0.05}, "hallucinated_tool": {"probability": 0.05},
      "invalid_tool_args": {"probability": 0.05}, "loop": {"probability": 0.05}, "context_overflow": {"probability": 0.05}}})");
  constexpr int kN = 10000;
  for (int i = 0; i < kN; ++i) (void)sim->decide(with_history(weather_request(true, numbered("q", i))));
  SimCounters c = sim->counters();
  EXPECT_EQ(c.calls, static_cast<std::uint64_t>(kN));
  for (std::size_t f = 0; f < kSimFaultCount; ++f) {
    const double p = f == 0 ? 0.4 : sim->config().faults.probability[f];
    const double mean = kN * p, sd = std::sqrt(kN * p * (1 - p));
    EXPECT_NEAR(static_cast<double>(c.faults[f]), mean, 6 * sd) << to_string(static_cast<SimFault>(f));
  }
}

// ---- request parsing -------------------------------------------------------------------------------

TEST(SimRequest, RoundTripOfTheCodecsOwnRequest) {
  ChatRequest r = with_history(weather_request(true));
  r.messages.push_back(Message{
      .role = Role::kUser,
      .content = {ContentPart::from_text("And this?"), ContentPart::from_image_url("data:image/png;base64,AAAA")}});
  r.messages.push_back(Message::assistant(
      "Checking.", {{.id = "call_b", .name = "get_weather", .arguments_json = R"({"location":"Oslo"})"}}));
  r.messages.push_back(Message::tool_result("call_b", "service down", /*is_error=*/true));
  r.messages.push_back(Message::assistant("Sorry."));
  r.max_output_tokens = 300;
  r.temperature = 0.5;
  for (bool max_completion : {false, true}) {
    auto codec = make_openai_codec({.use_max_completion_tokens = max_completion}).value();
    auto parsed = parse_openai_chat_request(codec->build_call(r).value().body);
    ASSERT_THAT(parsed, IsOk());
    EXPECT_EQ(parsed->model, r.model);
    EXPECT_EQ(parsed->messages, r.messages);
    EXPECT_EQ(parsed->max_output_tokens, 300);
    EXPECT_EQ(parsed->temperature, 0.5);
    EXPECT_TRUE(parsed->stream);
    ASSERT_EQ(parsed->tools.size(), r.tools.size());
    for (std::size_t i = 0; i < r.tools.size(); ++i) {
      EXPECT_EQ(parsed->tools[i].name, r.tools[i].name);
      EXPECT_EQ(parsed->tools[i].description, r.tools[i].description);
      EXPECT_EQ(json::parse(parsed->tools[i].parameters_schema_json), json::parse(r.tools[i].parameters_schema_json));
    }
  }
}

TEST(SimRequest, AnSdkShapedBody) {
  auto r = parse_openai_chat_request(R"({
    "model": "gpt-4o-mini",
    "messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Hi"},
                                 {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
      {"role": "assistant", "content": null, "refusal": null,
       "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
      {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "result"}]}
    ],
    "tools": [{"type": "function", "function": {"name": "lookup", "description": "Look up",
               "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}, "strict": true}}],
    "tool_choice": "auto", "parallel_tool_calls": true, "stream": true, "stream_options": {"include_usage": true},
    "max_completion_tokens": 300, "temperature": 0.2, "top_p": 1, "n": 1, "user": "u1", "seed": 4,
    "response_format": {"type": "text"}, "metadata": {"k": "v"}
  })");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->model, "gpt-4o-mini");
  ASSERT_EQ(r->messages.size(), 4u);
  EXPECT_EQ(r->messages[0], Message::system("Be brief."));
  EXPECT_EQ(r->messages[1].content,
            (std::vector<ContentPart>{ContentPart::from_text("Hi"), ContentPart::from_image_url("https://x/y.png")}));
  EXPECT_EQ(r->messages[2],
            Message::assistant("", {{.id = "call_a", .name = "lookup", .arguments_json = R"({"q":"x"})"}}));
  EXPECT_EQ(r->messages[3], Message::tool_result("call_a", "result"));
  ASSERT_EQ(r->tools.size(), 1u);
  EXPECT_EQ(r->tools[0].description, "Look up");
  EXPECT_TRUE(r->stream);
  EXPECT_EQ(r->max_output_tokens, 300);
  EXPECT_EQ(r->temperature, 0.2);
}

TEST(SimRequest, ErrorsNameTheField) {
  struct Case {
    const char* body;
    const char* message;
  };
  const Case cases[] = {
      {"{", "body: not valid JSON"},
      {"[]", "body: must be a JSON object"},
      {R"({"messages": [{"role": "user", "content": "x"}]})", "model: required"},
      {R"({"model": "m"})", "messages: required, a non-empty array"},
      {R"({"model": "m", "messages": []})", "messages: required, a non-empty array"},
      {R"({"model": "m", "messages": [3]})", "messages[0]: a message must be an object"},
      {R"({"model": "m", "messages": [{"content": "x"}]})", "messages[0].role: required"},
      {R"({"model": "m", "messages": [{"role": "function", "content": "x"}]})",
       R"(messages[0].role: unsupported role "function")"},
      {R"({"model": "m", "messages": [{"role": "user", "content": 5}]})",
       "messages[0].content: must be a string, an array of parts or null"},
      {R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})",
       R"(messages[0].content[0].type: unsupported content part type "input_audio")"},
      {R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]})",
       "messages[0].content[0].text: must be a string"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "r"}]})",
       "messages[1].tool_call_id: required for a tool message"},
      {R"({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]})",
       "messages[0].tool_calls[0].function: required"},
      {R"({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]})",
       "messages[0].tool_calls[0].function.name: required"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "a", "tool_calls": []}]})",
       "messages[0].tool_calls: only an assistant message has tool calls"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "a"}], "tools": {}})", "tools: must be an array"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "a"}], "tools": [{"type": "code_interpreter"}]})",
       R"(tools[0].type: unsupported tool type "code_interpreter")"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": {"name": "t", "parameters": []}}]})",
       "tools[0].function.parameters: must be a JSON Schema object"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "a"}], "stream": "yes"})",
       "stream: must be a boolean"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "a"}], "max_tokens": 0})",
       "max_tokens: must be a positive integer"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "a"}], "max_completion_tokens": "9"})",
       "max_completion_tokens: must be a positive integer"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "a"}], "temperature": "hot"})",
       "temperature: must be a number"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "a"}], "n": 2})", "n: only 1 is supported"},
  };
  for (const Case& c : cases) {
    auto r = parse_openai_chat_request(c.body);
    ASSERT_THAT(r, StatusIs(ErrorKind::kInvalidArgument)) << c.body;
    EXPECT_THAT(r.error().message(), HasSubstr(c.message)) << c.body << "\n  got: " << r.error().message();
  }
}

// ---- HTTP routes -------------------------------------------------------------------------------------

TEST(SimHttp, Routes) {
  auto sim = make_sim(R"({"model": "sim-1", "scenario": [{"answer": "hi"}]})");
  auto codec = openai();
  const std::string body = codec->build_call(weather_request()).value().body;
  const Now now{};

  for (const char* target : {"/v1/chat/completions", "/chat/completions", "/v1/chat/completions?api-version=1"}) {
    SimHttpReply r = sim->handle_http("POST", target, body);
    EXPECT_EQ(r.status, 200) << target;
    EXPECT_EQ(find_header(r.headers, "content-type"), "application/json");
    auto parsed = codec->parse_response(r.body);
    ASSERT_THAT(parsed, IsOk());
    EXPECT_EQ(parsed->message.text(), "hi");
  }
  SimHttpReply models = sim->handle_http("GET", "/v1/models", "");
  EXPECT_EQ(models.status, 200);
  json list = json::parse(models.body);
  EXPECT_EQ(list["object"], "list");
  EXPECT_EQ(list["data"][0]["id"], "sim-1");
  EXPECT_EQ(sim->handle_http("GET", "/models", "").status, 200);

  SimHttpReply get_chat = sim->handle_http("GET", "/v1/chat/completions", "");
  EXPECT_EQ(get_chat.status, 405);
  EXPECT_EQ(find_header(get_chat.headers, "allow"), "POST");
  EXPECT_EQ(sim->handle_http("POST", "/v1/models", "").status, 405);

  SimHttpReply missing = sim->handle_http("POST", "/v1/embeddings", body);
  EXPECT_EQ(missing.status, 404);
  EXPECT_THAT(json::parse(missing.body)["error"]["message"].get<std::string>(), HasSubstr("/v1/embeddings"));

  SimHttpReply bad = sim->handle_http("POST", "/v1/chat/completions", R"({"model": "m", "messages": []})");
  EXPECT_EQ(bad.status, 400);
  ApiFailure f = codec->map_error(bad.status, bad.headers, bad.body, now);
  EXPECT_THAT(f.error, StatusIs(ErrorKind::kPermanent));
  EXPECT_EQ(f.error_type, "invalid_request_error");
  EXPECT_THAT(f.error.message(), HasSubstr("messages: required"));

  SimCounters c = sim->counters();
  EXPECT_EQ(c.calls, 3u);  // only the chat completions that parsed
  EXPECT_EQ(c.bad_requests, 4u);
}

TEST(SimHttp, StreamChunksAreOpenAiSseWithUsageLast) {
  auto sim =
      make_sim(R"({"scenario": [{"tool_calls": [{"name": "get_weather", "arguments": {"location": "Paris"}}]}]})");
  auto codec = openai();
  ChatRequest req = weather_request(true);
  SimHttpReply r = sim->handle_http("POST", "/v1/chat/completions", codec->build_call(req).value().body);
  ASSERT_TRUE(r.stream);
  ASSERT_GE(r.chunks.size(), 4u);
  EXPECT_EQ(r.chunks.size(), r.chunk_delays.size());
  for (const std::string& c : r.chunks) {
    EXPECT_TRUE(c.starts_with("data: ")) << c;
    EXPECT_TRUE(c.ends_with("\n\n")) << c;
  }
  EXPECT_EQ(r.chunks.back(), "data: [DONE]\n\n");
  json last = json::parse(r.chunks[r.chunks.size() - 2].substr(6));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(last["usage"]["prompt_tokens"],
            sim_estimate_prompt_tokens(parse_openai_chat_request(codec->build_call(req).value().body).value()));
  Result<ChatResponse> got = read_reply(r, *codec, Now{});
  ASSERT_THAT(got, IsOk());
  ASSERT_EQ(got->message.tool_calls.size(), 1u);
  EXPECT_EQ(got->message.tool_calls[0].arguments_json, R"({"location":"Paris"})");
  EXPECT_EQ(got->message.tool_calls[0].id, "call_sim_0_0");
}

}  // namespace
}  // namespace nines::llm
