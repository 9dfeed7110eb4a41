// The PostgreSQL Store: one libpq connection behind a mutex, statements prepared once per
// connection, parameters and results in binary format (keys and values as BYTEA, so order
// is bytewise as in the other backends and any bytes are accepted).
#include "nines/store/postgres_store.hpp"

#include <libpq-fe.h>

#include <array>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "store/common.hpp"

namespace nines {
namespace {

using internal::to_ns;

constexpr unsigned kInt8Oid = 20;
constexpr unsigned kByteaOid = 17;
constexpr std::int64_t kMigrationLockKey = 0x6e696e6573;  // "nines": serializes migrating nodes

constexpr std::array<const char*, kStoreSchemaVersion> kMigrations = {
    "CREATE TABLE nines_meta(key TEXT PRIMARY KEY, value BIGINT NOT NULL);"
    "CREATE TABLE workflows(id BYTEA PRIMARY KEY, status BIGINT NOT NULL, input BYTEA NOT NULL,"
    " input_crc BIGINT NOT NULL, result BYTEA NOT NULL, state_crc BIGINT NOT NULL, created_ns BIGINT NOT NULL,"
    " updated_ns BIGINT NOT NULL, attempt BIGINT NOT NULL, version BIGINT NOT NULL, kind BYTEA NOT NULL);"
    "CREATE INDEX workflows_by_status ON workflows(status, id);"
    "CREATE TABLE steps(workflow_id BYTEA NOT NULL, seq BIGINT NOT NULL, name BYTEA NOT NULL,"
    " status BIGINT NOT NULL, result BYTEA NOT NULL, crc BIGINT NOT NULL, recorded_ns BIGINT NOT NULL,"
    " PRIMARY KEY(workflow_id, seq));"
    "CREATE TABLE effects(workflow_id BYTEA NOT NULL, effect_id BYTEA NOT NULL, idempotency_key BYTEA NOT NULL,"
    " nature BIGINT NOT NULL, arguments BYTEA NOT NULL, intent_crc BIGINT NOT NULL, state BIGINT NOT NULL,"
    " outcome BYTEA, outcome_crc BIGINT NOT NULL, intent_ns BIGINT NOT NULL, updated_ns BIGINT NOT NULL,"
    " PRIMARY KEY(workflow_id, effect_id));"
    "CREATE TABLE history(task_id BYTEA NOT NULL, seq BIGINT NOT NULL, message BYTEA NOT NULL,"
    " crc BIGINT NOT NULL, PRIMARY KEY(task_id, seq));"
    "CREATE TABLE summaries(task_id BYTEA NOT NULL, covers_through_seq BIGINT NOT NULL, summary BYTEA NOT NULL,"
    " crc BIGINT NOT NULL, PRIMARY KEY(task_id, covers_through_seq));",
    "CREATE INDEX effects_pending ON effects(workflow_id, effect_id) WHERE state = 0;"
    "CREATE INDEX workflows_by_age ON workflows(status, updated_ns);",
};

// The statements, by name. Parameter types: 'i' int8, 'b' bytea.
struct StmtDef {
  const char* name;
  const char* types;
  std::string sql;
};

std::vector<StmtDef> statements() {
  const std::string wf = internal::kWorkflowCols, st = internal::kStepCols, ef = internal::kEffectCols;
  return {
      {"begin", "", "BEGIN"},
      {"commit", "", "COMMIT"},
      {"rollback", "", "ROLLBACK"},
      {"create_wf", "bbiiib",
       "INSERT INTO workflows(" + wf +
           ") VALUES($1, 0, $2, $3, ''::bytea, $4, $5, $5, 0, 1, $6) ON CONFLICT (id) DO NOTHING"},
      {"set_status", "bibii",
       "UPDATE workflows SET status = $2, result = $3, state_crc = $4, updated_ns = $5, version = version + 1"
       " WHERE id = $1"},
      {"start_attempt", "bi",
       "UPDATE workflows SET attempt = attempt + 1, version = version + 1, updated_ns = $2 WHERE id = $1"},
      {"wf_exists", "b", "SELECT 1 FROM workflows WHERE id = $1"},
      {"put_step", "bibibii",
       "INSERT INTO steps(" + st +
           ") VALUES($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (workflow_id, seq) DO UPDATE SET"
           " name = EXCLUDED.name, status = EXCLUDED.status, result = EXCLUDED.result, crc = EXCLUDED.crc,"
           " recorded_ns = EXCLUDED.recorded_ns"},
      {"put_intent", "bbbibiii",
       "INSERT INTO effects(" + ef +
           ") VALUES($1, $2, $3, $4, $5, $6, 0, NULL, $7, $8, $8)"
           " ON CONFLICT (workflow_id, effect_id) DO NOTHING"},
      {"put_outcome", "bbibii",
       "UPDATE effects SET state = $3, outcome = $4, outcome_crc = $5, updated_ns = $6"
       " WHERE workflow_id = $1 AND effect_id = $2"},
      {"append_history", "bibi",
       "INSERT INTO history(task_id, seq, message, crc) VALUES($1, $2, $3, $4) ON CONFLICT (task_id, seq) DO NOTHING"},
      {"put_summary", "bibi",
       "INSERT INTO summaries(task_id, covers_through_seq, summary, crc) VALUES($1, $2, $3, $4)"
       " ON CONFLICT (task_id, covers_through_seq) DO UPDATE SET summary = EXCLUDED.summary, crc = EXCLUDED.crc"},
      {"del_steps", "b", "DELETE FROM steps WHERE workflow_id = $1"},
      {"del_effects", "b", "DELETE FROM effects WHERE workflow_id = $1"},
      {"del_wf", "b", "DELETE FROM workflows WHERE id = $1"},
      {"del_history", "b", "DELETE FROM history WHERE task_id = $1"},
      {"del_summaries", "b", "DELETE FROM summaries WHERE task_id = $1"},
      {"get_wf", "b", "SELECT " + wf + " FROM workflows WHERE id = $1"},
      {"list_wf", "ibi", "SELECT " + wf + " FROM workflows WHERE status = $1 AND id > $2 ORDER BY id LIMIT $3"},
      {"count_wf", "", "SELECT status, count(*) FROM workflows GROUP BY status"},
      {"load_steps", "b", "SELECT " + st + " FROM steps WHERE workflow_id = $1 ORDER BY seq"},
      {"load_effects", "b", "SELECT " + ef + " FROM effects WHERE workflow_id = $1 ORDER BY effect_id"},
      {"pending", "i", "SELECT " + ef + " FROM effects WHERE state = 0 ORDER BY workflow_id, effect_id LIMIT $1"},
      {"newest_summary", "b",
       "SELECT task_id, covers_through_seq, summary, crc FROM summaries WHERE task_id = $1"
       " ORDER BY covers_through_seq DESC LIMIT 1"},
      {"read_history", "bii",
       "SELECT task_id, seq, message, crc FROM history WHERE task_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3"},
      {"prune", "ii",
       "WITH doomed AS (SELECT id FROM workflows WHERE status IN (1, 2, 4) AND updated_ns < $1"
       " ORDER BY updated_ns, id LIMIT $2 FOR UPDATE),"
       " s AS (DELETE FROM steps WHERE workflow_id IN (SELECT id FROM doomed)),"
       " e AS (DELETE FROM effects WHERE workflow_id IN (SELECT id FROM doomed))"
       " DELETE FROM workflows WHERE id IN (SELECT id FROM doomed)"},
  };
}

// Parameters in binary format. Integers are kept in big-endian buffers; byte strings are
// referenced, so they must outlive the call.
class Params {
 public:
  template <class... Args>
  explicit Params(const Args&... args) {
    ints_.reserve(sizeof...(Args));
    (add(args), ...);
  }
  int count() const { return static_cast<int>(values_.size()); }
  const char* const* values() const { return values_.data(); }
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }

