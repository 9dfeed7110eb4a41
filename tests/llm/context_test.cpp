// Context management (llm/context.hpp) and the message JSON codec (message.hpp):
// encode/decode round trips and errors; fit_messages rule by rule plus invariants over a
// sweep of budgets; the ContextManager's summarization checkpoints through a MemoryStore with
// a fake summarizer, on the simulated environment (deterministic, no sleeps).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/llm/anthropic.hpp"
#include "nines/llm/context.hpp"
#include "nines/llm/openai.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/store/memory_store.hpp"
#include "support/numbered.hpp"
#include "support/status_matchers.hpp"

namespace nines::llm {
namespace {
using ::nines::test::IsOk;
using ::nines::test::IsOkAndHolds;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

using nines::test::numbered;

// About n tokens of English (o200k: one word each, a few more for the punctuation).
std::string words(int n, std::string_view tag = "w") {
  static const char* kWords[] = {"agent", "store", "model", "task", "step", "tool", "result", "error", "retry", "plan"};
  std::string out(tag);
  for (int i = 0; i < n; ++i) {
    out += ' ';
    out += kWords[i % 10];
  }
  return out;
}

ToolCall call(std::string id, std::string name = "search") {
  return ToolCall{.id = std::move(id), .name = std::move(name), .arguments_json = R"({"q":"x"})"};
}

Message pinned(Message m) {
  m.pinned = true;
  return m;
}

// ---- encode_message / decode_message --------------------------------------------------------

TEST(MessageJson, RoundTripsEveryField) {
  Message full{.role = Role::kAssistant,
               .content = {ContentPart::from_text("Größe 中文 🎉 \"quoted\"\n"),
                           ContentPart::from_image_url("data:image/png;base64,AAAA")},
               .tool_calls = {call("c1"), ToolCall{.id = "c2", .name = "ls", .arguments_json = "not json"}},
               .tool_call_id = "odd but kept",
               .is_error = true,
               .pinned = true};
  const std::vector<Message> all = {Message::system("s"),
                                    Message::user("u"),
                                    Message::assistant("a"),
                                    Message::assistant("", {call("c9")}),
                                    Message::tool_result("c9", "out", true),
                                    pinned(Message::user("keep me")),
                                    Message{},
                                    full};
  for (const Message& m : all) {
    const std::string json = encode_message(m);
    auto back = decode_message(json);
    ASSERT_THAT(back, IsOk()) << json << ": " << back.error().to_string();
    EXPECT_EQ(*back, m) << json;
  }
}

TEST(MessageJson, DefaultsAreLeftOutAndUnknownFieldsIgnored) {
  const std::string json = encode_message(Message::user("hi"));
  EXPECT_EQ(json, R"({"content":[{"text":"hi","type":"text"}],"role":"user","v":1})");
  auto m = decode_message(R"({"v":1,"role":"user","content":[{"type":"text","text":"hi","lang":"en"}],"future":[1]})");
  ASSERT_THAT(m, IsOkAndHolds(Message::user("hi")));
  // No version and no content: a plain message.
  m = decode_message(R"({"role":"assistant"})");
  ASSERT_THAT(m, IsOk());
  EXPECT_EQ(m->role, Role::kAssistant);
}

TEST(MessageJson, BadInputNamesWhatIsWrong) {
  struct Row {
    std::string json;
    const char* expected;
  };
  const std::vector<Row> rows = {
      {"", "message JSON: not JSON: parse error"},
      {"{\"role\":", "not JSON: parse error"},
      {"[]", "message JSON: expected an object, got array"},
      {R"({"v":1})", "message JSON: role: missing"},
      {R"({"role":7})", "role: expected a string, got number"},
      {R"({"role":"bot"})", "role: expected one of system, user, assistant, tool, got \"bot\""},
      {R"({"v":2,"role":"user"})", "v: version 2 is not supported"},
      {R"({"v":"1","role":"user"})", "v: expected an integer"},
      {R"({"role":"user","content":"hi"})", "content: expected an array, got string"},
      {R"({"role":"user","content":[{"type":"text","text":"a"},{"type":"audio"}]})",
       "content[1].type: expected \"text\" or \"image_url\", got \"audio\""},
      {R"({"role":"user","content":[{"type":"text"}]})", "content[0].text: missing"},
      {R"({"role":"user","content":[{"type":"image_url","url":3}]})", "content[0].url: expected a string"},
      {R"({"role":"assistant","tool_calls":[{"id":"c"}]})", "tool_calls[0].name: missing"},
      {R"({"role":"assistant","tool_calls":{}})", "tool_calls: expected an array"},
      {R"({"role":"tool","is_error":"yes"})", "is_error: expected true or false, got string"},
      {R"({"role":"user","pinned":1})", "pinned: expected true or false"},
      {std::string(300, '[') + std::string(300, ']'), "nested deeper than 256"},
  };
  for (const Row& r : rows) {
    auto m = decode_message(r.json);
    ASSERT_THAT(m, StatusIs(ErrorKind::kInvalidArgument)) << r.json;
    EXPECT_THAT(m.error().message(), HasSubstr(r.expected)) << r.json << " -> " << m.error().message();
  }
}

TEST(MessageJson, CodecsIgnorePinned) {
  ChatRequest plain{.model = "m", .messages = {Message::system("s"), Message::user("hello")}};
  ChatRequest with_pin = plain;
  with_pin.messages[1].pinned = true;
  auto openai = make_openai_codec({.base_url = "http://127.0.0.1:1/v1", .api_key = "k"}).value();
  auto anthropic = make_anthropic_codec({.base_url = "http://127.0.0.1:1", .api_key = "k"}).value();
  EXPECT_EQ(openai->build_call(plain).value().body, openai->build_call(with_pin).value().body);
  EXPECT_EQ(anthropic->build_call(plain).value().body, anthropic->build_call(with_pin).value().body);
  EXPECT_THAT(openai->build_call(with_pin).value().body, Not(HasSubstr("pinned")));
}

// ---- fit_messages ---------------------------------------------------------------------------

const TokenCounter kCounter(TokenizerFamily::kOpenAiO200k);

FitOptions fit_options(std::int64_t budget, std::int64_t max_tool = 4096) {
  return FitOptions{.budget_tokens = budget, .model = "gpt-4o", .max_tool_output_tokens = max_tool};
}

std::int64_t cost(const std::vector<Message>& ms) {
  std::int64_t t = kCounter.reply_priming();
  for (const Message& m : ms) t += kCounter.message(m);
  return t;
}

std::vector<std::string> texts(const std::vector<Message>& ms) {
  std::vector<std::string> out;
  for (const Message& m : ms) out.push_back(m.text().substr(0, m.text().find(' ')));
  return out;
}

TEST(FitMessages, UnderBudgetIsUnchanged) {
  std::vector<Message> ms = {Message::system("sys"), Message::user(words(20, "u1")), Message::assistant("a1")};
  auto r = fit_messages(ms, fit_options(10000));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->messages, ms);
  EXPECT_EQ(r->tokens_before, cost(ms));
  EXPECT_EQ(r->tokens_after, r->tokens_before);
  EXPECT_EQ(r->dropped, 0u);
  EXPECT_EQ(r->shortened, 0u);
}

TEST(FitMessages, InvalidOptions) {
  auto r = fit_messages({Message::user("x")}, fit_options(0));
  ASSERT_THAT(r, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("budget_tokens must be > 0, got 0")));
  r = fit_messages({Message::user("x")}, fit_options(10, -1));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message(), HasSubstr("max_tool_output_tokens"));
}

