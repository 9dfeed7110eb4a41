// The in-memory Store: ordered maps holding the same rows (with checksums) as the SQL
// tables, an undo log per commit for atomicity, and a second copy of the tables that a crash
// keeps.
#include "nines/store/memory_store.hpp"

#include <algorithm>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "store/common.hpp"

namespace nines {
namespace {

using internal::EffectRow;
using internal::HistoryRow;
using internal::StepRow;
using internal::SummaryRow;
using internal::to_ns;
using internal::WorkflowRow;

constexpr std::int64_t kMinSeq = std::numeric_limits<std::int64_t>::min();

std::size_t row_bytes(const WorkflowRow& r) {
  return r.id.size() + r.kind.size() + r.input.size() + r.result.size() + 56;
}
std::size_t row_bytes(const StepRow& r) { return r.workflow_id.size() + r.name.size() + r.result.size() + 32; }
std::size_t row_bytes(const EffectRow& r) {
  return r.workflow_id.size() + r.effect_id.size() + r.idempotency_key.size() + r.arguments.size() +
         (r.outcome ? r.outcome->size() : 0) + 48;
}
std::size_t row_bytes(const HistoryRow& r) { return r.task_id.size() + r.message.size() + 16; }
std::size_t row_bytes(const SummaryRow& r) { return r.task_id.size() + r.summary.size() + 16; }

struct Tables {
  std::map<std::string, WorkflowRow, std::less<>> workflows;
  std::map<std::pair<std::string, std::int64_t>, StepRow> steps;
  std::map<std::pair<std::string, std::string>, EffectRow> effects;
  std::map<std::pair<std::string, std::int64_t>, HistoryRow> history;
  std::map<std::pair<std::string, std::int64_t>, SummaryRow> summaries;
  std::size_t bytes = 0;
};

// Applies one batch to a set of tables, recording how to undo each change.
class Applier {
 public:
  Applier(Tables& t, bool keep_undo) : t_(t), keep_undo_(keep_undo), bytes_before_(t.bytes) {}

  void rollback() {
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) (*it)();
    undo_.clear();
    t_.bytes = bytes_before_;
  }

  Status apply(const WriteBatch::Op& op) {
    return std::visit([this](const auto& o) { return this->op(o); }, op);
  }

 private:
  // Puts row at key (or erases it when row is nullopt), remembering what was there.
  template <class Map, class Row>
  void put(Map& m, const typename Map::key_type& key, std::optional<Row> row) {
    auto it = m.find(key);
    if (keep_undo_) {
      if (it == m.end()) {
        undo_.push_back([&m, key] { m.erase(key); });
      } else {
        undo_.push_back([&m, key, old = it->second] { m.insert_or_assign(key, old); });
      }
    }
    if (it != m.end()) {
      t_.bytes -= row_bytes(it->second);
      if (!row) {
        m.erase(it);
        return;
      }
    }
    if (row) {
      t_.bytes += row_bytes(*row);
      m.insert_or_assign(key, std::move(*row));
    }
  }

  Status op(const WriteBatch::CreateWorkflow& o) {
    if (t_.workflows.count(o.id)) return ok_status();
    WorkflowRow r{.id = o.id,
                  .status = 0,
                  .input = o.input,
                  .input_crc = internal::workflow_input_crc(o.id, o.kind, o.input),
                  .result = {},
                  .state_crc = internal::workflow_state_crc(o.id, 0, {}),
                  .created_ns = to_ns(o.now),
                  .updated_ns = to_ns(o.now),
                  .attempt = 0,
                  .version = 1,
                  .kind = o.kind};
    put(t_.workflows, o.id, std::optional(std::move(r)));
    return ok_status();
  }

  Result<WorkflowRow*> workflow(const std::string& id) {
    auto it = t_.workflows.find(id);
    if (it == t_.workflows.end()) return Error(ErrorKind::kNotFound, internal::name_workflow(id) + " does not exist");
    return &it->second;
  }