 private:
  void add(std::int64_t v) {
    auto& buf = ints_.emplace_back();
    auto u = static_cast<std::uint64_t>(v);
    for (int i = 0; i < 8; ++i) buf[static_cast<std::size_t>(i)] = static_cast<char>((u >> (56 - 8 * i)) & 0xFF);
    push(buf.data(), 8);
  }
  void add(std::uint32_t v) { add(static_cast<std::int64_t>(v)); }
  void add(std::size_t v) { add(v > static_cast<std::size_t>(INT64_MAX) ? INT64_MAX : static_cast<std::int64_t>(v)); }
  void add(const std::string& v) { push(v.data(), static_cast<int>(v.size())); }
  void add(std::string_view v) { push(v.empty() ? "" : v.data(), static_cast<int>(v.size())); }
  void add(const std::optional<std::string>& v) {
    if (v)
      add(*v);
    else
      push(nullptr, 0);
  }
  void push(const char* p, int n) {
    values_.push_back(p);
    lengths_.push_back(n);
    formats_.push_back(1);
  }
  std::vector<std::array<char, 8>> ints_;  // reserved up front: pointers into it stay valid
  std::vector<const char*> values_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
};

struct PgResult {
  PGresult* r = nullptr;
  PgResult() = default;
  explicit PgResult(PGresult* p) : r(p) {}
  PgResult(PgResult&& o) noexcept : r(std::exchange(o.r, nullptr)) {}
  PgResult& operator=(PgResult&& o) noexcept {
    std::swap(r, o.r);
    return *this;
  }
  ~PgResult() { PQclear(r); }