TEST(FitMessages, ShortensLargeToolOutputsOldestFirst) {
  std::vector<Message> ms = {Message::system("sys"),
                             Message::user(words(10, "u1")),
                             Message::assistant("", {call("c1")}),
                             Message::tool_result("c1", words(2000, "first")),
                             Message::assistant("", {call("c2")}),
                             Message::tool_result("c2", words(2000, "second")),
                             Message::user(words(10, "u2"))};
  const std::int64_t before = cost(ms);
  // Shortening the first output to 500 tokens is enough.
  auto r = fit_messages(ms, fit_options(before - 1000, 500));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->shortened, 1u);
  EXPECT_EQ(r->dropped, 0u);
  ASSERT_EQ(r->messages.size(), ms.size());
  const std::string first = r->messages[3].text();
  EXPECT_TRUE(first.starts_with("first agent store"));
  EXPECT_TRUE(first.ends_with(words(2000).substr(words(2000).size() - 20)));
  EXPECT_THAT(first, HasSubstr("elided ...]"));
  EXPECT_LE(kCounter.text(first), 500);
  EXPECT_EQ(r->messages[5], ms[5]);  // the newer one untouched
  EXPECT_EQ(r->messages[3].tool_call_id, "c1");
  EXPECT_EQ(r->tokens_after, cost(r->messages));
  EXPECT_LE(r->tokens_after, before - 1000);
}

TEST(FitMessages, ShortenTextKeepsHeadAndTailAndWholeCharacters) {
  std::string text;
  for (int i = 0; i < 400; ++i) text += "第" + std::to_string(i) + "行：容错运行时的检查点\n";
  const std::string out = shorten_text(text, 300, kCounter);
  EXPECT_LE(kCounter.text(out), 300);
  EXPECT_TRUE(out.starts_with("第0行"));
  EXPECT_TRUE(out.ends_with("第399行：容错运行时的检查点\n"));
  const auto marker = out.find("[... ");
  ASSERT_NE(marker, std::string::npos);
  EXPECT_THAT(out, HasSubstr(" bytes (about "));
  // Cut at line ends: the marker sits on a line of its own.
  EXPECT_EQ(out[marker - 1], '\n');
  // Valid UTF-8: decoding it back gives no replacement characters.
  auto back = decode_message(encode_message(Message::user(out)));
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->text(), out);
  EXPECT_EQ(shorten_text("short", 300, kCounter), "short");
}

TEST(FitMessages, DropsOldestTurnsFirst) {
  std::vector<Message> ms = {
      Message::system("sys"),          Message::user(words(100, "u1")),      Message::assistant(words(100, "a1")),
      Message::user(words(100, "u2")), Message::assistant(words(100, "a2")), Message::user(words(10, "u3"))};
  auto r = fit_messages(ms, fit_options(cost(ms) - 50));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(texts(r->messages), (std::vector<std::string>{"sys", "u2", "a2", "u3"}));
  EXPECT_EQ(r->dropped, 2u);
}

TEST(FitMessages, PinnedAndSystemMessagesAreKeptWhereTheyAre) {
  std::vector<Message> ms = {Message::system("sys"),
                             pinned(Message::user(words(50, "task"))),
                             Message::assistant(words(100, "a1")),
                             Message::system("mid-conversation instruction"),
                             Message::user(words(100, "u2")),
                             Message::assistant(words(100, "a2")),
                             Message::user(words(10, "u3"))};
  auto r = fit_messages(ms, fit_options(cost(ms) - 300));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(texts(r->messages), (std::vector<std::string>{"sys", "task", "mid-conversation", "u3"}));
  EXPECT_TRUE(r->messages[1].pinned);
}

