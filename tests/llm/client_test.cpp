// The model client (llm/client.hpp) through the real HTTP client against the net tests'
// loopback server (tests/net/test_server.hpp) serving canned OpenAI and Anthropic responses
// (the fixtures of tests/llm/fixtures), on the real environment with 2 workers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "llm/fixtures.hpp"
#include "net/test_server.hpp"
#include "nines/llm/anthropic.hpp"
#include "nines/llm/client.hpp"
#include "nines/llm/openai.hpp"
#include "nines/llm/provider.hpp"
#include "nines/llm/router.hpp"
#include "nines/runtime/runtime.hpp"
#include "support/status_matchers.hpp"

namespace nines::llm {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

using net::test::CannedResponse;
using net::test::TestServer;
using test::fixture;

constexpr const char* kOpenAiKey = "sk-proj-TESTKEYabcdefghijklmnop0123456789";
constexpr const char* kAnthropicKey = "sk-ant-api03-TESTKEYabcdefghijklmnop0123456789";

// A .sse fixture split into its events ("...\n\n" each), to be sent as one chunk each.
std::vector<std::string> sse_chunks(std::string_view name) {
  std::string all = fixture(name);
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t p; (p = all.find("\n\n", start)) != std::string::npos; start = p + 2) {
    out.push_back(all.substr(start, p + 2 - start));
  }
  if (start < all.size()) out.push_back(all.substr(start));
  return out;
}

ChatRequest hello_request() {
  ChatRequest req;
  req.model = "test-model";
  req.messages = {Message::user("Hello")};
  return req;
}

struct Fixture {
  Fixture() {
    net::HttpClientOptions options;
    options.proxy = "";  // loopback only
    options.timeouts.total = std::chrono::seconds(5);
    http = net::HttpClient::create(*env, std::move(options)).value();
    openai = std::make_unique<ModelClient>(
        make_openai_codec({.base_url = server.url("/oa/v1"), .api_key = kOpenAiKey}).value(), *http);
    anthropic = std::make_unique<ModelClient>(
        make_anthropic_codec({.base_url = server.url("/an"), .api_key = kAnthropicKey}).value(), *http);
  }
  ~Fixture() {
    openai.reset();
    anthropic.reset();
    http.reset();  // before the environment
  }

  void run(std::function<Task<>(Context&)> body) {
    auto w = rt->spawn_watched(std::move(body)).value();
    ExitReason r = w.exit->wait();
    EXPECT_TRUE(r.is_normal()) << r.to_string();
  }

  // One chat (or chat_stream) call of `client` in a process; the outcome.
  ChatOutcome call(ModelClient& client, bool stream, std::vector<std::string>* texts = nullptr,
                   std::function<void()> on_first_text = {}) {
    std::optional<ChatOutcome> out;
    run([&](Context& ctx) -> Task<> {
      auto scope = ctx.with_timeout(std::chrono::seconds(5));
      ChatRequest req = hello_request();
      if (stream) {
        std::function<void(std::string_view)> on_text = [&](std::string_view t) {
          if (texts) {
            if (texts->empty() && on_first_text) on_first_text();
            texts->emplace_back(t);
          }
        };
        ChatOutcome o = co_await client.chat_stream_detailed(ctx, req, std::move(on_text));
        out.emplace(std::move(o));
      } else {
        ChatOutcome o = co_await client.chat_detailed(ctx, req);
        out.emplace(std::move(o));
      }
    });
    if (!out) return ChatOutcome{Error(ErrorKind::kInternal, "the process did not finish"), std::nullopt};
    return std::move(*out);
  }

  // Every report, at every level, kept (and off stderr).
  std::shared_ptr<CaptureSink> logs = std::make_shared<CaptureSink>();
  std::unique_ptr<Environment> env =
      make_real_environment({.workers = 2, .seed = 7, .log_level = LogLevel::kDebug, .log_sink = logs});
  TestServer server{*env};
  std::unique_ptr<Runtime> rt = Runtime::create(*env).value();
  std::unique_ptr<net::HttpClient> http;
  std::unique_ptr<ModelClient> openai, anthropic;
};

