// nines/store/store.hpp: the one storage interface under durable workflows.
//
//   auto store = open_sqlite_store("/var/lib/app/nines.db").value();  // or make_memory_store(), open_postgres_store()
//   TimePoint now(Duration(env.unix_time_ns()));                       // a clock that survives a reboot
//   WriteBatch b;
//   b.create_workflow("refund-42", "refund", "order-42", now)
//       .put_step("refund-42", 0, "load order", StepStatus::kOk, order_bytes, now);
//   if (Status s = store->commit(b); !s.ok()) ...  // all of the batch, or none of it
//   Result<WorkflowRecord> w = store->get_workflow("refund-42");
//   Result<std::vector<StepRecord>> steps = store->load_steps("refund-42");  // ascending by seq
//   Result<WorkflowCounts> counts = store->count_workflows();               // counts->running, ...
//
// A Store keeps five kinds of record, keyed by strings and integers, with values as opaque
// bytes (std::string): workflows, step results, the effect journal, per-task conversation
// history with summaries, and the schema version. Every write goes through an atomic
// WriteBatch (LevelDB style): Store::commit applies all of it or none of it. Backends:
// memory_store.hpp (tests, simulation, fault injection), sqlite_store.hpp (the embedded
// default), postgres_store.hpp (many nodes). They share one conformance test suite.
//
// Times are TimePoints chosen by the caller and stored as int64 nanoseconds since the
// TimePoint epoch. They are compared across restarts (retention), so pass a clock that
// survives a reboot (for example TimePoint(Duration(env.unix_time_ns()))), not the
// monotonic clock.
//
// Integrity: every stored value carries a CRC32 computed over its key and bytes, verified on
// every read. A record that fails the check is an Error of kind kPermanent naming the record
// ("corrupt record: step 3 of workflow 'w1': ..."), never a crash and never different data.
//
// Ownership: records and batches are values. A Store is owned by its creator (unique_ptr);
// it owns its connection or memory.
// Thread-safety: every member of Store may be called from any thread (each backend
// serializes access to its connection); WriteBatch is a value, not synchronized.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "nines/core/result.hpp"
#include "nines/core/time.hpp"

namespace nines {

// The schema version this binary writes. A store with a newer version is refused on open.
inline constexpr int kStoreSchemaVersion = 2;

enum class WorkflowStatus : std::uint8_t {
  kRunning = 0,
  kCompleted = 1,
  kFailed = 2,
  kNeedsAttention = 3,  // stopped for an operator (an unsafe effect of unknown outcome)
  kCancelled = 4,
};
// Finished workflows (completed, failed, cancelled) may be pruned; needs_attention is not
// finished: it waits for an operator.
bool is_finished(WorkflowStatus status);

// How many workflows the store holds in each status (Store::count_workflows).
struct WorkflowCounts {
  std::uint64_t running = 0;
  std::uint64_t completed = 0;
  std::uint64_t failed = 0;
  std::uint64_t needs_attention = 0;
  std::uint64_t cancelled = 0;