TEST(FitMessages, PinnedToolResultKeepsItsCall) {
  std::vector<Message> ms = {Message::system("sys"),
                             Message::user(words(100, "u1")),
                             Message::assistant("", {call("c1"), call("c2")}),
                             pinned(Message::tool_result("c1", "pinned result")),
                             Message::tool_result("c2", words(100, "r2")),
                             Message::user(words(100, "u2")),
                             Message::assistant(words(100, "a2")),
                             Message::user("u3")};
  auto r = fit_messages(ms, fit_options(cost(ms) - 150));
  ASSERT_THAT(r, IsOk());
  // u1 and the u2 turn go; the call with both results stays whole.
  ASSERT_EQ(r->messages.size(), 5u);
  EXPECT_EQ(r->messages[1].tool_calls.size(), 2u);
  EXPECT_EQ(r->messages[2].text(), "pinned result");
  EXPECT_EQ(r->messages[3].tool_call_id, "c2");
  EXPECT_EQ(r->messages[4].text(), "u3");
}

TEST(FitMessages, AfterTheLastUserMessageCallsGoWithTheirResults) {
  // An agent loop: one user task, then many calls. The user message stays; the oldest
  // call-and-results groups go first.
  std::vector<Message> ms = {Message::system("sys"), Message::user(words(10, "task"))};
  for (int i = 0; i < 6; ++i) {
    const std::string id = numbered("c", i);
    ms.push_back(Message::assistant("", {call(id)}));
    ms.push_back(Message::tool_result(id, words(100, numbered("r", i))));
  }
  // A budget that three groups must go for, and two are not enough.
  std::int64_t three = 0;
  for (std::size_t i = 2; i < 8; ++i) three += kCounter.message(ms[i]);
  auto r = fit_messages(ms, fit_options(cost(ms) - three + 1));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->dropped, 6u);  // three groups of two
  ASSERT_GE(r->messages.size(), 4u);
  EXPECT_EQ(r->messages[1].text(), ms[1].text());
  EXPECT_EQ(r->messages[2].tool_calls.at(0).id, "c3");
  EXPECT_EQ(r->messages[3].tool_call_id, "c3");
}

TEST(FitMessages, LeadingMessagesBeforeTheFirstUserGoFirst) {
  // A history that starts with an orphan tool result and an assistant message.
  std::vector<Message> ms = {Message::system("sys"),
                             Message::tool_result("old", words(50, "orphan")),
                             Message::assistant(words(50, "lead")),
                             Message::user(words(50, "u1")),
                             Message::assistant(words(50, "a1")),
                             Message::user("u2")};
  auto r = fit_messages(ms, fit_options(cost(ms) - 20));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(texts(r->messages), (std::vector<std::string>{"sys", "u1", "a1", "u2"}));
}

TEST(FitMessages, OverflowNamesWhatIsNeededAndTheBudget) {
  std::vector<Message> ms = {Message::system(words(100, "sys")), Message::user(words(10, "u1")),
                             Message::user(words(100, "last"))};
  auto r = fit_messages(ms, fit_options(150));
  ASSERT_THAT(r, StatusIs(ErrorKind::kContextOverflow));
  const std::int64_t need = cost({ms[0], ms[2]});
  EXPECT_THAT(r.error().message(), HasSubstr("model 'gpt-4o' needs at least " + std::to_string(need) + " tokens"));
  EXPECT_THAT(r.error().message(), HasSubstr("but the budget is 150 tokens"));
}

TEST(FitMessages, EstimatorCorrectionCounts) {
  std::vector<Message> ms = {Message::system("sys"), Message::user(words(100, "u1")),
                             Message::assistant(words(100, "a1")), Message::user("u2")};
  auto est = TokenEstimator::create().value();
  FitOptions o = fit_options(cost(ms) + 10);
  o.estimator = est.get();
  auto r = fit_messages(ms, o);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->dropped, 0u);
  for (int i = 0; i < 20; ++i) est->observe("gpt-4o", 1000, 1500);  // the provider counts more
  r = fit_messages(ms, o);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->dropped, 2u);
}

// Every rule as an invariant, over budgets from generous to impossible, on a conversation
// with every kind of message.
TEST(FitMessages, InvariantsHoldAtEveryBudget) {
  std::vector<Message> ms = {Message::system("sys"),
                             Message::tool_result("orphan", words(30, "orphan")),
                             Message::user(words(40, "u1")),
                             Message::assistant("", {call("c1"), call("c2")}),
                             Message::tool_result("c1", words(600, "r1")),
                             Message::tool_result("c2", words(60, "r2")),
                             Message::assistant(words(40, "a1")),
                             pinned(Message::user(words(20, "pin"))),
                             Message::assistant("", {call("c3")}),
                             pinned(Message::tool_result("c3", words(20, "r3"))),
                             Message::user(words(40, "u2")),
                             Message::assistant("", {call("c4")}),
                             Message::tool_result("c4", words(700, "r4")),
                             Message::assistant("", {call("c5")}),
                             Message::tool_result("c5", words(40, "r5")),
                             Message::system("late system"),
                             Message::assistant(words(30, "a5"))};
  const std::int64_t full = cost(ms);
  bool saw_overflow = false;
  for (std::int64_t budget = full + 10; budget > 0; budget -= 23) {
    auto r = fit_messages(ms, fit_options(budget, 200));
    if (!r.ok()) {
      EXPECT_THAT(r, StatusIs(ErrorKind::kContextOverflow));
      saw_overflow = true;
      continue;
    }
    EXPECT_FALSE(saw_overflow) << "fit at " << budget << " after an overflow at a larger budget";
    const auto& out = r->messages;
    EXPECT_LE(r->tokens_after, budget);
    EXPECT_EQ(r->tokens_after, cost(out));
    EXPECT_EQ(out.size() + r->dropped, ms.size());
    std::set<std::string> calls_seen;
    std::size_t j = 0;
    bool seen_non_system = false;
    for (const Message& m : out) {
      // Order kept: out is a subsequence of ms (a shortened tool result matches by call id).
      while (j < ms.size() &&
             !(ms[j].role == m.role && ms[j].tool_call_id == m.tool_call_id && ms[j].tool_calls == m.tool_calls &&
               (ms[j].text() == m.text() || m.role == Role::kTool))) {
        EXPECT_FALSE(ms[j].role == Role::kSystem || ms[j].pinned) << "dropped a kept message at budget " << budget;
        ++j;
      }
      ASSERT_LT(j, ms.size()) << "not a subsequence at budget " << budget;
      ++j;
      for (const ToolCall& c : m.tool_calls) calls_seen.insert(c.id);
      if (m.role == Role::kTool) {
        // The input starts with an orphan result; once anything is dropped, it is the first.
        if (r->dropped > 0) {
          EXPECT_TRUE(seen_non_system) << "leading tool result at budget " << budget;
        }
        if (m.tool_call_id != "orphan") {
          EXPECT_TRUE(calls_seen.count(m.tool_call_id)) << m.tool_call_id << " without its call at " << budget;
        }
      }
      if (m.role != Role::kSystem) seen_non_system = true;
    }
    // The last user message is always there.
    EXPECT_TRUE(std::any_of(out.begin(), out.end(), [](const Message& m) { return m.text().starts_with("u2"); }));
    // Every call in the output has all of its results.
    for (std::size_t i = 0; i < out.size(); ++i) {
      for (std::size_t k = 0; k < out[i].tool_calls.size(); ++k) {
        ASSERT_LT(i + 1 + k, out.size());
        EXPECT_EQ(out[i + 1 + k].tool_call_id, out[i].tool_calls[k].id) << "at budget " << budget;
      }
    }
  }
  EXPECT_TRUE(saw_overflow);
}