constexpr const char* kOpenAiPath = "/oa/v1/chat/completions";
constexpr const char* kAnthropicPath = "/an/v1/messages";

void expect_no_key(const Error& e) {
  EXPECT_THAT(e.message(), Not(HasSubstr("TESTKEY"))) << e.to_string();
  EXPECT_THAT(e.to_string(), Not(HasSubstr(kOpenAiKey)));
  EXPECT_THAT(e.to_string(), Not(HasSubstr(kAnthropicKey)));
}

TEST(ModelClient, OpenAiCompletionAndTheKeyReachesTheServer) {
  Fixture f;
  f.server.set_canned(kOpenAiPath,
                      {.headers = "Content-Type: application/json\r\n", .body = fixture("openai/response_text.json")});
  ChatOutcome o = f.call(*f.openai, false);
  ASSERT_THAT(o.result, IsOk());
  EXPECT_EQ(o.result->message.text(), "Hello! How can I assist you today?");
  EXPECT_EQ(o.result->finish_reason, FinishReason::kStop);
  EXPECT_EQ(o.result->model, "gpt-4o-2024-08-06");
  EXPECT_EQ(o.result->usage.input_tokens, 19);
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].path, kOpenAiPath);
  EXPECT_THAT(seen[0].head, HasSubstr(std::string("Bearer ") + kOpenAiKey));
  EXPECT_THAT(seen[0].body, HasSubstr("\"test-model\""));
  EXPECT_THAT(seen[0].body, Not(HasSubstr("\"stream\":true")));
}

TEST(ModelClient, AnthropicCompletionAndTheKeyReachesTheServer) {
  Fixture f;
  f.server.set_canned(kAnthropicPath, {.body = fixture("anthropic/response_text.json")});
  ChatOutcome o = f.call(*f.anthropic, false);
  ASSERT_THAT(o.result, IsOk());
  EXPECT_EQ(o.result->message.text(), "Hi! My name is Claude.");
  EXPECT_EQ(o.result->finish_reason, FinishReason::kStop);
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_THAT(seen[0].head, HasSubstr(std::string("x-api-key: ") + kAnthropicKey));
  EXPECT_THAT(seen[0].head, HasSubstr("anthropic-version: 2023-06-01"));
}

TEST(ModelClient, ToolCallsOfBothProviders) {
  Fixture f;
  f.server.set_canned(kOpenAiPath, {.body = fixture("openai/response_tool_calls.json")});
  f.server.set_canned(kAnthropicPath, {.body = fixture("anthropic/response_tool_use.json")});
  ChatOutcome o = f.call(*f.openai, false);
  ASSERT_THAT(o.result, IsOk());
  ASSERT_FALSE(o.result->message.tool_calls.empty());
  EXPECT_EQ(o.result->message.tool_calls[0].name, "get_current_weather");
  EXPECT_EQ(o.result->finish_reason, FinishReason::kToolCalls);
  ChatOutcome a = f.call(*f.anthropic, false);
  ASSERT_THAT(a.result, IsOk());
  ASSERT_FALSE(a.result->message.tool_calls.empty());
  EXPECT_EQ(a.result->message.tool_calls[0].name, "get_weather");
  EXPECT_EQ(a.result->finish_reason, FinishReason::kToolCalls);
}

TEST(ModelClient, StreamedToolCall) {
  Fixture f;
  f.server.set_canned(kAnthropicPath, {.chunks = sse_chunks("anthropic/stream_tool_use.sse")});
  ChatOutcome a = f.call(*f.anthropic, true);
  ASSERT_THAT(a.result, IsOk());
  ASSERT_FALSE(a.result->message.tool_calls.empty());
  EXPECT_EQ(a.result->finish_reason, FinishReason::kToolCalls);
}

