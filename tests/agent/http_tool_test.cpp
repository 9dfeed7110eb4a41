// HTTP tools (agent/http_tool.hpp) through the real HTTP client against the net tests'
// loopback server (tests/net/test_server.hpp), on the real environment with 2 workers.
#include "nines/agent/http_tool.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "net/test_server.hpp"
#include "nines/runtime/runtime.hpp"
#include "support/status_matchers.hpp"

namespace nines::agent {
namespace {

using ::nines::test::IsOk;
using ::nines::test::IsOkAndHolds;
using ::nines::test::StatusIs;
using ::testing::AllOf;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

using net::test::CannedResponse;
using net::test::TestServer;

constexpr const char* kSecret = "Bearer tok-SECRETabcdefghijklmnop0123456789";

constexpr const char* kOrderSchema = R"({
  "type": "object",
  "properties": {
    "id": {"type": "string"},
    "verbose": {"type": "boolean"},
    "tag": {"type": "string"},
    "amount": {"type": "number"},
    "note": {"type": "string"},
    "meta": {"type": "object"}
  }
})";

ToolSpec order_spec(EffectNature nature = EffectNature::kIdempotent) {
  return ToolSpec{.name = "orders",
                  .description = "order things",
                  .parameters_schema_json = kOrderSchema,
                  .nature = nature,
                  .timeout = std::chrono::seconds(5)};
}

ToolInvocation invocation(std::string args, std::string key = "wf-1/step-3") {
  return ToolInvocation{
      .task_id = "t1", .call_id = "c1", .arguments_json = std::move(args), .idempotency_key = std::move(key)};
}

// The value of header `name` in a request head ("" if absent); names compare case-insensitively.
std::string header_of(const std::string& head, std::string name) {
  std::string lower = head;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::size_t p = lower.find("\r\n" + name + ":");
  if (p == std::string::npos) return {};
  p += name.size() + 3;
  while (p < head.size() && head[p] == ' ') ++p;
  std::size_t end = head.find("\r\n", p);
  return head.substr(p, end == std::string::npos ? std::string::npos : end - p);
}

struct Fixture {
  Fixture() {
    net::HttpClientOptions options;
    options.proxy = "";  // loopback only
    options.timeouts.total = std::chrono::seconds(10);
    http = std::shared_ptr<net::HttpClient>(net::HttpClient::create(*env, std::move(options)).value());
  }
  ~Fixture() { http.reset(); }  // before the environment (tools made in a test are gone by now)

  void run(std::function<Task<>(Context&)> body) {
    auto w = rt->spawn_watched(std::move(body)).value();
    ExitReason r = w.exit->wait();
    EXPECT_TRUE(r.is_normal()) << r.to_string();
  }

  std::shared_ptr<Tool> make(HttpToolOptions options, ToolSpec spec = order_spec()) {
    auto t = make_http_tool(std::move(spec), std::move(options), http);
    EXPECT_THAT(t, IsOk());
    return t.ok() ? *t : nullptr;
  }

  // One call in a process; `before` gets the environment's time just before it.
  Result<std::string> call(Tool& tool, ToolInvocation inv, TimePoint* before = nullptr) {
    std::optional<Result<std::string>> out;
    run([&](Context& ctx) -> Task<> {
      auto scope = ctx.with_timeout(std::chrono::seconds(20));
      if (before) *before = ctx.now();
      Result<std::string> r = co_await tool.call(ctx, inv);
      out.emplace(std::move(r));
    });
    if (!out) return Error(ErrorKind::kInternal, "the process did not finish");
    return std::move(*out);
  }

  Result<std::optional<std::string>> check(Tool& tool, ToolInvocation inv) {
    std::optional<Result<std::optional<std::string>>> out;
    run([&](Context& ctx) -> Task<> {
      auto scope = ctx.with_timeout(std::chrono::seconds(20));
      Result<std::optional<std::string>> r = co_await tool.check(ctx, inv);
      out.emplace(std::move(r));
    });
    if (!out) return Error(ErrorKind::kInternal, "the process did not finish");
    return std::move(*out);
  }