  Status op(const WriteBatch::SetWorkflowStatus& o) {
    auto w = workflow(o.id);
    if (!w.ok()) return std::move(w).error();
    WorkflowRow r = **w;
    r.status = static_cast<std::int64_t>(o.status);
    r.result = o.result;
    r.state_crc = internal::workflow_state_crc(o.id, r.status, r.result);
    r.updated_ns = to_ns(o.now);
    r.version += 1;
    put(t_.workflows, o.id, std::optional(std::move(r)));
    return ok_status();
  }

  Status op(const WriteBatch::StartAttempt& o) {
    auto w = workflow(o.id);
    if (!w.ok()) return std::move(w).error();
    WorkflowRow r = **w;
    r.attempt += 1;
    r.version += 1;
    r.updated_ns = to_ns(o.now);
    put(t_.workflows, o.id, std::optional(std::move(r)));
    return ok_status();
  }

  Status op(const WriteBatch::PutStep& o) {
    if (auto w = workflow(o.workflow_id); !w.ok()) return std::move(w).error().with_context("put step");
    auto status = static_cast<std::int64_t>(o.status);
    StepRow r{.workflow_id = o.workflow_id,
              .seq = o.seq,
              .name = o.name,
              .status = status,
              .result = o.result,
              .crc = internal::step_crc(o.workflow_id, o.seq, o.name, status, o.result),
              .recorded_ns = to_ns(o.now)};
    put(t_.steps, {o.workflow_id, o.seq}, std::optional(std::move(r)));
    return ok_status();
  }

  Status op(const WriteBatch::PutEffectIntent& o) {
    const EffectIntent& in = o.intent;
    if (auto w = workflow(in.workflow_id); !w.ok()) return std::move(w).error().with_context("put effect intent");
    std::pair<std::string, std::string> key{in.workflow_id, in.effect_id};
    if (t_.effects.count(key)) return ok_status();
    auto nature = static_cast<std::int64_t>(in.nature);
    EffectRow r{.workflow_id = in.workflow_id,
                .effect_id = in.effect_id,
                .idempotency_key = in.idempotency_key,
                .nature = nature,
                .arguments = in.arguments,
                .intent_crc =
                    internal::effect_intent_crc(in.workflow_id, in.effect_id, in.idempotency_key, nature, in.arguments),
                .state = 0,
                .outcome = std::nullopt,
                .outcome_crc = internal::effect_outcome_crc(in.workflow_id, in.effect_id, 0, std::nullopt),
                .intent_ns = to_ns(in.recorded_at),
                .updated_ns = to_ns(in.recorded_at)};
    put(t_.effects, key, std::optional(std::move(r)));
    return ok_status();
  }

  Status op(const WriteBatch::PutEffectOutcome& o) {
    std::pair<std::string, std::string> key{o.workflow_id, o.effect_id};
    auto it = t_.effects.find(key);
    if (it == t_.effects.end())
      return Error(ErrorKind::kNotFound,
                   "put effect outcome: " + internal::name_effect(o.workflow_id, o.effect_id) + " does not exist");
    EffectRow r = it->second;
    r.state = static_cast<std::int64_t>(o.state);
    r.outcome = o.outcome;
    r.outcome_crc = internal::effect_outcome_crc(o.workflow_id, o.effect_id, r.state, r.outcome);
    r.updated_ns = to_ns(o.now);
    put(t_.effects, key, std::optional(std::move(r)));
    return ok_status();
  }

  Status op(const WriteBatch::AppendHistory& o) {
    std::pair<std::string, std::int64_t> key{o.task_id, o.seq};
    if (t_.history.count(key)) return ok_status();
    HistoryRow r{.task_id = o.task_id,
                 .seq = o.seq,
                 .message = o.message,
                 .crc = internal::history_crc(o.task_id, o.seq, o.message)};
    put(t_.history, key, std::optional(std::move(r)));
    return ok_status();
  }

