// The HTTP server (nines/net/http_server.hpp).
//
// Two rigs:
//  - SimRig: the server on SimEnvironment, driven by the test thread (poll_fds,
//    fire_due_timers, set_now), with raw loopback sockets as clients. Timeouts run on virtual
//    time; nothing sleeps. Used for the protocol's edge cases.
//  - RealRig: the server on the real environment with the project's HttpClient in runtime
//    processes: round trips, keep-alive, streaming to the SSE parser, abort, stop, and 1,000
//    concurrent requests.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <stdexcept>

#include "net/test_server.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/http_server.hpp"
#include "nines/net/sse.hpp"
#include "nines/runtime/runtime.hpp"
#include "support/status_matchers.hpp"

namespace nines::net {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

using test::pause_ms;

// ---------------------------------------------------------------- raw client and response parsing

// A loopback TCP client for byte-exact requests. Connects blocking (the kernel completes the
// handshake before the server accepts), then reads without blocking.
class RawClient {
 public:
  explicit RawClient(std::uint16_t port, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error("socket failed");
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~RawClient() { close(); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }
  int fd() const { return fd_; }

  void send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  // Reads whatever has arrived, without waiting.
  void read_available() {
    if (fd_ < 0 || eof_) return;
    char buf[65536];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        received_.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) eof_ = true;
      return;
    }
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  const std::string& received() const { return received_; }
  std::string take() { return std::exchange(received_, {}); }
  bool eof() const { return eof_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string received_;
  bool eof_ = false;
};

struct ParsedResponse {
  int status = 0;
  HttpHeaders headers;
  std::string body;
  bool complete = false;
};

// Splits bytes into HTTP responses (llhttp in response mode). The last one may be
// incomplete.
std::vector<ParsedResponse> parse_responses(std::string_view bytes) {
  struct State {
    std::vector<ParsedResponse> out;
    std::string field, value;
  } state;
  static const llhttp_settings_t settings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = [](llhttp_t* p) {
      static_cast<State*>(p->data)->out.emplace_back();
      return 0;
    };
    s.on_header_field = [](llhttp_t* p, const char* at, std::size_t n) {
      static_cast<State*>(p->data)->field.append(at, n);
      return 0;
    };
    s.on_header_value = [](llhttp_t* p, const char* at, std::size_t n) {
      static_cast<State*>(p->data)->value.append(at, n);
      return 0;
    };
    s.on_header_value_complete = [](llhttp_t* p) {
      auto* st = static_cast<State*>(p->data);
      st->out.back().headers.add(std::exchange(st->field, {}), std::exchange(st->value, {}));
      return 0;
    };
    s.on_headers_complete = [](llhttp_t* p) {
      static_cast<State*>(p->data)->out.back().status = p->status_code;
      return 0;
    };
    s.on_body = [](llhttp_t* p, const char* at, std::size_t n) {
      static_cast<State*>(p->data)->out.back().body.append(at, n);
      return 0;
    };
    s.on_message_complete = [](llhttp_t* p) {
      static_cast<State*>(p->data)->out.back().complete = true;
      return 0;
    };
    return s;
  }();
  llhttp_t p;
  llhttp_init(&p, HTTP_RESPONSE, &settings);
  p.data = &state;
  llhttp_execute(&p, bytes.data(), bytes.size());
  return state.out;
}

// ---------------------------------------------------------------- the sim rig

struct Parked {
  HttpServerRequest request;
  HttpResponder responder;
};

struct SimRig {
  // `on_request` answers; by default the request is parked for the test to answer.
  explicit SimRig(HttpServerOptions options = {}) {
    server = HttpServer::create(env, std::move(options), [this](HttpServerRequest&& req, HttpResponder r) {
               seen.push_back(req.method + " " + req.target);
               if (on_request) {
                 on_request(req, r);
               } else {
                 parked.push_back({std::move(req), std::move(r)});
               }
             }).value();
  }

  // Drives the server until pred holds: polls its sockets, fires due timers and reads what
  // the clients received. When nothing happens it waits for a client socket to become
  // readable (an event, bounded) rather than sleeping.
  bool drive_until(const std::function<bool()>& pred, std::vector<RawClient*> clients = {}) {
    for (int i = 0; i < 2000; ++i) {
      std::size_t work = env.poll_fds() + env.fire_due_timers();
      for (RawClient* c : clients) c->read_available();
      if (pred()) return true;
      if (work == 0) {
        std::vector<pollfd> fds;
        for (RawClient* c : clients) {
          if (c->fd() >= 0 && !c->eof()) fds.push_back({c->fd(), POLLIN, 0});
        }
        ::poll(fds.data(), fds.size(), 5);
      }
    }
    return pred();
  }
  // Drives until nothing more happens (a few quiet rounds).
  void settle(std::vector<RawClient*> clients = {}) {
    int quiet = 0;
    for (int i = 0; i < 200 && quiet < 3; ++i) {
      std::size_t work = env.poll_fds() + env.fire_due_timers();
      for (RawClient* c : clients) c->read_available();
      quiet = work == 0 ? quiet + 1 : 0;
      if (work == 0) {
        std::vector<pollfd> fds;
        for (RawClient* c : clients) {
          if (c->fd() >= 0 && !c->eof()) fds.push_back({c->fd(), POLLIN, 0});
        }
        ::poll(fds.data(), fds.size(), 1);
      }
    }
  }
  void advance(Duration d) {
    env.set_now(env.now() + d);
    env.fire_due_timers();
  }

  SimEnvironment env{11};
  std::vector<std::string> seen;
  std::vector<Parked> parked;
  std::function<void(HttpServerRequest&, HttpResponder&)> on_request;
  std::unique_ptr<HttpServer> server;
};

// A handler that echoes "<method> <target> <body>" with 200.
void echo(HttpServerRequest& req, HttpResponder& r) {
  HttpHeaders h{{"Content-Type", "text/plain"}};
  if (auto v = req.headers.get("x-custom")) h.add("X-Got-Custom", std::string(*v));
  (void)r.respond(200, std::move(h), req.method + " " + req.target + " " + req.body);
}

// ---------------------------------------------------------------- creation

TEST(HttpServer, CreateRejectsBadOptionsAndNamesThem) {
  SimEnvironment env(1);
  auto handler = [](HttpServerRequest&&, HttpResponder) {};
  auto r1 = HttpServer::create(env, {.max_connections = 0}, handler);
  ASSERT_THAT(r1, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("max_connections")));
  auto r2 = HttpServer::create(env, {.bind_address = "localhost"}, handler);
  ASSERT_FALSE(r2.ok());
  EXPECT_THAT(r2.error().message(), HasSubstr("'localhost' is not a numeric"));
  auto r3 = HttpServer::create(env, {.max_header_bytes = 1u << 20}, handler);
  ASSERT_FALSE(r3.ok());
  EXPECT_THAT(r3.error().message(), HasSubstr("max_header_bytes"));
  auto r4 = HttpServer::create(env, {.idle_timeout = Duration::zero()}, handler);
  ASSERT_FALSE(r4.ok());
  EXPECT_THAT(r4.error().message(), HasSubstr("idle_timeout"));
  auto r5 = HttpServer::create(env, {}, nullptr);
  ASSERT_THAT(r5, StatusIs(ErrorKind::kInvalidArgument));
}

