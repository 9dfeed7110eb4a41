// nines/service/metrics.hpp: the service's Prometheus metrics (the /metrics page).
//
// ServiceMetrics keeps every figure `nines serve` publishes and renders them in the Prometheus
// text exposition format 0.0.4 (render()). It sits on prometheus-cpp's core library (a registry
// and its text serializer; not its civetweb server: the service's own HTTP server serves the
// page). Figures come three ways:
//  - hooks the service calls as things happen (agent events, finished tasks, HTTP requests,
//    config reloads, readiness): cheap, thread-safe, callable from any process or thread;
//  - decorators that measure what they wrap: meter_model() around a model client, meter_store()
//    around the store;
//  - collectors run at scrape time, inside render(): router and breaker state (add_router),
//    supervision figures (attach_runtime), workflow counts and the oldest task's age
//    (attach_store), resident memory and open descriptors of this process (/proc/self).
//
//   ServiceMetrics metrics(env);
//   auto client = metrics.meter_model(openai, {.provider = "openai", .route = "openai/gpt-4o",
//                                              .model = "gpt-4o"}, {.input_per_mtok = 2.5, .output_per_mtok = 10});
//   std::unique_ptr<Store> store = metrics.meter_store(open_sqlite_store(path).value());
//   metrics.attach_store(*store);
//   metrics.attach_runtime(*rt);
//   agents->add_observer(metrics.observer());
//   metrics.add_router("support", router);        // again with the new router after a reload
//   metrics.on_config_reload(true);
//   metrics.set_ready(true);
//   // GET /metrics:
//   std::string page = metrics.render();         // Content-Type: ServiceMetrics::kContentType
//
// Names and units (docs/metrics.md lists every metric with its type, labels and meaning):
// base units (seconds, bytes), counters end in _total, nines' own metrics start with nines_, the
// process metrics use the standard names of Prometheus client libraries (process_*). The model
// call metrics follow the OpenTelemetry GenAI semantic conventions (semconv v1.41.0, "Semantic
// conventions for generative AI metrics", opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics,
// status Development): gen_ai.client.operation.duration (histogram, unit s, explicit buckets
// 0.01, 0.02, 0.04, ... 81.92) and gen_ai.client.token.usage (histogram, unit {token}, buckets
// 1, 4, 16, ... 67108864), with the attributes gen_ai.operation.name ("chat"),
// gen_ai.provider.name, gen_ai.request.model, gen_ai.token.type ("input"/"output") and, on
// failure only, error.type. They are mapped to Prometheus names as OpenTelemetry's Prometheus
// compatibility spec does: dots become underscores, a unit becomes a suffix ("s" -> _seconds),
// and an annotation unit in braces ({token}) adds none:
//   gen_ai_client_operation_duration_seconds{gen_ai_operation_name, gen_ai_provider_name,
//                                            gen_ai_request_model, error_type}
//   gen_ai_client_token_usage{gen_ai_operation_name, gen_ai_provider_name, gen_ai_request_model,
//                             gen_ai_token_type}
// error.type is the nines ErrorKind name (core/result.hpp: "rate_limited", "timeout", ...).
//
// Supervision figures, per supervisor, from the supervision events seen since attach_runtime().
// The label is the supervisor's name; an unnamed one (the runtime calls it "supervisor <pid>",
// a new label at each restart) takes the child id its parent started it under (the agent
// layer's task supervisor under Agents::supervisor_child("support") is "support"), or, with no
// parent seen, "unnamed" (one label for all of them).
//  - a failure is a child's exit the supervisor did not cause (not by_supervisor) with an
//    abnormal reason (not normal, not shutdown): a crash, a kill, noproc;
//  - a recovery is the restart (kChildRestarted) of the child that failed (the same
//    supervisor and child id; dynamic children of a simple_one_for_one supervisor share their
//    template's id and are matched first-failed first-restarted, which gives the same mean);
//    its duration runs from the failure to the restart, backoff and failed starts included;
//  - MTBF: the mean time between two consecutive failures of any of its children, (last
//    failure - first failure) / (failures - 1); absent until the second failure;
//  - MTTR: the mean recovery duration; absent until the first recovery. Over a window in PromQL:
//    rate(nines_recovery_duration_seconds_sum[1h]) / rate(nines_recovery_duration_seconds_count[1h]);
//  - availability: the fraction of the time since the supervisor was first seen during which
//    none of its children was down, a child being down from its failure until its recovery.
//    A failed child that is never restarted (a temporary child) is down until its supervisor
//    stops; a supervisor that gave up stops, and its own restart is its parent's figure.
// Restarts (nines_restarts_total{supervisor, reason}) are every kChildRestarted, failures and
// restarts of siblings alike; reason is the kind of the exit before it ("crash", "killed",
// "noproc", "normal", "shutdown"), or "by_supervisor" when the supervisor stopped the child
// itself (a one_for_all or rest_for_one group restart).
//
// Bounds: label values are cut to 128 bytes; a family takes at most 10,000 label combinations,
// later ones are counted under the value "_other"; the oldest-task scan reads at most 10,000
// workflows per status per scrape (nines_oldest_task_scan_truncated says when it stopped
// short); in-flight step and supervision bookkeeping is capped (oldest entries dropped).
//
// Errors: render() never fails: a collector whose source fails (the store unreachable) leaves
// its families out and counts nines_scrape_errors_total{collector}.
//
// Ownership: ServiceMetrics borrows the Environment (it must outlive it and every metered model
// and store), the Runtime given to
// attach_runtime and the Store given to attach_store (each must outlive it, or be detached
// first: detach_runtime(), detach_store()); it shares the routers given to add_router. The
// metered model and store (and observer()) keep the metrics' state alive on their own: they
// may outlive the ServiceMetrics object (their figures are then just not rendered).
// Thread-safety: every member may be called from any thread or process at once. render() calls
// the attached store (count_workflows, list_workflows): call it from a process or thread that may
// block on the store, not from the HTTP server's loop-thread handler.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/core/environment.hpp"
#include "nines/core/time.hpp"
#include "nines/llm/model.hpp"
#include "nines/llm/router.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/store/store.hpp"

