// The SQLite Store: one connection in WAL mode behind a mutex, every statement prepared once.
#include "nines/store/sqlite_store.hpp"

#include <sqlite3.h>

#include <array>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "store/common.hpp"
#include "store/sqlite_internal.hpp"

namespace nines {
namespace {

using internal::to_ns;

// Migration i (index i - 1) takes the schema from version i - 1 to i.
constexpr std::array<const char*, kStoreSchemaVersion> kMigrations = {
    // 1: the tables. Keys are the primary keys (WITHOUT ROWID: rows clustered by key, so a
    // workflow's steps or a task's history are one range scan).
    "CREATE TABLE nines_meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE workflows(id TEXT PRIMARY KEY, status INTEGER NOT NULL, input BLOB NOT NULL,"
    " input_crc INTEGER NOT NULL, result BLOB NOT NULL, state_crc INTEGER NOT NULL, created_ns INTEGER NOT NULL,"
    " updated_ns INTEGER NOT NULL, attempt INTEGER NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL)"
    " WITHOUT ROWID;"
    "CREATE INDEX workflows_by_status ON workflows(status, id);"
    "CREATE TABLE steps(workflow_id TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL,"
    " status INTEGER NOT NULL, result BLOB NOT NULL, crc INTEGER NOT NULL, recorded_ns INTEGER NOT NULL,"
    " PRIMARY KEY(workflow_id, seq)) WITHOUT ROWID;"
    "CREATE TABLE effects(workflow_id TEXT NOT NULL, effect_id TEXT NOT NULL, idempotency_key TEXT NOT NULL,"
    " nature INTEGER NOT NULL, arguments BLOB NOT NULL, intent_crc INTEGER NOT NULL, state INTEGER NOT NULL,"
    " outcome BLOB, outcome_crc INTEGER NOT NULL, intent_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL,"
    " PRIMARY KEY(workflow_id, effect_id)) WITHOUT ROWID;"
    "CREATE TABLE history(task_id TEXT NOT NULL, seq INTEGER NOT NULL, message BLOB NOT NULL,"
    " crc INTEGER NOT NULL, PRIMARY KEY(task_id, seq)) WITHOUT ROWID;"
    "CREATE TABLE summaries(task_id TEXT NOT NULL, covers_through_seq INTEGER NOT NULL, summary BLOB NOT NULL,"
    " crc INTEGER NOT NULL, PRIMARY KEY(task_id, covers_through_seq)) WITHOUT ROWID;",
    // 2: recovery and retention indexes: effects of unknown outcome (a partial index, small
    // when most effects are done) and finished workflows by age.
    "CREATE INDEX effects_pending ON effects(workflow_id, effect_id) WHERE state = 0;"
    "CREATE INDEX workflows_by_age ON workflows(status, updated_ns);",
};

Error sqlite_error(sqlite3* db, int rc, std::string_view what) {
  std::string m(what);
  m += ": ";
  m += db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  m += " (sqlite " + std::to_string(rc) + ")";
  switch (rc & 0xFF) {
    case SQLITE_FULL: return Error(ErrorKind::kTransient, "disk full: " + m);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_NOMEM:
    case SQLITE_PROTOCOL: return Error(ErrorKind::kTransient, std::move(m));
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH: return Error(ErrorKind::kPermanent, std::move(m));
    default: return Error(ErrorKind::kInternal, std::move(m));
  }
}

// One prepared statement, reset after every use.
class Stmt {
 public:
  Stmt() = default;
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() { sqlite3_finalize(s_); }

  Status prepare(sqlite3* db, const std::string& sql) {
    db_ = db;
    int rc = sqlite3_prepare_v3(db, sql.c_str(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &s_, nullptr);
    if (rc != SQLITE_OK) return sqlite_error(db, rc, "preparing '" + sql + "'");
    return ok_status();
  }

  // Binds parameters 1..n in order. Strings are bound without copying: they must live until
  // reset().
  template <class... Args>
  Stmt& bind(const Args&... args) {
    int i = 0;
    (bind_one(++i, args), ...);
    return *this;
  }

  // SQLITE_ROW or SQLITE_DONE, or an error.
  Result<bool> step() {
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return sqlite_error(db_, rc, "executing statement");
  }

  // Runs a statement that returns no rows, then resets it.
  Status run() {
    auto r = step();
    reset();
    if (!r.ok()) return std::move(r).error();
    return ok_status();
  }

  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }

