// nines/workflow/workflow.hpp: durable workflows on a Store: steps recorded as they complete,
// side effects through an effect journal, and resume after a crash (kill -9 included) from
// the last completed step, with no effect silently applied twice.
//
//   auto engine = WorkflowEngine::create(env, store).value();
//   engine->register_kind("refund", [](WorkflowContext& wf) -> Task<Result<std::string>> {
//     auto order = co_await wf.step<std::string>("load order", [&](Context& ctx) {
//       return orders.get(ctx, wf.input());
//     });
//     if (!order.ok()) co_return order.error();
//     // Named first: an aggregate temporary inside co_await is miscompiled by g++ 12 (task.hpp).
//     EffectOptions refund{.name = "refund", .nature = EffectNature::kIdempotent, .arguments = *order};
//     auto paid = co_await wf.effect(std::move(refund), [&](Context& ctx, const std::string& key) {
//       return payments.refund(ctx, *order, key);  // passes the key on: applied once
//     });
//     if (!paid.ok()) co_return paid.error();
//     co_return *paid;
//   });
//   // after a restart, in a process: resumes what was left running, in the background
//   engine->resume_all(ctx).value();
//   // new work, at once (not behind the resumed workflows):
//   WorkflowOutcome out = co_await engine->run_outcome(ctx, "refund", "refund-order-42", "order-42");
//   if (out.end == RunEnd::kNeedsAttention) page_an_operator(out.result.error());
//   // or, when only the value matters:
//   Result<std::string> r = co_await engine->run(ctx, "refund", "refund-order-43", "order-43");
//
// A workflow has a stable id chosen by the caller, a kind (the name its code is registered
// under), an input, numbered steps with recorded results, and a final result or error.
// run() with an id that exists resumes it (a finished workflow returns its recorded result
// without running anything).
//
// Steps. The workflow's code must be deterministic in the sequence of steps and effects it
// makes: the n-th step() or effect() call is step n. A step whose result is recorded
// returns that result on resume without running again (model calls included: a resumed
// agent does not pay twice). A step's result is recorded when it completes with a value or
// with a permanent error (kPermanent, kInvalidArgument: it would fail the same way again);
// other errors (transient, timeout, deadline, cancelled, ...) are not recorded, so the step
// runs again on resume. A record at step n that is not what the code now does there (a
// step of another name, an effect where a step is, or the reverse) is an error naming both
// ("the workflow's code changed"): the run ends with it and the workflow is left running, so
// a fixed deployment can resume it; the same holds for a record that cannot be decoded.
// StepOptions::persist = false declares a step
// whose result is not essential (a cache, a temporary file): it runs every time and is
// never recorded.
//
// Effects (the journal). effect() commits the intent (effect id, idempotency key derived
// from the workflow id and the step, the arguments, the nature) durably before the effect
// function runs, and the outcome after. A kReadOnly effect is recorded after it ran, intent
// and outcome together, and not committed at once but with the run's next record (stage()):
// a read-only effect whose record a crash lost simply runs again, so nothing is gained by
// committing ahead of the code that follows. An effect found on resume with an intent and no
// outcome was interrupted: its outcome is unknown, and its declared nature decides:
//  - kReadOnly, kIdempotent: run again, with the same idempotency key (which the effect
//    passes on, e.g. as an Idempotency-Key header, so the target applies it once);
//  - kCheckable: ask the target with EffectOptions::check whether the key was applied: if so
//    its answer is recorded as the outcome, if not the effect runs (again with the key); a
//    check that fails transiently is asked again next run; one that fails for good (or a
//    missing check function) sends the effect to needs_attention, like an unsafe one;
//  - kUnsafe: never run again automatically: the effect and the workflow go to
//    needs_attention with the evidence (arguments, key, when the intent was recorded), and
//    run() fails with kPermanent saying so. An operator decides with resolve_effect().
// An effect function that returns a permanent error records it as the outcome (the target
// refused; it was not applied). Any other error (or a failed commit of the outcome) leaves
// the intent without an outcome and ends the run there, whatever the code does with the
// error: the next run treats the effect as interrupted, by the rules above. Retries of an effect belong inside
// its function (a resilience Pipeline, with the same key): calling effect() again from the
// workflow's code is another effect, with another key. Once an effect has stopped the run
// for an operator, further step() and effect() calls fail with that error, and run() returns
// it whatever the code does with it.
//
// Idempotency keys are "<workflow id>#<its creation time in ns>/<step>/<effect name>", with
// '%', '/' and '#' in the id and name percent-encoded: unique per workflow, per step, and per
// incarnation of an id (a workflow pruned and started again under the same id gets new keys).
// A resumed effect always uses the key recorded with its intent.
//
// Operator decisions (resolve_effect): "applied" records the given outcome; "not applied"
// clears the effect, and the next run turns it back into a plain intent (committed) before
// running it once more with its key, so an interruption of that run is again resolved by
// its nature (an unsafe effect stops for the operator again, it is not run a third time).
//
// Durability: every step record and effect intent/outcome is committed before the code
// after it runs; with Durability::kSynced (the store's default) a committed record survives
// kill -9 and power loss. Commits of concurrent workflows are grouped: with a committer
// thread (the default in the real environment) a process waiting for its commit is
// suspended, and the batches waiting together share one transaction and one sync; no
// process sees its record as durable before it is. In the deterministic environment
// commits run inline (the memory store does not block).
//
// Errors: a corrupt record is the store's kPermanent error naming the workflow and step; the
// workflow is left as it is (not marked failed: the data, not the workflow, is bad).
//
// Limits: one engine runs a given workflow id at most once at a time (a second run() of a
// running id fails with kAlreadyExists). Several engines on one store (many nodes) would
// need leases: not done (the scale-out issue).
//
// Ownership: the engine borrows the Environment and the Store (both must outlive it); a
// WorkflowContext lives in the frame of run() and is valid only inside the workflow's code.
// Thread-safety: every WorkflowEngine member may be called from any process or thread;
// a WorkflowContext belongs to the one process running the workflow.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"
#include "nines/store/store.hpp"
#include "nines/workflow/codec.hpp"