// The first event comes at once, the rest only once on_text saw the first piece: the text
// is delivered as it arrives, not at the end.
TEST(ModelClient, OpenAiStreamDeliversTextIncrementally) {
  Fixture f;
  // The first chunk (role, empty content) gives no text: gate on the second too.
  auto chunks = sse_chunks("openai/stream_text.sse");
  CannedResponse cr;
  cr.chunks = {chunks[0] + chunks[1]};
  cr.chunks.insert(cr.chunks.end(), chunks.begin() + 2, chunks.end());
  cr.gated = true;
  f.server.set_canned(kOpenAiPath, cr);
  std::vector<std::string> texts;
  ChatOutcome o = f.call(*f.openai, true, &texts, [&] { f.server.release(); });
  ASSERT_THAT(o.result, IsOk());
  EXPECT_EQ(texts, (std::vector<std::string>{"Hello", " there", "!"}));
  EXPECT_EQ(o.result->message.text(), "Hello there!");
  EXPECT_EQ(o.result->usage.output_tokens, 3);
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_THAT(seen[0].body, HasSubstr("\"stream\":true"));
}

TEST(ModelClient, AnthropicStreamDeliversTextIncrementally) {
  Fixture f;
  auto chunks = sse_chunks("anthropic/stream_text.sse");
  // Up to and including the first text delta at once, the rest after release().
  std::size_t first_text = 0;
  while (first_text < chunks.size() && chunks[first_text].find("text_delta") == std::string::npos) ++first_text;
  ASSERT_LT(first_text, chunks.size());
  CannedResponse cr;
  std::string head;
  for (std::size_t i = 0; i <= first_text; ++i) head += chunks[i];
  cr.chunks = {head};
  cr.chunks.insert(cr.chunks.end(), chunks.begin() + static_cast<std::ptrdiff_t>(first_text) + 1, chunks.end());
  cr.gated = true;
  f.server.set_canned(kAnthropicPath, cr);
  std::vector<std::string> texts;
  ChatOutcome o = f.call(*f.anthropic, true, &texts, [&] { f.server.release(); });
  ASSERT_THAT(o.result, IsOk());
  ASSERT_GE(texts.size(), 2u);
  std::string joined;
  for (auto& t : texts) joined += t;
  EXPECT_EQ(joined, o.result->message.text());
}

TEST(ModelClient, StreamEndingWithoutDoneIsTruncated) {
  Fixture f;
  auto chunks = sse_chunks("openai/stream_text.sse");
  chunks.resize(3);  // "Hello", " there", then a clean end of the body without [DONE]
  f.server.set_canned(kOpenAiPath, {.chunks = chunks});
  std::vector<std::string> texts;
  ChatOutcome o = f.call(*f.openai, true, &texts);
  ASSERT_THAT(o.result, StatusIs(ErrorKind::kTransient));
  EXPECT_TRUE(is_truncated_stream(o.result.error())) << o.result.error().to_string();
  EXPECT_EQ(texts.size(), 2u);
  EXPECT_EQ(f.openai->codec().truncated_count(), 1u);
  expect_no_key(o.result.error());
}

TEST(ModelClient, StreamCutMidAnswerIsTruncated) {
  Fixture f;
  auto chunks = sse_chunks("anthropic/stream_text.sse");
  chunks.resize(chunks.size() - 2);  // no message_delta / message_stop; the connection closes
  f.server.set_canned(kAnthropicPath, {.chunks = chunks, .end = false});
  ChatOutcome o = f.call(*f.anthropic, true);
  ASSERT_THAT(o.result, StatusIs(ErrorKind::kTransient));
  EXPECT_TRUE(is_truncated_stream(o.result.error())) << o.result.error().to_string();
  expect_no_key(o.result.error());
}

TEST(ModelClient, StreamErrorEventIsMapped) {
  Fixture f;
  f.server.set_canned(kAnthropicPath, {.chunks = sse_chunks("anthropic/stream_error_overloaded.sse")});
  ChatOutcome o = f.call(*f.anthropic, true);
  ASSERT_THAT(o.result, StatusIs(ErrorKind::kTransient));
  EXPECT_FALSE(is_truncated_stream(o.result.error()));
}