TEST(HttpServer, BindFailureNamesAddressAndPort) {
  SimEnvironment env(1);
  auto handler = [](HttpServerRequest&&, HttpResponder) {};
  auto first = HttpServer::create(env, {}, handler).value();
  ASSERT_NE(first->port(), 0);
  EXPECT_EQ(first->base_url(), "http://127.0.0.1:" + std::to_string(first->port()));
  auto second = HttpServer::create(env, {.port = first->port()}, handler);
  ASSERT_THAT(second,
              StatusIs(ErrorKind::kAlreadyExists, HasSubstr("bind 127.0.0.1:" + std::to_string(first->port()))));
  auto foreign = HttpServer::create(env, {.bind_address = "192.0.2.1"}, handler);  // TEST-NET-1, not ours
  ASSERT_FALSE(foreign.ok());
  EXPECT_THAT(foreign.error().message(), HasSubstr("192.0.2.1:0"));
}

TEST(HttpServer, ListensOnIpv6Loopback) {
  SimEnvironment env(1);
  auto server = HttpServer::create(env, {.bind_address = "::1"},
                                   [](HttpServerRequest&&, HttpResponder r) { (void)r.respond(200, {}, "six"); });
  if (!server.ok()) GTEST_SKIP() << "no IPv6 loopback here: " << server.error().to_string();
  EXPECT_EQ((*server)->base_url(), "http://[::1]:" + std::to_string((*server)->port()));
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  a.sin6_port = htons((*server)->port());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  std::string_view req = "GET / HTTP/1.1\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  std::string got;
  for (int i = 0; i < 2000 && !got.ends_with("six"); ++i) {
    env.poll_fds();
    char buf[256];
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
    pollfd p{fd, POLLIN, 0};
    if (n <= 0) ::poll(&p, 1, 5);
  }
  ::close(fd);
  EXPECT_TRUE(got.starts_with("HTTP/1.1 200 OK\r\n")) << got;
  EXPECT_TRUE(got.ends_with("six")) << got;
}

TEST(HttpServer, StopReleasesThePortAndIsIdempotent) {
  SimRig rig;
  std::uint16_t port = rig.server->port();
  {
    RawClient c(port);
    EXPECT_TRUE(c.connected());
    ASSERT_TRUE(rig.drive_until([&] { return rig.server->stats().connections_open == 1; }, {&c}));
  }
  rig.server->stop();
  rig.server->stop();
  EXPECT_EQ(rig.server->stats().connections_open, 0u);
  RawClient refused(port);
  EXPECT_FALSE(refused.connected());
  rig.server.reset();  // the destructor stops again: nothing happens
}

// ---------------------------------------------------------------- keep-alive, pipelining, bodies

TEST(HttpServer, KeepAliveServesManyRequestsOnOneConnection) {
  SimRig rig;
  rig.on_request = echo;
  RawClient c(rig.server->port());
  for (int i = 0; i < 10; ++i) {
    c.send("GET /n/" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_TRUE(rig.drive_until(
        [&] { return parse_responses(c.received()).size() == 1 && parse_responses(c.received())[0].complete; }, {&c}));
    auto r = parse_responses(c.take())[0];
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "GET /n/" + std::to_string(i) + " ");
    EXPECT_EQ(r.headers.get("content-length"), std::to_string(r.body.size()));
    EXPECT_FALSE(r.headers.contains("connection"));
  }
  EXPECT_FALSE(c.eof());
  auto s = rig.server->stats();
  EXPECT_EQ(s.connections_accepted, 1u);
  EXPECT_EQ(s.requests, 10u);
  EXPECT_EQ(s.responses_2xx, 10u);
}

TEST(HttpServer, PipelinedRequestsAreAnsweredInOrder) {
  SimRig rig;
  // /slow answers 1 s later (virtual), the others at once.
  rig.on_request = [&](HttpServerRequest& req, HttpResponder& r) {
    if (req.target == "/slow") {
      rig.env.add_timer(rig.env.now() + std::chrono::seconds(1), [r]() mutable { (void)r.respond(200, {}, "slow"); });
    } else {
      (void)r.respond(200, {}, req.target.substr(1));
    }
  };
  RawClient c(rig.server->port());
  c.send(
      "GET /slow HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nxyGET /c "
      "HTTP/1.1\r\n\r\n");
  rig.settle({&c});
  // The later requests wait for the first: not even handed over yet.
  EXPECT_EQ(rig.seen, std::vector<std::string>{"GET /slow"});
  EXPECT_TRUE(c.received().empty());
  rig.advance(std::chrono::seconds(1));
  ASSERT_TRUE(rig.drive_until([&] { return parse_responses(c.received()).size() == 4; }, {&c}));
  auto rs = parse_responses(c.received());
  ASSERT_EQ(rs.size(), 4u);
  EXPECT_EQ(rs[0].body, "slow");
  EXPECT_EQ(rs[1].body, "a");
  EXPECT_EQ(rs[2].body, "b");
  EXPECT_EQ(rs[3].body, "c");
  EXPECT_EQ(rig.seen, (std::vector<std::string>{"GET /slow", "GET /a", "POST /b", "GET /c"}));
  EXPECT_EQ(rig.server->stats().connections_accepted, 1u);
}

TEST(HttpServer, ChunkedRequestBodyArrivingInPieces) {
  SimRig rig;
  std::size_t header_count = 0;
  rig.on_request = [&](HttpServerRequest& req, HttpResponder& r) {
    header_count = req.headers.size();  // the trailer fields are not among them
    echo(req, r);
  };
  RawClient c(rig.server->port());
  std::string request =
      "POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Custom: 7\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n"
      "X-Trailer: dropped\r\nX-Trailer-2: dropped\r\n\r\n";
  // Byte-sized pieces with the server driven in between.
  for (char ch : request) {
    c.send(std::string_view(&ch, 1));
    rig.env.poll_fds();
  }
  ASSERT_TRUE(rig.drive_until(
      [&] { return !parse_responses(c.received()).empty() && parse_responses(c.received())[0].complete; }, {&c}));
  auto r = parse_responses(c.received())[0];
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /upload hello world");
  EXPECT_EQ(r.headers.get("x-got-custom"), "7");
  EXPECT_EQ(header_count, 2u);
}

