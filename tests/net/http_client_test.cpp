// The HTTP client against a local HTTP/1.1 server (tests/net/test_server.hpp) on loopback,
// on the real environment and scheduler (2 workers), plus one run on the sim environment.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <unordered_map>

#include <atomic>
#include <functional>

#include "net/test_server.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/sse.hpp"
#include "nines/runtime/runtime.hpp"
#include "support/status_matchers.hpp"

extern char** environ;

namespace nines::net {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

using test::pause_ms;
using test::TestServer;

// Waits (polling, about 5 ms a step) until pred holds or `ms` pass; returns pred().
bool eventually(const std::function<bool()>& pred, int ms = 5000) {
  for (int waited = 0; waited < ms && !pred(); waited += 5) pause_ms(5);
  return pred();
}

struct Fixture {
  explicit Fixture(HttpClientOptions options = {}) {
    // Loopback only: a proxy from the environment must not take these requests.
    if (!options.proxy) options.proxy = "";
    client = HttpClient::create(*env, std::move(options)).value();
  }
  ~Fixture() {
    client.reset();  // before the environment; requests still in flight end as cancelled
  }

  // Runs body in a process and waits until it exits.
  void run(std::function<Task<>(Context&)> body) {
    auto w = rt->spawn_watched(std::move(body)).value();
    ExitReason r = w.exit->wait();
    EXPECT_TRUE(r.is_normal()) << r.to_string();
  }

  std::unique_ptr<Environment> env = make_real_environment({.workers = 2, .seed = 5});
  TestServer server{*env};
  std::unique_ptr<Runtime> rt = Runtime::create(*env).value();
  std::unique_ptr<HttpClient> client;
};

HttpRequest get(std::string url) {
  HttpRequest r;
  r.url = std::move(url);
  return r;
}

TEST(HttpHeaders, LookupIsCaseInsensitive) {
  HttpHeaders h{{"Content-Type", "text/plain"}, {"Set-Cookie", "a"}, {"set-cookie", "b"}};
  EXPECT_EQ(h.get("content-type"), "text/plain");
  EXPECT_EQ(h.get("CONTENT-TYPE"), "text/plain");
  EXPECT_FALSE(h.get("content-length").has_value());
  EXPECT_EQ(h.get_all("SET-COOKIE").size(), 2u);
  h.set("SET-cookie", "c");
  EXPECT_EQ(h.get_all("set-cookie"), (std::vector<std::string_view>{"c"}));
}

TEST(HttpUrl, RedactionDropsUserInfoQueryAndFragment) {
  EXPECT_EQ(redact_url("https://user:pw@api.example.com:8443/v1/chat?key=sk-123#frag"),
            "https://api.example.com:8443/v1/chat");
  EXPECT_EQ(redact_url("http://h/p"), "http://h/p");
  EXPECT_EQ(redact_url("http://h?x=1"), "http://h");
}

TEST(HttpClient, GetReturnsStatusHeadersAndBody) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    auto r = co_await f.client->request(ctx, get(f.server.url("/hello")));
    EXPECT_THAT(r, IsOk());
    if (!r.ok()) co_return;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->headers.get("x-TEST"), "yes");
    EXPECT_EQ(r->headers.get("content-length"), "5");
    EXPECT_EQ(r->body, "hello");
  });
  EXPECT_EQ(f.client->in_flight(), 0u);
}

TEST(HttpClient, PostAndPutSendBodyAndHeaders) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    HttpRequest post = get(f.server.url("/echo"));
    post.method = "POST";
    post.body = "payload";
    post.headers.add("X-Custom", "42");
    post.headers.add("Content-Type", "text/plain");
    auto r = co_await f.client->request(ctx, std::move(post));
    EXPECT_THAT(r, IsOk());
    if (!r.ok()) co_return;
    EXPECT_EQ(r->body, "POST payload");
    EXPECT_EQ(r->headers.get("X-Got-Custom"), "42");
    HttpRequest put = get(f.server.url("/echo"));
    put.method = "PUT";
    put.body = std::string(100'000, 'p');  // larger than curl's Expect: 100-continue threshold
    auto r2 = co_await f.client->request(ctx, std::move(put));
    EXPECT_THAT(r2, IsOk());
    if (r2.ok()) {
      EXPECT_EQ(r2->body, "PUT " + std::string(100'000, 'p'));
    }
    HttpRequest del = get(f.server.url("/echo"));
    del.method = "DELETE";
    auto r3 = co_await f.client->request(ctx, std::move(del));
    EXPECT_THAT(r3, IsOk());
    if (r3.ok()) {
      EXPECT_EQ(r3->body, "DELETE ");
    }
  });
}

