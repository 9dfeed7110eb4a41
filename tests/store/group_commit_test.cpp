// Group commit: batches merge into one backend commit, each caller returns after its batch
// is durable, a failed group fails all its callers and applies none of them, one bad batch
// does not fail its neighbours, and groups respect their bounds.
#include "nines/store/group_commit.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/store/memory_store.hpp"
#include "support/numbered.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;

using test::numbered;

TimePoint at(std::int64_t s) { return TimePoint(std::chrono::seconds(s)); }

// Forwards to a memory store. While the gate is closed, the first commit is applied and then
// blocks until the gate opens, so the test can queue callers behind a leader that is inside
// the backend; counts backend commits and the operations they applied.
class GatedStore final : public Store {
 public:
  explicit GatedStore(MemoryStore& inner) : inner_(inner) {}
  std::string_view backend() const override { return "gated"; }
  Status commit(const WriteBatch& b) override {
    if (throw_next.exchange(false)) throw std::runtime_error("store bug");
    Status s = inner_.commit(b);
    std::unique_lock lock(mu_);
    ++commits_;
    if (s.ok()) ops_ += b.size();
    if (gate_closed_ && !holding_) {
      holding_ = true;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !gate_closed_; });
    }
    return s;
  }
  // Waits until the first commit is applied and held at the gate.
  void wait_holding() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return holding_; });
  }
  void close_gate() {
    std::lock_guard lock(mu_);
    gate_closed_ = true;
  }
  void open_gate() {
    std::lock_guard lock(mu_);
    gate_closed_ = false;
    cv_.notify_all();
  }
  std::atomic<bool> throw_next{false};

  std::size_t commits() const {
    std::lock_guard lock(mu_);
    return commits_;
  }
  std::size_t ops() const {
    std::lock_guard lock(mu_);
    return ops_;
  }

  Result<WorkflowRecord> get_workflow(std::string_view id) override { return inner_.get_workflow(id); }
  Result<std::vector<WorkflowRecord>> list_workflows(WorkflowStatus s, std::string_view a, std::size_t l) override {
    return inner_.list_workflows(s, a, l);
  }
  Result<std::vector<StepRecord>> load_steps(std::string_view id) override { return inner_.load_steps(id); }
  Result<std::vector<EffectRecord>> load_effects(std::string_view id) override { return inner_.load_effects(id); }
  Result<std::vector<EffectRecord>> load_pending_effects(std::size_t l) override {
    return inner_.load_pending_effects(l);
  }
  Result<HistoryView> load_history(std::string_view t, std::size_t m) override { return inner_.load_history(t, m); }
  Result<std::vector<HistoryRecord>> read_history(std::string_view t, std::int64_t f, std::size_t l) override {
    return inner_.read_history(t, f, l);
  }
  Result<std::size_t> prune_finished(TimePoint t, std::size_t l) override { return inner_.prune_finished(t, l); }
  Result<int> schema_version() override { return inner_.schema_version(); }

 private:
  MemoryStore& inner_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool gate_closed_ = false;
  bool holding_ = false;
  std::size_t commits_ = 0;
  std::size_t ops_ = 0;
};

struct GroupCommitTest : ::testing::Test {
  std::unique_ptr<Environment> env = make_real_environment({.workers = 2, .seed = 11});
  std::unique_ptr<MemoryStore> mem = make_memory_store().value();
  GatedStore gated{*mem};
  std::deque<std::vector<WriteBatch>> kept;

  // Starts one thread per batch, each committing it and storing its status.
  // The batches are kept by the fixture (the threads read them); out must outlive the joins.
  std::vector<std::unique_ptr<Thread>> start(GroupCommitter& c, std::vector<WriteBatch> batches_in,
                                             std::vector<Status>& out) {
    const std::vector<WriteBatch>& batches = kept.emplace_back(std::move(batches_in));
    out.assign(batches.size(), Status());
    std::vector<std::unique_ptr<Thread>> threads;
    for (std::size_t i = 0; i < batches.size(); ++i) {
      threads.push_back(env->start_thread("caller", [&, i] { out[i] = c.commit(batches[i]); }).value());
    }
    return threads;
  }

  // Waits (yielding) until n callers are queued in the committer.
  static void wait_queued(const GroupCommitter& c, std::size_t n) {
    while (c.waiting() < n) std::this_thread::yield();
  }
};

WriteBatch batch_for(const std::string& id) {
  WriteBatch b;
  b.create_workflow(id, "k", "", at(1)).put_step(id, 0, "s", StepStatus::kOk, id, at(1));
  return b;
}

