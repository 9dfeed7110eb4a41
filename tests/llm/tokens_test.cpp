// Token estimation (llm/tokens.hpp): the family table, the character-class scanner, the
// properties the router and the context manager rely on (monotone, errs high, families
// differ), estimates against exact counts recorded from js-tiktoken (so node is not needed
// here), message and request overheads, and the usage correction (converges, clamped,
// bounded, thread-safe).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "llm/fixtures.hpp"
#include "nines/core/environment.hpp"
#include "nines/llm/errors.hpp"
#include "nines/llm/tokens.hpp"
#include "support/status_matchers.hpp"

namespace nines::llm {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

// Exact counts by js-tiktoken 1.0.21 (bench/peers/tokens/node/count_tokens.mjs).
constexpr const char* kEnglish =
    "The quick brown fox jumps over the lazy dog. Fault-tolerant runtimes restart crashed processes from a "
    "known state, and durable workflows record every step before its effect is visible outside.";
constexpr std::int64_t kEnglishO200k = 37, kEnglishCl100k = 37;
constexpr const char* kChinese =
    "面向人工智能代理的容错运行时。一个需要连续工作数小时的智能代理，迟早会遇到各种故障：网络连接中断，模型服务商返回错"
    "误。";
constexpr std::int64_t kChineseO200k = 41, kChineseCl100k = 60;
constexpr const char* kCode = "Std::vector<int> v; for (auto& x : values) { if (x.ok()) total += x.value() * 2; }";
constexpr std::int64_t kCodeO200k = 31, kCodeCl100k = 31;

std::int64_t count(TokenizerFamily f, std::string_view text) { return TokenCounter(f).text(text); }

TEST(FamilyForModel, Table) {
  struct Row {
    const char* model;
    TokenizerFamily family;
  };
  const Row rows[] = {
      {"gpt-4o", TokenizerFamily::kOpenAiO200k},
      {"gpt-4o-mini-2024-07-18", TokenizerFamily::kOpenAiO200k},
      {"GPT-4O", TokenizerFamily::kOpenAiO200k},
      {"chatgpt-4o-latest", TokenizerFamily::kOpenAiO200k},
      {"gpt-4.1-nano", TokenizerFamily::kOpenAiO200k},
      {"gpt-5", TokenizerFamily::kOpenAiO200k},
      {"o1-preview", TokenizerFamily::kOpenAiO200k},
      {"o3-mini", TokenizerFamily::kOpenAiO200k},
      {"o4-mini", TokenizerFamily::kOpenAiO200k},
      {"openai/gpt-oss-120b", TokenizerFamily::kOpenAiO200k},
      {"gpt-4", TokenizerFamily::kOpenAiCl100k},
      {"gpt-4-turbo", TokenizerFamily::kOpenAiCl100k},
      {"gpt-3.5-turbo", TokenizerFamily::kOpenAiCl100k},
      {"gpt-35-turbo", TokenizerFamily::kOpenAiCl100k},
      {"claude-3-5-sonnet-20241022", TokenizerFamily::kClaude},
      {"anthropic/claude-sonnet-4", TokenizerFamily::kClaude},
      {"meta-llama/Llama-3.1-8B-Instruct", TokenizerFamily::kLlama},
      {"llama3.2", TokenizerFamily::kLlama},
      {"mistral-large-latest", TokenizerFamily::kLlama},
      {"mixtral-8x7b", TokenizerFamily::kLlama},
      {"qwen2.5-72b", TokenizerFamily::kGeneric},
      {"sim", TokenizerFamily::kGeneric},
      {"", TokenizerFamily::kGeneric},
      {"o", TokenizerFamily::kGeneric},
      {"gpt-", TokenizerFamily::kGeneric},
  };
  for (const Row& r : rows) EXPECT_EQ(family_for_model(r.model), r.family) << r.model;
}

TEST(TextFeatures, CountsCharacterClasses) {
  TextFeatures f = text_features("Hello, world!\n");
  EXPECT_EQ(f.bytes, 14);
  EXPECT_EQ(f.words, 2);
  EXPECT_EQ(f.punct, 2);
  EXPECT_EQ(f.punct_runs, 2);
  EXPECT_EQ(f.space_runs, 0);  // one space joins "world"; the newline joins "!"

  f = text_features("camelCaseIdentifier 1234567 x\n\n    y");
  EXPECT_EQ(f.words, 3);
  EXPECT_EQ(f.case_changes, 2);
  EXPECT_EQ(f.long_word_letters, 19 - 6);
  EXPECT_EQ(f.digit_groups, 3);  // 123 456 7
  EXPECT_EQ(f.space_runs, 1);    // "\n\n    "

  f = text_features("Größe 中文 ひらがな “q” ✅ 🎉");
  EXPECT_EQ(f.nonascii_letters, 2);
  EXPECT_EQ(f.long_word_letters, 0);
  EXPECT_EQ(f.cjk, 2);
  EXPECT_EQ(f.kana, 4);
  EXPECT_EQ(f.typography, 2);
  EXPECT_EQ(f.symbols, 1);
  EXPECT_EQ(f.astral, 1);
}

TEST(TextFeatures, InvalidUtf8IsCountedNotTrusted) {
  // Stray continuation bytes, a lead byte without its continuation, truncated sequences at
  // the end: each piece costs like an emoji, and nothing is read past the end.
  const std::string bad = std::string("a\x80\xff") + "\xe4\xb8" + "b" + "\xf0\x9f\x8e";
  TextFeatures f = text_features(bad);
  EXPECT_EQ(f.bytes, static_cast<std::int64_t>(bad.size()));
  EXPECT_EQ(f.words, 2);
  EXPECT_EQ(f.astral, 4);  // \x80, \xff, \xe4\xb8, \xf0\x9f\x8e
  EXPECT_GT(count(TokenizerFamily::kOpenAiO200k, bad), 0);
}

TEST(TokenCounter, EmptyTextIsFree) {
  for (auto f : {TokenizerFamily::kOpenAiO200k, TokenizerFamily::kOpenAiCl100k, TokenizerFamily::kClaude,
                 TokenizerFamily::kLlama, TokenizerFamily::kGeneric}) {
    EXPECT_EQ(count(f, ""), 0) << to_string(f);
  }
}

TEST(TokenCounter, CloseToExactCountsAndNeverFarUnder) {
  struct Row {
    const char* text;
    TokenizerFamily family;
    std::int64_t exact;
  };
  const Row rows[] = {
      {kEnglish, TokenizerFamily::kOpenAiO200k, kEnglishO200k},
      {kEnglish, TokenizerFamily::kOpenAiCl100k, kEnglishCl100k},
      {kChinese, TokenizerFamily::kOpenAiO200k, kChineseO200k},
      {kChinese, TokenizerFamily::kOpenAiCl100k, kChineseCl100k},
      {kCode, TokenizerFamily::kOpenAiO200k, kCodeO200k},
      {kCode, TokenizerFamily::kOpenAiCl100k, kCodeCl100k},
  };
  for (const Row& r : rows) {
    const std::int64_t est = count(r.family, r.text);
    EXPECT_GE(est, r.exact * 9 / 10) << to_string(r.family) << ": " << r.text;
    EXPECT_LE(est, r.exact * 3 / 2) << to_string(r.family) << ": " << r.text;
  }
}

TEST(TokenCounter, MonotoneInLength) {
  // Every prefix that ends on a character boundary costs no more than the next one; a prefix
  // that cuts a multi-byte character counts that piece as one unit (about what the whole
  // character costs, at most a few tokens more).
  auto boundary = [](const std::string& s, std::size_t n) {
    return n == s.size() || (static_cast<unsigned char>(s[n]) & 0xC0) != 0x80;
  };
  for (const char* text :
       {kEnglish, kChinese, kCode, "emoji 🎉🎉 and ✅ marks — “quoted” Größe!\n \n\n    indented {\n"}) {
    const std::string s = text;
    for (auto f : {TokenizerFamily::kOpenAiO200k, TokenizerFamily::kOpenAiCl100k, TokenizerFamily::kGeneric}) {
      std::int64_t prev = 0;
      for (std::size_t n = 0; n <= s.size(); ++n) {
        const std::int64_t t = count(f, std::string_view(s).substr(0, n));
        if (boundary(s, n)) {
          EXPECT_GE(t, prev) << to_string(f) << " prefix " << n << " of " << text;
          prev = t;
        } else {
          EXPECT_LE(t, prev + 5) << to_string(f) << " prefix " << n << " of " << text;
        }
      }
    }
  }
  // And doubling a text at least doubles its estimate minus rounding.
  const std::string twice = std::string(kEnglish) + " " + kEnglish;
  EXPECT_GE(count(TokenizerFamily::kOpenAiO200k, twice), 2 * count(TokenizerFamily::kOpenAiO200k, kEnglish) - 1);
}

TEST(TokenCounter, FamiliesDiffer) {
  // cl100k spends more on Chinese than o200k (60 vs 41 exact); the families without an
  // exact tokenizer are above both OpenAI ones; generic is the most conservative.
  EXPECT_GT(count(TokenizerFamily::kOpenAiCl100k, kChinese), count(TokenizerFamily::kOpenAiO200k, kChinese));
  for (const char* text : {kEnglish, kChinese, kCode}) {
    const std::int64_t openai =
        std::max(count(TokenizerFamily::kOpenAiO200k, text), count(TokenizerFamily::kOpenAiCl100k, text));
    EXPECT_GT(count(TokenizerFamily::kClaude, text), openai) << text;
    EXPECT_GT(count(TokenizerFamily::kLlama, text), openai) << text;
    EXPECT_GE(count(TokenizerFamily::kGeneric, text), count(TokenizerFamily::kClaude, text)) << text;
    EXPECT_GE(count(TokenizerFamily::kGeneric, text), count(TokenizerFamily::kLlama, text)) << text;
  }
}

TEST(TokenCounter, CjkCostsMorePerCharacterThanAsciiWords) {
  const std::string zh = kChinese;  // 59 characters
  const std::string en = kEnglish;  // 192 characters
  for (auto f : {TokenizerFamily::kOpenAiO200k, TokenizerFamily::kOpenAiCl100k, TokenizerFamily::kGeneric}) {
    const double zh_per_char = static_cast<double>(count(f, zh)) / 59.0;
    const double en_per_char = static_cast<double>(count(f, en)) / static_cast<double>(en.size());
    EXPECT_GT(zh_per_char, 2 * en_per_char) << to_string(f);
  }
}

Message tool_call_message() {
  return Message::assistant(
      "Let me look.", {ToolCall{.id = "call_1", .name = "search", .arguments_json = R"({"q":"fault tolerance"})"}});
}

TEST(TokenCounter, MessageOverheads) {
  const TokenCounter c(TokenizerFamily::kOpenAiO200k);
  const Message user = Message::user(kEnglish);
  EXPECT_GE(c.message(user), c.text(kEnglish) + 3);  // role markers
  EXPECT_GT(c.message(Message::user("")), 0);

  const Message plain = Message::assistant("Let me look.");
  EXPECT_GE(c.message(tool_call_message()), c.message(plain) + c.text(R"({"q":"fault tolerance"})") + 10);

  const Message result = Message::tool_result("call_1", "42 results");
  EXPECT_GT(c.message(result), c.message(Message::user("42 results")));

  Message with_image = Message::user("what is this?");
  with_image.content.push_back(ContentPart::from_image_url("https://example.com/cat.png"));
  EXPECT_GE(c.message(with_image), c.message(Message::user("what is this?")) + 1000);
}

TEST(TokenCounter, RequestCountsMessagesToolsAndPriming) {
  ChatRequest req{.model = "gpt-4o",
                  .messages = {Message::system("Be brief."), Message::user(kEnglish), tool_call_message(),
                               Message::tool_result("call_1", kCode)}};
  const TokenCounter c(TokenizerFamily::kOpenAiO200k);
  std::int64_t sum = c.reply_priming();
  for (const Message& m : req.messages) sum += c.message(m);
  const std::int64_t no_tools = c.request(req);
  EXPECT_LE(no_tools, sum);      // one rounding instead of one per message
  EXPECT_GE(no_tools, sum - 5);  // ... and nothing else
  EXPECT_EQ(c.tools({}), 0);

  req.tools = {ToolDefinition{
      .name = "search",
      .description = "Searches the web.",
      .parameters_schema_json = R"({"type":"object","properties":{"q":{"type":"string"}},"required":["q"]})"}};
  const std::int64_t tools = c.tools(req.tools);
  EXPECT_GE(tools, c.text(req.tools[0].parameters_schema_json));
  EXPECT_GE(c.request(req), no_tools + tools - 1);

  // Claude's tool-use system prompt (hundreds of tokens) makes the same tools cost more.
  EXPECT_GE(TokenCounter(TokenizerFamily::kClaude).tools(req.tools), tools + 300);
}

TEST(TokenEstimator, OptionsAreValidated) {
  auto bad = [](TokenEstimatorOptions o) {
    auto r = TokenEstimator::create(std::move(o));
    return r.ok() ? std::string() : r.error().to_string();
  };
  EXPECT_THAT(bad({.alpha_up = 0}), HasSubstr("alpha_up"));
  EXPECT_THAT(bad({.alpha_down = 1.5}), HasSubstr("alpha_down"));
  EXPECT_THAT(bad({.headroom = -0.1}), HasSubstr("headroom"));
  EXPECT_THAT(bad({.min_correction = 0}), HasSubstr("min_correction"));
  EXPECT_THAT(bad({.max_correction = 0.9}), HasSubstr("max_correction"));
  EXPECT_THAT(bad({.max_models = 0}), HasSubstr("max_models"));
  EXPECT_THAT(bad({.family_overrides = {{"", TokenizerFamily::kClaude}}}), HasSubstr("family_overrides[0]"));
  EXPECT_THAT(TokenEstimator::create(), IsOk());
}

TEST(TokenEstimator, UnknownModelIsGenericAndOverridesWin) {
  auto est = TokenEstimator::create({.family_overrides = {{"my-deploy", TokenizerFamily::kOpenAiO200k}}}).value();
  EXPECT_EQ(est->family("some-new-model"), TokenizerFamily::kGeneric);
  EXPECT_EQ(est->family("My-Deploy-east"), TokenizerFamily::kOpenAiO200k);
  EXPECT_EQ(est->family("claude-3-haiku"), TokenizerFamily::kClaude);
  EXPECT_EQ(est->estimate_text("some-new-model", kEnglish), count(TokenizerFamily::kGeneric, kEnglish));
  EXPECT_DOUBLE_EQ(est->correction("some-new-model"), 1.0);
}

// Feeds `rounds` observations of a provider that counts `true_ratio` times nines' raw estimate.
void feed(TokenEstimator& est, std::string_view model, double true_ratio, int rounds) {
  ChatRequest req{.model = std::string(model),
                  .messages = {Message::user(std::string(kEnglish) + kEnglish + kEnglish)}};
  for (int i = 0; i < rounds; ++i) {
    const std::int64_t estimated = est.estimate_request(req);
    const std::int64_t raw = TokenCounter(est.family(model)).request(req);
    est.observe(model, estimated, static_cast<std::int64_t>(static_cast<double>(raw) * true_ratio));
  }
}

TEST(TokenEstimator, CorrectionConvergesWithHeadroom) {
  auto est = TokenEstimator::create().value();
  feed(*est, "gpt-4o", 1.3, 80);
  // The factor aims at reported/raw plus 5% headroom: 1.3 * 1.05.
  EXPECT_NEAR(est->correction("gpt-4o"), 1.3 * 1.05, 0.02);
  EXPECT_NEAR(static_cast<double>(est->estimate_text("gpt-4o", kEnglish)),
              1.365 * static_cast<double>(count(TokenizerFamily::kOpenAiO200k, kEnglish)), 1.0);
  // Other models are untouched.
  EXPECT_DOUBLE_EQ(est->correction("gpt-4o-mini"), 1.0);

  // Then the provider counts less: the factor comes down, slowly (alpha_down).
  feed(*est, "gpt-4o", 0.8, 1);
  const double after_one = est->correction("gpt-4o");
  EXPECT_LT(after_one, 1.365);
  EXPECT_GT(after_one, 1.365 - 0.1 * (1.365 - 0.84) - 0.02);
  feed(*est, "gpt-4o", 0.8, 200);
  EXPECT_NEAR(est->correction("gpt-4o"), 0.8 * 1.05, 0.02);
}

TEST(TokenEstimator, UnderEstimatesAreCorrectedFasterThanOverEstimates) {
  auto est = TokenEstimator::create().value();
  feed(*est, "up", 1.5, 1);
  feed(*est, "down", 0.6, 1);
  const double up_step = est->correction("up") - 1.0;
  const double down_step = 1.0 - est->correction("down");
  EXPECT_NEAR(up_step, 0.5 * (1.5 * 1.05 - 1.0), 0.02);
  EXPECT_NEAR(down_step, 0.1 * (1.0 - 0.6 * 1.05), 0.02);
}

TEST(TokenEstimator, CorrectionIsClamped) {
  auto est = TokenEstimator::create().value();
  feed(*est, "big", 10.0, 50);
  EXPECT_DOUBLE_EQ(est->correction("big"), 2.0);
  feed(*est, "small", 0.05, 500);
  EXPECT_DOUBLE_EQ(est->correction("small"), 0.5);
}

TEST(TokenEstimator, IgnoresUnreportedAndTinyObservations) {
  auto est = TokenEstimator::create().value();
  est->observe("m", 1000, 0);  // provider did not report usage
  est->observe("m", 1000, -5);
  est->observe("m", 10, 100);  // estimate under min_observed_tokens
  EXPECT_DOUBLE_EQ(est->correction("m"), 1.0);
  EXPECT_EQ(est->tracked_models(), 0u);
}

TEST(TokenEstimator, BoundedModelsEvictTheLeastRecentlyObserved) {
  auto est = TokenEstimator::create({.max_models = 3}).value();
  for (const char* m : {"a", "b", "c"}) est->observe(m, 100, 150);
  est->observe("a", 100, 150);  // a is now the most recent
  est->observe("d", 100, 150);  // evicts b
  EXPECT_EQ(est->tracked_models(), 3u);
  EXPECT_DOUBLE_EQ(est->correction("b"), 1.0);
  EXPECT_GT(est->correction("a"), 1.0);
  EXPECT_GT(est->correction("c"), 1.0);
  EXPECT_GT(est->correction("d"), 1.0);
}

TEST(TokenEstimator, ConcurrentObserveAndEstimate) {
  auto env = make_real_environment({.workers = 1, .seed = 3});
  auto est = TokenEstimator::create({.max_models = 8}).value();
  std::atomic<std::int64_t> sink{0};
  std::vector<std::unique_ptr<Thread>> threads;
  for (int t = 0; t < 4; ++t) {
    auto th = env->start_thread("tok" + std::to_string(t), [&, t] {
      for (int i = 0; i < 2000; ++i) {
        const std::string model = "model-" + std::to_string((i + t) % 12);
        est->observe(model, 100, 100 + (i % 50));
        sink += est->estimate_text(model, kEnglish);
      }
    });
    ASSERT_THAT(th, IsOk());
    threads.push_back(std::move(*th));
  }
  for (auto& th : threads) th->join();
  EXPECT_LE(est->tracked_models(), 8u);
  EXPECT_GT(sink.load(), 0);
  for (int m = 0; m < 12; ++m) {
    const double f = est->correction("model-" + std::to_string(m));
    EXPECT_GE(f, 0.5);
    EXPECT_LE(f, 2.0);
  }
}

TEST(OverflowCounts, ReadsWhatProvidersSayTheyCounted) {
  const Now now{};
  struct Row {
    Provider provider;
    std::string body;
    std::optional<OverflowCounts> expected;
  };
  const std::vector<Row> rows = {
      {Provider::kAnthropic, test::fixture("anthropic/error_prompt_too_long.json"), OverflowCounts{208473, 200000}},
      {Provider::kOpenAi, test::fixture("openai/error_context_length.json"), OverflowCounts{130412, 128000}},
      {Provider::kOpenAi,
       R"({"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion).","type":"BadRequestError","param":null,"code":400})",
       OverflowCounts{4000, 4096}},
      {Provider::kAnthropic,
       R"({"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000, decrease input length or `max_tokens` and try again"}})",
       OverflowCounts{198000, 200000}},
      // llama.cpp says nothing countable in its message.
      {Provider::kOpenAi,
       R"({"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":9000,"n_ctx":8192}})",
       std::nullopt},
  };
  for (const Row& r : rows) {
    ApiFailure f = map_api_error(r.provider, 400, {}, r.body, now);
    ASSERT_THAT(f.error, StatusIs(ErrorKind::kContextOverflow)) << r.body;
    auto c = overflow_counts(f.error.with_context("model m"));
    ASSERT_EQ(c.has_value(), r.expected.has_value()) << f.error.to_string();
    if (c) {
      EXPECT_EQ(c->prompt_tokens, r.expected->prompt_tokens) << f.error.to_string();
      EXPECT_EQ(c->window_tokens, r.expected->window_tokens) << f.error.to_string();
    }
  }
  // Only context overflows count.
  EXPECT_FALSE(overflow_counts(Error(ErrorKind::kPermanent, "prompt is too long: 5 tokens > 4 maximum")));
}

}  // namespace
}  // namespace nines::llm
