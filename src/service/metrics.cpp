// ServiceMetrics (service/metrics.hpp): prometheus-cpp core families updated by hooks and
// decorators, plus MetricFamily values built at scrape time by the collectors.
#include "nines/service/metrics.hpp"

#include <dirent.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <deque>
#include <initializer_list>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "nines/core/check.hpp"

namespace nines::service {
namespace {

constexpr std::size_t kMaxLabelBytes = 128;
constexpr std::size_t kMaxSeriesPerFamily = 10'000;
constexpr std::size_t kMaxScanRows = 10'000;
constexpr std::size_t kScanPage = 1'000;
constexpr std::size_t kMaxInFlightSteps = 100'000;
constexpr std::size_t kMaxPendingPerChild = 4'096;
constexpr std::size_t kMaxChildKeys = 100'000;
constexpr std::string_view kOther = "_other";

// OpenTelemetry GenAI explicit bucket boundaries (metrics.hpp).
const std::vector<double> kGenAiDurationBuckets = {0.01, 0.02, 0.04, 0.08,  0.16,  0.32,  0.64,
                                                   1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92};
const std::vector<double> kGenAiTokenBuckets = {1,     4,     16,     64,      256,     1024,     4096,
                                                16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864};
// Fast local operations: store commits, the HTTP API, nines' own overhead.
const std::vector<double> kFastBuckets = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
                                          0.0025,  0.005,    0.01,    0.025,  0.05,    0.1,    0.25,
                                          0.5,     1,        2.5,     5,      10};
// Model turns (a step may take several calls) and recoveries (backoff included).
const std::vector<double> kStepBuckets = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
const std::vector<double> kRecoveryBuckets = {0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
// Whole tasks.
const std::vector<double> kTaskBuckets = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400};

// A label value Prometheus accepts: valid UTF-8 (each byte of an invalid sequence becomes '?'),
// at most kMaxLabelBytes bytes, never cut inside a character.
std::string clip(std::string_view v) {
  std::string out;
  out.reserve(std::min(v.size(), kMaxLabelBytes));
  for (std::size_t i = 0; i < v.size();) {
    const auto c = static_cast<unsigned char>(v[i]);
    std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool valid = n > 0 && i + n <= v.size();
    for (std::size_t k = 1; valid && k < n; ++k) valid = (static_cast<unsigned char>(v[i + k]) >> 6) == 0x2;
    if (valid && n > 1) {  // no overlong forms, no surrogates, nothing above U+10FFFF (as Go's utf8)
      const auto c1 = static_cast<unsigned char>(v[i + 1]);
      valid = !(n == 2 && c < 0xC2) && !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0) &&
              !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90) && c <= 0xF4;
    }
    if (!valid) n = 1;
    if (out.size() + n > kMaxLabelBytes) break;
    if (valid) {
      out.append(v.substr(i, n));
    } else {
      out.push_back('?');
    }
    i += n;
  }
  return out;
}

// One family of prometheus-cpp metrics with fixed label names; at() finds or adds the series for
// the label values (in the order of the names). An empty value leaves its label out. Past
// kMaxSeriesPerFamily combinations every value becomes "_other".
template <class T>
class Series {
 public:
  Series(prometheus::Family<T>& family, std::vector<std::string> names, std::vector<double> buckets = {})
      : family_(family), names_(std::move(names)), buckets_(std::move(buckets)) {}

  T& at(std::initializer_list<std::string_view> values) {
    NINES_DCHECK(values.size() == names_.size());
    std::string key;
    for (std::string_view v : values) {
      key.append(clip(v));
      key.push_back('\x1f');
    }
    std::lock_guard lock(mu_);
    if (auto it = cache_.find(key); it != cache_.end()) return *it->second;
    prometheus::Labels labels;
    bool overflow = cache_.size() >= kMaxSeriesPerFamily;
    std::size_t i = 0;
    for (std::string_view v : values) {
      if (!v.empty()) labels[names_[i]] = overflow ? std::string(kOther) : clip(v);
      ++i;
    }
    if (overflow) {
      key.assign("\x1e");  // one series for the whole overflow
      if (auto it = cache_.find(key); it != cache_.end()) return *it->second;
    }
    T* metric = nullptr;
    if constexpr (std::is_same_v<T, prometheus::Histogram>) {
      metric = &family_.Add(labels, buckets_);
    } else {
      metric = &family_.Add(labels);
    }
    cache_.emplace(std::move(key), metric);
    return *metric;
  }

 private:
  prometheus::Family<T>& family_;
  const std::vector<std::string> names_;
  const std::vector<double> buckets_;
  std::mutex mu_;
  std::unordered_map<std::string, T*> cache_;
};

using CounterSeries = Series<prometheus::Counter>;
using GaugeSeries = Series<prometheus::Gauge>;
using HistogramSeries = Series<prometheus::Histogram>;

double seconds(Duration d) { return std::max(0.0, to_seconds(d)); }

// ---- MetricFamily building (scrape-time collectors) ----
using LabelList = std::vector<std::pair<std::string, std::string>>;

