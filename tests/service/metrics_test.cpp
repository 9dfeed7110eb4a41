// ServiceMetrics (service/metrics.hpp): each hook, decorator and collector changes the rendered
// page as it should (the page is parsed back and values asserted), on the virtual clock where
// time matters. MetricsPage.PopulatedPageForPromtool writes a page with every family to
// $NINES_METRICS_PAGE for the service_metrics_promtool test (promtool check metrics).
#include "nines/service/metrics.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "nines/llm/router.hpp"
#include "nines/llm/sim.hpp"
#include "nines/runtime/supervisor.hpp"
#include "nines/store/memory_store.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines::service {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::DoubleNear;
using ::testing::Eq;
using ::testing::Ge;
using ::testing::Gt;
using ::testing::HasSubstr;
using ::testing::Optional;

using namespace std::chrono_literals;
using Labels = std::map<std::string, std::string>;

// ---- the page, parsed back ----
struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

std::vector<Sample> parse(const std::string& page) {
  std::vector<Sample> out;
  std::istringstream in(page);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    std::size_t i = line.find_first_of("{ ");
    if (i == std::string::npos) throw std::runtime_error("bad line: " + line);
    s.name = line.substr(0, i);
    if (line[i] == '{') {
      ++i;
      while (line[i] != '}') {
        std::size_t eq = line.find('=', i);
        std::string key = line.substr(i, eq - i);
        i = eq + 2;  // past ="
        std::string value;
        for (; line[i] != '"'; ++i) {
          if (line[i] == '\\') {
            ++i;
            value.push_back(line[i] == 'n' ? '\n' : line[i]);
          } else {
            value.push_back(line[i]);
          }
        }
        ++i;  // past "
        if (line[i] == ',') ++i;
        s.labels[key] = value;
      }
      ++i;  // past }
    }
    s.value = std::strtod(line.c_str() + i + 1, nullptr);
    out.push_back(std::move(s));
  }
  return out;
}

// The value of the series with exactly these labels, if the page has it.
std::optional<double> value(const std::string& page, const std::string& name, const Labels& labels = {}) {
  for (const Sample& s : parse(page)) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return std::nullopt;
}

bool has_family(const std::string& page, const std::string& name) {
  return page.find("# TYPE " + name + " ") != std::string::npos;
}

agent::AgentEvent event(agent::AgentEvent::Type type, std::string task, std::string tool = {},
                        std::string detail = {}) {
  return {.type = type,
          .task_id = std::move(task),
          .agent = "support",
          .tool = std::move(tool),
          .detail = std::move(detail)};
}

// ---- agents and tasks ----
TEST(ServiceMetrics, AgentEventsCountStepsToolsRetriesFallbacksAndGuards) {
  SimEnvironment env(1);
  ServiceMetrics m(env);
  using T = agent::AgentEvent::Type;
  agent::AgentObserver observe = m.observer();
  observe(event(T::kTaskStarted, "t1", {}, "attempt 1"));
  observe(event(T::kTaskStarted, "t1", {}, "attempt 2"));
  observe(event(T::kStepStarted, "t1"));
  env.set_now(env.now() + 1500ms);
  observe(event(T::kRetry, "t1", {}, "3 calls"));
  observe(event(T::kFallback, "t1", {}, "openai/gpt-4o: circuit_open"));
  observe(event(T::kStepFinished, "t1", {}, "anthropic/sonnet in=10 out=5"));
  observe(event(T::kToolCall, "t1", "lookup", "call-1"));
  observe(event(T::kToolResult, "t1", "lookup", "ok"));
  observe(event(T::kToolCall, "t1", "lookup", "call-2"));
  observe(event(T::kToolResult, "t1", "lookup", "timeout"));
  observe(event(T::kInvalidCall, "t1", "serch", "unknown_tool"));
  observe(event(T::kGuard, "t1", {}, "budget_exceeded: cost 0.51 > 0.50"));
  observe(event(T::kApprovalWait, "t1", "charge", "call-3"));
  observe(event(T::kApprovalDecided, "t1", "charge", "denied: no"));
  observe(event(T::kTaskFinished, "t1", {}, "budget_exceeded"));

  const std::string page = m.render();
  const Labels a = {{"agent", "support"}};
  EXPECT_THAT(value(page, "nines_agent_task_runs_total", a), Optional(Eq(2)));
  EXPECT_THAT(value(page, "nines_agent_task_resumes_total", a), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_agent_steps_total", a), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_agent_step_duration_seconds_sum", a), Optional(DoubleNear(1.5, 1e-9)));
  EXPECT_THAT(value(page, "nines_agent_step_duration_seconds_bucket", {{"agent", "support"}, {"le", "1"}}),
              Optional(Eq(0)));
  EXPECT_THAT(value(page, "nines_agent_step_duration_seconds_bucket", {{"agent", "support"}, {"le", "2.5"}}),
              Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_agent_model_retries_total", a), Optional(Eq(2)));
  EXPECT_THAT(value(page, "nines_agent_fallbacks_total",
                    {{"agent", "support"}, {"route", "openai/gpt-4o"}, {"reason", "circuit_open"}}),
              Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_agent_tool_calls_total", {{"agent", "support"}, {"tool", "lookup"}}), Optional(Eq(2)));
  EXPECT_THAT(
      value(page, "nines_agent_tool_results_total", {{"agent", "support"}, {"tool", "lookup"}, {"result", "timeout"}}),
      Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_agent_invalid_tool_calls_total", {{"agent", "support"}, {"kind", "unknown_tool"}}),
              Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_agent_guard_stops_total", {{"agent", "support"}, {"guard", "budget_exceeded"}}),
              Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_agent_approval_waits_total", a), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_agent_approvals_total", {{"agent", "support"}, {"decision", "denied"}}),
              Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_tasks_total", {{"agent", "support"}, {"outcome", "budget_exceeded"}}),
              Optional(Eq(1)));
  // No store attached: the task's age is unknown, no duration is observed.
  EXPECT_FALSE(has_family(page, "nines_task_duration_seconds"));
}