  int rows() const { return PQntuples(r); }
  std::string bytes(int row, int col) const {
    return std::string(PQgetvalue(r, row, col), static_cast<std::size_t>(PQgetlength(r, row, col)));
  }
  bool is_null(int row, int col) const { return PQgetisnull(r, row, col) != 0; }
  std::int64_t i64(int row, int col) const {
    if (PQgetlength(r, row, col) != 8) return -1;  // a wrong width reads as corrupt (checksums fail)
    const auto* p = reinterpret_cast<const unsigned char*>(PQgetvalue(r, row, col));
    std::uint64_t u = 0;
    for (int i = 0; i < 8; ++i) u = (u << 8) | p[i];
    return static_cast<std::int64_t>(u);
  }
  std::int64_t affected() const {
    const char* n = PQcmdTuples(r);
    return n && *n ? std::stoll(n) : 0;
  }
};

internal::WorkflowRow read_workflow(const PgResult& r, int i) {
  return {.id = r.bytes(i, 0),
          .status = r.i64(i, 1),
          .input = r.bytes(i, 2),
          .input_crc = r.i64(i, 3),
          .result = r.bytes(i, 4),
          .state_crc = r.i64(i, 5),
          .created_ns = r.i64(i, 6),
          .updated_ns = r.i64(i, 7),
          .attempt = r.i64(i, 8),
          .version = r.i64(i, 9),
          .kind = r.bytes(i, 10)};
}

internal::StepRow read_step(const PgResult& r, int i) {
  return {.workflow_id = r.bytes(i, 0),
          .seq = r.i64(i, 1),
          .name = r.bytes(i, 2),
          .status = r.i64(i, 3),
          .result = r.bytes(i, 4),
          .crc = r.i64(i, 5),
          .recorded_ns = r.i64(i, 6)};
}

internal::EffectRow read_effect(const PgResult& r, int i) {
  return {.workflow_id = r.bytes(i, 0),
          .effect_id = r.bytes(i, 1),
          .idempotency_key = r.bytes(i, 2),
          .nature = r.i64(i, 3),
          .arguments = r.bytes(i, 4),
          .intent_crc = r.i64(i, 5),
          .state = r.i64(i, 6),
          .outcome = r.is_null(i, 7) ? std::nullopt : std::optional(r.bytes(i, 7)),
          .outcome_crc = r.i64(i, 8),
          .intent_ns = r.i64(i, 9),
          .updated_ns = r.i64(i, 10)};
}

internal::HistoryRow read_history_row(const PgResult& r, int i) {
  return {.task_id = r.bytes(i, 0), .seq = r.i64(i, 1), .message = r.bytes(i, 2), .crc = r.i64(i, 3)};
}

class PostgresStore final : public Store {
 public:
  PostgresStore(std::string conninfo, PostgresStoreOptions options)
      : conninfo_(std::move(conninfo)), options_(std::move(options)) {}
  ~PostgresStore() override { disconnect(); }

  Status open() {
    std::lock_guard lock(mu_);
    if (auto s = connect(/*migrate=*/true); !s.ok()) return s;
    return ok_status();
  }

  std::string_view backend() const override { return "postgres"; }