  Status op(const WriteBatch::PutSummary& o) {
    SummaryRow r{.task_id = o.task_id,
                 .covers_through_seq = o.covers_through_seq,
                 .summary = o.summary,
                 .crc = internal::summary_crc(o.task_id, o.covers_through_seq, o.summary)};
    put(t_.summaries, {o.task_id, o.covers_through_seq}, std::optional(std::move(r)));
    return ok_status();
  }

  template <class Map, class Key>
  void erase_prefix(Map& m, const std::string& prefix, Key lowest) {
    std::vector<typename Map::key_type> keys;
    for (auto it = m.lower_bound({prefix, lowest}); it != m.end() && it->first.first == prefix; ++it)
      keys.push_back(it->first);
    for (auto& k : keys) put(m, k, std::optional<typename Map::mapped_type>());
  }

  Status op(const WriteBatch::DeleteWorkflow& o) {
    erase_prefix(t_.steps, o.id, kMinSeq);
    erase_prefix(t_.effects, o.id, std::string());
    if (t_.workflows.count(o.id)) put(t_.workflows, o.id, std::optional<WorkflowRow>());
    return ok_status();
  }

  Status op(const WriteBatch::DeleteHistory& o) {
    erase_prefix(t_.history, o.task_id, kMinSeq);
    erase_prefix(t_.summaries, o.task_id, kMinSeq);
    return ok_status();
  }

  Tables& t_;
  bool keep_undo_;
  std::size_t bytes_before_;
  std::vector<std::function<void()>> undo_;
};

template <class Row>
Row* row_at(std::map<std::pair<std::string, std::int64_t>, Row>& m, std::string_view id, std::int64_t seq) {
  auto it = m.find({std::string(id), seq});
  return it == m.end() ? nullptr : &it->second;
}

void flip(std::string& s) {
  if (s.empty())
    s.push_back('\x01');
  else
    s[0] = static_cast<char>(s[0] ^ 0x01);
}

class MemoryStoreImpl final : public MemoryStore {
 public:
  explicit MemoryStoreImpl(const MemoryStoreOptions& o) : options_(o) {}

  std::string_view backend() const override { return "memory"; }
  bool fast_commits() const override { return true; }

  Status commit(const WriteBatch& batch) override {
    if (auto v = batch.validate(); !v.ok()) return v;
    std::lock_guard lock(mu_);
    return commit_locked(batch);
  }

  Result<WorkflowRecord> get_workflow(std::string_view id) override {
    std::lock_guard lock(mu_);
    auto it = live_.workflows.find(id);
    if (it == live_.workflows.end())
      return Error(ErrorKind::kNotFound, internal::name_workflow(id) + " does not exist");
    return internal::check(it->second);
  }

  Result<std::vector<WorkflowRecord>> list_workflows(WorkflowStatus status, std::string_view after_id,
                                                     std::size_t limit) override {
    std::lock_guard lock(mu_);
    std::vector<WorkflowRecord> out;
    for (auto it = live_.workflows.upper_bound(after_id); it != live_.workflows.end() && out.size() < limit; ++it) {
      if (it->second.status != static_cast<std::int64_t>(status)) continue;
      auto r = internal::check(it->second);
      if (!r.ok()) return std::move(r).error();
      out.push_back(std::move(*r));
    }
    return out;
  }

  Result<WorkflowCounts> count_workflows() override {
    std::lock_guard lock(mu_);
    WorkflowCounts counts;
    for (const auto& [id, w] : live_.workflows) {
      if (auto s = internal::add_to_counts(counts, w.status, 1); !s.ok()) return std::move(s).error();
    }
    return counts;
  }

  Result<std::vector<StepRecord>> load_steps(std::string_view workflow_id) override {
    std::lock_guard lock(mu_);
    std::vector<StepRecord> out;
    std::string id(workflow_id);
    for (auto it = live_.steps.lower_bound({id, kMinSeq}); it != live_.steps.end() && it->first.first == id; ++it) {
      auto r = internal::check(it->second);
      if (!r.ok()) return std::move(r).error();
      out.push_back(std::move(*r));
    }
    return out;
  }

