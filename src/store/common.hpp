// Internals shared by the store backends: CRC32 checksums over records, integrity checks
// that name the corrupt record, and small helpers. Never included by a public header.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/store/store.hpp"

namespace nines::internal {

// CRC32 (IEEE 802.3, the zlib polynomial), incremental. Fields are fed with a length prefix
// so that ("ab", "c") and ("a", "bc") differ.
class Crc32 {
 public:
  Crc32& bytes(std::string_view s);
  Crc32& field(std::string_view s);  // length, then bytes
  Crc32& integer(std::int64_t v);
  std::uint32_t value() const { return ~crc_; }

 private:
  std::uint32_t crc_ = 0xFFFFFFFFu;
};

std::uint32_t workflow_input_crc(std::string_view id, std::string_view kind, std::string_view input);
std::uint32_t workflow_state_crc(std::string_view id, std::int64_t status, std::string_view result);
std::uint32_t step_crc(std::string_view workflow_id, std::int64_t seq, std::string_view name, std::int64_t status,
                       std::string_view result);
std::uint32_t effect_intent_crc(std::string_view workflow_id, std::string_view effect_id, std::string_view key,
                                std::int64_t nature, std::string_view arguments);
std::uint32_t effect_outcome_crc(std::string_view workflow_id, std::string_view effect_id, std::int64_t state,
                                 const std::optional<std::string>& outcome);
std::uint32_t history_crc(std::string_view task_id, std::int64_t seq, std::string_view message);
std::uint32_t summary_crc(std::string_view task_id, std::int64_t covers_through_seq, std::string_view summary);

// Names of records, as errors show them.
std::string name_workflow(std::string_view id);
std::string name_step(std::string_view workflow_id, std::int64_t seq, std::string_view name);
std::string name_effect(std::string_view workflow_id, std::string_view effect_id);
std::string name_history(std::string_view task_id, std::int64_t seq);
std::string name_summary(std::string_view task_id, std::int64_t covers_through_seq);

// Adds n workflows of the stored status value to counts; a value no WorkflowStatus has is
// corrupt(...).
Status add_to_counts(WorkflowCounts& counts, std::int64_t status, std::uint64_t n);

// kPermanent "corrupt record: <record>: <detail>".
Error corrupt(std::string_view record, std::string_view detail);

// The columns of the SQL backends' tables (SQLite and PostgreSQL have the same), in the order
// their INSERT statements bind them and their SELECT statements read them into the rows below.
inline constexpr const char* kWorkflowCols =
    "id, status, input, input_crc, result, state_crc, created_ns, updated_ns, attempt, version, kind";
inline constexpr const char* kStepCols = "workflow_id, seq, name, status, result, crc, recorded_ns";
inline constexpr const char* kEffectCols =
    "workflow_id, effect_id, idempotency_key, nature, arguments, intent_crc, state, outcome, outcome_crc, intent_ns,"
    " updated_ns";

// Raw row values as a backend reads them (enums as integers, checksums as stored), checked
// into records. Each fails with corrupt(...) naming the record.
struct WorkflowRow {
  std::string id;
  std::int64_t status = 0;
  std::string input;
  std::int64_t input_crc = 0;
  std::string result;
  std::int64_t state_crc = 0;
  std::int64_t created_ns = 0;
  std::int64_t updated_ns = 0;
  std::int64_t attempt = 0;
  std::int64_t version = 0;
  std::string kind;
};
struct StepRow {
  std::string workflow_id;
  std::int64_t seq = 0;
  std::string name;
  std::int64_t status = 0;
  std::string result;
  std::int64_t crc = 0;
  std::int64_t recorded_ns = 0;
};
struct EffectRow {
  std::string workflow_id;
  std::string effect_id;
  std::string idempotency_key;
  std::int64_t nature = 0;
  std::string arguments;
  std::int64_t intent_crc = 0;
  std::int64_t state = 0;
  std::optional<std::string> outcome;
  std::int64_t outcome_crc = 0;
  std::int64_t intent_ns = 0;
  std::int64_t updated_ns = 0;
};
struct HistoryRow {
  std::string task_id;
  std::int64_t seq = 0;
  std::string message;
  std::int64_t crc = 0;
};
struct SummaryRow {
  std::string task_id;
  std::int64_t covers_through_seq = 0;
  std::string summary;
  std::int64_t crc = 0;
};

Result<WorkflowRecord> check(WorkflowRow row);
Result<StepRecord> check(StepRow row);
Result<EffectRecord> check(EffectRow row);
Result<HistoryRecord> check(HistoryRow row);
Result<SummaryRecord> check(SummaryRow row);

inline std::int64_t to_ns(TimePoint t) { return t.time_since_epoch().count(); }
inline TimePoint from_ns(std::int64_t ns) { return TimePoint(Duration(ns)); }

// The schema: migration i (1-based) takes a store from version i - 1 to i. The SQL is
// written once for both SQL backends: BYTEA/BLOB and $n/?n are substituted by each.
inline constexpr int kMigrationCount = kStoreSchemaVersion;

// Fills view.tail from up to max_messages + 1 rows read after the summary: the first
// max_messages, with view.more set when there was one more.
void set_history_tail(HistoryView& view, std::vector<HistoryRecord> rows, std::size_t max_messages);

// A store whose schema is newer than this binary knows: refused, naming both versions.
Error newer_schema_error(int version);

}  // namespace nines::internal
