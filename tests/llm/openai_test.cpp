// The OpenAI Chat Completions codec: request building, responses, streams (from fixtures),
// truncated and malformed input.
#include "nines/llm/openai.hpp"

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
using ::testing::Not;

using nlohmann::json;
using test::Event;
using test::fixture;
using test::fixture_events;

std::unique_ptr<Codec> codec(OpenAiOptions o = {}) {
  auto c = make_openai_codec(std::move(o));
  EXPECT_THAT(c, IsOk());
  return std::move(c).value();
}

ChatRequest weather_request() {
  ChatRequest r{.model = "gpt-4o-mini"};
  r.messages.push_back(Message::system("You are terse."));
  r.messages.push_back(Message::user("Weather in Paris and the time there?"));
  r.messages.push_back(
      Message::assistant("", {{.id = "call_1", .name = "get_weather", .arguments_json = R"({"location":"Paris"})"},
                              {.id = "call_2", .name = "get_time", .arguments_json = R"({"tz":"Europe/Paris"})"}}));
  r.messages.push_back(Message::tool_result("call_1", "18 C, cloudy"));
  r.messages.push_back(Message::tool_result("call_2", "clock unavailable", /*is_error=*/true));
  r.tools.push_back({.name = "get_weather",
                     .description = "Current weather",
                     .parameters_schema_json =
                         R"({"type":"object","properties":{"location":{"type":"string"}},"required":["location"]})"});
  r.tools.push_back({.name = "get_time"});
  return r;
}

// --- request ---------------------------------------------------------------------------------

TEST(OpenAiRequest, BodyCarriesMessagesToolsAndLimits) {
  ChatRequest r = weather_request();
  r.max_output_tokens = 256;
  r.temperature = 0.25;
  HttpCall call =
      codec({.base_url = "http://127.0.0.1:8000/v1/", .api_key = "sk-test-0123456789"})->build_call(r).value();
  EXPECT_EQ(call.url, "http://127.0.0.1:8000/v1/chat/completions");
  EXPECT_FALSE(call.stream);
  json body = json::parse(call.body);
  EXPECT_EQ(body["model"], "gpt-4o-mini");
  EXPECT_EQ(body["max_tokens"], 256);
  EXPECT_EQ(body["temperature"], 0.25);
  EXPECT_FALSE(body.contains("stream"));
  const json& m = body["messages"];
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[0], json::parse(R"({"role":"system","content":"You are terse."})"));
  EXPECT_EQ(m[1], json::parse(R"({"role":"user","content":"Weather in Paris and the time there?"})"));
  EXPECT_EQ(m[2], json::parse(R"({"role":"assistant","content":null,"tool_calls":[
      {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Paris\"}"}},
      {"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{\"tz\":\"Europe/Paris\"}"}}]})"));
  EXPECT_EQ(m[3], json::parse(R"({"role":"tool","tool_call_id":"call_1","content":"18 C, cloudy"})"));
  EXPECT_EQ(m[4], json::parse(R"({"role":"tool","tool_call_id":"call_2","content":"[tool error] clock unavailable"})"));
  EXPECT_EQ(body["tools"][0], json::parse(R"({"type":"function","function":{"name":"get_weather",
      "description":"Current weather","parameters":{"type":"object","properties":{"location":{"type":"string"}},
      "required":["location"]}}})"));
  EXPECT_EQ(body["tools"][1]["function"]["parameters"], json::parse(R"({"type":"object","properties":{}})"));
}

TEST(OpenAiRequest, Headers) {
  HttpCall call = codec({.api_key = "sk-test-0123456789", .extra_headers = {{"OpenAI-Organization", "org-1"}}})
                      ->build_call(weather_request())
                      .value();
  EXPECT_EQ(call.url, "https://api.openai.com/v1/chat/completions");
  EXPECT_EQ(find_header(call.headers, "authorization"), "Bearer sk-test-0123456789");
  EXPECT_EQ(find_header(call.headers, "content-type"), "application/json");
  EXPECT_EQ(find_header(call.headers, "openai-organization"), "org-1");
  // A local server without a key: no authorization header at all.
  HttpCall local = codec({.base_url = "http://127.0.0.1:11434/v1"})->build_call(weather_request()).value();
  EXPECT_EQ(find_header(local.headers, "authorization"), std::nullopt);
}

