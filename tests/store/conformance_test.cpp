// The Store contract, run unchanged against every backend: memory, SQLite (a temporary
// file) and PostgreSQL (a real server the test starts itself; see store_backends.hpp).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/store/group_commit.hpp"
#include "nines/store/store.hpp"
#include "store/store_backends.hpp"
#include "support/numbered.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::IsOkAndHolds;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

using test::numbered;

// A string literal with its embedded NUL bytes ("s" is taken by chrono in namespace nines).
template <std::size_t N>
std::string bytes(const char (&literal)[N]) {
  return std::string(literal, N - 1);
}

TimePoint at(std::int64_t s) { return TimePoint(std::chrono::seconds(s)); }

class StoreConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "postgres" && test::postgres_skipped()) GTEST_SKIP() << "NINES_SKIP_POSTGRES=1";
    harness_ = test::make_harness(GetParam());
    ASSERT_NE(harness_, nullptr);
    auto s = harness_->open();
    ASSERT_THAT(s, IsOk()) << GetParam() << " store did not open: " << s.error().to_string();
    store_ = std::move(*s);
  }

  void commit_ok(const WriteBatch& b) {
    auto s = store_->commit(b);
    ASSERT_THAT(s, IsOk());
  }

  void create(const std::string& id, const std::string& input = "in", TimePoint now = at(1)) {
    WriteBatch b;
    b.create_workflow(id, "k", input, now);
    commit_ok(b);
  }

  WorkflowRecord workflow(const std::string& id) {
    auto w = store_->get_workflow(id);
    EXPECT_THAT(w, IsOk());
    return w.ok() ? *w : WorkflowRecord{};
  }

  void reopen() {
    store_.reset();
    auto s = harness_->open();
    ASSERT_THAT(s, IsOk());
    store_ = std::move(*s);
  }

  std::unique_ptr<test::StoreHarness> harness_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreConformance, OpensAtTheCurrentSchemaVersion) {
  EXPECT_EQ(store_->backend(), GetParam());
  auto v = store_->schema_version();
  ASSERT_THAT(v, IsOkAndHolds(kStoreSchemaVersion));
}

TEST_P(StoreConformance, CreatesAWorkflowAndReadsItBack) {
  const std::string input = bytes("bytes\0with\xffnul");
  create("wf-1", input, at(10));
  WorkflowRecord w = workflow("wf-1");
  EXPECT_EQ(w.id, "wf-1");
  EXPECT_EQ(w.status, WorkflowStatus::kRunning);
  EXPECT_EQ(w.input, input);
  EXPECT_EQ(w.kind, "k");
  EXPECT_EQ(w.result, "");
  EXPECT_EQ(w.created_at, at(10));
  EXPECT_EQ(w.updated_at, at(10));
  EXPECT_EQ(w.attempt, 0);
  EXPECT_EQ(w.version, 1);
}

TEST_P(StoreConformance, CreatingAnExistingWorkflowKeepsTheFirst) {
  create("wf", "first", at(1));
  create("wf", "second", at(2));
  WorkflowRecord w = workflow("wf");
  EXPECT_EQ(w.input, "first");
  EXPECT_EQ(w.created_at, at(1));
  EXPECT_EQ(w.version, 1);
}

TEST_P(StoreConformance, MissingWorkflowIsNotFound) {
  auto w = store_->get_workflow("nope");
  ASSERT_THAT(w, StatusIs(ErrorKind::kNotFound, HasSubstr("'nope'")));
}

TEST_P(StoreConformance, StatusAndAttemptChangesBumpTheVersion) {
  create("wf");
  WriteBatch b;
  b.start_attempt("wf", at(2)).set_workflow_status("wf", WorkflowStatus::kCompleted, "done", at(3));
  commit_ok(b);
  WorkflowRecord w = workflow("wf");
  EXPECT_EQ(w.status, WorkflowStatus::kCompleted);
  EXPECT_EQ(w.result, "done");
  EXPECT_EQ(w.attempt, 1);
  EXPECT_EQ(w.version, 3);
  EXPECT_EQ(w.updated_at, at(3));
  EXPECT_EQ(w.created_at, at(1));
}