namespace nines {

class WorkflowContext;
class WorkflowEngine;

namespace internal {
class Committer;
struct WorkflowRun;
}  // namespace internal

struct WorkflowEngineOptions {
  enum class Commit : std::uint8_t {
    kAuto,    // kThread in the real environment, kInline in the deterministic one
    kInline,  // commit on the calling worker thread (blocks it for the commit)
    kThread,  // a committer thread groups concurrent commits; committing processes suspend
  };
  Commit commit = Commit::kAuto;
  // kThread: most batches and bytes merged into one backend commit (>= 1).
  std::size_t max_group_batches = 256;
  std::size_t max_group_bytes = std::size_t{8} << 20;
  // kThread: commits queued at once; beyond, commit fails at once with kTransient (>= 1).
  std::size_t max_queued_commits = 100'000;
  // Largest step result or effect outcome recorded, in bytes; larger is kInvalidArgument.
  std::size_t max_record_bytes = std::size_t{16} << 20;
  // Largest number of steps (and effects) one workflow may make (bounds a looping
  // workflow's records); beyond, the step fails with kBudgetExceeded.
  std::int64_t max_steps = 100'000;
};

struct StepOptions {
  // false: the result is not essential (a cache, a temporary file): the step runs every time
  // and nothing is recorded. It still takes its place in the numbering.
  bool persist = true;
};

struct EffectOptions {
  std::string name;  // names the effect in the journal and in errors; not empty
  EffectNature nature = EffectNature::kUnsafe;
  std::string arguments;  // recorded with the intent (the evidence an operator sees)
  // kCheckable only: asks the target whether the effect with this idempotency key was
  // applied: its outcome if so, nullopt if not, an error if it cannot tell (the run fails
  // with that error and the question is asked again next time).
  std::function<Task<Result<std::optional<std::string>>>(Context&, const std::string& idempotency_key)> check;
};

// What an operator decided about an effect in needs_attention.
struct EffectResolution {
  bool applied = false;  // true: it was applied, with `outcome`; false: it was not (it will run)
  std::string outcome;
};

// How one run() of a workflow ended, as a value (WorkflowEngine::run_outcome).
enum class RunEnd : std::uint8_t {
  kCompleted,       // finished with a value (now or earlier): `result` holds it
  kFailed,          // finished with a permanent error of its code: `result` holds it
  kCancelled,       // finished as cancelled: `result` holds the recorded error
  kNeedsAttention,  // stopped for an operator (an unsafe effect of unknown outcome): `result` is the
                    // kPermanent error with the evidence; resolve_effect(), then run again
  kInterrupted,     // stopped before its end, left running in the store: a non-permanent error of the
                    // code, a failed commit, a store error, or records the code no longer matches;
                    // `result` says which; running again resumes it (after a fix, for the last two)
  kRefused,         // not run: an empty id, an unregistered kind, the id exists with another kind,
                    // or this engine is running it already (kAlreadyExists); nothing changed
};
std::string_view to_string(RunEnd end);

struct WorkflowOutcome {
  RunEnd end = RunEnd::kRefused;
  Result<std::string> result = Error(ErrorKind::kInternal, "no outcome");
  // completed, failed or cancelled: running it again returns the same outcome, runs nothing.
  bool finished() const { return end == RunEnd::kCompleted || end == RunEnd::kFailed || end == RunEnd::kCancelled; }
};

struct WorkflowEngineStats {
  std::uint64_t runs = 0;              // run() calls that ran workflow code
  std::uint64_t steps_executed = 0;    // step functions run
  std::uint64_t steps_replayed = 0;    // steps answered from their record
  std::uint64_t effects_executed = 0;  // effect functions run (first time or again)
  std::uint64_t effects_replayed = 0;  // effects answered from their recorded outcome
  std::uint64_t effects_checked = 0;   // interrupted checkable effects asked about
  std::uint64_t needs_attention = 0;   // effects stopped for an operator
  std::uint64_t commits = 0;           // batches committed
  std::uint64_t commit_groups = 0;     // backend commits they took (kThread groups them)
};

class WorkflowContext {
 public:
  WorkflowContext(const WorkflowContext&) = delete;
  WorkflowContext& operator=(const WorkflowContext&) = delete;