TEST(OpenAiRequest, StreamingAndMaxCompletionTokens) {
  ChatRequest r = weather_request();
  r.stream = true;
  r.max_output_tokens = 100;
  HttpCall call = codec({.use_max_completion_tokens = true})->build_call(r).value();
  EXPECT_TRUE(call.stream);
  EXPECT_EQ(find_header(call.headers, "accept"), "text/event-stream");
  json body = json::parse(call.body);
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"], json::parse(R"({"include_usage":true})"));
  EXPECT_EQ(body["max_completion_tokens"], 100);
  EXPECT_FALSE(body.contains("max_tokens"));
  json plain = json::parse(codec({.stream_include_usage = false})->build_call(r).value().body);
  EXPECT_FALSE(plain.contains("stream_options"));
}

TEST(OpenAiRequest, ImagesMakeContentAnArrayOfParts) {
  ChatRequest r{.model = "gpt-4o"};
  r.messages.push_back(Message{.role = Role::kUser,
                               .content = {ContentPart::from_text("What is this?"),
                                           ContentPart::from_image_url("data:image/png;base64,iVBORw0KGgo=")}});
  json body = json::parse(codec()->build_call(r).value().body);
  EXPECT_EQ(body["messages"][0]["content"], json::parse(R"([{"type":"text","text":"What is this?"},
      {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}])"));
}

TEST(OpenAiRequest, InvalidRequestsFailBeforeAnyCall) {
  auto c = codec();
  ChatRequest no_model = weather_request();
  no_model.model.clear();
  EXPECT_THAT(c->build_call(no_model), StatusIs(ErrorKind::kInvalidArgument));
  EXPECT_THAT(c->build_call(ChatRequest{.model = "m"}), StatusIs(ErrorKind::kInvalidArgument));
  ChatRequest bad_schema = weather_request();
  bad_schema.tools[0].parameters_schema_json = "{not json";
  Error e = c->build_call(bad_schema).error();
  EXPECT_THAT(e, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("get_weather")));
  ChatRequest orphan{.model = "m", .messages = {Message::tool_result("", "x")}};
  EXPECT_THAT(c->build_call(orphan), StatusIs(ErrorKind::kInvalidArgument));
  EXPECT_THAT(make_openai_codec({.base_url = "/"}), StatusIs(ErrorKind::kInvalidArgument));
}

TEST(OpenAiRequest, InvalidUtf8IsReplacedNotThrown) {
  ChatRequest r{.model = "m", .messages = {Message::user("bad \xff\xfe bytes")}};
  Result<HttpCall> call = codec()->build_call(r);
  ASSERT_THAT(call, IsOk());
  EXPECT_TRUE(json::accept(call->body));
}

// The body is written without a document (src/llm/simdjson_util.hpp): every string must come
// back exactly as it went in, whatever it holds.
TEST(OpenAiRequest, EveryStringComesBackExactly) {
  const std::string tricky = std::string("quote \" backslash \\ slash / nl \n cr \r tab \t bs \b ff \f ") +
                             std::string("ctl \x01\x1f del \x7f nul ") + std::string(1, '\0') +
                             " utf8 \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 </script>";
  ChatRequest r{.model = "m\"x"};
  r.messages.push_back(Message::system(tricky));
  r.messages.push_back(
      Message::assistant(tricky, {{.id = "id\n", .name = "t\"n", .arguments_json = R"({"a":"\u00e9"})"}}));
  r.messages.push_back(Message::tool_result("id\n", tricky, /*is_error=*/true));
  r.tools.push_back(
      {.name = "t\"n",
       .description = tricky,
       .parameters_schema_json = "{ \"type\" : \"object\",\n \"properties\": {\"a\": {\"type\": \"string\"}} }"});
  r.temperature = 0.1;
  const std::string body = codec()->build_call(r).value().body;
  json j = json::parse(body);
  EXPECT_EQ(j["model"], "m\"x");
  EXPECT_EQ(j["messages"][0]["content"], tricky);
  EXPECT_EQ(j["messages"][1]["content"], tricky);
  EXPECT_EQ(j["messages"][1]["tool_calls"][0]["id"], "id\n");
  EXPECT_EQ(j["messages"][1]["tool_calls"][0]["function"]["name"], "t\"n");
  EXPECT_EQ(j["messages"][1]["tool_calls"][0]["function"]["arguments"], R"({"a":"\u00e9"})");
  EXPECT_EQ(j["messages"][2]["content"], "[tool error] " + tricky);
  EXPECT_EQ(j["tools"][0]["function"]["description"], tricky);
  EXPECT_EQ(j["tools"][0]["function"]["parameters"],
            json::parse(R"({"type":"object","properties":{"a":{"type":"string"}}})"));
  EXPECT_EQ(j["temperature"], 0.1);  // the shortest text that reads back as the same double
  // The escapes nlohmann writes, byte for byte.
  EXPECT_EQ(json(j["messages"][0]["content"]).dump(), json(tricky).dump());
  EXPECT_THAT(body, HasSubstr(json(tricky).dump()));
}

