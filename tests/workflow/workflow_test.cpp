// Durable workflows on the memory store and the virtual clock: steps recorded and replayed,
// the effect journal by nature, needs_attention and its resolution, bad records, limits;
// and group commit with the committer thread on the real scheduler.
#include "nines/workflow/workflow.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <string>
#include <vector>

#include "nines/store/memory_store.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"
#include "workflow/fake_ledger.hpp"
#include "workflow/world.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::IsOkAndHolds;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

using test::FakeLedger;
using test::World;

TEST(Workflow, StepsAreRecordedAndAFinishedWorkflowReturnsItsResultWithoutRunning) {
  World w;
  int runs_of_a = 0, runs_of_b = 0;
  w.add_kind("sum", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    auto a = co_await wf.step<std::int64_t>("a", [&](Context&) -> Task<Result<std::int64_t>> {
      ++runs_of_a;
      co_return 40;
    });
    if (!a.ok()) co_return a.error();
    auto b = co_await wf.step<std::int64_t>("b", [&](Context&) -> Task<Result<std::int64_t>> {
      ++runs_of_b;
      co_return 2;
    });
    if (!b.ok()) co_return b.error();
    co_return wf.input() + "=" + std::to_string(*a + *b);
  });
  auto r = w.run("sum", "w1", "answer");
  ASSERT_TRUE(r && r->ok()) << (r ? r->error().to_string() : "did not end");
  EXPECT_EQ(**r, "answer=42");
  WorkflowRecord rec = w.record("w1");
  EXPECT_EQ(rec.status, WorkflowStatus::kCompleted);
  EXPECT_EQ(rec.kind, "sum");
  EXPECT_EQ(rec.result, "answer=42");
  auto steps = w.store->load_steps("w1").value();
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0].name, "a");
  EXPECT_EQ(steps[0].result, "40");
  EXPECT_EQ(steps[1].seq, 2);

  auto again = w.run("sum", "w1", "ignored");
  ASSERT_TRUE(again && again->ok());
  EXPECT_EQ(**again, "answer=42");
  EXPECT_EQ(runs_of_a, 1);
  EXPECT_EQ(runs_of_b, 1);
}

TEST(Workflow, AResumedWorkflowReplaysCompletedStepsAndRunsTheRest) {
  World w;
  std::map<std::string, int> ran;
  bool fail_b = true;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    std::string out;
    for (std::string name : {"a", "b", "c"}) {
      // Named first: g++ 12 miscompiles a lambda with a string capture inside co_await.
      auto fn = [&, name](Context&) -> Task<Result<std::string>> {
        ++ran[name];
        if (name == "b" && fail_b) co_return Error(ErrorKind::kTransient, "upstream 503");
        co_return name + name;
      };
      auto r = co_await wf.step<std::string>(name, std::move(fn));
      if (!r.ok()) co_return r.error();
      out += *r;
    }
    co_return out;
  });
  auto first = w.run("k", "w");
  ASSERT_TRUE(first && !first->ok());
  EXPECT_THAT(*first, StatusIs(ErrorKind::kTransient));
  EXPECT_EQ(w.record("w").status, WorkflowStatus::kRunning);  // transient: resumable
  fail_b = false;
  auto second = w.run("k", "w");
  ASSERT_TRUE(second && second->ok()) << second->error().to_string();
  EXPECT_EQ(**second, "aabbcc");
  EXPECT_EQ(ran["a"], 1);  // replayed from its record
  EXPECT_EQ(ran["b"], 2);  // its transient failure was not recorded
  EXPECT_EQ(ran["c"], 1);
  EXPECT_EQ(w.record("w").attempt, 2);
  EXPECT_EQ(w.engine->stats().steps_replayed, 1u);
}

TEST(Workflow, AKilledWorkflowResumesFromItsLastCommittedStep) {
  World w;
  std::map<std::string, int> ran;
  w.add_kind("slow", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    for (int i = 0; i < 5; ++i) {
      std::string name = "s" + std::to_string(i);
      auto fn = [&, name, i](Context& ctx) -> Task<Result<int>> {
        ++ran[name];
        auto slept = co_await ctx.sleep(std::chrono::seconds(1));
        if (!slept.ok()) co_return slept.error();
        co_return i;
      };
      auto r = co_await wf.step<int>(name, std::move(fn));
      if (!r.ok()) co_return r.error();
    }
    co_return std::string("done");
  });
  auto r = w.run("slow", "w", "", std::chrono::milliseconds(2500));  // inside step 3
  EXPECT_FALSE(r.has_value());
  w.restart();
  std::optional<Result<std::size_t>> resumed;
  w.sim->spawn([&](Context& ctx) -> Task<> { resumed.emplace(co_await w.engine->resume_all_and_wait(ctx)); });
  w.sim->rt->advance(std::chrono::hours(1));
  ASSERT_TRUE(resumed && resumed->ok());
  EXPECT_EQ(**resumed, 1u);
  EXPECT_EQ(w.record("w").status, WorkflowStatus::kCompleted);
  EXPECT_EQ(ran["s0"], 1);
  EXPECT_EQ(ran["s1"], 1);
  EXPECT_EQ(ran["s2"], 2);  // interrupted: ran again
  EXPECT_EQ(ran["s3"], 1);
  EXPECT_EQ(ran["s4"], 1);
}

// An effect whose outcome could not be recorded (the commit after it failed), by nature.
struct EffectCase {
  EffectNature nature;
  const char* name;
};

class InterruptedEffect : public ::testing::TestWithParam<EffectCase> {};