TEST(ServiceMetrics, FinishedTaskEventTakesItsDurationFromTheStore) {
  SimEnvironment env(1);
  ServiceMetrics m(env);
  auto store = make_memory_store();
  ASSERT_THAT(store, IsOk());
  m.attach_store(**store);
  WriteBatch b;
  b.create_workflow("t1", "agent:support", "hi", TimePoint(Duration(env.unix_time_ns())));
  ASSERT_THAT((*store)->commit(b), IsOk());
  env.set_now(env.now() + 42s);
  m.on_agent_event(event(agent::AgentEvent::Type::kTaskFinished, "t1", {}, "needs_attention"));
  m.on_agent_event(event(agent::AgentEvent::Type::kTaskFinished, "unknown-task", {}, "succeeded"));
  const std::string page = m.render();
  EXPECT_THAT(value(page, "nines_tasks_total", {{"agent", "support"}, {"outcome", "needs_attention"}}),
              Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_tasks_total", {{"agent", "support"}, {"outcome", "succeeded"}}), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_task_duration_seconds_count", {{"agent", "support"}}), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_task_duration_seconds_sum", {{"agent", "support"}}), Optional(DoubleNear(42, 1e-6)));
  m.detach_store();
}

TEST(ServiceMetrics, FinishedTasksByOutcomeWithLatency) {
  SimEnvironment env(1);
  ServiceMetrics m(env);
  m.on_task_finished("support", {.status = agent::TaskStatus::kSucceeded, .wall_time = 2s});
  m.on_task_finished("support", {.status = agent::TaskStatus::kSucceeded, .wall_time = 40s});
  m.on_task_finished("support", {.status = agent::TaskStatus::kNeedsAttention, .wall_time = 1s});
  m.on_task_finished("support", {.status = agent::TaskStatus::kInterrupted});
  const std::string page = m.render();
  EXPECT_THAT(value(page, "nines_tasks_total", {{"agent", "support"}, {"outcome", "succeeded"}}), Optional(Eq(2)));
  EXPECT_THAT(value(page, "nines_tasks_total", {{"agent", "support"}, {"outcome", "needs_attention"}}),
              Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_tasks_interrupted_total", {{"agent", "support"}}), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_task_duration_seconds_count", {{"agent", "support"}}), Optional(Eq(3)));
  EXPECT_THAT(value(page, "nines_task_duration_seconds_sum", {{"agent", "support"}}), Optional(DoubleNear(43, 1e-9)));
  EXPECT_THAT(value(page, "nines_task_duration_seconds_bucket", {{"agent", "support"}, {"le", "30"}}), Optional(Eq(2)));
}