TEST(OpenAiRequest, InvalidUtf8InAnyFieldIsReplaced) {
  ChatRequest r{.model = "m"};
  r.messages.push_back(
      Message::user("a\xff"
                    "b"));
  r.messages.push_back(Message::assistant("", {{.id = "c\xfe", .name = "n", .arguments_json = "{\"x\":\"\xc3\"}"}}));
  r.messages.push_back(Message::tool_result("c\xfe", "r\x80"));
  const std::string body = codec()->build_call(r).value().body;
  json j = json::parse(body);  // valid JSON, valid UTF-8
  EXPECT_EQ(j["messages"][0]["content"],
            "a\xef\xbf\xbd"
            "b");
  EXPECT_EQ(j["messages"][1]["tool_calls"][0]["id"], "c\xef\xbf\xbd");
  EXPECT_EQ(j["messages"][2]["content"], "r\xef\xbf\xbd");
}

TEST(OpenAiRequest, ASchemaThatIsNotAnObjectOrNotUtf8IsRefused) {
  auto c = codec();
  for (const char* schema : {"[1,2]", "\"s\"", "{\"a\":\"\xff\"}", "{} {}", ""}) {
    ChatRequest r{.model = "m", .messages = {Message::user("x")}};
    r.tools.push_back({.name = "t", .parameters_schema_json = schema});
    EXPECT_THAT(c->build_call(r), StatusIs(ErrorKind::kInvalidArgument, HasSubstr("parameters_schema_json"))) << schema;
  }
}

// --- response --------------------------------------------------------------------------------

TEST(OpenAiResponse, Text) {
  ChatResponse r = codec()->parse_response(fixture("openai/response_text.json")).value();
  EXPECT_EQ(r.id, "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
  EXPECT_EQ(r.model, "gpt-4o-2024-08-06");
  EXPECT_EQ(r.message.role, Role::kAssistant);
  EXPECT_EQ(r.message.text(), "Hello! How can I assist you today?");
  EXPECT_TRUE(r.message.tool_calls.empty());
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r.raw_finish_reason, "stop");
  EXPECT_EQ(r.usage, (Usage{.input_tokens = 19, .output_tokens = 10}));
}

TEST(OpenAiResponse, ParallelToolCalls) {
  ChatResponse r = codec()->parse_response(fixture("openai/response_tool_calls.json")).value();
  EXPECT_EQ(r.finish_reason, FinishReason::kToolCalls);
  EXPECT_EQ(r.message.text(), "");
  ASSERT_EQ(r.message.tool_calls.size(), 2u);
  EXPECT_EQ(r.message.tool_calls[0].id, "call_abc123");
  EXPECT_EQ(r.message.tool_calls[0].name, "get_current_weather");
  EXPECT_EQ(json::parse(r.message.tool_calls[0].arguments_json), json::parse(R"({"location":"Boston, MA"})"));
  EXPECT_EQ(r.message.tool_calls[1].id, "call_def456");
  EXPECT_EQ(json::parse(r.message.tool_calls[1].arguments_json)["unit"], "celsius");
}

