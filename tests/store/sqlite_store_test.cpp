// SQLite specifics: WAL, migrations from an older schema, files that are not nines stores,
// a full disk (max_size_bytes) and batched durability.
#include "nines/store/sqlite_store.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <fstream>
#include <string>

#include "store/sqlite_internal.hpp"
#include "store/store_backends.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

TimePoint at(std::int64_t s) { return TimePoint(std::chrono::seconds(s)); }

class SqliteStoreTest : public ::testing::Test {
 protected:
  void TearDown() override { test::remove_tree(dir_); }

  // Runs a query on a separate connection; returns the first column of the first row.
  std::string query(const std::string& sql) {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    std::string out;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
      out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
  }

  std::string dir_ = test::make_temp_dir("nines-sqlite-test");
  std::string path_ = dir_ + "/store.db";
};

TEST_F(SqliteStoreTest, FreshFileIsWalAtTheCurrentVersionWithItsIndexes) {
  auto s = open_sqlite_store(path_);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(query("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(query("SELECT value FROM nines_meta WHERE key = 'schema_version'"), std::to_string(kStoreSchemaVersion));
  EXPECT_EQ(query("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN"
                  " ('workflows_by_status', 'effects_pending', 'workflows_by_age')"),
            "3");
}

TEST_F(SqliteStoreTest, MigratesAVersionOneStoreKeepingItsData) {
  {
    auto v1 = internal::open_sqlite_store_at_version(path_, {}, 1);
    ASSERT_THAT(v1, IsOk());
    WriteBatch b;
    b.create_workflow("old", "k", "data", at(1)).put_step("old", 0, "s", StepStatus::kOk, "r", at(1));
    ASSERT_THAT((*v1)->commit(b), IsOk());
    EXPECT_EQ(*(*v1)->schema_version(), 1);
  }
  EXPECT_EQ(query("SELECT count(*) FROM sqlite_master WHERE name = 'effects_pending'"), "0");
  auto s = open_sqlite_store(path_);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(*(*s)->schema_version(), kStoreSchemaVersion);
  EXPECT_EQ(query("SELECT count(*) FROM sqlite_master WHERE name = 'effects_pending'"), "1");
  EXPECT_EQ((*s)->get_workflow("old")->input, "data");
  EXPECT_EQ((*s)->load_steps("old")->size(), 1u);
}

TEST_F(SqliteStoreTest, RefusesADatabaseThatIsNotANinesStore) {
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE something(x)", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto s = open_sqlite_store(path_);
  ASSERT_THAT(s, StatusIs(ErrorKind::kPermanent, HasSubstr("not a nines store")));
}

TEST_F(SqliteStoreTest, RefusesAFileThatIsNotADatabase) {
  std::ofstream(path_) << std::string(8192, 'g');
  auto s = open_sqlite_store(path_);
  ASSERT_THAT(s, StatusIs(ErrorKind::kPermanent));
}

TEST_F(SqliteStoreTest, UnopenablePathIsAnError) {
  auto s = open_sqlite_store(dir_ + "/no/such/dir/store.db");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.error().message(), HasSubstr("no/such/dir"));
}

TEST_F(SqliteStoreTest, DiskFullFailsTheCommitAndAppliesNothing) {
  auto s = open_sqlite_store(path_, {.max_size_bytes = 256 * 1024});
  ASSERT_THAT(s, IsOk());
  Store& store = **s;
  WriteBatch small;
  small.create_workflow("wf", "k", "", at(1)).put_step("wf", 0, "s", StepStatus::kOk, "r", at(1));
  ASSERT_THAT(store.commit(small), IsOk());

  WriteBatch big;
  big.put_step("wf", 1, "s", StepStatus::kOk, "r", at(2));
  for (int i = 0; i < 8; ++i) big.append_history("t", i, std::string(64 * 1024, 'x'));
  auto c = store.commit(big);
  ASSERT_THAT(c, StatusIs(ErrorKind::kTransient, HasSubstr("disk full")));
  EXPECT_EQ(store.load_steps("wf")->size(), 1u);
  EXPECT_TRUE(store.read_history("t", 0, 100)->empty());

  WriteBatch next;
  next.put_step("wf", 1, "s", StepStatus::kOk, "r", at(3));
  ASSERT_THAT(store.commit(next), IsOk());
  EXPECT_EQ(store.load_steps("wf")->size(), 2u);
}

TEST_F(SqliteStoreTest, BatchedDurabilityCommitsAndReopens) {
  {
    auto s = open_sqlite_store(path_, {.durability = Durability::kBatched});
    ASSERT_THAT(s, IsOk());
    WriteBatch b;
    b.create_workflow("wf", "k", "", at(1));
    ASSERT_THAT((*s)->commit(b), IsOk());
  }
  auto s = open_sqlite_store(path_);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT((*s)->get_workflow("wf"), IsOk());
}

TEST_F(SqliteStoreTest, TwoConnectionsToOneFileSeeEachOthersCommits) {
  auto a = open_sqlite_store(path_);
  auto b = open_sqlite_store(path_);
  ASSERT_TRUE(a.ok() && b.ok());
  WriteBatch w;
  w.create_workflow("wf", "k", "x", at(1));
  ASSERT_THAT((*a)->commit(w), IsOk());
  EXPECT_EQ((*b)->get_workflow("wf")->input, "x");
}

}  // namespace
}  // namespace nines