  std::string url(const std::string& path) const { return server.url(path); }

  std::unique_ptr<Environment> env = make_real_environment({.workers = 2, .seed = 7});
  TestServer server{*env};
  std::unique_ptr<Runtime> rt = Runtime::create(*env).value();
  std::shared_ptr<net::HttpClient> http;
};

// --- templates and what reaches the server ------------------------------------------------

TEST(HttpTool, PathQueryAndBodyAreFilledAndEncoded) {
  Fixture f;
  const std::string path = "/orders/A%2042%2F%C3%A9/items?verbose=true&tag=x%26y%3Dz~";  // ~ is unreserved: kept
  f.server.set_canned(path, {.status = 201, .body = R"({"ok":true})"});
  auto tool = f.make({.method = HttpMethod::kPost,
                      .url_template = f.url("/orders/{id}/items?verbose={verbose}&tag={tag}"),
                      .body_template = R"({{"amount": {amount}, "note": {note}, "meta": {meta}, "lit": "{{x}}"}})"});
  auto r = f.call(*tool, invocation(R"({"id":"A 42/é","verbose":true,"tag":"x&y=z~","amount":12.5,)"
                                    R"("note":"say \"hi\"","meta":{"k":[1,2]}})"));
  EXPECT_THAT(r, IsOkAndHolds(std::string(R"({"ok":true})")));
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].path, path);
  auto body = nlohmann::json::parse(seen[0].body);
  EXPECT_EQ(body, nlohmann::json::parse(R"({"amount":12.5,"note":"say \"hi\"","meta":{"k":[1,2]},"lit":"{x}"})"));
  EXPECT_EQ(header_of(seen[0].head, "Content-Type"), "application/json");
}

TEST(HttpTool, ObjectsInTheUrlAreTheirJsonEncoded) {
  Fixture f;
  auto tool = f.make({.url_template = f.url("/m?meta={meta}&amount={amount}")});
  auto r = f.call(*tool, invocation(R"({"meta":{"a":1},"amount":3})"));
  EXPECT_THAT(r, StatusIs(ErrorKind::kPermanent, "http 404"));  // nothing canned there
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].path, "/m?meta=%7B%22a%22%3A1%7D&amount=3");
  EXPECT_EQ(seen[0].body, "");
}

TEST(HttpTool, WithoutBodyTemplateTheArgumentsAreTheBody) {
  Fixture f;
  f.server.set_canned("/orders/7", {.body = "updated"});
  auto tool = f.make({.method = HttpMethod::kPut, .url_template = f.url("/orders/{id}")});
  const std::string args = R"({"id":"7","amount":3})";
  EXPECT_THAT(f.call(*tool, invocation(args)), IsOkAndHolds(std::string("updated")));
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "PUT");
  EXPECT_EQ(seen[0].body, args);
  EXPECT_EQ(header_of(seen[0].head, "Content-Type"), "application/json");
}

TEST(HttpTool, HeaderTemplatesAreFilledAndAContentTypeGivenIsKept) {
  Fixture f;
  f.server.set_canned("/notes", {.body = "ok"});
  auto tool =
      f.make({.method = HttpMethod::kPost,
              .url_template = f.url("/notes"),
              .headers = {{"Authorization", kSecret}, {"X-Order", "order-{id}"}, {"Content-Type", "text/plain"}},
              .body_template = "note: {note}"});
  EXPECT_THAT(f.call(*tool, invocation(R"({"id":"A1","note":"hi"})")), IsOk());
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(header_of(seen[0].head, "Authorization"), kSecret);
  EXPECT_EQ(header_of(seen[0].head, "X-Order"), "order-A1");
  EXPECT_EQ(header_of(seen[0].head, "Content-Type"), "text/plain");
  EXPECT_EQ(seen[0].body, "note: \"hi\"");
}