  const std::string& id() const { return id_; }
  const std::string& kind() const { return kind_; }
  const std::string& input() const { return input_; }
  // 1 on the first run, 2 on the first resume, ...
  std::int64_t attempt() const { return attempt_; }
  Context& ctx() { return ctx_; }

  // Step n (see the top of this file). fn(ctx) must return Task<Result<T>>; T must have a
  // Codec (codec.hpp). Co_await at once.
  template <class T, class F>
  Task<Result<T>> step(std::string name, F fn, StepOptions options = {}) {
    static_assert(std::is_same_v<std::invoke_result_t<F&, Context&>, Task<Result<T>>>,
                  "WorkflowContext::step<T>: fn(ctx) must return Task<Result<T>>");
    std::optional<Result<std::string>> recorded;
    auto seq = begin_step(name, options, recorded);
    if (!seq.ok()) co_return std::move(seq).error();
    if (recorded) {
      if (!recorded->ok()) co_return std::move(*recorded).error();
      Result<T> v = Codec<T>::decode(**recorded);
      if (!v.ok())
        co_return stop_run(std::move(v).error().with_context(step_context(*seq, name) + ": its recorded result"));
      co_return v;
    }
    Result<T> r = co_await fn(ctx_);
    if (!options.persist) co_return r;
    Result<std::string> bytes = r.ok() ? Result<std::string>(Codec<T>::encode(*r)) : Result<std::string>(r.error());
    Status s = co_await record_step(*seq, std::move(name), bytes);
    if (!s.ok()) co_return std::move(s).error();
    co_return r;
  }

  // Effect n: journaled (see the top of this file). fn(ctx, idempotency_key) must return
  // Task<Result<std::string>> (the outcome). Co_await at once.
  template <class F>
  Task<Result<std::string>> effect(EffectOptions options, F fn) {
    static_assert(std::is_same_v<std::invoke_result_t<F&, Context&, const std::string&>, Task<Result<std::string>>>,
                  "WorkflowContext::effect: fn(ctx, key) must return Task<Result<std::string>>");
    EffectPlan plan = co_await plan_effect(options);
    if (plan.done) co_return std::move(*plan.done);
    Result<std::string> r = co_await fn(ctx_, plan.idempotency_key);
    co_return co_await finish_effect(plan, std::move(r));
  }

