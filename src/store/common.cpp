#include "store/common.hpp"

#include <array>
#include <cstdio>

namespace nines::internal {
namespace {

constexpr std::array<std::uint32_t, 256> make_table() {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<std::uint32_t, 256> kTable = make_table();

std::string quoted(std::string_view s) {
  std::string out = "'";
  out.append(s).append("'");
  return out;
}

bool in_range(std::int64_t v, std::int64_t max) { return v >= 0 && v <= max; }

Error bad_crc(std::string_view record, std::string_view what, std::int64_t stored, std::uint32_t computed) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.*s checksum mismatch (stored %08llx, computed %08x)", static_cast<int>(what.size()),
                what.data(), static_cast<unsigned long long>(stored), computed);
  return corrupt(record, buf);
}

Error bad_enum(std::string_view record, std::string_view what, std::int64_t value) {
  return corrupt(record, std::string(what) + " " + std::to_string(value) + " out of range");
}

}  // namespace

Crc32& Crc32::bytes(std::string_view s) {
  std::uint32_t c = crc_;
  for (unsigned char b : s) c = kTable[(c ^ b) & 0xFF] ^ (c >> 8);
  crc_ = c;
  return *this;
}

Crc32& Crc32::integer(std::int64_t v) {
  char buf[8];
  auto u = static_cast<std::uint64_t>(v);
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>((u >> (8 * i)) & 0xFF);
  return bytes(std::string_view(buf, 8));
}

Crc32& Crc32::field(std::string_view s) {
  integer(static_cast<std::int64_t>(s.size()));
  return bytes(s);
}

std::uint32_t workflow_input_crc(std::string_view id, std::string_view kind, std::string_view input) {
  return Crc32().field(id).field(kind).field(input).value();
}
std::uint32_t workflow_state_crc(std::string_view id, std::int64_t status, std::string_view result) {
  return Crc32().field(id).integer(status).field(result).value();
}
std::uint32_t step_crc(std::string_view workflow_id, std::int64_t seq, std::string_view name, std::int64_t status,
                       std::string_view result) {
  return Crc32().field(workflow_id).integer(seq).field(name).integer(status).field(result).value();
}
std::uint32_t effect_intent_crc(std::string_view workflow_id, std::string_view effect_id, std::string_view key,
                                std::int64_t nature, std::string_view arguments) {
  return Crc32().field(workflow_id).field(effect_id).field(key).integer(nature).field(arguments).value();
}
std::uint32_t effect_outcome_crc(std::string_view workflow_id, std::string_view effect_id, std::int64_t state,
                                 const std::optional<std::string>& outcome) {
  Crc32 c;
  c.field(workflow_id).field(effect_id).integer(state).integer(outcome ? 1 : 0);
  if (outcome) c.field(*outcome);
  return c.value();
}
std::uint32_t history_crc(std::string_view task_id, std::int64_t seq, std::string_view message) {
  return Crc32().field(task_id).integer(seq).field(message).value();
}
std::uint32_t summary_crc(std::string_view task_id, std::int64_t covers_through_seq, std::string_view summary) {
  return Crc32().field(task_id).integer(covers_through_seq).field(summary).value();
}

std::string name_workflow(std::string_view id) { return "workflow " + quoted(id); }
std::string name_step(std::string_view workflow_id, std::int64_t seq, std::string_view name) {
  std::string s = "step " + std::to_string(seq);
  if (!name.empty()) s += " (" + quoted(name) + ")";
  return s + " of workflow " + quoted(workflow_id);
}
std::string name_effect(std::string_view workflow_id, std::string_view effect_id) {
  return "effect " + quoted(effect_id) + " of workflow " + quoted(workflow_id);
}
std::string name_history(std::string_view task_id, std::int64_t seq) {
  return "history message " + std::to_string(seq) + " of task " + quoted(task_id);
}
std::string name_summary(std::string_view task_id, std::int64_t covers_through_seq) {
  return "summary through " + std::to_string(covers_through_seq) + " of task " + quoted(task_id);
}

Error corrupt(std::string_view record, std::string_view detail) {
  std::string m = "corrupt record: ";
  m.append(record).append(": ").append(detail);
  return Error(ErrorKind::kPermanent, std::move(m));
}

Result<WorkflowRecord> check(WorkflowRow row) {
  const std::string rec = name_workflow(row.id);
  if (!in_range(row.status, static_cast<std::int64_t>(WorkflowStatus::kCancelled)))
    return bad_enum(rec, "status", row.status);
  if (auto c = workflow_input_crc(row.id, row.kind, row.input); c != row.input_crc) {
    return bad_crc(rec, "kind/input", row.input_crc, c);
  }
  if (auto c = workflow_state_crc(row.id, row.status, row.result); c != row.state_crc)
    return bad_crc(rec, "status/result", row.state_crc, c);
  return WorkflowRecord{.id = std::move(row.id),
                        .status = static_cast<WorkflowStatus>(row.status),
                        .kind = std::move(row.kind),
                        .input = std::move(row.input),
                        .result = std::move(row.result),
                        .created_at = from_ns(row.created_ns),
                        .updated_at = from_ns(row.updated_ns),
                        .attempt = row.attempt,
                        .version = row.version};
}