TEST_P(InterruptedEffect, IsResolvedByItsDeclaredNature) {
  const EffectNature nature = GetParam().nature;
  World w;
  FakeLedger ledger;
  bool fail_outcome_commit = true;
  int effect_runs = 0;
  w.add_kind("pay", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    EffectOptions o{.name = "charge", .nature = nature, .arguments = "card=4242 amount=10"};
    o.check = [&](Context&, const std::string& key) -> Task<Result<std::optional<std::string>>> {
      co_return ledger.check(key);
    };
    auto r = co_await wf.effect(std::move(o), [&](Context&, const std::string& key) -> Task<Result<std::string>> {
      ++effect_runs;
      // Checkable and unsafe effects go to a target without key deduplication: only the
      // check (or not running again) keeps them from applying twice.
      const bool dedup = nature == EffectNature::kReadOnly || nature == EffectNature::kIdempotent;
      std::string out = dedup ? ledger.apply_idempotent(key) : ledger.apply_unsafe(key);
      // The process dies (here: its commit fails) after the effect, before its outcome is recorded.
      if (fail_outcome_commit) w.store->fail_next_commits(1, Error(ErrorKind::kTransient, "disk went away"));
      co_return out;
    });
    if (!r.ok()) co_return r.error();
    co_return *r;
  });
  auto first = w.run("pay", "order-1");
  ASSERT_TRUE(first && !first->ok());
  EXPECT_THAT(*first, StatusIs(ErrorKind::kTransient));
  fail_outcome_commit = false;
  w.restart();
  auto second = w.run("pay", "order-1");
  ASSERT_TRUE(second.has_value());
  const std::string key = w.store->load_effects("order-1").value().at(0).idempotency_key;
  EXPECT_EQ(key.rfind("order-1#", 0), 0u) << key;  // <id>#<created ns>/<step>/<name>
  EXPECT_TRUE(key.ends_with("/1/charge")) << key;
  switch (nature) {
    case EffectNature::kReadOnly:
    case EffectNature::kIdempotent:
      ASSERT_TRUE(second->ok()) << second->error().to_string();
      EXPECT_EQ(effect_runs, 2);          // ran again ...
      EXPECT_EQ(ledger.raw(key), 2);      // ... with the same key ...
      EXPECT_EQ(ledger.applied(key), 1);  // ... so applied once
      break;
    case EffectNature::kCheckable:
      ASSERT_TRUE(second->ok()) << second->error().to_string();
      EXPECT_EQ(effect_runs, 1);  // the target said it was applied: not run again
      EXPECT_EQ(ledger.applied(key), 1);
      EXPECT_EQ(**second, "applied:" + key);
      EXPECT_EQ(w.engine->stats().effects_checked, 1u);
      break;
    case EffectNature::kUnsafe: {
      ASSERT_FALSE(second->ok());
      EXPECT_THAT(*second, StatusIs(ErrorKind::kPermanent, HasSubstr("needs attention")));
      EXPECT_EQ(effect_runs, 1);  // never run again automatically
      EXPECT_EQ(ledger.applied(key), 1);
      WorkflowRecord rec = w.record("order-1");
      EXPECT_EQ(rec.status, WorkflowStatus::kNeedsAttention);
      EXPECT_THAT(rec.result, HasSubstr("card=4242 amount=10"));  // the evidence
      EXPECT_THAT(rec.result, HasSubstr(key));
      auto effects = w.store->load_effects("order-1").value();
      ASSERT_EQ(effects.size(), 1u);
      EXPECT_EQ(effects[0].state, EffectState::kNeedsAttention);
      // Still stopped on the next run; then an operator says it was applied.
      auto third = w.run("pay", "order-1");
      ASSERT_TRUE(third && !third->ok());
      EXPECT_EQ(effect_runs, 1);
      ASSERT_THAT(w.engine->resolve_effect("order-1", effects[0].effect_id, {.applied = true, .outcome = "ok-by-hand"}),
                  IsOk());
      auto fourth = w.run("pay", "order-1");
      ASSERT_TRUE(fourth && fourth->ok()) << fourth->error().to_string();
      EXPECT_EQ(**fourth, "ok-by-hand");
      EXPECT_EQ(effect_runs, 1);
      EXPECT_EQ(ledger.applied(key), 1);
      break;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Natures, InterruptedEffect,
                         ::testing::Values(EffectCase{EffectNature::kReadOnly, "read_only"},
                                           EffectCase{EffectNature::kIdempotent, "idempotent"},
                                           EffectCase{EffectNature::kCheckable, "checkable"},
                                           EffectCase{EffectNature::kUnsafe, "unsafe"}),
                         [](const auto& p) { return std::string(p.param.name); });

TEST(Workflow, AnOperatorMayClearAnUnsafeEffectToRunOnce) {
  World w;
  FakeLedger ledger;
  bool interrupt = true;
  int runs = 0;
  w.add_kind("mail", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    EffectOptions o{.name = "send", .nature = EffectNature::kUnsafe, .arguments = "to=a@b"};
    auto r = co_await wf.effect(std::move(o), [&](Context&, const std::string& key) -> Task<Result<std::string>> {
      ++runs;
      if (interrupt) co_return Error(ErrorKind::kTimeout, "no answer from the mail server");  // unknown outcome
      co_return ledger.apply_unsafe(key);
    });
    if (!r.ok()) co_return r.error();
    co_return *r;
  });
  auto first = w.run("mail", "m");
  ASSERT_TRUE(first && !first->ok());
  EXPECT_THAT(*first, StatusIs(ErrorKind::kTimeout));
  interrupt = false;
  auto second = w.run("mail", "m");
  ASSERT_TRUE(second && !second->ok());
  EXPECT_EQ(w.record("m").status, WorkflowStatus::kNeedsAttention);
  auto effects = w.store->load_effects("m").value();
  ASSERT_EQ(effects.size(), 1u);
  ASSERT_THAT(w.engine->resolve_effect("m", effects[0].effect_id, {.applied = false}), IsOk());
  auto third = w.run("mail", "m");
  ASSERT_TRUE(third && third->ok()) << third->error().to_string();
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(ledger.applied(w.store->load_effects("m").value().at(0).idempotency_key), 1);
  // Resolving what is not waiting for an operator is refused.
  EXPECT_THAT(w.engine->resolve_effect("m", effects[0].effect_id, {.applied = true}),
              StatusIs(ErrorKind::kInvalidArgument));
}