  std::uint64_t of(WorkflowStatus status) const;
  std::uint64_t& of(WorkflowStatus status);
  std::uint64_t total() const { return running + completed + failed + needs_attention + cancelled; }
  bool operator==(const WorkflowCounts&) const = default;
};

enum class StepStatus : std::uint8_t { kOk = 0, kError = 1 };

// What recovery may do with an effect found with an intent and no outcome.
enum class EffectNature : std::uint8_t {
  kReadOnly = 0,    // no effect outside: run again
  kIdempotent = 1,  // run again with the same idempotency key
  kCheckable = 2,   // ask the target whether the key was applied
  kUnsafe = 3,      // never run again automatically: needs_attention
};

enum class EffectState : std::uint8_t {
  kIntent = 0,  // committed before the effect runs; outcome unknown
  kDone = 1,
  kFailed = 2,
  kNeedsAttention = 3,
};

enum class Durability : std::uint8_t {
  // Every commit is synced to stable storage before commit() returns: a committed batch
  // survives kill -9 and power loss. The default.
  kSynced,
  // Commits are ordered and atomic but synced in the background: a committed batch survives
  // kill -9 of the process, but power loss (or an OS crash) may lose the last commits. The
  // window depends on the backend (docs/store.md).
  kBatched,
};

std::string_view to_string(WorkflowStatus s);
std::string_view to_string(StepStatus s);
std::string_view to_string(EffectNature n);
std::string_view to_string(EffectState s);
std::string_view to_string(Durability d);

struct WorkflowRecord {
  std::string id;
  WorkflowStatus status = WorkflowStatus::kRunning;
  std::string kind;  // what code runs it (the workflow engine's registered kind); fixed at creation
  std::string input;
  std::string result;  // the result (completed) or error (failed, needs_attention) bytes
  TimePoint created_at{};
  TimePoint updated_at{};
  std::int64_t attempt = 0;  // incremented by WriteBatch::start_attempt (each resume)
  std::int64_t version = 0;  // incremented by every committed change to this row; 1 on create
};

struct StepRecord {
  std::string workflow_id;
  std::int64_t seq = 0;
  std::string name;
  StepStatus status = StepStatus::kOk;
  std::string result;
  TimePoint recorded_at{};
};

struct EffectIntent {
  std::string workflow_id;
  std::string effect_id;
  std::string idempotency_key;
  EffectNature nature = EffectNature::kUnsafe;
  std::string arguments;
  TimePoint recorded_at{};
};

struct EffectRecord {
  std::string workflow_id;
  std::string effect_id;
  std::string idempotency_key;
  EffectNature nature = EffectNature::kUnsafe;
  std::string arguments;
  EffectState state = EffectState::kIntent;
  std::optional<std::string> outcome;  // nullopt until an outcome is recorded
  TimePoint intent_at{};
  TimePoint updated_at{};
};

struct HistoryRecord {
  std::string task_id;
  std::int64_t seq = 0;
  std::string message;
};

struct SummaryRecord {
  std::string task_id;
  std::int64_t covers_through_seq = 0;  // stands in for history seq <= this
  std::string summary;
};

// What a restart loads instead of the whole history: the newest summary and the messages
// after it.
struct HistoryView {
  std::optional<SummaryRecord> summary;
  std::vector<HistoryRecord> tail;  // seq > summary->covers_through_seq, ascending
  bool more = false;                // the tail was cut at max_messages; page with read_history
};

// An atomic group of writes. Operations apply in order, so a batch may create a workflow and
// record its first step. Building a batch never fails; Store::commit validates it.
class WriteBatch {
 public:
  struct CreateWorkflow {  // if absent: status running, attempt 0, version 1; else no-op
    std::string id;
    std::string kind;
    std::string input;
    TimePoint now;
  };
  struct SetWorkflowStatus {  // the workflow must exist (kNotFound)
    std::string id;
    WorkflowStatus status;
    std::string result;
    TimePoint now;
  };
  struct StartAttempt {  // attempt + 1; the workflow must exist (kNotFound)
    std::string id;
    TimePoint now;
  };
  struct PutStep {  // insert or replace; the workflow must exist (kNotFound)
    std::string workflow_id;
    std::int64_t seq;
    std::string name;
    StepStatus status;
    std::string result;
    TimePoint now;
  };
  struct PutEffectIntent {  // insert if absent (an existing intent is kept unchanged); the
    EffectIntent intent;    // workflow must exist (kNotFound)
  };
  struct PutEffectOutcome {  // the effect must exist (kNotFound)
    std::string workflow_id;
    std::string effect_id;
    EffectState state;
    std::optional<std::string> outcome;
    TimePoint now;
  };
  struct AppendHistory {  // insert if absent: an existing (task, seq) is kept unchanged
    std::string task_id;
    std::int64_t seq;
    std::string message;
  };
  struct PutSummary {  // insert or replace
    std::string task_id;
    std::int64_t covers_through_seq;
    std::string summary;
  };
  struct DeleteWorkflow {  // the workflow with its steps and effects; absent: no-op
    std::string id;
  };
  struct DeleteHistory {  // every message and summary of the task; absent: no-op
    std::string task_id;
  };
  using Op = std::variant<CreateWorkflow, SetWorkflowStatus, StartAttempt, PutStep, PutEffectIntent, PutEffectOutcome,
                          AppendHistory, PutSummary, DeleteWorkflow, DeleteHistory>;