  std::int64_t i64(int col) const { return sqlite3_column_int64(s_, col); }
  bool is_null(int col) const { return sqlite3_column_type(s_, col) == SQLITE_NULL; }
  std::string bytes(int col) const {
    const void* p = sqlite3_column_blob(s_, col);
    int n = sqlite3_column_bytes(s_, col);
    return p ? std::string(static_cast<const char*>(p), static_cast<std::size_t>(n)) : std::string();
  }

 private:
  void bind_one(int i, std::int64_t v) { sqlite3_bind_int64(s_, i, v); }
  void bind_one(int i, std::uint32_t v) { sqlite3_bind_int64(s_, i, v); }
  void bind_one(int i, const std::string& v) { bind_one(i, std::string_view(v)); }
  void bind_one(int i, std::string_view v) {
    sqlite3_bind_blob(s_, i, v.empty() ? "" : v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  }
  void bind_one(int i, const std::optional<std::string>& v) {
    if (v)
      bind_one(i, std::string_view(*v));
    else
      sqlite3_bind_null(s_, i);
  }

  sqlite3* db_ = nullptr;
  sqlite3_stmt* s_ = nullptr;
};

// Keys are bound as blobs into TEXT columns; comparisons are bytewise (BINARY collation)
// either way, so ordering matches the memory store's std::string order. Reading them back
// with column_blob returns the bytes as stored.

internal::WorkflowRow read_workflow(const Stmt& s) {
  return {.id = s.bytes(0),
          .status = s.i64(1),
          .input = s.bytes(2),
          .input_crc = s.i64(3),
          .result = s.bytes(4),
          .state_crc = s.i64(5),
          .created_ns = s.i64(6),
          .updated_ns = s.i64(7),
          .attempt = s.i64(8),
          .version = s.i64(9),
          .kind = s.bytes(10)};
}

internal::StepRow read_step(const Stmt& s) {
  return {.workflow_id = s.bytes(0),
          .seq = s.i64(1),
          .name = s.bytes(2),
          .status = s.i64(3),
          .result = s.bytes(4),
          .crc = s.i64(5),
          .recorded_ns = s.i64(6)};
}

internal::EffectRow read_effect(const Stmt& s) {
  return {.workflow_id = s.bytes(0),
          .effect_id = s.bytes(1),
          .idempotency_key = s.bytes(2),
          .nature = s.i64(3),
          .arguments = s.bytes(4),
          .intent_crc = s.i64(5),
          .state = s.i64(6),
          .outcome = s.is_null(7) ? std::nullopt : std::optional(s.bytes(7)),
          .outcome_crc = s.i64(8),
          .intent_ns = s.i64(9),
          .updated_ns = s.i64(10)};
}

class SqliteStore final : public Store {
 public:
  // close_v2 waits for the prepared statements (members, finalized after this body).
  ~SqliteStore() override {
    if (db_) sqlite3_close_v2(db_);
  }

