// Internal entry points of the SQLite store, for tests of the migration path.
#pragma once

#include <memory>
#include <string>

#include "nines/store/sqlite_store.hpp"

namespace nines::internal {

// As open_sqlite_store, but migrates only up to target_version (1..kStoreSchemaVersion): makes
// a store as an older binary would have left it. The store returned is for inspection only.
Result<std::unique_ptr<Store>> open_sqlite_store_at_version(const std::string& path, const SqliteStoreOptions& options,
                                                            int target_version);

}  // namespace nines::internal