  Status commit(const WriteBatch& batch) override {
    if (auto v = batch.validate(); !v.ok()) return v;
    std::lock_guard lock(mu_);
    return in_transaction([&]() -> Status {
      for (const auto& op : batch.ops()) {
        if (auto s = std::visit([this](const auto& o) { return apply(o); }, op); !s.ok()) return s;
      }
      if (options_.before_commit_for_test) options_.before_commit_for_test();
      return ok_status();
    });
  }

  Result<WorkflowRecord> get_workflow(std::string_view id) override {
    std::lock_guard lock(mu_);
    auto r = query("get_wf", Params(id));
    if (!r.ok()) return std::move(r).error().with_context("reading " + internal::name_workflow(id));
    if (r->rows() == 0) return Error(ErrorKind::kNotFound, internal::name_workflow(id) + " does not exist");
    return internal::check(read_workflow(*r, 0));
  }

  Result<std::vector<WorkflowRecord>> list_workflows(WorkflowStatus status, std::string_view after_id,
                                                     std::size_t limit) override {
    std::lock_guard lock(mu_);
    return collect<WorkflowRecord>("list_wf", Params(static_cast<std::int64_t>(status), after_id, limit), read_workflow,
                                   "listing workflows");
  }

  Result<WorkflowCounts> count_workflows() override {
    std::lock_guard lock(mu_);
    auto r = query("count_wf", Params());
    if (!r.ok()) return std::move(r).error().with_context("counting workflows");
    WorkflowCounts counts;
    for (int i = 0; i < r->rows(); ++i) {
      if (auto s = internal::add_to_counts(counts, r->i64(i, 0), static_cast<std::uint64_t>(r->i64(i, 1))); !s.ok())
        return std::move(s).error();
    }
    return counts;
  }

  Result<std::vector<StepRecord>> load_steps(std::string_view workflow_id) override {
    std::lock_guard lock(mu_);
    return collect<StepRecord>("load_steps", Params(workflow_id), read_step,
                               "loading steps of " + internal::name_workflow(workflow_id));
  }

  Result<std::vector<EffectRecord>> load_effects(std::string_view workflow_id) override {
    std::lock_guard lock(mu_);
    return collect<EffectRecord>("load_effects", Params(workflow_id), read_effect,
                                 "loading effects of " + internal::name_workflow(workflow_id));
  }

  Result<std::vector<EffectRecord>> load_pending_effects(std::size_t limit) override {
    std::lock_guard lock(mu_);
    return collect<EffectRecord>("pending", Params(limit), read_effect, "loading pending effects");
  }

  Result<HistoryView> load_history(std::string_view task_id, std::size_t max_messages) override {
    std::lock_guard lock(mu_);
    HistoryView view;
    auto summaries = collect<SummaryRecord>(
        "newest_summary", Params(task_id),
        [](const PgResult& r, int i) {
          return internal::SummaryRow{.task_id = r.bytes(i, 0),
                                      .covers_through_seq = r.i64(i, 1),
                                      .summary = r.bytes(i, 2),
                                      .crc = r.i64(i, 3)};
        },
        "loading summary");
    if (!summaries.ok()) return std::move(summaries).error();
    std::int64_t from = 0;
    if (!summaries->empty()) {
      view.summary = std::move(summaries->front());
      from = view.summary->covers_through_seq + 1;
    }
    auto tail = collect<HistoryRecord>("read_history", Params(task_id, from, max_messages + 1), read_history_row,
                                       "reading history");
    if (!tail.ok()) return std::move(tail).error();
    internal::set_history_tail(view, std::move(*tail), max_messages);
    return view;
  }

  Result<std::vector<HistoryRecord>> read_history(std::string_view task_id, std::int64_t from_seq,
                                                  std::size_t limit) override {
    std::lock_guard lock(mu_);
    return collect<HistoryRecord>("read_history", Params(task_id, from_seq, limit), read_history_row,
                                  "reading history");
  }

  Result<std::size_t> prune_finished(TimePoint older_than, std::size_t limit) override {
    std::lock_guard lock(mu_);
    // One statement: atomic on its own.
    auto r = query("prune", Params(to_ns(older_than), limit));
    if (!r.ok()) return std::move(r).error().with_context("prune");
    return static_cast<std::size_t>(r->affected());
  }

  Result<int> schema_version() override {
    std::lock_guard lock(mu_);
    if (auto s = ensure_connected(); !s.ok()) return std::move(s).error();
    return read_version();
  }