prometheus::MetricFamily make_family(std::string name, std::string help, prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

void add_sample(prometheus::MetricFamily& f, const LabelList& labels, double value) {
  prometheus::ClientMetric m;
  for (const auto& [name, v] : labels) m.label.push_back({name, clip(v)});
  if (f.type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
}

bool unnamed(const std::string& name) { return name.empty() || name.rfind("supervisor <", 0) == 0; }

std::string_view exit_label(const SupervisionEvent& e) {
  if (e.by_supervisor) return "by_supervisor";
  return to_string(e.reason.kind);
}

bool is_failure(const SupervisionEvent& e) { return !e.by_supervisor && !e.reason.is_clean(); }

// The number at the start of `s` ("3 calls", "attempt 2"), after `prefix`.
std::optional<std::int64_t> leading_number(std::string_view s, std::string_view prefix = {}) {
  if (s.substr(0, prefix.size()) != prefix) return std::nullopt;
  s.remove_prefix(prefix.size());
  std::int64_t n = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc() || p == s.data()) return std::nullopt;
  return n;
}

// /proc/self: resident set size in bytes, and the number of open descriptors.
std::optional<double> resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return std::nullopt;
  unsigned long size = 0, resident = 0;  // NOLINT(google-runtime-int): fscanf's %lu
  int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  long page = sysconf(_SC_PAGESIZE);  // NOLINT(google-runtime-int)
  if (n != 2 || page <= 0) return std::nullopt;
  return static_cast<double>(resident) * static_cast<double>(page);
}

std::optional<double> open_fds() {
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return std::nullopt;
  double n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - 1;  // the directory's own descriptor
}

std::optional<double> max_fds() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return std::nullopt;
  return static_cast<double>(r.rlim_cur);
}

}  // namespace

// ------------------------------------------------------------------------------------------
struct ServiceMetrics::Impl {
  explicit Impl(Environment& e) : env(e) {}

  Environment& env;
  prometheus::Registry registry;

  template <class T>
  prometheus::Family<T>& family(const std::string& name, const std::string& help) {
    if constexpr (std::is_same_v<T, prometheus::Counter>) {
      return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
    } else if constexpr (std::is_same_v<T, prometheus::Gauge>) {
      return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
    } else {
      return prometheus::BuildHistogram().Name(name).Help(help).Register(registry);
    }
  }
  CounterSeries counter(const std::string& name, const std::string& help, std::vector<std::string> labels) {
    return CounterSeries(family<prometheus::Counter>(name, help), std::move(labels));
  }
  GaugeSeries gauge(const std::string& name, const std::string& help, std::vector<std::string> labels) {
    return GaugeSeries(family<prometheus::Gauge>(name, help), std::move(labels));
  }
  HistogramSeries histogram(const std::string& name, const std::string& help, std::vector<std::string> labels,
                            std::vector<double> buckets) {
    return HistogramSeries(family<prometheus::Histogram>(name, help), std::move(labels), std::move(buckets));
  }

  // ---- agents and tasks ----
  CounterSeries task_runs =
      counter("nines_agent_task_runs_total", "Runs of agent tasks started (first runs and resumes).", {"agent"});
  CounterSeries task_resumes =
      counter("nines_agent_task_resumes_total",
              "Runs of agent tasks after their first (resumed after a crash or restart).", {"agent"});
  CounterSeries steps =
      counter("nines_agent_steps_total", "Model turns (steps) of agent tasks that got an answer.", {"agent"});
  HistogramSeries step_duration =
      histogram("nines_agent_step_duration_seconds",
                "Time of one model turn of an agent task, retries and fallbacks included.", {"agent"}, kStepBuckets);
  CounterSeries tool_calls =
      counter("nines_agent_tool_calls_total", "Tool calls started by agent tasks.", {"agent", "tool"});
  CounterSeries tool_results =
      counter("nines_agent_tool_results_total", "Tool calls ended, by result: ok or the error kind.",
              {"agent", "tool", "result"});
  CounterSeries invalid_calls = counter("nines_agent_invalid_tool_calls_total",
                                        "Tool calls refused before running, by problem kind.", {"agent", "kind"});
  CounterSeries retries = counter("nines_agent_model_retries_total",
                                  "Model calls of a turn beyond its first (retries and fallbacks).", {"agent"});
  CounterSeries fallbacks = counter("nines_agent_fallbacks_total", "Model routes left for the next one, by reason.",
                                    {"agent", "route", "reason"});
  CounterSeries guard_stops =
      counter("nines_agent_guard_stops_total", "Tasks stopped by a guard (budget, loop).", {"agent", "guard"});
  CounterSeries approval_waits =
      counter("nines_agent_approval_waits_total", "Tool calls that waited for an approval.", {"agent"});
  CounterSeries approvals =
      counter("nines_agent_approvals_total", "Approval decisions received.", {"agent", "decision"});
  CounterSeries tasks =
      counter("nines_tasks_total", "Tasks ended, by outcome (needs_attention: a manual intervention is needed).",
              {"agent", "outcome"});
  CounterSeries tasks_interrupted =
      counter("nines_tasks_interrupted_total", "Task runs interrupted before an outcome (resumed later).", {"agent"});
  HistogramSeries task_duration =
      histogram("nines_task_duration_seconds", "Wall time of ended tasks, from the first start to the end.", {"agent"},
                kTaskBuckets);
  std::mutex steps_mu;
  std::unordered_map<std::string, TimePoint> step_started;  // by task id