TEST(ServiceMetrics, LabelValuesAreBoundedPerFamily) {
  SimEnvironment env(1);
  ServiceMetrics m(env);
  using T = agent::AgentEvent::Type;
  for (int i = 0; i < 10'005; ++i) m.on_agent_event(event(T::kToolCall, "t", "tool" + std::to_string(i)));
  const std::string page = m.render();
  EXPECT_THAT(value(page, "nines_agent_tool_calls_total", {{"agent", "support"}, {"tool", "tool9999"}}),
              Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_agent_tool_calls_total", {{"agent", "_other"}, {"tool", "_other"}}), Optional(Eq(5)));
}

TEST(ServiceMetrics, LabelValuesAreValidUtf8CutAtACharacter) {
  SimEnvironment env(1);
  ServiceMetrics m(env);
  using T = agent::AgentEvent::Type;
  std::string long_name(127, 'a');
  long_name += "\xC3\xA9";  // é across the 128-byte limit: cut before it
  m.on_agent_event(event(T::kToolCall, "t", long_name));
  m.on_agent_event(event(T::kToolCall, "t", "bad\xFF\xC0\x80name\xE2\x82"));
  const std::string page = m.render();
  EXPECT_THAT(value(page, "nines_agent_tool_calls_total", {{"agent", "support"}, {"tool", std::string(127, 'a')}}),
              Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_agent_tool_calls_total", {{"agent", "support"}, {"tool", "bad???name??"}}),
              Optional(Eq(1)));
}

// ---- models ----
struct ModelHarness {
  test::SimRuntime s;
  ServiceMetrics m{s.env};

  llm::ChatOutcome call(llm::ChatModel& model) {
    std::optional<llm::ChatOutcome> out;
    s.spawn([&](Context& ctx) -> Task<> {
      llm::ChatRequest req;
      req.model = "sim-large";
      req.messages = {llm::Message::user("How are you today?")};
      llm::TextSink sink;
      out.emplace(co_await model.complete(ctx, req, sink));
    });
    s.rt->advance(1h);
    EXPECT_TRUE(out.has_value());
    return std::move(*out);
  }
};

TEST(ServiceMetrics, MeteredSimModelRecordsDurationTokensCostAndErrors) {
  ModelHarness h;
  auto sim = llm::SimModel::from_json(R"({"seed": 3, "latency": {"first_byte": {"distribution": "fixed", "ms": 250}},
      "schedule": [{"call": 1, "fault": "none"}, {"call": 2, "fault": "server_error"}]})");
  ASSERT_THAT(sim, IsOk());
  auto model = h.m.meter_model(std::make_shared<llm::SimChatModel>(*sim),
                               {.provider = "sim", .route = "sim/large", .model = "sim-large"},
                               {.input_per_mtok = 2, .output_per_mtok = 8});
  llm::ChatOutcome ok = h.call(*model);
  ASSERT_THAT(ok.result, IsOk());
  llm::ChatOutcome failed = h.call(*model);
  ASSERT_THAT(failed.result, StatusIs(ErrorKind::kTransient));

  const std::string page = h.m.render();
  const Labels op = {
      {"gen_ai_operation_name", "chat"}, {"gen_ai_provider_name", "sim"}, {"gen_ai_request_model", "sim-large"}};
  Labels failed_op = op;
  failed_op["error_type"] = "transient";
  EXPECT_THAT(value(page, "gen_ai_client_operation_duration_seconds_count", op), Optional(Eq(1)));
  EXPECT_THAT(value(page, "gen_ai_client_operation_duration_seconds_sum", op), Optional(DoubleNear(0.25, 1e-6)));
  Labels le = op;
  le["le"] = "0.16";
  EXPECT_THAT(value(page, "gen_ai_client_operation_duration_seconds_bucket", le), Optional(Eq(0)));
  le["le"] = "0.32";
  EXPECT_THAT(value(page, "gen_ai_client_operation_duration_seconds_bucket", le), Optional(Eq(1)));
  EXPECT_THAT(value(page, "gen_ai_client_operation_duration_seconds_count", failed_op), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_model_errors_total", {{"route", "sim/large"}, {"error_type", "transient"}}),
              Optional(Eq(1)));

  const auto in = static_cast<double>(ok.result->usage.input_tokens);
  const auto out = static_cast<double>(ok.result->usage.output_tokens);
  ASSERT_GT(in, 0);
  ASSERT_GT(out, 0);
  Labels tokens = op;
  tokens["gen_ai_token_type"] = "input";
  EXPECT_THAT(value(page, "gen_ai_client_token_usage_sum", tokens), Optional(Eq(in)));
  EXPECT_THAT(value(page, "gen_ai_client_token_usage_count", tokens), Optional(Eq(1)));
  tokens["gen_ai_token_type"] = "output";
  EXPECT_THAT(value(page, "gen_ai_client_token_usage_sum", tokens), Optional(Eq(out)));
  EXPECT_THAT(
      value(page, "nines_model_tokens_total", {{"route", "sim/large"}, {"model", "sim-large"}, {"type", "input"}}),
      Optional(Eq(in)));
  EXPECT_THAT(value(page, "nines_model_cost_usd_total", {{"route", "sim/large"}, {"model", "sim-large"}}),
              Optional(DoubleNear((in * 2 + out * 8) / 1e6, 1e-12)));

  h.m.observe_overhead("sim/large", 300us);
  EXPECT_THAT(value(h.m.render(), "nines_model_call_overhead_seconds_count", {{"route", "sim/large"}}),
              Optional(Eq(1)));
}

// A model that fails every call with kTransient after 10 ms.
class FailingModel final : public llm::ChatModel {
 public:
  Task<llm::ChatOutcome> complete(Context& ctx, const llm::ChatRequest&, llm::TextSink) override {
    auto slept = co_await ctx.sleep(10ms);
    (void)slept;
    co_return llm::ChatOutcome{Error(ErrorKind::kTransient, "down"), std::nullopt};
  }
};

TEST(ServiceMetrics, RouterCollectorPublishesBreakerStateAndRouteCounters) {
  ModelHarness h;
  auto sim = llm::SimModel::from_json(R"({"seed": 1})");
  ASSERT_THAT(sim, IsOk());
  auto make_route = [](std::string name, std::shared_ptr<llm::ChatModel> client) {
    llm::ModelRouteOptions o;
    o.name = std::move(name);
    o.client = std::move(client);
    o.retry.max_attempts = 1;
    o.breaker = CircuitBreakerOptions{
        .minimum_calls = 1, .consecutive_failures = 1, .open_duration = 24h, .max_open_duration = 24h};
    return o;
  };
  auto router =
      llm::Router::create(h.s.env, {.name = "support",
                                    .chain = {make_route("primary", std::make_shared<FailingModel>()),
                                              make_route("backup", std::make_shared<llm::SimChatModel>(*sim))}});
  ASSERT_THAT(router, IsOk());
  std::shared_ptr<llm::Router> shared = std::move(*router);
  h.m.add_router("support", shared);
  ASSERT_THAT(h.call(*shared).result, IsOk());  // primary fails and opens, backup serves
  ASSERT_THAT(h.call(*shared).result, IsOk());  // primary refused (open for a day), backup serves

  std::string page = h.m.render();
  const Labels primary = {{"agent", "support"}, {"route", "primary"}};
  const Labels backup = {{"agent", "support"}, {"route", "backup"}};
  EXPECT_THAT(value(page, "nines_route_breaker_state", primary), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_route_breaker_state", backup), Optional(Eq(0)));
  EXPECT_THAT(value(page, "nines_route_breaker_opened_total", primary), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_route_breaker_rejections_total", primary), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_route_calls_total", primary), Optional(Eq(2)));
  EXPECT_THAT(value(page, "nines_route_served_total", backup), Optional(Eq(2)));
  EXPECT_THAT(value(page, "nines_route_position", backup), Optional(Eq(1)));
  EXPECT_THAT(
      value(page, "nines_route_left_total", {{"agent", "support"}, {"route", "primary"}, {"reason", "circuit_open"}}),
      Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_route_left_total",
                    {{"agent", "support"}, {"route", "primary"}, {"reason", "retries_exhausted"}}),
              Optional(Eq(1)));

  h.m.remove_router("support");
  page = h.m.render();
  EXPECT_EQ(value(page, "nines_route_breaker_state", primary), std::nullopt);
}

