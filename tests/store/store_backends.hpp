// Test harnesses that give the conformance suite a fresh store of each backend, plus the
// hooks a backend-independent test needs (reopen, corrupt a row, set the schema version).
// The PostgreSQL harness starts a real server once per test binary (initdb into a temporary
// directory, unix socket only) and stops it at the end; each test gets its own schema.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "nines/store/store.hpp"

namespace nines::test {

class StoreHarness {
 public:
  virtual ~StoreHarness() = default;
  // Opens this test's store: the first call creates it empty, later calls reopen the same
  // data (persistent backends) after the previous Store was destroyed.
  virtual Result<std::unique_ptr<Store>> open() = 0;
  virtual bool persistent() const = 0;
  // Flip bytes of a stored value behind the store's back (its checksum is left as it was).
  virtual void corrupt_step(Store& store, const std::string& workflow_id, std::int64_t seq) = 0;
  virtual void corrupt_workflow(Store& store, const std::string& id) = 0;
  virtual void corrupt_effect(Store& store, const std::string& workflow_id, const std::string& effect_id) = 0;
  virtual void corrupt_history(Store& store, const std::string& task_id, std::int64_t seq) = 0;
  // Persistent backends only: writes a schema version into the store's meta table.
  virtual void set_schema_version(int version) = 0;
};

// "memory", "sqlite" or "postgres". The postgres harness fails the calling test (ADD_FAILURE
// with the reason) when the server cannot be started, and skips only when
// NINES_SKIP_POSTGRES=1.
std::unique_ptr<StoreHarness> make_harness(const std::string& backend);

// The PostgreSQL test server's conninfo for a fresh schema (starts the server on first use).
// Error if it could not be started.
Result<std::string> postgres_conninfo_for_new_schema();
// Runs SQL on the test server as the superuser, for terminating backends and similar.
Status postgres_admin_exec(const std::string& sql);
bool postgres_skipped();

// A fresh temporary directory (removed by the caller with remove_tree).
std::string make_temp_dir(const std::string& prefix);
void remove_tree(const std::string& dir);

}  // namespace nines::test
