// The HTTP server's request parser (src/net/http_request_parser.hpp): llhttp plus the
// server's rules, without sockets. The server's tests (http_server_test.cpp) cover the same
// rules on the wire; these pin where llhttp differs from the http-parser it replaced, and the
// byte offsets that pipelining depends on.
#include "net/http_request_parser.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

namespace nines::net::internal {
namespace {
using ::testing::HasSubstr;

using Event = HttpRequestParser::Event;

// A literal with NUL bytes in it, whole.
template <std::size_t N>
std::string raw(const char (&s)[N]) {
  return std::string(s, N - 1);
}

// What a connection's bytes amount to: the requests, in order, then an error or none.
struct Outcome {
  std::vector<HttpServerRequest> requests;
  std::vector<bool> keep_alive;
  std::vector<bool> continues;  // expects_continue() at each kHead
  int error_status = 0;
  std::string error_reason;
  std::string rest;  // bytes left unparsed after the last request (the connection ended)
};

// Feeds `in` in pieces of `piece` bytes (0: whole), as the server does: bytes not consumed
// are fed again with the next piece; parsing stops after a request that ends the connection.
Outcome run(std::string_view in, std::size_t piece = 0, HttpRequestParser::Limits limits = {}) {
  HttpRequestParser parser(limits);
  Outcome out;
  std::string buffered;
  std::size_t next = 0;
  while (next < in.size() || !buffered.empty()) {
    std::size_t n = piece == 0 ? in.size() - next : std::min(piece, in.size() - next);
    buffered.append(in.substr(next, n));
    next += n;
    for (;;) {
      HttpRequestParser::Step step = parser.execute(buffered.data(), buffered.size());
      EXPECT_LE(step.consumed, buffered.size());
      buffered.erase(0, step.consumed);
      if (step.event == Event::kNeedMore) {
        EXPECT_TRUE(buffered.empty());
        break;
      }
      if (step.event == Event::kError) {
        out.error_status = parser.error_status();
        out.error_reason = parser.error_reason();
        return out;
      }
      if (step.event == Event::kHead) {
        out.continues.push_back(parser.expects_continue());
        continue;
      }
      out.requests.push_back(parser.take_request());
      out.keep_alive.push_back(parser.keep_alive());
      if (!parser.keep_alive()) {
        out.rest = buffered + std::string(in.substr(next));
        return out;
      }
    }
    if (n == 0) break;
  }
  return out;
}

// The same outcome whole, in 7-byte pieces and byte by byte.
Outcome run_every_way(std::string_view in, HttpRequestParser::Limits limits = {}) {
  Outcome whole = run(in, 0, limits);
  for (std::size_t piece : {std::size_t{7}, std::size_t{1}}) {
    Outcome other = run(in, piece, limits);
    EXPECT_EQ(other.requests.size(), whole.requests.size()) << "pieces of " << piece;
    for (std::size_t i = 0; i < std::min(other.requests.size(), whole.requests.size()); ++i) {
      EXPECT_EQ(other.requests[i].target, whole.requests[i].target);
      EXPECT_EQ(other.requests[i].body, whole.requests[i].body);
      EXPECT_EQ(other.requests[i].headers.size(), whole.requests[i].headers.size());
    }
    EXPECT_EQ(other.error_status != 0, whole.error_status != 0) << "pieces of " << piece;
    EXPECT_EQ(other.rest, whole.rest);
  }
  return whole;
}

void expect_refused(std::string_view in, int status, std::string_view why) {
  Outcome o = run_every_way(in);
  EXPECT_EQ(o.error_status, status) << in;
  EXPECT_THAT(o.error_reason, HasSubstr(why));
}

TEST(HttpRequestParser, StopsAtEachHeadAndRequestWithExactOffsets) {
  HttpRequestParser parser({});
  std::string in = "POST /a HTTP/1.1\r\nContent-Length: 3\r\nX-A:  one  \r\n\r\nabcGET /b HTTP/1.1\r\n\r\n";
  const std::size_t head = in.find("abc");
  auto s1 = parser.execute(in.data(), in.size());
  EXPECT_EQ(s1.event, Event::kHead);
  EXPECT_EQ(s1.consumed, head);
  EXPECT_FALSE(parser.expects_continue());
  auto s2 = parser.execute(in.data() + head, in.size() - head);
  EXPECT_EQ(s2.event, Event::kRequest);
  EXPECT_EQ(s2.consumed, 3u);  // the body; the next request is not touched
  HttpServerRequest a = parser.take_request();
  EXPECT_EQ(a.method, "POST");
  EXPECT_EQ(a.target, "/a");
  EXPECT_EQ(a.body, "abc");
  EXPECT_EQ(a.headers.get("x-a"), "one");
  EXPECT_TRUE(parser.keep_alive());
  std::string_view rest = std::string_view(in).substr(head + 3);
  auto s3 = parser.execute(rest.data(), rest.size());
  EXPECT_EQ(s3.event, Event::kHead);
  EXPECT_EQ(s3.consumed, rest.size());
  // A request without a body completes without another byte.
  auto s4 = parser.execute(nullptr, 0);
  EXPECT_EQ(s4.event, Event::kRequest);
  EXPECT_EQ(s4.consumed, 0u);
  EXPECT_EQ(parser.take_request().target, "/b");
  auto s5 = parser.execute(nullptr, 0);
  EXPECT_EQ(s5.event, Event::kNeedMore);
}

TEST(HttpRequestParser, PipelinedChunkedAndTrailersAnyWayTheyArrive) {
  Outcome o = run_every_way(
      "POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Custom: 7\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n"
      "0\r\nX-Trailer: dropped\r\n\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\nGET /last HTTP/1.0\r\n\r\nleft over");
  ASSERT_EQ(o.requests.size(), 3u);
  EXPECT_EQ(o.requests[0].body, "hello world");
  EXPECT_EQ(o.requests[0].headers.size(), 2u);  // the trailer is not among them
  EXPECT_EQ(o.requests[1].target, "/next");
  EXPECT_EQ(o.requests[2].version_minor, 0);
  EXPECT_EQ(o.keep_alive, (std::vector<bool>{true, true, false}));  // HTTP/1.0 ends the connection
  EXPECT_EQ(o.rest, "left over");
  EXPECT_EQ(o.error_status, 0);
}

TEST(HttpRequestParser, ExpectContinueOnlyWhenABodyFollows) {
  Outcome o = run_every_way(
      "POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi"
      "GET / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n");
  EXPECT_EQ(o.continues, (std::vector<bool>{true, false}));
  EXPECT_EQ(o.requests.size(), 2u);
  expect_refused("POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: teapot\r\n\r\nhi", 417, "Expect");
}

// Request smuggling needs the server and a proxy in front to disagree on where a body ends;
// llhttp refuses every ambiguous framing, and nothing after it is parsed.
TEST(HttpRequestParser, AmbiguousFramingIsRefused) {
  const std::string smuggled = "GET /smuggled HTTP/1.1\r\n\r\n";
  for (std::string bad : {
           "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n" + smuggled,
           "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc" + smuggled,
           "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc" + smuggled,
           "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc" + smuggled,
           "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n" + smuggled,
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n" + smuggled,
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
           "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smuggled,
           "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + smuggled,
           "POST / HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + smuggled,
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n" + smuggled,
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n" + smuggled,
       }) {
    Outcome o = run_every_way(bad);
    EXPECT_EQ(o.error_status, 400) << bad;
    EXPECT_TRUE(o.requests.empty()) << bad;
    EXPECT_THAT(o.error_reason, HasSubstr("malformed request"));
  }
}

TEST(HttpRequestParser, ObsoleteLineFoldingIsRefused) {
  // llhttp would hand "a  b" over (and a tab-folded line is its own error).
  expect_refused("GET / HTTP/1.1\r\nX: a\r\n  b\r\n\r\n", 400, "obsolete line folding");
  expect_refused("GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", 400, "malformed request");
  // In trailers too.
  expect_refused("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: a\r\n b\r\n\r\n", 400,
                 "obsolete line folding");
}

TEST(HttpRequestParser, LinesEndInCrLfOnly) {
  // llhttp takes a bare LF in some places (after the request line, for the empty line) and
  // not in others (after a header value, in chunked framing); the server takes it nowhere.
  for (std::string bad :
       {"GET / HTTP/1.1\n\n", "GET / HTTP/1.1\nHost: x\r\n\r\n", "GET / HTTP/1.1\r\nHost: x\r\n\n",
        "\nGET / HTTP/1.1\r\n\r\n", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\r\n\n"}) {
    Outcome o = run_every_way(bad);
    EXPECT_EQ(o.error_status, 400) << bad;
    EXPECT_TRUE(o.requests.empty()) << bad;
    EXPECT_THAT(o.error_reason, HasSubstr("bare LF"));
  }
  for (std::string bad : {"GET / HTTP/1.1\r\nHost: x\nY: 1\r\n\r\n",
                          "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
                          "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n",
                          "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", "GET / HTTP/1.1\rX: a\r\n\r\n"}) {
    Outcome o = run_every_way(bad);
    EXPECT_EQ(o.error_status, 400) << bad;
    EXPECT_TRUE(o.requests.empty()) << bad;
  }
  // Empty lines between requests are skipped (RFC 9112 2.2), when they are CRLF.
  Outcome ok = run_every_way("GET /1 HTTP/1.1\r\n\r\n\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
  EXPECT_EQ(ok.requests.size(), 2u);
  EXPECT_EQ(ok.error_status, 0);
}

TEST(HttpRequestParser, VersionsOtherThan10And11Get505) {
  expect_refused("GET / HTTP/1.2\r\n\r\n", 505, "HTTP version 1.2 is not supported");
  expect_refused("GET / HTTP/3.0\r\n\r\n", 505, "HTTP version 3.0");
  expect_refused("GET / HTTP/2.0\r\n\r\n", 505, "HTTP version 2.0");
  expect_refused("GET / HTTP/0.9\r\n\r\n", 505, "HTTP version 0.9");
  expect_refused("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/2");
  expect_refused("GET / HTTP/1.x\r\n\r\n", 400, "malformed request");
  expect_refused("GET / HTTP/11.1\r\n\r\n", 400, "malformed request");
}

TEST(HttpRequestParser, UpgradeAndConnectEndTheConnection) {
  // No protocol switch: the request is an ordinary one, and nothing after it is HTTP.
  Outcome up = run_every_way("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
  ASSERT_EQ(up.requests.size(), 1u);
  EXPECT_EQ(up.keep_alive, std::vector<bool>{false});
  EXPECT_EQ(up.rest, "\x81\x05hello");
  Outcome connect = run_every_way("CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 2\r\n\r\nab\x16\x03");
  ASSERT_EQ(connect.requests.size(), 1u);
  EXPECT_EQ(connect.requests[0].method, "CONNECT");
  EXPECT_EQ(connect.requests[0].target, "example.com:443");
  EXPECT_EQ(connect.requests[0].body, "");  // CONNECT has no body: what follows is the tunnel's
  EXPECT_EQ(connect.keep_alive, std::vector<bool>{false});
  EXPECT_EQ(connect.rest, "ab\x16\x03");
  // An Upgrade offer without "Connection: upgrade" is only an offer.
  Outcome offer = run_every_way("GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
  EXPECT_EQ(offer.requests.size(), 2u);
  // The parser refuses to go on after a request that ends the connection.
  HttpRequestParser parser({});
  std::string_view close = "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
  EXPECT_EQ(parser.execute(close.data(), close.size()).event, Event::kHead);
  EXPECT_EQ(parser.execute(nullptr, 0).event, Event::kRequest);
  EXPECT_FALSE(parser.keep_alive());
  EXPECT_EQ(parser.execute("GET", 3).event, Event::kError);
  EXPECT_EQ(parser.error_status(), 400);
}

TEST(HttpRequestParser, BoundsOnHeadsAndBodies) {
  HttpRequestParser::Limits small{.max_header_bytes = 100, .max_raw_head_bytes = 300, .max_body_bytes = 10};
  Outcome fits = run_every_way("POST /x HTTP/1.1\r\nA: " + std::string(90, 'a') + "\r\n\r\n", small);
  EXPECT_EQ(fits.requests.size(), 1u);
  // Target, names and values count.
  Outcome big =
      run_every_way("GET /" + std::string(60, 't') + " HTTP/1.1\r\nAb: " + std::string(40, 'a') + "\r\n\r\n", small);
  EXPECT_EQ(big.error_status, 431);
  EXPECT_THAT(big.error_reason, HasSubstr("max_header_bytes"));
  // Whitespace that llhttp skips counts towards the bound on the head as received.
  Outcome spaces = run_every_way("GET / HTTP/1.1\r\nA:" + std::string(400, ' ') + "a\r\n\r\n", small);
  EXPECT_EQ(spaces.error_status, 431);
  EXPECT_THAT(spaces.error_reason, HasSubstr("head larger than 300 bytes as received"));
  // And so do the trailers, on their own.
  Outcome trailers = run_every_way(
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT:" + std::string(400, ' ') + "a\r\n\r\n", small);
  EXPECT_EQ(trailers.error_status, 431);
  EXPECT_THAT(trailers.error_reason, HasSubstr("trailers larger than 300 bytes"));
  // A body: from Content-Length before any of it, or at the chunk header that would cross it.
  Outcome length = run_every_way("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", small);
  EXPECT_EQ(length.error_status, 413);
  EXPECT_THAT(length.error_reason, HasSubstr("request body of 11 bytes"));
  Outcome chunk = run_every_way("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n3\r\n", small);
  EXPECT_EQ(chunk.error_status, 413);
  Outcome exact = run_every_way(
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n2\r\nab\r\n0\r\n\r\n", small);
  ASSERT_EQ(exact.requests.size(), 1u);
  EXPECT_EQ(exact.requests[0].body, "12345678ab");
}

TEST(HttpRequestParser, MalformedHeadsAreRefused) {
  const std::vector<std::string> bad_heads = {
      "GARBAGE\r\n\r\n",
      "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
      "GET /a b HTTP/1.1\r\n\r\n",
      "GET /\x01 HTTP/1.1\r\n\r\n",
      raw("GET / HTTP/1.1\r\nX: a\x00z\r\n\r\n"),
      "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",
      "GET / HTTP/1.1\r\n : x\r\n\r\n",
      "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
      "GET / HTTP/1.1 \r\n\r\n",
  };
  for (const std::string& bad : bad_heads) {
    Outcome o = run_every_way(bad);
    EXPECT_EQ(o.error_status, 400) << bad;
    EXPECT_TRUE(o.requests.empty()) << bad;
  }
}

}  // namespace
}  // namespace nines::net::internal