// ---- Conversation and ContextManager ----------------------------------------------------------

// Answers with "SUMMARY <n>: <first words of the transcript>", or fails when told to.
class FakeSummarizer : public ChatModel {
 public:
  Task<ChatOutcome> complete(Context&, const ChatRequest& req, TextSink) override {
    requests.push_back(req);
    if (fail_next > 0) {
      --fail_next;
      ChatOutcome failed{Error(ErrorKind::kTransient, "summarizer overloaded"), std::nullopt};
      co_return failed;
    }
    ChatResponse resp;
    resp.model = req.model;
    resp.message = Message::assistant(answer_text.empty() ? "SUMMARY " + std::to_string(requests.size()) : answer_text);
    resp.finish_reason = FinishReason::kStop;
    ChatOutcome ok{std::move(resp), std::nullopt};
    co_return ok;
  }
  std::vector<ChatRequest> requests;
  int fail_next = 0;
  std::string answer_text;
};

struct Fixture {
  Fixture() {
    store = make_memory_store().value();
    rt = Runtime::create(env).value();
    summarizer = std::make_shared<FakeSummarizer>();
  }

  // Runs body in a process to completion (the fake summarizer and the memory store never
  // suspend, so one run_until_idle is enough).
  void run(std::function<Task<>(Context&)> body) {
    bool finished = false;
    auto pid = rt->spawn([&body, &finished](Context& ctx) -> Task<> {
      co_await body(ctx);
      finished = true;
    });
    ASSERT_THAT(pid, IsOk());
    rt->run_until_idle();
    ASSERT_TRUE(finished) << "the process did not finish";
  }

  Conversation load(const std::string& task = "t1") {
    return Conversation::load(*store, task, commit_to_store(*store)).value();
  }

  std::unique_ptr<ContextManager> manager(ContextManagerOptions o = {}, bool with_summarizer = true) {
    if (o.summarizer_model.empty()) o.summarizer_model = "small-summarizer";
    return ContextManager::create(std::move(o), nullptr, with_summarizer ? summarizer : nullptr).value();
  }

  void append(Conversation& conv, std::vector<Message> ms) {
    run([&](Context& ctx) -> Task<> {
      Status s = co_await conv.append(ctx, std::move(ms));
      EXPECT_THAT(s, IsOk());
    });
  }

  Result<Prepared> prepare(const ContextManager& m, Conversation& conv, const std::vector<Message>& live,
                           std::int64_t budget, bool compact = false) {
    std::optional<Result<Prepared>> out;
    PromptBudget b{.model = "gpt-4o", .budget_tokens = budget};
    run([&](Context& ctx) -> Task<> {
      if (compact)
        out.emplace(co_await m.compact(ctx, conv, live, b));
      else
        out.emplace(co_await m.prepare(ctx, conv, live, b));
    });
    if (!out) return Error(ErrorKind::kInternal, "prepare did not finish");
    return std::move(*out);
  }

  SimEnvironment env{11};
  std::unique_ptr<MemoryStore> store;
  std::unique_ptr<Runtime> rt;
  std::shared_ptr<FakeSummarizer> summarizer;
};

// n turns: user question, assistant tool call, tool result, assistant answer (~60 tokens per
// message).
std::vector<Message> turns(int first, int n) {
  std::vector<Message> out;
  for (int i = first; i < first + n; ++i) {
    const std::string id = "call_" + std::to_string(i);
    out.push_back(Message::user(words(50, numbered("q", i))));
    out.push_back(Message::assistant("", {call(id)}));
    out.push_back(Message::tool_result(id, words(50, numbered("r", i))));
    out.push_back(Message::assistant(words(50, numbered("a", i))));
  }
  return out;
}

bool has_summary_message(const std::vector<Message>& prompt, std::string_view text) {
  return std::any_of(prompt.begin(), prompt.end(), [&](const Message& m) {
    return m.role == Role::kUser && m.pinned && m.text().starts_with("[Summary of the earlier conversation]") &&
           m.text().find(text) != std::string::npos;
  });
}