TEST_P(StoreConformance, AFailedBatchAppliesNothing) {
  create("exists");
  WriteBatch b;
  b.create_workflow("new", "k", "x", at(1))
      .put_step("exists", 0, "s", StepStatus::kOk, "r", at(1))
      .set_workflow_status("missing", WorkflowStatus::kFailed, "e", at(1));
  auto s = store_->commit(b);
  ASSERT_THAT(s, StatusIs(ErrorKind::kNotFound, HasSubstr("'missing'")));
  EXPECT_THAT(store_->get_workflow("new"), StatusIs(ErrorKind::kNotFound));
  EXPECT_TRUE(store_->load_steps("exists")->empty());
  // The store still works after the rollback.
  create("after");
  EXPECT_EQ(workflow("after").id, "after");
}

TEST_P(StoreConformance, InvalidBatchIsRejectedNamingTheOperation) {
  WriteBatch b;
  b.create_workflow("ok", "k", "", at(1)).create_workflow("", "k", "", at(1));
  auto s = store_->commit(b);
  ASSERT_THAT(s, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("operation 1")));
  EXPECT_FALSE(store_->get_workflow("ok").ok());
}

TEST_P(StoreConformance, EmptyBatchCommits) { EXPECT_THAT(store_->commit(WriteBatch{}), IsOk()); }

TEST_P(StoreConformance, StepsComeBackInSeqOrderAndPutReplaces) {
  WriteBatch b;
  b.create_workflow("wf", "k", "", at(1));
  for (std::int64_t seq : {3, 0, 2, 1}) {
    b.put_step("wf", seq, numbered("s", seq), StepStatus::kOk, numbered("r", seq), at(seq));
  }
  b.put_step("wf", 2, "s2", StepStatus::kError, bytes("boom\0"), at(9));
  commit_ok(b);
  auto steps = store_->load_steps("wf");
  ASSERT_THAT(steps, IsOk());
  ASSERT_EQ(steps->size(), 4u);
  for (std::int64_t i = 0; i < 4; ++i) EXPECT_EQ((*steps)[static_cast<std::size_t>(i)].seq, i);
  EXPECT_EQ((*steps)[0].name, "s0");
  EXPECT_EQ((*steps)[0].result, "r0");
  EXPECT_EQ((*steps)[2].status, StepStatus::kError);
  EXPECT_EQ((*steps)[2].result, bytes("boom\0"));
  EXPECT_EQ((*steps)[2].recorded_at, at(9));
  EXPECT_TRUE(store_->load_steps("other")->empty());
}

TEST_P(StoreConformance, StepOfAMissingWorkflowIsNotFound) {
  WriteBatch b;
  b.put_step("ghost", 0, "s", StepStatus::kOk, "", at(1));
  auto s = store_->commit(b);
  ASSERT_THAT(s, StatusIs(ErrorKind::kNotFound, HasSubstr("'ghost'")));
}

TEST_P(StoreConformance, EffectJournalRecordsIntentThenOutcome) {
  create("wf");
  WriteBatch intent;
  intent.put_effect_intent({.workflow_id = "wf",
                            .effect_id = "e1",
                            .idempotency_key = "wf/1/e1",
                            .nature = EffectNature::kIdempotent,
                            .arguments = "{\"to\":\"x\"}",
                            .recorded_at = at(2)});
  commit_ok(intent);
  auto effects = store_->load_effects("wf");
  ASSERT_THAT(effects, IsOk());
  ASSERT_EQ(effects->size(), 1u);
  const EffectRecord& e = effects->front();
  EXPECT_EQ(e.idempotency_key, "wf/1/e1");
  EXPECT_EQ(e.nature, EffectNature::kIdempotent);
  EXPECT_EQ(e.arguments, "{\"to\":\"x\"}");
  EXPECT_EQ(e.state, EffectState::kIntent);
  EXPECT_FALSE(e.outcome.has_value());
  EXPECT_EQ(e.intent_at, at(2));
  ASSERT_EQ(store_->load_pending_effects(10)->size(), 1u);

  // A second intent for the same effect (a retried commit) keeps the first.
  WriteBatch again;
  again.put_effect_intent(
      {.workflow_id = "wf", .effect_id = "e1", .idempotency_key = "other", .nature = EffectNature::kUnsafe});
  commit_ok(again);
  EXPECT_EQ(store_->load_effects("wf")->front().idempotency_key, "wf/1/e1");

  WriteBatch outcome;
  outcome.put_effect_outcome("wf", "e1", EffectState::kDone, bytes(""), at(3));
  commit_ok(outcome);
  effects = store_->load_effects("wf");
  ASSERT_EQ(effects->size(), 1u);
  EXPECT_EQ(effects->front().state, EffectState::kDone);
  ASSERT_TRUE(effects->front().outcome.has_value());  // an empty outcome is not a missing one
  EXPECT_EQ(*effects->front().outcome, "");
  EXPECT_EQ(effects->front().updated_at, at(3));
  EXPECT_TRUE(store_->load_pending_effects(10)->empty());
}