TEST(HttpServer, RequestFieldsAsReceived) {
  SimRig rig;
  RawClient c(rig.server->port());
  c.send(
      "PUT /v1/x?stream=true&a=b HTTP/1.1\r\nHost: h\r\nX-Multi: one\r\nx-multi:  two  \r\nX-Empty:\r\n"
      "Content-Length: 3\r\n\r\nabc");
  ASSERT_TRUE(rig.drive_until([&] { return rig.parked.size() == 1; }, {&c}));
  const HttpServerRequest& req = rig.parked[0].request;
  EXPECT_EQ(req.method, "PUT");
  EXPECT_EQ(req.target, "/v1/x?stream=true&a=b");
  EXPECT_EQ(req.path(), "/v1/x");
  EXPECT_EQ(req.query(), "stream=true&a=b");
  EXPECT_EQ(req.version_major, 1);
  EXPECT_EQ(req.version_minor, 1);
  EXPECT_EQ(req.headers.get_all("X-MULTI"), (std::vector<std::string_view>{"one", "two"}));
  EXPECT_EQ(req.headers.get("x-empty"), "");
  EXPECT_EQ(req.headers.get("host"), "h");
  EXPECT_EQ(req.body, "abc");
  EXPECT_EQ(req.headers.size(), 5u);
}

TEST(HttpServer, ExpectContinueIsAnsweredBeforeTheBody) {
  SimRig rig;
  rig.on_request = echo;
  RawClient c(rig.server->port());
  c.send("POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return c.received().find("\r\n\r\n") != std::string::npos; }, {&c}));
  EXPECT_EQ(c.take(), "HTTP/1.1 100 Continue\r\n\r\n");
  EXPECT_TRUE(rig.seen.empty());
  c.send("hello");
  ASSERT_TRUE(rig.drive_until(
      [&] { return !parse_responses(c.received()).empty() && parse_responses(c.received())[0].complete; }, {&c}));
  EXPECT_EQ(parse_responses(c.received())[0].body, "POST /e hello");
  EXPECT_EQ(rig.server->stats().responses_1xx, 1u);
  // An expectation the server does not know: 417 and close.
  RawClient d(rig.server->port());
  d.send("POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: teapot\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return d.eof(); }, {&d}));
  EXPECT_EQ(parse_responses(d.received())[0].status, 417);
}

TEST(HttpServer, HeadGetsHeadersWithoutBody) {
  SimRig rig;
  rig.on_request = echo;
  RawClient c(rig.server->port());
  c.send("HEAD /h HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return c.received().find("\r\n\r\n") != std::string::npos; }, {&c}));
  rig.settle({&c});
  std::string got = c.take();
  EXPECT_THAT(got, HasSubstr("Content-Length: 8\r\n"));  // "HEAD /h "
  EXPECT_TRUE(got.ends_with("\r\n\r\n")) << got;
  // No stray body bytes: the next response starts cleanly.
  c.send("GET /g HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until(
      [&] { return !parse_responses(c.received()).empty() && parse_responses(c.received())[0].complete; }, {&c}));
  EXPECT_EQ(parse_responses(c.received())[0].body, "GET /g ");
}

TEST(HttpServer, Http10AndConnectionCloseAreHonoured) {
  SimRig rig;
  rig.on_request = echo;
  {
    RawClient c(rig.server->port());
    c.send("GET /old HTTP/1.0\r\n\r\n");
    ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
    auto r = parse_responses(c.received());
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].body, "GET /old ");
    EXPECT_EQ(r[0].headers.get("connection"), "close");
  }
  {
    RawClient c(rig.server->port());
    c.send("GET /old-ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    ASSERT_TRUE(rig.drive_until([&] { return !parse_responses(c.received()).empty(); }, {&c}));
    EXPECT_EQ(parse_responses(c.take())[0].headers.get("connection"), "keep-alive");
    c.send("GET /again HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    ASSERT_TRUE(rig.drive_until([&] { return !parse_responses(c.received()).empty(); }, {&c}));
    EXPECT_EQ(parse_responses(c.take())[0].body, "GET /again ");
    EXPECT_FALSE(c.eof());
  }
  {
    RawClient c(rig.server->port());
    c.send("GET /bye HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n");
    ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
    auto r = parse_responses(c.received());
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].headers.get("connection"), "close");
  }
  // The handler may close too.
  rig.on_request = [](HttpServerRequest&, HttpResponder& r) {
    (void)r.respond(200, {{"Connection", "close"}}, "last");
  };
  RawClient c(rig.server->port());
  c.send("GET / HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
  EXPECT_EQ(parse_responses(c.received())[0].body, "last");
  EXPECT_EQ(rig.seen.size(), 5u);
}

// ---------------------------------------------------------------- rejections

TEST(HttpServer, MalformedRequestGets400AndClose) {
  SimRig rig;
  rig.on_request = echo;
  for (std::string bad : {"GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
                          "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
                          "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                          "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                          "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nabc",
                          "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"}) {
    RawClient c(rig.server->port());
    c.send(bad);
    ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c})) << bad;
    auto r = parse_responses(c.received());
    ASSERT_EQ(r.size(), 1u) << bad;
    EXPECT_EQ(r[0].status, 400) << bad;
    EXPECT_THAT(r[0].body, HasSubstr("malformed request"));
    EXPECT_EQ(r[0].headers.get("connection"), "close");
  }
  RawClient v(rig.server->port());
  v.send("GET / HTTP/2.0\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return v.eof(); }, {&v}));
  EXPECT_EQ(parse_responses(v.received())[0].status, 505);
  EXPECT_TRUE(rig.seen.empty());
  EXPECT_EQ(rig.server->stats().rejected_malformed, 8u);
  // The server discards what a rejected client still sends until the client closes too.
  EXPECT_EQ(rig.server->stats().connections_open, 1u);
  v.close();
  EXPECT_TRUE(rig.drive_until([&] { return rig.server->stats().connections_open == 0; }));
}

TEST(HttpServer, HeadLargerThanTheBoundGets431) {
  SimRig rig({.max_header_bytes = 1024});
  rig.on_request = echo;
  RawClient c(rig.server->port());
  c.send("GET / HTTP/1.1\r\nX-Big: " + std::string(2000, 'a') + "\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
  auto r = parse_responses(c.received());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].status, 431);
  EXPECT_THAT(r[0].body, HasSubstr("max_header_bytes"));
  // Just under the bound is fine.
  RawClient ok(rig.server->port());
  ok.send("GET / HTTP/1.1\r\nX-Big: " + std::string(900, 'a') + "\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return !parse_responses(ok.received()).empty(); }, {&ok}));
  EXPECT_EQ(parse_responses(ok.received())[0].status, 200);
  EXPECT_EQ(rig.server->stats().rejected_too_large, 1u);
}

