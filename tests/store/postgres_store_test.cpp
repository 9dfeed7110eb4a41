// PostgreSQL specifics on the real test server: a connection dropped mid-transaction (and
// while idle) gives a clear error, commits nothing half, and the next call reconnects; an
// unreachable server is a transient error.
#include "nines/store/postgres_store.hpp"

#include <gtest/gtest.h>

#include <string>

#include "store/store_backends.hpp"

namespace nines {
namespace {

TimePoint at(std::int64_t s) { return TimePoint(std::chrono::seconds(s)); }

const char* const kKillVictim =
    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = 'nines-victim'";

class PostgresStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::postgres_skipped()) GTEST_SKIP() << "NINES_SKIP_POSTGRES=1";
    auto c = test::postgres_conninfo_for_new_schema();
    ASSERT_TRUE(c.ok()) << "PostgreSQL test server unavailable (set NINES_SKIP_POSTGRES=1 to skip): "
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
    ASSERT_TRUE(test::postgres_admin_exec(kKillVictim).ok());
  };
  auto s = open_postgres_store(conninfo_, options);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  Store& store = **s;
  WriteBatch first;
  first.create_workflow("wf", "k", "", at(1)).put_step("wf", 0, "s", StepStatus::kOk, "r", at(1));
  ASSERT_TRUE(store.commit(first).ok());

  drop = true;
  WriteBatch doomed;
  doomed.put_step("wf", 1, "s", StepStatus::kOk, "r", at(2))
      .set_workflow_status("wf", WorkflowStatus::kCompleted, "done", at(2))
      .create_workflow("other", "k", "", at(2));
  auto c = store.commit(doomed);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().kind(), ErrorKind::kTransient);
  EXPECT_NE(c.error().message().find("connection lost"), std::string::npos) << c.error().message();

  // The next call reconnects; nothing of the dropped transaction is there.
  auto w = store.get_workflow("wf");
  ASSERT_TRUE(w.ok()) << w.error().to_string();
  EXPECT_EQ(w->status, WorkflowStatus::kRunning);
  EXPECT_EQ(store.load_steps("wf")->size(), 1u);
  EXPECT_EQ(store.get_workflow("other").error().kind(), ErrorKind::kNotFound);
  // And the same batch commits now (every operation is idempotent).
  ASSERT_TRUE(store.commit(doomed).ok());
  EXPECT_EQ(store.get_workflow("wf")->status, WorkflowStatus::kCompleted);
}

TEST_F(PostgresStoreTest, ConnectionDroppedWhileIdleIsReconnectedOnTheNextCall) {
  auto s = open_postgres_store(conninfo_);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  Store& store = **s;
  WriteBatch b;
  b.create_workflow("wf", "k", "in", at(1));
  ASSERT_TRUE(store.commit(b).ok());
  ASSERT_TRUE(test::postgres_admin_exec(kKillVictim).ok());
  auto w = store.get_workflow("wf");
  ASSERT_TRUE(w.ok()) << w.error().to_string();
  EXPECT_EQ(w->input, "in");
  ASSERT_TRUE(test::postgres_admin_exec(kKillVictim).ok());
  WriteBatch c;
  c.put_step("wf", 0, "s", StepStatus::kOk, "r", at(2));
  auto st = store.commit(c);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(store.load_steps("wf")->size(), 1u);
}

TEST_F(PostgresStoreTest, UnreachableServerIsATransientError) {
  auto s = open_postgres_store("host=/nonexistent-nines-dir dbname=x", {.connect_timeout_s = 2});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().kind(), ErrorKind::kTransient);
  EXPECT_NE(s.error().message().find("connecting to postgres"), std::string::npos) << s.error().message();
}

TEST_F(PostgresStoreTest, BatchedDurabilityWorks) {
  auto s = open_postgres_store(conninfo_, {.durability = Durability::kBatched});
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  WriteBatch b;
  b.create_workflow("wf", "k", "", at(1));
  ASSERT_TRUE((*s)->commit(b).ok());
  EXPECT_TRUE((*s)->get_workflow("wf").ok());
}

}  // namespace
}  // namespace nines