TEST_P(StoreConformance, EffectOutcomeNeedsAnIntent) {
  create("wf");
  WriteBatch b;
  b.put_effect_outcome("wf", "never", EffectState::kDone, bytes("x"), at(1));
  auto s = store_->commit(b);
  ASSERT_THAT(s, StatusIs(ErrorKind::kNotFound, HasSubstr("effect 'never' of workflow 'wf'")));
}

TEST_P(StoreConformance, PendingEffectsSpanWorkflowsInKeyOrderAndAreBounded) {
  WriteBatch b;
  for (std::string wf : {"b", "a", "c"}) {
    b.create_workflow(wf, "k", "", at(1));
    for (std::string e : {"2", "1"})
      b.put_effect_intent(
          {.workflow_id = wf, .effect_id = e, .idempotency_key = wf + e, .nature = EffectNature::kCheckable});
  }
  b.put_effect_outcome("a", "1", EffectState::kNeedsAttention, std::nullopt, at(2));
  commit_ok(b);
  auto pending = store_->load_pending_effects(3);
  ASSERT_THAT(pending, IsOk());
  ASSERT_EQ(pending->size(), 3u);
  EXPECT_EQ((*pending)[0].workflow_id + (*pending)[0].effect_id, "a2");
  EXPECT_EQ((*pending)[1].workflow_id + (*pending)[1].effect_id, "b1");
  EXPECT_EQ((*pending)[2].workflow_id + (*pending)[2].effect_id, "b2");
  EXPECT_EQ(store_->load_pending_effects(100)->size(), 5u);
  auto a = store_->load_effects("a");
  ASSERT_EQ(a->size(), 2u);
  EXPECT_EQ((*a)[0].effect_id, "1");
  EXPECT_EQ((*a)[0].state, EffectState::kNeedsAttention);
  EXPECT_FALSE((*a)[0].outcome.has_value());
}

TEST_P(StoreConformance, ListsWorkflowsByStatusInPages) {
  WriteBatch b;
  for (int i = 0; i < 7; ++i) b.create_workflow(numbered("w", i), "k", "", at(1));
  b.set_workflow_status("w3", WorkflowStatus::kCompleted, "", at(2));
  b.set_workflow_status("w5", WorkflowStatus::kNeedsAttention, "evidence", at(2));
  commit_ok(b);
  std::vector<std::string> seen;
  std::string after;
  for (;;) {
    auto page = store_->list_workflows(WorkflowStatus::kRunning, after, 2);
    ASSERT_THAT(page, IsOk());
    ASSERT_LE(page->size(), 2u);
    if (page->empty()) break;
    for (auto& w : *page) seen.push_back(w.id);
    after = page->back().id;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"w0", "w1", "w2", "w4", "w6"}));
  auto attention = store_->list_workflows(WorkflowStatus::kNeedsAttention, "", 10);
  ASSERT_EQ(attention->size(), 1u);
  EXPECT_EQ(attention->front().result, "evidence");
}