namespace nines::service {

// The labels of a metered model client.
struct ModelLabels {
  std::string provider;  // gen_ai.provider.name: "openai", "anthropic", "sim", ...
  std::string route;     // the router's route name ("openai/gpt-4o"); nines_model_* label
  std::string model;     // gen_ai.request.model; empty: the request's model
};

class ServiceMetrics {
 public:
  // The Content-Type of render()'s page.
  static constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

  explicit ServiceMetrics(Environment& env);
  // Unsubscribes from the attached runtime's events, detaches the store, lets go of the routers.
  ~ServiceMetrics();
  ServiceMetrics(const ServiceMetrics&) = delete;
  ServiceMetrics& operator=(const ServiceMetrics&) = delete;

  // The page: the Prometheus text exposition (0.0.4) of every metric, after running the
  // scrape-time collectors.
  std::string render();

  // ---- agents and tasks ----
  // One agent event (agent.hpp): steps (nines_agent_steps_total, and the step latency from its
  // kStepStarted to its kStepFinished), task runs and resumes, tool calls and results by tool
  // and result kind, invalid tool calls by kind, retries (the calls of a turn beyond its first),
  // fallbacks by route and reason, guard stops, approval waits, and ended tasks (kTaskFinished):
  // nines_tasks_total{agent, outcome} (outcome needs_attention counts manual interventions) and
  // nines_task_duration_seconds{agent}, the time since the task's workflow was created (read
  // from the attached store; not observed without one).
  void on_agent_event(const agent::AgentEvent& event);
  // An observer for Agents::add_observer that calls on_agent_event (it keeps the state alive).
  agent::AgentObserver observer();
  // For tasks run without the observer (Agents::run in a program that holds the outcome): the
  // same nines_tasks_total and nines_task_duration_seconds (outcome.wall_time), and
  // nines_tasks_interrupted_total for a kInterrupted run. A task seen by the observer is counted
  // there: calling this for it too counts it twice.
  void on_task_finished(std::string_view agent, const agent::TaskOutcome& outcome);