TEST(Conversation, AppendThenLoadSeesEveryMessage) {
  Fixture f;
  Conversation conv = f.load();
  EXPECT_EQ(conv.next_seq(), 0);
  f.append(conv, turns(0, 3));
  f.append(conv, {Message::user("more")});
  EXPECT_EQ(conv.next_seq(), 13);
  Conversation again = Conversation::load(*f.store, "t1", commit_to_store(*f.store), {.page_messages = 5}).value();
  ASSERT_EQ(again.tail().size(), 13u);
  for (std::size_t i = 0; i < 13; ++i) {
    EXPECT_EQ(again.tail()[i].seq, static_cast<std::int64_t>(i));
    EXPECT_EQ(again.tail()[i].message, conv.tail()[i].message);
  }
  EXPECT_EQ(again.next_seq(), 13);
  EXPECT_FALSE(again.summary());
  // Stored as JSON messages.
  auto rows = f.store->read_history("t1", 0, 100).value();
  ASSERT_EQ(rows.size(), 13u);
  EXPECT_EQ(decode_message(rows[12].message).value(), Message::user("more"));
}

TEST(Conversation, FailedAppendAddsNothingAndReusesTheSeqs) {
  Fixture f;
  Conversation conv = f.load();
  f.append(conv, {Message::user("first")});
  f.store->fail_next_commits(1, Error(ErrorKind::kTransient, "disk full"));
  f.run([&](Context& ctx) -> Task<> {
    std::vector<Message> ms = {Message::user("lost"), Message::assistant("lost too")};
    Status s = co_await conv.append(ctx, std::move(ms));
    EXPECT_FALSE(s.ok());
    if (!s.ok()) {
      EXPECT_THAT(s.error().message(), HasSubstr("appending to the history of task 't1'"));
    }
  });
  EXPECT_EQ(conv.tail().size(), 1u);
  EXPECT_EQ(conv.next_seq(), 1);
  f.append(conv, {Message::user("second")});
  EXPECT_EQ(conv.tail().back().seq, 1);
  EXPECT_EQ(f.load().tail().size(), 2u);
}

TEST(Conversation, UndecodableRecordsArePermanentAndNamed) {
  Fixture f;
  WriteBatch b;
  b.append_history("t1", 0, encode_message(Message::user("ok")));
  b.append_history("t1", 1, R"({"role":"robot"})");
  ASSERT_THAT(f.store->commit(b), IsOk());
  auto c = Conversation::load(*f.store, "t1", commit_to_store(*f.store));
  ASSERT_THAT(c, StatusIs(ErrorKind::kPermanent,
                          HasSubstr("history message 1 of task 't1': message JSON: role: expected one of")));

  WriteBatch s;
  s.put_summary("t2", 4, R"({"v":1,"text":"x","kept":[{"role":1}]})");
  ASSERT_THAT(f.store->commit(s), IsOk());
  auto c2 = Conversation::load(*f.store, "t2", commit_to_store(*f.store));
  ASSERT_THAT(
      c2, StatusIs(ErrorKind::kPermanent, HasSubstr("summary through seq 4 of task 't2': message JSON: kept[0].role")));

  EXPECT_THAT(Conversation::load(*f.store, "", commit_to_store(*f.store)), StatusIs(ErrorKind::kInvalidArgument));
}

TEST(Conversation, ViewIsBoundedAndCountsWhatItSkips) {
  Fixture f;
  Conversation conv = Conversation::load(*f.store, "t1", commit_to_store(*f.store), {.max_loaded_messages = 5}).value();
  f.append(conv, turns(0, 2));  // 8 messages
  EXPECT_EQ(conv.tail().size(), 5u);
  EXPECT_EQ(conv.skipped(), 3u);
  EXPECT_EQ(conv.tail().front().seq, 3);
  auto again =
      Conversation::load(*f.store, "t1", commit_to_store(*f.store), {.page_messages = 2, .max_loaded_messages = 5})
          .value();
  EXPECT_EQ(again.tail().front().seq, 3);
  EXPECT_EQ(again.skipped(), 3u);
  EXPECT_EQ(f.store->read_history("t1", 0, 100).value().size(), 8u);  // nothing lost
}

TEST(ContextManager, OptionsAreValidated) {
  auto bad = [](ContextManagerOptions o, bool summarizer = true) {
    auto r = ContextManager::create(std::move(o), nullptr, summarizer ? std::make_shared<FakeSummarizer>() : nullptr);
    return r.ok() ? std::string() : r.error().message();
  };
  EXPECT_THAT(bad({.summarizer_model = ""}), HasSubstr("summarizer_model is required"));
  EXPECT_EQ(bad({}, false), "");  // no summarizer: no model needed
  EXPECT_THAT(bad({.summarize_at_fraction = 0, .summarizer_model = "s"}), HasSubstr("summarize_at_fraction"));
  EXPECT_THAT(bad({.keep_recent_fraction = 1, .summarizer_model = "s"}), HasSubstr("keep_recent_fraction"));
  EXPECT_THAT(bad({.compact_target_fraction = 1.5, .summarizer_model = "s"}), HasSubstr("compact_target_fraction"));
  EXPECT_THAT(bad({.summarizer_model = "s", .max_summary_tokens = 0}), HasSubstr("max_summary_tokens"));
  EXPECT_THAT(bad({.summarizer_model = "s", .summarizer_input_tokens = 10}), HasSubstr("summarizer_input_tokens"));
  EXPECT_THAT(bad({.summarizer_model = "s", .max_summarizer_calls = 0}), HasSubstr("max_summarizer_calls"));
}