TEST(HttpServer, BodyLargerThanTheBoundGets413WithoutReadingIt) {
  SimRig rig({.max_body_bytes = 1000});
  rig.on_request = echo;
  {
    // Only the head is sent: the answer comes from Content-Length alone.
    RawClient c(rig.server->port());
    c.send("POST / HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n");
    ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
    auto r = parse_responses(c.received());
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].status, 413);
    EXPECT_THAT(r[0].body, HasSubstr("100000000 bytes"));
  }
  {
    // With Expect: 100-continue the client is told before it sends anything.
    RawClient c(rig.server->port());
    c.send("POST / HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n");
    ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
    auto r = parse_responses(c.received());
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].status, 413);
  }
  {
    // A chunked body is refused at the chunk that would cross the bound.
    RawClient c(rig.server->port());
    c.send("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n" + std::string(512, 'x') + "\r\n");
    rig.settle({&c});
    EXPECT_TRUE(c.received().empty());
    c.send("1000\r\n");  // a 4096-byte chunk announced
    ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
    EXPECT_EQ(parse_responses(c.received())[0].status, 413);
  }
  EXPECT_TRUE(rig.seen.empty());
  EXPECT_EQ(rig.server->stats().rejected_too_large, 3u);
}

// Request smuggling: a body whose end the server and a proxy in front could see in different
// places. Each is refused with 400 and the connection closed; the request hidden in the body
// never reaches the handler.
TEST(HttpServer, AmbiguousFramingGets400AndClose) {
  SimRig rig;
  rig.on_request = echo;
  const std::string hidden = "GET /smuggled HTTP/1.1\r\n\r\n";
  for (std::string bad : {
           "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden,
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + hidden,
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + hidden,
           "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n" + hidden,
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden,
       }) {
    RawClient c(rig.server->port());
    c.send(bad);
    ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c})) << bad;
    auto r = parse_responses(c.received());
    ASSERT_EQ(r.size(), 1u) << bad;
    EXPECT_EQ(r[0].status, 400) << bad;
    EXPECT_THAT(r[0].body, HasSubstr("malformed request"));
    EXPECT_EQ(r[0].headers.get("connection"), "close");
  }
  EXPECT_TRUE(rig.seen.empty());
  EXPECT_EQ(rig.server->stats().rejected_malformed, 5u);
}

// llhttp joins an obsolete line folding into one value and takes a bare LF in some places;
// the server takes neither (one line ending, CRLF, everywhere in a head).
TEST(HttpServer, ObsoleteLineFoldingAndBareLfGet400) {
  SimRig rig;
  rig.on_request = echo;
  for (auto [bad, why] :
       {std::pair<std::string, std::string>{"GET / HTTP/1.1\r\nX-Custom: a\r\n b\r\n\r\n", "obsolete line folding"},
        {"GET / HTTP/1.1\n\n", "bare LF"},
        {"GET / HTTP/1.1\nHost: h\r\n\r\n", "bare LF"},
        {"GET / HTTP/1.1\r\nHost: h\r\n\n", "bare LF"},
        {"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", "malformed request"}}) {
    RawClient c(rig.server->port());
    c.send(bad);
    ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c})) << bad;
    auto r = parse_responses(c.received());
    ASSERT_EQ(r.size(), 1u) << bad;
    EXPECT_EQ(r[0].status, 400) << bad;
    EXPECT_THAT(r[0].body, HasSubstr(why));
  }
  EXPECT_TRUE(rig.seen.empty());
}

TEST(HttpServer, VersionsLlhttpDoesNotKnowGet505) {
  SimRig rig;
  rig.on_request = echo;
  for (std::string bad : {"GET / HTTP/1.2\r\n\r\n", "GET / HTTP/0.9\r\n\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"}) {
    RawClient c(rig.server->port());
    c.send(bad);
    ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c})) << bad;
    auto r = parse_responses(c.received());
    ASSERT_EQ(r.size(), 1u) << bad;
    EXPECT_EQ(r[0].status, 505) << bad;
  }
  EXPECT_TRUE(rig.seen.empty());
}

// No protocol switch: an Upgrade or CONNECT request is answered like any other and the
// connection closes after the answer; the bytes after it are not read as HTTP.
TEST(HttpServer, UpgradeAndConnectAreAnsweredThenClosed) {
  SimRig rig;
  rig.on_request = echo;
  const std::string after = "GET /not-http HTTP/1.1\r\n\r\n";
  for (std::string req : {"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + after,
                          "CONNECT example.com:443 HTTP/1.1\r\n\r\n" + after}) {
    RawClient c(rig.server->port());
    c.send(req);
    ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c})) << req;
    auto r = parse_responses(c.received());
    ASSERT_EQ(r.size(), 1u) << req;
    EXPECT_EQ(r[0].status, 200);
    EXPECT_EQ(r[0].headers.get("connection"), "close");
  }
  EXPECT_EQ(rig.seen, (std::vector<std::string>{"GET /ws", "CONNECT example.com:443"}));
}

// llhttp skips whitespace without reporting it; the head as received is bounded all the same.
TEST(HttpServer, WhitespaceInAHeadCountsTowardsItsBound) {
  SimRig rig;
  rig.on_request = echo;
  RawClient c(rig.server->port());
  c.send("GET / HTTP/1.1\r\nX-Custom:" + std::string(90u << 10, ' ') + "a\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
  auto r = parse_responses(c.received());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].status, 431);
  EXPECT_THAT(r[0].body, HasSubstr("as received"));
  EXPECT_TRUE(rig.seen.empty());
  EXPECT_EQ(rig.server->stats().rejected_too_large, 1u);
}

TEST(HttpServer, ConnectionsBeyondTheLimitGet503AndClose) {
  SimRig rig({.max_connections = 2});
  rig.on_request = echo;
  RawClient a(rig.server->port()), b(rig.server->port());
  ASSERT_TRUE(rig.drive_until([&] { return rig.server->stats().connections_open == 2; }, {&a, &b}));
  RawClient c(rig.server->port());
  ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&a, &b, &c}));
  auto r = parse_responses(c.received());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].status, 503);
  EXPECT_EQ(r[0].headers.get("connection"), "close");
  // The two within the limit still work; a closed one frees its slot.
  a.send("GET /a HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return !parse_responses(a.received()).empty(); }, {&a}));
  EXPECT_EQ(parse_responses(a.received())[0].status, 200);
  b.close();
  ASSERT_TRUE(rig.drive_until([&] { return rig.server->stats().connections_open == 1; }, {&a}));
  RawClient d(rig.server->port());
  d.send("GET /d HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return !parse_responses(d.received()).empty(); }, {&d}));
  EXPECT_EQ(parse_responses(d.received())[0].status, 200);
  auto s = rig.server->stats();
  EXPECT_EQ(s.rejected_connection_limit, 1u);
  EXPECT_EQ(s.connections_accepted, 4u);
}

// ---------------------------------------------------------------- timeouts (virtual time)

TEST(HttpServer, SlowHeadGets408AtTheHeaderTimeout) {
  SimRig rig({.header_timeout = std::chrono::seconds(5)});
  rig.on_request = echo;
  RawClient slow(rig.server->port()), silent(rig.server->port());
  ASSERT_TRUE(rig.drive_until([&] { return rig.server->stats().connections_open == 2; }, {&slow, &silent}));
  // A slow-loris trickles header lines: progress does not extend the head's deadline.
  for (int i = 0; i < 4; ++i) {
    slow.send(i == 0 ? "GET / HTTP/1.1\r\n" : "X-Line: " + std::to_string(i) + "\r\n");
    rig.settle({&slow});
    rig.advance(std::chrono::seconds(1));
  }
  rig.settle({&slow, &silent});
  EXPECT_FALSE(slow.eof());
  EXPECT_TRUE(slow.received().empty());
  rig.advance(std::chrono::seconds(1));  // 5 s since the accept
  ASSERT_TRUE(rig.drive_until([&] { return slow.eof() && silent.eof(); }, {&slow, &silent}));
  for (RawClient* c : {&slow, &silent}) {
    auto r = parse_responses(c->received());
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].status, 408);
    EXPECT_THAT(r[0].body, HasSubstr("header_timeout"));
  }
  EXPECT_EQ(rig.server->stats().rejected_timeout, 2u);
  EXPECT_TRUE(rig.seen.empty());
}