TEST(HttpTool, AnArgumentWithALineBreakCannotGoInAHeader) {
  Fixture f;
  auto tool = f.make({.url_template = f.url("/hello"), .headers = {{"X-Note", "{note}"}}});
  EXPECT_THAT(f.call(*tool, invocation(R"({"note":"a\r\nEvil: 1"})")),
              StatusIs(ErrorKind::kInvalidArgument, "header 'X-Note'"));
  EXPECT_EQ(f.server.requests_seen(), 0u);
}

TEST(HttpTool, MissingArgumentIsAnInvalidArgumentForTheModel) {
  Fixture f;
  auto tool = f.make({.url_template = f.url("/orders/{id}")});
  EXPECT_THAT(f.call(*tool, invocation(R"({"amount":1})")),
              StatusIs(ErrorKind::kInvalidArgument, "argument 'id' is needed by the URL template"));
  EXPECT_THAT(f.call(*tool, invocation(R"({"id":null})")), StatusIs(ErrorKind::kInvalidArgument, "argument 'id'"));
  auto body_tool = f.make(
      {.method = HttpMethod::kPost, .url_template = f.url("/orders"), .body_template = R"({{"amount": {amount}}})"});
  EXPECT_THAT(f.call(*body_tool, invocation(R"({"id":"1"})")),
              StatusIs(ErrorKind::kInvalidArgument, "argument 'amount' is needed by the body template"));
  EXPECT_EQ(f.server.requests_seen(), 0u);
}

// --- the idempotency key -----------------------------------------------------------------

TEST(HttpTool, IdempotencyKeyGoesOutAndIsTheSameOnARetry) {
  Fixture f;
  f.server.set_canned("/pay", {.body = "paid"});
  auto tool = f.make({.method = HttpMethod::kPost, .url_template = f.url("/pay")});
  ToolInvocation inv = invocation(R"({"amount":5})", "wf-9/effect-2");
  EXPECT_THAT(f.call(*tool, inv), IsOk());
  EXPECT_THAT(f.call(*tool, inv), IsOk());
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(header_of(seen[0].head, "Idempotency-Key"), "wf-9/effect-2");
  EXPECT_EQ(header_of(seen[1].head, "Idempotency-Key"), "wf-9/effect-2");
}

TEST(HttpTool, IdempotencyKeyGoesOutWithEveryMethod) {
  Fixture f;
  for (HttpMethod m :
       {HttpMethod::kGet, HttpMethod::kPost, HttpMethod::kPut, HttpMethod::kPatch, HttpMethod::kDelete}) {
    auto tool = f.make({.method = m, .url_template = f.url("/echo")});
    EXPECT_THAT(f.call(*tool, invocation("{}", "key-" + std::string(to_string(m)))),
                IsOkAndHolds(StartsWith(std::string(to_string(m)))));
  }
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 5u);
  for (const auto& s : seen) EXPECT_EQ(header_of(s.head, "Idempotency-Key"), "key-" + s.method) << s.method;
}

// One tool shared by many processes at once: each call gets its own arguments and key.
TEST(HttpTool, ManyProcessesShareOneTool) {
  Fixture f;
  auto tool = f.make({.method = HttpMethod::kPost, .url_template = f.url("/echo/{id}")});
  constexpr int kCalls = 16;
  std::vector<std::optional<Result<std::string>>> out(kCalls);
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int i = 0; i < kCalls; ++i) {
    auto w = f.rt->spawn_watched([&, i](Context& ctx) -> Task<> {
      auto scope = ctx.with_timeout(std::chrono::seconds(20));
      const std::string id = std::to_string(i);
      Result<std::string> r = co_await tool->call(ctx, invocation(R"({"id":")" + id + R"("})", "key-" + id));
      out[i].emplace(std::move(r));
    });
    ASSERT_THAT(w, IsOk());
    watches.push_back(w->exit);
  }
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(out[i].has_value()) << i;
    EXPECT_THAT(*out[i], IsOkAndHolds("POST " + std::string(R"({"id":")") + std::to_string(i) + R"("})")) << i;
  }
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), static_cast<std::size_t>(kCalls));
  for (const auto& s : seen) EXPECT_EQ("/echo/" + header_of(s.head, "Idempotency-Key").substr(4), s.path);
}

