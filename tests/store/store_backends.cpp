#include "store/store_backends.hpp"

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "nines/store/memory_store.hpp"
#include "nines/store/postgres_store.hpp"
#include "nines/store/sqlite_store.hpp"
#include "support/numbered.hpp"

namespace nines::test {
namespace {

// Debian 12's server binaries; NINES_PG_BIN overrides (another version or a broken path, to
// check that an unavailable server fails the tests).
std::string pg_bin() {
  const char* v = std::getenv("NINES_PG_BIN");
  return v && *v ? v : "/usr/lib/postgresql/15/bin";
}
constexpr uid_t kNobody = 65534;

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The server, started on first use and stopped by the global test environment.
class PostgresServer {
 public:
  static PostgresServer& get() {
    static PostgresServer* server = new PostgresServer;  // stopped by PostgresEnvironment
    return *server;
  }

  Result<std::string> conninfo_for_new_schema() {
    std::lock_guard lock(mu_);
    if (!started_) start();
    if (!error_.empty()) return Error(ErrorKind::kStartFailed, error_);
    std::string schema = numbered("t", ++schemas_);
    if (auto s = admin_exec_locked("CREATE SCHEMA " + schema); !s.ok()) return std::move(s).error();
    return base_ + " dbname=nines_test options='-c search_path=" + schema + "'";
  }

  Status admin_exec(const std::string& sql) {
    std::lock_guard lock(mu_);
    if (!error_.empty() || !started_) return Error(ErrorKind::kStartFailed, "postgres test server not running");
    return admin_exec_locked(sql);
  }

  void stop() {
    std::lock_guard lock(mu_);
    if (dir_.empty()) return;
    if (running_) run_as_server_user(pg_bin() + "/pg_ctl -D " + dir_ + "/data -m immediate -w stop > /dev/null 2>&1");
    running_ = false;
    remove_tree(dir_);
    dir_.clear();
  }

 private:
  // Runs a shell command as the unprivileged user when we are root (postgres refuses root).
  int run_as_server_user(const std::string& cmd) {
    std::string full = "cd " + dir_ + " && ";
    if (geteuid() == 0) full += "runuser -u nobody -- ";
    full += cmd;
    return std::system(full.c_str());
  }

  void start() {
    started_ = true;
    dir_ = make_temp_dir("nines-pg");
    if (geteuid() == 0 && chown(dir_.c_str(), kNobody, kNobody) != 0) {
      error_ = "cannot chown " + dir_ + " to nobody";
      return;
    }
    std::string pg = pg_bin();
    if (run_as_server_user(pg + "/initdb -D " + dir_ + "/data -U nines -A trust -E UTF8 --no-sync > " + dir_ +
                           "/initdb.log 2>&1") != 0) {
      error_ = "initdb failed (" + dir_ + "/initdb.log): " + read_file(dir_ + "/initdb.log");
      return;
    }
    if (run_as_server_user(pg + "/pg_ctl -D " + dir_ + "/data -l " + dir_ + "/server.log -w -t 60 -o \"-k " + dir_ +
                           " -c listen_addresses=''\" start > /dev/null 2>&1") != 0) {
      error_ = "pg_ctl start failed: " + read_file(dir_ + "/server.log");
      return;
    }
    running_ = true;
    base_ = "host=" + dir_ + " user=nines";
    if (auto s = exec_on(base_ + " dbname=postgres", "CREATE DATABASE nines_test"); !s.ok()) {
      error_ = "creating the test database: " + s.error().message();
    }
  }

  static Status exec_on(const std::string& conninfo, const std::string& sql) {
    PGconn* c = PQconnectdb(conninfo.c_str());
    if (PQstatus(c) != CONNECTION_OK) {
      std::string m = PQerrorMessage(c);
      PQfinish(c);
      return Error(ErrorKind::kTransient, "connecting to the test server: " + m);
    }
    PGresult* r = PQexec(c, sql.c_str());
    auto st = PQresultStatus(r);
    std::string m = PQresultErrorMessage(r);
    PQclear(r);
    PQfinish(c);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return Error(ErrorKind::kInternal, sql + ": " + m);
    return ok_status();
  }

  Status admin_exec_locked(const std::string& sql) { return exec_on(base_ + " dbname=nines_test", sql); }

  std::mutex mu_;
  bool started_ = false;
  bool running_ = false;
  std::string error_;
  std::string dir_;
  std::string base_;
  int schemas_ = 0;
};

class PostgresEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { PostgresServer::get().stop(); }
};
[[maybe_unused]] ::testing::Environment* const kPgEnv = ::testing::AddGlobalTestEnvironment(new PostgresEnvironment);

class MemoryHarness final : public StoreHarness {
 public:
  Result<std::unique_ptr<Store>> open() override {
    auto m = make_memory_store();
    if (!m.ok()) return std::move(m).error();
    return std::unique_ptr<Store>(std::move(*m));
  }
  bool persistent() const override { return false; }
  void corrupt_step(Store& s, const std::string& wf, std::int64_t seq) override {
    ASSERT_TRUE(mem(s).corrupt_step(wf, seq));
  }
  void corrupt_workflow(Store& s, const std::string& id) override { ASSERT_TRUE(mem(s).corrupt_workflow(id)); }
  void corrupt_effect(Store& s, const std::string& wf, const std::string& e) override {
    ASSERT_TRUE(mem(s).corrupt_effect(wf, e));
  }
  void corrupt_history(Store& s, const std::string& task, std::int64_t seq) override {
    ASSERT_TRUE(mem(s).corrupt_history(task, seq));
  }
  void set_schema_version(int) override { FAIL() << "memory store has no schema on disk"; }

