// nines/store/sqlite_store.hpp: the embedded default Store: one SQLite file in WAL mode.
//
// Opening creates the file if needed and applies the schema migrations up to
// kStoreSchemaVersion inside one transaction; a file with a newer schema is refused.
// Every statement is prepared once at open and reused. sqlite3.h stays out of this header.
//
// Durability::kSynced is `PRAGMA synchronous=FULL` (WAL fsynced at every commit);
// kBatched is `synchronous=NORMAL` (WAL fsynced at checkpoints only: a commit survives
// kill -9, but power loss may lose the commits since the last checkpoint).
//
// Ownership: the caller owns the store; it owns the connection and closes it on destruction.
// Thread-safety: every member may be called from any thread; one mutex serializes the
// connection (concurrent commits are best merged by a GroupCommitter in front).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "nines/store/store.hpp"

namespace nines {

struct SqliteStoreOptions {
  Durability durability = Durability::kSynced;
  // How long a statement waits for a lock held by another connection (another process on
  // the same file) before failing with kTransient.
  int busy_timeout_ms = 5000;
  // 0: unlimited. Otherwise the database may not grow beyond about this many bytes (rounded
  // down to whole pages); a commit that would is refused with kTransient "disk full", as on
  // a full disk. For quotas and for testing the disk-full path.
  std::int64_t max_size_bytes = 0;
  // SQLite's page cache for this connection, in bytes (PRAGMA cache_size). SQLite's own
  // default (2 MB) makes a busy store re-read pages it just wrote. >= 0; 0: SQLite's default.
  std::int64_t cache_bytes = std::int64_t{64} << 20;
  // The write-ahead log is copied back into the database (a checkpoint, run by the commit
  // that crosses the mark) after this many pages (PRAGMA wal_autocheckpoint), and then
  // reused from its start. A larger log means fewer checkpoints, each writing once a page
  // that many commits changed (256 concurrent workflows: 45,000 steps/s at 4,096 pages,
  // 28,000 at SQLite's default 1,000); a smaller one is reused sooner, and a commit that
  // overwrites the reused log syncs faster than one that grows the file (one workflow: about
  // 90% of the disk's raw append+fdatasync rate once the log is reused, about 75% while a new
  // database fills its first log). bench/README.md has the figures. >= 1. Default 4,096
  // pages (16 MiB of log).
  int wal_autocheckpoint_pages = 4096;
};

// Opens (or creates) the store at path. Errors: kTransient if the file cannot be opened or
// written, kPermanent if it is not a nines store, is corrupt, or has a schema version newer
// than kStoreSchemaVersion (the message names both versions).
Result<std::unique_ptr<Store>> open_sqlite_store(const std::string& path, const SqliteStoreOptions& options = {});

}  // namespace nines