  // ---- models ----
  HistogramSeries genai_duration = histogram(
      "gen_ai_client_operation_duration_seconds",
      "GenAI operation duration (OpenTelemetry gen_ai.client.operation.duration).",
      {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "error_type"}, kGenAiDurationBuckets);
  HistogramSeries genai_tokens = histogram(
      "gen_ai_client_token_usage", "Number of input and output tokens used (OpenTelemetry gen_ai.client.token.usage).",
      {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"},
      kGenAiTokenBuckets);
  CounterSeries model_tokens =
      counter("nines_model_tokens_total", "Tokens reported by model calls, by type.", {"route", "model", "type"});
  CounterSeries model_cost = counter(
      "nines_model_cost_usd_total", "Cost of model calls in US dollars, at the configured prices.", {"route", "model"});
  CounterSeries model_errors =
      counter("nines_model_errors_total", "Failed model calls, by error kind.", {"route", "error_type"});
  HistogramSeries overhead =
      histogram("nines_model_call_overhead_seconds",
                "Time nines adds to a model call beyond the model client's own time.", {"route"}, kFastBuckets);

  // ---- supervision ----
  CounterSeries restarts = counter("nines_restarts_total", "Children restarted by supervisors, by the exit before.",
                                   {"supervisor", "reason"});
  CounterSeries child_failures = counter(
      "nines_child_failures_total", "Children that exited abnormally without their supervisor asking.", {"supervisor"});
  CounterSeries give_ups = counter("nines_supervisor_give_ups_total",
                                   "Supervisors that exceeded their restart intensity and stopped.", {"supervisor"});
  HistogramSeries recovery =
      histogram("nines_recovery_duration_seconds", "Time from a child's failure to its restart (backoff included).",
                {"supervisor"}, kRecoveryBuckets);

  struct SupStats {
    TimePoint first_seen{};
    std::uint64_t failures = 0;
    TimePoint first_failure{};
    TimePoint last_failure{};
    std::uint64_t recoveries = 0;
    Duration recovery_sum{0};
    std::size_t down = 0;  // failed children not restarted yet
    TimePoint down_since{};
    Duration down_total{0};
  };
  struct Pending {  // of one child id of one supervisor process
    std::string label;
    std::deque<std::string> exits;   // reason labels of exits not yet followed by a restart
    std::deque<TimePoint> failures;  // failures not yet recovered
  };
  std::mutex sup_mu;
  std::map<std::string, SupStats> sups;
  std::map<std::pair<std::uint64_t, std::string>, Pending> pending;
  // Child ids by running child pid (from its parent's start and restart events), to label an
  // unnamed supervisor with the id its parent gave it; and when each supervisor process was
  // first seen.
  std::unordered_map<std::uint64_t, std::string> child_ids;
  std::unordered_map<std::uint64_t, TimePoint> sup_first_seen;
  Runtime* runtime = nullptr;
  SupervisionEvents::SubscriptionId subscription = 0;

  // ---- store ----
  HistogramSeries commit_duration =
      histogram("nines_store_commit_duration_seconds", "Time of one store commit (a write batch).", {}, kFastBuckets);
  CounterSeries commit_errors =
      counter("nines_store_commit_errors_total", "Failed store commits, by error kind.", {"error_type"});
  Store* store = nullptr;

  // ---- service ----
  CounterSeries reloads = counter("nines_config_reloads_total", "Config loads and reloads, by result.", {"result"});
  GaugeSeries reload_ok =
      gauge("nines_config_last_reload_successful", "1 if the last config (re)load was applied, else 0.", {});
  GaugeSeries reload_time = gauge("nines_config_last_reload_success_timestamp_seconds",
                                  "Unix time of the last config (re)load that was applied.", {});
  CounterSeries http_requests =
      counter("nines_http_requests_total", "HTTP API requests answered, by route, method and code.",
              {"route", "method", "code"});
  HistogramSeries http_duration = histogram("nines_http_request_duration_seconds",
                                            "Time to answer an HTTP API request.", {"route", "method"}, kFastBuckets);
  GaugeSeries ready = gauge("nines_ready", "1 while the service is ready (/readyz answers 200), else 0.", {});
  GaugeSeries mailbox =
      gauge("nines_mailbox_depth", "Messages queued in a process's mailbox, as it last reported.", {"process"});
  CounterSeries scrape_errors =
      counter("nines_scrape_errors_total", "Scrape-time collectors whose source failed (their metrics were left out).",
              {"collector"});

  std::mutex routers_mu;
  std::map<std::string, std::shared_ptr<llm::Router>, std::less<>> routers;

  // attach/detach (exclusive) vs. the store's users (shared: scrapes, finished tasks); the
  // Store itself is thread-safe.
  std::shared_mutex store_mu;

  // ---- hooks ----
  void on_agent_event(const agent::AgentEvent& e);
  std::optional<double> task_age_seconds(const std::string& task_id);
  void on_supervision_event(const SupervisionEvent& e);
  std::string supervisor_label(const SupervisionEvent& e) const;
  void close_down(SupStats& s, std::size_t n, TimePoint at);
  std::string render();
  void collect_routers(std::vector<prometheus::MetricFamily>& out);
  void collect_supervision(std::vector<prometheus::MetricFamily>& out);
  void collect_store(std::vector<prometheus::MetricFamily>& out);
  void collect_process(std::vector<prometheus::MetricFamily>& out);
};

void ServiceMetrics::Impl::on_agent_event(const agent::AgentEvent& e) {
  using Type = agent::AgentEvent::Type;
  const std::string_view a = e.agent;
  switch (e.type) {
    case Type::kTaskStarted: {
      task_runs.at({a}).Increment();
      if (auto n = leading_number(e.detail, "attempt "); n && *n > 1) task_resumes.at({a}).Increment();
      break;
    }
    case Type::kStepStarted: {
      std::lock_guard lock(steps_mu);
      if (step_started.size() >= kMaxInFlightSteps && !step_started.contains(e.task_id)) break;
      step_started[e.task_id] = env.now();
      break;
    }
    case Type::kStepFinished: {
      steps.at({a}).Increment();
      std::optional<TimePoint> started;
      {
        std::lock_guard lock(steps_mu);
        if (auto it = step_started.find(e.task_id); it != step_started.end()) {
          started = it->second;
          step_started.erase(it);
        }
      }
      if (started) step_duration.at({a}).Observe(seconds(env.now() - *started));
      break;
    }
    case Type::kToolCall: tool_calls.at({a, e.tool}).Increment(); break;
    case Type::kToolResult: tool_results.at({a, e.tool, e.detail.empty() ? "unknown" : e.detail}).Increment(); break;
    case Type::kInvalidCall: invalid_calls.at({a, e.detail.empty() ? "unknown" : e.detail}).Increment(); break;
    case Type::kRetry: {
      if (auto n = leading_number(e.detail); n && *n > 1) retries.at({a}).Increment(static_cast<double>(*n - 1));
      break;
    }
    case Type::kFallback: {  // "route: reason"
      std::string_view d = e.detail;
      std::size_t sep = d.rfind(": ");
      std::string_view route = sep == std::string_view::npos ? d : d.substr(0, sep);
      std::string_view reason = sep == std::string_view::npos ? "unknown" : d.substr(sep + 2);
      fallbacks.at({a, route, reason}).Increment();
      break;
    }
    case Type::kGuard: {  // "budget_exceeded: why"
      std::string_view d = e.detail;
      guard_stops.at({a, d.substr(0, std::min(d.find(':'), d.size()))}).Increment();
      break;
    }
    case Type::kApprovalWait: approval_waits.at({a}).Increment(); break;
    case Type::kApprovalDecided: {
      approvals.at({a, e.detail.rfind("approved", 0) == 0 ? "approved" : "denied"}).Increment();
      break;
    }
    case Type::kTaskFinished: {  // detail: the status
      {
        std::lock_guard lock(steps_mu);
        step_started.erase(e.task_id);
      }
      tasks.at({a, e.detail.empty() ? "unknown" : e.detail}).Increment();
      if (std::optional<double> age = task_age_seconds(e.task_id)) task_duration.at({a}).Observe(*age);
      break;
    }
    case Type::kSleep: break;
  }
}

// Wall time since the task was created (the workflow record's created_at, a unix-time
// TimePoint as the workflow engine writes it), when a store is attached and has the task.
std::optional<double> ServiceMetrics::Impl::task_age_seconds(const std::string& task_id) {
  std::shared_lock lock(store_mu);
  if (store == nullptr) return std::nullopt;
  Result<WorkflowRecord> w = store->get_workflow(task_id);
  if (!w.ok()) return std::nullopt;
  return std::max(0.0, static_cast<double>(env.unix_time_ns() - w->created_at.time_since_epoch().count()) / 1e9);
}

void ServiceMetrics::Impl::close_down(SupStats& s, std::size_t n, TimePoint at) {
  n = std::min(n, s.down);
  if (n == 0) return;
  s.down -= n;
  if (s.down == 0) s.down_total += at - s.down_since;
}

// Its name; for an unnamed supervisor (the runtime labels it "supervisor <pid>") the child id
// its parent started it under, else "unnamed" (metrics.hpp). Under sup_mu.
std::string ServiceMetrics::Impl::supervisor_label(const SupervisionEvent& e) const {
  if (!unnamed(e.supervisor_name)) return clip(e.supervisor_name);
  if (auto it = child_ids.find(e.supervisor.id); it != child_ids.end()) return clip(it->second);
  return "unnamed";
}

void ServiceMetrics::Impl::on_supervision_event(const SupervisionEvent& e) {
  std::lock_guard lock(sup_mu);
  using E = SupervisionEventType;
  if (e.type == E::kChildStarted || e.type == E::kChildRestarted) {
    if (child_ids.size() < kMaxChildKeys || child_ids.contains(e.child.id)) child_ids[e.child.id] = e.child_id;
  } else if (e.type == E::kChildExited) {
    child_ids.erase(e.child.id);
  }
  TimePoint first_seen = e.at;
  if (sup_first_seen.size() < kMaxChildKeys || sup_first_seen.contains(e.supervisor.id)) {
    first_seen = sup_first_seen.try_emplace(e.supervisor.id, e.at).first->second;
  }
  const std::string label = supervisor_label(e);
  // An unnamed supervisor starts (itself and its static children) before its parent's event
  // gives its pid a child id: its figures begin at its first other event, from when it was
  // first seen.
  if (label == "unnamed" && (e.type == E::kSupervisorStarted || e.type == E::kChildStarted)) return;
  auto [sit, fresh] = sups.try_emplace(label);
  SupStats& s = sit->second;
  if (fresh) s.first_seen = first_seen;
  const auto key = std::make_pair(e.supervisor.id, e.child_id);
  switch (e.type) {
    case SupervisionEventType::kChildExited: {
      auto it = pending.find(key);
      if (it == pending.end()) {
        if (pending.size() >= kMaxChildKeys) break;
        it = pending.emplace(key, Pending{.label = label}).first;
      }
      Pending& p = it->second;
      if (p.exits.size() >= kMaxPendingPerChild) p.exits.pop_front();
      p.exits.emplace_back(exit_label(e));
      if (!is_failure(e)) break;
      child_failures.at({label}).Increment();
      if (s.failures == 0) s.first_failure = e.at;
      s.last_failure = e.at;
      ++s.failures;
      if (p.failures.size() >= kMaxPendingPerChild) {
        p.failures.pop_front();
        close_down(s, 1, e.at);
      }
      p.failures.push_back(e.at);
      if (s.down++ == 0) s.down_since = e.at;
      break;
    }
    case SupervisionEventType::kChildRestarted: {
      auto it = pending.find(key);
      std::string reason = "unknown";
      if (it != pending.end() && !it->second.exits.empty()) {
        reason = std::move(it->second.exits.front());
        it->second.exits.pop_front();
      }
      restarts.at({label, reason}).Increment();
      if (it == pending.end() || it->second.failures.empty()) break;
      Duration took = e.at - it->second.failures.front();
      it->second.failures.pop_front();
      ++s.recoveries;
      s.recovery_sum += took;
      recovery.at({label}).Observe(seconds(took));
      close_down(s, 1, e.at);
      if (it->second.exits.empty() && it->second.failures.empty()) pending.erase(it);
      break;
    }
    case SupervisionEventType::kIntensityExceeded: give_ups.at({label}).Increment(); break;
    case SupervisionEventType::kSupervisorStopped: {
      // Its children are gone with it: what was down stops counting here (its restart, if any,
      // is its parent's recovery).
      for (auto it = pending.lower_bound({e.supervisor.id, std::string()});
           it != pending.end() && it->first.first == e.supervisor.id;) {
        close_down(sups[it->second.label], it->second.failures.size(), e.at);
        it = pending.erase(it);
      }
      sup_first_seen.erase(e.supervisor.id);
      break;
    }
    default: break;
  }
}

void ServiceMetrics::Impl::collect_routers(std::vector<prometheus::MetricFamily>& out) {
  std::vector<std::pair<std::string, std::shared_ptr<llm::Router>>> list;
  {
    std::lock_guard lock(routers_mu);
    list.assign(routers.begin(), routers.end());
  }
  using prometheus::MetricType;
  auto state = make_family("nines_route_breaker_state",
                           "Circuit breaker state of a model route: 0 closed (or disabled), 1 open (or forced open), "
                           "2 half-open.",
                           MetricType::Gauge);
  auto opened =
      make_family("nines_route_breaker_opened_total", "Times the route's breaker opened.", MetricType::Counter);
  auto transitions = make_family("nines_route_breaker_transitions_total", "State transitions of the route's breaker.",
                                 MetricType::Counter);
  auto rejections =
      make_family("nines_route_breaker_rejections_total", "Calls the route's breaker refused.", MetricType::Counter);
  auto calls = make_family("nines_route_calls_total", "Calls that reached the model route.", MetricType::Counter);
  auto served = make_family("nines_route_served_total",
                            "Answers the model route gave (a fallback served when not the "
                            "chain's first route).",
                            MetricType::Counter);
  auto left = make_family("nines_route_left_total", "Calls that left the model route for the next one, by reason.",
                          MetricType::Counter);
  auto position = make_family("nines_route_position", "Position of the route in its agent's chain (0: primary).",
                              MetricType::Gauge);
  for (const auto& [agent, router] : list) {
    for (std::size_t i = 0; i < router->size(); ++i) {
      const LabelList labels = {{"agent", agent}, {"route", router->route_name(i)}};
      llm::RouteCounters c = router->counters(i);
      add_sample(position, labels, static_cast<double>(i));
      add_sample(calls, labels, static_cast<double>(c.calls));
      add_sample(served, labels, static_cast<double>(c.served));
      for (std::size_t r = 0; r < std::size(c.left); ++r) {
        LabelList with_reason = labels;
        with_reason.emplace_back("reason", std::string(to_string(static_cast<llm::FallbackReason>(r))));
        add_sample(left, with_reason, static_cast<double>(c.left[r]));
      }
      std::shared_ptr<CircuitBreaker> b = router->breaker(i);
      if (!b) continue;
      BreakerCounters bc = b->counters();
      double v = 0;
      switch (bc.state) {
        case BreakerState::kClosed:
        case BreakerState::kDisabled: v = 0; break;
        case BreakerState::kOpen:
        case BreakerState::kForcedOpen: v = 1; break;
        case BreakerState::kHalfOpen: v = 2; break;
      }
      add_sample(state, labels, v);
      add_sample(opened, labels, static_cast<double>(bc.opened));
      add_sample(transitions, labels, static_cast<double>(bc.transitions));
      add_sample(rejections, labels, static_cast<double>(bc.rejections));
    }
  }
  for (auto* f : {&state, &opened, &transitions, &rejections, &calls, &served, &left, &position}) {
    out.push_back(std::move(*f));
  }
}

void ServiceMetrics::Impl::collect_supervision(std::vector<prometheus::MetricFamily>& out) {
  using prometheus::MetricType;
  auto mtbf = make_family("nines_supervisor_mtbf_seconds",
                          "Mean time between two consecutive child failures of the supervisor.", MetricType::Gauge);
  auto mttr = make_family("nines_supervisor_mttr_seconds", "Mean time from a child's failure to its restart.",
                          MetricType::Gauge);
  auto avail = make_family("nines_supervisor_availability_ratio",
                           "Fraction of the time since the supervisor was first seen with none of its children down "
                           "after a failure.",
                           MetricType::Gauge);
  auto down = make_family("nines_supervisor_children_down",
                          "Children of the supervisor down after a failure, not "
                          "restarted yet.",
                          MetricType::Gauge);
  auto alive = make_family("nines_processes_alive", "Processes alive in the runtime.", MetricType::Gauge);
  const TimePoint now = env.now();
  {
    std::lock_guard lock(sup_mu);
    if (runtime != nullptr) add_sample(alive, {}, static_cast<double>(runtime->process_count()));
    for (const auto& [label, s] : sups) {
      const LabelList labels = {{"supervisor", label}};
      if (s.failures >= 2) {
        add_sample(mtbf, labels, seconds(s.last_failure - s.first_failure) / static_cast<double>(s.failures - 1));
      }
      if (s.recoveries >= 1) add_sample(mttr, labels, seconds(s.recovery_sum) / static_cast<double>(s.recoveries));
      Duration observed = now - s.first_seen;
      Duration downtime = s.down_total + (s.down > 0 ? now - s.down_since : Duration::zero());
      double ratio = observed > Duration::zero() ? 1.0 - seconds(downtime) / seconds(observed) : 1.0;
      add_sample(avail, labels, std::clamp(ratio, 0.0, 1.0));
      add_sample(down, labels, static_cast<double>(s.down));
    }
  }
  for (auto* f : {&mtbf, &mttr, &avail, &down, &alive}) {
    if (!f->metric.empty()) out.push_back(std::move(*f));
  }
}

std::vector<ServiceMetrics::SupervisorFigures> ServiceMetrics::supervisors() const {
  std::vector<SupervisorFigures> out;
  Impl& m = *impl_;
  const TimePoint now = m.env.now();
  std::lock_guard lock(m.sup_mu);
  for (const auto& [label, s] : m.sups) {
    SupervisorFigures f{.supervisor = label, .failures = s.failures, .recoveries = s.recoveries};
    if (s.failures >= 2)
      f.mtbf_seconds = seconds(s.last_failure - s.first_failure) / static_cast<double>(s.failures - 1);
    if (s.recoveries >= 1) f.mttr_seconds = seconds(s.recovery_sum) / static_cast<double>(s.recoveries);
    const Duration observed = now - s.first_seen;
    const Duration downtime = s.down_total + (s.down > 0 ? now - s.down_since : Duration::zero());
    f.availability =
        std::clamp(observed > Duration::zero() ? 1.0 - seconds(downtime) / seconds(observed) : 1.0, 0.0, 1.0);
    f.children_down = s.down;
    out.push_back(std::move(f));
  }
  return out;
}

void ServiceMetrics::Impl::collect_store(std::vector<prometheus::MetricFamily>& out) {
  std::shared_lock lock(store_mu);
  if (store == nullptr) return;
  using prometheus::MetricType;
  Result<WorkflowCounts> counts = store->count_workflows();
  if (!counts.ok()) {
    scrape_errors.at({"store"}).Increment();
    return;
  }
  auto workflows = make_family("nines_workflows", "Workflows (tasks) in the store, by status.", MetricType::Gauge);
  for (WorkflowStatus st : {WorkflowStatus::kRunning, WorkflowStatus::kCompleted, WorkflowStatus::kFailed,
                            WorkflowStatus::kNeedsAttention, WorkflowStatus::kCancelled}) {
    add_sample(workflows, {{"status", std::string(to_string(st))}}, static_cast<double>(counts->of(st)));
  }
  auto oldest =
      make_family("nines_oldest_task_age_seconds",
                  "Age (since creation) of the oldest task in the status; 0 when there is none.", MetricType::Gauge);
  auto truncated =
      make_family("nines_oldest_task_scan_truncated",
                  "1 when the oldest-task scan stopped at its row limit (the age may be too low).", MetricType::Gauge);
  const std::int64_t now_ns = env.unix_time_ns();
  for (WorkflowStatus st : {WorkflowStatus::kRunning, WorkflowStatus::kNeedsAttention}) {
    std::int64_t min_created = std::numeric_limits<std::int64_t>::max();
    std::size_t rows = 0;
    std::string after;
    bool done = false;
    bool failed = false;
    while (rows < kMaxScanRows) {
      const std::size_t want = std::min(kScanPage, kMaxScanRows - rows);
      Result<std::vector<WorkflowRecord>> page = store->list_workflows(st, after, want);
      if (!page.ok()) {
        failed = true;
        break;
      }
      for (const WorkflowRecord& r : *page) {
        min_created = std::min<std::int64_t>(min_created, r.created_at.time_since_epoch().count());
      }
      rows += page->size();
      if (page->size() < want) {
        done = true;
        break;
      }
      after = page->back().id;
    }
    // Stopped at the row limit: truncated unless nothing comes after.
    if (!done && !failed) {
      Result<std::vector<WorkflowRecord>> more = store->list_workflows(st, after, 1);
      if (!more.ok()) {
        failed = true;
      } else {
        done = more->empty();
      }
    }
    if (failed) {
      scrape_errors.at({"store"}).Increment();
      continue;
    }
    const bool cut = !done;
    const LabelList labels = {{"status", std::string(to_string(st))}};
    double age = rows == 0 ? 0.0 : std::max(0.0, static_cast<double>(now_ns - min_created) / 1e9);
    add_sample(oldest, labels, age);
    add_sample(truncated, labels, cut ? 1.0 : 0.0);
  }
  out.push_back(std::move(workflows));
  if (!oldest.metric.empty()) out.push_back(std::move(oldest));
  if (!truncated.metric.empty()) out.push_back(std::move(truncated));
}

void ServiceMetrics::Impl::collect_process(std::vector<prometheus::MetricFamily>& out) {
  using prometheus::MetricType;
  if (auto rss = resident_bytes()) {
    auto f = make_family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge);
    add_sample(f, {}, *rss);
    out.push_back(std::move(f));
  }
  if (auto fds = open_fds()) {
    auto f = make_family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge);
    add_sample(f, {}, *fds);
    out.push_back(std::move(f));
  }
  if (auto fds = max_fds()) {
    auto f = make_family("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge);
    add_sample(f, {}, *fds);
    out.push_back(std::move(f));
  }
}