Result<StepRecord> check(StepRow row) {
  const std::string rec = name_step(row.workflow_id, row.seq, row.name);
  if (!in_range(row.status, static_cast<std::int64_t>(StepStatus::kError))) return bad_enum(rec, "status", row.status);
  if (auto c = step_crc(row.workflow_id, row.seq, row.name, row.status, row.result); c != row.crc)
    return bad_crc(rec, "result", row.crc, c);
  return StepRecord{.workflow_id = std::move(row.workflow_id),
                    .seq = row.seq,
                    .name = std::move(row.name),
                    .status = static_cast<StepStatus>(row.status),
                    .result = std::move(row.result),
                    .recorded_at = from_ns(row.recorded_ns)};
}

Result<EffectRecord> check(EffectRow row) {
  const std::string rec = name_effect(row.workflow_id, row.effect_id);
  if (!in_range(row.nature, static_cast<std::int64_t>(EffectNature::kUnsafe)))
    return bad_enum(rec, "nature", row.nature);
  if (!in_range(row.state, static_cast<std::int64_t>(EffectState::kNeedsAttention)))
    return bad_enum(rec, "state", row.state);
  if (auto c = effect_intent_crc(row.workflow_id, row.effect_id, row.idempotency_key, row.nature, row.arguments);
      c != row.intent_crc)
    return bad_crc(rec, "intent", row.intent_crc, c);
  if (auto c = effect_outcome_crc(row.workflow_id, row.effect_id, row.state, row.outcome); c != row.outcome_crc)
    return bad_crc(rec, "outcome", row.outcome_crc, c);
  return EffectRecord{.workflow_id = std::move(row.workflow_id),
                      .effect_id = std::move(row.effect_id),
                      .idempotency_key = std::move(row.idempotency_key),
                      .nature = static_cast<EffectNature>(row.nature),
                      .arguments = std::move(row.arguments),
                      .state = static_cast<EffectState>(row.state),
                      .outcome = std::move(row.outcome),
                      .intent_at = from_ns(row.intent_ns),
                      .updated_at = from_ns(row.updated_ns)};
}

Result<HistoryRecord> check(HistoryRow row) {
  if (auto c = history_crc(row.task_id, row.seq, row.message); c != row.crc)
    return bad_crc(name_history(row.task_id, row.seq), "message", row.crc, c);
  return HistoryRecord{.task_id = std::move(row.task_id), .seq = row.seq, .message = std::move(row.message)};
}

Result<SummaryRecord> check(SummaryRow row) {
  if (auto c = summary_crc(row.task_id, row.covers_through_seq, row.summary); c != row.crc)
    return bad_crc(name_summary(row.task_id, row.covers_through_seq), "summary", row.crc, c);
  return SummaryRecord{.task_id = std::move(row.task_id),
                       .covers_through_seq = row.covers_through_seq,
                       .summary = std::move(row.summary)};
}

void set_history_tail(HistoryView& view, std::vector<HistoryRecord> rows, std::size_t max_messages) {
  view.more = rows.size() > max_messages;
  if (view.more) rows.resize(max_messages);
  view.tail = std::move(rows);
}

Error newer_schema_error(int version) {
  return Error(ErrorKind::kPermanent, "schema version " + std::to_string(version) +
                                          " is newer than this binary supports (" +
                                          std::to_string(kStoreSchemaVersion) + "); upgrade nines to open it");
}

Status add_to_counts(WorkflowCounts& counts, std::int64_t status, std::uint64_t n) {
  if (status < 0 || status > static_cast<std::int64_t>(WorkflowStatus::kCancelled)) {
    return corrupt("workflows", "a workflow has status " + std::to_string(status) + ", which no WorkflowStatus has");
  }
  counts.of(static_cast<WorkflowStatus>(status)) += n;
  return ok_status();
}

}  // namespace nines::internal

namespace nines {

namespace {
template <class Counts>
auto& count_of(Counts& c, WorkflowStatus status) {
  switch (status) {
    case WorkflowStatus::kRunning: return c.running;
    case WorkflowStatus::kCompleted: return c.completed;
    case WorkflowStatus::kFailed: return c.failed;
    case WorkflowStatus::kNeedsAttention: return c.needs_attention;
    case WorkflowStatus::kCancelled: break;
  }
  return c.cancelled;
}
}  // namespace

std::uint64_t WorkflowCounts::of(WorkflowStatus status) const { return count_of(*this, status); }
std::uint64_t& WorkflowCounts::of(WorkflowStatus status) { return count_of(*this, status); }

Result<WorkflowCounts> Store::count_workflows() {
  constexpr std::size_t kPage = 1000;
  WorkflowCounts counts;
  for (WorkflowStatus status : {WorkflowStatus::kRunning, WorkflowStatus::kCompleted, WorkflowStatus::kFailed,
                                WorkflowStatus::kNeedsAttention, WorkflowStatus::kCancelled}) {
    std::string after;
    for (;;) {
      Result<std::vector<WorkflowRecord>> page = list_workflows(status, after, kPage);
      if (!page.ok()) return std::move(page).error();
      counts.of(status) += page->size();
      if (page->size() < kPage) break;
      after = page->back().id;
    }
  }
  return counts;
}

}  // namespace nines