TEST(ModelClient, RateLimitedWithRetryAfterMs) {
  Fixture f;
  f.server.set_canned(
      kOpenAiPath,
      {.status = 429, .headers = "retry-after-ms: 1500\r\n", .body = fixture("openai/error_rate_limit.json")});
  TimePoint before = f.env->now();
  ChatOutcome o = f.call(*f.openai, false);
  ASSERT_FALSE(o.result.ok());
  const Error& e = o.result.error();
  EXPECT_THAT(e, StatusIs(ErrorKind::kRateLimited));
  ASSERT_TRUE(e.retry_at().has_value());
  EXPECT_GE(*e.retry_at(), before + std::chrono::milliseconds(1500));
  EXPECT_LE(*e.retry_at(), f.env->now() + std::chrono::milliseconds(1500));
  ASSERT_TRUE(o.failure.has_value());
  EXPECT_EQ(o.failure->status, 429);
  expect_no_key(e);
}

TEST(ModelClient, RateLimitedStreamIsMappedFromItsBody) {
  Fixture f;
  f.server.set_canned(
      kAnthropicPath,
      {.status = 429, .headers = "retry-after: 3\r\n", .body = fixture("anthropic/error_rate_limit.json")});
  ChatOutcome o = f.call(*f.anthropic, true);
  ASSERT_THAT(o.result, StatusIs(ErrorKind::kRateLimited));
  EXPECT_TRUE(o.result.error().retry_at().has_value());
}

TEST(ModelClient, OverloadedAndUnavailableAreTransient) {
  Fixture f;
  f.server.set_canned(kAnthropicPath, {.status = 529, .body = fixture("anthropic/error_overloaded.json")});
  f.server.set_canned(kOpenAiPath, {.status = 503, .body = "<html>Service Unavailable</html>"});
  ChatOutcome a = f.call(*f.anthropic, false);
  ASSERT_THAT(a.result, StatusIs(ErrorKind::kTransient));
  ChatOutcome o = f.call(*f.openai, false);
  ASSERT_THAT(o.result, StatusIs(ErrorKind::kTransient));
  ChatOutcome s = f.call(*f.openai, true);  // the same through a stream
  ASSERT_THAT(s.result, StatusIs(ErrorKind::kTransient));
  EXPECT_FALSE(is_truncated_stream(s.result.error()));
}

TEST(ModelClient, ContextLengthIsContextOverflow) {
  Fixture f;
  f.server.set_canned(kOpenAiPath, {.status = 400, .body = fixture("openai/error_context_length.json")});
  f.server.set_canned(kAnthropicPath, {.status = 400, .body = fixture("anthropic/error_prompt_too_long.json")});
  ChatOutcome o = f.call(*f.openai, false);
  ASSERT_THAT(o.result, StatusIs(ErrorKind::kContextOverflow));
  ChatOutcome a = f.call(*f.anthropic, true);
  ASSERT_THAT(a.result, StatusIs(ErrorKind::kContextOverflow));
}

TEST(ModelClient, UnauthorizedIsPermanentAuthAndNeverQuotesTheKey) {
  Fixture f;
  // A server that echoes the key it got (as some proxies do) must not leak it either.
  std::string body = R"({"error":{"message":"Incorrect API key provided: )" + std::string(kOpenAiKey) +
                     R"(","type":"invalid_request_error","code":"invalid_api_key"}})";
  f.server.set_canned(kOpenAiPath, {.status = 401, .body = body});
  f.server.set_canned(kAnthropicPath, {.status = 401, .body = fixture("anthropic/error_authentication.json")});
  for (bool stream : {false, true}) {
    ChatOutcome o = f.call(*f.openai, stream);
    ASSERT_THAT(o.result, StatusIs(ErrorKind::kPermanent));
    EXPECT_TRUE(is_auth_failure(o.result.error()));
    ASSERT_TRUE(o.failure.has_value());
    EXPECT_TRUE(o.failure->auth);
    expect_no_key(o.result.error());
    ChatOutcome a = f.call(*f.anthropic, stream);
    ASSERT_THAT(a.result, StatusIs(ErrorKind::kPermanent));
    EXPECT_TRUE(is_auth_failure(a.result.error()));
    expect_no_key(a.result.error());
  }
}