  Status open(const std::string& path, const SqliteStoreOptions& options, int target_version) {
    int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                             nullptr);
    if (rc != SQLITE_OK) return sqlite_error(db_, rc, "opening '" + path + "'");
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, options.busy_timeout_ms);
    // journal_mode returns the mode it ended in; anything but wal means WAL is unavailable.
    std::string mode;
    if (auto s = query_text("PRAGMA journal_mode=WAL", &mode); !s.ok()) return s;
    if (mode != "wal") return Error(ErrorKind::kPermanent, "'" + path + "' cannot use WAL (journal mode " + mode + ")");
    synced_ = options.durability == Durability::kSynced;
    const char* sync = synced_ ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL";
    if (auto s = exec(sync); !s.ok()) return s;
    if (options.cache_bytes > 0) {
      if (auto s = exec("PRAGMA cache_size=-" + std::to_string(std::max<std::int64_t>(1, options.cache_bytes >> 10)));
          !s.ok()) {
        return s;
      }
    }
    if (auto s = exec("PRAGMA wal_autocheckpoint=" + std::to_string(options.wal_autocheckpoint_pages)); !s.ok()) {
      return s;
    }
    if (options.max_size_bytes > 0) {
      std::string page;
      if (auto s = query_text("PRAGMA page_size", &page); !s.ok()) return s;
      std::int64_t pages = std::max<std::int64_t>(1, options.max_size_bytes / std::stoll(page));
      std::string ignored;
      if (auto s = query_text("PRAGMA max_page_count=" + std::to_string(pages), &ignored); !s.ok()) return s;
    }
    if (auto s = migrate(path, target_version); !s.ok()) return s;
    return prepare_all();
  }

  std::string_view backend() const override { return "sqlite"; }
  bool fast_commits() const override { return !synced_; }

  Status commit(const WriteBatch& batch) override {
    if (auto v = batch.validate(); !v.ok()) return v;
    std::lock_guard lock(mu_);
    return in_transaction([&]() -> Status {
      for (const auto& op : batch.ops()) {
        if (auto s = std::visit([this](const auto& o) { return apply(o); }, op); !s.ok()) return s;
      }
      return ok_status();
    });
  }

  Result<WorkflowRecord> get_workflow(std::string_view id) override {
    std::lock_guard lock(mu_);
    Stmt& s = *get_wf_;
    s.bind(id);
    auto row = s.step();
    if (!row.ok()) {
      s.reset();
      return std::move(row).error().with_context("reading " + internal::name_workflow(id));
    }
    if (!*row) {
      s.reset();
      return Error(ErrorKind::kNotFound, internal::name_workflow(id) + " does not exist");
    }
    auto r = read_workflow(s);
    s.reset();
    return internal::check(std::move(r));
  }

  Result<std::vector<WorkflowRecord>> list_workflows(WorkflowStatus status, std::string_view after_id,
                                                     std::size_t limit) override {
    std::lock_guard lock(mu_);
    list_wf_->bind(static_cast<std::int64_t>(status), after_id, clamp(limit));
    return collect<WorkflowRecord>(*list_wf_, read_workflow, "listing workflows");
  }

  Result<WorkflowCounts> count_workflows() override {
    std::lock_guard lock(mu_);
    WorkflowCounts counts;
    for (;;) {
      auto row = count_wf_->step();
      if (!row.ok()) {
        count_wf_->reset();
        return std::move(row).error().with_context("counting workflows");
      }
      if (!*row) break;
      if (auto s = internal::add_to_counts(counts, count_wf_->i64(0), static_cast<std::uint64_t>(count_wf_->i64(1)));
          !s.ok()) {
        count_wf_->reset();
        return std::move(s).error();
      }
    }
    count_wf_->reset();
    return counts;
  }

  Result<std::vector<StepRecord>> load_steps(std::string_view workflow_id) override {
    std::lock_guard lock(mu_);
    load_steps_->bind(workflow_id);
    return collect<StepRecord>(*load_steps_, read_step, "loading steps of " + internal::name_workflow(workflow_id));
  }

  Result<std::vector<EffectRecord>> load_effects(std::string_view workflow_id) override {
    std::lock_guard lock(mu_);
    load_effects_->bind(workflow_id);
    return collect<EffectRecord>(*load_effects_, read_effect,
                                 "loading effects of " + internal::name_workflow(workflow_id));
  }

  Result<std::vector<EffectRecord>> load_pending_effects(std::size_t limit) override {
    std::lock_guard lock(mu_);
    pending_->bind(clamp(limit));
    return collect<EffectRecord>(*pending_, read_effect, "loading pending effects");
  }