TEST(HttpServer, IdleKeepAliveConnectionIsClosedAtTheIdleTimeout) {
  SimRig rig({.header_timeout = std::chrono::seconds(5), .idle_timeout = std::chrono::seconds(30)});
  rig.on_request = echo;
  RawClient c(rig.server->port());
  c.send("GET /1 HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return !parse_responses(c.received()).empty(); }, {&c}));
  c.take();
  // Idle, not reading a head: the header timeout does not apply.
  rig.advance(std::chrono::seconds(29));
  rig.settle({&c});
  EXPECT_FALSE(c.eof());
  // A request restarts the clock.
  c.send("GET /2 HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return !parse_responses(c.received()).empty(); }, {&c}));
  c.take();
  rig.advance(std::chrono::seconds(29));
  rig.settle({&c});
  EXPECT_FALSE(c.eof());
  rig.advance(std::chrono::seconds(1));
  ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
  EXPECT_TRUE(c.received().empty());  // closed without a word
  auto s = rig.server->stats();
  EXPECT_EQ(s.closed_idle, 1u);
  EXPECT_EQ(s.connections_open, 0u);
  EXPECT_EQ(s.rejected_timeout, 0u);
}

TEST(HttpServer, StalledBodyGets408AtTheIoTimeout) {
  SimRig rig({.io_timeout = std::chrono::seconds(10)});
  rig.on_request = echo;
  RawClient c(rig.server->port());
  c.send("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
  rig.settle({&c});
  rig.advance(std::chrono::seconds(9));
  c.send("def");  // progress: the silence starts again
  rig.settle({&c});
  rig.advance(std::chrono::seconds(9));
  rig.settle({&c});
  EXPECT_FALSE(c.eof());
  rig.advance(std::chrono::seconds(1));
  ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
  auto r = parse_responses(c.received());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].status, 408);
  EXPECT_THAT(r[0].body, HasSubstr("io_timeout"));
}

TEST(HttpServer, HandlerMayAnswerLaterFromATimer) {
  SimRig rig;
  rig.on_request = [&](HttpServerRequest& req, HttpResponder& r) {
    std::string body = "late " + req.target;
    rig.env.add_timer(rig.env.now() + std::chrono::milliseconds(1500), [r, body]() mutable {
      (void)r.respond(201, {{"X-Late", "yes"}}, body);
    });
  };
  RawClient c(rig.server->port());
  c.send("GET /x HTTP/1.1\r\n\r\n");
  rig.settle({&c});
  EXPECT_TRUE(c.received().empty());
  rig.advance(std::chrono::milliseconds(1499));
  rig.settle({&c});
  EXPECT_TRUE(c.received().empty());
  rig.advance(std::chrono::milliseconds(1));
  ASSERT_TRUE(rig.drive_until([&] { return !parse_responses(c.received()).empty(); }, {&c}));
  auto r = parse_responses(c.received())[0];
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.body, "late /x");
  EXPECT_EQ(r.headers.get("x-late"), "yes");
}

// ---------------------------------------------------------------- the responder contract