TEST(ModelClient, MalformedBodyIsTransientMalformed) {
  Fixture f;
  f.server.set_canned(kOpenAiPath, {.body = R"({"id": "x", "choices": [ {"mess)"});
  f.server.set_canned(kAnthropicPath, {.body = "<html>gateway</html>"});
  ChatOutcome o = f.call(*f.openai, false);
  ASSERT_THAT(o.result, StatusIs(ErrorKind::kTransient));
  EXPECT_TRUE(is_malformed(o.result.error())) << o.result.error().to_string();
  EXPECT_EQ(f.openai->codec().malformed_count(), 1u);
  ChatOutcome a = f.call(*f.anthropic, false);
  ASSERT_FALSE(a.result.ok());
  EXPECT_TRUE(is_malformed(a.result.error())) << a.result.error().to_string();
}

TEST(ModelClient, NetworkErrorsAreTheHttpClients) {
  Fixture f;
  int port = net::test::closed_port();
  ModelClient refused(
      make_openai_codec({.base_url = "http://127.0.0.1:" + std::to_string(port) + "/v1", .api_key = kOpenAiKey})
          .value(),
      *f.http);
  ChatOutcome o = f.call(refused, false);
  ASSERT_THAT(o.result, StatusIs(ErrorKind::kTransient));
  expect_no_key(o.result.error());
  ChatOutcome s = f.call(refused, true);
  ASSERT_THAT(s.result, StatusIs(ErrorKind::kTransient));
}

TEST(ModelClient, InvalidRequestFailsBeforeAnyIo) {
  Fixture f;
  std::optional<Result<ChatResponse>> out;
  f.run([&](Context& ctx) -> Task<> {
    ChatRequest req;  // no model, no messages
    Result<ChatResponse> r = co_await f.openai->chat(ctx, req);
    out.emplace(std::move(r));
  });
  ASSERT_TRUE(out.has_value());
  ASSERT_FALSE(out->ok());
  EXPECT_THAT(*out, StatusIs(ErrorKind::kInvalidArgument));
  EXPECT_TRUE(f.server.requests().empty());
}

// ---- providers from configuration (provider.hpp) ----

EnvLookup fake_env(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](std::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(Provider, TheKeyComesFromTheNamedVariableAndReachesTheServer) {
  Fixture f;
  f.server.set_canned(kOpenAiPath, {.body = fixture("openai/response_text.json")});
  ProviderConfig cfg{
      .name = "oa", .api = Provider::kOpenAi, .base_url = f.server.url("/oa/v1"), .api_key_env = "NINES_TEST_KEY"};
  auto model = make_provider(cfg, *f.http, fake_env({{"NINES_TEST_KEY", kOpenAiKey}}));
  ASSERT_THAT(model, IsOk());
  std::optional<ChatOutcome> out;
  std::shared_ptr<ChatModel> m = *model;
  f.run([&](Context& ctx) -> Task<> {
    ChatRequest req = hello_request();
    TextSink none;
    out.emplace(co_await m->complete(ctx, req, none));
  });
  ASSERT_TRUE(out && out->result.ok());
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_THAT(seen[0].head, HasSubstr(std::string("Bearer ") + kOpenAiKey));
}

// The secrets test of the logging seam (docs/logging.md): keys taken from environment
// variables, servers answering 401 and echoing the key they got, the router falling back and
// forcing the breakers open. Every report is captured at debug level; no line, human or JSON,
// shows either key, whether it looks like one (sk-...) or not.
TEST(Provider, NoLogLineShowsTheKeyAfterAuthFailuresFallbacksAndForcedOpenBreakers) {
  Fixture f;
  const std::string plain_key = "plainTESTKEY0123456789abcdefXYZ";  // no known prefix: only the exact key redacts it
  auto echo = [](const std::string& key) {
    return CannedResponse{.status = 401,
                          .body = R"({"error":{"message":"Incorrect API key provided: )" + key +
                                  " (Authorization: Bearer " + key +
                                  R"x()","type":"invalid_request_error","code":"invalid_api_key"}})x"};
  };
  f.server.set_canned("/first/v1/chat/completions", echo(kOpenAiKey));
  f.server.set_canned("/second/v1/chat/completions", echo(plain_key));
  f.server.set_canned("/backup/v1/chat/completions", {.body = fixture("openai/response_text.json")});
  auto vars = fake_env({{"FIRST_KEY", kOpenAiKey}, {"SECOND_KEY", plain_key}});
  auto provider = [&](const char* name, const char* path, const char* var) {
    ProviderConfig cfg{.name = name, .api = Provider::kOpenAi, .base_url = f.server.url(path), .api_key_env = var};
    auto m = make_provider(cfg, *f.http, vars);
    EXPECT_THAT(m, IsOk());
    return std::move(m).value();
  };
  auto route = [](const char* name, std::shared_ptr<ChatModel> model) {
    ModelRouteOptions o;
    o.name = name;
    o.model = "test-model";
    o.client = std::move(model);
    o.context_window_tokens = 8000;
    o.max_output_tokens = 100;
    return o;
  };
  auto router =
      Router::create(*f.env, RouterOptions{.name = "agents",
                                           .chain = {route("first", provider("first", "/first/v1", "FIRST_KEY")),
                                                     route("second", provider("second", "/second/v1", "SECOND_KEY")),
                                                     route("backup", provider("backup", "/backup/v1", ""))},
                                           .sizer = make_byte_sizer()})
          .value();
  for (bool stream : {false, true}) {
    if (stream) f.server.set_canned("/backup/v1/chat/completions", {.chunks = sse_chunks("openai/stream_text.sse")});
    std::optional<Result<RoutedResponse>> out;
    f.run([&](Context& ctx) -> Task<> {
      auto scope = ctx.with_timeout(std::chrono::seconds(5));
      ChatRequest req = hello_request();
      req.stream = stream;
      out.emplace(co_await router->route(ctx, req));
    });
    ASSERT_TRUE(out.has_value() && out->ok()) << (out && !out->ok() ? out->error().to_string() : "");
    EXPECT_EQ((*out)->served_by, "backup");
  }
  EXPECT_EQ(router->breaker(0)->state(), BreakerState::kForcedOpen);
  EXPECT_EQ(router->breaker(1)->state(), BreakerState::kForcedOpen);

  // The reports happened (the test is not vacuous)...
  const CaptureSink& logs = *f.logs;
  auto fallbacks = logs.records("model_fallback");
  ASSERT_GE(fallbacks.size(), 2u) << logs.dump();
  EXPECT_EQ(fallbacks[0].field("reason"), "auth_failure");
  EXPECT_THAT(fallbacks[0].field("error").value_or(""), HasSubstr("Incorrect API key provided")) << logs.dump();
  EXPECT_EQ(logs.count("breaker_forced_open"), 2u) << logs.dump();
  // ...and none shows a key, in either format; every JSON line parses.
  EXPECT_FALSE(logs.contains("TESTKEY")) << logs.dump();
  EXPECT_FALSE(logs.contains(kOpenAiKey));
  EXPECT_FALSE(logs.contains(plain_key));
  for (const auto& r : logs.records()) {
    EXPECT_TRUE(nlohmann::json::accept(r.json)) << r.json;
    EXPECT_EQ(r.human.find('\n'), std::string::npos);
  }
}