TEST_P(StoreConformance, CountsWorkflowsByStatus) {
  auto empty = store_->count_workflows();
  ASSERT_TRUE(empty.ok()) << empty.error().to_string();
  EXPECT_EQ(*empty, WorkflowCounts{});
  WriteBatch b;
  for (int i = 0; i < 8; ++i) b.create_workflow(numbered("w", i), "k", "", at(1));
  b.set_workflow_status("w1", WorkflowStatus::kCompleted, "", at(2));
  b.set_workflow_status("w2", WorkflowStatus::kCompleted, "", at(2));
  b.set_workflow_status("w3", WorkflowStatus::kFailed, "", at(2));
  b.set_workflow_status("w4", WorkflowStatus::kNeedsAttention, "evidence", at(2));
  b.set_workflow_status("w5", WorkflowStatus::kCancelled, "", at(2));
  commit_ok(b);
  const WorkflowCounts expected{.running = 3, .completed = 2, .failed = 1, .needs_attention = 1, .cancelled = 1};
  auto counts = store_->count_workflows();
  ASSERT_TRUE(counts.ok()) << counts.error().to_string();
  EXPECT_EQ(*counts, expected);
  EXPECT_EQ(counts->total(), 8u);
  EXPECT_EQ(counts->of(WorkflowStatus::kCompleted), 2u);
  // The default (paging through list_workflows) agrees with the backend's own.
  auto paged = store_->Store::count_workflows();
  ASSERT_TRUE(paged.ok()) << paged.error().to_string();
  EXPECT_EQ(*paged, expected);
}

TEST_P(StoreConformance, HistoryLoadsNewestSummaryAndTail) {
  WriteBatch b;
  for (int i = 1; i <= 10; ++i) b.append_history("task", i, numbered("m", i));
  b.append_history("other", 1, "x");
  commit_ok(b);

  auto all = store_->load_history("task", 100);
  ASSERT_THAT(all, IsOk());
  EXPECT_FALSE(all->summary.has_value());
  EXPECT_EQ(all->tail.size(), 10u);
  EXPECT_FALSE(all->more);

  WriteBatch s;
  s.put_summary("task", 3, "sum<=3").put_summary("task", 6, "sum<=6");
  commit_ok(s);
  auto view = store_->load_history("task", 100);
  ASSERT_THAT(view, IsOk());
  ASSERT_TRUE(view->summary.has_value());
  EXPECT_EQ(view->summary->covers_through_seq, 6);
  EXPECT_EQ(view->summary->summary, "sum<=6");
  ASSERT_EQ(view->tail.size(), 4u);
  EXPECT_EQ(view->tail.front().seq, 7);
  EXPECT_EQ(view->tail.back().message, "m10");

  auto cut = store_->load_history("task", 2);
  ASSERT_EQ(cut->tail.size(), 2u);
  EXPECT_TRUE(cut->more);

  // The full history stays readable, summaries ignored; appending an existing seq keeps it.
  WriteBatch dup;
  dup.append_history("task", 5, "changed?");
  commit_ok(dup);
  auto full = store_->read_history("task", 0, 100);
  ASSERT_THAT(full, IsOk());
  ASSERT_EQ(full->size(), 10u);
  EXPECT_EQ((*full)[4].message, "m5");
  auto page = store_->read_history("task", 4, 3);
  ASSERT_EQ(page->size(), 3u);
  EXPECT_EQ(page->front().seq, 4);

  WriteBatch del;
  del.delete_history("task");
  commit_ok(del);
  EXPECT_TRUE(store_->read_history("task", 0, 100)->empty());
  EXPECT_FALSE(store_->load_history("task", 100)->summary.has_value());
  EXPECT_EQ(store_->read_history("other", 0, 100)->size(), 1u);
}

TEST_P(StoreConformance, DeleteWorkflowTakesItsStepsAndEffects) {
  WriteBatch b;
  for (std::string wf : {"a", "b"}) {
    b.create_workflow(wf, "k", "", at(1)).put_step(wf, 0, "s", StepStatus::kOk, "", at(1));
    b.put_effect_intent({.workflow_id = wf, .effect_id = "e", .idempotency_key = "k"});
  }
  commit_ok(b);
  WriteBatch del;
  del.delete_workflow("a").delete_workflow("never-existed");
  commit_ok(del);
  EXPECT_THAT(store_->get_workflow("a"), StatusIs(ErrorKind::kNotFound));
  EXPECT_TRUE(store_->load_steps("a")->empty());
  EXPECT_TRUE(store_->load_effects("a")->empty());
  EXPECT_EQ(store_->load_steps("b")->size(), 1u);
  EXPECT_EQ(store_->load_effects("b")->size(), 1u);
}