std::string ServiceMetrics::Impl::render() {
  std::vector<prometheus::MetricFamily> families;
  collect_routers(families);
  collect_supervision(families);
  collect_store(families);  // may count a scrape error: before the registry is collected
  collect_process(families);
  std::vector<prometheus::MetricFamily> registered = registry.Collect();
  families.insert(families.begin(), std::make_move_iterator(registered.begin()),
                  std::make_move_iterator(registered.end()));
  // A family with no series prints only its HELP and TYPE lines: leave it out.
  std::erase_if(families, [](const prometheus::MetricFamily& f) { return f.metric.empty(); });
  return prometheus::TextSerializer().Serialize(families);
}

// ------------------------------------------------------------------------------------------
namespace {

class MeteredModel final : public llm::ChatModel {
 public:
  MeteredModel(std::shared_ptr<ServiceMetrics::Impl> m, std::shared_ptr<llm::ChatModel> inner, ModelLabels labels,
               agent::Price price)
      : m_(std::move(m)), inner_(std::move(inner)), labels_(std::move(labels)), price_(price) {
    NINES_CHECK_MSG(inner_ != nullptr, "meter_model: no model to meter");
  }

  Task<llm::ChatOutcome> complete(Context& ctx, const llm::ChatRequest& req, llm::TextSink on_text) override {
    const TimePoint started = ctx.now();
    llm::ChatOutcome out = co_await inner_->complete(ctx, req, std::move(on_text));
    record(req, out, ctx.now() - started);
    co_return out;
  }