 private:
  Error pg_error(std::string_view what, const PGresult* res) {
    std::string m(what);
    m += ": ";
    const char* msg = res ? PQresultErrorMessage(res) : nullptr;
    if (!msg || !*msg) msg = conn_ ? PQerrorMessage(conn_) : "no connection";
    m += msg;
    while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
    if (!conn_ || PQstatus(conn_) != CONNECTION_OK) {
      disconnect();  // the next call reconnects
      return Error(ErrorKind::kTransient, "connection lost: " + m);
    }
    const char* state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
    std::string sqlstate = state ? state : "";
    if (!sqlstate.empty()) m += " (sqlstate " + sqlstate + ")";
    if (sqlstate == "53100") return Error(ErrorKind::kTransient, "disk full: " + m);
    if (sqlstate.rfind("53", 0) == 0 || sqlstate.rfind("40", 0) == 0 || sqlstate.rfind("57P", 0) == 0 ||
        sqlstate.rfind("08", 0) == 0)
      return Error(ErrorKind::kTransient, std::move(m));
    if (sqlstate == "XX001" || sqlstate == "XX002") return Error(ErrorKind::kPermanent, std::move(m));
    return Error(ErrorKind::kInternal, std::move(m));
  }

  void disconnect() {
    if (conn_) PQfinish(conn_);
    conn_ = nullptr;
  }