TEST(Provider, ConfigErrorsNameTheVariableNeverAKey) {
  Fixture f;
  auto err = [&](ProviderConfig cfg, EnvLookup env) {
    auto r = make_provider(cfg, *f.http, env);
    EXPECT_FALSE(r.ok());
    if (r.ok()) return std::string();
    EXPECT_THAT(r, StatusIs(ErrorKind::kInvalidArgument));
    expect_no_key(r.error());
    return r.error().message();
  };
  auto none = fake_env({});
  ProviderConfig base{.name = "oa", .api = Provider::kOpenAi, .base_url = "https://api.openai.com/v1"};
  EXPECT_THAT(err(base, none), HasSubstr("needs an API key"));
  ProviderConfig unset = base;
  unset.api_key_env = "OPENAI_API_KEY";
  EXPECT_EQ(err(unset, none), "provider 'oa': the environment variable OPENAI_API_KEY (api_key_env) is not set");
  EXPECT_THAT(err(unset, fake_env({{"OPENAI_API_KEY", ""}})), HasSubstr("is empty"));
  ProviderConfig both = unset;
  both.api_key = kOpenAiKey;
  EXPECT_THAT(err(both, none), HasSubstr("not both"));
  ProviderConfig bad_url = base;
  bad_url.base_url = "ftp://x";
  EXPECT_THAT(err(bad_url, none), HasSubstr("must start with http:// or https://"));
  ProviderConfig local{.name = "vllm", .api = Provider::kOpenAi, .base_url = "http://127.0.0.1:8000/v1"};
  EXPECT_THAT(make_provider(local, *f.http, none), IsOk());  // a local server needs no key
  ProviderConfig anthropic{.name = "an",
                           .api = Provider::kAnthropic,
                           .base_url = "https://api.anthropic.com",
                           .api_key_env = "ANTHROPIC_API_KEY"};
  EXPECT_THAT(make_provider(anthropic, *f.http, fake_env({{"ANTHROPIC_API_KEY", kAnthropicKey}})), IsOk());
}