// ---- supervision ----
SupervisionEvent sup_event(SupervisionEventType type, TimePoint at, std::string child_id = {}, ExitReason reason = {},
                           bool by_supervisor = false) {
  return {.type = type,
          .at = at,
          .unix_time_ns = 0,
          .supervisor = Pid{7},
          .supervisor_name = "workers",
          .child_id = std::move(child_id),
          .child = Pid{},
          .reason = std::move(reason),
          .by_supervisor = by_supervisor};
}

TEST(ServiceMetrics, MtbfMttrAndAvailabilityFromSupervisionEvents) {
  test::SimRuntime s;
  ServiceMetrics m(s.env);
  m.attach_runtime(*s.rt);
  using E = SupervisionEventType;
  const TimePoint t0 = s.env.now();
  auto emit = [&](const SupervisionEvent& e) { s.rt->events().emit(e); };
  const ExitReason crash = ExitReason::crash("std::runtime_error", "boom");
  emit(sup_event(E::kSupervisorStarted, t0));
  // a fails at 10 s, back at 12 s; b is killed at 30 s, back at 36 s; a fails at 70 s, back at
  // 71 s; c exits normally at 80 s and is restarted (not a failure); d is stopped by the
  // supervisor at 90 s (a group restart) and restarted.
  emit(sup_event(E::kChildExited, t0 + 10s, "a", crash));
  emit(sup_event(E::kRestartDelayed, t0 + 10s, "a"));
  emit(sup_event(E::kChildRestarted, t0 + 12s, "a"));
  emit(sup_event(E::kChildExited, t0 + 30s, "b", ExitReason::killed()));
  emit(sup_event(E::kChildRestarted, t0 + 36s, "b"));
  emit(sup_event(E::kChildExited, t0 + 70s, "a", crash));
  emit(sup_event(E::kChildRestarted, t0 + 71s, "a"));
  emit(sup_event(E::kChildExited, t0 + 80s, "c", ExitReason::normal()));
  emit(sup_event(E::kChildRestarted, t0 + 80s, "c"));
  emit(sup_event(E::kChildExited, t0 + 90s, "d", ExitReason::shutdown(), true));
  emit(sup_event(E::kChildRestarted, t0 + 90s, "d"));
  s.env.set_now(t0 + 100s);

  const std::string page = m.render();
  const Labels w = {{"supervisor", "workers"}};
  EXPECT_THAT(value(page, "nines_child_failures_total", w), Optional(Eq(3)));
  // MTBF: failures at 10, 30, 70: (70 - 10) / 2.
  EXPECT_THAT(value(page, "nines_supervisor_mtbf_seconds", w), Optional(DoubleNear(30, 1e-9)));
  // MTTR: (2 + 6 + 1) / 3.
  EXPECT_THAT(value(page, "nines_supervisor_mttr_seconds", w), Optional(DoubleNear(3, 1e-9)));
  EXPECT_THAT(value(page, "nines_recovery_duration_seconds_count", w), Optional(Eq(3)));
  EXPECT_THAT(value(page, "nines_recovery_duration_seconds_sum", w), Optional(DoubleNear(9, 1e-9)));
  // Down 9 s of 100.
  EXPECT_THAT(value(page, "nines_supervisor_availability_ratio", w), Optional(DoubleNear(0.91, 1e-9)));
  EXPECT_THAT(value(page, "nines_supervisor_children_down", w), Optional(Eq(0)));
  EXPECT_THAT(value(page, "nines_restarts_total", {{"supervisor", "workers"}, {"reason", "crash"}}), Optional(Eq(2)));
  EXPECT_THAT(value(page, "nines_restarts_total", {{"supervisor", "workers"}, {"reason", "killed"}}), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_restarts_total", {{"supervisor", "workers"}, {"reason", "normal"}}), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_restarts_total", {{"supervisor", "workers"}, {"reason", "by_supervisor"}}),
              Optional(Eq(1)));

  // A child down now counts until the scrape; a stopped supervisor ends its downtime.
  emit(sup_event(E::kChildExited, t0 + 100s, "a", crash));
  s.env.set_now(t0 + 110s);
  std::string later = m.render();
  EXPECT_THAT(value(later, "nines_supervisor_children_down", w), Optional(Eq(1)));
  EXPECT_THAT(value(later, "nines_supervisor_availability_ratio", w), Optional(DoubleNear(1 - 19.0 / 110, 1e-9)));
  emit(sup_event(E::kSupervisorStopped, t0 + 110s));
  s.env.set_now(t0 + 200s);
  later = m.render();
  EXPECT_THAT(value(later, "nines_supervisor_children_down", w), Optional(Eq(0)));
  EXPECT_THAT(value(later, "nines_supervisor_availability_ratio", w), Optional(DoubleNear(1 - 19.0 / 200, 1e-9)));

  // Detached: later events change nothing.
  m.detach_runtime();
  emit(sup_event(E::kChildExited, t0 + 200s, "a", crash));
  EXPECT_THAT(value(m.render(), "nines_child_failures_total", w), Optional(Eq(4)));
}