// Requests with the same header fields share one header list (CurlHeaders); a request with
// other fields, or with the same fields in a changed value, must send its own.
TEST(HttpClient, EachRequestSendsItsOwnHeadersWhenTheyDiffer) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    for (const char* value : {"1", "1", "2", "", "2", "1"}) {
      HttpRequest req = get(f.server.url("/echo"));
      if (*value != '\0') req.headers.add("X-Custom", value);
      auto r = co_await f.client->request(ctx, std::move(req));
      EXPECT_THAT(r, IsOk());
      if (r.ok()) {
        EXPECT_EQ(r->headers.get("X-Got-Custom").value_or("?"), value) << value;
      }
    }
  });
}

TEST(HttpClient, ErrorStatusesAreResponsesNotErrors) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    auto r500 = co_await f.client->request(ctx, get(f.server.url("/status/500")));
    EXPECT_THAT(r500, IsOk());
    if (r500.ok()) {
      EXPECT_EQ(r500->status, 500);
      EXPECT_EQ(r500->body, "status 500");
    }
    auto r429 = co_await f.client->request(ctx, get(f.server.url("/ratelimited")));
    EXPECT_THAT(r429, IsOk());
    if (r429.ok()) {
      EXPECT_EQ(r429->status, 429);
      EXPECT_EQ(r429->headers.get("retry-after"), "7");
    }
    auto r404 = co_await f.client->request(ctx, get(f.server.url("/nothing-here")));
    EXPECT_THAT(r404, IsOk());
    if (r404.ok()) {
      EXPECT_EQ(r404->status, 404);
    }
  });
}

TEST(HttpClient, KeepAliveReusesOneConnection) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    for (int i = 0; i < 20; ++i) {
      auto r = co_await f.client->request(ctx, get(f.server.url(i % 2 ? "/hello" : "/status/503")));
      EXPECT_THAT(r, IsOk());
    }
  });
  EXPECT_EQ(f.server.requests_seen(), 20u);
  EXPECT_EQ(f.server.connections_accepted(), 1u);
  EXPECT_EQ(f.client->connections_opened(), 1u);
}

TEST(HttpClient, StreamDeliversServerSentEventsAsTheyArrive) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    auto s = co_await f.client->stream(ctx, get(f.server.url("/sse")));
    EXPECT_THAT(s, IsOk());
    if (!s.ok()) co_return;
    EXPECT_EQ(s->status(), 200);
    EXPECT_EQ(s->headers().get("content-type"), "text/event-stream");
    SseParser parser;
    std::vector<SseEvent> events;
    // The server holds the rest of the stream until release(): the first event must come
    // through on its own.
    while (events.empty()) {
      auto chunk = co_await s->next(ctx);
      EXPECT_THAT(chunk, IsOk());
      if (!chunk.ok() || !*chunk) co_return;
      EXPECT_THAT(parser.feed(**chunk, events), IsOk());
    }
    EXPECT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].data, "one");
    f.server.release();
    for (;;) {
      auto chunk = co_await s->next(ctx);
      EXPECT_THAT(chunk, IsOk());
      if (!chunk.ok() || !*chunk) break;
      EXPECT_THAT(parser.feed(**chunk, events), IsOk());
    }
    EXPECT_EQ(events.size(), 2u);
    if (events.size() == 2) {
      EXPECT_EQ(events[1].type, "done");
      EXPECT_EQ(events[1].data, "two\nthree");
    }
    auto after = co_await s->next(ctx);  // the end stays the end
    EXPECT_TRUE(after.ok() && !*after);
  });
  EXPECT_EQ(f.client->in_flight(), 0u);
}

TEST(HttpClient, SlowStreamReaderPausesTheTransferWithoutLosingBytes) {
  Fixture f({.stream_buffer_bytes = 4096});
  f.run([&](Context& ctx) -> Task<> {
    auto s = co_await f.client->stream(ctx, get(f.server.url("/big/1000000")));
    EXPECT_THAT(s, IsOk());
    if (!s.ok()) co_return;
    std::size_t total = 0, chunks = 0;
    for (;;) {
      co_await ctx.sleep(std::chrono::microseconds(200));  // a slow reader
      auto chunk = co_await s->next(ctx);
      EXPECT_THAT(chunk, IsOk());
      if (!chunk.ok() || !*chunk) break;
      EXPECT_LE((*chunk)->size(), 4096u + 16384u);  // one buffer plus at most one curl write
      total += (*chunk)->size();
      ++chunks;
    }
    EXPECT_EQ(total, 1'000'000u);
    EXPECT_GT(chunks, 10u);
  });
}