// --- statuses ----------------------------------------------------------------------------

TEST(HttpTool, NotFoundIsPermanentNamingTheStatusAndBody) {
  Fixture f;
  auto tool = f.make({.url_template = f.url("/nothing/{id}?secret-query=1")});
  auto r = f.call(*tool, invocation(R"({"id":"x"})"));
  EXPECT_THAT(
      r, StatusIs(ErrorKind::kPermanent, "tool 'orders': GET " + f.url("/nothing/x") + ": http 404: no such path"));
  EXPECT_THAT(r.error().message(), Not(HasSubstr("secret-query")));
}

TEST(HttpTool, OtherClientErrorsQuoteAtMost512BytesOfTheBody) {
  Fixture f;
  f.server.set_canned("/bad", {.status = 422, .body = "why:" + std::string(5000, 'w')});
  auto tool = f.make({.url_template = f.url("/bad")});
  auto r = f.call(*tool, invocation("{}"));
  ASSERT_THAT(r, StatusIs(ErrorKind::kPermanent, "http 422: why:www"));
  EXPECT_THAT(r.error().message(), EndsWith("..."));
  EXPECT_LT(r.error().message().size(), 512u + 100u);
  EXPECT_THAT(r.error().message(), HasSubstr(std::string(508, 'w')));
}

TEST(HttpTool, RateLimitedCarriesTheRetryTime) {
  Fixture f;
  auto tool = f.make({.url_template = f.url("/ratelimited")});  // 429, Retry-After: 7
  TimePoint before{};
  auto r = f.call(*tool, invocation("{}"), &before);
  ASSERT_THAT(r, StatusIs(ErrorKind::kRateLimited, "http 429"));
  ASSERT_TRUE(r.error().retry_at().has_value());
  EXPECT_GE(*r.error().retry_at() - before, std::chrono::seconds(7));
  EXPECT_LT(*r.error().retry_at() - before, std::chrono::seconds(9));
}

TEST(HttpTool, RateLimitedRetryAfterMsAndHttpDate) {
  Fixture f;
  f.server.set_canned("/ms", {.status = 429, .headers = "retry-after-ms: 1500\r\n", .body = "slow down"});
  f.server.set_canned("/date", {.status = 429, .headers = "Retry-After: Sun, 06 Nov 1994 08:49:37 GMT\r\n"});
  f.server.set_canned("/none", {.status = 429});
  TimePoint before{};
  auto ms = f.call(*f.make({.url_template = f.url("/ms")}), invocation("{}"), &before);
  ASSERT_THAT(ms, StatusIs(ErrorKind::kRateLimited, "slow down"));
  ASSERT_TRUE(ms.error().retry_at().has_value());
  EXPECT_GE(*ms.error().retry_at() - before, std::chrono::milliseconds(1500));
  EXPECT_LT(*ms.error().retry_at() - before, std::chrono::milliseconds(3500));
  // A date in the past: retry now.
  auto date = f.call(*f.make({.url_template = f.url("/date")}), invocation("{}"), &before);
  ASSERT_THAT(date, StatusIs(ErrorKind::kRateLimited, "(empty body)"));
  ASSERT_TRUE(date.error().retry_at().has_value());
  EXPECT_LT(*date.error().retry_at() - before, std::chrono::seconds(2));
  auto none = f.call(*f.make({.url_template = f.url("/none")}), invocation("{}"));
  ASSERT_THAT(none, StatusIs(ErrorKind::kRateLimited));
  EXPECT_FALSE(none.error().retry_at().has_value());
}

