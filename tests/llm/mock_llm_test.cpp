// Integration with a real OpenAI-compatible server nobody here wrote: @dwmkerr/mock-llm (npm,
// installed by scripts/setup.sh into tests/llm/mock_llm), started on loopback by the test with
// the rules in tests/llm/mock_llm/mock-llm.yaml (the requested model picks the behaviour).
// The whole client path runs: provider (make_provider), router, breaker, retry, HTTP client,
// SSE parser, OpenAI codec. They fail when node or the package is missing, unless
// NINES_SKIP_MOCK_LLM=1 asks for a skip.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "net/test_server.hpp"
#include "nines/llm/provider.hpp"
#include "nines/llm/router.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/runtime.hpp"
#include "support/status_matchers.hpp"

extern char** environ;

namespace nines::llm {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr const char* kKey = "sk-mock-TESTKEYabcdefghijklmnop0123456789";

// One mock-llm server for the whole suite (node takes about a second to start).
class MockLlm {
 public:
  static MockLlm& get() {
    static MockLlm server;
    return server;
  }
  bool up() const { return pid_ > 0 && ready_; }
  const std::string& why_not() const { return why_not_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }

  ~MockLlm() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }

 private:
  MockLlm() {
    fs::path dir = NINES_MOCK_LLM_DIR;
    fs::path main = dir / "node_modules/@dwmkerr/mock-llm/dist/main.js";
    if (!fs::exists(main)) {
      why_not_ = main.string() + " is missing";
      return;
    }
    port_ = net::test::closed_port();
    std::string config = (dir / "mock-llm.yaml").string();
    std::vector<std::string> args = {"node", main.string(), "--config", config};
    std::vector<std::string> env_strings = {"HOST=127.0.0.1", "PORT=" + std::to_string(port_)};
    for (char** e = environ; *e != nullptr; ++e) {
      std::string_view v(*e);
      if (v.rfind("HOST=", 0) != 0 && v.rfind("PORT=", 0) != 0) env_strings.emplace_back(v);
    }
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);  // its banner
    pid_t pid = 0;
    int rc = posix_spawnp(&pid, "node", &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      why_not_ = "could not start node: " + std::string(std::strerror(rc));
      return;
    }
    pid_ = pid;
    // Ready when it answers; up to 30 s on a loaded machine.
    for (int i = 0; i < 600 && !ready_; ++i) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<std::uint16_t>(port_));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      ready_ = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
      ::close(fd);
      if (!ready_) net::test::pause_ms(50);
    }
    if (!ready_) why_not_ = "mock-llm did not listen on port " + std::to_string(port_) + " within 30 s";
  }

  pid_t pid_ = 0;
  int port_ = 0;
  bool ready_ = false;
  std::string why_not_;
};

struct Fixture {
  Fixture() {
    net::HttpClientOptions options;
    options.proxy = "";
    options.timeouts.total = 10s;
    http = net::HttpClient::create(*env, std::move(options)).value();
    ProviderConfig cfg{
        .name = "mock-llm", .api = Provider::kOpenAi, .base_url = MockLlm::get().base_url(), .api_key = kKey};
    model = make_provider(cfg, *http).value();
  }
  ~Fixture() {
    router.reset();
    model.reset();
    http.reset();
  }

  ModelRouteOptions route(std::string name, std::string model_id, std::int64_t window = 8192) {
    ModelRouteOptions o;
    o.name = std::move(name);
    o.model = std::move(model_id);
    o.client = model;
    o.context_window_tokens = window;
    o.max_output_tokens = 256;
    o.retry.max_attempts = 2;
    o.retry.backoff = Backoff::constant(1ms);
    return o;
  }

  Result<RoutedResponse> ask(std::vector<ModelRouteOptions> chain, std::string text, bool stream = false,
                             std::vector<std::string>* pieces = nullptr) {
    router = Router::create(*env, RouterOptions{.name = "it", .chain = std::move(chain)}).value();
    std::optional<Result<RoutedResponse>> out;
    auto w = rt->spawn_watched([&](Context& ctx) -> Task<> {
                 auto scope = ctx.with_timeout(20s);
                 ChatRequest req;
                 req.messages = {Message::system("You are a test."), Message::user(text)};
                 req.stream = stream;
                 Router::StreamHooks hooks{.on_text = [&](std::string_view t) {
                   if (pieces) pieces->emplace_back(t);
                 }};
                 Result<RoutedResponse> r = co_await router->route(ctx, req, hooks);
                 out.emplace(std::move(r));
               }).value();
    EXPECT_TRUE(w.exit->wait().is_normal());
    if (!out) return Error(ErrorKind::kInternal, "the process did not finish");
    return std::move(*out);
  }

  std::unique_ptr<Environment> env = make_real_environment({.workers = 2, .seed = 3});
  std::unique_ptr<Runtime> rt = Runtime::create(*env).value();
  std::unique_ptr<net::HttpClient> http;
  std::shared_ptr<ChatModel> model;
  std::unique_ptr<Router> router;
};

// NINES_SKIP_MOCK_LLM=1 skips these tests (as NINES_SKIP_POSTGRES=1 does the PostgreSQL ones);
// without it a missing mock-llm is a failure, so a machine without it cannot pass by skipping.
bool mock_llm_skipped() {
  const char* v = std::getenv("NINES_SKIP_MOCK_LLM");
  return v && std::string(v) == "1";
}