 private:
  void record(const llm::ChatRequest& req, const llm::ChatOutcome& out, Duration took) {
    const std::string_view model = labels_.model.empty() ? std::string_view(req.model) : labels_.model;
    const std::string_view route = labels_.route.empty() ? model : labels_.route;
    if (!out.result.ok()) {
      const std::string_view kind = to_string(out.result.error().kind());
      m_->genai_duration.at({"chat", labels_.provider, model, kind}).Observe(seconds(took));
      m_->model_errors.at({route, kind}).Increment();
      return;
    }
    m_->genai_duration.at({"chat", labels_.provider, model, ""}).Observe(seconds(took));
    const llm::Usage& u = out.result->usage;
    const auto in = static_cast<double>(std::max<std::int64_t>(0, u.input_tokens));
    const auto outp = static_cast<double>(std::max<std::int64_t>(0, u.output_tokens));
    m_->genai_tokens.at({"chat", labels_.provider, model, "input"}).Observe(in);
    m_->genai_tokens.at({"chat", labels_.provider, model, "output"}).Observe(outp);
    m_->model_tokens.at({route, model, "input"}).Increment(in);
    m_->model_tokens.at({route, model, "output"}).Increment(outp);
    m_->model_cost.at({route, model}).Increment((in * price_.input_per_mtok + outp * price_.output_per_mtok) / 1e6);
  }