TEST_F(GroupCommitTest, EmptyBatchReturnsAtOnce) {
  GroupCommitter c(gated);
  EXPECT_THAT(c.commit(WriteBatch{}), IsOk());
  EXPECT_EQ(gated.commits(), 0u);
}

TEST_F(GroupCommitTest, QueuedCallersShareOneBackendCommit) {
  GroupCommitter c(gated);
  gated.close_gate();
  std::vector<WriteBatch> leader = {batch_for("leader")};
  std::vector<Status> leader_status;
  auto lt = start(c, leader, leader_status);
  gated.wait_holding();
  std::vector<WriteBatch> followers;
  for (int i = 0; i < 10; ++i) followers.push_back(batch_for(numbered("f", i)));
  std::vector<Status> statuses;
  auto ft = start(c, followers, statuses);
  wait_queued(c, 11);
  gated.open_gate();
  for (auto& t : lt) t->join();
  for (auto& t : ft) t->join();
  ASSERT_THAT(leader_status[0], IsOk());
  for (auto& s : statuses) EXPECT_THAT(s, IsOk());
  EXPECT_EQ(gated.commits(), 2u);  // the leader alone, then the ten followers together
  EXPECT_EQ(gated.ops(), 22u);     // every operation applied exactly once
  EXPECT_EQ(c.stats().largest_group, 10u);
  EXPECT_EQ(c.stats().batches, 11u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(mem->load_steps(numbered("f", i))->size(), 1u);
}

TEST_F(GroupCommitTest, AFailedGroupFailsEveryCallerAndAppliesNone) {
  GroupCommitter c(gated);
  gated.close_gate();
  std::vector<Status> leader_status;
  auto lt = start(c, {batch_for("leader")}, leader_status);
  gated.wait_holding();
  std::vector<WriteBatch> followers;
  for (int i = 0; i < 6; ++i) followers.push_back(batch_for(numbered("f", i)));
  std::vector<Status> statuses;
  auto ft = start(c, followers, statuses);
  wait_queued(c, 7);
  // The leader's commit is applied and held; the six followers' merged commit fails after
  // applying three of its operations (rolled back).
  mem->fail_next_commits(1, Error(ErrorKind::kTransient, "fsync failed (injected)"), 3);
  gated.open_gate();
  for (auto& t : lt) t->join();
  for (auto& t : ft) t->join();
  EXPECT_THAT(leader_status[0], IsOk());
  for (std::size_t i = 0; i < followers.size(); ++i) {
    ASSERT_FALSE(statuses[i].ok()) << i;
    EXPECT_EQ(statuses[i].error().message(), "fsync failed (injected)");
    EXPECT_FALSE(mem->get_workflow(numbered("f", i)).ok()) << i;
  }
  EXPECT_EQ(gated.commits(), 2u);
  EXPECT_EQ(c.stats().failed_batches, 6u);
  EXPECT_EQ(c.stats().batches, 1u);
}

TEST_F(GroupCommitTest, ABadBatchFailsAloneNotItsGroup) {
  GroupCommitter c(gated);
  gated.close_gate();
  std::vector<Status> leader_status;
  auto lt = start(c, {batch_for("leader")}, leader_status);
  gated.wait_holding();
  std::vector<WriteBatch> followers = {batch_for("a"), WriteBatch(), batch_for("c")};
  followers[1].put_step("no-such-workflow", 0, "s", StepStatus::kOk, "", at(1));
  std::vector<Status> statuses;
  auto ft = start(c, followers, statuses);
  wait_queued(c, 4);
  gated.open_gate();
  for (auto& t : lt) t->join();
  for (auto& t : ft) t->join();
  EXPECT_THAT(leader_status[0], IsOk());
  EXPECT_THAT(statuses[0], IsOk());
  ASSERT_THAT(statuses[1], StatusIs(ErrorKind::kNotFound));
  EXPECT_THAT(statuses[2], IsOk());
  EXPECT_THAT(mem->get_workflow("a"), IsOk());
  EXPECT_THAT(mem->get_workflow("c"), IsOk());
}

TEST_F(GroupCommitTest, AThrowingStoreReleasesTheFollowersAndRethrowsInTheLeader) {
  GroupCommitter c(gated);
  gated.close_gate();
  std::vector<Status> leader_status;
  auto lt = start(c, {batch_for("leader")}, leader_status);
  gated.wait_holding();
  // Each follower catches what its commit throws (only the next leader's will).
  std::atomic<int> threw{0};
  std::vector<Status> statuses(4);
  std::vector<std::unique_ptr<Thread>> ft;
  for (std::size_t i = 0; i < statuses.size(); ++i) {
    ft.push_back(env->start_thread("caller",
                                   [&, i] {
                                     WriteBatch b = batch_for(numbered("f", i));
                                     try {
                                       statuses[i] = c.commit(b);
                                     } catch (const std::runtime_error&) {
                                       ++threw;
                                       statuses[i] = Error(ErrorKind::kInternal, "threw");
                                     }
                                   })
                     .value());
  }
  wait_queued(c, 5);
  gated.throw_next = true;
  gated.open_gate();
  for (auto& t : lt) t->join();
  for (auto& t : ft) t->join();
  EXPECT_THAT(leader_status[0], IsOk());
  EXPECT_EQ(threw.load(), 1);
  for (auto& s : statuses) {
    ASSERT_THAT(s, StatusIs(ErrorKind::kInternal));
  }
  // The committer still works.
  EXPECT_THAT(c.commit(batch_for("after")), IsOk());
  EXPECT_EQ(c.waiting(), 0u);
}

TEST_F(GroupCommitTest, GroupsRespectTheirBounds) {
  GroupCommitter c(gated, {.max_batches_per_group = 3});
  gated.close_gate();
  std::vector<Status> leader_status;
  auto lt = start(c, {batch_for("leader")}, leader_status);
  gated.wait_holding();
  std::vector<WriteBatch> followers;
  for (int i = 0; i < 8; ++i) followers.push_back(batch_for(numbered("f", i)));
  std::vector<Status> statuses;
  auto ft = start(c, followers, statuses);
  wait_queued(c, 9);
  gated.open_gate();
  for (auto& t : lt) t->join();
  for (auto& t : ft) t->join();
  for (auto& s : statuses) EXPECT_THAT(s, IsOk());
  EXPECT_LE(c.stats().largest_group, 3u);
  EXPECT_EQ(gated.commits(), 1u + 3u);  // 8 followers in groups of at most 3
}

TEST_F(GroupCommitTest, ByteBoundKeepsLargeBatchesApart) {
  GroupCommitter c(gated, {.max_bytes_per_group = 1000});
  gated.close_gate();
  std::vector<Status> leader_status;
  auto lt = start(c, {batch_for("leader")}, leader_status);
  gated.wait_holding();
  std::vector<WriteBatch> followers;
  for (int i = 0; i < 3; ++i) {
    WriteBatch b;
    b.create_workflow("big" + std::to_string(i), "k", std::string(800, 'x'), at(1));
    followers.push_back(b);
  }
  std::vector<Status> statuses;
  auto ft = start(c, followers, statuses);
  wait_queued(c, 4);
  gated.open_gate();
  for (auto& t : lt) t->join();
  for (auto& t : ft) t->join();
  for (auto& s : statuses) EXPECT_THAT(s, IsOk());
  EXPECT_EQ(c.stats().largest_group, 1u);
  EXPECT_EQ(gated.commits(), 4u);
}

TEST_F(GroupCommitTest, ManyThreadsEveryBatchDurableExactlyOnce) {
  GroupCommitter c(gated, {.max_batches_per_group = 16});
  constexpr int kThreads = 8;
  constexpr int kPerThread = 150;
  std::atomic<int> failures{0};
  std::vector<std::unique_ptr<Thread>> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.push_back(env->start_thread("w",
                                        [&, t] {
                                          for (int i = 0; i < kPerThread; ++i) {
                                            std::string id = std::to_string(t) + "/" + std::to_string(i);
                                            WriteBatch b = batch_for(id);
                                            b.append_history("log", t * 100000 + i, id);
                                            if (!c.commit(b).ok()) ++failures;
                                            // Returned ok: the batch must be readable now (durable before the caller
                                            // returns).
                                            if (!mem->get_workflow(id).ok()) ++failures;
                                          }
                                        })
                          .value());
  }
  for (auto& t : threads) t->join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(gated.ops(), static_cast<std::size_t>(kThreads * kPerThread * 3));
  EXPECT_EQ(mem->read_history("log", 0, 1000000)->size(), static_cast<std::size_t>(kThreads * kPerThread));
  GroupCommitStats st = c.stats();
  EXPECT_EQ(st.batches, static_cast<std::uint64_t>(kThreads * kPerThread));
  EXPECT_EQ(st.groups, gated.commits());
  EXPECT_LE(st.largest_group, 16u);
  mem->crash();  // synced: everything acknowledged survives
  EXPECT_EQ(mem->read_history("log", 0, 1000000)->size(), static_cast<std::size_t>(kThreads * kPerThread));
}

}  // namespace
}  // namespace nines
