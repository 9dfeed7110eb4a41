// The Anthropic Messages codec: request building, responses, streams (from fixtures),
// truncated and malformed input, the mid-stream error event.
#include "nines/llm/anthropic.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>

#include "llm/fixtures.hpp"
#include "support/status_matchers.hpp"

namespace nines::llm {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

using nlohmann::json;
using test::Event;
using test::fixture;
using test::fixture_events;

std::unique_ptr<Codec> codec(AnthropicOptions o = {}) {
  auto c = make_anthropic_codec(std::move(o));
  EXPECT_THAT(c, IsOk());
  return std::move(c).value();
}

// --- request ---------------------------------------------------------------------------------

TEST(AnthropicRequest, SystemOnTopToolResultsInOneUserTurn) {
  ChatRequest r{.model = "claude-sonnet-4-20250514", .temperature = 0.5};
  r.messages.push_back(Message::system("You are terse."));
  r.messages.push_back(Message::system("Answer in English."));
  r.messages.push_back(Message::user("Weather in Paris and the time there?"));
  r.messages.push_back(Message::assistant(
      "Checking.", {{.id = "toolu_1", .name = "get_weather", .arguments_json = R"({"location":"Paris"})"},
                    {.id = "toolu_2", .name = "get_time", .arguments_json = "not json"}}));
  r.messages.push_back(Message::tool_result("toolu_1", "18 C"));
  r.messages.push_back(Message::tool_result("toolu_2", "clock unavailable", /*is_error=*/true));
  r.messages.push_back(Message::user("Also, umbrella?"));
  r.tools.push_back({.name = "get_weather",
                     .description = "Current weather",
                     .parameters_schema_json = R"({"type":"object","properties":{"location":{"type":"string"}}})"});

  HttpCall call = codec({.api_key = "sk-ant-test-123456"})->build_call(r).value();
  EXPECT_EQ(call.url, "https://api.anthropic.com/v1/messages");
  json body = json::parse(call.body);
  EXPECT_EQ(body["model"], "claude-sonnet-4-20250514");
  EXPECT_EQ(body["max_tokens"], 4096);  // the codec's default: the API requires one
  EXPECT_EQ(body["temperature"], 0.5);
  EXPECT_EQ(body["system"], "You are terse.\n\nAnswer in English.");
  EXPECT_EQ(body["messages"], json::parse(R"([
    {"role":"user","content":[{"type":"text","text":"Weather in Paris and the time there?"}]},
    {"role":"assistant","content":[{"type":"text","text":"Checking."},
      {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"location":"Paris"}},
      {"type":"tool_use","id":"toolu_2","name":"get_time","input":{}}]},
    {"role":"user","content":[
      {"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"18 C"}]},
      {"type":"tool_result","tool_use_id":"toolu_2","content":[{"type":"text","text":"clock unavailable"}],"is_error":true},
      {"type":"text","text":"Also, umbrella?"}]}])"));
  EXPECT_EQ(body["tools"], json::parse(R"([{"name":"get_weather","description":"Current weather",
      "input_schema":{"type":"object","properties":{"location":{"type":"string"}}}}])"));
}

TEST(AnthropicRequest, HeadersAndLimits) {
  ChatRequest r{
      .model = "claude-3-5-haiku-latest", .messages = {Message::user("hi")}, .max_output_tokens = 300, .stream = true};
  HttpCall call = codec({.base_url = "http://127.0.0.1:9000/",
                         .api_key = "sk-ant-test-123456",
                         .extra_headers = {{"anthropic-beta", "x"}}})
                      ->build_call(r)
                      .value();
  EXPECT_EQ(call.url, "http://127.0.0.1:9000/v1/messages");
  EXPECT_TRUE(call.stream);
  EXPECT_EQ(find_header(call.headers, "x-api-key"), "sk-ant-test-123456");
  EXPECT_EQ(find_header(call.headers, "anthropic-version"), "2023-06-01");
  EXPECT_EQ(find_header(call.headers, "anthropic-beta"), "x");
  EXPECT_EQ(find_header(call.headers, "authorization"), std::nullopt);
  EXPECT_EQ(find_header(call.headers, "accept"), "text/event-stream");
  json body = json::parse(call.body);
  EXPECT_EQ(body["max_tokens"], 300);
  EXPECT_EQ(body["stream"], true);
  EXPECT_FALSE(body.contains("system"));
  EXPECT_FALSE(body.contains("temperature"));
}