TEST(ServiceMetrics, UnnamedSupervisorsShareOneLabel) {
  test::SimRuntime s;
  ServiceMetrics m(s.env);
  m.attach_runtime(*s.rt);
  SupervisionEvent e = sup_event(SupervisionEventType::kChildExited, s.env.now(), "task", ExitReason::crash("x", "y"));
  e.supervisor_name = "supervisor <0.12>";
  s.rt->events().emit(e);
  e.supervisor_name = "supervisor <0.40>";
  e.supervisor = Pid{40};
  s.rt->events().emit(e);
  EXPECT_THAT(value(m.render(), "nines_child_failures_total", {{"supervisor", "unnamed"}}), Optional(Eq(2)));
}

struct Crash {};

TEST(ServiceMetrics, RealSupervisorRestartingACrashingChild) {
  test::SimRuntime s;
  ServiceMetrics m(s.env);
  m.attach_runtime(*s.rt);
  const TimePoint t0 = s.env.now();
  // The child crashes 10 s after each start; the supervisor restarts it after a 2 s backoff.
  ChildSpec child = ChildSpec::worker("flaky", [](Context& ctx) -> Task<> {
    auto slept = co_await ctx.sleep(10s);
    (void)slept;
    throw std::runtime_error("flaky");
  });
  child.backoff = BackoffOptions{.min_delay = 2s, .max_delay = 2s, .multiplier = 1.0, .jitter = 0.0};
  SupervisorSpec spec{.name = "flaky_sup", .intensity = 100, .period = 1s};
  spec.children.push_back(std::move(child));
  ASSERT_THAT(start_supervisor(*s.rt, spec), IsOk());
  // Starts at 0, crashes at 10, 22, 34; restarts at 12, 24, 36; at 40 s it runs.
  s.rt->advance(40s);
  ASSERT_EQ(s.env.now(), t0 + 40s);

  const std::string page = m.render();
  const Labels l = {{"supervisor", "flaky_sup"}};
  EXPECT_THAT(value(page, "nines_child_failures_total", l), Optional(Eq(3)));
  EXPECT_THAT(value(page, "nines_restarts_total", {{"supervisor", "flaky_sup"}, {"reason", "crash"}}), Optional(Eq(3)));
  EXPECT_THAT(value(page, "nines_supervisor_mttr_seconds", l), Optional(DoubleNear(2, 1e-6)));
  EXPECT_THAT(value(page, "nines_supervisor_mtbf_seconds", l), Optional(DoubleNear(12, 1e-6)));
  EXPECT_THAT(value(page, "nines_supervisor_availability_ratio", l), Optional(DoubleNear(1 - 6.0 / 40, 1e-6)));
  EXPECT_THAT(value(page, "nines_processes_alive"), Optional(Eq(2)));  // the supervisor and its child
}

// An unnamed supervisor (as the agent layer's task supervisor is) takes the child id its
// parent started it under: per-agent-group figures with Agents::supervisor_child("support").
TEST(ServiceMetrics, UnnamedSupervisorTakesItsParentsChildId) {
  test::SimRuntime s;
  ServiceMetrics m(s.env);
  m.attach_runtime(*s.rt);
  ChildSpec child = ChildSpec::worker("task", [](Context& ctx) -> Task<> {
    auto slept = co_await ctx.sleep(10s);
    (void)slept;
    throw std::runtime_error("task crashed");
  });
  child.backoff = BackoffOptions{.min_delay = 1s, .max_delay = 1s, .multiplier = 1.0, .jitter = 0.0};
  SupervisorSpec inner{.name = "", .intensity = 100, .period = 1s};
  inner.children.push_back(std::move(child));
  SupervisorSpec root{.name = "agents"};
  root.children.push_back(ChildSpec::supervisor("support", inner));
  ASSERT_THAT(start_supervisor(*s.rt, root), IsOk());
  s.rt->advance(30s);  // crashes at 10 and 21, restarts at 11 and 22

  const std::string page = m.render();
  const Labels l = {{"supervisor", "support"}};
  EXPECT_THAT(value(page, "nines_child_failures_total", l), Optional(Eq(2)));
  EXPECT_THAT(value(page, "nines_supervisor_mttr_seconds", l), Optional(DoubleNear(1, 1e-6)));
  EXPECT_THAT(value(page, "nines_supervisor_availability_ratio", l), Optional(DoubleNear(1 - 2.0 / 30, 1e-6)));
  EXPECT_EQ(value(page, "nines_supervisor_availability_ratio", {{"supervisor", "unnamed"}}), std::nullopt);
  EXPECT_THAT(value(page, "nines_supervisor_availability_ratio", {{"supervisor", "agents"}}), Optional(Eq(1)));
}