TEST(HttpClient, ConnectionRefusedIsTransientAndNamesTheUrl) {
  Fixture f;
  int port = test::closed_port();
  f.run([&](Context& ctx) -> Task<> {
    auto r = co_await f.client->request(ctx, get("http://127.0.0.1:" + std::to_string(port) + "/x?token=abc"));
    EXPECT_FALSE(r.ok());
    if (r.ok()) co_return;
    EXPECT_THAT(r, StatusIs(ErrorKind::kTransient, HasSubstr("GET http://127.0.0.1:" + std::to_string(port) + "/x")));
    EXPECT_THAT(r.error().message(), Not(HasSubstr("token=abc")));
  });
}

TEST(HttpClient, SecretsNeverAppearInErrors) {
  Fixture f;
  int port = test::closed_port();
  f.run([&](Context& ctx) -> Task<> {
    HttpRequest req = get("http://user:hunter2@127.0.0.1:" + std::to_string(port) + "/v1?api_key=sk-query-secret");
    req.headers.add("Authorization", "Bearer sk-header-secret");
    req.headers.add("x-api-key", "sk-other-secret");
    auto r = co_await f.client->request(ctx, std::move(req));
    EXPECT_FALSE(r.ok());
    if (r.ok()) co_return;
    std::string text = r.error().to_string();
    for (const char* secret : {"hunter2", "sk-query-secret", "sk-header-secret", "sk-other-secret"}) {
      EXPECT_THAT(text, Not(HasSubstr(secret)));
    }
    HttpRequest bad = get(f.server.url("/hello"));
    bad.headers.add("Authorization", "Bearer sk-injected\r\nX-Evil: 1");
    auto r2 = co_await f.client->request(ctx, std::move(bad));
    EXPECT_FALSE(r2.ok());
    if (r2.ok()) co_return;
    EXPECT_THAT(r2, StatusIs(ErrorKind::kInvalidArgument));
    EXPECT_THAT(r2.error().to_string(), Not(HasSubstr("sk-injected")));
  });
}

TEST(HttpClient, BadUrlsAreInvalidArguments) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    auto r = co_await f.client->request(ctx, get("ftp://127.0.0.1/file"));
    EXPECT_THAT(r, StatusIs(ErrorKind::kInvalidArgument));
    HttpRequest bad_method = get(f.server.url("/hello"));
    bad_method.method = "GE T";
    auto r2 = co_await f.client->request(ctx, std::move(bad_method));
    EXPECT_THAT(r2, StatusIs(ErrorKind::kInvalidArgument));
  });
}

TEST(HttpClient, ConnectTimeout) {
  Fixture f;
  test::BlackholePort hole;
  f.run([&](Context& ctx) -> Task<> {
    HttpRequest req = get("http://127.0.0.1:" + std::to_string(hole.port()) + "/");
    req.timeouts = HttpTimeouts{.connect = std::chrono::milliseconds(200)};
    auto r = co_await f.client->request(ctx, std::move(req));
    EXPECT_FALSE(r.ok());
    if (r.ok()) co_return;
    EXPECT_THAT(r, StatusIs(ErrorKind::kTimeout, HasSubstr("connect timeout (200 ms)")));
  });
  EXPECT_EQ(f.client->in_flight(), 0u);
}

TEST(HttpClient, FirstByteTimeoutWhenTheServerNeverAnswers) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    HttpRequest req = get(f.server.url("/never"));
    req.timeouts = HttpTimeouts{.first_byte = std::chrono::milliseconds(200)};
    TimePoint t0 = ctx.now();
    auto r = co_await f.client->request(ctx, std::move(req));
    Duration took = ctx.now() - t0;
    EXPECT_FALSE(r.ok());
    if (r.ok()) co_return;
    EXPECT_THAT(r, StatusIs(ErrorKind::kTimeout, HasSubstr("first-byte timeout (200 ms)")));
    EXPECT_GE(took, std::chrono::milliseconds(200));
    EXPECT_LT(took, std::chrono::milliseconds(2000));
  });
  EXPECT_TRUE(eventually([&] { return f.server.connections_closed() == 1; }));
}