  WriteBatch& create_workflow(std::string id, std::string kind, std::string input, TimePoint now);
  WriteBatch& set_workflow_status(std::string id, WorkflowStatus status, std::string result, TimePoint now);
  WriteBatch& start_attempt(std::string id, TimePoint now);
  WriteBatch& put_step(std::string workflow_id, std::int64_t seq, std::string name, StepStatus status,
                       std::string result, TimePoint now);
  WriteBatch& put_effect_intent(EffectIntent intent);
  WriteBatch& put_effect_outcome(std::string workflow_id, std::string effect_id, EffectState state,
                                 std::optional<std::string> outcome, TimePoint now);
  WriteBatch& append_history(std::string task_id, std::int64_t seq, std::string message);
  WriteBatch& put_summary(std::string task_id, std::int64_t covers_through_seq, std::string summary);
  WriteBatch& delete_workflow(std::string id);
  WriteBatch& delete_history(std::string task_id);

  // Appends other's operations after this batch's (group commit merges batches this way).
  WriteBatch& append(const WriteBatch& other);
  void clear();

  const std::vector<Op>& ops() const { return ops_; }
  bool empty() const { return ops_.empty(); }
  std::size_t size() const { return ops_.size(); }
  // Sum of the key and value bytes in the batch: what group commit bounds.
  std::size_t approximate_bytes() const { return bytes_; }

  // kInvalidArgument naming the first malformed operation (an empty id, a negative seq, an
  // enum out of range), or ok. Store::commit calls it first.
  Status validate() const;

 private:
  std::vector<Op> ops_;
  std::size_t bytes_ = 0;
};

class Store {
 public:
  virtual ~Store() = default;

  // "memory", "sqlite" or "postgres".
  virtual std::string_view backend() const = 0;

  // True when a commit completes in microseconds on the calling thread without waiting for a
  // device or a network (the memory store; SQLite with Durability::kBatched): a committer may
  // then run an uncontended commit on its caller's thread instead of handing it to another.
  virtual bool fast_commits() const { return false; }

  // Applies every operation of the batch in order, atomically: on any error nothing of the
  // batch is visible, now or after a restart. With Durability::kSynced the batch is on
  // stable storage when this returns ok. Errors: kInvalidArgument (validate()), kNotFound (an
  // operation needs a workflow or effect that does not exist; names it), kTransient (I/O
  // error, disk full, busy, connection lost: the batch was not applied, except that a
  // connection lost during COMMIT itself leaves the outcome unknown, which the message says;
  // every operation is idempotent, so committing the same batch again is safe).
  virtual Status commit(const WriteBatch& batch) = 0;

  // kNotFound if there is no such workflow; kPermanent if its record is corrupt.
  virtual Result<WorkflowRecord> get_workflow(std::string_view id) = 0;

  // Workflows with the given status and id > after_id, ascending by id, at most limit
  // (indexed by (status, id)): recovery pages through kRunning this way.
  virtual Result<std::vector<WorkflowRecord>> list_workflows(WorkflowStatus status, std::string_view after_id,
                                                             std::size_t limit) = 0;

  // How many workflows are in each status, without reading them (one `GROUP BY status` in
  // the SQL backends). A status value no WorkflowStatus has is kPermanent (corrupt). The
  // default pages through list_workflows, for a Store that has nothing better; the memory,
  // SQLite and PostgreSQL backends override it.
  virtual Result<WorkflowCounts> count_workflows();

  // Every step of the workflow, ascending by seq (empty if none or no such workflow).
  virtual Result<std::vector<StepRecord>> load_steps(std::string_view workflow_id) = 0;

  // Every effect of the workflow, ascending by effect id.
  virtual Result<std::vector<EffectRecord>> load_effects(std::string_view workflow_id) = 0;

  // Effects in state kIntent (outcome unknown) of any workflow, ascending by (workflow id,
  // effect id), at most limit (a partial index keeps this cheap when most effects are done).
  virtual Result<std::vector<EffectRecord>> load_pending_effects(std::size_t limit) = 0;

  // The newest summary of the task and up to max_messages messages after it.
  virtual Result<HistoryView> load_history(std::string_view task_id, std::size_t max_messages) = 0;

  // Messages of the task with seq >= from_seq, ascending, at most limit; ignores summaries.
  virtual Result<std::vector<HistoryRecord>> read_history(std::string_view task_id, std::int64_t from_seq,
                                                          std::size_t limit) = 0;

  // Deletes up to limit finished workflows (completed, failed, cancelled) last updated
  // before older_than, with their steps and effects, oldest first, in one transaction.
  // Returns how many were deleted (call again while it returns limit).
  virtual Result<std::size_t> prune_finished(TimePoint older_than, std::size_t limit) = 0;

  // The schema version of the open store (kStoreSchemaVersion after a successful open).
  virtual Result<int> schema_version() = 0;
};

}  // namespace nines