TEST(ContextManager, UnderTheTriggerNothingIsSummarized) {
  Fixture f;
  Conversation conv = f.load();
  f.append(conv, turns(0, 2));
  auto m = f.manager();
  const std::vector<Message> live = {Message::system("You are helpful."), Message::user("next question")};
  auto r = f.prepare(*m, conv, live, 100000);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(f.summarizer->requests.empty());
  EXPECT_EQ(r->summarizer_calls, 0);
  EXPECT_FALSE(r->summary_failure);
  ASSERT_EQ(r->fit.messages.size(), 10u);
  EXPECT_EQ(r->fit.messages.front(), live[0]);  // the call's system prompt first
  EXPECT_EQ(r->fit.messages[1], conv.tail()[0].message);
  EXPECT_EQ(r->fit.messages.back(), live[1]);
  EXPECT_FALSE(f.store->load_history("t1", 100).value().summary);
}

TEST(ContextManager, SummarizesTheOldestTurnsAndCommitsTheCheckpointFirst) {
  Fixture f;
  Conversation conv = f.load();
  f.append(conv, turns(0, 10));  // 40 messages, ~2,500 tokens
  auto m = f.manager();
  const std::vector<Message> live = {Message::system("You are helpful."), Message::user("next question")};
  auto r = f.prepare(*m, conv, live, 2000);
  ASSERT_THAT(r, IsOk());
  ASSERT_EQ(f.summarizer->requests.size(), 1u);
  const ChatRequest& req = f.summarizer->requests[0];
  EXPECT_EQ(req.model, "small-summarizer");
  EXPECT_EQ(req.max_output_tokens, 1024);
  ASSERT_EQ(req.messages.size(), 2u);
  EXPECT_EQ(req.messages[0].role, Role::kSystem);
  const std::string transcript = req.messages[1].text();
  EXPECT_THAT(transcript, HasSubstr("[user] q0 agent"));
  EXPECT_THAT(transcript, HasSubstr("[assistant called search({\"q\":\"x\"}) id call_0]"));
  EXPECT_THAT(transcript, HasSubstr("[tool result call_0] r0 agent"));
  EXPECT_THAT(transcript, Not(HasSubstr("<previous_summary>")));

  EXPECT_EQ(r->summarizer_calls, 1);
  EXPECT_FALSE(r->summary_failure);
  ASSERT_TRUE(r->summary_through_seq);
  const std::int64_t through = *r->summary_through_seq;
  EXPECT_EQ(static_cast<std::size_t>(through + 1), r->summarized_messages);
  // Committed: the store's summary is the one in the prompt.
  auto view = f.store->load_history("t1", 100).value();
  ASSERT_TRUE(view.summary);
  EXPECT_EQ(view.summary->covers_through_seq, through);
  EXPECT_THAT(view.summary->summary, HasSubstr("SUMMARY 1"));
  EXPECT_TRUE(has_summary_message(r->fit.messages, "SUMMARY 1"));
  ASSERT_TRUE(conv.summary());
  EXPECT_EQ(conv.summary()->covers_through_seq, through);
  // The transcript covered seq 0..through: the last covered message is in it, the first one
  // kept verbatim is not.
  const Message last_covered = decode_message(f.store->read_history("t1", through, 1).value().at(0).message).value();
  if (last_covered.role != Role::kTool && !last_covered.text().empty()) {
    EXPECT_THAT(transcript, HasSubstr(last_covered.text().substr(0, 20)));
  }
  const std::string front = conv.tail().front().message.text();
  if (!front.empty()) {
    EXPECT_THAT(transcript, Not(HasSubstr("] " + front.substr(0, front.find(' ')) + " agent")));
  }
  // What stays verbatim starts after `through`, not with a tool result, and fits.
  EXPECT_EQ(conv.tail().front().seq, through + 1);
  EXPECT_NE(conv.tail().front().message.role, Role::kTool);
  EXPECT_EQ(r->fit.messages[0], live[0]);
  EXPECT_TRUE(r->fit.messages[1].pinned);  // the summary
  EXPECT_EQ(r->fit.messages[2], conv.tail().front().message);
  EXPECT_EQ(r->fit.messages.back(), live[1]);
  EXPECT_LE(r->fit.tokens_after, 2000);
  EXPECT_EQ(r->fit.dropped, 0u);
}

TEST(ContextManager, CommitFailureMeansTheSummaryIsNotUsed) {
  Fixture f;
  Conversation conv = f.load();
  f.append(conv, turns(0, 10));
  auto m = f.manager();
  f.store->fail_next_commits(1, Error(ErrorKind::kTransient, "disk full"));
  const std::vector<Message> live = {Message::user("next question")};
  auto r = f.prepare(*m, conv, live, 2000);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(f.summarizer->requests.size(), 1u);  // it ran ...
  ASSERT_TRUE(r->summary_failure);               // ... but its checkpoint did not commit
  EXPECT_THAT(r->summary_failure->message(), HasSubstr("committing a summary of task 't1'"));
  EXPECT_FALSE(has_summary_message(r->fit.messages, "SUMMARY"));
  EXPECT_FALSE(conv.summary());
  EXPECT_FALSE(f.store->load_history("t1", 100).value().summary);
  EXPECT_GT(r->fit.dropped, 0u);  // fell back to dropping
  EXPECT_LE(r->fit.tokens_after, 2000);
  EXPECT_EQ(conv.tail().size(), 40u);  // the view still has everything
}