// ---- the store ----
TEST(ServiceMetrics, MeteredStoreDelegatesAndTimesCommits) {
  SimEnvironment env(1);
  ServiceMetrics m(env);
  auto inner = make_memory_store();
  ASSERT_THAT(inner, IsOk());
  std::unique_ptr<Store> store = m.meter_store(std::move(*inner));
  EXPECT_EQ(store->backend(), "memory");
  EXPECT_TRUE(store->fast_commits());
  const TimePoint now(Duration(env.unix_time_ns()));

  WriteBatch b;
  b.create_workflow("w1", "k", "in", now)
      .put_step("w1", 0, "first", StepStatus::kOk, "r0", now)
      .append_history("w1", 0, "hello")
      .put_effect_intent({.workflow_id = "w1",
                          .effect_id = "e1",
                          .idempotency_key = "k1",
                          .nature = EffectNature::kUnsafe,
                          .arguments = "{}",
                          .recorded_at = now});
  ASSERT_THAT(store->commit(b), IsOk());
  WriteBatch bad;
  bad.put_step("missing", 0, "x", StepStatus::kOk, "", now);
  EXPECT_THAT(store->commit(bad), StatusIs(ErrorKind::kNotFound));

  auto w = store->get_workflow("w1");
  ASSERT_THAT(w, IsOk());
  EXPECT_EQ(w->input, "in");
  EXPECT_THAT(store->get_workflow("nope"), StatusIs(ErrorKind::kNotFound));
  auto listed = store->list_workflows(WorkflowStatus::kRunning, "", 10);
  ASSERT_THAT(listed, IsOk());
  ASSERT_EQ(listed->size(), 1u);
  auto counts = store->count_workflows();
  ASSERT_THAT(counts, IsOk());
  EXPECT_EQ(counts->running, 1u);
  auto steps = store->load_steps("w1");
  ASSERT_THAT(steps, IsOk());
  ASSERT_EQ(steps->size(), 1u);
  EXPECT_EQ(steps->front().result, "r0");
  auto effects = store->load_effects("w1");
  ASSERT_THAT(effects, IsOk());
  EXPECT_EQ(effects->size(), 1u);
  auto pending = store->load_pending_effects(10);
  ASSERT_THAT(pending, IsOk());
  EXPECT_EQ(pending->size(), 1u);
  auto history = store->load_history("w1", 10);
  ASSERT_THAT(history, IsOk());
  EXPECT_EQ(history->tail.size(), 1u);
  auto read = store->read_history("w1", 0, 10);
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->size(), 1u);
  EXPECT_THAT(store->prune_finished(now + 1h, 10), IsOk());
  auto version = store->schema_version();
  ASSERT_THAT(version, IsOk());
  EXPECT_EQ(*version, kStoreSchemaVersion);

  const std::string page = m.render();
  EXPECT_THAT(value(page, "nines_store_commit_duration_seconds_count"), Optional(Eq(2)));
  EXPECT_THAT(value(page, "nines_store_commit_errors_total", {{"error_type", "not_found"}}), Optional(Eq(1)));
}

TEST(ServiceMetrics, StoreCollectorCountsWorkflowsAndAgesTheOldest) {
  SimEnvironment env(1);
  ServiceMetrics m(env);
  auto store = make_memory_store();
  ASSERT_THAT(store, IsOk());
  auto unix_now = [&] { return TimePoint(Duration(env.unix_time_ns())); };
  WriteBatch b;
  b.create_workflow("old", "k", "", unix_now());
  ASSERT_THAT((*store)->commit(b), IsOk());
  env.set_now(env.now() + 100s);
  b.clear();
  b.create_workflow("new", "k", "", unix_now()).create_workflow("stuck", "k", "", unix_now());
  b.set_workflow_status("stuck", WorkflowStatus::kNeedsAttention, "unsafe effect", unix_now());
  b.create_workflow("done", "k", "", unix_now())
      .set_workflow_status("done", WorkflowStatus::kCompleted, "", unix_now());
  ASSERT_THAT((*store)->commit(b), IsOk());
  env.set_now(env.now() + 20s);

  std::string page = m.render();
  EXPECT_FALSE(has_family(page, "nines_workflows"));  // not attached
  m.attach_store(**store);
  page = m.render();
  EXPECT_THAT(value(page, "nines_workflows", {{"status", "running"}}), Optional(Eq(2)));
  EXPECT_THAT(value(page, "nines_workflows", {{"status", "needs_attention"}}), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_workflows", {{"status", "completed"}}), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_workflows", {{"status", "failed"}}), Optional(Eq(0)));
  EXPECT_THAT(value(page, "nines_oldest_task_age_seconds", {{"status", "running"}}), Optional(DoubleNear(120, 1e-6)));
  EXPECT_THAT(value(page, "nines_oldest_task_age_seconds", {{"status", "needs_attention"}}),
              Optional(DoubleNear(20, 1e-6)));
  EXPECT_THAT(value(page, "nines_oldest_task_scan_truncated", {{"status", "running"}}), Optional(Eq(0)));
  m.detach_store();
  EXPECT_FALSE(has_family(m.render(), "nines_workflows"));
}