  Status exec_text(const std::string& sql, PgResult* out = nullptr) {
    PgResult r(PQexec(conn_, sql.c_str()));
    auto st = PQresultStatus(r.r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return pg_error(sql.substr(0, 60), r.r);
    if (out) *out = std::move(r);
    return ok_status();
  }

  Status connect(bool migrate) {
    std::string info = conninfo_ + " connect_timeout=" + std::to_string(options_.connect_timeout_s);
    conn_ = PQconnectdb(info.c_str());
    if (PQstatus(conn_) != CONNECTION_OK) {
      std::string m = PQerrorMessage(conn_);
      while (!m.empty() && m.back() == '\n') m.pop_back();
      disconnect();
      return Error(ErrorKind::kTransient, "connecting to postgres: " + m);
    }
    if (auto s = exec_text("SET client_min_messages = warning"); !s.ok()) return s;
    if (options_.durability == Durability::kBatched) {
      if (auto s = exec_text("SET synchronous_commit = off"); !s.ok()) return s;
    }
    if (migrate) {
      if (auto s = run_migrations(); !s.ok()) return s;
    }
    for (const auto& def : statements()) {
      std::vector<unsigned> types;
      for (const char* t = def.types; *t; ++t) types.push_back(*t == 'i' ? kInt8Oid : kByteaOid);
      PgResult r(PQprepare(conn_, def.name, def.sql.c_str(), static_cast<int>(types.size()),
                           types.empty() ? nullptr : types.data()));
      if (PQresultStatus(r.r) != PGRES_COMMAND_OK) {
        auto e = pg_error(std::string("preparing ") + def.name, r.r);
        disconnect();
        return e;
      }
    }
    return ok_status();
  }

  Status ensure_connected() {
    if (conn_ && PQstatus(conn_) == CONNECTION_OK) return ok_status();
    disconnect();
    return connect(/*migrate=*/false);
  }

  Result<int> read_version() {
    PgResult r;
    if (auto s = exec_text("SELECT to_regclass('nines_meta') IS NOT NULL", &r); !s.ok()) return std::move(s).error();
    if (std::string(PQgetvalue(r.r, 0, 0)) != "t") {
      PgResult t;
      auto s = exec_text("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()", &t);
      if (!s.ok()) return std::move(s).error();
      if (std::string(PQgetvalue(t.r, 0, 0)) != "0")
        return Error(ErrorKind::kPermanent, "not a nines store: has tables but no nines_meta");
      return 0;
    }
    if (auto s = exec_text("SELECT value FROM nines_meta WHERE key = 'schema_version'", &r); !s.ok())
      return std::move(s).error();
    if (r.rows() == 0) return Error(ErrorKind::kPermanent, "not a nines store: nines_meta has no schema_version");
    return std::stoi(PQgetvalue(r.r, 0, 0));
  }

  Status run_migrations() {
    if (auto s = exec_text("BEGIN"); !s.ok()) return s;
    auto fail = [&](Error e) -> Status {
      if (conn_) (void)exec_text("ROLLBACK");
      return std::move(e).with_context("opening postgres store");
    };
    if (auto s = exec_text("SELECT pg_advisory_xact_lock(" + std::to_string(kMigrationLockKey) + ")"); !s.ok())
      return fail(std::move(s).error());
    auto version = read_version();
    if (!version.ok()) return fail(std::move(version).error());
    if (*version > kStoreSchemaVersion) {
      return fail(internal::newer_schema_error(*version));
    }
    for (int v = *version + 1; v <= kStoreSchemaVersion; ++v) {
      if (auto s = exec_text(kMigrations[static_cast<std::size_t>(v - 1)]); !s.ok())
        return fail(std::move(s).error().with_context("migration to schema version " + std::to_string(v)));
    }
    if (kStoreSchemaVersion > *version) {
      auto s =
          exec_text("INSERT INTO nines_meta(key, value) VALUES('schema_version', " +
                    std::to_string(kStoreSchemaVersion) + ") ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value");
      if (!s.ok()) return fail(std::move(s).error());
    }
    if (auto s = exec_text("COMMIT"); !s.ok()) return fail(std::move(s).error());
    return ok_status();
  }

  // Runs a prepared statement; results in binary format.
  Result<PgResult> run(const char* name, const Params& p) {
    PgResult r(PQexecPrepared(conn_, name, p.count(), p.values(), p.lengths(), p.formats(), 1));
    auto st = PQresultStatus(r.r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return pg_error(name, r.r);
    return r;
  }

  // A statement outside a transaction. A connection found lost (the server restarted, or
  // dropped it while idle) is reopened and the statement tried once more: each of these is a
  // single-statement transaction, so a failed try did not apply.
  Result<PgResult> query(const char* name, const Params& p) {
    if (auto s = ensure_connected(); !s.ok()) return std::move(s).error();
    auto r = run(name, p);
    if (r.ok() || conn_ != nullptr) return r;
    if (auto s = ensure_connected(); !s.ok()) return std::move(s).error();
    return run(name, p);
  }

  template <class Record, class ReadRow>
  Result<std::vector<Record>> collect(const char* name, const Params& p, ReadRow read_row, const std::string& what) {
    auto r = query(name, p);
    if (!r.ok()) return std::move(r).error().with_context(what);
    std::vector<Record> out;
    out.reserve(static_cast<std::size_t>(r->rows()));
    for (int i = 0; i < r->rows(); ++i) {
      auto rec = internal::check(read_row(*r, i));
      if (!rec.ok()) return std::move(rec).error();
      out.push_back(std::move(*rec));
    }
    return out;
  }

  Status exec(const char* name, const Params& p, std::int64_t* affected = nullptr) {
    auto r = run(name, p);
    if (!r.ok()) return std::move(r).error();
    if (affected) *affected = r->affected();
    return ok_status();
  }

  template <class F>
  Status in_transaction(F body) {
    if (auto s = ensure_connected(); !s.ok()) return s;
    Status begun = exec("begin", Params());
    if (!begun.ok() && conn_ == nullptr) {  // lost while idle: nothing was sent, try once more
      if (auto s = ensure_connected(); !s.ok()) return s;
      begun = exec("begin", Params());
    }
    if (!begun.ok()) return std::move(begun).error().with_context("begin");
    Status s = body();
    if (s.ok()) {
      s = exec("commit", Params());
      if (!s.ok()) {
        Error e = std::move(s).error();
        if (e.message().rfind("connection lost", 0) == 0)
          return std::move(e).with_context("commit (outcome unknown: the connection was lost during COMMIT)");
        return std::move(e).with_context("commit");
      }
      return s;
    }
    // A lost connection rolls the transaction back on the server by itself.
    if (conn_ && PQtransactionStatus(conn_) != PQTRANS_IDLE) (void)exec("rollback", Params());
    return s;
  }

  Status changed_or(std::int64_t affected, std::string what) {
    if (affected > 0) return ok_status();
    return Error(ErrorKind::kNotFound, std::move(what) + " does not exist");
  }

  Status require_workflow(const std::string& id, std::string_view op) {
    auto r = run("wf_exists", Params(id));
    if (!r.ok()) return std::move(r).error();
    if (r->rows() == 0)
      return Error(ErrorKind::kNotFound, std::string(op) + ": " + internal::name_workflow(id) + " does not exist");
    return ok_status();
  }

  Status apply(const WriteBatch::CreateWorkflow& o) {
    return exec("create_wf", Params(o.id, o.input, internal::workflow_input_crc(o.id, o.kind, o.input),
                                    internal::workflow_state_crc(o.id, 0, {}), to_ns(o.now), o.kind));
  }
  Status apply(const WriteBatch::SetWorkflowStatus& o) {
    auto status = static_cast<std::int64_t>(o.status);
    std::int64_t n = 0;
    if (auto s = exec(
            "set_status",
            Params(o.id, status, o.result, internal::workflow_state_crc(o.id, status, o.result), to_ns(o.now)), &n);
        !s.ok())
      return s;
    return changed_or(n, internal::name_workflow(o.id));
  }
  Status apply(const WriteBatch::StartAttempt& o) {
    std::int64_t n = 0;
    if (auto s = exec("start_attempt", Params(o.id, to_ns(o.now)), &n); !s.ok()) return s;
    return changed_or(n, internal::name_workflow(o.id));
  }
  Status apply(const WriteBatch::PutStep& o) {
    if (auto s = require_workflow(o.workflow_id, "put step"); !s.ok()) return s;
    auto status = static_cast<std::int64_t>(o.status);
    return exec("put_step", Params(o.workflow_id, o.seq, o.name, status, o.result,
                                   internal::step_crc(o.workflow_id, o.seq, o.name, status, o.result), to_ns(o.now)));
  }
  Status apply(const WriteBatch::PutEffectIntent& o) {
    const EffectIntent& in = o.intent;
    if (auto s = require_workflow(in.workflow_id, "put effect intent"); !s.ok()) return s;
    auto nature = static_cast<std::int64_t>(in.nature);
    return exec(
        "put_intent",
        Params(in.workflow_id, in.effect_id, in.idempotency_key, nature, in.arguments,
               internal::effect_intent_crc(in.workflow_id, in.effect_id, in.idempotency_key, nature, in.arguments),
               internal::effect_outcome_crc(in.workflow_id, in.effect_id, 0, std::nullopt), to_ns(in.recorded_at)));
  }
  Status apply(const WriteBatch::PutEffectOutcome& o) {
    auto state = static_cast<std::int64_t>(o.state);
    std::int64_t n = 0;
    if (auto s = exec("put_outcome",
                      Params(o.workflow_id, o.effect_id, state, o.outcome,
                             internal::effect_outcome_crc(o.workflow_id, o.effect_id, state, o.outcome), to_ns(o.now)),
                      &n);
        !s.ok())
      return s;
    return changed_or(n, "put effect outcome: " + internal::name_effect(o.workflow_id, o.effect_id));
  }
  Status apply(const WriteBatch::AppendHistory& o) {
    return exec("append_history",
                Params(o.task_id, o.seq, o.message, internal::history_crc(o.task_id, o.seq, o.message)));
  }
  Status apply(const WriteBatch::PutSummary& o) {
    return exec("put_summary", Params(o.task_id, o.covers_through_seq, o.summary,
                                      internal::summary_crc(o.task_id, o.covers_through_seq, o.summary)));
  }
  Status apply(const WriteBatch::DeleteWorkflow& o) {
    if (auto s = exec("del_steps", Params(o.id)); !s.ok()) return s;
    if (auto s = exec("del_effects", Params(o.id)); !s.ok()) return s;
    return exec("del_wf", Params(o.id));
  }
  Status apply(const WriteBatch::DeleteHistory& o) {
    if (auto s = exec("del_history", Params(o.task_id)); !s.ok()) return s;
    return exec("del_summaries", Params(o.task_id));
  }

  std::string conninfo_;
  PostgresStoreOptions options_;
  std::mutex mu_;
  PGconn* conn_ = nullptr;
};

}  // namespace

Result<std::unique_ptr<Store>> open_postgres_store(const std::string& conninfo, const PostgresStoreOptions& options) {
  if (options.connect_timeout_s < 0) return Error(ErrorKind::kInvalidArgument, "postgres store: connect_timeout_s < 0");
  auto store = std::make_unique<PostgresStore>(conninfo, options);
  if (auto s = store->open(); !s.ok()) return std::move(s).error();
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace nines