  std::shared_ptr<ServiceMetrics::Impl> m_;
  std::shared_ptr<llm::ChatModel> inner_;
  ModelLabels labels_;
  agent::Price price_;
};

class MeteredStore final : public Store {
 public:
  MeteredStore(std::shared_ptr<ServiceMetrics::Impl> m, std::unique_ptr<Store> inner)
      : m_(std::move(m)), inner_(std::move(inner)) {
    NINES_CHECK_MSG(inner_ != nullptr, "meter_store: no store to meter");
  }

  std::string_view backend() const override { return inner_->backend(); }
  bool fast_commits() const override { return inner_->fast_commits(); }
  Status commit(const WriteBatch& batch) override {
    const TimePoint started = m_->env.now();
    Status s = inner_->commit(batch);
    m_->commit_duration.at({}).Observe(seconds(m_->env.now() - started));
    if (!s.ok()) m_->commit_errors.at({to_string(s.error().kind())}).Increment();
    return s;
  }
  Result<WorkflowRecord> get_workflow(std::string_view id) override { return inner_->get_workflow(id); }
  Result<std::vector<WorkflowRecord>> list_workflows(WorkflowStatus status, std::string_view after_id,
                                                     std::size_t limit) override {
    return inner_->list_workflows(status, after_id, limit);
  }
  Result<WorkflowCounts> count_workflows() override { return inner_->count_workflows(); }
  Result<std::vector<StepRecord>> load_steps(std::string_view workflow_id) override {
    return inner_->load_steps(workflow_id);
  }
  Result<std::vector<EffectRecord>> load_effects(std::string_view workflow_id) override {
    return inner_->load_effects(workflow_id);
  }
  Result<std::vector<EffectRecord>> load_pending_effects(std::size_t limit) override {
    return inner_->load_pending_effects(limit);
  }
  Result<HistoryView> load_history(std::string_view task_id, std::size_t max_messages) override {
    return inner_->load_history(task_id, max_messages);
  }
  Result<std::vector<HistoryRecord>> read_history(std::string_view task_id, std::int64_t from_seq,
                                                  std::size_t limit) override {
    return inner_->read_history(task_id, from_seq, limit);
  }
  Result<std::size_t> prune_finished(TimePoint older_than, std::size_t limit) override {
    return inner_->prune_finished(older_than, limit);
  }
  Result<int> schema_version() override { return inner_->schema_version(); }