TEST(Workflow, APermanentStepErrorIsRecordedAndFailsTheWorkflow) {
  World w;
  int runs = 0;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    auto r = co_await wf.step<std::string>("validate", [&](Context&) -> Task<Result<std::string>> {
      ++runs;
      co_return Error(ErrorKind::kPermanent, "the order has no lines");
    });
    if (!r.ok()) co_return r.error();
    co_return *r;
  });
  auto first = w.run("k", "w");
  ASSERT_TRUE(first && !first->ok());
  EXPECT_EQ(w.record("w").status, WorkflowStatus::kFailed);
  auto second = w.run("k", "w");
  ASSERT_TRUE(second && !second->ok());
  EXPECT_THAT(*second, StatusIs(ErrorKind::kPermanent));
  EXPECT_EQ(second->error().message(), "the order has no lines");
  EXPECT_EQ(runs, 1);
}

TEST(Workflow, ChangedCodeIsAClearErrorNotADifferentResult) {
  World w;
  bool changed = false;
  bool stop_after_first = true;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    auto a = co_await wf.step<int>(changed ? "fetch" : "load", [](Context&) -> Task<Result<int>> { co_return 1; });
    if (!a.ok()) co_return a.error();
    if (stop_after_first) co_return Error(ErrorKind::kTransient, "stop here");
    co_return std::string("ok");
  });
  ASSERT_FALSE(w.run("k", "w")->ok());
  changed = true;
  stop_after_first = false;
  auto r = w.run("k", "w");
  ASSERT_TRUE(r && !r->ok());
  EXPECT_THAT(*r, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("recorded as step 'load'")));
  EXPECT_THAT(r->error().message(), HasSubstr("workflow 'w' step 1"));
  EXPECT_EQ(w.record("w").status, WorkflowStatus::kRunning);  // left for a fixed deployment
  changed = false;                                            // the fix (a rollback) resumes it
  auto fixed = w.run("k", "w");
  ASSERT_TRUE(fixed && fixed->ok()) << fixed->error().to_string();
}

// Review finding: a cleared effect whose re-run is interrupted again must stop for the
// operator again, not run a third time.
TEST(Workflow, AClearedUnsafeEffectInterruptedAgainStopsAgain) {
  World w;
  FakeLedger ledger;
  int runs = 0;
  bool fail_outcome_commit = true;
  w.add_kind("mail", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    EffectOptions o{.name = "send", .nature = EffectNature::kUnsafe, .arguments = "to=a@b"};
    auto r = co_await wf.effect(std::move(o), [&](Context&, const std::string& key) -> Task<Result<std::string>> {
      ++runs;
      std::string out = ledger.apply_unsafe(key);
      if (fail_outcome_commit) w.store->fail_next_commits(1, Error(ErrorKind::kTransient, "killed"));
      co_return out;
    });
    if (!r.ok()) co_return r.error();
    co_return *r;
  });
  ASSERT_FALSE(w.run("mail", "m")->ok());  // applied, outcome lost
  ASSERT_FALSE(w.run("mail", "m")->ok());  // needs_attention
  EXPECT_EQ(w.record("m").status, WorkflowStatus::kNeedsAttention);
  const std::string effect_id = w.store->load_effects("m").value().at(0).effect_id;
  // The operator (wrongly, as it happens) says it was not applied; the re-run is interrupted too.
  ASSERT_THAT(w.engine->resolve_effect("m", effect_id, {.applied = false}), IsOk());
  w.restart();
  ASSERT_FALSE(w.run("mail", "m")->ok());
  EXPECT_EQ(runs, 2);
  fail_outcome_commit = false;
  w.restart();
  auto again = w.run("mail", "m");
  ASSERT_TRUE(again && !again->ok());
  EXPECT_THAT(again->error().message(), HasSubstr("needs attention"));
  EXPECT_EQ(runs, 2);  // not a third time
  EXPECT_EQ(w.record("m").status, WorkflowStatus::kNeedsAttention);
}

// Review finding: an effect renamed (or moved) by a deployment must not run again under a
// new key.
TEST(Workflow, ARenamedEffectIsACodeChangeNotANewEffect) {
  World w;
  FakeLedger ledger;
  std::string name = "send email";
  bool stop = true;
  int runs = 0;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    EffectOptions o{.name = name, .nature = EffectNature::kIdempotent};
    auto r = co_await wf.effect(std::move(o), [&](Context&, const std::string& key) -> Task<Result<std::string>> {
      ++runs;
      co_return ledger.apply_idempotent(key);
    });
    if (!r.ok()) co_return r.error();
    if (stop) co_return Error(ErrorKind::kTransient, "stop here");
    co_return *r;
  });
  ASSERT_FALSE(w.run("k", "w")->ok());
  name = "send_email";
  stop = false;
  auto r = w.run("k", "w");
  ASSERT_TRUE(r && !r->ok());
  EXPECT_THAT(r->error().message(), HasSubstr("recorded as effect"));
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(w.record("w").status, WorkflowStatus::kRunning);
  EXPECT_EQ(ledger.all_applied().size(), 1u);
}

// Review finding: run() reports needs_attention even when the code swallows the error, and
// nothing after it runs.
TEST(Workflow, NeedsAttentionWinsOverCodeThatIgnoresIt) {
  World w;
  int after = 0;
  bool fail_outcome_commit = true;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    EffectOptions o{.name = "pay", .nature = EffectNature::kUnsafe};
    auto r = co_await wf.effect(std::move(o), [&](Context&, const std::string&) -> Task<Result<std::string>> {
      if (fail_outcome_commit) w.store->fail_next_commits(1, Error(ErrorKind::kTransient, "killed"));
      co_return std::string("paid");
    });
    (void)r;  // ignored on purpose
    auto s = co_await wf.step<int>("after", [&](Context&) -> Task<Result<int>> {
      ++after;
      co_return 1;
    });
    (void)s;
    co_return std::string("done anyway");
  });
  (void)w.run("k", "w");
  fail_outcome_commit = false;
  const int after_first = after;
  auto r = w.run("k", "w");
  ASSERT_TRUE(r && !r->ok());
  EXPECT_THAT(r->error().message(), HasSubstr("needs attention"));
  EXPECT_EQ(after, after_first);  // the step after it did not run
  EXPECT_EQ(w.record("w").status, WorkflowStatus::kNeedsAttention);
}