TEST(AnthropicRequest, ImagesAndEmptyText) {
  ChatRequest r{.model = "m"};
  r.messages.push_back(Message{.role = Role::kUser,
                               .content = {ContentPart::from_text(""), ContentPart::from_text("What is it?"),
                                           ContentPart::from_image_url("data:image/jpeg;base64,/9j/4AAQ"),
                                           ContentPart::from_image_url("https://example.com/a.png")}});
  r.messages.push_back(Message::assistant(""));  // empty: left out
  json body = json::parse(codec()->build_call(r).value().body);
  EXPECT_EQ(body["messages"], json::parse(R"([{"role":"user","content":[
      {"type":"text","text":"What is it?"},
      {"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"/9j/4AAQ"}},
      {"type":"image","source":{"type":"url","url":"https://example.com/a.png"}}]}])"));
}

TEST(AnthropicRequest, InvalidRequests) {
  auto c = codec();
  EXPECT_THAT(c->build_call(ChatRequest{.messages = {Message::user("x")}}), StatusIs(ErrorKind::kInvalidArgument));
  EXPECT_THAT(c->build_call(ChatRequest{.model = "m", .messages = {Message::system("only a system prompt")}}),
              StatusIs(ErrorKind::kInvalidArgument));
  ChatRequest bad_schema{
      .model = "m", .messages = {Message::user("x")}, .tools = {{.name = "t", .parameters_schema_json = "[]"}}};
  EXPECT_THAT(c->build_call(bad_schema), StatusIs(ErrorKind::kInvalidArgument));
  EXPECT_THAT(make_anthropic_codec({.default_max_tokens = 0}), StatusIs(ErrorKind::kInvalidArgument));
  EXPECT_THAT(make_anthropic_codec({.version = ""}), StatusIs(ErrorKind::kInvalidArgument));
}

// --- response --------------------------------------------------------------------------------

TEST(AnthropicResponse, Text) {
  ChatResponse r = codec()->parse_response(fixture("anthropic/response_text.json")).value();
  EXPECT_EQ(r.id, "msg_013Zva2CMHLNnXjNJJKqJ2EF");
  EXPECT_EQ(r.model, "claude-sonnet-4-20250514");
  EXPECT_EQ(r.message.text(), "Hi! My name is Claude.");
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r.raw_finish_reason, "end_turn");
  EXPECT_EQ(r.usage, (Usage{.input_tokens = 2095, .output_tokens = 503}));
}

TEST(AnthropicResponse, ParallelToolUseAndCachedInputTokens) {
  ChatResponse r = codec()->parse_response(fixture("anthropic/response_tool_use.json")).value();
  EXPECT_EQ(r.finish_reason, FinishReason::kToolCalls);
  EXPECT_EQ(r.message.text(), "I'll check the weather in both cities.");
  ASSERT_EQ(r.message.tool_calls.size(), 2u);
  EXPECT_EQ(r.message.tool_calls[0].id, "toolu_01A09q90qw90lq917835lq9");
  EXPECT_EQ(r.message.tool_calls[0].name, "get_weather");
  EXPECT_EQ(json::parse(r.message.tool_calls[0].arguments_json),
            json::parse(R"({"location":"San Francisco, CA","unit":"celsius"})"));
  EXPECT_EQ(json::parse(r.message.tool_calls[1].arguments_json), json::parse(R"({"location":"New York, NY"})"));
  // 400 + 100 cache writes + 1000 cache reads: the whole prompt.
  EXPECT_EQ(r.usage, (Usage{.input_tokens = 1500, .output_tokens = 92}));
}

TEST(AnthropicResponse, StopReasons) {
  auto c = codec();
  for (auto [raw, want] : {std::pair{"end_turn", FinishReason::kStop},
                           {"stop_sequence", FinishReason::kStop},
                           {"max_tokens", FinishReason::kLength},
                           {"tool_use", FinishReason::kToolCalls},
                           {"refusal", FinishReason::kContentFilter},
                           {"pause_turn", FinishReason::kOther}}) {
    std::string body =
        R"({"type":"message","content":[{"type":"text","text":"x"}],"stop_reason":")" + std::string(raw) + "\"}";
    EXPECT_EQ(c->parse_response(body).value().finish_reason, want) << raw;
  }
}

