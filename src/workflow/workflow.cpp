// Durable workflows: the engine, step records and the effect journal. See workflow.hpp.
#include "nines/workflow/workflow.hpp"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <set>
#include <vector>

#include "nines/core/check.hpp"
#include "nines/runtime/runtime.hpp"
#include "workflow/committer.hpp"

namespace nines {

namespace internal {

// One run of one workflow: what its records say, and the next step number.
struct WorkflowRun {
  std::string id;
  std::string key_prefix;  // of its idempotency keys: unique per incarnation of the id
  std::map<std::int64_t, StepRecord> steps;
  std::map<std::int64_t, EffectRecord> effects;  // by step number
  std::int64_t next_seq = 1;
  // An effect stopped it for an operator during this run (the error run() returns).
  std::optional<Error> needs_attention;
  // The records and the code disagree (changed code, a malformed record): the run ends with
  // this error and the workflow is left as it is, for a fixed deployment to resume.
  std::optional<Error> stopped;
  // WorkflowContext::stage(): committed with the next record.
  WriteBatch staged;
};

}  // namespace internal

namespace {

// Errors a step or effect would meet again if run again: recorded as its result.
bool is_final_error(ErrorKind k) { return k == ErrorKind::kPermanent || k == ErrorKind::kInvalidArgument; }

std::string seq_text(std::int64_t seq) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%06lld", static_cast<long long>(seq));
  return buf;
}

std::string effect_id_for(std::int64_t seq, const std::string& name) { return seq_text(seq) + ":" + name; }

// The step number and name an effect id was made from ("000012:charge"); nullopt if malformed.
std::optional<std::pair<std::int64_t, std::string>> parse_effect_id(const std::string& effect_id) {
  std::size_t colon = effect_id.find(':');
  if (colon == std::string::npos || colon == 0) return std::nullopt;
  std::int64_t seq = 0;
  for (std::size_t i = 0; i < colon; ++i) {
    if (effect_id[i] < '0' || effect_id[i] > '9') return std::nullopt;
    seq = seq * 10 + (effect_id[i] - '0');
  }
  return std::make_pair(seq, effect_id.substr(colon + 1));
}

// '%', '/' and '#' percent-encoded, so the parts of an idempotency key cannot run together.
std::string escape_key_part(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '%' || c == '/' || c == '#') {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", static_cast<unsigned char>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

std::string utc_text(TimePoint unix_time) {
  const std::int64_t ns = unix_time.time_since_epoch().count();
  std::time_t secs = static_cast<std::time_t>(ns / 1'000'000'000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Appended, not "'" + std::string(s) + "'": g++ 12.2 at -O3 reports a false -Wrestrict in
// operator+(const char*, std::string&&) with a one-character literal.
std::string quoted(std::string_view s) {
  std::string q;
  q.reserve(s.size() + 2);
  q.append(1, '\'').append(s).append(1, '\'');
  return q;
}

// The outcome resolve_effect records for an effect an operator says was not applied: the
// next run runs it (with its idempotency key).
constexpr std::string_view kClearedToRun = "nines:not-applied-cleared-by-operator";

WorkflowOutcome refused(Error e) { return {RunEnd::kRefused, std::move(e)}; }
WorkflowOutcome interrupted(Error e) { return {RunEnd::kInterrupted, std::move(e)}; }

// The outcome of a workflow that is not running: what its record says.
WorkflowOutcome recorded_outcome(const std::string& id, const WorkflowRecord& record) {
  switch (record.status) {
    case WorkflowStatus::kCompleted: return {RunEnd::kCompleted, record.result};
    case WorkflowStatus::kFailed:
    case WorkflowStatus::kCancelled: {
      const RunEnd end = record.status == WorkflowStatus::kFailed ? RunEnd::kFailed : RunEnd::kCancelled;
      std::optional<Error> e = decode_error(record.result);
      if (!e) {
        return {end, Error(ErrorKind::kPermanent, "workflow " + quoted(id) + " " +
                                                      std::string(to_string(record.status)) + ": " + record.result)};
      }
      return {end, std::move(*e)};
    }
    case WorkflowStatus::kNeedsAttention:
      return {RunEnd::kNeedsAttention,
              Error(ErrorKind::kPermanent, "workflow " + quoted(id) + " needs attention: " + record.result)};
    case WorkflowStatus::kRunning: break;
  }
  NINES_CHECK_MSG(false, "recorded_outcome of a running workflow");
}

}  // namespace

std::string_view to_string(RunEnd end) {
  switch (end) {
    case RunEnd::kCompleted: return "completed";
    case RunEnd::kFailed: return "failed";
    case RunEnd::kCancelled: return "cancelled";
    case RunEnd::kNeedsAttention: return "needs_attention";
    case RunEnd::kInterrupted: return "interrupted";
    case RunEnd::kRefused: return "refused";
  }
  return "unknown";
}

// ---- engine ----

struct WorkflowEngine::Impl {
  std::mutex resolve_mu;  // one operator decision at a time
  std::mutex mu;
  std::map<std::string, Body, std::less<>> kinds;
  std::set<std::string, std::less<>> running;

  std::atomic<std::uint64_t> runs{0};
  std::atomic<std::uint64_t> steps_executed{0};
  std::atomic<std::uint64_t> steps_replayed{0};
  std::atomic<std::uint64_t> effects_executed{0};
  std::atomic<std::uint64_t> effects_replayed{0};
  std::atomic<std::uint64_t> effects_checked{0};
  std::atomic<std::uint64_t> needs_attention{0};
  // Last, so it is destroyed first: it finishes its queue while the rest still exists.
  std::unique_ptr<internal::Committer> committer;
};

Result<std::unique_ptr<WorkflowEngine>> WorkflowEngine::create(Environment& env, Store& store,
                                                               WorkflowEngineOptions options) {
  auto invalid = [](std::string what) { return Error(ErrorKind::kInvalidArgument, "workflow engine: " + what); };
  if (options.max_group_batches == 0) return invalid("max_group_batches must be >= 1");
  if (options.max_group_bytes == 0) return invalid("max_group_bytes must be >= 1");
  if (options.max_queued_commits == 0) return invalid("max_queued_commits must be >= 1");
  if (options.max_record_bytes == 0) return invalid("max_record_bytes must be >= 1");
  if (options.max_steps < 1) return invalid("max_steps must be >= 1");
  WorkflowEngineOptions::Commit mode = options.commit;
  if (mode == WorkflowEngineOptions::Commit::kAuto) {
    mode = env.deterministic() ? WorkflowEngineOptions::Commit::kInline : WorkflowEngineOptions::Commit::kThread;
  }
  if (mode == WorkflowEngineOptions::Commit::kThread && env.deterministic()) {
    return invalid("Commit::kThread needs threads; the deterministic environment has one (use kInline or kAuto)");
  }
  std::unique_ptr<WorkflowEngine> engine(new WorkflowEngine(env, store, options));
  if (mode == WorkflowEngineOptions::Commit::kInline) {
    engine->impl_->committer = std::make_unique<internal::InlineCommitter>(store);
  } else {
    auto c = internal::ThreadCommitter::create(env, store,
                                               {.max_group_batches = options.max_group_batches,
                                                .max_group_bytes = options.max_group_bytes,
                                                .max_queued = options.max_queued_commits});
    if (!c.ok()) return std::move(c).error();
    engine->impl_->committer = std::move(*c);
  }
  return engine;
}

WorkflowEngine::WorkflowEngine(Environment& env, Store& store, WorkflowEngineOptions options)
    : env_(env), store_(store), options_(options), impl_(std::make_unique<Impl>()) {}

WorkflowEngine::~WorkflowEngine() { impl_->committer.reset(); }

Status WorkflowEngine::register_kind(std::string kind, Body body) {
  if (kind.empty()) return Error(ErrorKind::kInvalidArgument, "workflow engine: a kind must have a name");
  if (!body) return Error(ErrorKind::kInvalidArgument, "workflow engine: kind " + quoted(kind) + " has no code");
  std::lock_guard lock(impl_->mu);
  if (impl_->kinds.contains(kind)) {
    return Error(ErrorKind::kAlreadyExists, "workflow engine: kind " + quoted(kind) + " is registered already");
  }
  impl_->kinds.emplace(std::move(kind), std::move(body));
  return ok_status();
}

WorkflowEngineStats WorkflowEngine::stats() const {
  WorkflowEngineStats s;
  s.runs = impl_->runs.load();
  s.steps_executed = impl_->steps_executed.load();
  s.steps_replayed = impl_->steps_replayed.load();
  s.effects_executed = impl_->effects_executed.load();
  s.effects_replayed = impl_->effects_replayed.load();
  s.effects_checked = impl_->effects_checked.load();
  s.needs_attention = impl_->needs_attention.load();
  s.commits = impl_->committer->batches();
  s.commit_groups = impl_->committer->groups();
  return s;
}

TimePoint WorkflowEngine::store_now() const { return TimePoint(Duration(env_.unix_time_ns())); }

Task<Status> WorkflowEngine::commit(Context& ctx, WriteBatch batch) {
  return impl_->committer->commit(ctx, std::move(batch));
}

Task<WorkflowOutcome> WorkflowEngine::run_outcome(Context& ctx, std::string kind, std::string id, std::string input) {
  return run_impl(ctx, std::move(kind), std::move(id), std::move(input), /*create=*/true);
}

Task<Result<std::string>> WorkflowEngine::run(Context& ctx, std::string kind, std::string id, std::string input) {
  WorkflowOutcome out = co_await run_impl(ctx, std::move(kind), std::move(id), std::move(input), /*create=*/true);
  co_return std::move(out.result);
}

Task<WorkflowOutcome> WorkflowEngine::run_impl(Context& ctx, std::string kind, std::string id, std::string input,
                                               bool create) {
  if (id.empty())
    co_return refused(Error(ErrorKind::kInvalidArgument, "workflow engine: a workflow id must not be empty"));
  Body body;
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->kinds.find(kind);
    if (it == impl_->kinds.end()) {
      co_return refused(Error(ErrorKind::kNotFound, "workflow engine: no code registered for kind " + quoted(kind) +
                                                        " (workflow " + quoted(id) + ")"));
    }
    body = it->second;
    if (!impl_->running.insert(id).second) {
      co_return refused(Error(ErrorKind::kAlreadyExists, "workflow " + quoted(id) + " is running already"));
    }
  }
  struct Running {
    Impl& impl;
    const std::string& id;
    ~Running() {
      std::lock_guard lock(impl.mu);
      impl.running.erase(id);
    }
  } running_guard{*impl_, id};

  // Start or resume.
  WorkflowRecord record;
  Result<WorkflowRecord> existing = store_.get_workflow(id);
  if (existing.ok()) {
    record = std::move(*existing);
  } else if (existing.error().kind() != ErrorKind::kNotFound) {
    co_return interrupted(std::move(existing).error());
  } else if (!create) {
    co_return refused(std::move(existing).error());  // resume only: gone meanwhile (pruned, deleted)
  }
  const bool fresh = !existing.ok();
  if (!fresh) {
    if (record.kind != kind) {
      co_return refused(Error(ErrorKind::kInvalidArgument, "workflow " + quoted(id) + " exists with kind " +
                                                               quoted(record.kind) + ", not " + quoted(kind)));
    }
    if (record.status != WorkflowStatus::kRunning) co_return recorded_outcome(id, record);
  }
  {
    WriteBatch b;
    const TimePoint now = store_now();
    if (fresh) {
      b.create_workflow(id, kind, input, now);
      record.created_at = now;
      record.input = std::move(input);
      record.attempt = 0;
    }
    b.start_attempt(id, now);
    Status s = co_await commit(ctx, std::move(b));
    if (!s.ok()) co_return interrupted(std::move(s).error().with_context("workflow " + quoted(id)));
  }

  internal::WorkflowRun run;
  run.id = id;
  // The creation time makes the keys of a later workflow with the same id (after this one
  // was pruned) different: a target that remembers keys must not take its effects for ours.
  run.key_prefix = escape_key_part(id) + "#" + std::to_string(record.created_at.time_since_epoch().count());
  if (!fresh) {
    Result<std::vector<StepRecord>> steps = store_.load_steps(id);
    if (!steps.ok()) co_return interrupted(std::move(steps).error());
    for (StepRecord& s : *steps) run.steps.emplace(s.seq, std::move(s));
    Result<std::vector<EffectRecord>> effects = store_.load_effects(id);
    if (!effects.ok()) co_return interrupted(std::move(effects).error());
    for (EffectRecord& e : *effects) {
      auto parsed = parse_effect_id(e.effect_id);
      if (!parsed) {
        co_return interrupted(Error(ErrorKind::kPermanent, "workflow " + quoted(id) + ": malformed effect id " +
                                                               quoted(e.effect_id) + " in the journal"));
      }
      run.effects.emplace(parsed->first, std::move(e));
    }
  }

  impl_->runs.fetch_add(1, std::memory_order_relaxed);
  WorkflowContext wf(*this, run, ctx, id, kind, record.input, record.attempt + 1);
  Result<std::string> r = co_await body(wf);
  // These win over whatever the code returned (it may have ignored the error it was given).
  if (run.needs_attention) co_return WorkflowOutcome{RunEnd::kNeedsAttention, *run.needs_attention};  // recorded
  if (run.stopped) co_return interrupted(*run.stopped);  // the workflow is left as it is

  WriteBatch b;
  RunEnd end = RunEnd::kCompleted;
  if (r.ok() && r->size() > options_.max_record_bytes) {
    r = Error(ErrorKind::kInvalidArgument, "workflow " + quoted(id) + ": its result is " + std::to_string(r->size()) +
                                               " bytes, more than max_record_bytes (" +
                                               std::to_string(options_.max_record_bytes) + ")");
  }
  if (r.ok()) {
    b.set_workflow_status(id, WorkflowStatus::kCompleted, *r, store_now());
  } else if (is_final_error(r.error().kind())) {
    b.set_workflow_status(id, WorkflowStatus::kFailed, encode_error(r.error()), store_now());
    end = RunEnd::kFailed;
  } else {
    co_return interrupted(std::move(r).error());  // stays running: resumable
  }
  b.append(run.staged);
  Status s = co_await commit(ctx, std::move(b));
  if (!s.ok())
    co_return interrupted(std::move(s).error().with_context("workflow " + quoted(id) + ": recording its end"));
  co_return WorkflowOutcome{end, std::move(r)};
}

Result<Pid> WorkflowEngine::resume_all(Context& ctx, std::size_t concurrency) {
  Behavior resumer = [this, concurrency](Context& c) -> Task<> {
    Result<std::size_t> r = co_await resume_all_and_wait(c, concurrency);
    // A store error while listing: the workflows not reached stay running until resumed.
    // The crash is reported (process_crashed, with the error) and seen by a monitor.
    if (!r.ok()) c.exit(ExitReason::crash("nines::Error", "resume_all: " + r.error().to_string()));
  };
  return ctx.spawn(std::move(resumer));
}

Task<Result<std::size_t>> WorkflowEngine::resume_all_and_wait(Context& ctx, std::size_t concurrency) {
  if (concurrency == 0) concurrency = 1;
  std::size_t started = 0;
  std::set<MonitorRef> children;  // monitors of the workflows running now
  std::function<bool(const Message&)> is_child_down = [&children](const Message& m) {
    const Down* d = m.get<Down>();
    return d != nullptr && children.contains(d->ref);
  };
  // On an early return the children run on; their monitors are dropped so no Down is left
  // in this process's mailbox.
  struct Demonitor {
    Context& ctx;
    std::set<MonitorRef>& refs;
    ~Demonitor() {
      for (MonitorRef r : refs) ctx.demonitor(r);
    }
  } demonitor{ctx, children};
  auto too_late = [&] {
    return Error(ErrorKind::kDeadlineExceeded, "resume_all: the deadline passed with " +
                                                   std::to_string(children.size()) + " workflows still running");
  };
  std::string after;
  for (;;) {
    Result<std::vector<WorkflowRecord>> page = store_.list_workflows(WorkflowStatus::kRunning, after, 256);
    if (!page.ok()) co_return std::move(page).error();
    if (page->empty()) break;
    after = page->back().id;
    for (WorkflowRecord& w : *page) {
      while (children.size() >= concurrency) {
        std::optional<Message> m = co_await ctx.receive_if(is_child_down);
        if (!m) co_return too_late();
        children.erase(m->get<Down>()->ref);
      }
      Behavior child = [this, kind = std::move(w.kind), wid = std::move(w.id)](Context& c) -> Task<> {
        (void)co_await run_impl(c, kind, wid, std::string(), /*create=*/false);  // ends in its record
      };
      Result<Pid> pid = ctx.spawn(std::move(child));
      if (!pid.ok()) co_return std::move(pid).error().with_context("resume_all");
      children.insert(ctx.monitor(*pid));
      ++started;
    }
  }
  while (!children.empty()) {
    std::optional<Message> m = co_await ctx.receive_if(is_child_down);
    if (!m) co_return too_late();
    children.erase(m->get<Down>()->ref);
  }
  co_return started;
}

Status WorkflowEngine::resolve_effect(std::string_view workflow_id, std::string_view effect_id,
                                      const EffectResolution& resolution) {
  const std::string where = "resolving effect " + quoted(effect_id) + " of workflow " + quoted(workflow_id);
  if (resolution.applied && resolution.outcome.size() > options_.max_record_bytes) {
    return Error(ErrorKind::kInvalidArgument, where + ": the outcome is more than max_record_bytes");
  }
  // One decision at a time, and never while the workflow runs here: the checks below and the
  // write cannot be overtaken by another resolution or by the workflow itself.
  std::lock_guard lock(impl_->resolve_mu);
  {
    std::lock_guard running_lock(impl_->mu);
    if (impl_->running.contains(workflow_id)) {
      return Error(ErrorKind::kAlreadyExists, where + ": the workflow is running");
    }
  }
  Result<WorkflowRecord> w = store_.get_workflow(workflow_id);
  if (!w.ok()) return std::move(w).error();
  if (w->status != WorkflowStatus::kNeedsAttention) {
    return Error(ErrorKind::kInvalidArgument,
                 where + ": the workflow is " + std::string(to_string(w->status)) + ", not needs_attention");
  }
  Result<std::vector<EffectRecord>> effects = store_.load_effects(workflow_id);
  if (!effects.ok()) return std::move(effects).error();
  const EffectRecord* found = nullptr;
  int others_waiting = 0;
  for (const EffectRecord& e : *effects) {
    if (e.effect_id == effect_id) {
      found = &e;
    } else if (e.state == EffectState::kNeedsAttention) {
      ++others_waiting;
    }
  }
  if (found == nullptr) return Error(ErrorKind::kNotFound, where + ": no such effect");
  if (found->state != EffectState::kNeedsAttention) {
    return Error(ErrorKind::kInvalidArgument,
                 where + ": it is " + std::string(to_string(found->state)) + ", not needs_attention");
  }
  WriteBatch b;
  if (resolution.applied) {
    b.put_effect_outcome(std::string(workflow_id), std::string(effect_id), EffectState::kDone, resolution.outcome,
                         store_now());
  } else {
    // Cleared by the operator: the next run turns this back into a plain intent (durably)
    // and runs the effect once more, with its key (see plan_effect).
    b.put_effect_outcome(std::string(workflow_id), std::string(effect_id), EffectState::kFailed,
                         std::string(kClearedToRun), store_now());
  }
  if (others_waiting == 0) {
    b.set_workflow_status(std::string(workflow_id), WorkflowStatus::kRunning, "", store_now());
  }
  return store_.commit(b);
}

Result<std::size_t> WorkflowEngine::prune_finished(Duration retention, std::size_t limit) {
  if (retention < Duration::zero()) {
    return Error(ErrorKind::kInvalidArgument, "workflow engine: retention must not be negative");
  }
  return store_.prune_finished(store_now() - retention, limit);
}

// ---- steps ----

std::string WorkflowContext::step_context(std::int64_t seq, const std::string& name) const {
  return "workflow " + quoted(id_) + " step " + std::to_string(seq) + " (" + quoted(name) + ")";
}

Error WorkflowContext::stop_run(Error error) {
  if (!run_.stopped) run_.stopped = error;
  return error;
}

std::optional<Error> WorkflowContext::ended() const {
  if (run_.needs_attention) return run_.needs_attention;
  if (run_.stopped) return run_.stopped;
  return std::nullopt;
}

Result<std::int64_t> WorkflowContext::begin_step(const std::string& name, const StepOptions& options,
                                                 std::optional<Result<std::string>>& recorded) {
  if (std::optional<Error> e = ended()) return std::move(*e);
  const std::int64_t seq = run_.next_seq++;
  if (seq > engine_.options().max_steps) {
    return Error(ErrorKind::kBudgetExceeded, step_context(seq, name) + ": more than max_steps (" +
                                                 std::to_string(engine_.options().max_steps) + ") steps");
  }
  if (auto e = run_.effects.find(seq); e != run_.effects.end()) {
    return stop_run(Error(ErrorKind::kInvalidArgument,
                          step_context(seq, name) + ": recorded as effect " + quoted(e->second.effect_id) +
                              "; the workflow's code changed (steps and effects must come in the same order)"));
  }
  auto it = run_.steps.find(seq);
  if (it == run_.steps.end()) return seq;
  const StepRecord& rec = it->second;
  if (rec.name != name) {
    return stop_run(Error(ErrorKind::kInvalidArgument,
                          step_context(seq, name) + ": recorded as step " + quoted(rec.name) +
                              "; the workflow's code changed (steps and effects must come in the same order)"));
  }
  if (!options.persist) return seq;
  engine_.impl_->steps_replayed.fetch_add(1, std::memory_order_relaxed);
  if (rec.status == StepStatus::kOk) {
    recorded.emplace(rec.result);
  } else {
    std::optional<Error> e = decode_error(rec.result);
    if (!e)
      return stop_run(Error(ErrorKind::kPermanent, step_context(seq, name) + ": its recorded error is malformed"));
    recorded.emplace(std::move(*e));
  }
  return seq;
}

Task<Status> WorkflowContext::record_step(std::int64_t seq, std::string name, const Result<std::string>& result) {
  engine_.impl_->steps_executed.fetch_add(1, std::memory_order_relaxed);
  if (!result.ok() && !is_final_error(result.error().kind())) co_return ok_status();  // runs again on resume
  std::string encoded = result.ok() ? std::string() : encode_error(result.error());
  const std::string& value = result.ok() ? *result : encoded;
  if (value.size() > engine_.options().max_record_bytes) {
    co_return Error(ErrorKind::kInvalidArgument, step_context(seq, name) + ": its result is " +
                                                     std::to_string(value.size()) +
                                                     " bytes, more than max_record_bytes (" +
                                                     std::to_string(engine_.options().max_record_bytes) + ")");
  }
  WriteBatch b;
  b.put_step(id_, seq, name, result.ok() ? StepStatus::kOk : StepStatus::kError, value, engine_.store_now());
  Status s = co_await commit_record(std::move(b));
  if (!s.ok()) co_return std::move(s).error().with_context(step_context(seq, name) + ": recording its result");
  co_return ok_status();
}

Task<Status> WorkflowContext::commit_record(WriteBatch batch) {
  if (!run_.staged.empty()) {
    batch.append(run_.staged);
    run_.staged.clear();  // on a failed commit the run ends: the next run stages them again
  }
  co_return co_await engine_.commit(ctx_, std::move(batch));
}

void WorkflowContext::stage(WriteBatch batch) { run_.staged.append(batch); }

namespace {
// A child of WorkflowContext::effects reports its effect's result.
struct ConcurrentEffectDone {
  std::uint64_t token = 0;
  std::size_t index = 0;
  Result<std::string> result = Error(ErrorKind::kInternal, "unset");
};
}  // namespace

Task<std::vector<Result<std::string>>> WorkflowContext::effects(std::vector<EffectOptions> options,
                                                                ConcurrentEffectFn fn, std::size_t max_concurrent) {
  NINES_CHECK_MSG(max_concurrent >= 1, "WorkflowContext::effects: max_concurrent must be >= 1");
  NINES_CHECK_MSG(static_cast<bool>(fn), "WorkflowContext::effects: no function");
  const std::size_t n = options.size();
  std::vector<std::optional<Result<std::string>>> results(n);
  std::vector<EffectPlan> plans(n);
  std::vector<Pid> running(n);  // the child of each effect still running (Pid{} otherwise)
  auto shared_fn = std::make_shared<ConcurrentEffectFn>(std::move(fn));
  const std::uint64_t token = engine_.env().random_u64() | 1;  // tells this call's reports from others'
  const Pid self = ctx_.self();
  std::size_t in_flight = 0;

  // Takes one report; false when the deadline passed first.
  auto receive_one = [&]() -> Task<bool> {
    // Named first (g++ 12: a capturing lambda temporary inside co_await is destroyed twice).
    std::function<bool(const Message&)> is_report = [token](const Message& msg) {
      const auto* d = msg.get<ConcurrentEffectDone>();
      return d != nullptr && d->token == token;
    };
    std::optional<Message> m = co_await ctx_.receive_if(std::move(is_report));
    if (!m) co_return false;
    ConcurrentEffectDone* d = m->get<ConcurrentEffectDone>();
    NINES_CHECK(d != nullptr && d->index < n && running[d->index] != Pid{});
    running[d->index] = Pid{};
    --in_flight;
    results[d->index] = co_await finish_effect(plans[d->index], std::move(d->result));
    co_return true;
  };

  bool timed_out = false;
  for (std::size_t i = 0; i < n && !timed_out; ++i) {
    while (in_flight >= max_concurrent && !timed_out) timed_out = !co_await receive_one();
    if (timed_out) break;
    if (std::optional<Error> e = ended()) {  // a sibling's outcome is unknown: start nothing more
      results[i] = std::move(*e);
      continue;
    }
    plans[i] = co_await plan_effect(options[i]);
    if (plans[i].done) {
      results[i] = std::move(*plans[i].done);
      continue;
    }
    Behavior child = [shared_fn, i, key = plans[i].idempotency_key, self, token](Context& c) -> Task<> {
      Result<std::string> r = co_await (*shared_fn)(i, c, key);
      ConcurrentEffectDone done{.token = token, .index = i, .result = std::move(r)};
      (void)co_await c.send(self, std::move(done));  // the parent gone: nothing to report to
    };
    Result<Pid> pid = ctx_.spawn_link(std::move(child));
    if (!pid.ok()) {
      // Not started, so not applied; but its intent is recorded, so it is "unknown" to the journal.
      results[i] =
          co_await finish_effect(plans[i], std::move(pid).error().with_context("starting the effect's process"));
      continue;
    }
    running[i] = *pid;
    ++in_flight;
  }
  while (in_flight > 0 && !timed_out) timed_out = !co_await receive_one();
  if (timed_out) {
    Error e(ErrorKind::kDeadlineExceeded,
            "workflow " + quoted(id_) + ": the deadline passed while concurrent effects were running");
    for (std::size_t i = 0; i < n; ++i) {
      if (running[i] != Pid{}) {
        ctx_.unlink(running[i]);
        ctx_.kill_on_purpose(running[i]);
      }
      if (!results[i]) results[i] = e;
    }
    stop_run(e);
  }
  std::vector<Result<std::string>> out;
  out.reserve(n);
  for (auto& r : results) {
    NINES_DCHECK(r.has_value());
    out.push_back(r ? std::move(*r) : Result<std::string>(Error(ErrorKind::kInternal, "effect without a result")));
  }
  co_return out;
}

// ---- effects ----

Task<Error> WorkflowContext::to_needs_attention(const EffectRecord& rec, std::string why) {
  std::string evidence = std::string(to_string(rec.nature)) + " effect " + quoted(rec.effect_id) +
                         " (idempotency key " + quoted(rec.idempotency_key) + ", arguments " +
                         quoted(rec.arguments.substr(0, 256)) + ", intent recorded " + utc_text(rec.intent_at) +
                         "): " + why;
  WriteBatch b;
  if (rec.state != EffectState::kNeedsAttention) {
    b.put_effect_outcome(id_, rec.effect_id, EffectState::kNeedsAttention, std::nullopt, engine_.store_now());
  }
  b.set_workflow_status(id_, WorkflowStatus::kNeedsAttention, evidence, engine_.store_now());
  Status s = co_await commit_record(std::move(b));
  if (!s.ok()) co_return std::move(s).error().with_context("workflow " + quoted(id_) + ": recording needs_attention");
  engine_.impl_->needs_attention.fetch_add(1, std::memory_order_relaxed);
  // Not the arguments nor the idempotency key (they are in the record, for the operator who
  // resolves it): a log line is no place for what an effect was called with.
  NINES_LOG(engine_.env().logger(), LogLevel::kError, "workflow_needs_attention",
            "workflow stopped for an operator's decision (resolve_effect)", {"workflow", id_}, {"kind", kind_},
            {"attempt", attempt_}, {"effect", rec.effect_id}, {"nature", to_string(rec.nature)}, {"why", why});
  Error e(ErrorKind::kPermanent, "workflow " + quoted(id_) + " needs attention: " + evidence);
  run_.needs_attention = e;
  co_return e;
}

Task<WorkflowContext::EffectPlan> WorkflowContext::plan_effect(const EffectOptions& options) {
  EffectPlan plan;
  if (std::optional<Error> e = ended()) {
    plan.done.emplace(std::move(*e));
    co_return plan;
  }
  plan.seq = run_.next_seq++;
  const std::string where =
      "workflow " + quoted(id_) + " effect " + std::to_string(plan.seq) + " (" + quoted(options.name) + ")";
  if (std::optional<Error> refused = refuse_effect(options, plan.seq, where)) {
    plan.done.emplace(std::move(*refused));
    co_return plan;
  }
  plan.effect_id = effect_id_for(plan.seq, options.name);
  if (auto it = run_.effects.find(plan.seq); it == run_.effects.end()) {
    co_await record_intent(plan, options, where);
  } else {
    co_await replay_effect(plan, it->second, options, where);
  }
  // An effect that is to run has its intent durable, under the key it keeps for good.
  NINES_DCHECK(plan.done || (!plan.idempotency_key.empty() && !plan.effect_id.empty()));
  co_return plan;
}

std::optional<Error> WorkflowContext::refuse_effect(const EffectOptions& options, std::int64_t seq,
                                                    const std::string& where) {
  if (options.name.empty()) {
    return Error(ErrorKind::kInvalidArgument,
                 "workflow " + quoted(id_) + " effect " + std::to_string(seq) + ": an effect needs a name");
  }
  if (seq > engine_.options().max_steps)
    return Error(ErrorKind::kBudgetExceeded, where + ": more than max_steps steps");
  if (options.arguments.size() > engine_.options().max_record_bytes) {
    return Error(ErrorKind::kInvalidArgument, where + ": its arguments are more than max_record_bytes");
  }
  if (auto st = run_.steps.find(seq); st != run_.steps.end()) {
    return stop_run(Error(ErrorKind::kInvalidArgument,
                          where + ": recorded as step " + quoted(st->second.name) +
                              "; the workflow's code changed (steps and effects must come in the same order)"));
  }
  return std::nullopt;
}

// First time: the intent is durable before the effect may run.
Task<> WorkflowContext::record_intent(EffectPlan& plan, const EffectOptions& options, const std::string& where) {
  NINES_DCHECK(!run_.effects.contains(plan.seq));
  plan.idempotency_key = run_.key_prefix + "/" + std::to_string(plan.seq) + "/" + escape_key_part(options.name);
  EffectIntent intent;
  intent.workflow_id = id_;
  intent.effect_id = plan.effect_id;
  intent.idempotency_key = plan.idempotency_key;
  intent.nature = options.nature;
  intent.arguments = options.arguments;
  intent.recorded_at = engine_.store_now();
  if (options.nature == EffectNature::kReadOnly) {
    // Committed with the outcome (finish_effect): an interrupted read-only effect runs again.
    plan.deferred_intent = std::move(intent);
    engine_.impl_->effects_executed.fetch_add(1, std::memory_order_relaxed);
    co_return;
  }
  WriteBatch b;
  b.put_effect_intent(std::move(intent));
  Status s = co_await commit_record(std::move(b));
  if (!s.ok()) {
    plan.done.emplace(stop_run(std::move(s).error().with_context(where + ": recording its intent")));
  } else {
    engine_.impl_->effects_executed.fetch_add(1, std::memory_order_relaxed);
  }
}

// The journal has a record for this step: its outcome, or an operator's decision, or an
// intent without an outcome (the effect was interrupted).
Task<> WorkflowContext::replay_effect(EffectPlan& plan, const EffectRecord& rec, const EffectOptions& options,
                                      const std::string& where) {
  auto& stats = *engine_.impl_;
  if (rec.effect_id != plan.effect_id) {
    // Another effect (a renamed or moved one) holds this step: running this one under a new
    // key would apply it again.
    plan.done.emplace(stop_run(
        Error(ErrorKind::kInvalidArgument, where + ": recorded as effect " + quoted(rec.effect_id) +
                                               "; the workflow's code changed (steps and effects must come in the same "
                                               "order)")));
    co_return;
  }
  plan.idempotency_key = rec.idempotency_key;  // the key it was started with, always
  switch (rec.state) {
    case EffectState::kDone:
      stats.effects_replayed.fetch_add(1, std::memory_order_relaxed);
      plan.done.emplace(rec.outcome.value_or(std::string()));
      co_return;
    case EffectState::kFailed: {
      if (rec.outcome && *rec.outcome == kClearedToRun) {
        // An operator said it was not applied. Back to a plain intent, durably, before it runs:
        // if this run is interrupted too, the next one applies the nature rule again.
        WriteBatch b;
        b.put_effect_outcome(id_, plan.effect_id, EffectState::kIntent, std::nullopt, engine_.store_now());
        Status s = co_await commit_record(std::move(b));
        if (!s.ok()) {
          plan.done.emplace(std::move(s).error().with_context(where + ": clearing it to run"));
        } else {
          stats.effects_executed.fetch_add(1, std::memory_order_relaxed);
        }
        co_return;
      }
      stats.effects_replayed.fetch_add(1, std::memory_order_relaxed);
      std::optional<Error> e = decode_error(rec.outcome.value_or(std::string()));
      plan.done.emplace(e ? std::move(*e) : Error(ErrorKind::kPermanent, where + ": failed"));
      co_return;
    }
    case EffectState::kNeedsAttention: {
      // Still waiting for an operator (another effect of it was resolved first).
      Error e = co_await to_needs_attention(rec, "still waiting for an operator's decision (resolve_effect)");
      plan.done.emplace(std::move(e));
      co_return;
    }
    case EffectState::kIntent: co_await resume_interrupted(plan, rec, options, where); co_return;
  }
}

// Interrupted: an intent without an outcome. By its declared nature (as recorded).
Task<> WorkflowContext::resume_interrupted(EffectPlan& plan, const EffectRecord& rec, const EffectOptions& options,
                                           const std::string& where) {
  NINES_DCHECK(rec.state == EffectState::kIntent && !plan.done);
  auto& stats = *engine_.impl_;
  switch (rec.nature) {
    case EffectNature::kReadOnly:
    case EffectNature::kIdempotent: break;  // run again with the same key
    case EffectNature::kCheckable: {
      if (!options.check) {
        Error e = co_await to_needs_attention(
            rec, "checkable and interrupted, but the code gives no check function to ask whether it was applied");
        plan.done.emplace(std::move(e));
        co_return;
      }
      stats.effects_checked.fetch_add(1, std::memory_order_relaxed);
      Result<std::optional<std::string>> applied = co_await options.check(ctx_, plan.idempotency_key);
      if (!applied.ok()) {
        if (is_final_error(applied.error().kind())) {
          Error e =
              co_await to_needs_attention(rec, "interrupted, and asking whether it was applied failed for good (" +
                                                   applied.error().to_string() + ")");
          plan.done.emplace(std::move(e));
        } else {
          plan.done.emplace(std::move(applied).error().with_context(where + ": asking whether it was applied"));
        }
        co_return;
      }
      if (*applied) {
        WriteBatch b;
        b.put_effect_outcome(id_, plan.effect_id, EffectState::kDone, **applied, engine_.store_now());
        Status s = co_await commit_record(std::move(b));
        if (!s.ok()) {
          plan.done.emplace(std::move(s).error().with_context(where + ": recording its checked outcome"));
        } else {
          plan.done.emplace(std::move(**applied));
        }
        co_return;
      }
      break;  // not applied: run it
    }
    case EffectNature::kUnsafe: {
      Error e = co_await to_needs_attention(
          rec, "interrupted after its intent was recorded; whether it was applied is unknown, so it is not run again");
      plan.done.emplace(std::move(e));
      co_return;
    }
  }
  stats.effects_executed.fetch_add(1, std::memory_order_relaxed);
}

Task<Result<std::string>> WorkflowContext::finish_effect(const EffectPlan& plan, Result<std::string> result) {
  // Only an effect that plan_effect let run is finished: its step was taken, its intent is in
  // the journal under its key.
  NINES_DCHECK(!plan.done && plan.seq > 0 && plan.seq < run_.next_seq);
  NINES_DCHECK(!plan.effect_id.empty() && !plan.idempotency_key.empty());
  const std::string where = "workflow " + quoted(id_) + " effect " + quoted(plan.effect_id);
  if (!result.ok() && !is_final_error(result.error().kind())) {
    // Outcome unknown: the intent stays, and this run ends here (even if the code would go
    // on), so the next run resolves the effect by its nature before anything after it runs.
    co_return stop_run(std::move(result).error().with_context(where + ": outcome unknown"));
  }
  WriteBatch b;
  if (plan.deferred_intent) b.put_effect_intent(*plan.deferred_intent);
  if (plan.deferred_intent && !(result.ok() && result->size() > engine_.options().max_record_bytes)) {
    // Read-only: its record need not be durable before the code goes on (lost in a crash, it
    // runs again), so it is staged and commits with the next record (stage()).
    if (result.ok()) {
      b.put_effect_outcome(id_, plan.effect_id, EffectState::kDone, *result, engine_.store_now());
    } else {
      b.put_effect_outcome(id_, plan.effect_id, EffectState::kFailed, encode_error(result.error()),
                           engine_.store_now());
    }
    stage(std::move(b));
    co_return result;
  }
  if (result.ok() && result->size() > engine_.options().max_record_bytes) {
    // Applied, but its outcome cannot be kept: recorded as done (never run again) without
    // it, and the run fails for good (a replay could not give the same answer).
    b.put_effect_outcome(id_, plan.effect_id, EffectState::kDone,
                         "nines: outcome of " + std::to_string(result->size()) + " bytes not kept (max_record_bytes)",
                         engine_.store_now());
    result =
        Error(ErrorKind::kInvalidArgument, where + ": applied, but its outcome (" + std::to_string(result->size()) +
                                               " bytes) is more than max_record_bytes");
  } else if (result.ok()) {
    b.put_effect_outcome(id_, plan.effect_id, EffectState::kDone, *result, engine_.store_now());
  } else {
    b.put_effect_outcome(id_, plan.effect_id, EffectState::kFailed, encode_error(result.error()), engine_.store_now());
  }
  Status s = co_await commit_record(std::move(b));
  if (!s.ok()) co_return stop_run(std::move(s).error().with_context(where + ": recording its outcome"));
  co_return result;
}

Result<WorkflowCounts> WorkflowEngine::count_workflows() const { return store_.count_workflows(); }

}  // namespace nines