// Review finding: an interrupted checkable effect without a check function cannot be
// resolved automatically: needs_attention, not a failed workflow.
TEST(Workflow, ACheckableEffectWithoutCheckStopsForTheOperator) {
  World w;
  bool fail_outcome_commit = true;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    EffectOptions o{.name = "book", .nature = EffectNature::kCheckable};
    auto r = co_await wf.effect(std::move(o), [&](Context&, const std::string&) -> Task<Result<std::string>> {
      if (fail_outcome_commit) w.store->fail_next_commits(1, Error(ErrorKind::kTransient, "killed"));
      co_return std::string("booked");
    });
    if (!r.ok()) co_return r.error();
    co_return *r;
  });
  (void)w.run("k", "w");
  fail_outcome_commit = false;
  auto r = w.run("k", "w");
  ASSERT_TRUE(r && !r->ok());
  EXPECT_EQ(w.record("w").status, WorkflowStatus::kNeedsAttention);
  EXPECT_THAT(w.record("w").result, HasSubstr("no check function"));
}

TEST(Workflow, StoppingForAnOperatorIsLogged) {
  World w;
  bool interrupt = true;
  w.add_kind("mail", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    EffectOptions o{.name = "send", .nature = EffectNature::kUnsafe, .arguments = "password=hunter2"};
    auto r = co_await wf.effect(std::move(o), [&](Context&, const std::string&) -> Task<Result<std::string>> {
      if (interrupt) co_return Error(ErrorKind::kTimeout, "no answer from the mail server");  // unknown outcome
      co_return std::string("sent");
    });
    if (!r.ok()) co_return r.error();
    co_return *r;
  });
  (void)w.run("mail", "m");
  CaptureSink& logs = w.sim->env.captured_logs();
  EXPECT_EQ(logs.count("workflow_needs_attention"), 0u) << logs.dump();  // only interrupted so far
  interrupt = false;
  auto r = w.run("mail", "m");
  ASSERT_TRUE(r && !r->ok());
  EXPECT_EQ(w.record("m").status, WorkflowStatus::kNeedsAttention);
  auto lines = logs.records("workflow_needs_attention");
  ASSERT_EQ(lines.size(), 1u) << logs.dump();
  EXPECT_EQ(lines[0].level, LogLevel::kError);
  EXPECT_EQ(lines[0].field("workflow"), "m");
  EXPECT_EQ(lines[0].field("kind"), "mail");
  EXPECT_EQ(lines[0].field("attempt"), "2");
  EXPECT_EQ(lines[0].field("effect"), w.store->load_effects("m").value().at(0).effect_id);
  EXPECT_EQ(lines[0].field("nature"), "unsafe");
  EXPECT_THAT(lines[0].field("why").value_or(""), HasSubstr("whether it was applied is unknown"));
  EXPECT_FALSE(logs.contains("hunter2")) << logs.dump();  // the arguments are not logged
}

// Review finding: a workflow pruned and started again under the same id gets new keys, so a
// target that remembers keys does not take its effects for the old ones.
TEST(Workflow, AReusedIdGetsNewIdempotencyKeys) {
  World w;
  FakeLedger ledger;
  std::vector<std::string> keys;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    EffectOptions o{.name = "charge", .nature = EffectNature::kIdempotent};
    auto r = co_await wf.effect(std::move(o), [&](Context&, const std::string& key) -> Task<Result<std::string>> {
      keys.push_back(key);
      co_return ledger.apply_idempotent(key);
    });
    if (!r.ok()) co_return r.error();
    co_return *r;
  });
  ASSERT_TRUE(w.run("k", "order/7")->ok());
  w.sim->rt->advance(std::chrono::hours(48));
  ASSERT_EQ(*w.engine->prune_finished(std::chrono::hours(24)), 1u);
  ASSERT_TRUE(w.run("k", "order/7")->ok());
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_NE(keys[0], keys[1]);
  EXPECT_EQ(keys[0].rfind("order%2F7#", 0), 0u) << keys[0];  // '/' in the id is escaped
  EXPECT_EQ(ledger.applied(keys[1]), 1);
}

TEST(Workflow, ACorruptStepRecordIsAnErrorNamingWorkflowAndStep) {
  World w;
  bool stop = true;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    auto a = co_await wf.step<int>("a", [](Context&) -> Task<Result<int>> { co_return 1; });
    if (!a.ok()) co_return a.error();
    if (stop) co_return Error(ErrorKind::kTransient, "stop here");
    co_return std::string("ok");
  });
  ASSERT_FALSE(w.run("k", "w")->ok());
  ASSERT_TRUE(w.store->corrupt_step("w", 1));
  stop = false;
  auto r = w.run("k", "w");
  ASSERT_TRUE(r && !r->ok());
  EXPECT_THAT(*r, StatusIs(ErrorKind::kPermanent, HasSubstr("step 1")));
  EXPECT_THAT(r->error().message(), HasSubstr("'w'"));
  EXPECT_EQ(w.record("w").status, WorkflowStatus::kRunning);  // the data is bad, not the workflow
}

TEST(Workflow, BadCallsAreRefusedClearly) {
  World w;
  w.add_kind("k", [](WorkflowContext&) -> Task<Result<std::string>> { co_return std::string("x"); });
  EXPECT_THAT(
      w.engine->register_kind("k", [](WorkflowContext&) -> Task<Result<std::string>> { co_return std::string(); }),
      StatusIs(ErrorKind::kAlreadyExists));
  EXPECT_THAT(*w.run("nope", "w"), StatusIs(ErrorKind::kNotFound));
  EXPECT_THAT(*w.run("k", ""), StatusIs(ErrorKind::kInvalidArgument));
  w.add_kind("other", [](WorkflowContext&) -> Task<Result<std::string>> { co_return std::string("y"); });
  ASSERT_TRUE(w.run("k", "w")->ok());
  auto wrong = w.run("other", "w");
  EXPECT_THAT(*wrong, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("exists with kind 'k'")));
}