// The transfer's timer is first armed for the earlier of the first-byte and the idle timeout
// (so the first byte finds it early enough and arms nothing): with an idle timeout shorter
// than the wait for the first byte, that early firing must not end the request.
TEST(HttpClient, AnIdleTimeoutShorterThanTheWaitForTheFirstByteDoesNotCutIt) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    HttpRequest req = get(f.server.url("/delay/400"));
    req.timeouts = HttpTimeouts{.first_byte = std::chrono::seconds(5), .idle = std::chrono::milliseconds(100)};
    auto r = co_await f.client->request(ctx, std::move(req));
    EXPECT_THAT(r, IsOk());
    if (r.ok()) {
      EXPECT_EQ(r->body, "late");
    }
    // And the first-byte timeout still ends one that never answers, after the idle one passed.
    HttpRequest never = get(f.server.url("/never"));
    never.timeouts = HttpTimeouts{.first_byte = std::chrono::milliseconds(300), .idle = std::chrono::milliseconds(100)};
    const TimePoint t0 = ctx.now();
    auto n = co_await f.client->request(ctx, std::move(never));
    EXPECT_THAT(n, StatusIs(ErrorKind::kTimeout, HasSubstr("first-byte timeout (300 ms)")));
    EXPECT_GE(ctx.now() - t0, std::chrono::milliseconds(300));
  });
}

TEST(HttpClient, IdleTimeoutWhenAStreamStalls) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    HttpRequest req = get(f.server.url("/stall"));
    req.timeouts = HttpTimeouts{.idle = std::chrono::milliseconds(200)};
    auto s = co_await f.client->stream(ctx, std::move(req));
    EXPECT_THAT(s, IsOk());
    if (!s.ok()) co_return;
    auto first = co_await s->next(ctx);
    EXPECT_TRUE(first.ok() && *first && **first == "data: first\n\n");
    auto second = co_await s->next(ctx);
    EXPECT_FALSE(second.ok());
    if (second.ok()) co_return;
    EXPECT_THAT(second, StatusIs(ErrorKind::kTimeout, HasSubstr("idle timeout (200 ms")));
    // The same stall without streaming.
    HttpRequest again = get(f.server.url("/stall"));
    again.timeouts = HttpTimeouts{.idle = std::chrono::milliseconds(200)};
    auto r = co_await f.client->request(ctx, std::move(again));
    EXPECT_THAT(r, StatusIs(ErrorKind::kTimeout, HasSubstr("idle timeout")));
  });
}

TEST(HttpClient, TotalTimeoutWhileDataKeepsComing) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    HttpRequest req = get(f.server.url("/trickle"));
    req.timeouts = HttpTimeouts{.idle = std::chrono::seconds(1), .total = std::chrono::milliseconds(300)};
    auto r = co_await f.client->request(ctx, std::move(req));
    EXPECT_FALSE(r.ok());
    if (r.ok()) co_return;
    EXPECT_THAT(r, StatusIs(ErrorKind::kTimeout, HasSubstr("total timeout (300 ms)")));
  });
}

TEST(HttpClient, ProcessDeadlineBoundsTheRequest) {
  Fixture f;
  f.run([&](Context& ctx) -> Task<> {
    auto scope = ctx.with_timeout(std::chrono::milliseconds(200));
    auto r = co_await f.client->request(ctx, get(f.server.url("/never")));
    EXPECT_FALSE(r.ok());
    if (r.ok()) co_return;
    EXPECT_THAT(r, StatusIs(ErrorKind::kDeadlineExceeded, HasSubstr("GET " + f.server.url("/never"))));
    // Already past: nothing is sent.
    std::size_t seen = f.server.requests_seen();
    co_await ctx.sleep(std::chrono::milliseconds(10));
    auto late = co_await f.client->request(ctx, get(f.server.url("/hello")));
    EXPECT_THAT(late, StatusIs(ErrorKind::kDeadlineExceeded));
    EXPECT_EQ(f.server.requests_seen(), seen);
  });
  EXPECT_TRUE(eventually([&] { return f.client->in_flight() == 0; }));
}

TEST(HttpClient, KilledProcessCancelsItsTransfer) {
  Fixture f;
  std::atomic<bool> returned{false};
  auto w = f.rt->spawn_watched([&](Context& ctx) -> Task<> {
                 auto r = co_await f.client->request(ctx, get(f.server.url("/never")));
                 returned = true;
               })
               .value();
  auto streamer = f.rt->spawn_watched([&](Context& ctx) -> Task<> {
                        auto s = co_await f.client->stream(ctx, get(f.server.url("/stall")));
                        if (!s.ok()) co_return;
                        (void)co_await s->next(ctx);
                        (void)co_await s->next(ctx);  // stalls here until killed
                        returned = true;
                      })
                      .value();
  ASSERT_TRUE(eventually([&] { return f.server.requests_seen() == 2 && f.client->in_flight() == 2; }));
  pause_ms(20);  // the streamer reaches its second read
  f.rt->send_exit(w.pid, ExitReason::kill());
  f.rt->send_exit(streamer.pid, ExitReason::kill());
  EXPECT_FALSE(w.exit->wait().is_normal());
  EXPECT_FALSE(streamer.exit->wait().is_normal());
  EXPECT_FALSE(returned.load());
  // The transfers are removed and freed (ASan checks the freeing), and the connections closed.
  EXPECT_TRUE(eventually([&] { return f.client->in_flight() == 0; }));
  EXPECT_TRUE(eventually([&] { return f.server.connections_closed() == 2; }));
}

