// The memory store's crash and fault injection: what a crash keeps in each durability mode,
// failed commits (also halfway through a batch) and a full disk leave nothing half applied.
#include "nines/store/memory_store.hpp"
#include "support/status_matchers.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

TimePoint at(std::int64_t s) { return TimePoint(std::chrono::seconds(s)); }

std::unique_ptr<MemoryStore> make(MemoryStoreOptions o = {}) {
  auto s = make_memory_store(o);
  EXPECT_THAT(s, IsOk());
  return std::move(*s);
}

WriteBatch step_batch(const std::string& wf, std::int64_t seq) {
  WriteBatch b;
  b.create_workflow(wf, "k", "in", at(1)).put_step(wf, seq, "s", StepStatus::kOk, "r", at(1));
  return b;
}

TEST(MemoryStore, RejectsZeroSyncInterval) {
  auto s = make_memory_store({.durability = Durability::kBatched, .batched_sync_every_commits = 0});
  ASSERT_THAT(s, StatusIs(ErrorKind::kInvalidArgument));
}

TEST(MemoryStore, SyncedCrashKeepsEveryCommittedBatch) {
  auto store = make();
  ASSERT_THAT(store->commit(step_batch("a", 0)), IsOk());
  ASSERT_THAT(store->commit(step_batch("a", 1)), IsOk());
  WriteBatch uncommitted = step_batch("b", 0);  // built, never committed
  store->crash();
  EXPECT_EQ(store->load_steps("a")->size(), 2u);
  EXPECT_FALSE(store->get_workflow("b").ok());
}

TEST(MemoryStore, BatchedCrashLosesCommitsSinceTheLastSync) {
  auto store = make({.durability = Durability::kBatched, .batched_sync_every_commits = 3});
  ASSERT_THAT(store->commit(step_batch("a", 0)), IsOk());
  store->sync();
  ASSERT_THAT(store->commit(step_batch("a", 1)), IsOk());
  EXPECT_EQ(store->load_steps("a")->size(), 2u);  // visible before the sync
  store->crash();
  auto steps = store->load_steps("a");
  ASSERT_EQ(steps->size(), 1u);
  EXPECT_EQ(steps->front().seq, 0);

  // Three commits reach the automatic sync; a fourth is in the loss window.
  for (std::int64_t seq = 1; seq <= 4; ++seq) ASSERT_THAT(store->commit(step_batch("a", seq)), IsOk());
  store->crash();
  EXPECT_EQ(store->load_steps("a")->size(), 4u);  // seq 0..3
}

TEST(MemoryStore, InjectedFailureHalfwayThroughABatchAppliesNothing) {
  auto store = make();
  ASSERT_THAT(store->commit(step_batch("a", 0)), IsOk());
  store->fail_next_commits(1, Error(ErrorKind::kTransient, "I/O error (injected)"), /*after_ops=*/2);
  WriteBatch b;
  b.put_step("a", 1, "s", StepStatus::kOk, "r", at(2))
      .set_workflow_status("a", WorkflowStatus::kCompleted, "done", at(2))
      .append_history("t", 1, "m");
  auto s = store->commit(b);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().message(), "I/O error (injected)");
  EXPECT_EQ(store->load_steps("a")->size(), 1u);
  EXPECT_EQ(store->get_workflow("a")->status, WorkflowStatus::kRunning);
  EXPECT_EQ(store->get_workflow("a")->version, 1);
  EXPECT_TRUE(store->read_history("t", 0, 10)->empty());
  store->crash();  // and nothing of it reached the durable copy either
  EXPECT_EQ(store->load_steps("a")->size(), 1u);
  // The fault was one-shot.
  EXPECT_THAT(store->commit(b), IsOk());
  EXPECT_EQ(store->get_workflow("a")->status, WorkflowStatus::kCompleted);
  EXPECT_EQ(store->commits(), 2u);
}

TEST(MemoryStore, DiskFullFailsTheCommitAndKeepsTheRest) {
  auto store = make({.capacity_bytes = 4096});
  ASSERT_THAT(store->commit(step_batch("a", 0)), IsOk());
  WriteBatch big;
  big.put_step("a", 1, "s", StepStatus::kOk, std::string(8192, 'x'), at(1)).append_history("t", 1, "m");
  auto s = store->commit(big);
  ASSERT_THAT(s, StatusIs(ErrorKind::kTransient, HasSubstr("disk full")));
  EXPECT_EQ(store->load_steps("a")->size(), 1u);
  EXPECT_TRUE(store->read_history("t", 0, 10)->empty());
  // Small commits still fit; freeing space (a bigger disk) lets the big one through.
  ASSERT_THAT(store->commit(step_batch("a", 2)), IsOk());
  store->set_capacity_bytes(0);
  ASSERT_THAT(store->commit(big), IsOk());
  EXPECT_EQ(store->load_steps("a")->size(), 3u);
}

TEST(MemoryStore, CorruptionHooksReportMissingRecords) {
  auto store = make();
  EXPECT_FALSE(store->corrupt_step("none", 0));
  EXPECT_FALSE(store->corrupt_workflow("none"));
  EXPECT_FALSE(store->corrupt_effect("none", "e"));
  EXPECT_FALSE(store->corrupt_history("none", 0));
}

TEST(MemoryStore, CorruptionSurvivesACrash) {
  auto store = make();
  ASSERT_THAT(store->commit(step_batch("a", 4)), IsOk());
  ASSERT_TRUE(store->corrupt_step("a", 4));
  store->crash();
  auto steps = store->load_steps("a");
  ASSERT_FALSE(steps.ok());
  EXPECT_THAT(steps.error().message(), HasSubstr("step 4 ('s') of workflow 'a'"));
}

}  // namespace
}  // namespace nines