TEST(Workflow, TheSameIdRunsAtMostOnceAtATime) {
  World w;
  w.add_kind("k", [](WorkflowContext& wf) -> Task<Result<std::string>> {
    auto r = co_await wf.step<int>("wait", [](Context& ctx) -> Task<Result<int>> {
      auto s = co_await ctx.sleep(std::chrono::seconds(10));
      if (!s.ok()) co_return s.error();
      co_return 1;
    });
    if (!r.ok()) co_return r.error();
    co_return std::string("ok");
  });
  std::optional<Result<std::string>> a, b;
  w.sim->spawn([&](Context& ctx) -> Task<> { a.emplace(co_await w.engine->run(ctx, "k", "same", "")); });
  w.sim->spawn([&](Context& ctx) -> Task<> { b.emplace(co_await w.engine->run(ctx, "k", "same", "")); });
  w.sim->rt->advance(std::chrono::minutes(1));
  ASSERT_TRUE(a && b);
  EXPECT_TRUE(a->ok() != b->ok());
  const Result<std::string>& refused = a->ok() ? *b : *a;
  EXPECT_THAT(refused, StatusIs(ErrorKind::kAlreadyExists));
}

TEST(Workflow, MaxStepsBoundsALoopingWorkflow) {
  World w;
  w.engine.reset();
  w.engine = WorkflowEngine::create(w.sim->env, *w.store, {.max_steps = 10}).value();
  w.kinds.clear();
  w.add_kind("loop", [](WorkflowContext& wf) -> Task<Result<std::string>> {
    for (;;) {
      auto r = co_await wf.step<int>("again", [](Context&) -> Task<Result<int>> { co_return 1; });
      if (!r.ok()) co_return r.error();
    }
  });
  auto r = w.run("loop", "w");
  ASSERT_TRUE(r && !r->ok());
  EXPECT_THAT(*r, StatusIs(ErrorKind::kBudgetExceeded));
  EXPECT_EQ(w.store->load_steps("w").value().size(), 10u);
}

TEST(Workflow, NonEssentialStepsRunEveryTimeAndAreNotRecorded) {
  World w;
  int cache_runs = 0;
  bool stop = true;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    auto c = co_await wf.step<std::string>("warm cache",
                                           [&](Context&) -> Task<Result<std::string>> {
                                             ++cache_runs;
                                             co_return std::string("cache");
                                           },
                                           {.persist = false});
    if (!c.ok()) co_return c.error();
    auto a = co_await wf.step<int>("a", [](Context&) -> Task<Result<int>> { co_return 1; });
    if (!a.ok()) co_return a.error();
    if (stop) co_return Error(ErrorKind::kTransient, "stop");
    co_return std::string("ok");
  });
  ASSERT_FALSE(w.run("k", "w")->ok());
  stop = false;
  ASSERT_TRUE(w.run("k", "w")->ok());
  EXPECT_EQ(cache_runs, 2);
  auto steps = w.store->load_steps("w").value();
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_EQ(steps[0].seq, 2);
  EXPECT_EQ(steps[0].name, "a");
}

TEST(Workflow, AFullDiskFailsTheRunCleanlyAndTheWorkflowResumesLater) {
  World w;
  int runs = 0;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    std::string out;
    for (int i = 0; i < 4; ++i) {
      auto r = co_await wf.step<std::string>("big", [&](Context&) -> Task<Result<std::string>> {
        ++runs;
        co_return std::string(1000, 'x');
      });
      if (!r.ok()) co_return r.error();
      out += "+";
    }
    co_return out;
  });
  w.store->set_capacity_bytes(2500);  // room for the workflow and about two steps
  auto first = w.run("k", "w");
  ASSERT_TRUE(first && !first->ok());
  EXPECT_THAT(*first, StatusIs(ErrorKind::kTransient, HasSubstr("disk full")));
  const std::size_t kept = w.store->load_steps("w").value().size();
  EXPECT_GE(kept, 1u);
  EXPECT_LT(kept, 4u);
  EXPECT_EQ(w.record("w").status, WorkflowStatus::kRunning);
  w.store->set_capacity_bytes(0);
  auto second = w.run("k", "w");
  ASSERT_TRUE(second && second->ok()) << second->error().to_string();
  EXPECT_EQ(**second, "++++");
  EXPECT_EQ(runs, 5);  // the step refused by the full disk ran again; the kept ones did not
}