 private:
  std::shared_ptr<ServiceMetrics::Impl> m_;
  std::unique_ptr<Store> inner_;
};

}  // namespace

// ------------------------------------------------------------------------------------------
ServiceMetrics::ServiceMetrics(Environment& env) : impl_(std::make_shared<Impl>(env)) {}

ServiceMetrics::~ServiceMetrics() {
  detach_runtime();
  detach_store();
  // A router's routes may hold metered models, which hold the state: let go of the routers so
  // that the state is freed with the last model.
  std::lock_guard lock(impl_->routers_mu);
  impl_->routers.clear();
}

std::string ServiceMetrics::render() { return impl_->render(); }

void ServiceMetrics::on_agent_event(const agent::AgentEvent& event) { impl_->on_agent_event(event); }

agent::AgentObserver ServiceMetrics::observer() {
  return [impl = impl_](const agent::AgentEvent& e) { impl->on_agent_event(e); };
}

void ServiceMetrics::on_task_finished(std::string_view agent, const agent::TaskOutcome& outcome) {
  if (outcome.status == agent::TaskStatus::kInterrupted) {
    impl_->tasks_interrupted.at({agent}).Increment();
    return;
  }
  impl_->tasks.at({agent, to_string(outcome.status)}).Increment();
  impl_->task_duration.at({agent}).Observe(seconds(outcome.wall_time));
}