TEST(HttpServer, ResponderMisuseIsAnErrorAndChangesNothing) {
  SimRig rig;
  RawClient c(rig.server->port());
  c.send("GET / HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return rig.parked.size() == 1; }, {&c}));
  HttpResponder r = rig.parked[0].responder;
  EXPECT_TRUE(r.open());
  auto expect_invalid = [](const Status& s, std::string_view what) {
    ASSERT_THAT(s, StatusIs(ErrorKind::kInvalidArgument)) << what;
    EXPECT_THAT(s.error().message(), HasSubstr(what));
  };
  expect_invalid(r.respond(99, {}, ""), "status 99");
  expect_invalid(r.respond(700, {}, ""), "status 700");
  expect_invalid(r.respond(200, {{"Bad Name", "x"}}, ""), "not a token");
  expect_invalid(r.respond(200, {{"X-Inject", "a\r\nX-Evil: 1"}}, ""), "CR, LF or NUL");
  expect_invalid(r.respond(200, {{"Content-Length", "3"}}, "abc"), "set by the server");
  expect_invalid(r.respond(204, {}, "body"), "has no body");
  expect_invalid(r.write("x"), "without start_stream");
  expect_invalid(r.end(), "without start_stream");
  rig.settle({&c});
  EXPECT_TRUE(c.received().empty());
  EXPECT_TRUE(r.open());
  ASSERT_THAT(r.respond(204, {}, ""), IsOk());
  EXPECT_FALSE(r.open());
  expect_invalid(r.respond(200, {}, "again"), "answered already");
  ASSERT_TRUE(rig.drive_until([&] { return c.received().find("\r\n\r\n") != std::string::npos; }, {&c}));
  EXPECT_TRUE(c.received().starts_with("HTTP/1.1 204 No Content\r\n")) << c.received();
  EXPECT_THAT(c.received(), Not(HasSubstr("Content-Length")));
  // An empty responder.
  HttpResponder empty;
  EXPECT_FALSE(empty.open());
  EXPECT_THAT(empty.respond(200, {}, ""), StatusIs(ErrorKind::kCancelled));
}

TEST(HttpServer, ResponderUsedAfterTheClientWentAway) {
  SimRig rig;
  {
    RawClient c(rig.server->port());
    c.send("POST /work HTTP/1.1\r\nContent-Length: 1\r\n\r\nx");
    ASSERT_TRUE(rig.drive_until([&] { return rig.parked.size() == 1; }, {&c}));
    EXPECT_TRUE(rig.parked[0].responder.open());
  }  // the client closes while its request is being handled
  ASSERT_TRUE(rig.drive_until([&] { return rig.server->stats().closed_by_client == 1; }));
  HttpResponder r = rig.parked[0].responder;
  EXPECT_FALSE(r.open());
  EXPECT_EQ(r.buffered_bytes(), 0u);
  auto s = r.respond(200, {}, "too late");
  ASSERT_THAT(s, StatusIs(ErrorKind::kCancelled, HasSubstr("connection is closed")));
  EXPECT_THAT(r.start_stream(200, {}), StatusIs(ErrorKind::kCancelled));
  EXPECT_THAT(r.write("x"), StatusIs(ErrorKind::kCancelled));
  EXPECT_THAT(r.end(), StatusIs(ErrorKind::kCancelled));
  r.abort();  // a no-op
  EXPECT_EQ(rig.server->stats().connections_open, 0u);
  EXPECT_EQ(rig.server->stats().aborted, 0u);
  // The parked request is dropped; ASan checks nothing leaks.
  rig.parked.clear();
}

TEST(HttpServer, UnansweredRequestHoldsItsConnectionUntilTheClientLeaves) {
  SimRig rig({.header_timeout = std::chrono::seconds(1),
              .idle_timeout = std::chrono::seconds(1),
              .io_timeout = std::chrono::seconds(1)});
  rig.on_request = [](HttpServerRequest&, HttpResponder&) {};  // drops the responder
  {
    RawClient c(rig.server->port());
    c.send("GET /void HTTP/1.1\r\n\r\n");
    ASSERT_TRUE(rig.drive_until([&] { return rig.seen.size() == 1; }, {&c}));
    // No server timeout applies while the handler has the request.
    rig.advance(std::chrono::hours(1));
    rig.settle({&c});
    EXPECT_FALSE(c.eof());
    EXPECT_EQ(rig.server->stats().connections_open, 1u);
  }
  ASSERT_TRUE(rig.drive_until([&] { return rig.server->stats().connections_open == 0; }));
  EXPECT_EQ(rig.server->stats().closed_by_client, 1u);
  EXPECT_EQ(rig.env.pending_watches(), 1u);  // the listener's only
}

TEST(HttpServer, HandlerThatThrowsGets500AndTheConnectionLives) {
  SimRig rig;
  rig.on_request = [](HttpServerRequest& req, HttpResponder& r) {
    if (req.target == "/throw") throw std::runtime_error("boom");
    if (req.target == "/throw-mid-stream") {
      (void)r.start_stream(200, {});
      (void)r.write("partial");
      throw std::runtime_error("boom");
    }
    (void)r.respond(200, {}, "fine");
  };
  RawClient c(rig.server->port());
  c.send("GET /throw HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return !parse_responses(c.received()).empty(); }, {&c}));
  EXPECT_EQ(parse_responses(c.take())[0].status, 500);
  c.send("GET /ok HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return !parse_responses(c.received()).empty(); }, {&c}));
  EXPECT_EQ(parse_responses(c.take())[0].body, "fine");
  // After a stream started, the connection is cut.
  c.send("GET /throw-mid-stream HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
  auto r = parse_responses(c.received());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_FALSE(r[0].complete);
  EXPECT_EQ(r[0].body, "partial");
  EXPECT_EQ(rig.server->stats().handler_errors, 2u);
}

TEST(HttpServer, StreamedChunksAndAbortOnTheWire) {
  SimRig rig;
  RawClient c(rig.server->port());
  c.send("GET /s HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return rig.parked.size() == 1; }, {&c}));
  HttpResponder r = rig.parked[0].responder;
  ASSERT_THAT(r.start_stream(200, {{"Content-Type", "text/event-stream"}}), IsOk());
  ASSERT_THAT(r.write("data: one\n\n"), IsOk());
  ASSERT_THAT(r.write(""), IsOk());  // nothing: an empty chunk would end the body
  ASSERT_TRUE(rig.drive_until([&] { return c.received().find("data: one") != std::string::npos; }, {&c}));
  EXPECT_THAT(c.received(), HasSubstr("Transfer-Encoding: chunked\r\n"));
  EXPECT_TRUE(c.received().ends_with("\r\n\r\nb\r\ndata: one\n\n\r\n")) << c.received();
  ASSERT_THAT(r.end(), IsOk());
  ASSERT_TRUE(rig.drive_until([&] { return c.received().ends_with("0\r\n\r\n"); }, {&c}));
  auto parsed = parse_responses(c.take());
  ASSERT_EQ(parsed.size(), 1u);
  EXPECT_TRUE(parsed[0].complete);
  EXPECT_EQ(parsed[0].body, "data: one\n\n");
  // Next request on the same connection: abort mid-stream cuts it.
  c.send("GET /cut HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return rig.parked.size() == 2; }, {&c}));
  HttpResponder r2 = rig.parked[1].responder;
  ASSERT_THAT(r2.start_stream(200, {}), IsOk());
  ASSERT_THAT(r2.write("first"), IsOk());
  r2.abort();
  EXPECT_FALSE(r2.open());
  EXPECT_THAT(r2.write("more"), StatusIs(ErrorKind::kCancelled));
  ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
  auto cut = parse_responses(c.received());
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_FALSE(cut[0].complete);
  EXPECT_EQ(cut[0].body, "first");
  EXPECT_EQ(rig.server->stats().aborted, 1u);
}

TEST(HttpServer, StreamToHttp10ClientEndsByClosing) {
  SimRig rig;
  RawClient c(rig.server->port());
  c.send("GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return rig.parked.size() == 1; }, {&c}));
  HttpResponder r = rig.parked[0].responder;
  ASSERT_THAT(r.start_stream(200, {}), IsOk());
  ASSERT_THAT(r.write("raw "), IsOk());
  ASSERT_THAT(r.write("bytes"), IsOk());
  ASSERT_THAT(r.end(), IsOk());
  ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
  EXPECT_THAT(c.received(), HasSubstr("Connection: close\r\n"));
  EXPECT_THAT(c.received(), Not(HasSubstr("chunked")));
  EXPECT_TRUE(c.received().ends_with("\r\n\r\nraw bytes")) << c.received();
}

TEST(HttpServer, SlowReaderIsCutAtMaxOutputBytes) {
  SimRig rig({.max_output_bytes = 256u << 10});
  RawClient c(rig.server->port(), /*rcvbuf=*/4096);  // and it never reads
  c.send("GET /firehose HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return rig.parked.size() == 1; }));
  HttpResponder r = rig.parked[0].responder;
  ASSERT_THAT(r.start_stream(200, {}), IsOk());
  std::string chunk(64u << 10, 'z');
  Status last = ok_status();
  int writes = 0;
  // The kernel's buffers take a few MB at most; then our bound trips.
  for (; writes < 2000 && last.ok(); ++writes) {
    last = r.write(chunk);
    if (last.ok()) {
      EXPECT_LE(r.buffered_bytes(), (256u << 10));
    }
  }
  ASSERT_THAT(last, StatusIs(ErrorKind::kCancelled)) << "never hit max_output_bytes after " << writes << " writes";
  EXPECT_THAT(last.error().message(), HasSubstr("max_output_bytes"));
  EXPECT_FALSE(r.open());
  EXPECT_EQ(rig.server->stats().closed_slow_reader, 1u);
  EXPECT_EQ(rig.server->stats().connections_open, 0u);
}

TEST(HttpServer, UnreadResponseIsDroppedAtTheIoTimeout) {
  SimRig rig({.io_timeout = std::chrono::seconds(20)});
  RawClient c(rig.server->port(), /*rcvbuf=*/4096);
  c.send("GET /big HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return rig.parked.size() == 1; }));
  HttpResponder r = rig.parked[0].responder;
  ASSERT_THAT(r.respond(200, {}, std::string(32u << 20, 'b')), IsOk());  // a whole response: any size
  EXPECT_GT(r.buffered_bytes(), 0u);
  EXPECT_FALSE(r.open());  // answered; only the writing is left
  rig.settle();
  rig.advance(std::chrono::seconds(19));
  rig.settle();
  EXPECT_EQ(rig.server->stats().connections_open, 1u);
  rig.advance(std::chrono::seconds(1));
  EXPECT_EQ(rig.server->stats().connections_open, 0u);
  EXPECT_EQ(rig.server->stats().closed_slow_reader, 1u);
}

TEST(HttpServer, StopClosesConnectionsWithResponsesInFlight) {
  SimRig rig;
  RawClient a(rig.server->port()), b(rig.server->port());
  a.send("GET /a HTTP/1.1\r\n\r\n");
  b.send("GET /b HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return rig.parked.size() == 2; }, {&a, &b}));
  ASSERT_THAT(rig.parked[1].responder.start_stream(200, {}), IsOk());
  rig.server->stop();
  ASSERT_TRUE(rig.drive_until([&] { return a.eof() && b.eof(); }, {&a, &b}));
  for (auto& p : rig.parked) {
    EXPECT_FALSE(p.responder.open());
    auto s = p.responder.respond(200, {}, "x");
    EXPECT_THAT(s, StatusIs(ErrorKind::kCancelled, HasSubstr("server stopped")));
  }
  EXPECT_EQ(rig.server->stats().connections_open, 0u);
  EXPECT_EQ(rig.env.pending_watches(), 0u);
}

TEST(HttpServer, StopFromInsideTheHandler) {
  SimRig rig;
  rig.on_request = [&](HttpServerRequest&, HttpResponder& r) {
    rig.server->stop();
    EXPECT_THAT(r.respond(200, {}, "x"), StatusIs(ErrorKind::kCancelled));
  };
  RawClient c(rig.server->port());
  c.send("GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(rig.drive_until([&] { return c.eof(); }, {&c}));
  EXPECT_EQ(rig.seen.size(), 1u);
  EXPECT_TRUE(c.received().empty());
}

// ---------------------------------------------------------------- with the HttpClient, real environment

struct RealRig {
  explicit RealRig(HttpHandler handler, HttpServerOptions options = {}, HttpClientOptions client_options = {}) {
    server = HttpServer::create(*env, std::move(options), std::move(handler)).value();
    client_options.proxy = "";
    client = HttpClient::create(*env, std::move(client_options)).value();
  }
  ~RealRig() {
    client.reset();
    server.reset();
  }
  std::string url(const std::string& path) const { return server->base_url() + path; }

  // Runs body in a process and waits until it exits.
  void run(std::function<Task<>(Context&)> body) {
    auto w = rt->spawn_watched(std::move(body)).value();
    ExitReason r = w.exit->wait();
    EXPECT_TRUE(r.is_normal()) << r.to_string();
  }

  std::unique_ptr<Environment> env = make_real_environment({.workers = 2, .seed = 3});
  std::unique_ptr<Runtime> rt = Runtime::create(*env).value();
  std::unique_ptr<HttpServer> server;
  std::unique_ptr<HttpClient> client;
};

// Waits (polling, about 5 ms a step) until pred holds or `ms` pass; returns pred().
bool eventually(const std::function<bool()>& pred, int ms = 10000) {
  for (int waited = 0; waited < ms && !pred(); waited += 5) pause_ms(5);
  return pred();
}

HttpRequest get(std::string url) {
  HttpRequest r;
  r.url = std::move(url);
  return r;
}

// A slot through which the handler (loop thread) hands a responder to a process.
struct ResponderSlot {
  std::mutex mu;
  std::vector<HttpResponder> list;
  void put(HttpResponder r) {
    std::lock_guard lock(mu);
    list.push_back(std::move(r));
  }
  std::size_t size() {
    std::lock_guard lock(mu);
    return list.size();
  }
  HttpResponder at(std::size_t i) {
    std::lock_guard lock(mu);
    return list.at(i);
  }
};

TEST(HttpServerWithClient, RoundTripsAndKeepAlive) {
  RealRig rig([](HttpServerRequest&& req, HttpResponder r) {
    if (req.path() == "/status") {
      (void)r.respond(std::stoi(std::string(req.query())), {{"Retry-After", "3"}}, "status");
      return;
    }
    HttpHeaders h{{"Content-Type", "text/plain"}};
    if (auto v = req.headers.get("x-custom")) h.add("X-Got-Custom", std::string(*v));
    (void)r.respond(200, std::move(h), req.method + " " + req.target + " " + req.body);
  });
  rig.run([&](Context& ctx) -> Task<> {
    auto r = co_await rig.client->request(ctx, get(rig.url("/hello?x=1")));
    EXPECT_THAT(r, IsOk());
    if (!r.ok()) co_return;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "GET /hello?x=1 ");
    EXPECT_EQ(r->headers.get("content-type"), "text/plain");
    HttpRequest post = get(rig.url("/echo"));
    post.method = "POST";
    post.body = std::string(200'000, 'p');
    post.headers.add("X-Custom", "42");
    auto r2 = co_await rig.client->request(ctx, std::move(post));
    EXPECT_THAT(r2, IsOk());
    if (!r2.ok()) co_return;
    EXPECT_EQ(r2->body, "POST /echo " + std::string(200'000, 'p'));
    EXPECT_EQ(r2->headers.get("x-got-custom"), "42");
    // curl's own Expect: 100-continue when asked for.
    HttpRequest put = get(rig.url("/put"));
    put.method = "PUT";
    put.body = "expecting";
    put.headers.add("Expect", "100-continue");
    auto r3 = co_await rig.client->request(ctx, std::move(put));
    EXPECT_THAT(r3, IsOk());
    if (r3.ok()) {
      EXPECT_EQ(r3->body, "PUT /put expecting");
    }
    for (int status : {404, 429, 503}) {
      auto rs = co_await rig.client->request(ctx, get(rig.url("/status?" + std::to_string(status))));
      EXPECT_TRUE(rs.ok() && rs->status == status);
    }
    for (int i = 0; i < 20; ++i) {
      auto ri = co_await rig.client->request(ctx, get(rig.url("/n")));
      EXPECT_TRUE(ri.ok() && ri->status == 200);
    }
  });
  auto s = rig.server->stats();
  EXPECT_EQ(s.connections_accepted, 1u);  // one keep-alive connection for all 26
  EXPECT_EQ(s.requests, 26u);
  EXPECT_EQ(rig.client->connections_opened(), 1u);
}

TEST(HttpServerWithClient, StreamReadByTheSseParserWhileTheServerWrites) {
  ResponderSlot slot;
  RealRig rig([&](HttpServerRequest&&, HttpResponder r) {
    (void)r.start_stream(200, {{"Content-Type", "text/event-stream"}});
    (void)r.write("data: one\n\n");
    slot.put(std::move(r));  // the rest is written by the reading process itself
  });
  rig.run([&](Context& ctx) -> Task<> {
    auto s = co_await rig.client->stream(ctx, get(rig.url("/v1/chat/completions")));
    EXPECT_THAT(s, IsOk());
    if (!s.ok()) co_return;
    EXPECT_EQ(s->status(), 200);
    EXPECT_EQ(s->headers().get("content-type"), "text/event-stream");
    SseParser parser;
    std::vector<SseEvent> events;
    while (events.empty()) {
      auto chunk = co_await s->next(ctx);
      EXPECT_TRUE(chunk.ok() && *chunk);
      if (!chunk.ok() || !*chunk) co_return;
      EXPECT_THAT(parser.feed(**chunk, events), IsOk());
    }
    EXPECT_EQ(events[0].data, "one");
    // Written from this worker thread, not the loop.
    HttpResponder r = slot.at(0);
    EXPECT_THAT(r.write("event: delta\ndata: two\n"), IsOk());
    EXPECT_THAT(r.write("data: three\n\n"), IsOk());
    EXPECT_THAT(r.write("data: [DONE]\n\n"), IsOk());
    EXPECT_THAT(r.end(), IsOk());
    for (;;) {
      auto chunk = co_await s->next(ctx);
      EXPECT_THAT(chunk, IsOk());
      if (!chunk.ok() || !*chunk) break;
      EXPECT_THAT(parser.feed(**chunk, events), IsOk());
    }
    EXPECT_EQ(events.size(), 3u);
    if (events.size() == 3) {
      EXPECT_EQ(events[1].type, "delta");
      EXPECT_EQ(events[1].data, "two\nthree");
      EXPECT_EQ(events[2].data, "[DONE]");
    }
  });
}

TEST(HttpServerWithClient, AbortMidStreamIsACutResponse) {
  ResponderSlot slot;
  RealRig rig([&](HttpServerRequest&& req, HttpResponder r) {
    if (req.target == "/drop") {
      r.abort();  // no response at all
      return;
    }
    (void)r.start_stream(200, {{"Content-Type", "text/event-stream"}});
    (void)r.write("data: partial\n\n");
    slot.put(std::move(r));
  });
  rig.run([&](Context& ctx) -> Task<> {
    auto s = co_await rig.client->stream(ctx, get(rig.url("/cut")));
    EXPECT_THAT(s, IsOk());
    if (!s.ok()) co_return;
    auto first = co_await s->next(ctx);
    EXPECT_TRUE(first.ok() && *first && **first == "data: partial\n\n");
    slot.at(0).abort();
    auto second = co_await s->next(ctx);
    EXPECT_FALSE(second.ok());
    if (!second.ok()) {
      EXPECT_THAT(second, StatusIs(ErrorKind::kTransient));
    }
    auto dropped = co_await rig.client->request(ctx, get(rig.url("/drop")));
    EXPECT_FALSE(dropped.ok());
    if (!dropped.ok()) {
      EXPECT_THAT(dropped, StatusIs(ErrorKind::kTransient));
    }
  });
  EXPECT_EQ(rig.server->stats().aborted, 2u);
}

TEST(HttpServerWithClient, StopWithRequestsInFlight) {
  ResponderSlot slot;
  RealRig rig([&](HttpServerRequest&&, HttpResponder r) { slot.put(std::move(r)); });
  std::atomic<int> transient{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int i = 0; i < 3; ++i) {
    watches.push_back(rig.rt
                          ->spawn_watched([&](Context& ctx) -> Task<> {
                            auto r = co_await rig.client->request(ctx, get(rig.url("/wait")));
                            if (!r.ok() && r.error().kind() == ErrorKind::kTransient) ++transient;
                          })
                          .value()
                          .exit);
  }
  ASSERT_TRUE(eventually([&] { return slot.size() == 3; }));
  rig.server->stop();
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
  EXPECT_EQ(transient.load(), 3);
  for (std::size_t i = 0; i < 3; ++i) {
    HttpResponder r = slot.at(i);
    EXPECT_FALSE(r.open());
    EXPECT_THAT(r.respond(200, {}, "late"), StatusIs(ErrorKind::kCancelled));
  }
  EXPECT_EQ(rig.server->stats().connections_open, 0u);
}

TEST(HttpServerWithClient, AThousandConcurrentRequestsFromAThousandProcesses) {
  constexpr int kProcesses = 1000;
  // Every response is held until all 1,000 requests are in: they are concurrent on the server.
  std::vector<HttpResponder> held;  // loop thread only
  std::atomic<std::size_t> peak_open{0};
  RealRig* rig_ptr = nullptr;
  RealRig rig(
      [&](HttpServerRequest&& req, HttpResponder r) {
        held.push_back(std::move(r));
        if (held.size() < static_cast<std::size_t>(kProcesses)) return;
        peak_open = rig_ptr->server->stats().connections_open;
        for (auto& h : held) (void)h.respond(200, {}, "ok " + req.method);
        held.clear();
      },
      {.max_connections = 2000});
  rig_ptr = &rig;
  std::atomic<int> ok{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int i = 0; i < kProcesses; ++i) {
    watches.push_back(rig.rt
                          ->spawn_watched([&](Context& ctx) -> Task<> {
                            HttpRequest req = get(rig.url("/many"));
                            req.timeouts = HttpTimeouts{.first_byte = std::chrono::seconds(120)};
                            auto r = co_await rig.client->request(ctx, std::move(req));
                            if (r.ok() && r->status == 200 && r->body == "ok GET") ++ok;
                          })
                          .value()
                          .exit);
  }
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
  EXPECT_EQ(ok.load(), kProcesses);
  auto s = rig.server->stats();
  EXPECT_EQ(s.requests, static_cast<std::uint64_t>(kProcesses));
  EXPECT_EQ(s.connections_accepted, static_cast<std::uint64_t>(kProcesses));
  EXPECT_EQ(peak_open.load(), static_cast<std::size_t>(kProcesses));
  EXPECT_EQ(s.responses_2xx, static_cast<std::uint64_t>(kProcesses));
}

}  // namespace
}  // namespace nines::net