TEST(OpenAiResponse, FinishReasons) {
  auto c = codec();
  for (auto [raw, want] : {std::pair{"stop", FinishReason::kStop},
                           {"length", FinishReason::kLength},
                           {"tool_calls", FinishReason::kToolCalls},
                           {"function_call", FinishReason::kToolCalls},
                           {"content_filter", FinishReason::kContentFilter},
                           {"eos", FinishReason::kOther}}) {
    std::string body = R"({"choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":")" +
                       std::string(raw) + "\"}]}";
    ChatResponse r = c->parse_response(body).value();
    EXPECT_EQ(r.finish_reason, want) << raw;
    EXPECT_EQ(r.raw_finish_reason, raw);
  }
}

TEST(OpenAiResponse, MalformedBodiesAreTransientAndCounted) {
  auto c = codec({.api_key = "sk-secret-abcdefgh"});
  const char* bodies[] = {"",
                          "not json",
                          "{\"choices\":",
                          "[]",
                          "{}",
                          R"({"choices":[]})",
                          R"({"choices":[{"index":0}]})",
                          R"({"choices":[{"message":{"content":42}}]})",
                          R"({"choices":[{"message":{"tool_calls":{}}}]})",
                          R"({"choices":[{"message":{"tool_calls":[7]}}]})"};
  std::uint64_t n = 0;
  for (const char* body : bodies) {
    Result<ChatResponse> r = c->parse_response(body);
    ASSERT_THAT(r, StatusIs(ErrorKind::kTransient)) << body;
    EXPECT_TRUE(is_malformed(r.error())) << body;
    EXPECT_EQ(c->malformed_count(), ++n);
  }
}

// The response parser (simdjson's DOM): shapes servers send besides the usual one.
TEST(OpenAiResponse, UnusualButValidShapes) {
  auto c = codec();
  // Arguments as an object (some servers), content as text parts, a count beyond int64 (read
  // as 0), a float count with an integral value.
  ChatResponse r = c->parse_response(R"({"id":"x","model":"m","choices":[{"index":0,"message":{"role":"assistant",
      "content":[{"type":"text","text":"a"},{"type":"text","text":"b\u00e9"}],
      "tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":{"k": [1, 2.5, "v"]}}},
                    {"type":"function","function":{"name":"g"}}]},
      "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1e30,"completion_tokens":7.0}})")
                       .value();
  EXPECT_EQ(r.message.text(), "ab\xc3\xa9");
  ASSERT_EQ(r.message.tool_calls.size(), 2u);
  EXPECT_EQ(r.message.tool_calls[0].arguments_json, R"({"k":[1,2.5,"v"]})");
  EXPECT_EQ(r.message.tool_calls[1].id, "call_1");
  EXPECT_EQ(r.message.tool_calls[1].arguments_json, "{}");
  EXPECT_EQ(r.finish_reason, FinishReason::kToolCalls);
  EXPECT_EQ(r.usage.input_tokens, 0);
  EXPECT_EQ(r.usage.output_tokens, 7);
  // A refusal instead of content.
  ChatResponse refusal =
      c->parse_response(R"({"choices":[{"message":{"content":null,"refusal":"no"},"finish_reason":"stop"}]})").value();
  EXPECT_EQ(refusal.message.text(), "no");
  // Too deep, invalid UTF-8 in a string, trailing garbage: malformed. So is an integer beyond
  // 64 bits (simdjson refuses it; no model API sends one), where nlohmann read a double.
  std::string deep =
      R"({"choices":[{"message":{"content":"x"},"z":)" + std::string(300, '[') + std::string(300, ']') + "}]}";
  for (const std::string& bad :
       {deep, std::string("{\"choices\":[{\"message\":{\"content\":\"\xff\"}}]}"),
        std::string(R"({"choices":[{"message":{"content":"x"}}]} x)"),
        std::string(R"({"choices":[{"message":{"content":"x"}}],"n":99999999999999999999})")}) {
    EXPECT_THAT(c->parse_response(bad), StatusIs(ErrorKind::kTransient)) << bad.substr(0, 60);
  }
}

TEST(OpenAiResponse, ErrorObjectInA200BodyIsMapped) {
  auto c = codec();
  Result<ChatResponse> r = c->parse_response(fixture("openai/error_context_length.json"));
  EXPECT_THAT(r, StatusIs(ErrorKind::kContextOverflow));
  EXPECT_EQ(c->malformed_count(), 0u);
}

