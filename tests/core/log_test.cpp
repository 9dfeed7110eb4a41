// The logging seam (core/log.hpp): formats, levels, the rate limit on the virtual clock,
// redaction, and that a disabled NINES_LOG neither formats nor allocates.
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <new>
#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "nines/core/environment.hpp"
#include "nines/core/log.hpp"
#include "support/status_matchers.hpp"

// ---- counting operator new (the whole core test binary) ----------------------------------------
// Every replaceable form that ASan would otherwise pair with its own (a mismatched pair is an
// alloc-dealloc-mismatch report), all on malloc/free.
namespace {
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

thread_local std::size_t g_news = 0;

void* counted_alloc(std::size_t n) {
  ++g_news;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  ++g_news;
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  ++g_news;
  return std::malloc(n == 0 ? 1 : n);
}
// GCC (-O1 and up) inlines these into new-expressions and then takes free() for a mismatch
// with `new`; it is not one: every operator new here is malloc.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace nines {
namespace {

using namespace std::chrono_literals;

// A record in both formats at a fixed time (2026-01-01T00:00:01.234Z).
std::string line(LogFormat format, LogLevel level, std::string_view event, std::string_view message,
                 std::initializer_list<LogField> fields) {
  const std::int64_t t = 1767225600LL * 1'000'000'000LL + 1'234'567'890LL;
  LogRecord r{.level = level, .event = event, .message = message, .fields = fields, .unix_time_ns = t};
  return format_log_line(r, format);
}

TEST(LogLevel, NamesRoundTripCaseInsensitive) {
  for (int l = 0; l <= static_cast<int>(LogLevel::kOff); ++l) {
    auto level = static_cast<LogLevel>(l);
    EXPECT_EQ(parse_log_level(to_string(level)).value(), level);
  }
  EXPECT_EQ(parse_log_level("ERROR").value(), LogLevel::kError);
  EXPECT_EQ(parse_log_level("Notice").value(), LogLevel::kNotice);
  EXPECT_EQ(parse_log_level("warn").value(), LogLevel::kWarning);
  auto bad = parse_log_level("loud");
  ASSERT_THAT(bad, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("loud")));
  EXPECT_FALSE(parse_log_level("").ok());
}

TEST(LogFormat, TimestampsAreUtcWithMilliseconds) {
  EXPECT_EQ(format_log_time(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(format_log_time(1767225600LL * 1'000'000'000LL + 1'234'567'890LL), "2026-01-01T00:00:01.234Z");
  EXPECT_EQ(format_log_time(951782400LL * 1'000'000'000LL), "2000-02-29T00:00:00.000Z");  // a leap day
  EXPECT_EQ(format_log_time(-1'000'000), "1969-12-31T23:59:59.999Z");
}

TEST(LogFormat, HumanLineQuotesAndEscapesValues) {
  EXPECT_EQ(line(LogFormat::kHuman, LogLevel::kError, "process_crashed", "process crashed",
                 {{"pid", "<0.12>"},
                  {"reason", "crash: std::runtime_error: boom"},
                  {"n", 3},
                  {"u", 7u},
                  {"rate", 0.25},
                  {"ok", true},
                  {"empty", ""}}),
            "2026-01-01T00:00:01.234Z error process_crashed: process crashed pid=<0.12> "
            "reason=\"crash: std::runtime_error: boom\" n=3 u=7 rate=0.25 ok=true empty=\"\"");
  // Quotes, backslashes, '=', line breaks and control characters; one line whatever the text.
  std::string l = line(LogFormat::kHuman, LogLevel::kWarning, "e", "two\nlines\tand\x01",
                       {{"q", "say \"hi\"\\"}, {"eq", "a=b"}, {"nl", "x\r\ny"}, {"bad key!", 1}, {"", 2}});
  EXPECT_EQ(l,
            "2026-01-01T00:00:01.234Z warning e: two\\nlines\\tand\\x01 q=\"say \\\"hi\\\"\\\\\" "
            "eq=\"a=b\" nl=\"x\\r\\ny\" bad_key_=1 _=2");
  EXPECT_EQ(l.find('\n'), std::string::npos);
  // No message: no colon.
  EXPECT_EQ(line(LogFormat::kHuman, LogLevel::kInfo, "tick", "", {{"n", -1}}),
            "2026-01-01T00:00:01.234Z info tick n=-1");
}

TEST(LogFormat, JsonLineEscapesAndKeepsTypes) {
  EXPECT_EQ(line(LogFormat::kJsonLines, LogLevel::kError, "process_crashed", "process \"crashed\"\n",
                 {{"pid", "<0.12>"},
                  {"n", -3},
                  {"u", 18446744073709551615ull},
                  {"rate", 0.5},
                  {"ok", false},
                  {"ctl", "a\x01\x7f\\b"}}),
            "{\"ts\":\"2026-01-01T00:00:01.234Z\",\"level\":\"error\",\"event\":\"process_crashed\","
            "\"msg\":\"process \\\"crashed\\\"\\n\",\"pid\":\"<0.12>\",\"n\":-3,\"u\":18446744073709551615,"
            "\"rate\":0.5,\"ok\":false,\"ctl\":\"a\\u0001\\u007f\\\\b\"}");
  // A non-finite number is a string (JSON has no NaN).
  EXPECT_EQ(line(LogFormat::kJsonLines, LogLevel::kInfo, "e", "", {{"x", std::nan("")}}),
            "{\"ts\":\"2026-01-01T00:00:01.234Z\",\"level\":\"info\",\"event\":\"e\",\"msg\":\"\",\"x\":\"nan\"}");
}

TEST(LogFormat, JsonKeysNeverRepeat) {
  std::string l = line(LogFormat::kJsonLines, LogLevel::kInfo, "e", "m",
                       {{"msg", "a"}, {"ts", 1}, {"level", 2}, {"event", 3}, {"x", 4}, {"x", 5}, {"field_msg", 6}});
  EXPECT_EQ(l,
            "{\"ts\":\"2026-01-01T00:00:01.234Z\",\"level\":\"info\",\"event\":\"e\",\"msg\":\"m\","
            "\"field_msg\":\"a\",\"field_ts\":1,\"field_level\":2,\"field_event\":3,\"x\":4,\"x_2\":5,"
            "\"field_msg_2\":6}");
}

TEST(LogFormat, InvalidUtf8IsReplacedAndValidUtf8Kept) {
  const std::string text = "caf\xc3\xa9 \xff\xfe end \xe2\x82";  // é, two bad bytes, a truncated sequence
  std::string h = line(LogFormat::kHuman, LogLevel::kInfo, "e", text, {{"v", text}});
  std::string j = line(LogFormat::kJsonLines, LogLevel::kInfo, "e", text, {{"v", text}});
  for (const std::string& l : {h, j}) {
    EXPECT_THAT(l, HasSubstr("caf\xc3\xa9"));
    EXPECT_EQ(l.find('\xff'), std::string::npos) << l;
    EXPECT_THAT(l, HasSubstr("\xef\xbf\xbd\xef\xbf\xbd end \xef\xbf\xbd\xef\xbf\xbd"));
  }
  // An overlong encoding and a surrogate are invalid too.
  std::string o = line(LogFormat::kJsonLines, LogLevel::kInfo, "e", "\xc0\xaf \xed\xa0\x80", {});
  EXPECT_EQ(o.find('\xc0'), std::string::npos) << o;
  EXPECT_EQ(o.find('\xed'), std::string::npos) << o;
}

TEST(LogSinks, WriteOneLinePerRecordToTheirFile) {
  std::FILE* human = std::tmpfile();
  std::FILE* json = std::tmpfile();
  ASSERT_TRUE(human && json);
  SimEnvironment env(1);
  Logger logger(env, LogLevel::kDebug, make_human_sink(human));
  logger.log(LogLevel::kInfo, "a", "first\nline", {{"k", 1}});
  logger.set_sink(make_json_lines_sink(json));
  logger.log(LogLevel::kInfo, "b", "second", {{"k", "v w"}});
  auto read_all = [](std::FILE* f) {
    std::rewind(f);
    std::string s;
    char buf[512];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, f)) s.append(buf, n);
    std::fclose(f);
    return s;
  };
  EXPECT_EQ(read_all(human), "2026-01-01T00:00:00.000Z info a: first\\nline k=1\n");
  EXPECT_EQ(read_all(json),
            "{\"ts\":\"2026-01-01T00:00:00.000Z\",\"level\":\"info\",\"event\":\"b\","
            "\"msg\":\"second\",\"k\":\"v w\"}\n");
}

TEST(LogSinks, AFileSinkAppendsAndReportsAnUnopenableFile) {
  char dir[] = "/tmp/nines-log-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/x.log";
  SimEnvironment env(1);
  {
    Logger logger(env, LogLevel::kInfo, make_file_sink(path).value());
    logger.log(LogLevel::kNotice, "one", "");
  }
  {
    Logger logger(env, LogLevel::kInfo, make_file_sink(path, LogFormat::kJsonLines).value());
    logger.log(LogLevel::kNotice, "two", "");
  }
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(),
            "2026-01-01T00:00:00.000Z notice one\n"
            "{\"ts\":\"2026-01-01T00:00:00.000Z\",\"level\":\"notice\",\"event\":\"two\",\"msg\":\"\"}\n");
  auto bad = make_file_sink(std::string(dir) + "/no/such/dir/x.log");
  ASSERT_THAT(bad, StatusIs(ErrorKind::kInvalidArgument));
  std::remove(path.c_str());
  rmdir(dir);
}

TEST(CaptureSink, KeepsTheNewestRecordsAndCountsTheDropped) {
  SimEnvironment env(1);
  auto capture = std::make_shared<CaptureSink>(3);
  Logger logger(env, LogLevel::kDebug, capture, LogRateLimit::unlimited());
  for (int i = 0; i < 5; ++i) logger.log(LogLevel::kInfo, "n", "", {{"i", i}});
  ASSERT_EQ(capture->size(), 3u);
  EXPECT_EQ(capture->dropped(), 2u);
  auto r = capture->records();
  EXPECT_EQ(r[0].field("i"), "2");
  EXPECT_EQ(r[2].field("i"), "4");
  EXPECT_EQ(r[2].human, "2026-01-01T00:00:00.000Z info n i=4");
  EXPECT_TRUE(capture->contains("i=3"));
  EXPECT_TRUE(capture->contains("\"i\":3"));
  EXPECT_FALSE(capture->contains("i=1"));
  EXPECT_EQ(capture->count("n"), 3u);
  capture->clear();
  EXPECT_EQ(capture->size(), 0u);
}

TEST(Logger, FiltersByLevel) {
  SimEnvironment env(1);
  auto capture = std::make_shared<CaptureSink>();
  Logger logger(env, LogLevel::kWarning, capture);
  EXPECT_FALSE(logger.enabled(LogLevel::kNotice));
  EXPECT_TRUE(logger.enabled(LogLevel::kWarning));
  EXPECT_TRUE(logger.enabled(LogLevel::kCritical));
  EXPECT_FALSE(logger.enabled(LogLevel::kOff));  // kOff is never a record's level
  logger.log(LogLevel::kInfo, "quiet", "");
  logger.log(LogLevel::kError, "loud", "");
  NINES_LOG(logger, LogLevel::kNotice, "quiet", "");
  NINES_LOG(logger, LogLevel::kWarning, "loud", "", {"n", 1});
  EXPECT_EQ(capture->count("quiet"), 0u);
  EXPECT_EQ(capture->count("loud"), 2u);
  logger.set_level(LogLevel::kOff);
  EXPECT_FALSE(logger.enabled(LogLevel::kCritical));
  logger.log(LogLevel::kCritical, "loud", "");
  EXPECT_EQ(capture->count("loud"), 2u);
  EXPECT_EQ(logger.written(), 2u);
}

TEST(Logger, ADisabledLineNeitherFormatsNorAllocates) {
  SimEnvironment env(1);
  auto capture = std::make_shared<CaptureSink>();
  Logger logger(env, LogLevel::kError, capture);
  int evaluated = 0;
  auto costly = [&](char c) {
    ++evaluated;
    return std::string(200, c);  // allocates: beyond the small-string buffer
  };
  const std::size_t before = g_news;
  NINES_LOG(logger, LogLevel::kDebug, "debug_event", costly('m'), {"a", costly('a')}, {"b", costly('b')});
  NINES_LOG(logger, LogLevel::kWarning, "warning_event", costly('m'), {"a", costly('a')});
  EXPECT_EQ(g_news - before, 0u);
  EXPECT_EQ(evaluated, 0);
  // The same line when enabled does allocate (the counter works) and is written.
  NINES_LOG(logger, LogLevel::kError, "error_event", costly('m'), {"a", costly('a')});
  EXPECT_GT(g_news - before, 0u);
  EXPECT_EQ(evaluated, 2);
  EXPECT_EQ(capture->count("error_event"), 1u);
}

TEST(Logger, RateLimitsPerEventAndReportsTheDroppedOnTheVirtualClock) {
  SimEnvironment env(1);
  auto capture = std::make_shared<CaptureSink>();
  Logger logger(env, LogLevel::kDebug, capture,
                {.burst = 20, .per_second = 10, .global_burst = 1000, .global_per_second = 1000});
  for (int i = 0; i < 100; ++i) logger.log(LogLevel::kError, "storm", "", {{"i", i}});
  for (int i = 0; i < 5; ++i) logger.log(LogLevel::kInfo, "calm", "");
  EXPECT_EQ(capture->count("storm"), 20u);  // the burst
  EXPECT_EQ(capture->count("calm"), 5u);    // another event has a bucket of its own
  EXPECT_EQ(capture->count("log_suppressed"), 0u);
  EXPECT_EQ(logger.suppressed(), 80u);

  // 100 ms later one token is back, but drops are reported at most once a second.
  env.set_now(env.now() + 100ms);
  logger.log(LogLevel::kError, "storm", "");
  EXPECT_EQ(capture->count("storm"), 21u);
  EXPECT_EQ(capture->count("log_suppressed"), 0u);

  env.set_now(env.now() + 1s);
  logger.log(LogLevel::kError, "storm", "", {{"i", 100}});
  auto suppressed = capture->records("log_suppressed");
  ASSERT_EQ(suppressed.size(), 1u) << capture->dump();
  EXPECT_EQ(suppressed[0].field("event"), "storm");
  EXPECT_EQ(suppressed[0].field("dropped"), "80");
  EXPECT_EQ(suppressed[0].level, LogLevel::kError);  // the worst level dropped
  EXPECT_EQ(suppressed[0].human,
            "2026-01-01T00:00:01.100Z error log_suppressed: lines dropped by the log rate limit "
            "event=storm dropped=80");
  auto all = capture->records();
  EXPECT_EQ(all.back().field("i"), "100");  // after the report, the line that passed
  EXPECT_EQ(all[all.size() - 2].event, "log_suppressed");

  // A storm that stops is reported by flush_suppressed (the destructor calls it).
  for (int i = 0; i < 50; ++i) logger.log(LogLevel::kWarning, "storm", "");
  logger.flush_suppressed();
  suppressed = capture->records("log_suppressed");
  ASSERT_EQ(suppressed.size(), 2u);
  EXPECT_EQ(suppressed[1].field("dropped"), "41");  // 9 of the 10 tokens refilled in the second were left
  EXPECT_EQ(suppressed[1].level, LogLevel::kWarning);
  EXPECT_EQ(logger.suppressed(), 121u);
}

TEST(Logger, OneSourcesStormDoesNotDrownAnothersLinesOfTheSameEvent) {
  SimEnvironment env(1);
  auto capture = std::make_shared<CaptureSink>();
  Logger logger(env, LogLevel::kDebug, capture,
                {.burst = 20, .per_second = 10, .global_burst = 1000, .global_per_second = 1000});
  for (int i = 0; i < 100; ++i) {
    logger.log(LogLevel::kNotice, "child_restarted", "", {{"supervisor", "workers"}, {"child", "w"}});
  }
  for (int i = 0; i < 3; ++i) {
    logger.log(LogLevel::kNotice, "child_restarted", "", {{"supervisor", "db"}, {"child", "conn"}});
  }
  auto lines = capture->records("child_restarted");
  ASSERT_EQ(lines.size(), 23u);  // workers' burst, and every one of db's
  EXPECT_EQ(lines.back().field("supervisor"), "db");
  logger.flush_suppressed();
  auto s = capture->records("log_suppressed");
  ASSERT_EQ(s.size(), 1u) << capture->dump();
  EXPECT_EQ(s[0].field("event"), "child_restarted");
  EXPECT_EQ(s[0].field("source"), "supervisor=workers");
  EXPECT_EQ(s[0].field("dropped"), "80");

  // Without source fields, the event alone is the key: db's lines are dropped too.
  auto plain = std::make_shared<CaptureSink>();
  Logger by_event(
      env, LogLevel::kDebug, plain,
      {.burst = 20, .per_second = 10, .global_burst = 1000, .global_per_second = 1000, .source_fields = {}});
  for (int i = 0; i < 100; ++i) by_event.log(LogLevel::kNotice, "child_restarted", "", {{"supervisor", "workers"}});
  for (int i = 0; i < 3; ++i) by_event.log(LogLevel::kNotice, "child_restarted", "", {{"supervisor", "db"}});
  EXPECT_EQ(plain->count("child_restarted"), 20u);
}

TEST(Logger, AGlobalCapHoldsAcrossEventsAndTheBucketTableIsBounded) {
  SimEnvironment env(1);
  auto capture = std::make_shared<CaptureSink>();
  Logger logger(env, LogLevel::kDebug, capture,
                {.burst = 5, .per_second = 1, .global_burst = 30, .global_per_second = 1, .max_events = 4});
  for (int e = 0; e < 10; ++e) {
    for (int i = 0; i < 5; ++i) logger.log(LogLevel::kInfo, "event_" + std::to_string(e), "");
  }
  // Four events have buckets of 5 (20 lines), the other six share one bucket of 5; the global
  // cap (30) is not reached.
  EXPECT_EQ(capture->size(), 25u);
  EXPECT_EQ(logger.suppressed(), 25u);
  logger.flush_suppressed();
  auto s = capture->records("log_suppressed");
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].field("event"), "*");
  EXPECT_EQ(s[0].field("dropped"), "25");