// A caller tells the ends of a run apart by a value, not by an error's message.
TEST(WorkflowOutcome, EachEndIsAValue) {
  World w;
  bool fail_outcome_commit = true;
  w.add_kind("ok", [](WorkflowContext&) -> Task<Result<std::string>> { co_return std::string("done"); });
  w.add_kind("bad", [](WorkflowContext&) -> Task<Result<std::string>> {
    co_return Error(ErrorKind::kPermanent, "no such order");
  });
  w.add_kind("flaky", [](WorkflowContext&) -> Task<Result<std::string>> {
    co_return Error(ErrorKind::kTransient, "try later");
  });
  w.add_kind("unsafe", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    EffectOptions o{.name = "pay", .nature = EffectNature::kUnsafe};
    auto r = co_await wf.effect(std::move(o), [&](Context&, const std::string&) -> Task<Result<std::string>> {
      if (fail_outcome_commit) w.store->fail_next_commits(1, Error(ErrorKind::kTransient, "killed"));
      co_return std::string("paid");
    });
    if (!r.ok()) co_return r.error();
    co_return *r;
  });
  auto outcome = [&](const std::string& kind, const std::string& id) {
    std::optional<WorkflowOutcome> out;
    w.sim->spawn([&](Context& ctx) -> Task<> { out.emplace(co_await w.engine->run_outcome(ctx, kind, id, "")); });
    w.sim->rt->advance(std::chrono::hours(1));
    EXPECT_TRUE(out.has_value());
    return out.value_or(WorkflowOutcome{});
  };
  WorkflowOutcome done = outcome("ok", "a");
  EXPECT_EQ(done.end, RunEnd::kCompleted);
  ASSERT_TRUE(done.result.ok());
  EXPECT_EQ(*done.result, "done");
  EXPECT_TRUE(done.finished());
  EXPECT_EQ(outcome("ok", "a").end, RunEnd::kCompleted);  // again: the record, nothing runs

  WorkflowOutcome failed = outcome("bad", "b");
  EXPECT_EQ(failed.end, RunEnd::kFailed);
  EXPECT_EQ(failed.result.error().kind(), ErrorKind::kPermanent);
  EXPECT_TRUE(failed.finished());
  EXPECT_EQ(outcome("bad", "b").end, RunEnd::kFailed);

  WorkflowOutcome flaky = outcome("flaky", "c");
  EXPECT_EQ(flaky.end, RunEnd::kInterrupted);
  EXPECT_EQ(flaky.result.error().kind(), ErrorKind::kTransient);
  EXPECT_FALSE(flaky.finished());
  EXPECT_EQ(w.record("c").status, WorkflowStatus::kRunning);

  // Interrupted after the unsafe effect ran (its outcome was not recorded), then run again.
  EXPECT_EQ(outcome("unsafe", "d").end, RunEnd::kInterrupted);
  fail_outcome_commit = false;
  WorkflowOutcome attention = outcome("unsafe", "d");
  EXPECT_EQ(attention.end, RunEnd::kNeedsAttention);
  EXPECT_EQ(attention.result.error().kind(), ErrorKind::kPermanent);  // as run() always said
  EXPECT_FALSE(attention.finished());
  EXPECT_EQ(outcome("unsafe", "d").end, RunEnd::kNeedsAttention);  // from the record

  WorkflowOutcome unknown = outcome("nope", "e");
  EXPECT_EQ(unknown.end, RunEnd::kRefused);
  EXPECT_EQ(unknown.result.error().kind(), ErrorKind::kNotFound);
  WorkflowOutcome other_kind = outcome("bad", "a");
  EXPECT_EQ(other_kind.end, RunEnd::kRefused);
  EXPECT_EQ(other_kind.result.error().kind(), ErrorKind::kInvalidArgument);
  EXPECT_EQ(to_string(RunEnd::kNeedsAttention), "needs_attention");
}

// The documented way (resume first, then new work) is the fast way: resume_all returns at
// once, so new work does not wait behind a slow resumed workflow.
TEST(WorkflowResume, ResumeAllRunsInTheBackgroundAndNewWorkStartsAtOnce) {
  World w;
  w.add_kind("slow", [](WorkflowContext& wf) -> Task<Result<std::string>> {
    for (const char* name : {"s0", "s1", "s2"}) {
      auto r = co_await wf.step<int>(name, [](Context& ctx) -> Task<Result<int>> {
        auto slept = co_await ctx.sleep(std::chrono::minutes(10));
        if (!slept.ok()) co_return slept.error();
        co_return 1;
      });
      if (!r.ok()) co_return r.error();
    }
    co_return std::string("slow done");
  });
  w.add_kind("quick", [](WorkflowContext&) -> Task<Result<std::string>> { co_return std::string("quick done"); });
  EXPECT_FALSE(w.run("slow", "old", "", std::chrono::minutes(15)).has_value());  // in step 2
  w.restart();

  std::optional<ExitReason> resumer_exit;
  std::optional<TimePoint> quick_done_at, resumer_done_at;
  const TimePoint t0 = w.sim->env.now();
  w.sim->spawn([&](Context& ctx) -> Task<> {
    Result<Pid> resumer = w.engine->resume_all(ctx);
    if (!resumer.ok()) co_return;
    MonitorRef ref = ctx.monitor(*resumer);
    (void)co_await ctx.sleep(std::chrono::milliseconds(1));  // the resumer starts "old" meanwhile
    Result<std::string> quick = co_await w.engine->run(ctx, "quick", "new", "");
    if (quick.ok()) quick_done_at = ctx.now();
    // The id the resumer is running is refused, not run twice.
    WorkflowOutcome again = co_await w.engine->run_outcome(ctx, "slow", "old", "");
    EXPECT_EQ(again.end, RunEnd::kRefused);
    EXPECT_EQ(again.result.error().kind(), ErrorKind::kAlreadyExists);
    std::function<bool(const Message&)> is_down = [ref](const Message& m) {
      return m.get<Down>() != nullptr && m.get<Down>()->ref == ref;
    };
    std::optional<Message> down = co_await ctx.receive_if(is_down);
    resumer_exit = down->get<Down>()->reason;
    resumer_done_at = ctx.now();
  });
  w.sim->rt->advance(std::chrono::hours(1));
  ASSERT_TRUE(quick_done_at.has_value());
  EXPECT_EQ(*quick_done_at, t0 + std::chrono::milliseconds(1));  // it did not wait for "old"
  ASSERT_TRUE(resumer_exit.has_value());
  EXPECT_TRUE(resumer_exit->is_normal()) << resumer_exit->to_string();
  EXPECT_GE(*resumer_done_at - t0, std::chrono::minutes(20));  // steps 2 and 3 of "old" ran again/next
  EXPECT_EQ(w.record("old").status, WorkflowStatus::kCompleted);
  EXPECT_EQ(w.record("new").status, WorkflowStatus::kCompleted);
}