TEST(HttpClient, BodyLargerThanTheBoundIsAnError) {
  Fixture f({.max_body_bytes = 10'000});
  f.run([&](Context& ctx) -> Task<> {
    auto ok = co_await f.client->request(ctx, get(f.server.url("/big/10000")));
    EXPECT_TRUE(ok.ok() && ok->body.size() == 10'000u);
    auto r = co_await f.client->request(ctx, get(f.server.url("/big/50000")));
    EXPECT_FALSE(r.ok());
    if (r.ok()) co_return;
    EXPECT_THAT(r, StatusIs(ErrorKind::kPermanent, HasSubstr("max_body_bytes")));
  });
}

TEST(HttpClient, ABodyManyTimesTheReceiveBufferArrivesWhole) {
  Fixture f({.receive_buffer_bytes = 1024});
  f.run([&](Context& ctx) -> Task<> {
    auto r = co_await f.client->request(ctx, get(f.server.url("/big/100000")));
    EXPECT_TRUE(r.ok() && r->body == std::string(100'000, 'x'));
  });
}

TEST(HttpClient, AReceiveBufferOutsideLibcurlsRangeIsRefused) {
  auto env = make_real_environment({.workers = 1, .seed = 1});
  for (std::size_t bytes : {std::size_t{0}, std::size_t{1023}, std::size_t{(512u << 10) + 1}}) {
    EXPECT_THAT(HttpClient::create(*env, {.receive_buffer_bytes = bytes}),
                StatusIs(ErrorKind::kInvalidArgument, HasSubstr("receive_buffer_bytes")))
        << bytes;
  }
  EXPECT_THAT(HttpClient::create(*env, {.receive_buffer_bytes = 512u << 10}), IsOk());
}

TEST(HttpClient, HeadersLargerThanTheBoundAreAnError) {
  Fixture f({.max_header_bytes = 40});
  f.run([&](Context& ctx) -> Task<> {
    auto r = co_await f.client->request(ctx, get(f.server.url("/hello")));
    EXPECT_THAT(r, StatusIs(ErrorKind::kPermanent, HasSubstr("max_header_bytes")));
  });
}

TEST(HttpClient, RequestsBeyondMaxInFlightAreRefused) {
  Fixture f({.max_in_flight = 2});
  f.run([&](Context& ctx) -> Task<> {
    auto a = co_await f.client->stream(ctx, get(f.server.url("/stall")));
    auto b = co_await f.client->stream(ctx, get(f.server.url("/stall")));
    EXPECT_TRUE(a.ok() && b.ok());
    auto c = co_await f.client->request(ctx, get(f.server.url("/hello")));
    EXPECT_FALSE(c.ok());
    if (c.ok()) co_return;
    EXPECT_THAT(c, StatusIs(ErrorKind::kBulkheadFull, HasSubstr("max_in_flight")));
  });
  // The streams died with the process: the slots are free again.
  EXPECT_TRUE(eventually([&] { return f.client->in_flight() == 0; }));
  f.run([&](Context& ctx) -> Task<> {
    auto r = co_await f.client->request(ctx, get(f.server.url("/hello")));
    EXPECT_THAT(r, IsOk());
  });
}

TEST(HttpClient, AThousandConcurrentRequestsFromAThousandProcesses) {
  Fixture f({.max_connections = 64});
  constexpr int kProcesses = 1000;
  std::atomic<int> ok{0};
  std::atomic<int> peak{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int i = 0; i < kProcesses; ++i) {
    watches.push_back(f.rt->spawn_watched([&](Context& ctx) -> Task<> {
                            int now = static_cast<int>(f.client->in_flight());
                            for (int p = peak.load(); now > p && !peak.compare_exchange_weak(p, now);) {
                            }
                            auto r = co_await f.client->request(ctx, get(f.server.url("/hello")));
                            if (r.ok() && r->status == 200 && r->body == "hello") ++ok;
                          })
                          .value()
                          .exit);
  }
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
  EXPECT_EQ(ok.load(), kProcesses);
  EXPECT_EQ(f.client->in_flight(), 0u);
  EXPECT_LE(f.server.connections_accepted(), 64u);
  EXPECT_EQ(f.server.requests_seen(), static_cast<std::size_t>(kProcesses));
}

// A server in a child process (forked before this test starts any thread of its own; the
// child starts none) that holds every request until `expected` have arrived, tells the parent
// on a pipe, then answers them all when the parent says so: the way to have exactly that many
// requests in flight at once. One thread and epoll, so it is cheap at 10,000 connections.
class HoldingServer {
 public:
  explicit HoldingServer(std::size_t expected) {
    int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(lfd, 65535) != 0) std::abort();
    socklen_t len = sizeof a;
    getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    int up[2], down[2];
    if (pipe2(up, O_CLOEXEC) != 0 || pipe2(down, O_CLOEXEC) != 0) std::abort();
    pid_ = fork();
    if (pid_ == 0) {
      ::close(up[0]);
      ::close(down[1]);
      serve(lfd, expected, up[1], down[0]);
      _exit(0);
    }
    ::close(lfd);
    ::close(up[1]);
    ::close(down[0]);
    from_child_ = up[0];
    to_child_ = down[1];
  }
  ~HoldingServer() {
    ::close(to_child_);  // EOF: the child exits
    ::close(from_child_);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/held"; }
  // Waits until the child holds `expected` requests (false after timeout_ms).
  bool wait_all_held(int timeout_ms) {
    pollfd p{from_child_, POLLIN, 0};
    char c = 0;
    return ::poll(&p, 1, timeout_ms) == 1 && ::read(from_child_, &c, 1) == 1 && c == 'H';
  }
  void answer_all() { [[maybe_unused]] auto n = ::write(to_child_, "A", 1); }

 private:
  static void serve(int lfd, std::size_t expected, int up, int down) {
    int ep = epoll_create1(0);
    auto add = [&](int fd) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    };
    add(lfd);
    add(down);
    std::unordered_map<int, std::string> conns;  // fd -> request bytes so far
    std::vector<int> held;
    bool answering = false;
    const std::string reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    auto answer = [&](int fd) { [[maybe_unused]] auto n = ::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL); };
    std::vector<epoll_event> events(1024);
    for (;;) {
      int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), -1);
      for (int i = 0; i < n; ++i) {
        int fd = events[i].data.fd;
        if (fd == lfd) {
          for (int c; (c = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
            conns[c];
            add(c);
          }
        } else if (fd == down) {
          char c;
          if (::read(down, &c, 1) != 1) return;  // the parent is done
          answering = true;
          for (int h : held) answer(h);
          held.clear();
        } else {
          char buf[4096];
          ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
          if (r <= 0) {
            if (r < 0 && errno == EAGAIN) continue;
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
            ::close(fd);
            conns.erase(fd);
            continue;
          }
          std::string& req = conns[fd];
          req.append(buf, static_cast<std::size_t>(r));
          if (req.find("\r\n\r\n") == std::string::npos) continue;
          req.clear();
          if (answering) {
            answer(fd);
          } else {
            held.push_back(fd);
            if (held.size() == expected) [[maybe_unused]]
              auto w = ::write(up, "H", 1);
          }
        }
      }
    }
  }

  int port_ = 0;
  pid_t pid_ = -1;
  int from_child_ = -1, to_child_ = -1;
};

std::size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

// Ten thousand requests in flight at once on one event loop (each from a process of its own,
// each on a connection of its own: HTTP/1.1), then all answered. Prints the resident memory
// each call in flight costs (the target: at most 20 KiB, measured in release builds
// by bench/peers/llm_client, which sanitizer builds inflate).
TEST(HttpClient, TenThousandRequestsInFlightOnOneLoop) {
  constexpr std::size_t kCalls = 10'000;
  // The descriptors: one connection each here and in the server, plus some.
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  const rlim_t need = kCalls + 512;
  if (lim.rlim_max < need) lim.rlim_max = need;  // root may raise the hard limit
  lim.rlim_cur = lim.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur < need) {
    GTEST_SKIP() << "cannot raise RLIMIT_NOFILE to " << need;
  }
  HoldingServer server(kCalls);  // before any thread of this test
  auto env = make_real_environment({.workers = 2, .seed = 5});
  auto rt = Runtime::create(*env).value();
  auto client = HttpClient::create(*env, {.max_in_flight = kCalls, .proxy = ""}).value();
  const std::size_t rss_before = resident_bytes();
  std::atomic<std::size_t> ok{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  watches.reserve(kCalls);
  for (std::size_t i = 0; i < kCalls; ++i) {
    watches.push_back(rt->spawn_watched([&](Context& ctx) -> Task<> {
                          HttpRequest req;
                          req.url = server.url();
                          auto r = co_await client->request(ctx, std::move(req));
                          if (r.ok() && r->status == 200 && r->body == "ok") ++ok;
                        })
                          .value()
                          .exit);
  }
  ASSERT_TRUE(server.wait_all_held(120'000)) << "the server did not get " << kCalls << " requests";
  EXPECT_EQ(client->in_flight(), kCalls);
  const std::size_t rss_held = resident_bytes();
  std::printf(
      "10,000 requests in flight: resident memory %.1f MiB more than before, %.1f KiB per call in flight "
      "(this build; sanitizers inflate it)\n",
      static_cast<double>(rss_held - rss_before) / (1 << 20),
      static_cast<double>(rss_held - rss_before) / 1024.0 / kCalls);
  server.answer_all();
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
  EXPECT_EQ(ok.load(), kCalls);
  EXPECT_EQ(client->in_flight(), 0u);
  client.reset();
}

// A self-signed certificate for 127.0.0.1 (cert.pem, key.pem in dir), made with openssl.
std::pair<std::string, std::string> make_certificate(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  std::string cert = (dir / "cert.pem").string(), key = (dir / "key.pem").string();
  std::string gen =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1"
      " -addext subjectAltName=IP:127.0.0.1 -keyout " +
      key + " -out " + cert + " >/dev/null 2>&1";
  if (std::system(gen.c_str()) != 0) return {};
  return {cert, key};
}

// TLS through libcurl-openssl, against `openssl s_server` with a self-signed certificate for
// 127.0.0.1 made by the test.
TEST(HttpClient, HttpsVerifiesThePeer) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("nines-net-tls-" + std::to_string(::getpid()));
  auto [cert, key] = make_certificate(dir);
  ASSERT_FALSE(cert.empty()) << "openssl could not make a certificate";
  int port = test::closed_port();
  std::string accept = "127.0.0.1:" + std::to_string(port);
  std::vector<std::string> args = {"openssl", "s_server", "-quiet", "-www", "-accept",
                                   accept,    "-cert",    cert,     "-key", key};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t server = 0;
  ASSERT_EQ(posix_spawnp(&server, "openssl", nullptr, nullptr, argv.data(), environ), 0);

  auto run_with = [&](HttpClientOptions options) {
    Fixture f(std::move(options));
    std::optional<Result<HttpResponse>> got;
    // s_server needs a moment to listen: refused connections are retried for up to 5 s.
    for (int attempt = 0; attempt < 100; ++attempt) {
      f.run([&](Context& ctx) -> Task<> {
        auto r = co_await f.client->request(ctx, get("https://" + accept + "/"));
        got.emplace(std::move(r));
      });
      if (got->ok() || got->error().kind() != ErrorKind::kTransient ||
          got->error().message().find("onnect") == std::string::npos) {
        break;
      }
      pause_ms(50);
    }
    return std::move(*got);
  };
  auto trusted = run_with({.ca_file = cert});
  EXPECT_THAT(trusted, IsOk());
  if (trusted.ok()) {
    EXPECT_EQ(trusted->status, 200);
  }
  auto untrusted = run_with({});
  EXPECT_FALSE(untrusted.ok());
  if (!untrusted.ok()) {
    EXPECT_THAT(untrusted, StatusIs(ErrorKind::kPermanent));
  }
  auto unverified = run_with({.verify_tls = false});
  EXPECT_THAT(unverified, IsOk());

  ::kill(server, SIGTERM);
  int status = 0;
  ::waitpid(server, &status, 0);
  fs::remove_all(dir);
}

// HTTP/2 through libcurl's nghttp2, against Node's http2 server over TLS (tests/net/h2_server.mjs:
// HTTP/1.1 too, by ALPN) with a self-signed certificate made by the test: concurrent requests
// to one host go as streams of one connection per multi handle (64 transfers each: 100 requests
// take two); with http2 off, each opens a connection of its own. Fails when node is missing
// (scripts/setup.sh installs it).
TEST(HttpClient, Http2MultiplexesConcurrentRequestsOnOneTlsConnection) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("nines-net-h2-" + std::to_string(::getpid()));
  auto [cert, key] = make_certificate(dir);
  ASSERT_FALSE(cert.empty()) << "openssl could not make a certificate";
  const int port = test::closed_port();
  std::vector<std::string> args = {"node", std::string(NINES_NET_TEST_DIR) + "/h2_server.mjs", cert, key,
                                   std::to_string(port)};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t server = 0;
  ASSERT_EQ(posix_spawnp(&server, "node", nullptr, nullptr, argv.data(), environ), 0) << "node could not start";
  // Node takes a moment to listen: up to 30 s on a loaded machine.
  const bool listening = eventually(
      [&] {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<std::uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
        ::close(fd);
        return ok;
      },
      30000);

  constexpr int kCalls = 100;
  struct Burst {
    std::vector<Result<HttpResponse>> results;
    std::size_t connections = 0;
  };
  // kCalls requests at once, each answered after 300 ms: all in flight together.
  auto burst = [&](bool http2) {
    Fixture f({.http2 = http2, .ca_file = cert});
    std::vector<std::optional<Result<HttpResponse>>> got(kCalls);
    std::vector<std::shared_ptr<ExitWatch>> watches;
    for (int i = 0; i < kCalls; ++i) {
      watches.push_back(f.rt->spawn_watched([&, i](Context& ctx) -> Task<> {
                              auto r = co_await f.client->request(
                                  ctx, get("https://127.0.0.1:" + std::to_string(port) + "/?delay_ms=300"));
                              got[static_cast<std::size_t>(i)].emplace(std::move(r));
                            })
                            .value()
                            .exit);
    }
    for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
    Burst b;
    for (auto& g : got) b.results.push_back(g ? std::move(*g) : Error(ErrorKind::kInternal, "no result"));
    b.connections = f.client->connections_opened();
    return b;
  };
  if (listening) {
    Burst h2 = burst(true);
    for (auto& r : h2.results) {
      ASSERT_THAT(r, IsOk());
      EXPECT_EQ(r->status, 200);
      EXPECT_EQ(r->headers.get("x-http-version").value_or(""), "2.0");
      EXPECT_EQ(r->body, "served over HTTP/2.0\n");
    }
    // The burst waited for each multi handle's first handshake, then shared that connection.
    EXPECT_EQ(h2.connections, 2u);
    std::set<std::string> seen;
    for (auto& r : h2.results) seen.insert(std::string(r->headers.get("x-connection").value_or("")));
    EXPECT_EQ(seen.size(), 2u);

    Burst h1 = burst(false);
    for (auto& r : h1.results) {
      ASSERT_THAT(r, IsOk());
      EXPECT_EQ(r->headers.get("x-http-version").value_or(""), "1.1");
    }
    EXPECT_EQ(h1.connections, static_cast<std::size_t>(kCalls));  // one each: HTTP/1.1 cannot share
  }
  ::kill(server, SIGTERM);
  int status = 0;
  ::waitpid(server, &status, 0);
  fs::remove_all(dir);
  ASSERT_TRUE(listening) << "the node http2 server did not listen on port " << port;
}

// The sim environment polls watched fds when driven, so the client works there too, with
// virtual time for nines' own timers (the server still runs on a real thread).
TEST(HttpClient, WorksOnTheSimEnvironmentWhenDriven) {
  auto real = make_real_environment({.workers = 1, .seed = 9});
  TestServer server(*real);
  SimEnvironment sim(42);
  auto rt = Runtime::create(sim).value();
  auto client = HttpClient::create(sim, {.proxy = ""}).value();
  std::optional<Result<HttpResponse>> got;
  rt->spawn([&](Context& ctx) -> Task<> {
      auto r = co_await client->request(ctx, get(server.url("/hello")));
      got.emplace(std::move(r));
    }).value();
  for (int i = 0; i < 2000 && !got; ++i) {
    rt->run_until_idle();
    if (!got) pause_ms(1);
  }
  ASSERT_TRUE(got.has_value());
  ASSERT_TRUE(got->ok()) << got->error().to_string();
  EXPECT_EQ((*got)->body, "hello");
  // A first-byte timeout fires on virtual time: no real waiting.
  std::optional<Result<HttpResponse>> timed_out;
  rt->spawn([&](Context& ctx) -> Task<> {
      HttpRequest req = get(server.url("/never"));
      req.timeouts = HttpTimeouts{.first_byte = std::chrono::seconds(30)};
      auto r = co_await client->request(ctx, std::move(req));
      timed_out.emplace(std::move(r));
    }).value();
  for (int i = 0; i < 200 && server.requests_seen() < 2; ++i) {
    rt->run_until_idle();
    pause_ms(1);
  }
  rt->advance(std::chrono::seconds(31));
  ASSERT_TRUE(timed_out.has_value());
  EXPECT_THAT(*timed_out, StatusIs(ErrorKind::kTimeout));
  client.reset();
  rt.reset();
}

}  // namespace
}  // namespace nines::net