  Logger capped(env, LogLevel::kDebug, capture,
                {.burst = 100, .per_second = 100, .global_burst = 10, .global_per_second = 1});
  capture->clear();
  for (int i = 0; i < 20; ++i) capped.log(LogLevel::kInfo, i % 2 ? "odd" : "even", "");
  EXPECT_EQ(capture->size(), 10u);
  EXPECT_EQ(capped.suppressed(), 10u);
}

TEST(Redaction, SecretKeysAreRedactedWhateverTheirValue) {
  for (std::string_view key : {"api_key", "X-Api-Key", "token", "access_token", "client_secret", "password",
                               "Authorization", "cookie", "credentials", "apikey"}) {
    EXPECT_TRUE(is_secret_key(key)) << key;
  }
  for (std::string_view key : {"pid", "reason", "route", "error", "breaker"}) EXPECT_FALSE(is_secret_key(key)) << key;

  SimEnvironment env(1);
  auto capture = std::make_shared<CaptureSink>();
  Logger logger(env, LogLevel::kDebug, capture);
  logger.log(LogLevel::kInfo, "e", "m",
             {{"api_key", "plain-looking-value"},
              {"Authorization", "anything at all"},
              {"input_tokens", 120},
              {"reason", "fine"}});
  auto r = capture->records().at(0);
  EXPECT_EQ(r.field("api_key"), "[redacted]");
  EXPECT_EQ(r.field("Authorization"), "[redacted]");
  EXPECT_EQ(r.field("input_tokens"), "120");  // numbers are no secrets
  EXPECT_EQ(r.field("reason"), "fine");
  EXPECT_FALSE(capture->contains("plain-looking-value"));
}