TEST(ServiceMetrics, OldestTaskScanStopsAtItsRowLimit) {
  SimEnvironment env(1);
  ServiceMetrics m(env);
  auto store = make_memory_store();
  ASSERT_THAT(store, IsOk());
  const TimePoint now(Duration(env.unix_time_ns()));
  for (int batch = 0; batch < 11; ++batch) {
    WriteBatch b;
    for (int i = 0; i < 1000; ++i) {
      char id[16];
      std::snprintf(id, sizeof id, "w%05d", batch * 1000 + i);
      b.create_workflow(id, "k", "", now);
    }
    ASSERT_THAT((*store)->commit(b), IsOk());
  }
  m.attach_store(**store);
  const std::string page = m.render();
  EXPECT_THAT(value(page, "nines_workflows", {{"status", "running"}}), Optional(Eq(11000)));
  EXPECT_THAT(value(page, "nines_oldest_task_scan_truncated", {{"status", "running"}}), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_oldest_task_scan_truncated", {{"status", "needs_attention"}}), Optional(Eq(0)));
}

// ---- the service and the process ----
TEST(ServiceMetrics, ServiceHooksAndProcessFigures) {
  SimEnvironment env(1);
  ServiceMetrics m(env);
  m.on_config_reload(true);
  env.set_now(env.now() + 5s);
  m.on_config_reload(false);
  m.on_http_request("/v1/tasks", "POST", 201, 2ms);
  m.on_http_request("/v1/tasks", "POST", 201, 3ms);
  m.on_http_request("/v1/tasks/{id}", "GET", 404, 1ms);
  m.set_ready(true);
  m.set_mailbox_depth("api", 3);

  const std::string page = m.render();
  EXPECT_THAT(value(page, "nines_config_reloads_total", {{"result", "ok"}}), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_config_reloads_total", {{"result", "rejected"}}), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_config_last_reload_successful"), Optional(Eq(0)));
  // The timestamp of the accepted load, 5 s before the rejected one.
  EXPECT_THAT(value(page, "nines_config_last_reload_success_timestamp_seconds"),
              Optional(DoubleNear(static_cast<double>(env.unix_time_ns()) / 1e9 - 5, 1e-3)));
  EXPECT_THAT(value(page, "nines_http_requests_total", {{"route", "/v1/tasks"}, {"method", "POST"}, {"code", "201"}}),
              Optional(Eq(2)));
  EXPECT_THAT(value(page, "nines_http_request_duration_seconds_sum", {{"route", "/v1/tasks"}, {"method", "POST"}}),
              Optional(DoubleNear(0.005, 1e-9)));
  EXPECT_THAT(
      value(page, "nines_http_requests_total", {{"route", "/v1/tasks/{id}"}, {"method", "GET"}, {"code", "404"}}),
      Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_ready"), Optional(Eq(1)));
  EXPECT_THAT(value(page, "nines_mailbox_depth", {{"process", "api"}}), Optional(Eq(3)));
  EXPECT_THAT(value(page, "process_resident_memory_bytes"), Optional(Gt(1 << 20)));
  EXPECT_THAT(value(page, "process_open_fds"), Optional(Ge(3)));
  m.set_ready(false);
  EXPECT_THAT(value(m.render(), "nines_ready"), Optional(Eq(0)));
}

// Hooks from several processes on two worker threads while pages render: nothing is lost (the
// sanitizer presets check the locking).
TEST(ServiceMetrics, HooksFromManyProcessesWhileRendering) {
  auto env = make_real_environment({.workers = 2});
  auto rt = Runtime::create(*env, {.workers = 2});
  ASSERT_THAT(rt, IsOk());
  ServiceMetrics m(*env);
  m.attach_runtime(**rt);
  constexpr int kProcesses = 4;
  constexpr int kEvents = 500;
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int p = 0; p < kProcesses; ++p) {
    auto w = (*rt)->spawn_watched([&m, p](Context& ctx) -> Task<> {
      using T = agent::AgentEvent::Type;
      const std::string task = "t" + std::to_string(p);
      for (int i = 0; i < kEvents; ++i) {
        m.on_agent_event(event(T::kStepStarted, task));
        m.on_agent_event(event(T::kStepFinished, task));
        m.on_agent_event(event(T::kToolCall, task, "tool" + std::to_string(i % 7)));
        m.on_task_finished("support", {.status = agent::TaskStatus::kSucceeded, .wall_time = 1s});
        m.on_http_request("/v1/tasks", "GET", 200, 1ms);
        if (i % 50 == 0) (void)co_await ctx.sleep(1ms);
      }
    });
    ASSERT_THAT(w, IsOk());
    watches.push_back(w->exit);
  }
  auto renderer = (*rt)->spawn_watched([&m](Context& ctx) -> Task<> {
    for (int i = 0; i < 20; ++i) {
      std::string page = m.render();
      EXPECT_NE(page.find("# TYPE"), std::string::npos);
      (void)co_await ctx.sleep(1ms);
    }
  });
  ASSERT_THAT(renderer, IsOk());
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
  EXPECT_TRUE(renderer->exit->wait().is_normal());
  const std::string page = m.render();
  const double n = kProcesses * kEvents;
  EXPECT_THAT(value(page, "nines_agent_steps_total", {{"agent", "support"}}), Optional(Eq(n)));
  EXPECT_THAT(value(page, "nines_agent_step_duration_seconds_count", {{"agent", "support"}}), Optional(Eq(n)));
  EXPECT_THAT(value(page, "nines_tasks_total", {{"agent", "support"}, {"outcome", "succeeded"}}), Optional(Eq(n)));
  EXPECT_THAT(value(page, "nines_http_requests_total", {{"route", "/v1/tasks"}, {"method", "GET"}, {"code", "200"}}),
              Optional(Eq(n)));
  double tool_calls = 0;
  for (const Sample& s : parse(page)) {
    if (s.name == "nines_agent_tool_calls_total") tool_calls += s.value;
  }
  EXPECT_EQ(tool_calls, n);
  m.detach_runtime();
}