TEST(AnthropicResponse, MalformedBodiesAreTransientAndCounted) {
  auto c = codec();
  const char* bodies[] = {"",
                          "<html>",
                          "{\"type\":\"message\"",
                          "[]",
                          "{}",
                          R"({"type":"message"})",
                          R"({"type":"message","content":{}})",
                          R"({"type":"message","content":[1]})",
                          R"({"type":"completion","content":[]})"};
  std::uint64_t n = 0;
  for (const char* body : bodies) {
    Result<ChatResponse> r = c->parse_response(body);
    ASSERT_THAT(r, StatusIs(ErrorKind::kTransient)) << body;
    EXPECT_TRUE(is_malformed(r.error())) << body;
    EXPECT_EQ(c->malformed_count(), ++n);
  }
}

TEST(AnthropicResponse, AbsurdlyDeepJsonIsMalformedNotAStackOverflow) {
  std::string input = std::string(100000, '[') + std::string(100000, ']');
  std::string body = R"({"type":"message","content":[{"type":"tool_use","id":"t","name":"f","input":)" + input + "}]}";
  Result<ChatResponse> r = codec()->parse_response(body);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(is_malformed(r.error()));
  // Brackets inside strings do not count.
  std::string text = R"({"type":"message","content":[{"type":"text","text":")" + std::string(1000, '[') + "\"}]}";
  EXPECT_EQ(codec()->parse_response(text).value().message.text(), std::string(1000, '['));
}

TEST(AnthropicResponse, ErrorBodyIsMapped) {
  EXPECT_THAT(codec()->parse_response(fixture("anthropic/error_overloaded.json")), StatusIs(ErrorKind::kTransient));
}

// --- streams ---------------------------------------------------------------------------------

struct Fed {
  std::string text;
  Result<ChatResponse> response = Error(ErrorKind::kInternal, "not finished");
};

Fed feed(StreamAccumulator& acc, const std::vector<Event>& events) {
  Fed out;
  for (const Event& e : events) {
    Result<StreamDelta> d = acc.on_event(e.name, e.data);
    if (!d.ok()) break;
    out.text += d->text;
  }
  out.response = acc.finish();
  return out;
}

TEST(AnthropicStream, Text) {
  auto acc = codec()->start_stream();
  std::vector<Event> events = fixture_events("anthropic/stream_text.sse");
  ASSERT_EQ(events.size(), 8u);
  std::vector<std::string> deltas;
  for (const Event& e : events) {
    Result<StreamDelta> d = acc->on_event(e.name, e.data);
    ASSERT_THAT(d, IsOk()) << e.name << ": " << d.error().to_string();
    if (!d->text.empty()) deltas.push_back(d->text);
    EXPECT_EQ(d->done, e.name == "message_stop");
  }
  EXPECT_EQ(deltas, (std::vector<std::string>{"Hello", "!"}));
  ChatResponse r = acc->finish().value();
  EXPECT_EQ(r.id, "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
  EXPECT_EQ(r.model, "claude-sonnet-4-20250514");
  EXPECT_EQ(r.message.text(), "Hello!");
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r.usage, (Usage{.input_tokens = 25, .output_tokens = 15}));
}

TEST(AnthropicStream, ToolUseWithInputInPieces) {
  auto acc = codec()->start_stream();
  Fed f = feed(*acc, fixture_events("anthropic/stream_tool_use.sse"));
  ChatResponse r = f.response.value();
  EXPECT_EQ(f.text, "Okay, let's check the weather.");
  EXPECT_EQ(r.message.text(), f.text);
  EXPECT_EQ(r.finish_reason, FinishReason::kToolCalls);
  ASSERT_EQ(r.message.tool_calls.size(), 2u);
  EXPECT_EQ(r.message.tool_calls[0],
            (ToolCall{.id = "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                      .name = "get_weather",
                      .arguments_json = R"({"location": "San Francisco, CA", "unit": "fahrenheit"})"}));
  EXPECT_EQ(r.message.tool_calls[1].name, "get_time");
  EXPECT_EQ(json::parse(r.message.tool_calls[1].arguments_json)["tz"], "America/Los_Angeles");
  EXPECT_EQ(r.usage, (Usage{.input_tokens = 472, .output_tokens = 89}));
}

