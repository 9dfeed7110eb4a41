// The server-sent events parser: the WHATWG rules, and every way a stream can be split into
// chunks gives the same events.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "nines/net/sse.hpp"
#include "support/status_matchers.hpp"

namespace nines::net {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

std::vector<SseEvent> parse_whole(std::string_view stream, SseParserOptions o = {}) {
  SseParser p(o);
  std::vector<SseEvent> out;
  EXPECT_THAT(p.feed(stream, out), IsOk());
  return out;
}

std::vector<SseEvent> parse_split(std::string_view stream, const std::vector<std::size_t>& cuts) {
  SseParser p;
  std::vector<SseEvent> out;
  std::size_t at = 0;
  for (std::size_t c : cuts) {
    EXPECT_THAT(p.feed(stream.substr(at, c - at), out), IsOk());
    at = c;
  }
  EXPECT_THAT(p.feed(stream.substr(at), out), IsOk());
  return out;
}

SseEvent ev(std::string data, std::string type = "message", std::string id = {}) {
  return SseEvent{std::move(type), std::move(data), std::move(id)};
}

TEST(Sse, DataLinesAreJoinedWithNewlines) {
  auto got = parse_whole("data: a\ndata: b\ndata:c\n\n");
  EXPECT_EQ(got, (std::vector<SseEvent>{ev("a\nb\nc")}));
}

TEST(Sse, EventTypeIdAndRetry) {
  SseParser p;
  std::vector<SseEvent> out;
  ASSERT_THAT(p.feed("event: delta\nid: 7\nretry: 1500\ndata: x\n\ndata: y\n\n", out), IsOk());
  EXPECT_EQ(out, (std::vector<SseEvent>{ev("x", "delta", "7"), ev("y", "message", "7")}));
  EXPECT_EQ(p.last_event_id(), "7");
  EXPECT_EQ(p.retry_ms(), 1500u);
}

TEST(Sse, RetryWithNonDigitsIsIgnored) {
  SseParser p;
  std::vector<SseEvent> out;
  ASSERT_THAT(p.feed("retry: 10s\nretry: -1\nretry:\ndata: x\n\n", out), IsOk());
  EXPECT_FALSE(p.retry_ms().has_value());
}

TEST(Sse, IdWithNulIsIgnoredAndEmptyIdResets) {
  SseParser p;
  std::vector<SseEvent> out;
  std::string s = "id: 1\ndata: a\n\nid: x";
  s += '\0';
  s += "y\ndata: b\n\nid\ndata: c\n\n";
  ASSERT_THAT(p.feed(s, out), IsOk());
  EXPECT_EQ(out, (std::vector<SseEvent>{ev("a", "message", "1"), ev("b", "message", "1"), ev("c", "message", "")}));
}

TEST(Sse, CommentsAndUnknownFieldsAreIgnored) {
  auto got = parse_whole(": keep-alive\nfoo: bar\ndata: x\n:another\n\n");
  EXPECT_EQ(got, (std::vector<SseEvent>{ev("x")}));
}

TEST(Sse, FieldWithoutColonHasEmptyValue) {
  // "data" alone is a data line with an empty value; "event" alone resets the type.
  auto got = parse_whole("data\ndata\n\nevent\ndata: z\n\n");
  EXPECT_EQ(got, (std::vector<SseEvent>{ev("\n"), ev("z")}));
}

TEST(Sse, OnlyOneLeadingSpaceIsRemoved) {
  auto got = parse_whole("data:  two spaces\ndata:no space\n\n");
  EXPECT_EQ(got, (std::vector<SseEvent>{ev(" two spaces\nno space")}));
}

TEST(Sse, EventWithoutDataIsNotDispatched) {
  auto got = parse_whole("event: ping\n\nid: 3\n\ndata: real\n\n");
  EXPECT_EQ(got, (std::vector<SseEvent>{ev("real", "message", "3")}));
}

TEST(Sse, CrLfAndCrLineEnds) {
  EXPECT_EQ(parse_whole("data: a\r\ndata: b\r\n\r\n"), (std::vector<SseEvent>{ev("a\nb")}));
  EXPECT_EQ(parse_whole("data: a\rdata: b\r\r"), (std::vector<SseEvent>{ev("a\nb")}));
  EXPECT_EQ(parse_whole("data: a\r\n\rdata: b\n\r\n"), (std::vector<SseEvent>{ev("a"), ev("b")}));
}

TEST(Sse, LeadingBomIsDroppedOnce) {
  EXPECT_EQ(parse_whole("\xEF\xBB\xBF"
                        "data: a\n\n"),
            (std::vector<SseEvent>{ev("a")}));
  // A second BOM is text: it becomes part of the field name, which is then unknown.
  EXPECT_EQ(parse_whole("\xEF\xBB\xBF\xEF\xBB\xBF"
                        "data: a\n\ndata: b\n\n"),
            (std::vector<SseEvent>{ev("b")}));
  // Bytes that only start like a BOM are kept.
  EXPECT_EQ(parse_whole("\xEF"
                        "data: a\n\ndata: b\n\n"),
            (std::vector<SseEvent>{ev("b")}));
}

TEST(Sse, UnfinishedEventAtEndIsDropped) {
  SseParser p;
  std::vector<SseEvent> out;
  ASSERT_THAT(p.feed("data: done\n\ndata: partial\n", out), IsOk());
  EXPECT_EQ(out.size(), 1u);
  EXPECT_TRUE(p.finish());
  ASSERT_THAT(p.feed("data: next stream\n\n", out), IsOk());
  EXPECT_EQ(out.back().data, "next stream");
  EXPECT_FALSE(p.finish());
}

TEST(Sse, EventLargerThanTheBoundIsAnError) {
  SseParser p({.max_event_bytes = 64});
  std::vector<SseEvent> out;
  ASSERT_THAT(p.feed("data: small\n\n", out), IsOk());
  std::string big = "data: " + std::string(40, 'x') + "\ndata: " + std::string(40, 'y') + "\n\n";
  Status s = p.feed(big, out);
  ASSERT_THAT(s, StatusIs(ErrorKind::kPermanent, HasSubstr("max_event_bytes")));
  EXPECT_FALSE(p.feed("data: more\n\n", out).ok());
  // A line that never ends is bounded too.
  SseParser q({.max_event_bytes = 64});
  EXPECT_FALSE(q.feed(std::string(100, 'z'), out).ok());
}

// Every sample stream gives the same events however it is cut: at every single point, at
// every pair of points, and byte by byte.
TEST(Sse, EverySplitGivesTheSameEvents) {
  const std::vector<std::string> samples = {
      "\xEF\xBB\xBF"
      "data: hello\r\n\r\n",
      "event: delta\r\nid: 42\r\ndata: {\"text\":\"a\"}\r\n\r\n: ping\r\n\r\ndata: b\rdata: c\r\r",
      "data\ndata: x\n\nretry: 300\nevent: end\ndata: [DONE]\n\n",
      ": comment only\n\nid: 1\ndata: one\n\nid: 2\ndata: two\n\n",
      "data: mixed\r\ndata: ends\n\rdata: third\r\n\n",
  };
  for (const auto& s : samples) {
    std::vector<SseEvent> want = parse_whole(s);
    ASSERT_FALSE(want.empty()) << s;
    for (std::size_t i = 0; i <= s.size(); ++i) {
      ASSERT_EQ(parse_split(s, {i}), want) << "cut at " << i << " of " << s;
      for (std::size_t j = i; j <= s.size(); ++j) {
        ASSERT_EQ(parse_split(s, {i, j}), want) << "cuts at " << i << "," << j << " of " << s;
      }
    }
    std::vector<std::size_t> every;
    for (std::size_t i = 1; i < s.size(); ++i) every.push_back(i);
    EXPECT_EQ(parse_split(s, every), want) << "byte by byte: " << s;
  }
}

}  // namespace
}  // namespace nines::net