TEST(HttpTool, ServerErrorsAndRequestTimeoutAreTransient) {
  Fixture f;
  for (int status : {500, 502, 503, 504, 408}) {
    auto tool = f.make({.url_template = f.url("/status/" + std::to_string(status))});
    EXPECT_THAT(
        f.call(*tool, invocation("{}")),
        StatusIs(ErrorKind::kTransient, "http " + std::to_string(status) + ": status " + std::to_string(status)));
  }
}

TEST(HttpTool, UnavailableWithRetryAfterCarriesTheRetryTime) {
  Fixture f;
  f.server.set_canned("/down", {.status = 503, .headers = "Retry-After: 3\r\n", .body = "maintenance"});
  TimePoint before{};
  auto r = f.call(*f.make({.url_template = f.url("/down")}), invocation("{}"), &before);
  ASSERT_THAT(r, StatusIs(ErrorKind::kTransient, "maintenance"));
  ASSERT_TRUE(r.error().retry_at().has_value());
  EXPECT_GE(*r.error().retry_at() - before, std::chrono::seconds(3));
}

TEST(HttpTool, AuthFailuresArePermanentWithThePrefixAndNeverQuoteTheCredential) {
  Fixture f;
  // A server that echoes the credential back in its error body.
  f.server.set_canned("/401", {.status = 401, .body = std::string("bad token: ") + kSecret});
  f.server.set_canned("/403", {.status = 403, .body = "forbidden for tok-SECRETabcdefghijklmnop0123456789"});
  for (const char* path : {"/401", "/403"}) {
    auto tool = f.make({.url_template = f.url(path), .headers = {{"Authorization", kSecret}}});
    auto r = f.call(*tool, invocation("{}"));
    ASSERT_THAT(r, StatusIs(ErrorKind::kPermanent)) << path;
    EXPECT_THAT(r.error().message(), StartsWith(std::string(kAuthFailurePrefix)));
    EXPECT_THAT(r.error().message(), HasSubstr(std::string("http ") + (path + 1)));
    EXPECT_THAT(r.error().message(), Not(HasSubstr("SECRET"))) << r.error().message();
    EXPECT_THAT(r.error().message(), HasSubstr("[redacted]"));
  }
}

TEST(HttpTool, RedirectsArePermanent) {
  Fixture f;
  f.server.set_canned("/moved", {.status = 302, .headers = "Location: /elsewhere\r\n"});
  EXPECT_THAT(f.call(*f.make({.url_template = f.url("/moved")}), invocation("{}")),
              StatusIs(ErrorKind::kPermanent, "http 302 (redirects are not followed)"));
}

// --- bounds and transport ----------------------------------------------------------------

TEST(HttpTool, BodyOverTheBoundIsCutWithAMarker) {
  Fixture f;
  auto tool = f.make({.url_template = f.url("/big/200000"), .max_response_bytes = 1000});
  auto r = f.call(*tool, invocation("{}"));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->substr(0, 1000), std::string(1000, 'x'));
  EXPECT_EQ(r->substr(1000), "\n[cut: the response is longer than 1000 bytes]");
  // At the bound exactly: whole, no marker.
  auto exact = f.call(*f.make({.url_template = f.url("/big/1000"), .max_response_bytes = 1000}), invocation("{}"));
  EXPECT_THAT(exact, IsOkAndHolds(std::string(1000, 'x')));
}

TEST(HttpTool, CutNeverSplitsAUtf8Character) {
  Fixture f;
  std::string body;
  for (int i = 0; i < 100; ++i) body += "\xC3\xA9";  // é, two bytes each
  f.server.set_canned("/utf8", {.body = body});
  auto r = f.call(*f.make({.url_template = f.url("/utf8"), .max_response_bytes = 11}), invocation("{}"));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->substr(0, r->find('\n')), body.substr(0, 10));
}

TEST(HttpTool, SlowServerHitsTheToolTimeout) {
  Fixture f;
  ToolSpec spec = order_spec();
  spec.timeout = std::chrono::milliseconds(300);
  auto tool = f.make({.url_template = f.url("/never")}, spec);
  auto r = f.call(*tool, invocation("{}"));
  EXPECT_THAT(r, StatusIs(ErrorKind::kTimeout, "tool 'orders': GET " + f.url("/never")));
}