// Regression: a key pasted where the variable's name or the URL goes (a common slip in a
// config file) was echoed by the error that refused it.
TEST(Provider, AKeyPutWhereANameOrTheURLGoesIsNotEchoed) {
  Fixture f;
  auto none = fake_env({});
  auto err = [&](ProviderConfig cfg) {
    auto r = make_provider(cfg, *f.http, none);
    EXPECT_FALSE(r.ok());
    if (r.ok()) return std::string();
    EXPECT_THAT(r, StatusIs(ErrorKind::kInvalidArgument));
    expect_no_key(r.error());
    return r.error().message();
  };
  ProviderConfig key_as_name{
      .name = "oa", .api = Provider::kOpenAi, .base_url = "https://api.openai.com/v1", .api_key_env = kOpenAiKey};
  EXPECT_THAT(err(key_as_name), HasSubstr("api_key_env must name an environment variable"));
  // A key that happens to be a valid variable name (letters, digits, '_') but not an
  // upper-case one, as variable names are written.
  ProviderConfig word_key = key_as_name;
  word_key.api_key_env = "gsk_TESTKEYabcdefghijklmnop0123456789";
  EXPECT_THAT(err(word_key), HasSubstr("(api_key_env) is not set"));
  ProviderConfig key_as_url{.name = "oa", .api = Provider::kOpenAi, .base_url = kOpenAiKey};
  EXPECT_THAT(err(key_as_url), HasSubstr("must start with http:// or https://"));
  ProviderConfig anthropic_key_as_url{.name = "an", .api = Provider::kAnthropic, .base_url = kAnthropicKey};
  EXPECT_THAT(err(anthropic_key_as_url), HasSubstr("must start with http:// or https://"));
}

