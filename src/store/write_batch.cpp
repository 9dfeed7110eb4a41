// WriteBatch building and validation; names of the store enums.
#include <string>
#include <type_traits>

#include "nines/store/store.hpp"

namespace nines {
namespace {

constexpr std::size_t kMaxIdBytes = 1024;

Error invalid(std::size_t index, std::string_view what) {
  return Error(ErrorKind::kInvalidArgument,
               "write batch operation " + std::to_string(index) + ": " + std::string(what));
}

// An id is a key: non-empty, bounded, without NUL bytes (kept as text by the SQL backends).
bool bad_id(std::string_view id) {
  return id.empty() || id.size() > kMaxIdBytes || id.find('\0') != std::string_view::npos;
}

}  // namespace

bool is_finished(WorkflowStatus status) {
  return status == WorkflowStatus::kCompleted || status == WorkflowStatus::kFailed ||
         status == WorkflowStatus::kCancelled;
}

std::string_view to_string(WorkflowStatus s) {
  switch (s) {
    case WorkflowStatus::kRunning: return "running";
    case WorkflowStatus::kCompleted: return "completed";
    case WorkflowStatus::kFailed: return "failed";
    case WorkflowStatus::kNeedsAttention: return "needs_attention";
    case WorkflowStatus::kCancelled: return "cancelled";
  }
  return "unknown";
}

std::string_view to_string(StepStatus s) {
  switch (s) {
    case StepStatus::kOk: return "ok";
    case StepStatus::kError: return "error";
  }
  return "unknown";
}

std::string_view to_string(EffectNature n) {
  switch (n) {
    case EffectNature::kReadOnly: return "read_only";
    case EffectNature::kIdempotent: return "idempotent";
    case EffectNature::kCheckable: return "checkable";
    case EffectNature::kUnsafe: return "unsafe";
  }
  return "unknown";
}

std::string_view to_string(EffectState s) {
  switch (s) {
    case EffectState::kIntent: return "intent";
    case EffectState::kDone: return "done";
    case EffectState::kFailed: return "failed";
    case EffectState::kNeedsAttention: return "needs_attention";
  }
  return "unknown";
}

std::string_view to_string(Durability d) {
  switch (d) {
    case Durability::kSynced: return "synced";
    case Durability::kBatched: return "batched";
  }
  return "unknown";
}

WriteBatch& WriteBatch::create_workflow(std::string id, std::string kind, std::string input, TimePoint now) {
  bytes_ += id.size() + kind.size() + input.size();
  ops_.emplace_back(CreateWorkflow{std::move(id), std::move(kind), std::move(input), now});
  return *this;
}

WriteBatch& WriteBatch::set_workflow_status(std::string id, WorkflowStatus status, std::string result, TimePoint now) {
  bytes_ += id.size() + result.size();
  ops_.emplace_back(SetWorkflowStatus{std::move(id), status, std::move(result), now});
  return *this;
}

WriteBatch& WriteBatch::start_attempt(std::string id, TimePoint now) {
  bytes_ += id.size();
  ops_.emplace_back(StartAttempt{std::move(id), now});
  return *this;
}

WriteBatch& WriteBatch::put_step(std::string workflow_id, std::int64_t seq, std::string name, StepStatus status,
                                 std::string result, TimePoint now) {
  bytes_ += workflow_id.size() + name.size() + result.size() + 8;
  ops_.emplace_back(PutStep{std::move(workflow_id), seq, std::move(name), status, std::move(result), now});
  return *this;
}

WriteBatch& WriteBatch::put_effect_intent(EffectIntent intent) {
  bytes_ +=
      intent.workflow_id.size() + intent.effect_id.size() + intent.idempotency_key.size() + intent.arguments.size();
  ops_.emplace_back(PutEffectIntent{std::move(intent)});
  return *this;
}

WriteBatch& WriteBatch::put_effect_outcome(std::string workflow_id, std::string effect_id, EffectState state,
                                           std::optional<std::string> outcome, TimePoint now) {
  bytes_ += workflow_id.size() + effect_id.size() + (outcome ? outcome->size() : 0);
  ops_.emplace_back(PutEffectOutcome{std::move(workflow_id), std::move(effect_id), state, std::move(outcome), now});
  return *this;
}

WriteBatch& WriteBatch::append_history(std::string task_id, std::int64_t seq, std::string message) {
  bytes_ += task_id.size() + message.size() + 8;
  ops_.emplace_back(AppendHistory{std::move(task_id), seq, std::move(message)});
  return *this;
}

WriteBatch& WriteBatch::put_summary(std::string task_id, std::int64_t covers_through_seq, std::string summary) {
  bytes_ += task_id.size() + summary.size() + 8;
  ops_.emplace_back(PutSummary{std::move(task_id), covers_through_seq, std::move(summary)});
  return *this;
}

WriteBatch& WriteBatch::delete_workflow(std::string id) {
  bytes_ += id.size();
  ops_.emplace_back(DeleteWorkflow{std::move(id)});
  return *this;
}

WriteBatch& WriteBatch::delete_history(std::string task_id) {
  bytes_ += task_id.size();
  ops_.emplace_back(DeleteHistory{std::move(task_id)});
  return *this;
}

WriteBatch& WriteBatch::append(const WriteBatch& other) {
  ops_.insert(ops_.end(), other.ops_.begin(), other.ops_.end());
  bytes_ += other.bytes_;
  return *this;
}

void WriteBatch::clear() {
  ops_.clear();
  bytes_ = 0;
}

Status WriteBatch::validate() const {
  for (std::size_t i = 0; i < ops_.size(); ++i) {
    const char* problem = std::visit(
        [](const auto& op) -> const char* {
          using T = std::decay_t<decltype(op)>;
          if constexpr (std::is_same_v<T, CreateWorkflow> || std::is_same_v<T, StartAttempt> ||
                        std::is_same_v<T, DeleteWorkflow>) {
            if (bad_id(op.id)) return "workflow id empty, longer than 1024 bytes or containing NUL";
          } else if constexpr (std::is_same_v<T, SetWorkflowStatus>) {
            if (bad_id(op.id)) return "workflow id empty, longer than 1024 bytes or containing NUL";
            if (static_cast<unsigned>(op.status) > static_cast<unsigned>(WorkflowStatus::kCancelled))
              return "workflow status out of range";
          } else if constexpr (std::is_same_v<T, PutStep>) {
            if (bad_id(op.workflow_id)) return "workflow id empty, longer than 1024 bytes or containing NUL";
            if (op.seq < 0) return "step seq negative";
            if (op.name.size() > kMaxIdBytes || op.name.find('\0') != std::string::npos)
              return "step name longer than 1024 bytes or containing NUL";
            if (static_cast<unsigned>(op.status) > static_cast<unsigned>(StepStatus::kError))
              return "step status out of range";
          } else if constexpr (std::is_same_v<T, PutEffectIntent>) {
            if (bad_id(op.intent.workflow_id)) return "workflow id empty, longer than 1024 bytes or containing NUL";
            if (bad_id(op.intent.effect_id)) return "effect id empty, longer than 1024 bytes or containing NUL";
            if (op.intent.idempotency_key.find('\0') != std::string::npos) return "idempotency key contains NUL";
            if (static_cast<unsigned>(op.intent.nature) > static_cast<unsigned>(EffectNature::kUnsafe))
              return "effect nature out of range";
          } else if constexpr (std::is_same_v<T, PutEffectOutcome>) {
            if (bad_id(op.workflow_id)) return "workflow id empty, longer than 1024 bytes or containing NUL";
            if (bad_id(op.effect_id)) return "effect id empty, longer than 1024 bytes or containing NUL";
            if (static_cast<unsigned>(op.state) > static_cast<unsigned>(EffectState::kNeedsAttention))
              return "effect state out of range";
          } else if constexpr (std::is_same_v<T, AppendHistory>) {
            if (bad_id(op.task_id)) return "task id empty, longer than 1024 bytes or containing NUL";
            if (op.seq < 0) return "history seq negative";
          } else if constexpr (std::is_same_v<T, PutSummary>) {
            if (bad_id(op.task_id)) return "task id empty, longer than 1024 bytes or containing NUL";
            if (op.covers_through_seq < 0) return "summary covers_through_seq negative";
          } else if constexpr (std::is_same_v<T, DeleteHistory>) {
            if (bad_id(op.task_id)) return "task id empty, longer than 1024 bytes or containing NUL";
          }
          return nullptr;
        },
        ops_[i]);
    if (problem) return invalid(i, problem);
  }
  return ok_status();
}

}  // namespace nines