TEST(HttpTool, TransportErrorsKeepTheirKinds) {
  Fixture f;
  const std::string url = "http://127.0.0.1:" + std::to_string(net::test::closed_port()) + "/x";
  auto tool = f.make({.url_template = url});
  EXPECT_THAT(f.call(*tool, invocation("{}")), StatusIs(ErrorKind::kTransient, "tool 'orders'"));
}

// --- check -------------------------------------------------------------------------------

TEST(HttpTool, CheckAsksTheCheckUrlWithTheKey) {
  Fixture f;
  f.server.set_canned("/refunds/A1/by-key", {.status = 200, .body = "refund r-7 done"});
  f.server.set_canned("/refunds/B2/by-key", {.status = 404, .body = "no such refund"});
  f.server.set_canned("/refunds/C3/by-key", {.status = 500});
  f.server.set_canned("/refunds/D4/by-key", {.status = 202});
  auto tool = f.make({.method = HttpMethod::kPost,
                      .url_template = f.url("/refunds/{id}"),
                      .check_url_template = f.url("/refunds/{id}/by-key")},
                     order_spec(EffectNature::kCheckable));
  EXPECT_THAT(f.check(*tool, invocation(R"({"id":"A1"})", "k-1")),
              IsOkAndHolds(std::optional<std::string>("refund r-7 done")));
  EXPECT_THAT(f.check(*tool, invocation(R"({"id":"B2"})", "k-2")), IsOkAndHolds(std::optional<std::string>()));
  EXPECT_THAT(f.check(*tool, invocation(R"({"id":"C3"})", "k-3")), StatusIs(ErrorKind::kTransient, "check GET"));
  EXPECT_THAT(f.check(*tool, invocation(R"({"id":"D4"})", "k-4")),
              StatusIs(ErrorKind::kTransient, "cannot tell whether the call was applied"));
  auto seen = f.server.requests();
  ASSERT_EQ(seen.size(), 4u);
  for (std::size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].method, "GET");
    EXPECT_EQ(header_of(seen[i].head, "Idempotency-Key"), "k-" + std::to_string(i + 1));
  }
}

TEST(HttpTool, CheckWithoutACheckUrlIsRefused) {
  Fixture f;
  auto tool = f.make({.url_template = f.url("/hello")});
  EXPECT_THAT(f.check(*tool, invocation("{}")), StatusIs(ErrorKind::kPermanent, "cannot say"));
}

// --- make-time checks ----------------------------------------------------------------------

TEST(MakeHttpTool, RefusesMalformedTemplatesNamingTemplateAndPosition) {
  Fixture f;
  auto bad = [&](HttpToolOptions o, ToolSpec spec = order_spec()) {
    return make_http_tool(std::move(spec), std::move(o), f.http);
  };
  const std::string base = f.url("");  // "http://127.0.0.1:<port>", 22 or 23 bytes
  EXPECT_THAT(bad({.url_template = base + "/orders/{id"}),
              StatusIs(ErrorKind::kInvalidArgument,
                       "tool 'orders': url_template: unmatched '{' (write '{{' for a literal '{') at position " +
                           std::to_string(base.size() + 8)));
  EXPECT_THAT(
      bad({.url_template = base + "/orders/id}"}),
      StatusIs(ErrorKind::kInvalidArgument, "url_template: unmatched '}' (write '}}' for a literal '}') at position " +
                                                std::to_string(base.size() + 10)));
  EXPECT_THAT(bad({.url_template = base + "/orders/{}"}),
              StatusIs(ErrorKind::kInvalidArgument, "url_template: empty placeholder '{}' at position"));
  EXPECT_THAT(bad({.url_template = base + "/{a{b}"}),
              StatusIs(ErrorKind::kInvalidArgument, "url_template: '{' inside the placeholder"));
  EXPECT_THAT(
      bad({.method = HttpMethod::kPost, .url_template = base + "/x", .body_template = R"({"amount": {amount}})"}),
      StatusIs(ErrorKind::kInvalidArgument, "body_template: "));
  EXPECT_THAT(bad({.url_template = base + "/x", .headers = {{"Authorization", "Bearer {token"}}}),
              StatusIs(ErrorKind::kInvalidArgument, "header 'Authorization' template: unmatched '{'"));
}