TEST(AnthropicStream, AStreamWithoutMessageStopIsATransientFailureAtEveryCut) {
  for (std::string_view name : {"anthropic/stream_text.sse", "anthropic/stream_tool_use.sse"}) {
    std::vector<Event> events = fixture_events(name);
    auto c = codec();
    for (std::size_t cut = 0; cut < events.size(); ++cut) {
      auto acc = c->start_stream();
      Fed f = feed(*acc, std::vector<Event>(events.begin(), events.begin() + static_cast<long>(cut)));
      ASSERT_THAT(f.response, StatusIs(ErrorKind::kTransient)) << name << " cut at " << cut;
      EXPECT_TRUE(is_truncated_stream(f.response.error())) << f.response.error().message();
    }
    EXPECT_EQ(c->truncated_count(), events.size());
    EXPECT_EQ(c->malformed_count(), 0u);
  }
}

TEST(AnthropicStream, ErrorEventMidStreamIsMapped) {
  auto c = codec();
  auto acc = c->start_stream();
  Fed f = feed(*acc, fixture_events("anthropic/stream_error_overloaded.sse"));
  EXPECT_EQ(f.text, "Par");
  ASSERT_THAT(f.response, StatusIs(ErrorKind::kTransient, HasSubstr("overloaded_error")));
  EXPECT_FALSE(is_truncated_stream(f.response.error()));
  EXPECT_EQ(c->truncated_count(), 0u);
  // A rate-limit error event is rate_limited.
  auto acc2 = c->start_stream();
  Result<StreamDelta> d =
      acc2->on_event("error", R"({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}})");
  EXPECT_THAT(d, StatusIs(ErrorKind::kRateLimited));
}

TEST(AnthropicStream, OutOfOrderAndMalformedEvents) {
  const std::string start = fixture_events("anthropic/stream_text.sse")[0].data;
  const std::vector<std::vector<std::string>> cases = {
      {"{not json"},
      {R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})"},  // before
                                                                                                  // message_start
      {R"({"type":"message_stop"})"},
      {start, start},
      {start, R"({"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":"x"}})"},
      {start, R"({"type":"content_block_start","index":-1,"content_block":{"type":"text"}})"},
      {start, R"({"type":"content_block_start","index":99999,"content_block":{"type":"text"}})"},
      {start, R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})",
       R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})"},
      {start, R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})",
       R"({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}})"},
      {start, R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})",
       R"({"type":"content_block_stop","index":0})",
       R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"late"}})"},
      {R"({"type":"message_start","message":"x"})"},
  };
  auto c = codec();
  for (const auto& events : cases) {
    auto acc = c->start_stream();
    Result<StreamDelta> last = StreamDelta{};
    for (const std::string& data : events) last = acc->on_event("", data);
    ASSERT_FALSE(last.ok()) << events.back();
    EXPECT_TRUE(is_malformed(last.error())) << events.back();
    EXPECT_TRUE(is_malformed(acc->finish().error()));
  }
  EXPECT_EQ(c->malformed_count(), cases.size());
}

TEST(AnthropicStream, UnknownEventsAndDeltasAreSkipped) {
  std::vector<Event> events = fixture_events("anthropic/stream_text.sse");
  std::vector<Event> with_extras;
  for (const Event& e : events) {
    with_extras.push_back(e);
    if (e.name == "message_start") {
      with_extras.push_back(
          {"content_block_start",
           R"({"type":"content_block_start","index":5,"content_block":{"type":"thinking","thinking":""}})"});
      with_extras.push_back(
          {"content_block_delta",
           R"({"type":"content_block_delta","index":5,"delta":{"type":"thinking_delta","thinking":"hmm"}})"});
      with_extras.push_back(
          {"content_block_delta",
           R"({"type":"content_block_delta","index":5,"delta":{"type":"signature_delta","signature":"EqQB"}})"});
      with_extras.push_back({"content_block_stop", R"({"type":"content_block_stop","index":5})"});
      with_extras.push_back({"brand_new_event", R"({"type":"brand_new_event","x":1})"});
    }
  }
  auto acc = codec()->start_stream();
  Fed f = feed(*acc, with_extras);
  EXPECT_EQ(f.response.value().message.text(), "Hello!");
}

TEST(AnthropicStream, EventNameStandsInForAMissingType) {
  auto acc = codec()->start_stream();
  for (const Event& e : fixture_events("anthropic/stream_text.sse")) {
    json data = json::parse(e.data);
    data.erase("type");
    ASSERT_THAT(acc->on_event(e.name, data.dump()), IsOk()) << e.name;
  }
  EXPECT_EQ(acc->finish().value().message.text(), "Hello!");
}

}  // namespace
}  // namespace nines::llm