std::shared_ptr<llm::ChatModel> ServiceMetrics::meter_model(std::shared_ptr<llm::ChatModel> inner, ModelLabels labels,
                                                            agent::Price price) {
  return std::make_shared<MeteredModel>(impl_, std::move(inner), std::move(labels), price);
}

void ServiceMetrics::observe_overhead(std::string_view route, Duration overhead) {
  impl_->overhead.at({route}).Observe(seconds(overhead));
}

void ServiceMetrics::add_router(std::string agent, std::shared_ptr<llm::Router> router) {
  NINES_CHECK_MSG(router != nullptr, "add_router: no router for agent '" + agent + "'");
  std::lock_guard lock(impl_->routers_mu);
  impl_->routers[std::move(agent)] = std::move(router);
}

void ServiceMetrics::remove_router(std::string_view agent) {
  std::lock_guard lock(impl_->routers_mu);
  if (auto it = impl_->routers.find(agent); it != impl_->routers.end()) impl_->routers.erase(it);
}

void ServiceMetrics::attach_runtime(Runtime& rt) {
  detach_runtime();
  std::shared_ptr<Impl> impl = impl_;
  SupervisionEvents::SubscriptionId id =
      rt.events().subscribe([impl](const SupervisionEvent& e) { impl->on_supervision_event(e); });
  std::lock_guard lock(impl_->sup_mu);
  impl_->runtime = &rt;
  impl_->subscription = id;
}

void ServiceMetrics::detach_runtime() {
  Runtime* rt = nullptr;
  SupervisionEvents::SubscriptionId id = 0;
  {
    std::lock_guard lock(impl_->sup_mu);
    rt = std::exchange(impl_->runtime, nullptr);
    id = std::exchange(impl_->subscription, 0);
  }
  if (rt != nullptr) rt->events().unsubscribe(id);
}

std::unique_ptr<Store> ServiceMetrics::meter_store(std::unique_ptr<Store> inner) {
  return std::make_unique<MeteredStore>(impl_, std::move(inner));
}

void ServiceMetrics::attach_store(Store& store) {
  std::unique_lock lock(impl_->store_mu);
  impl_->store = &store;
}

void ServiceMetrics::detach_store() {
  std::unique_lock lock(impl_->store_mu);
  impl_->store = nullptr;
}

void ServiceMetrics::on_config_reload(bool ok) {
  impl_->reloads.at({ok ? "ok" : "rejected"}).Increment();
  impl_->reload_ok.at({}).Set(ok ? 1 : 0);
  if (ok) impl_->reload_time.at({}).Set(static_cast<double>(impl_->env.unix_time_ns()) / 1e9);
}

void ServiceMetrics::on_http_request(std::string_view route, std::string_view method, int status_code,
                                     Duration duration) {
  const std::string code = std::to_string(status_code);
  impl_->http_requests.at({route, method, code}).Increment();
  impl_->http_duration.at({route, method}).Observe(seconds(duration));
}

void ServiceMetrics::set_ready(bool ready) { impl_->ready.at({}).Set(ready ? 1 : 0); }

void ServiceMetrics::set_mailbox_depth(std::string_view process, std::size_t depth) {
  impl_->mailbox.at({process}).Set(static_cast<double>(depth));
}

}  // namespace nines::service