  Result<HistoryView> load_history(std::string_view task_id, std::size_t max_messages) override {
    std::lock_guard lock(mu_);
    HistoryView view;
    newest_summary_->bind(task_id);
    auto summaries = collect<SummaryRecord>(
        *newest_summary_,
        [](const Stmt& s) {
          return internal::SummaryRow{
              .task_id = s.bytes(0), .covers_through_seq = s.i64(1), .summary = s.bytes(2), .crc = s.i64(3)};
        },
        "loading summary");
    if (!summaries.ok()) return std::move(summaries).error();
    std::int64_t from = 0;
    if (!summaries->empty()) {
      view.summary = std::move(summaries->front());
      from = view.summary->covers_through_seq + 1;
    }
    auto tail = read_locked(task_id, from, max_messages + 1);
    if (!tail.ok()) return std::move(tail).error();
    internal::set_history_tail(view, std::move(*tail), max_messages);
    return view;
  }

  Result<std::vector<HistoryRecord>> read_history(std::string_view task_id, std::int64_t from_seq,
                                                  std::size_t limit) override {
    std::lock_guard lock(mu_);
    return read_locked(task_id, from_seq, limit);
  }

  Result<std::size_t> prune_finished(TimePoint older_than, std::size_t limit) override {
    std::lock_guard lock(mu_);
    std::size_t n = 0;
    auto s = in_transaction([&]() -> Status {
      prune_select_->bind(to_ns(older_than), clamp(limit));
      std::vector<std::string> ids;
      for (;;) {
        auto row = prune_select_->step();
        if (!row.ok()) {
          prune_select_->reset();
          return std::move(row).error();
        }
        if (!*row) break;
        ids.push_back(prune_select_->bytes(0));
      }
      prune_select_->reset();
      for (const auto& id : ids) {
        if (auto d = apply(WriteBatch::DeleteWorkflow{id}); !d.ok()) return d;
      }
      n = ids.size();
      return ok_status();
    });
    if (!s.ok()) return std::move(s).error().with_context("prune");
    return n;
  }

  Result<int> schema_version() override {
    std::lock_guard lock(mu_);
    return read_version();
  }

 private:
  static std::int64_t clamp(std::size_t limit) {
    return limit > static_cast<std::size_t>(INT64_MAX) ? INT64_MAX : static_cast<std::int64_t>(limit);
  }