 private:
  static MemoryStore& mem(Store& s) { return dynamic_cast<MemoryStore&>(s); }
};

class SqliteHarness final : public StoreHarness {
 public:
  SqliteHarness() : dir_(make_temp_dir("nines-sqlite")), path_(dir_ + "/store.db") {}
  ~SqliteHarness() override { remove_tree(dir_); }

  Result<std::unique_ptr<Store>> open() override { return open_sqlite_store(path_); }
  bool persistent() const override { return true; }

  void corrupt_step(Store&, const std::string& wf, std::int64_t seq) override {
    exec("UPDATE steps SET result = result || x'5a' WHERE workflow_id = '" + wf + "' AND seq = " + std::to_string(seq));
  }
  void corrupt_workflow(Store&, const std::string& id) override {
    exec("UPDATE workflows SET result = result || x'5a' WHERE id = '" + id + "'");
  }
  void corrupt_effect(Store&, const std::string& wf, const std::string& e) override {
    exec("UPDATE effects SET arguments = arguments || x'5a' WHERE workflow_id = '" + wf + "' AND effect_id = '" + e +
         "'");
  }
  void corrupt_history(Store&, const std::string& task, std::int64_t seq) override {
    exec("UPDATE history SET message = message || x'5a' WHERE task_id = '" + task +
         "' AND seq = " + std::to_string(seq));
  }
  void set_schema_version(int version) override {
    exec("UPDATE nines_meta SET value = " + std::to_string(version) + " WHERE key = 'schema_version'",
         /*keys_as_blobs=*/false);
  }

 private:
  // The store binds keys as blobs: literals in `= '...'` are cast to compare as blobs.
  void exec(std::string sql, bool keys_as_blobs = true) {
    for (std::size_t p = 0; keys_as_blobs && (p = sql.find(" = '", p)) != std::string::npos;) {
      sql.replace(p, 4, " = CAST('");
      auto end = sql.find('\'', p + 9);
      sql.insert(end + 1, " AS BLOB)");
      p = end;
    }
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    char* err = nullptr;
    int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << (err ? err : "");
    EXPECT_EQ(sqlite3_changes(db), 1) << sql;
    sqlite3_free(err);
    sqlite3_close(db);
  }

  std::string dir_;
  std::string path_;
};

class PostgresHarness final : public StoreHarness {
 public:
  Result<std::unique_ptr<Store>> open() override {
    if (conninfo_.empty()) {
      auto c = postgres_conninfo_for_new_schema();
      if (!c.ok()) return std::move(c).error();
      conninfo_ = *c;
    }
    return open_postgres_store(conninfo_);
  }
  bool persistent() const override { return true; }

  void corrupt_step(Store&, const std::string& wf, std::int64_t seq) override {
    exec("UPDATE steps SET result = result || '\\x5a'::bytea WHERE workflow_id = " + key(wf) +
         " AND seq = " + std::to_string(seq));
  }
  void corrupt_workflow(Store&, const std::string& id) override {
    exec("UPDATE workflows SET result = result || '\\x5a'::bytea WHERE id = " + key(id));
  }
  void corrupt_effect(Store&, const std::string& wf, const std::string& e) override {
    exec("UPDATE effects SET arguments = arguments || '\\x5a'::bytea WHERE workflow_id = " + key(wf) +
         " AND effect_id = " + key(e));
  }
  void corrupt_history(Store&, const std::string& task, std::int64_t seq) override {
    exec("UPDATE history SET message = message || '\\x5a'::bytea WHERE task_id = " + key(task) +
         " AND seq = " + std::to_string(seq));
  }
  void set_schema_version(int version) override {
    exec("UPDATE nines_meta SET value = " + std::to_string(version) + " WHERE key = 'schema_version'");
  }

 private:
  static std::string key(const std::string& s) { return "convert_to('" + s + "', 'UTF8')"; }
  void exec(const std::string& sql) {
    PGconn* c = PQconnectdb(conninfo_.c_str());
    ASSERT_EQ(PQstatus(c), CONNECTION_OK) << PQerrorMessage(c);
    PGresult* r = PQexec(c, sql.c_str());
    EXPECT_EQ(PQresultStatus(r), PGRES_COMMAND_OK) << sql << ": " << PQresultErrorMessage(r);
    EXPECT_STREQ(PQcmdTuples(r), "1") << sql;
    PQclear(r);
    PQfinish(c);
  }
  std::string conninfo_;
};

}  // namespace

std::string make_temp_dir(const std::string& prefix) {
  std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  char* d = mkdtemp(tmpl.data());
  if (!d) throw std::runtime_error("mkdtemp failed for " + tmpl);
  return tmpl;
}

void remove_tree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

bool postgres_skipped() {
  const char* v = std::getenv("NINES_SKIP_POSTGRES");
  return v && std::string(v) == "1";
}

Result<std::string> postgres_conninfo_for_new_schema() { return PostgresServer::get().conninfo_for_new_schema(); }
Status postgres_admin_exec(const std::string& sql) { return PostgresServer::get().admin_exec(sql); }

std::unique_ptr<StoreHarness> make_harness(const std::string& backend) {
  if (backend == "memory") return std::make_unique<MemoryHarness>();
  if (backend == "sqlite") return std::make_unique<SqliteHarness>();
  if (backend == "postgres") return std::make_unique<PostgresHarness>();
  return nullptr;
}

}  // namespace nines::test
