// nines/store/memory_store.hpp: an in-memory Store for tests and simulation, with crash and
// fault injection.
//
// The store keeps two copies of its tables: what a crash keeps ("durable") and what readers
// see. With Durability::kSynced every commit updates both. With kBatched a commit updates
// only what readers see and becomes durable at the next sync (every
// batched_sync_every_commits commits, or sync()), so crash() models the loss window.
// Integrity checks (CRC32 per record) and error messages are the same as the SQL backends'.
//
// Ownership: the factory's caller owns the store.
// Thread-safety: every member may be called from any thread (one mutex).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "nines/store/store.hpp"

namespace nines {

struct MemoryStoreOptions {
  Durability durability = Durability::kSynced;
  // kBatched only: commits between two automatic syncs (>= 1).
  std::size_t batched_sync_every_commits = 64;
  // 0: unlimited. Otherwise a commit that would take the stored key and value bytes above
  // this fails like a full disk (kTransient "disk full") and is not applied.
  std::size_t capacity_bytes = 0;
};

class MemoryStore : public Store {
 public:
  // Makes every commit so far durable (kBatched); a no-op with kSynced.
  virtual void sync() = 0;

  // Simulates a crash and restart: everything not durable is lost (nothing, with kSynced,
  // except batches whose commit() did not return ok).
  virtual void crash() = 0;

  // Fault injection. The next `count` commits fail with `error` after applying `after_ops`
  // of their operations (so the rollback path runs); nothing of them stays applied.
  virtual void fail_next_commits(std::size_t count, Error error, std::size_t after_ops = 0) = 0;
  // Changes the capacity (see MemoryStoreOptions::capacity_bytes); 0 is unlimited.
  virtual void set_capacity_bytes(std::size_t capacity_bytes) = 0;
  // Flips a bit in a stored value without updating its checksum, as bad disk would. Returns
  // false if there is no such record.
  virtual bool corrupt_workflow(std::string_view id) = 0;
  virtual bool corrupt_step(std::string_view workflow_id, std::int64_t seq) = 0;
  virtual bool corrupt_effect(std::string_view workflow_id, std::string_view effect_id) = 0;
  virtual bool corrupt_history(std::string_view task_id, std::int64_t seq) = 0;

  // Commits that returned ok since creation.
  virtual std::uint64_t commits() const = 0;
};

// Creates an empty store at kStoreSchemaVersion. Fails with kInvalidArgument for
// batched_sync_every_commits == 0.
Result<std::unique_ptr<MemoryStore>> make_memory_store(const MemoryStoreOptions& options = {});

}  // namespace nines