// Every family, populated; written to $NINES_METRICS_PAGE for `promtool check metrics`
// (service_metrics_promtool). Also checks here that every sample line belongs to a family
// with HELP and TYPE and that counters end in _total.
TEST(MetricsPage, PopulatedPageForPromtool) {
  ModelHarness h;
  ServiceMetrics& m = h.m;
  using T = agent::AgentEvent::Type;
  for (auto type : {T::kTaskStarted, T::kStepStarted, T::kRetry, T::kFallback, T::kStepFinished, T::kToolCall,
                    T::kToolResult, T::kInvalidCall, T::kGuard, T::kApprovalWait, T::kApprovalDecided}) {
    std::string detail = type == T::kRetry      ? "2 calls"
                         : type == T::kFallback ? "sim/large: circuit_open"
                         : type == T::kGuard    ? "loop_detected: same call"
                                                : "ok";
    m.on_agent_event(event(type, "t1", "lookup", detail));
  }
  m.on_task_finished("support", {.status = agent::TaskStatus::kSucceeded, .wall_time = 3s});
  m.on_task_finished("support", {.status = agent::TaskStatus::kInterrupted});
  auto sim = llm::SimModel::from_json(R"({"seed": 3, "schedule": [{"call": 2, "fault": "rate_limited"}]})");
  ASSERT_THAT(sim, IsOk());
  auto model = m.meter_model(std::make_shared<llm::SimChatModel>(*sim), {.provider = "sim", .route = "sim/large"},
                             {.input_per_mtok = 1, .output_per_mtok = 2});
  h.call(*model);
  h.call(*model);
  m.observe_overhead("sim/large", 1ms);
  llm::ModelRouteOptions route;
  route.name = "sim/large";
  route.client = model;
  auto router = llm::Router::create(h.s.env, {.name = "support", .chain = {route}});
  ASSERT_THAT(router, IsOk());
  std::shared_ptr<llm::Router> shared = std::move(*router);
  m.add_router("support", shared);
  h.call(*shared);
  m.attach_runtime(*h.s.rt);
  const ExitReason crash = ExitReason::crash("e", "m");
  h.s.rt->events().emit(sup_event(SupervisionEventType::kChildExited, h.s.env.now(), "a", crash));
  h.s.rt->events().emit(sup_event(SupervisionEventType::kChildRestarted, h.s.env.now() + 1s, "a"));
  h.s.rt->events().emit(sup_event(SupervisionEventType::kChildExited, h.s.env.now() + 2s, "a", crash));
  h.s.rt->events().emit(sup_event(SupervisionEventType::kIntensityExceeded, h.s.env.now() + 2s, "a"));
  auto store = make_memory_store();
  ASSERT_THAT(store, IsOk());
  std::unique_ptr<Store> metered = m.meter_store(std::move(*store));
  WriteBatch b;
  b.create_workflow("w1", "k", "", TimePoint(Duration(h.s.env.unix_time_ns())));
  ASSERT_THAT(metered->commit(b), IsOk());
  b.clear();
  b.start_attempt("missing", TimePoint{});
  EXPECT_FALSE(metered->commit(b).ok());
  m.attach_store(*metered);
  m.on_config_reload(true);
  m.on_http_request("/metrics", "GET", 200, 1ms);
  m.set_ready(true);
  m.set_mailbox_depth("api", 0);

  const std::string page = m.render();
  std::set<std::string> typed;
  std::set<std::string> helped;
  std::map<std::string, std::string> types;
  std::istringstream in(page);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string hash, kind, name, type;
    words >> hash >> kind >> name >> type;
    if (hash != "#") continue;
    if (kind == "HELP") helped.insert(name);
    if (kind == "TYPE") types[name] = type;
  }
  for (const Sample& s : parse(page)) {
    std::string family = s.name;
    for (std::string suffix : {"_bucket", "_sum", "_count"}) {
      if (!types.contains(family) && family.ends_with(suffix)) family.resize(family.size() - suffix.size());
    }
    ASSERT_TRUE(types.contains(family)) << s.name << " has no TYPE line";
    EXPECT_TRUE(helped.contains(family)) << s.name << " has no HELP line";
    if (types[family] == "counter") {
      EXPECT_TRUE(family.ends_with("_total")) << family;
    }
    EXPECT_FALSE(std::isnan(s.value)) << s.name;
  }
  // Every family the documentation lists is on this page.
  for (const char* name : {"nines_agent_task_runs_total",
                           "nines_agent_steps_total",
                           "nines_agent_step_duration_seconds",
                           "nines_agent_tool_calls_total",
                           "nines_agent_tool_results_total",
                           "nines_agent_invalid_tool_calls_total",
                           "nines_agent_model_retries_total",
                           "nines_agent_fallbacks_total",
                           "nines_agent_guard_stops_total",
                           "nines_agent_approval_waits_total",
                           "nines_agent_approvals_total",
                           "nines_tasks_total",
                           "nines_tasks_interrupted_total",
                           "nines_task_duration_seconds",
                           "gen_ai_client_operation_duration_seconds",
                           "gen_ai_client_token_usage",
                           "nines_model_tokens_total",
                           "nines_model_cost_usd_total",
                           "nines_model_errors_total",
                           "nines_model_call_overhead_seconds",
                           "nines_route_breaker_state",
                           "nines_route_breaker_opened_total",
                           "nines_route_breaker_transitions_total",
                           "nines_route_breaker_rejections_total",
                           "nines_route_calls_total",
                           "nines_route_served_total",
                           "nines_route_left_total",
                           "nines_route_position",
                           "nines_restarts_total",
                           "nines_child_failures_total",
                           "nines_supervisor_give_ups_total",
                           "nines_recovery_duration_seconds",
                           "nines_supervisor_mtbf_seconds",
                           "nines_supervisor_mttr_seconds",
                           "nines_supervisor_availability_ratio",
                           "nines_supervisor_children_down",
                           "nines_processes_alive",
                           "nines_store_commit_duration_seconds",
                           "nines_store_commit_errors_total",
                           "nines_workflows",
                           "nines_oldest_task_age_seconds",
                           "nines_oldest_task_scan_truncated",
                           "nines_config_reloads_total",
                           "nines_config_last_reload_successful",
                           "nines_config_last_reload_success_timestamp_seconds",
                           "nines_http_requests_total",
                           "nines_http_request_duration_seconds",
                           "nines_ready",
                           "nines_mailbox_depth",
                           "process_resident_memory_bytes",
                           "process_open_fds",
                           "process_max_fds"}) {
    EXPECT_TRUE(types.contains(name)) << name << " is not on the page";
  }
  if (const char* path = std::getenv("NINES_METRICS_PAGE")) {
    std::ofstream out(path);
    out << page;
    ASSERT_TRUE(out.good()) << "writing " << path;
  }
}

}  // namespace
}  // namespace nines::service