TEST(ContextManager, SummarizerFailureFallsBackToDropping) {
  Fixture f;
  Conversation conv = f.load();
  f.append(conv, turns(0, 10));
  auto m = f.manager();
  f.summarizer->fail_next = 1;
  const std::vector<Message> live = {Message::user("next question")};
  auto r = f.prepare(*m, conv, live, 2000);
  ASSERT_THAT(r, IsOk());
  ASSERT_TRUE(r->summary_failure);
  EXPECT_THAT(*r->summary_failure, StatusIs(ErrorKind::kTransient));
  EXPECT_THAT(r->summary_failure->message(), HasSubstr("summarizer 'small-summarizer': summarizer overloaded"));
  EXPECT_EQ(r->summarizer_calls, 0);
  EXPECT_GT(r->fit.dropped, 0u);
  EXPECT_FALSE(r->summary_through_seq);
  // An empty answer is a failure too.
  f.summarizer->answer_text = "  \n ";
  r = f.prepare(*m, conv, live, 2000);
  ASSERT_THAT(r, IsOk());
  ASSERT_TRUE(r->summary_failure);
  EXPECT_THAT(r->summary_failure->message(), HasSubstr("returned no text"));
}

TEST(ContextManager, ASummaryThatIgnoresItsLimitIsCut) {
  Fixture f;
  Conversation conv = f.load();
  f.append(conv, turns(0, 10));
  auto m = f.manager({.summarizer_model = "s", .max_summary_tokens = 300});
  f.summarizer->answer_text = words(3000, "verbose");
  const std::vector<Message> live = {Message::user("next")};
  auto r = f.prepare(*m, conv, live, 2000);
  ASSERT_THAT(r, IsOk());
  ASSERT_TRUE(conv.summary());
  EXPECT_LE(kCounter.text(conv.summary()->text), 600);  // stored: at most 2x max_summary_tokens
  const auto it =
      std::find_if(r->fit.messages.begin(), r->fit.messages.end(), [](const Message& msg) { return msg.pinned; });
  ASSERT_NE(it, r->fit.messages.end());
  EXPECT_LE(kCounter.text(it->text()), 500 + 20);  // in the prompt: a quarter of the target
  EXPECT_LE(r->fit.tokens_after, 2000);
}

TEST(ContextManager, WithoutASummarizerItOnlyFits) {
  Fixture f;
  Conversation conv = f.load();
  f.append(conv, turns(0, 10));
  auto m = f.manager({}, false);
  const std::vector<Message> live = {Message::user("next question")};
  auto r = f.prepare(*m, conv, live, 2000);
  ASSERT_THAT(r, IsOk());
  EXPECT_FALSE(r->summary_failure);
  EXPECT_GT(r->fit.dropped, 0u);
  EXPECT_EQ(r->fit.messages.back(), live[0]);
  auto bad = f.prepare(*m, conv, live, 0);
  ASSERT_THAT(bad, StatusIs(ErrorKind::kInvalidArgument));
}

TEST(ContextManager, RestartSeesTheSummaryAndTheTailAndNothingIsLost) {
  Fixture f;
  std::int64_t through = 0;
  std::vector<HistoryEntry> tail_before;
  {
    Conversation conv = f.load();
    f.append(conv, turns(0, 10));
    auto m = f.manager();
    const std::vector<Message> live = {Message::user("next question")};
    auto r = f.prepare(*m, conv, live, 2000);
    ASSERT_TRUE(r.ok() && r->summary_through_seq);
    through = *r->summary_through_seq;
    tail_before = conv.tail();
  }
  f.store->crash();  // synced commits survive
  Conversation again = f.load();
  ASSERT_TRUE(again.summary());
  EXPECT_EQ(again.summary()->covers_through_seq, through);
  EXPECT_EQ(again.summary()->text, "SUMMARY 1");
  EXPECT_EQ(again.summary()->model, "small-summarizer");
  ASSERT_EQ(again.tail().size(), tail_before.size());
  for (std::size_t i = 0; i < tail_before.size(); ++i) {
    EXPECT_EQ(again.tail()[i].seq, tail_before[i].seq);
    EXPECT_EQ(again.tail()[i].message, tail_before[i].message);
  }
  EXPECT_EQ(again.next_seq(), 40);
  EXPECT_EQ(f.store->read_history("t1", 0, 1000).value().size(), 40u);
  // A new manager over the restarted conversation builds the same kind of prompt.
  auto m2 = f.manager();
  const std::vector<Message> live = {Message::user("after restart")};
  auto r = f.prepare(*m2, again, live, 2000);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(has_summary_message(r->fit.messages, "SUMMARY 1"));
  EXPECT_EQ(f.summarizer->requests.size(), 1u);  // nothing new to summarize
}

TEST(ContextManager, ASecondSummarizationFoldsTheFirst) {
  Fixture f;
  Conversation conv = f.load();
  f.append(conv, turns(0, 10));
  auto m = f.manager();
  const std::vector<Message> live = {Message::user("next question")};
  auto first = f.prepare(*m, conv, live, 2000);
  ASSERT_TRUE(first.ok() && first->summary_through_seq);
  f.append(conv, turns(10, 10));
  auto second = f.prepare(*m, conv, live, 2000);
  ASSERT_THAT(second, IsOk());
  ASSERT_EQ(f.summarizer->requests.size(), 2u);
  const std::string transcript = f.summarizer->requests[1].messages[1].text();
  EXPECT_THAT(transcript, HasSubstr("<previous_summary>\nSUMMARY 1\n</previous_summary>"));
  EXPECT_THAT(transcript, Not(HasSubstr("[user] q0 ")));  // already folded
  ASSERT_TRUE(second->summary_through_seq);
  EXPECT_GT(*second->summary_through_seq, *first->summary_through_seq);
  EXPECT_TRUE(has_summary_message(second->fit.messages, "SUMMARY 2"));
  EXPECT_FALSE(has_summary_message(second->fit.messages, "SUMMARY 1"));
  EXPECT_EQ(f.store->load_history("t1", 100).value().summary->covers_through_seq, *second->summary_through_seq);
  EXPECT_EQ(f.load().summary()->text, "SUMMARY 2");
}