TEST_P(StoreConformance, PruneDeletesOnlyOldFinishedWorkflowsOldestFirst) {
  WriteBatch b;
  auto add = [&](const std::string& id, WorkflowStatus status, std::int64_t t) {
    b.create_workflow(id, "k", "", at(1)).put_step(id, 0, "s", StepStatus::kOk, "", at(1));
    b.put_effect_intent({.workflow_id = id, .effect_id = "e", .idempotency_key = id});
    if (status != WorkflowStatus::kRunning) b.set_workflow_status(id, status, "", at(t));
  };
  add("done-old", WorkflowStatus::kCompleted, 10);
  add("failed-older", WorkflowStatus::kFailed, 5);
  add("cancelled-old", WorkflowStatus::kCancelled, 20);
  add("attention-old", WorkflowStatus::kNeedsAttention, 5);
  add("running", WorkflowStatus::kRunning, 1);
  add("done-new", WorkflowStatus::kCompleted, 100);
  commit_ok(b);

  auto n = store_->prune_finished(at(50), 2);
  ASSERT_THAT(n, IsOkAndHolds(2u));
  EXPECT_FALSE(store_->get_workflow("failed-older").ok());
  EXPECT_FALSE(store_->get_workflow("done-old").ok());
  EXPECT_THAT(store_->get_workflow("cancelled-old"), IsOk());
  EXPECT_TRUE(store_->load_steps("done-old")->empty());
  EXPECT_TRUE(store_->load_effects("done-old")->empty());

  n = store_->prune_finished(at(50), 10);
  ASSERT_THAT(n, IsOkAndHolds(1u));
  EXPECT_FALSE(store_->get_workflow("cancelled-old").ok());
  for (std::string kept : {"attention-old", "running", "done-new"}) {
    EXPECT_THAT(store_->get_workflow(kept), IsOk()) << kept;
    EXPECT_EQ(store_->load_steps(kept)->size(), 1u) << kept;
  }
  EXPECT_EQ(*store_->prune_finished(at(50), 10), 0u);
}

TEST_P(StoreConformance, CorruptStepIsAnErrorNamingWorkflowAndStep) {
  WriteBatch b;
  b.create_workflow("wf-7", "k", "", at(1)).put_step("wf-7", 0, "plan", StepStatus::kOk, "good", at(1));
  b.put_step("wf-7", 3, "send_email", StepStatus::kOk, "sent", at(1));
  commit_ok(b);
  harness_->corrupt_step(*store_, "wf-7", 3);
  auto steps = store_->load_steps("wf-7");
  ASSERT_THAT(steps, StatusIs(ErrorKind::kPermanent));
  const std::string& m = steps.error().message();
  EXPECT_THAT(m, HasSubstr("corrupt record"));
  EXPECT_THAT(m, HasSubstr("step 3"));
  EXPECT_THAT(m, HasSubstr("'send_email'"));
  EXPECT_THAT(m, HasSubstr("workflow 'wf-7'"));
  // Other records are unaffected.
  EXPECT_THAT(store_->get_workflow("wf-7"), IsOk());
}

TEST_P(StoreConformance, CorruptWorkflowEffectAndHistoryAreErrorsNamingThem) {
  WriteBatch b;
  b.create_workflow("wf", "k", "", at(1)).set_workflow_status("wf", WorkflowStatus::kCompleted, "result", at(2));
  b.put_effect_intent({.workflow_id = "wf", .effect_id = "charge", .idempotency_key = "k", .arguments = "$10"});
  b.append_history("t", 1, "hello");
  commit_ok(b);
  harness_->corrupt_workflow(*store_, "wf");
  harness_->corrupt_effect(*store_, "wf", "charge");
  harness_->corrupt_history(*store_, "t", 1);

  auto w = store_->get_workflow("wf");
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.error().message(), HasSubstr("corrupt record: workflow 'wf'"));
  auto listed = store_->list_workflows(WorkflowStatus::kCompleted, "", 10);
  ASSERT_FALSE(listed.ok());
  auto e = store_->load_effects("wf");
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.error().message(), HasSubstr("effect 'charge' of workflow 'wf'"));
  EXPECT_FALSE(store_->load_pending_effects(10).ok());
  auto h = store_->read_history("t", 0, 10);
  ASSERT_FALSE(h.ok());
  EXPECT_THAT(h.error().message(), HasSubstr("history message 1 of task 't'"));
  EXPECT_FALSE(store_->load_history("t", 10).ok());
}