TEST(Workflow, RetentionPrunesOldFinishedWorkflowsAndKeepsTheRest) {
  World w;
  bool stop = false;
  w.add_kind("k", [&](WorkflowContext& wf) -> Task<Result<std::string>> {
    auto r = co_await wf.step<int>("a", [](Context&) -> Task<Result<int>> { co_return 1; });
    if (!r.ok()) co_return r.error();
    if (stop) co_return Error(ErrorKind::kTransient, "stop");
    co_return std::string("ok");
  });
  ASSERT_TRUE(w.run("k", "old")->ok());
  w.sim->rt->advance(std::chrono::hours(48));
  stop = true;
  ASSERT_FALSE(w.run("k", "running")->ok());
  stop = false;
  ASSERT_TRUE(w.run("k", "new")->ok());
  auto pruned = w.engine->prune_finished(std::chrono::hours(24));
  ASSERT_THAT(pruned, IsOkAndHolds(1u));
  EXPECT_THAT(w.store->get_workflow("old"), StatusIs(ErrorKind::kNotFound));
  EXPECT_TRUE(w.store->load_steps("old").value().empty());
  EXPECT_THAT(w.store->get_workflow("running"), IsOk());
  EXPECT_THAT(w.store->get_workflow("new"), IsOk());
}

// Group commit on the real scheduler: 256 workflows of 8 steps at once through the committer
// thread (a store whose commits are slow, so none runs inline); every workflow completes, and
// their commits share backend commits.
TEST(WorkflowGroupCommit, ConcurrentWorkflowsShareCommits) {
  constexpr int kWorkflows = 256;
  constexpr int kSteps = 8;
  auto env = make_real_environment({.workers = 2, .seed = 3});
  auto rt = Runtime::create(*env).value();
  auto memory = make_memory_store().value();
  test::ForwardingStore store_impl(*memory, /*fast=*/false);
  Store* store = &store_impl;
  auto engine = WorkflowEngine::create(*env, *store).value();
  ASSERT_THAT(engine->register_kind("steps",
                                    [](WorkflowContext& wf) -> Task<Result<std::string>> {
                                      std::int64_t sum = 0;
                                      for (int i = 0; i < kSteps; ++i) {
                                        auto r = co_await wf.step<std::int64_t>(
                                            "s" + std::to_string(i),
                                            [i](Context&) -> Task<Result<std::int64_t>> { co_return i; });
                                        if (!r.ok()) co_return r.error();
                                        sum += *r;
                                      }
                                      co_return std::to_string(sum);
                                    }),
              IsOk());
  std::atomic<int> ok{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int i = 0; i < kWorkflows; ++i) {
    Behavior body = [&, i](Context& ctx) -> Task<> {
      auto r = co_await engine->run(ctx, "steps", "wf-" + std::to_string(i), "");
      if (r.ok() && *r == "28") ok.fetch_add(1);
    };
    watches.push_back(rt->spawn_watched(std::move(body)).value().exit);
  }
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
  EXPECT_EQ(ok.load(), kWorkflows);
  WorkflowEngineStats s = engine->stats();
  // Each workflow: create+attempt, 8 steps, its end.
  EXPECT_EQ(s.commits, static_cast<std::uint64_t>(kWorkflows * (kSteps + 2)));
  EXPECT_LT(s.commit_groups, s.commits);  // grouped
  for (int i = 0; i < kWorkflows; ++i) {
    EXPECT_EQ(store->get_workflow("wf-" + std::to_string(i)).value().status, WorkflowStatus::kCompleted);
  }
  EXPECT_EQ(store_impl.on_committer_thread.load(), static_cast<int>(s.commit_groups));  // none inline
}

// With a store whose commits are fast, a lone workflow's commits run inline on its worker
// (no hand-off to the committer thread); with a slow one they all go through the thread.
TEST(WorkflowGroupCommit, ALoneWorkflowCommitsInlineOnlyOnAFastStore) {
  for (bool fast : {true, false}) {
    auto env = make_real_environment({.workers = 2, .seed = 4});
    auto rt = Runtime::create(*env).value();
    auto memory = make_memory_store().value();
    test::ForwardingStore store(*memory, fast);
    auto engine = WorkflowEngine::create(*env, store).value();
    ASSERT_THAT(engine->register_kind("k",
                                      [](WorkflowContext& wf) -> Task<Result<std::string>> {
                                        for (int i = 0; i < 20; ++i) {
                                          auto r = co_await wf.step<int>(
                                              "s", [i](Context&) -> Task<Result<int>> { co_return i; });
                                          if (!r.ok()) co_return r.error();
                                        }
                                        co_return std::string("ok");
                                      }),
                IsOk());
    std::optional<Result<std::string>> out;
    auto w = rt->spawn_watched([&](Context& ctx) -> Task<> {
                 out.emplace(co_await engine->run(ctx, "k", "w", ""));
               }).value();
    EXPECT_TRUE(w.exit->wait().is_normal());
    ASSERT_TRUE(out && out->ok()) << (out ? out->error().to_string() : "no result");
    WorkflowEngineStats s = engine->stats();
    EXPECT_EQ(s.commits, 22u) << (fast ? "fast" : "slow");        // start, 20 steps, end
    EXPECT_EQ(s.commit_groups, 22u) << (fast ? "fast" : "slow");  // one backend commit each, either way
    EXPECT_EQ(memory->commits(), 22u);
    EXPECT_EQ(store.on_committer_thread.load(), fast ? 0 : 22);
  }
}

}  // namespace
}  // namespace nines

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using test::FakeLedger;
using test::World;