TEST(ContextManager, SystemAndPinnedHistorySurviveSummarization) {
  Fixture f;
  Conversation conv = f.load();
  std::vector<Message> history = {Message::system("stored system prompt"), pinned(Message::user("the task: keep me"))};
  for (Message& msg : turns(0, 10)) history.push_back(std::move(msg));
  f.append(conv, history);
  auto m = f.manager();
  const std::vector<Message> live = {Message::user("next question")};
  auto r = f.prepare(*m, conv, live, 2000);
  ASSERT_TRUE(r.ok() && r->summary_through_seq);
  const std::string transcript = f.summarizer->requests.at(0).messages[1].text();
  EXPECT_THAT(transcript, Not(HasSubstr("stored system prompt")));
  EXPECT_THAT(transcript, Not(HasSubstr("keep me")));
  ASSERT_GE(r->fit.messages.size(), 3u);
  EXPECT_EQ(r->fit.messages[0], history[0]);
  EXPECT_EQ(r->fit.messages[1], history[1]);
  EXPECT_TRUE(has_summary_message({r->fit.messages[2]}, "SUMMARY 1"));
  // After a restart they come back from the checkpoint.
  Conversation again = f.load();
  ASSERT_TRUE(again.summary());
  EXPECT_EQ(again.summary()->kept, (std::vector<Message>{history[0], history[1]}));
}

TEST(ContextManager, TheCutNeverSeparatesACallFromItsResults) {
  // Each turn: a call with a large result; whatever the budget, what stays after the summary
  // starts with a message that is not a tool result.
  for (std::int64_t budget = 900; budget <= 3000; budget += 150) {
    Fixture f;
    Conversation conv = f.load();
    f.append(conv, turns(0, 12));
    auto m = f.manager();
    const std::vector<Message> live = {Message::user("next")};
    auto r = f.prepare(*m, conv, live, budget);
    ASSERT_THAT(r, IsOk()) << budget << ": " << r.error().to_string();
    if (!r->summary_through_seq) continue;
    ASSERT_FALSE(conv.tail().empty());
    EXPECT_NE(conv.tail().front().message.role, Role::kTool) << "budget " << budget;
    for (std::size_t i = 0; i < r->fit.messages.size(); ++i) {
      if (r->fit.messages[i].role == Role::kTool) {
        ASSERT_GT(i, 0u);
        EXPECT_TRUE(r->fit.messages[i - 1].role == Role::kTool || !r->fit.messages[i - 1].tool_calls.empty())
            << "budget " << budget;
      }
    }
  }
}

TEST(ContextManager, LongHistoriesAreSummarizedInChunks) {
  Fixture f;
  Conversation conv = f.load();
  f.append(conv, turns(0, 40));  // ~10,000 tokens
  auto m = f.manager(
      {.summarizer_model = "s", .max_summary_tokens = 100, .summarizer_input_tokens = 1000, .max_summarizer_calls = 3});
  const std::vector<Message> live = {Message::user("next")};
  auto r = f.prepare(*m, conv, live, 2000);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->summarizer_calls, 3);
  ASSERT_EQ(f.summarizer->requests.size(), 3u);
  for (std::size_t i = 1; i < 3; ++i) {
    EXPECT_THAT(f.summarizer->requests[i].messages[1].text(),
                HasSubstr("<previous_summary>\nSUMMARY " + std::to_string(i) + "\n"));
  }
  for (const ChatRequest& req : f.summarizer->requests) {
    EXPECT_LE(kCounter.request(req), 1000 + 200) << "a summarizer call over its input budget";
  }
  EXPECT_TRUE(has_summary_message(r->fit.messages, "SUMMARY 3"));
  EXPECT_LE(r->fit.tokens_after, 2000);
  EXPECT_GT(r->fit.dropped, 0u);  // the calls ran out before the window: the rest was dropped
}

TEST(ContextManager, CompactSummarizesBelowTheTriggerAndFitsTheLowerTarget) {
  Fixture f;
  Conversation conv = f.load();
  f.append(conv, turns(0, 6));
  const std::vector<Message> live = {Message::user("next")};
  std::vector<Message> all;
  for (const HistoryEntry& e : conv.tail()) all.push_back(e.message);
  all.push_back(live[0]);
  // Under the trigger (80%) but over compact's target (60%).
  const std::int64_t budget = cost(all) * 13 / 10;
  const std::int64_t target = budget * 6 / 10;
  auto m = f.manager();
  auto p = f.prepare(*m, conv, live, budget);
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->summarizer_calls, 0);
  EXPECT_EQ(p->fit.dropped, 0u);
  auto c = f.prepare(*m, conv, live, budget, /*compact=*/true);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->summarizer_calls, 1);
  EXPECT_LE(c->fit.tokens_after, target);
  EXPECT_TRUE(has_summary_message(c->fit.messages, "SUMMARY 1"));

  // Without a summarizer compact drops down to the target.
  Fixture g;
  Conversation conv2 = g.load();
  g.append(conv2, turns(0, 6));
  auto plain = g.manager({}, false);
  auto d = g.prepare(*plain, conv2, live, budget, true);
  ASSERT_THAT(d, IsOk());
  EXPECT_LE(d->fit.tokens_after, target);
  EXPECT_GT(d->fit.dropped, 0u);

  // What cannot be dropped above the target: a context overflow that says it was compacting.
  const std::vector<Message> huge = {Message::user(words(2000, "huge"))};
  auto e = g.prepare(*plain, conv2, huge, 2500, true);  // the message alone is ~2,000 > 1,500
  ASSERT_THAT(e, StatusIs(ErrorKind::kContextOverflow, HasSubstr("compacting after a context overflow")));
}

}  // namespace
}  // namespace nines::llm
