// PostgreSQL specifics on the real test server: a connection dropped mid-transaction (and
// while idle) gives a clear error, commits nothing half, and the next call reconnects; an
// unreachable server is a transient error.
#include "nines/store/postgres_store.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "store/store_backends.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

TimePoint at(std::int64_t s) { return TimePoint(std::chrono::seconds(s)); }

const char* const kKillVictim =
    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = 'nines-victim'";

class PostgresStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::postgres_skipped()) GTEST_SKIP() << "NINES_SKIP_POSTGRES=1";
    auto c = test::postgres_conninfo_for_new_schema();
    ASSERT_THAT(c, IsOk()) << "PostgreSQL test server unavailable (set NINES_SKIP_POSTGRES=1 to skip): "
                           << c.error().to_string();
    conninfo_ = *c + " application_name=nines-victim";
  }
  std::string conninfo_;
};

TEST_F(PostgresStoreTest, ConnectionDroppedMidTransactionCommitsNothingAndReconnects) {
  bool drop = false;
  PostgresStoreOptions options;
  options.before_commit_for_test = [&] {
    if (!drop) return;
    drop = false;
    ASSERT_THAT(test::postgres_admin_exec(kKillVictim), IsOk());
  };
  auto s = open_postgres_store(conninfo_, options);
  ASSERT_THAT(s, IsOk());
  Store& store = **s;
  WriteBatch first;
  first.create_workflow("wf", "k", "", at(1)).put_step("wf", 0, "s", StepStatus::kOk, "r", at(1));
  ASSERT_THAT(store.commit(first), IsOk());

  drop = true;
  WriteBatch doomed;
  doomed.put_step("wf", 1, "s", StepStatus::kOk, "r", at(2))
      .set_workflow_status("wf", WorkflowStatus::kCompleted, "done", at(2))
      .create_workflow("other", "k", "", at(2));
  auto c = store.commit(doomed);
  ASSERT_THAT(c, StatusIs(ErrorKind::kTransient, HasSubstr("connection lost")));

  // The next call reconnects; nothing of the dropped transaction is there.
  auto w = store.get_workflow("wf");
  ASSERT_THAT(w, IsOk());
  EXPECT_EQ(w->status, WorkflowStatus::kRunning);
  EXPECT_EQ(store.load_steps("wf")->size(), 1u);
  EXPECT_THAT(store.get_workflow("other"), StatusIs(ErrorKind::kNotFound));
  // And the same batch commits now (every operation is idempotent).
  ASSERT_THAT(store.commit(doomed), IsOk());
  EXPECT_EQ(store.get_workflow("wf")->status, WorkflowStatus::kCompleted);
}

TEST_F(PostgresStoreTest, ConnectionDroppedWhileIdleIsReconnectedOnTheNextCall) {
  auto s = open_postgres_store(conninfo_);
  ASSERT_THAT(s, IsOk());
  Store& store = **s;
  WriteBatch b;
  b.create_workflow("wf", "k", "in", at(1));
  ASSERT_THAT(store.commit(b), IsOk());
  ASSERT_THAT(test::postgres_admin_exec(kKillVictim), IsOk());
  auto w = store.get_workflow("wf");
  ASSERT_THAT(w, IsOk());
  EXPECT_EQ(w->input, "in");
  ASSERT_THAT(test::postgres_admin_exec(kKillVictim), IsOk());
  WriteBatch c;
  c.put_step("wf", 0, "s", StepStatus::kOk, "r", at(2));
  auto st = store.commit(c);
  ASSERT_THAT(st, IsOk());
  EXPECT_EQ(store.load_steps("wf")->size(), 1u);
}

TEST_F(PostgresStoreTest, UnreachableServerIsATransientError) {
  auto s = open_postgres_store("host=/nonexistent-nines-dir dbname=x", {.connect_timeout_s = 2});
  ASSERT_THAT(s, StatusIs(ErrorKind::kTransient, HasSubstr("connecting to postgres")));
}

TEST_F(PostgresStoreTest, BatchedDurabilityWorks) {
  auto s = open_postgres_store(conninfo_, {.durability = Durability::kBatched});
  ASSERT_THAT(s, IsOk());
  WriteBatch b;
  b.create_workflow("wf", "k", "", at(1));
  ASSERT_THAT((*s)->commit(b), IsOk());
  EXPECT_THAT((*s)->get_workflow("wf"), IsOk());
}

}  // namespace
}  // namespace nines