TEST(MakeHttpTool, RefusesUnknownPlaceholdersAndBadUrlsAndOptions) {
  Fixture f;
  auto make = [&](HttpToolOptions o, ToolSpec spec = order_spec()) {
    return make_http_tool(std::move(spec), std::move(o), f.http);
  };
  EXPECT_THAT(make({.url_template = f.url("/orders/{order_id}")}),
              StatusIs(ErrorKind::kInvalidArgument, "placeholder '{order_id}' at position"));
  EXPECT_THAT(make({.url_template = f.url("/x"), .check_url_template = f.url("/y/{nope}")}),
              StatusIs(ErrorKind::kInvalidArgument, "check_url_template: placeholder '{nope}'"));
  EXPECT_THAT(make({.url_template = "http://{id}.example.com/x"}),
              StatusIs(ErrorKind::kInvalidArgument, "placeholders may stand only in the path"));
  EXPECT_THAT(make({.url_template = "ftp://example.com/{id}"}),
              StatusIs(ErrorKind::kInvalidArgument, "must start with http:// or https://"));
  EXPECT_THAT(make({.url_template = ""}), StatusIs(ErrorKind::kInvalidArgument, "url_template"));
  EXPECT_THAT(make({.url_template = f.url("/x"), .body_template = "{id}"}),
              StatusIs(ErrorKind::kInvalidArgument, "GET request has no body"));
  EXPECT_THAT(make({.url_template = f.url("/x")}, order_spec(EffectNature::kCheckable)),
              StatusIs(ErrorKind::kInvalidArgument, "needs a check_url_template"));
  EXPECT_THAT(make({.url_template = f.url("/x"), .max_response_bytes = 0}),
              StatusIs(ErrorKind::kInvalidArgument, "max_response_bytes"));
  EXPECT_THAT(make({.url_template = f.url("/x"), .headers = {{"Bad Name", "v"}}}),
              StatusIs(ErrorKind::kInvalidArgument, "not an HTTP token"));
  EXPECT_THAT(make({.url_template = f.url("/x"), .headers = {{"idempotency-key", "v"}}}),
              StatusIs(ErrorKind::kInvalidArgument, "set by the tool"));
  EXPECT_THAT(make_http_tool(order_spec(), {.url_template = f.url("/x")}, nullptr),
              StatusIs(ErrorKind::kInvalidArgument, "no HTTP client"));
  ToolSpec bad_name = order_spec();
  bad_name.name = "has space";
  EXPECT_THAT(make({.url_template = f.url("/x")}, bad_name), StatusIs(ErrorKind::kInvalidArgument, "name"));
  // A schema without "properties" lists none: any placeholder goes.
  ToolSpec open = order_spec();
  open.parameters_schema_json = R"({"type":"object"})";
  EXPECT_THAT(make({.url_template = f.url("/orders/{anything}")}, open), IsOk());
}

TEST(MakeHttpTool, TemplateErrorsNeverQuoteHeaderValues) {
  Fixture f;
  auto r =
      make_http_tool(order_spec(), {.url_template = f.url("/x"), .headers = {{"X-Key", "sk-SECRET-{oops"}}}, f.http);
  ASSERT_THAT(r, StatusIs(ErrorKind::kInvalidArgument, "header 'X-Key' template"));
  EXPECT_THAT(r.error().message(), Not(HasSubstr("SECRET")));
}

}  // namespace
}  // namespace nines::agent