  // Effects n, n+1, ... (one per options[i]) run at once: each in a process of its own, linked
  // to this one, at most max_concurrent (>= 1) at a time. Each is journaled exactly as
  // effect() journals one (its intent durable before it starts, its outcome after), and they
  // take their step numbers in the order given, so a restart finds each at the same step and
  // resolves an interrupted one by its nature. fn(i, ctx, key) runs in the child, with the
  // child's Context, and must return Task<Result<std::string>>; it is copied into each child
  // and must not refer to the caller's frame (a killed workflow process leaves its children to
  // the link's kill signal, a moment later). Results come back in the order given. When one
  // effect's outcome is unknown (a non-permanent error) the run ends as with effect(): the
  // effects not yet started are not started (their result is that error), and those running
  // finish, with their outcomes recorded. The caller's deadline passing ends the run too: the
  // children still running are killed (their outcome unknown). Co_await at once.
  using ConcurrentEffectFn = std::function<Task<Result<std::string>>(std::size_t i, Context&, const std::string& key)>;
  Task<std::vector<Result<std::string>>> effects(std::vector<EffectOptions> options, ConcurrentEffectFn fn,
                                                 std::size_t max_concurrent = 8);

  // Writes committed with the next record this run commits (a step's result, an effect's
  // intent or outcome, an operator stop, or the workflow's end), in the same atomic batch: data
  // that must become durable exactly when that record does (the agent layer's conversation
  // history, written once per step and never ahead of the step that made it). Dropped if the
  // run ends before another record is committed: the next run replays the same steps, and
  // the code stages them again.
  void stage(WriteBatch batch);

 private:
  friend class WorkflowEngine;
  friend struct internal::WorkflowRun;

  struct EffectPlan {
    std::int64_t seq = 0;
    std::string effect_id;
    std::string idempotency_key;
    std::optional<Result<std::string>> done;  // the effect's result without running it
    // kReadOnly: the intent, committed with the outcome rather than before the effect runs.
    std::optional<EffectIntent> deferred_intent;
  };

  WorkflowContext(WorkflowEngine& engine, internal::WorkflowRun& run, Context& ctx, std::string id, std::string kind,
                  std::string input, std::int64_t attempt)
      : engine_(engine),
        run_(run),
        ctx_(ctx),
        id_(std::move(id)),
        kind_(std::move(kind)),
        input_(std::move(input)),
        attempt_(attempt) {}

  // Ends the run with `error` (records and code disagree) and leaves the workflow as it is.
  Error stop_run(Error error);
  // The error that ended this run already (needs_attention, or stop_run), if any.
  std::optional<Error> ended() const;
  // Puts the effect and the workflow in needs_attention with the evidence; the run's error.
  Task<Error> to_needs_attention(const EffectRecord& rec, std::string why);
  // Takes the next step number; sets `recorded` when the step has a record.
  Result<std::int64_t> begin_step(const std::string& name, const StepOptions& options,
                                  std::optional<Result<std::string>>& recorded);
  Task<Status> record_step(std::int64_t seq, std::string name, const Result<std::string>& result);
  Task<EffectPlan> plan_effect(const EffectOptions& options);
  // The steps of plan_effect: refuse a call that cannot be an effect here; then record the
  // intent of a first run, or replay what the journal holds (replay_effect), which for an
  // interrupted intent decides by the effect's nature (resume_interrupted).
  std::optional<Error> refuse_effect(const EffectOptions& options, std::int64_t seq, const std::string& where);
  Task<> record_intent(EffectPlan& plan, const EffectOptions& options, const std::string& where);
  Task<> replay_effect(EffectPlan& plan, const EffectRecord& rec, const EffectOptions& options,
                       const std::string& where);
  Task<> resume_interrupted(EffectPlan& plan, const EffectRecord& rec, const EffectOptions& options,
                            const std::string& where);
  Task<Result<std::string>> finish_effect(const EffectPlan& plan, Result<std::string> result);
  // Commits a batch of this run's records with the staged writes (stage()).
  Task<Status> commit_record(WriteBatch batch);
  std::string step_context(std::int64_t seq, const std::string& name) const;

  WorkflowEngine& engine_;
  internal::WorkflowRun& run_;
  Context& ctx_;
  std::string id_;
  std::string kind_;
  std::string input_;
  std::int64_t attempt_;
};

class WorkflowEngine {
 public:
  using Body = std::function<Task<Result<std::string>>(WorkflowContext&)>;

  // kInvalidArgument for bad options; kInvalidArgument for Commit::kThread on the
  // deterministic environment (it has no threads).
  static Result<std::unique_ptr<WorkflowEngine>> create(Environment& env, Store& store,
                                                        WorkflowEngineOptions options = {});
  // Waits for queued commits, then stops the committer thread. No run() may be in progress.
  ~WorkflowEngine();
  WorkflowEngine(const WorkflowEngine&) = delete;
  WorkflowEngine& operator=(const WorkflowEngine&) = delete;