  // ---- models ----
  // A ChatModel that calls `inner` and records each call: its duration, token usage, cost
  // (tokens at `price`, dollars per million tokens) and errors by kind. Measures the client
  // alone (the whole complete() of inner, retries of the router not included: each attempt is
  // one call here). Wrap each route's client before giving it to the router.
  std::shared_ptr<llm::ChatModel> meter_model(std::shared_ptr<llm::ChatModel> inner, ModelLabels labels,
                                              agent::Price price);
  // The time nines adds to one model call beyond the client's own time (the service measures
  // it: e.g. a step's model-turn time minus the client durations of its calls):
  // nines_model_call_overhead_seconds{route}.
  void observe_overhead(std::string_view route, Duration overhead);

  // ---- routers (scrape time) ----
  // Publishes the router's per-route breaker state and counters under agent=`agent`. Adding a
  // router for an agent that has one replaces it (a reload: the new router's counters start
  // at 0, which Prometheus reads as a counter reset).
  void add_router(std::string agent, std::shared_ptr<llm::Router> router);
  void remove_router(std::string_view agent);

  // ---- supervision (events, and the process count at scrape time) ----
  // Subscribes to rt.events() (see the file comment for the figures). One runtime at a time:
  // attaching another detaches the first.
  void attach_runtime(Runtime& rt);
  void detach_runtime();

  // ---- the store ----
  // A Store that delegates every call to `inner` and times commits
  // (nines_store_commit_duration_seconds, nines_store_commit_errors_total{error_type}).
  std::unique_ptr<Store> meter_store(std::unique_ptr<Store> inner);
  // At scrape time: nines_workflows{status} (count_workflows) and, for running and
  // needs_attention, nines_oldest_task_age_seconds{status}: now (Environment::unix_time_ns)
  // minus the oldest created_at (the workflow engine stores unix-time TimePoints). One store
  // at a time.
  void attach_store(Store& store);
  void detach_store();

  // ---- the service ----
  // A config (re)load: nines_config_reloads_total{result="ok"|"rejected"},
  // nines_config_last_reload_successful (1/0) and, when ok,
  // nines_config_last_reload_success_timestamp_seconds. Call it for the first load too.
  void on_config_reload(bool ok);
  // One HTTP API request: nines_http_requests_total{route, method, code} and
  // nines_http_request_duration_seconds{route, method}. `route` is the route's pattern
  // ("/v1/tasks/{id}"), never the raw path (ids would make a series each).
  void on_http_request(std::string_view route, std::string_view method, int status_code, Duration duration);
  // Readiness as /readyz answers it: nines_ready 1 or 0.
  void set_ready(bool ready);
  // A process's mailbox depth as it last reported it (Context::mailbox_size()):
  // nines_mailbox_depth{process}. For long-lived named processes only.
  void set_mailbox_depth(std::string_view process, std::size_t depth);

  // The supervision figures of each supervisor seen since attach_runtime() (the label, as on the
  // page), for the API's /v1/supervision. MTBF and MTTR are absent until there are enough
  // failures and recoveries (see the header comment).
  struct SupervisorFigures {
    std::string supervisor;
    std::uint64_t failures = 0;
    std::uint64_t recoveries = 0;
    std::optional<double> mtbf_seconds;
    std::optional<double> mttr_seconds;
    double availability = 1;
    std::size_t children_down = 0;
  };
  std::vector<SupervisorFigures> supervisors() const;

  struct Impl;  // internal (src/service/metrics.cpp)

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace nines::service