// Regression: the public endpoints were found by a substring test on the URL, which took a
// look-alike host (api.openai.com.example.net) for the public API and missed an upper-case
// one. The host is now the one libcurl reads, compared exactly and without case.
TEST(Provider, ThePublicEndpointIsKnownByItsHost) {
  Fixture f;
  auto none = fake_env({});
  auto make = [&](std::string url, Provider api = Provider::kOpenAi) {
    return make_provider({.name = "p", .api = api, .base_url = std::move(url)}, *f.http, none);
  };
  auto needs_key = [&](std::string url, Provider api = Provider::kOpenAi) {
    auto r = make(url, api);
    if (r.ok()) return false;
    EXPECT_THAT(r, StatusIs(ErrorKind::kInvalidArgument));
    EXPECT_THAT(r.error().message(), HasSubstr("needs an API key")) << url << ": " << r.error().message();
    expect_no_key(r.error());
    return true;
  };
  EXPECT_TRUE(needs_key("https://api.openai.com/v1"));
  EXPECT_TRUE(needs_key("https://API.OpenAI.com/v1"));
  EXPECT_TRUE(needs_key("https://api.openai.com./v1"));  // the fully qualified name is the same host
  EXPECT_TRUE(needs_key("https://api.openai.com:443/v1"));
  EXPECT_TRUE(needs_key("http://api.openai.com/v1"));
  EXPECT_TRUE(needs_key("https://Api.Anthropic.Com", Provider::kAnthropic));
  EXPECT_TRUE(needs_key("https://api.anthropic.com.:8443", Provider::kAnthropic));
  // Userinfo before the host does not hide it, nor appears in the error (it may be a key).
  EXPECT_TRUE(needs_key(std::string("https://user:") + kOpenAiKey + "@api.openai.com/v1"));
  // Look-alikes are other hosts: a local or third-party server that may need no key.
  EXPECT_THAT(make("https://api.openai.com.example.net/v1"), IsOk());
  EXPECT_THAT(make("https://api.openai.com.example.net./v1"), IsOk());
  EXPECT_THAT(make("https://myapi.openai.com/v1"), IsOk());
  EXPECT_THAT(make("https://api.openai.com@127.0.0.1:8000/v1"), IsOk());  // userinfo "api.openai.com"
  EXPECT_THAT(make("http://api.openai.com:x@localhost:8000/v1"), IsOk());
  EXPECT_THAT(make("https://api.anthropic.com.evil.example", Provider::kAnthropic), IsOk());
}

// A base_url libcurl cannot parse is refused when the provider is made, saying which field
// and curl's reason, never the URL (it may hold a key).
TEST(Provider, AURLLibcurlCannotParseIsRefusedWithoutEchoingIt) {
  Fixture f;
  auto none = fake_env({});
  for (std::string url : {std::string("https://api.openai.com:99999/v1"), std::string("https://a b/v1"),
                          std::string("https://") + kOpenAiKey + ":99999999/v1"}) {
    auto r = make_provider({.name = "oa", .api = Provider::kOpenAi, .base_url = url}, *f.http, none);
    ASSERT_THAT(r, StatusIs(ErrorKind::kInvalidArgument)) << url;
    const std::string& m = r.error().message();
    EXPECT_THAT(m, HasSubstr("provider 'oa': base_url is not a URL libcurl can parse"));
    EXPECT_THAT(m, Not(HasSubstr(url)));
    EXPECT_THAT(m, Not(HasSubstr("99999")));
    expect_no_key(r.error());
  }
  auto port = make_provider({.name = "oa", .base_url = "https://api.openai.com:99999/v1"}, *f.http, none);
  ASSERT_FALSE(port.ok());
  EXPECT_THAT(port.error().message(), HasSubstr("Port"));  // curl's reason says where
}

// Regression: a key with a trailing line break (a Kubernetes secret made from a file, an env
// file with CRLF) was taken; every call then failed as a malformed request
// (kInvalidArgument, which the router does not fall back from), far from the cause.
TEST(Provider, AKeyWithALineBreakIsRefusedWhenTheProviderIsMade) {
  Fixture f;
  ProviderConfig cfg{
      .name = "oa", .api = Provider::kOpenAi, .base_url = "https://api.openai.com/v1", .api_key_env = "OPENAI_API_KEY"};
  auto r = make_provider(cfg, *f.http, fake_env({{"OPENAI_API_KEY", std::string(kOpenAiKey) + "\n"}}));
  ASSERT_THAT(r, StatusIs(ErrorKind::kInvalidArgument));
  expect_no_key(r.error());
  EXPECT_THAT(r.error().message(), HasSubstr("OPENAI_API_KEY"));
  EXPECT_THAT(r.error().message(), HasSubstr("line break"));
  ProviderConfig inline_key{.name = "oa",
                            .api = Provider::kOpenAi,
                            .base_url = "https://api.openai.com/v1",
                            .api_key = std::string(" ") + kOpenAiKey};
  auto spaced = make_provider(inline_key, *f.http, fake_env({}));
  ASSERT_FALSE(spaced.ok());
  expect_no_key(spaced.error());
}

}  // namespace
}  // namespace nines::llm
