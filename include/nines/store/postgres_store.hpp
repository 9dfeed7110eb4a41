// nines/store/postgres_store.hpp: a Store on PostgreSQL (libpq), for many nodes.
//
// Same schema semantics as the SQLite store: migrations applied on open inside a transaction
// (serialized between nodes by an advisory lock), a newer schema refused, statements
// prepared once per connection, one transaction per commit. A connection lost at any point
// fails the call with kTransient and nothing half committed; the next call reconnects (and
// prepares again). libpq-fe.h stays out of this header.
//
// Durability::kSynced leaves synchronous_commit as the server has it (on by default: a
// commit is flushed to the server's WAL before COMMIT returns); kBatched sets
// synchronous_commit=off for this connection (the server may lose up to about three
// wal_writer_delay, 600 ms by default, of commits on a server crash; never half a commit).
//
// Ownership: the caller owns the store; it owns its one connection.
// Thread-safety: every member may be called from any thread; one mutex serializes the
// connection.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "nines/store/store.hpp"

namespace nines {

struct PostgresStoreOptions {
  Durability durability = Durability::kSynced;
  int connect_timeout_s = 10;
  // Testing only: runs inside commit() after the batch's statements and before COMMIT (to
  // drop the connection mid-transaction, for example). Empty in production.
  std::function<void()> before_commit_for_test;
};

// Connects with conninfo (libpq syntax: "host=/tmp/pg dbname=nines") and migrates. Errors:
// kTransient if the server cannot be reached, kPermanent for a schema version newer than
// kStoreSchemaVersion (naming both) or a failed migration.
Result<std::unique_ptr<Store>> open_postgres_store(const std::string& conninfo,
                                                   const PostgresStoreOptions& options = {});

}  // namespace nines