TEST(Redaction, TextThatLooksLikeACredentialIsScrubbed) {
  auto redact = [](std::string_view s) { return redact_log_text(s).value_or(std::string(s)); };
  EXPECT_EQ(redact("key sk-proj-ABCdef123456789 was refused"), "key [redacted] was refused");
  EXPECT_EQ(redact("sk-ant-api03-XYZ_abc-123456 and sk-short"), "[redacted] and sk-short");
  EXPECT_EQ(redact("Authorization: Bearer eyJhbGciOi.J9.sig-_x"), "Authorization: Bearer [redacted]");
  EXPECT_EQ(redact("got bearer abc.def/ghi="), "got bearer [redacted]");
  EXPECT_EQ(redact("x-api-key: k-123abc, next"), "x-api-key: [redacted], next");
  EXPECT_EQ(redact("url?api_key=abc123&x=1"), "url?api_key=[redacted]&x=1");
  EXPECT_EQ(redact(R"({"api_key": "abc123", "n": 1})"), R"({"api_key": "[redacted]", "n": 1})");
  EXPECT_EQ(redact("Authorization: Basic dXNlcjpwYXNz"), "Authorization: Basic [redacted]");
  EXPECT_EQ(redact("password=hunter2"), "password=[redacted]");
  EXPECT_EQ(redact("Cookie: session=abc123"), "Cookie: [redacted]");
  EXPECT_EQ(redact("ghp_0123456789abcdefABCDEF and xoxb-1234567890-abc"), "[redacted] and [redacted]");
  EXPECT_EQ(redact("AKIAIOSFODNN7EXAMPLE"), "[redacted]");
  // Left alone: ordinary text, numbers after a token-ish name, words that merely contain "sk-".
  EXPECT_FALSE(redact_log_text("process crashed: crash: std::runtime_error: boom").has_value());
  EXPECT_FALSE(redact_log_text("the prompt needs 120 tokens: 4096 reserved").has_value());
  EXPECT_FALSE(redact_log_text("input_tokens=120").has_value());
  // An error code naming a key, then a message: a word after a secret name is kept.
  EXPECT_FALSE(redact_log_text("invalid_api_key: Incorrect API key provided").has_value());
  EXPECT_FALSE(redact_log_text("route 'bad-key': openai: http 401").has_value());
  EXPECT_EQ(redact("token: Zm9vYmFy"), "token: [redacted]");                 // mixed case: not a word
  EXPECT_EQ(redact("token=correcthorsebatterystaple"), "token=[redacted]");  // 16 letters or more
  EXPECT_FALSE(redact_log_text("task-sk-1234567 risk-sk-abcdefgh").has_value());
  EXPECT_FALSE(redact_log_text("").has_value());
  EXPECT_FALSE(redact_log_text("[redacted]").has_value());
}