TEST(OpenAiResponse, MapErrorRedactsTheCodecsKey) {
  auto c = codec({.api_key = "local-token-123456789"});
  ApiFailure f =
      c->map_error(401, {}, R"({"error":{"message":"token local-token-123456789 unknown"}})", Now{TimePoint(0s), 0});
  EXPECT_TRUE(f.auth);
  EXPECT_THAT(f.error.message(), Not(HasSubstr("local-token")));
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

TEST(OpenAiStream, TextDeltasThenTheWholeResponse) {
  auto c = codec();
  auto acc = c->start_stream();
  std::vector<Event> events = fixture_events("openai/stream_text.sse");
  ASSERT_EQ(events.size(), 7u);
  std::vector<std::string> deltas;
  for (const Event& e : events) {
    Result<StreamDelta> d = acc->on_event(e.name, e.data);
    ASSERT_THAT(d, IsOk());
    if (!d->text.empty()) deltas.push_back(d->text);
    EXPECT_EQ(d->done, e.data == "[DONE]");
  }
  EXPECT_EQ(deltas, (std::vector<std::string>{"Hello", " there", "!"}));
  EXPECT_TRUE(acc->done());
  ChatResponse r = acc->finish().value();
  EXPECT_EQ(r.id, "chatcmpl-123");
  EXPECT_EQ(r.model, "gpt-4o-mini");
  EXPECT_EQ(r.message.text(), "Hello there!");
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r.usage, (Usage{.input_tokens = 9, .output_tokens = 3}));
  // Events after [DONE] are ignored; finish may be called again.
  EXPECT_THAT(acc->on_event("", R"({"choices":[{"index":0,"delta":{"content":"late"}}]})"), IsOk());
  EXPECT_EQ(acc->finish().value().message.text(), "Hello there!");
}

TEST(OpenAiStream, ParallelToolCallsWithArgumentsInPieces) {
  auto acc = codec()->start_stream();
  Fed f = feed(*acc, fixture_events("openai/stream_tool_calls.sse"));
  ChatResponse r = f.response.value();
  EXPECT_EQ(f.text, "");
  EXPECT_EQ(r.finish_reason, FinishReason::kToolCalls);
  ASSERT_EQ(r.message.tool_calls.size(), 2u);
  EXPECT_EQ(r.message.tool_calls[0], (ToolCall{.id = "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                                               .name = "get_weather",
                                               .arguments_json = R"({"location": "Paris, France"})"}));
  EXPECT_EQ(r.message.tool_calls[1], (ToolCall{.id = "call_ZsiA8Xw2Bw1m3fbnqBhA9Tla",
                                               .name = "get_time",
                                               .arguments_json = R"({"tz": "Europe/Paris"})"}));
  EXPECT_EQ(r.usage, (Usage{.input_tokens = 120, .output_tokens = 40}));
}

TEST(OpenAiStream, AStreamWithoutDoneIsATransientFailureAtEveryCut) {
  for (std::string_view name : {"openai/stream_text.sse", "openai/stream_tool_calls.sse"}) {
    std::vector<Event> events = fixture_events(name);
    auto c = codec();
    for (std::size_t cut = 0; cut < events.size(); ++cut) {  // every prefix lacking [DONE]
      auto acc = c->start_stream();
      Fed f = feed(*acc, std::vector<Event>(events.begin(), events.begin() + static_cast<long>(cut)));
      ASSERT_THAT(f.response, StatusIs(ErrorKind::kTransient)) << name << " cut at " << cut;
      EXPECT_TRUE(is_truncated_stream(f.response.error())) << f.response.error().message();
      EXPECT_FALSE(acc->done());
      EXPECT_FALSE(acc->finish().ok());  // and stays failed
    }
    EXPECT_EQ(c->truncated_count(), events.size());
    EXPECT_EQ(c->malformed_count(), 0u);
  }
}

TEST(OpenAiStream, MalformedChunkFailsTheStreamAndIsCounted) {
  auto c = codec();
  std::vector<Event> events = fixture_events("openai/stream_text.sse");
  auto acc = c->start_stream();
  ASSERT_THAT(acc->on_event("", events[0].data), IsOk());
  Result<StreamDelta> bad = acc->on_event("", R"({"choices":[{"index":0,"delta":{"content":"Hel)");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(is_malformed(bad.error()));
  EXPECT_THAT(bad, StatusIs(ErrorKind::kTransient));
  // Every later event returns the same error, [DONE] included; so does finish().
  EXPECT_EQ(acc->on_event("", events[1].data).error(), bad.error());
  EXPECT_EQ(acc->on_event("", "[DONE]").error(), bad.error());
  EXPECT_EQ(acc->finish().error(), bad.error());
  EXPECT_EQ(c->malformed_count(), 1u);
  EXPECT_EQ(c->truncated_count(), 0u);
}