  Result<std::vector<EffectRecord>> load_effects(std::string_view workflow_id) override {
    std::lock_guard lock(mu_);
    std::vector<EffectRecord> out;
    std::string id(workflow_id);
    for (auto it = live_.effects.lower_bound({id, std::string()}); it != live_.effects.end() && it->first.first == id;
         ++it) {
      auto r = internal::check(it->second);
      if (!r.ok()) return std::move(r).error();
      out.push_back(std::move(*r));
    }
    return out;
  }

  Result<std::vector<EffectRecord>> load_pending_effects(std::size_t limit) override {
    std::lock_guard lock(mu_);
    std::vector<EffectRecord> out;
    for (auto it = live_.effects.begin(); it != live_.effects.end() && out.size() < limit; ++it) {
      if (it->second.state != static_cast<std::int64_t>(EffectState::kIntent)) continue;
      auto r = internal::check(it->second);
      if (!r.ok()) return std::move(r).error();
      out.push_back(std::move(*r));
    }
    return out;
  }

  Result<HistoryView> load_history(std::string_view task_id, std::size_t max_messages) override {
    std::lock_guard lock(mu_);
    HistoryView view;
    std::string id(task_id);
    std::int64_t from = 0;
    auto s = live_.summaries.lower_bound({id, kMinSeq});
    std::optional<SummaryRow> newest;
    for (; s != live_.summaries.end() && s->first.first == id; ++s) newest = s->second;
    if (newest) {
      auto r = internal::check(*newest);
      if (!r.ok()) return std::move(r).error();
      from = r->covers_through_seq + 1;
      view.summary = std::move(*r);
    }
    auto tail = read_locked(id, from, max_messages + 1);
    if (!tail.ok()) return std::move(tail).error();
    internal::set_history_tail(view, std::move(*tail), max_messages);
    return view;
  }

  Result<std::vector<HistoryRecord>> read_history(std::string_view task_id, std::int64_t from_seq,
                                                  std::size_t limit) override {
    std::lock_guard lock(mu_);
    return read_locked(std::string(task_id), from_seq, limit);
  }

  Result<std::size_t> prune_finished(TimePoint older_than, std::size_t limit) override {
    std::lock_guard lock(mu_);
    std::vector<std::pair<std::int64_t, std::string>> candidates;
    for (const auto& [id, w] : live_.workflows) {
      auto status = static_cast<WorkflowStatus>(w.status);
      if (w.status >= 0 && w.status <= 4 && is_finished(status) && w.updated_ns < to_ns(older_than))
        candidates.emplace_back(w.updated_ns, id);
    }
    std::sort(candidates.begin(), candidates.end());
    if (candidates.size() > limit) candidates.resize(limit);
    if (candidates.empty()) return std::size_t{0};
    WriteBatch batch;
    for (auto& c : candidates) batch.delete_workflow(c.second);
    if (auto s = commit_locked(batch); !s.ok()) return std::move(s).error().with_context("prune");
    return candidates.size();
  }

  Result<int> schema_version() override { return kStoreSchemaVersion; }

  void sync() override {
    std::lock_guard lock(mu_);
    sync_locked();
  }

  void crash() override {
    std::lock_guard lock(mu_);
    pending_.clear();
    live_ = durable_;
  }

  void fail_next_commits(std::size_t count, Error error, std::size_t after_ops) override {
    std::lock_guard lock(mu_);
    fail_count_ = count;
    fail_error_ = std::move(error);
    fail_after_ops_ = after_ops;
  }

  void set_capacity_bytes(std::size_t capacity_bytes) override {
    std::lock_guard lock(mu_);
    options_.capacity_bytes = capacity_bytes;
  }

  bool corrupt_workflow(std::string_view id) override {
    std::lock_guard lock(mu_);
    return corrupt_both([&](Tables& t) {
      auto it = t.workflows.find(id);
      if (it == t.workflows.end()) return false;
      flip(it->second.result);
      return true;
    });
  }