#define REQUIRE_MOCK_LLM()                                                                                    \
  do {                                                                                                        \
    if (mock_llm_skipped()) GTEST_SKIP() << "NINES_SKIP_MOCK_LLM=1";                                          \
    ASSERT_TRUE(MockLlm::get().up()) << "mock-llm (the npm package @dwmkerr/mock-llm) is not available: "     \
                                     << MockLlm::get().why_not()                                              \
                                     << ". Install it with scripts/setup.sh (npm ci in tests/llm/mock_llm), " \
                                        "or set NINES_SKIP_MOCK_LLM=1 to skip these tests";                   \
  } while (0)

TEST(MockLlm, EchoesThroughTheWholePath) {
  REQUIRE_MOCK_LLM();
  Fixture f;
  auto r = f.ask({f.route("primary", "gpt-4o-mini")}, "Hello from nines");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->response.message.text(), "Hello from nines");
  EXPECT_EQ(r->response.model, "gpt-4o-mini");
  EXPECT_EQ(r->response.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r->response.usage.input_tokens, 11);
  EXPECT_EQ(r->served_by, "primary");
  EXPECT_FALSE(r->degraded);
}

TEST(MockLlm, StreamsInPieces) {
  REQUIRE_MOCK_LLM();
  Fixture f;
  std::vector<std::string> pieces;
  auto r = f.ask({f.route("primary", "gpt-4o-mini")}, "streamed answer text", true, &pieces);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->response.message.text(), "streamed answer text");
  EXPECT_GE(pieces.size(), 5u);  // chunks of 4 characters
  std::string joined;
  for (auto& p : pieces) joined += p;
  EXPECT_EQ(joined, "streamed answer text");
}

TEST(MockLlm, ToolCallsAreParsed) {
  REQUIRE_MOCK_LLM();
  Fixture f;
  auto r = f.ask({f.route("primary", "mock-tools")}, "weather?");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->response.finish_reason, FinishReason::kToolCalls);
  ASSERT_EQ(r->response.message.tool_calls.size(), 1u);
  EXPECT_EQ(r->response.message.tool_calls[0].name, "get_weather");
  EXPECT_EQ(r->response.message.tool_calls[0].arguments_json, R"({"city": "Paris"})");
}

TEST(MockLlm, ServerErrorsAreRetriedThenTheRouterFallsBack) {
  REQUIRE_MOCK_LLM();
  Fixture f;
  auto r = f.ask({f.route("broken", "mock-503"), f.route("backup", "gpt-4o-mini")}, "still there?");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "backup");
  EXPECT_TRUE(r->degraded);
  ASSERT_EQ(r->fallbacks.size(), 1u);
  EXPECT_EQ(r->fallbacks[0].reason, FallbackReason::kRetriesExhausted);
  EXPECT_THAT(r->fallbacks[0].error, StatusIs(ErrorKind::kTransient));
  EXPECT_EQ(f.router->counters(0).calls, 1u);
}

TEST(MockLlm, AStreamedServerErrorIsAFailureNotAnEmptyAnswer) {
  REQUIRE_MOCK_LLM();
  Fixture f;  // mock-llm sends stream errors as a 200 with one error event and no [DONE]
  auto r = f.ask({f.route("broken", "mock-503")}, "hi", true);
  ASSERT_THAT(r, StatusIs(ErrorKind::kTransient));
}

TEST(MockLlm, AnAuthFailureOpensTheBreakerAndNeverShowsTheKey) {
  REQUIRE_MOCK_LLM();
  Fixture f;
  auto r = f.ask({f.route("bad-key", "mock-401"), f.route("backup", "gpt-4o-mini")}, "hi");
  ASSERT_THAT(r, IsOk());
  ASSERT_EQ(r->fallbacks.size(), 1u);
  EXPECT_EQ(r->fallbacks[0].reason, FallbackReason::kAuthFailure);
  EXPECT_EQ(f.router->breaker(0)->state(), BreakerState::kForcedOpen);
  // The server echoed the Authorization header into its message; it is redacted.
  EXPECT_THAT(r->fallbacks[0].error.message(), HasSubstr("Incorrect API key provided"))
      << r->fallbacks[0].error.to_string();
  EXPECT_THAT(r->fallbacks[0].error.to_string(), Not(HasSubstr("TESTKEY")));
}

TEST(MockLlm, RateLimitsAndQuotaAreToldApart) {
  REQUIRE_MOCK_LLM();
  Fixture f;
  auto limited = f.ask({f.route("limited", "mock-429")}, "hi");
  ASSERT_THAT(limited, StatusIs(ErrorKind::kRateLimited));
  auto quota = f.ask({f.route("quota", "mock-quota")}, "hi");
  ASSERT_THAT(quota, StatusIs(ErrorKind::kPermanent));
  EXPECT_EQ(f.router->counters(0).calls, 1u);
}

TEST(MockLlm, ContextOverflowFallsBackToALargerWindow) {
  REQUIRE_MOCK_LLM();
  Fixture f;
  auto r = f.ask({f.route("small", "mock-context", 8192), f.route("large", "gpt-4o-mini", 128000)}, "long");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->served_by, "large");
  ASSERT_EQ(r->fallbacks.size(), 1u);
  EXPECT_EQ(r->fallbacks[0].reason, FallbackReason::kContextOverflow);
}

TEST(MockLlm, AMalformedBodyIsATransientFailure) {
  REQUIRE_MOCK_LLM();
  Fixture f;
  auto r = f.ask({f.route("odd", "mock-malformed")}, "hi");
  ASSERT_THAT(r, StatusIs(ErrorKind::kTransient));
  EXPECT_THAT(r.error().message(), HasSubstr("[malformed]")) << r.error().to_string();
}

}  // namespace
}  // namespace nines::llm