  Status exec(const std::string& sql) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
      std::string m = err ? err : sqlite3_errstr(rc);
      sqlite3_free(err);
      return sqlite_error(nullptr, rc, m);
    }
    return ok_status();
  }

  // Runs a statement returning one text value (a pragma).
  Status query_text(const std::string& sql, std::string* out) {
    Stmt s;
    if (auto p = s.prepare(db_, sql); !p.ok()) return p;
    auto row = s.step();
    if (!row.ok()) return std::move(row).error();
    if (*row) *out = s.bytes(0);
    return ok_status();
  }

  // 0 for a database without nines tables.
  Result<int> read_version() {
    std::string has_meta;
    if (auto s = query_text("SELECT count(*) FROM sqlite_master WHERE name='nines_meta'", &has_meta); !s.ok())
      return std::move(s).error();
    if (has_meta == "0") {
      std::string tables;
      if (auto s = query_text("SELECT count(*) FROM sqlite_master", &tables); !s.ok()) return std::move(s).error();
      if (tables != "0") return Error(ErrorKind::kPermanent, "not a nines store: has tables but no nines_meta");
      return 0;
    }
    std::string v;
    if (auto s = query_text("SELECT value FROM nines_meta WHERE key='schema_version'", &v); !s.ok())
      return std::move(s).error();
    if (v.empty()) return Error(ErrorKind::kPermanent, "not a nines store: nines_meta has no schema_version");
    return std::stoi(v);
  }

  Status migrate(const std::string& path, int target_version) {
    if (auto s = exec("BEGIN IMMEDIATE"); !s.ok()) return std::move(s).error().with_context("migrating '" + path + "'");
    auto fail = [&](Error e) -> Status {
      (void)exec("ROLLBACK");
      return std::move(e).with_context("opening store '" + path + "'");
    };
    auto version = read_version();
    if (!version.ok()) return fail(std::move(version).error());
    if (*version > kStoreSchemaVersion) {
      return fail(internal::newer_schema_error(*version));
    }
    for (int v = *version + 1; v <= target_version; ++v) {
      if (auto s = exec(kMigrations[static_cast<std::size_t>(v - 1)]); !s.ok())
        return fail(std::move(s).error().with_context("migration to schema version " + std::to_string(v)));
    }
    if (target_version > *version) {
      auto s = exec("INSERT INTO nines_meta(key, value) VALUES('schema_version', " + std::to_string(target_version) +
                    ") ON CONFLICT(key) DO UPDATE SET value = excluded.value");
      if (!s.ok()) return fail(std::move(s).error());
    }
    if (auto s = exec("COMMIT"); !s.ok()) return fail(std::move(s).error());
    return ok_status();
  }

  Status prep(std::unique_ptr<Stmt>& slot, const std::string& sql) {
    slot = std::make_unique<Stmt>();
    return slot->prepare(db_, sql);
  }

  Status prepare_all() {
    const std::string wf = internal::kWorkflowCols, st = internal::kStepCols, ef = internal::kEffectCols;
    const std::pair<std::unique_ptr<Stmt>*, std::string> all[] = {
        {&begin_, "BEGIN IMMEDIATE"},
        {&commit_, "COMMIT"},
        {&rollback_, "ROLLBACK"},
        {&create_wf_, "INSERT INTO workflows(" + wf +
                          ") VALUES(?1, 0, ?2, ?3, x'', ?4, ?5, ?5, 0, 1, ?6) ON CONFLICT(id) DO NOTHING"},
        {&set_status_,
         "UPDATE workflows SET status = ?2, result = ?3, state_crc = ?4, updated_ns = ?5,"
         " version = version + 1 WHERE id = ?1"},
        {&start_attempt_,
         "UPDATE workflows SET attempt = attempt + 1, version = version + 1, updated_ns = ?2 WHERE id = ?1"},
        {&wf_exists_, "SELECT 1 FROM workflows WHERE id = ?1"},
        {&put_step_, "INSERT OR REPLACE INTO steps(" + st + ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"},
        {&put_intent_, "INSERT INTO effects(" + ef +
                           ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, 0, NULL, ?7, ?8, ?8)"
                           " ON CONFLICT(workflow_id, effect_id) DO NOTHING"},
        {&put_outcome_,
         "UPDATE effects SET state = ?3, outcome = ?4, outcome_crc = ?5, updated_ns = ?6"
         " WHERE workflow_id = ?1 AND effect_id = ?2"},
        {&append_history_,
         "INSERT INTO history(task_id, seq, message, crc) VALUES(?1, ?2, ?3, ?4)"
         " ON CONFLICT(task_id, seq) DO NOTHING"},
        {&put_summary_,
         "INSERT OR REPLACE INTO summaries(task_id, covers_through_seq, summary, crc)"
         " VALUES(?1, ?2, ?3, ?4)"},
        {&del_steps_, "DELETE FROM steps WHERE workflow_id = ?1"},
        {&del_effects_, "DELETE FROM effects WHERE workflow_id = ?1"},
        {&del_wf_, "DELETE FROM workflows WHERE id = ?1"},
        {&del_history_, "DELETE FROM history WHERE task_id = ?1"},
        {&del_summaries_, "DELETE FROM summaries WHERE task_id = ?1"},
        {&get_wf_, "SELECT " + wf + " FROM workflows WHERE id = ?1"},
        {&list_wf_, "SELECT " + wf + " FROM workflows WHERE status = ?1 AND id > ?2 ORDER BY id LIMIT ?3"},
        {&count_wf_, "SELECT status, count(*) FROM workflows GROUP BY status"},
        {&load_steps_, "SELECT " + st + " FROM steps WHERE workflow_id = ?1 ORDER BY seq"},
        {&load_effects_, "SELECT " + ef + " FROM effects WHERE workflow_id = ?1 ORDER BY effect_id"},
        {&pending_, "SELECT " + ef + " FROM effects WHERE state = 0 ORDER BY workflow_id, effect_id LIMIT ?1"},
        {&newest_summary_,
         "SELECT task_id, covers_through_seq, summary, crc FROM summaries WHERE task_id = ?1"
         " ORDER BY covers_through_seq DESC LIMIT 1"},
        {&read_history_,
         "SELECT task_id, seq, message, crc FROM history WHERE task_id = ?1 AND seq >= ?2"
         " ORDER BY seq LIMIT ?3"},
        {&prune_select_,
         "SELECT id FROM workflows WHERE status IN (1, 2, 4) AND updated_ns < ?1"
         " ORDER BY updated_ns, id LIMIT ?2"},
    };
    for (const auto& [slot, sql] : all) {
      if (auto s = prep(*slot, sql); !s.ok()) return s;
    }
    return ok_status();
  }

  // Runs body between BEGIN IMMEDIATE and COMMIT; rolls back on any failure, so nothing of
  // a failed body or a failed COMMIT stays.
  template <class F>
  Status in_transaction(F body) {
    if (auto s = begin_->run(); !s.ok()) return std::move(s).error().with_context("begin");
    Status s = body();
    if (s.ok()) {
      s = commit_->run();
      if (!s.ok()) s = std::move(s).error().with_context("commit");
    }
    if (!s.ok() && !sqlite3_get_autocommit(db_)) (void)rollback_->run();
    return s;
  }

  Status changed_or(std::string what) {
    if (sqlite3_changes(db_) > 0) return ok_status();
    return Error(ErrorKind::kNotFound, std::move(what) + " does not exist");
  }

  Status require_workflow(const std::string& id, std::string_view op) {
    wf_exists_->bind(id);
    auto row = wf_exists_->step();
    wf_exists_->reset();
    if (!row.ok()) return std::move(row).error();
    if (!*row)
      return Error(ErrorKind::kNotFound, std::string(op) + ": " + internal::name_workflow(id) + " does not exist");
    return ok_status();
  }

  Status apply(const WriteBatch::CreateWorkflow& o) {
    return create_wf_
        ->bind(o.id, o.input, internal::workflow_input_crc(o.id, o.kind, o.input),
               internal::workflow_state_crc(o.id, 0, {}), to_ns(o.now), o.kind)
        .run();
  }
  Status apply(const WriteBatch::SetWorkflowStatus& o) {
    auto status = static_cast<std::int64_t>(o.status);
    if (auto s = set_status_
                     ->bind(o.id, status, o.result, internal::workflow_state_crc(o.id, status, o.result), to_ns(o.now))
                     .run();
        !s.ok())
      return s;
    return changed_or(internal::name_workflow(o.id));
  }
  Status apply(const WriteBatch::StartAttempt& o) {
    if (auto s = start_attempt_->bind(o.id, to_ns(o.now)).run(); !s.ok()) return s;
    return changed_or(internal::name_workflow(o.id));
  }
  Status apply(const WriteBatch::PutStep& o) {
    if (auto s = require_workflow(o.workflow_id, "put step"); !s.ok()) return s;
    auto status = static_cast<std::int64_t>(o.status);
    return put_step_
        ->bind(o.workflow_id, o.seq, o.name, status, o.result,
               internal::step_crc(o.workflow_id, o.seq, o.name, status, o.result), to_ns(o.now))
        .run();
  }
  Status apply(const WriteBatch::PutEffectIntent& o) {
    const EffectIntent& in = o.intent;
    if (auto s = require_workflow(in.workflow_id, "put effect intent"); !s.ok()) return s;
    auto nature = static_cast<std::int64_t>(in.nature);
    return put_intent_
        ->bind(in.workflow_id, in.effect_id, in.idempotency_key, nature, in.arguments,
               internal::effect_intent_crc(in.workflow_id, in.effect_id, in.idempotency_key, nature, in.arguments),
               internal::effect_outcome_crc(in.workflow_id, in.effect_id, 0, std::nullopt), to_ns(in.recorded_at))
        .run();
  }
  Status apply(const WriteBatch::PutEffectOutcome& o) {
    auto state = static_cast<std::int64_t>(o.state);
    if (auto s = put_outcome_
                     ->bind(o.workflow_id, o.effect_id, state, o.outcome,
                            internal::effect_outcome_crc(o.workflow_id, o.effect_id, state, o.outcome), to_ns(o.now))
                     .run();
        !s.ok())
      return s;
    return changed_or("put effect outcome: " + internal::name_effect(o.workflow_id, o.effect_id));
  }
  Status apply(const WriteBatch::AppendHistory& o) {
    return append_history_->bind(o.task_id, o.seq, o.message, internal::history_crc(o.task_id, o.seq, o.message)).run();
  }
  Status apply(const WriteBatch::PutSummary& o) {
    return put_summary_
        ->bind(o.task_id, o.covers_through_seq, o.summary,
               internal::summary_crc(o.task_id, o.covers_through_seq, o.summary))
        .run();
  }
  Status apply(const WriteBatch::DeleteWorkflow& o) {
    if (auto s = del_steps_->bind(o.id).run(); !s.ok()) return s;
    if (auto s = del_effects_->bind(o.id).run(); !s.ok()) return s;
    return del_wf_->bind(o.id).run();
  }
  Status apply(const WriteBatch::DeleteHistory& o) {
    if (auto s = del_history_->bind(o.task_id).run(); !s.ok()) return s;
    return del_summaries_->bind(o.task_id).run();
  }

  // Steps a bound query to the end, checking every row into a record; resets it.
  template <class Record, class ReadRow>
  Result<std::vector<Record>> collect(Stmt& s, ReadRow read_row, const std::string& what) {
    std::vector<Record> out;
    for (;;) {
      auto row = s.step();
      if (!row.ok()) {
        s.reset();
        return std::move(row).error().with_context(what);
      }
      if (!*row) break;
      auto r = internal::check(read_row(s));
      if (!r.ok()) {
        s.reset();
        return std::move(r).error();
      }
      out.push_back(std::move(*r));
    }
    s.reset();
    return out;
  }

  Result<std::vector<HistoryRecord>> read_locked(std::string_view task_id, std::int64_t from_seq, std::size_t limit) {
    read_history_->bind(task_id, from_seq, clamp(limit));
    return collect<HistoryRecord>(
        *read_history_,
        [](const Stmt& s) {
          return internal::HistoryRow{.task_id = s.bytes(0), .seq = s.i64(1), .message = s.bytes(2), .crc = s.i64(3)};
        },
        "reading history");
  }

  std::mutex mu_;
  bool synced_ = true;
  sqlite3* db_ = nullptr;
  std::unique_ptr<Stmt> begin_, commit_, rollback_, create_wf_, set_status_, start_attempt_, wf_exists_, put_step_,
      put_intent_, put_outcome_, append_history_, put_summary_, del_steps_, del_effects_, del_wf_, del_history_,
      del_summaries_, get_wf_, list_wf_, count_wf_, load_steps_, load_effects_, pending_, newest_summary_,
      read_history_, prune_select_;
};

}  // namespace

namespace internal {

Result<std::unique_ptr<Store>> open_sqlite_store_at_version(const std::string& path, const SqliteStoreOptions& options,
                                                            int target_version) {
  if (target_version < 1 || target_version > kStoreSchemaVersion)
    return Error(ErrorKind::kInvalidArgument, "target schema version out of range");
  if (options.busy_timeout_ms < 0) return Error(ErrorKind::kInvalidArgument, "sqlite store: busy_timeout_ms < 0");
  if (options.cache_bytes < 0) return Error(ErrorKind::kInvalidArgument, "sqlite store: cache_bytes < 0");
  if (options.wal_autocheckpoint_pages < 1) {
    return Error(ErrorKind::kInvalidArgument, "sqlite store: wal_autocheckpoint_pages must be >= 1");
  }
  auto store = std::make_unique<SqliteStore>();
  if (auto s = store->open(path, options, target_version); !s.ok()) return std::move(s).error();
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace internal

Result<std::unique_ptr<Store>> open_sqlite_store(const std::string& path, const SqliteStoreOptions& options) {
  return internal::open_sqlite_store_at_version(path, options, kStoreSchemaVersion);
}

}  // namespace nines