  bool corrupt_step(std::string_view workflow_id, std::int64_t seq) override {
    std::lock_guard lock(mu_);
    return corrupt_both([&](Tables& t) {
      StepRow* r = row_at(t.steps, workflow_id, seq);
      if (r) flip(r->result);
      return r != nullptr;
    });
  }

  bool corrupt_effect(std::string_view workflow_id, std::string_view effect_id) override {
    std::lock_guard lock(mu_);
    return corrupt_both([&](Tables& t) {
      auto it = t.effects.find({std::string(workflow_id), std::string(effect_id)});
      if (it == t.effects.end()) return false;
      flip(it->second.arguments);
      return true;
    });
  }

  bool corrupt_history(std::string_view task_id, std::int64_t seq) override {
    std::lock_guard lock(mu_);
    return corrupt_both([&](Tables& t) {
      HistoryRow* r = row_at(t.history, task_id, seq);
      if (r) flip(r->message);
      return r != nullptr;
    });
  }

  std::uint64_t commits() const override {
    std::lock_guard lock(mu_);
    return commits_;
  }

 private:
  Status commit_locked(const WriteBatch& batch) {
    Applier applier(live_, /*keep_undo=*/true);
    const bool inject = fail_count_ > 0;
    for (std::size_t i = 0; i < batch.ops().size(); ++i) {
      if (inject && i == fail_after_ops_) break;
      if (auto s = applier.apply(batch.ops()[i]); !s.ok()) {
        applier.rollback();
        return s;
      }
    }
    if (inject) {
      --fail_count_;
      applier.rollback();
      return fail_error_;
    }
    if (options_.capacity_bytes != 0 && live_.bytes > options_.capacity_bytes) {
      applier.rollback();
      return Error(ErrorKind::kTransient, "commit failed: disk full (simulated: " + std::to_string(live_.bytes) +
                                              " bytes over capacity " + std::to_string(options_.capacity_bytes) + ")");
    }
    ++commits_;
    if (options_.durability == Durability::kSynced) {
      apply_durable(batch);
    } else {
      pending_.push_back(batch);
      if (pending_.size() >= options_.batched_sync_every_commits) sync_locked();
    }
    return ok_status();
  }

  void apply_durable(const WriteBatch& batch) {
    // Replays a batch that has just applied cleanly to identical tables: cannot fail.
    Applier applier(durable_, /*keep_undo=*/false);
    for (const auto& op : batch.ops()) (void)applier.apply(op);
  }

  void sync_locked() {
    for (const auto& b : pending_) apply_durable(b);
    pending_.clear();
  }

  Result<std::vector<HistoryRecord>> read_locked(const std::string& id, std::int64_t from_seq, std::size_t limit) {
    std::vector<HistoryRecord> out;
    for (auto it = live_.history.lower_bound({id, from_seq});
         it != live_.history.end() && it->first.first == id && out.size() < limit; ++it) {
      auto r = internal::check(it->second);
      if (!r.ok()) return std::move(r).error();
      out.push_back(std::move(*r));
    }
    return out;
  }

  template <class F>
  bool corrupt_both(F f) {
    bool found = f(live_);
    f(durable_);
    return found;
  }

  MemoryStoreOptions options_;
  mutable std::mutex mu_;
  Tables live_;
  Tables durable_;
  std::vector<WriteBatch> pending_;
  std::size_t fail_count_ = 0;
  Error fail_error_{ErrorKind::kTransient, "commit failed (injected)"};
  std::size_t fail_after_ops_ = 0;
  std::uint64_t commits_ = 0;
};

}  // namespace

Result<std::unique_ptr<MemoryStore>> make_memory_store(const MemoryStoreOptions& options) {
  if (options.batched_sync_every_commits == 0)
    return Error(ErrorKind::kInvalidArgument, "memory store: batched_sync_every_commits must be >= 1");
  return std::unique_ptr<MemoryStore>(std::make_unique<MemoryStoreImpl>(options));
}

}  // namespace nines