TEST(OpenAiStream, OtherMalformedEvents) {
  auto c = codec();
  const char* bad[] = {
      "[1,2]",
      "\"text\"",
      R"({"choices":5})",
      R"({"choices":[7]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":100000,"function":{"arguments":"x"}}]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":-1}]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":["x"]}}]})"};
  for (const char* data : bad) {
    auto acc = c->start_stream();
    Result<StreamDelta> d = acc->on_event("", data);
    ASSERT_FALSE(d.ok()) << data;
    EXPECT_TRUE(is_malformed(d.error())) << data;
  }
  EXPECT_EQ(c->malformed_count(), std::size(bad));
}

TEST(OpenAiStream, ErrorChunkIsMappedByItsType) {
  auto acc = codec({.api_key = "sk-live-abcdefghijklmnop"})->start_stream();
  ASSERT_THAT(acc->on_event("", fixture_events("openai/stream_text.sse")[1].data), IsOk());
  Result<StreamDelta> d = acc->on_event(
      "", R"j({"error":{"message":"The server had an error (key sk-live-abcdefghijklmnop)","type":"server_error"}})j");
  ASSERT_THAT(d, StatusIs(ErrorKind::kTransient));
  EXPECT_FALSE(is_truncated_stream(d.error()));
  EXPECT_THAT(d.error().message(), Not(HasSubstr("abcdefghijklmnop")));
  EXPECT_EQ(acc->finish().error(), d.error());
}

TEST(OpenAiStream, KeepAlivesAndServersWithoutIndexOrUsage) {
  // A server that sends a whole tool call in one chunk without "index" (older Ollama), blank
  // keep-alive data, no usage.
  auto acc = codec()->start_stream();
  ASSERT_THAT(acc->on_event("", ""), IsOk());
  ASSERT_THAT(acc->on_event("", R"({"model":"llama3.1","choices":[{"delta":{"tool_calls":[
      {"id":"call_a","function":{"name":"f","arguments":{"x":1}}},
      {"id":"call_b","function":{"name":"g","arguments":""}}]}}]})"),
              IsOk());
  ASSERT_THAT(acc->on_event("", R"({"choices":[{"delta":{},"finish_reason":"tool_calls"}]})"), IsOk());
  ASSERT_THAT(acc->on_event("", "[DONE]"), IsOk());
  ChatResponse r = acc->finish().value();
  EXPECT_EQ(r.model, "llama3.1");
  ASSERT_EQ(r.message.tool_calls.size(), 2u);
  EXPECT_EQ(r.message.tool_calls[0].arguments_json, R"({"x":1})");
  EXPECT_EQ(r.message.tool_calls[1].name, "g");
  EXPECT_EQ(r.message.tool_calls[1].arguments_json, "{}");
  EXPECT_EQ(r.usage, Usage{});
}

TEST(OpenAiStream, ResponseSizeIsBounded) {
  auto c = codec({.max_response_bytes = 10});
  auto acc = c->start_stream();
  ASSERT_THAT(acc->on_event("", R"({"choices":[{"index":0,"delta":{"content":"12345"}}]})"), IsOk());
  Result<StreamDelta> d = acc->on_event("", R"({"choices":[{"index":0,"delta":{"content":"678901"}}]})");
  ASSERT_FALSE(d.ok());
  EXPECT_TRUE(is_malformed(d.error()));
}

TEST(OpenAiStream, AccumulatorOutlivesItsCodec) {
  std::unique_ptr<StreamAccumulator> acc;
  {
    auto c = codec();
    acc = c->start_stream();
  }
  Fed f = feed(*acc, fixture_events("openai/stream_text.sse"));
  EXPECT_EQ(f.response.value().message.text(), "Hello there!");
}

}  // namespace
}  // namespace nines::llm