TEST_P(StoreConformance, LargeValuesRoundTrip) {
  std::string big(1 << 20, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131);
  WriteBatch b;
  b.create_workflow("wf", "k", big, at(1)).put_step("wf", 0, "s", StepStatus::kOk, big, at(1));
  commit_ok(b);
  EXPECT_EQ(workflow("wf").input, big);
  EXPECT_EQ(store_->load_steps("wf")->front().result, big);
}

TEST_P(StoreConformance, ReopeningKeepsEverythingCommitted) {
  if (!harness_->persistent()) GTEST_SKIP() << "memory store: see MemoryStore crash tests";
  WriteBatch b;
  b.create_workflow("wf", "k", "in", at(1)).put_step("wf", 0, "s", StepStatus::kOk, "r", at(2));
  b.put_effect_intent({.workflow_id = "wf", .effect_id = "e", .idempotency_key = "k"});
  b.append_history("t", 1, "m").put_summary("t", 1, "s");
  commit_ok(b);
  reopen();
  EXPECT_EQ(*store_->schema_version(), kStoreSchemaVersion);
  EXPECT_EQ(workflow("wf").input, "in");
  EXPECT_EQ(store_->load_steps("wf")->size(), 1u);
  EXPECT_EQ(store_->load_effects("wf")->size(), 1u);
  EXPECT_EQ(store_->load_history("t", 10)->summary->summary, "s");
}

TEST_P(StoreConformance, NewerSchemaIsRefusedNamingBothVersions) {
  if (!harness_->persistent()) GTEST_SKIP() << "memory store has no schema on disk";
  create("wf");
  harness_->set_schema_version(kStoreSchemaVersion + 5);
  store_.reset();
  auto s = harness_->open();
  ASSERT_THAT(s, StatusIs(ErrorKind::kPermanent));
  const std::string& m = s.error().message();
  EXPECT_THAT(m, HasSubstr("schema version " + std::to_string(kStoreSchemaVersion + 5)));
  const std::string version = std::to_string(kStoreSchemaVersion);  // an lvalue: see support/numbered.hpp
  EXPECT_THAT(m, HasSubstr("(" + version + ")"));
  // Refusing changed nothing: an older binary's version number is still there.
  harness_->set_schema_version(kStoreSchemaVersion);
  reopen();
  EXPECT_EQ(workflow("wf").id, "wf");
}

// Concurrent callers through a GroupCommitter: every batch lands exactly once.
TEST_P(StoreConformance, GroupCommitFromManyThreads) {
  auto env = make_real_environment({.workers = 2, .seed = 7});
  GroupCommitter committer(*store_);
  constexpr int kThreads = 4;
  constexpr int kBatches = 40;
  std::atomic<int> failures{0};
  std::vector<std::unique_ptr<Thread>> threads;
  for (int t = 0; t < kThreads; ++t) {
    auto th = env->start_thread("writer", [&, t] {
      for (int i = 0; i < kBatches; ++i) {
        std::string id = numbered("t", t) + "-" + std::to_string(i);
        WriteBatch b;
        b.create_workflow(id, "k", "", at(1)).put_step(id, 0, "s", StepStatus::kOk, id, at(1));
        b.append_history("shared", t * 1000 + i, id);
        if (!committer.commit(b).ok()) ++failures;
      }
    });
    ASSERT_THAT(th, IsOk());
    threads.push_back(std::move(*th));
  }
  for (auto& th : threads) th->join();
  EXPECT_EQ(failures.load(), 0);
  auto hist = store_->read_history("shared", 0, 100000);
  ASSERT_THAT(hist, IsOk());
  EXPECT_EQ(hist->size(), static_cast<std::size_t>(kThreads * kBatches));
  auto running = store_->list_workflows(WorkflowStatus::kRunning, "", 100000);
  ASSERT_THAT(running, IsOk());
  EXPECT_EQ(running->size(), static_cast<std::size_t>(kThreads * kBatches));
  for (const auto& w : *running) {
    auto steps = store_->load_steps(w.id);
    ASSERT_EQ(steps->size(), 1u) << w.id;
    EXPECT_EQ(steps->front().result, w.id);
  }
  GroupCommitStats st = committer.stats();
  EXPECT_EQ(st.batches, static_cast<std::uint64_t>(kThreads * kBatches));
  EXPECT_LE(st.groups, st.batches);
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreConformance, ::testing::Values("memory", "sqlite", "postgres"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace nines