// Three effects of one turn at once: each applied once, in flight together (the virtual
// clock shows they overlapped), results in the order given; a restart while all three are
// in flight resumes each by its nature and applies none twice.
TEST(WorkflowConcurrentEffects, RunTogetherEachAppliedOnceAcrossACrash) {
  World w;
  auto ledger = std::make_shared<FakeLedger>();
  auto started = std::make_shared<int>(0);
  w.add_kind("fan", [ledger, started](WorkflowContext& wf) -> Task<Result<std::string>> {
    std::vector<EffectOptions> opts;
    for (int i = 0; i < 3; ++i) {
      opts.push_back({.name = "charge" + std::to_string(i), .nature = EffectNature::kIdempotent, .arguments = ""});
    }
    auto fn = [ledger, started](std::size_t i, Context& c, const std::string& key) -> Task<Result<std::string>> {
      ++*started;
      auto slept = co_await c.sleep(std::chrono::seconds(static_cast<int>(i) + 1));
      if (!slept.ok()) co_return slept.error();
      co_return ledger->apply_idempotent(key);
    };
    auto results = co_await wf.effects(std::move(opts), fn, 3);
    std::string out;
    for (auto& r : results) {
      if (!r.ok()) co_return r.error();
      out += r->substr(r->size() - 7) + ";";
    }
    co_return out;
  });
  // 2.5 s in: effects 0 and 1 are applied and recorded, effect 2 is in flight. Crash.
  auto first = w.run("fan", "f", "", std::chrono::milliseconds(2500));
  EXPECT_FALSE(first.has_value());
  EXPECT_EQ(*started, 3);
  w.restart();
  auto second = w.run("fan", "f");
  ASSERT_TRUE(second.has_value());
  ASSERT_THAT(*second, IsOk());
  EXPECT_EQ(**second, "charge0;charge1;charge2;");
  EXPECT_EQ(*started, 4);  // only effect 2 ran again (with its key)
  auto applied = ledger->all_applied();
  ASSERT_EQ(applied.size(), 3u);
  for (const auto& [key, times] : applied) EXPECT_EQ(times, 1) << key;
  EXPECT_EQ(w.engine->stats().effects_replayed, 2u);
}

// At most max_concurrent run at once: with a limit of 1 the three take 1 + 2 + 3 seconds.
TEST(WorkflowConcurrentEffects, BoundedByMaxConcurrent) {
  World w;
  auto peak = std::make_shared<int>(0);
  auto now_running = std::make_shared<int>(0);
  w.add_kind("fan", [peak, now_running](WorkflowContext& wf) -> Task<Result<std::string>> {
    std::vector<EffectOptions> opts(4);
    for (int i = 0; i < 4; ++i) opts[i] = {.name = "e" + std::to_string(i), .nature = EffectNature::kReadOnly};
    auto fn = [peak, now_running](std::size_t, Context& c, const std::string&) -> Task<Result<std::string>> {
      *peak = std::max(*peak, ++*now_running);
      auto slept = co_await c.sleep(std::chrono::seconds(1));
      --*now_running;
      if (!slept.ok()) co_return slept.error();
      co_return std::string("ok");
    };
    auto results = co_await wf.effects(std::move(opts), fn, 2);
    for (auto& r : results)
      if (!r.ok()) co_return r.error();
    co_return std::string("done");
  });
  auto r = w.run("fan", "f");
  ASSERT_TRUE(r.has_value());
  EXPECT_THAT(*r, IsOk());
  EXPECT_EQ(*peak, 2);
}

// An unsafe effect of unknown outcome ends the run: the siblings already running still get
// their outcomes recorded, the ones not started do not start.
TEST(WorkflowConcurrentEffects, AnUnknownOutcomeStopsStartingMore) {
  World w;
  auto ran = std::make_shared<std::vector<int>>();
  w.add_kind("fan", [ran](WorkflowContext& wf) -> Task<Result<std::string>> {
    std::vector<EffectOptions> opts(3);
    for (int i = 0; i < 3; ++i) opts[i] = {.name = "e" + std::to_string(i), .nature = EffectNature::kUnsafe};
    auto fn = [ran](std::size_t i, Context& c, const std::string&) -> Task<Result<std::string>> {
      ran->push_back(static_cast<int>(i));
      if (i == 0) co_return Error(ErrorKind::kTimeout, "no answer");
      auto slept = co_await c.sleep(std::chrono::seconds(1));
      if (!slept.ok()) co_return slept.error();
      co_return std::string("ok");
    };
    auto results = co_await wf.effects(std::move(opts), fn, 2);
    for (auto& r : results)
      if (!r.ok()) co_return r.error();
    co_return std::string("done");
  });
  auto r = w.run("fan", "f");
  ASSERT_TRUE(r.has_value());
  EXPECT_THAT(*r, StatusIs(ErrorKind::kTimeout, "outcome unknown"));
  EXPECT_EQ(*ran, (std::vector<int>{0, 1}));  // e2 never started
  auto effects = w.store->load_effects("f").value();
  ASSERT_EQ(effects.size(), 2u);
  EXPECT_EQ(effects[0].state, EffectState::kIntent);  // e0: unknown
  EXPECT_EQ(effects[1].state, EffectState::kDone);    // e1: finished and recorded
}

// Staged writes commit with the next record, atomically: a run that ends before it drops them.
TEST(WorkflowStage, StagedWritesCommitWithTheNextRecordOnly) {
  World w;
  auto fail = std::make_shared<bool>(true);
  w.add_kind("st", [fail](WorkflowContext& wf) -> Task<Result<std::string>> {
    WriteBatch b;
    b.append_history("hist-" + wf.id(), 0, R"({"v":1,"role":"user"})");
    wf.stage(std::move(b));
    // Named first (g++ 12: a capturing lambda temporary inside co_await is destroyed twice).
    auto fn = [fail](Context&) -> Task<Result<int>> {
      if (*fail) co_return Error(ErrorKind::kTransient, "not yet");
      co_return 1;
    };
    auto r = co_await wf.step<int>("s", std::move(fn));
    if (!r.ok()) co_return r.error();
    co_return std::string("ok");
  });
  auto first = w.run("st", "a");
  ASSERT_TRUE(first.has_value());
  EXPECT_THAT(*first, StatusIs(ErrorKind::kTransient));
  EXPECT_TRUE(w.store->read_history("hist-a", 0, 10).value().empty());  // no record, no history
  *fail = false;
  auto second = w.run("st", "a");
  ASSERT_TRUE(second.has_value());
  EXPECT_THAT(*second, IsOk());
  auto hist = w.store->read_history("hist-a", 0, 10).value();
  ASSERT_EQ(hist.size(), 1u);
  EXPECT_EQ(hist[0].seq, 0);
}

}  // namespace
}  // namespace nines