TEST(Redaction, TheLoggerScrubsMessagesAndStringFields) {
  SimEnvironment env(1);
  Logger& logger = env.logger();
  logger.log(LogLevel::kError, "e", "call failed: Bearer sk-live-abcdefghij",
             {{"error", "401: Incorrect API key provided: sk-proj-SECRET123456"}, {"note", "x-api-key: s3cr3t!"}});
  const CaptureSink& capture = env.captured_logs();
  EXPECT_FALSE(capture.contains("SECRET123456")) << capture.dump();
  EXPECT_FALSE(capture.contains("abcdefghij")) << capture.dump();
  EXPECT_FALSE(capture.contains("s3cr3t")) << capture.dump();
  EXPECT_TRUE(capture.contains("Incorrect API key provided: [redacted]")) << capture.dump();
}

TEST(SimEnvironment, CapturesDebugAndAboveWithVirtualTime) {
  SimEnvironment env(1);
  EXPECT_EQ(env.logger().level(), LogLevel::kDebug);
  env.set_now(env.now() + 90s + 5ms);
  NINES_LOG(env.logger(), LogLevel::kDebug, "hello", "virtual", {"n", 1});
  auto r = env.captured_logs().records();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].human, "2026-01-01T00:01:30.005Z debug hello: virtual n=1");
}

TEST(RealEnvironment, LogsToTheSinkItIsGivenAtNoticeByDefault) {
  auto capture = std::make_shared<CaptureSink>();
  auto env = make_real_environment({.workers = 1, .seed = 1, .log_sink = capture});
  EXPECT_EQ(env->logger().level(), LogLevel::kNotice);
  NINES_LOG(env->logger(), LogLevel::kInfo, "quiet", "");
  NINES_LOG(env->logger(), LogLevel::kNotice, "shown", "");
  EXPECT_EQ(capture->count("quiet"), 0u);
  EXPECT_EQ(capture->count("shown"), 1u);
  auto quiet = make_real_environment({.workers = 1, .seed = 1, .log_level = LogLevel::kError, .log_sink = capture});
  EXPECT_FALSE(quiet->logger().enabled(LogLevel::kWarning));
}

}  // namespace
}  // namespace nines