  // The code of a kind of workflow. kAlreadyExists if the kind is registered; kInvalidArgument
  // for an empty kind or body. Register every kind before running or resuming workflows.
  Status register_kind(std::string kind, Body body);

  // Starts workflow `id` of `kind` with `input`, or resumes it if it exists, and runs it to
  // its end in the calling process. The outcome says how it ended (RunEnd) with the value or
  // the error:
  //  - kCompleted, kFailed, kCancelled: the recorded result or error of a finished workflow
  //    (nothing runs), or of this run; a permanent error of the code (kPermanent,
  //    kInvalidArgument) finishes it as failed;
  //  - kNeedsAttention: kPermanent "needs attention" for a workflow stopped for an operator;
  //  - kInterrupted: a non-permanent error of the code, or the store's error (a failed commit,
  //    a corrupt record): the workflow stays running, as it was; running again resumes it;
  //  - kRefused: kNotFound for an unregistered kind; kInvalidArgument for an empty id or an id
  //    that exists with another kind; kAlreadyExists if this engine is running the id already.
  Task<WorkflowOutcome> run_outcome(Context& ctx, std::string kind, std::string id, std::string input);
  // run_outcome() when only the value matters: its `result`.
  Task<Result<std::string>> run(Context& ctx, std::string kind, std::string id, std::string input);

  // Resumes every workflow left running (after a restart) in the background and returns at
  // once: it spawns a resumer process (not linked to the caller) that pages through the
  // workflows left running and runs each in a process of its own, at most `concurrency` at
  // once. New work can start meanwhile; a run() of an id the resumer is running is refused
  // with kAlreadyExists. Returns the resumer's pid, or the spawn's error. Monitor it to learn
  // when it is done: it exits normal when every resumed workflow has ended, or with a crash
  // reason naming the store's error (reported as process_crashed) if listing them failed.
  // Errors of the workflows themselves are in their records. The engine must outlive it.
  Result<Pid> resume_all(Context& ctx, std::size_t concurrency = 64);
  // The same in the calling process: returns when every resumed workflow has ended, with how
  // many ran, or the first store error met while listing them.
  Task<Result<std::size_t>> resume_all_and_wait(Context& ctx, std::size_t concurrency = 64);

  // An operator's decision about effect `effect_id` of a workflow in needs_attention: the
  // effect gets the outcome (applied) or is cleared to run again (not applied), and the
  // workflow goes back to running (run() resumes it). kNotFound, or kInvalidArgument if the
  // effect is not in needs_attention.
  Status resolve_effect(std::string_view workflow_id, std::string_view effect_id, const EffectResolution& resolution);

  // Retention: deletes finished workflows (completed, failed, cancelled) last updated more
  // than `retention` ago, with their steps and effects, at most `limit` per call (call again
  // while it returns limit). Workflows in needs_attention are kept. Returns how many went.
  Result<std::size_t> prune_finished(Duration retention, std::size_t limit = 1000);

  Store& store() { return store_; }
  Environment& env() { return env_; }
  const WorkflowEngineOptions& options() const { return options_; }
  WorkflowEngineStats stats() const;

  // Commits a batch through the engine's committer (grouped with concurrent ones). For
  // writes outside workflows (history, summaries). Inside a process; co_await at once.
  Task<Status> commit(Context& ctx, WriteBatch batch);

  // Wall time as the store keeps it (env.unix_time_ns()).
  TimePoint store_now() const;

  // How many workflows the store holds in each status (Store::count_workflows: one query,
  // not a page through every workflow), e.g. for a health page or a metric. The store's error
  // as it is.
  Result<WorkflowCounts> count_workflows() const;

 private:
  friend class WorkflowContext;
  friend struct internal::WorkflowRun;
  struct Impl;
  WorkflowEngine(Environment& env, Store& store, WorkflowEngineOptions options);
  // run(); with create == false an absent workflow is kNotFound (resume_all never recreates
  // a workflow pruned or deleted after it was listed).
  Task<WorkflowOutcome> run_impl(Context& ctx, std::string kind, std::string id, std::string input, bool create);

  Environment& env_;
  Store& store_;
  WorkflowEngineOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nines
