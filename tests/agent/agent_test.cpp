// Agent tasks on the deterministic runtime with the sim model: the loop, what is recorded, the
// guards, and each failure mode of the guide (../shared/seed) as its own test.
#include "nines/agent/agent.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "agent/agent_world.hpp"
#include "nines/runtime/supervisor.hpp"
#include "support/status_matchers.hpp"

namespace nines::agent {
namespace {

using test::AgentWorld;
using test::IsOk;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

using namespace std::chrono_literals;

constexpr const char* kTwoLookupsThenAnswer = R"({"seed": 1, "scenario": [
  {"tool_calls": [{"name": "lookup", "arguments": {"id": "order-1"}}]},
  {"tool_calls": [{"name": "lookup", "arguments": {"id": "customer-7"}}]},
  {"answer": "Order 1 belongs to customer 7."}]})";

std::size_t history_size(AgentWorld& w, const std::string& task) {
  return w.store->read_history(task, 0, 100000).value().size();
}

TEST(Agent, RunsToAFinalAnswerAndRecordsEachTurnOnce) {
  AgentWorld w;
  w.add_route("sim/primary", kTwoLookupsThenAnswer);
  w.start();
  auto out = w.run("t1", "Whose is order 1?");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
  EXPECT_EQ(out->answer, "Order 1 belongs to customer 7.");
  EXPECT_EQ(out->steps, 3);
  EXPECT_EQ(out->model_calls, 3);
  EXPECT_EQ(out->tool_calls, 2);
  EXPECT_EQ(out->models, std::vector<std::string>{"sim/primary"});
  EXPECT_FALSE(out->degraded);
  EXPECT_GT(out->input_tokens, 0);
  EXPECT_GT(out->output_tokens, 0);
  EXPECT_EQ(w.tools_world->calls["lookup"], 2);
  // user, assistant(call), tool, assistant(call), tool, assistant(answer): each stored once.
  EXPECT_EQ(history_size(w, "t1"), 6u);
  EXPECT_THAT(w.event_types(), Contains("tool_call"));
  EXPECT_EQ(w.event_types().back(), "task_finished");

  // A finished task returns its recorded outcome and calls nothing.
  auto again = w.run("t1", "ignored");
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->status, TaskStatus::kSucceeded);
  EXPECT_EQ(again->answer, out->answer);
  EXPECT_EQ(w.model_calls(), 3u);
  EXPECT_EQ(w.tools_world->calls["lookup"], 2);
}

// The store holds each message once: a long task's history grows with the new content of each
// turn, not with the whole prompt again per turn.
TEST(Agent, EachMessageIsStoredOnceNotThePromptPerStep) {
  AgentWorld w;
  std::string scenario = R"({"seed": 2, "scenario": [)";
  for (int i = 0; i < 40; ++i) {
    scenario += R"({"tool_calls": [{"name": "lookup", "arguments": {"id": "item-)" + std::to_string(i) + R"("}}]},)";
  }
  scenario += R"({"answer": "done"}]})";
  w.add_route("sim/primary", scenario);
  w.agent_options.budget.max_steps = 100;
  w.agent_options.loop.max_turns_without_progress = 0;
  w.start();
  auto out = w.run("long", "Look at every item.");
  ASSERT_TRUE(out.has_value());
  ASSERT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
  EXPECT_EQ(out->steps, 41);
  auto history = w.store->read_history("long", 0, 100000).value();
  EXPECT_EQ(history.size(), 1u + 40u * 2u + 1u);
  std::size_t history_bytes = 0;
  for (const auto& h : history) history_bytes += h.message.size();
  std::size_t step_bytes = 0;
  auto steps = w.store->load_steps("long").value();
  for (const auto& s : steps) step_bytes += s.result.size();
  std::size_t effect_bytes = 0;
  auto effects = w.store->load_effects("long").value();
  for (const auto& e : effects) effect_bytes += e.outcome.value_or("").size();
  // The prompt of the last turn alone is about the whole history; stored per step it would be
  // ~40x the history. Step records are small metadata; tool outputs are also in the journal.
  EXPECT_LT(step_bytes, 41u * 200u);
  EXPECT_LT(history_bytes + step_bytes + effect_bytes, 3 * history_bytes);
  EXPECT_GT(out->input_tokens, static_cast<std::int64_t>(history_bytes / 4) * 10);  // the prompts did grow
}

TEST(Agent, HallucinatedToolGetsAClearErrorAndIsNeverRun) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 3, "schedule": [{"call": 1, "fault": "hallucinated_tool"}],
    "scenario": [{"tool_calls": [{"name": "lookup", "arguments": {"id": "a"}}]}, {"answer": "ok"}]})");
  w.start();
  auto out = w.run("h");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
  EXPECT_EQ(out->tool_errors["unknown_tool"], 1);
  EXPECT_EQ(w.tools_world->calls["lookup"], 1);  // only the real call ran
  // The model was told which tools exist.
  auto history = w.store->read_history("h", 0, 100).value();
  bool told = false;
  for (const auto& h : history) {
    if (h.message.find("unknown_tool") != std::string::npos && h.message.find("lookup") != std::string::npos) {
      told = true;
    }
  }
  EXPECT_TRUE(told);
  EXPECT_THAT(w.event_types(), Contains("invalid_tool_call"));
}

TEST(Agent, MalformedArgumentsAndSchemaViolationsAreNotExecuted) {
  for (const char* mode : {"syntax", "schema"}) {
    SCOPED_TRACE(mode);
    AgentWorld w;
    w.add_route("sim/primary", std::string(R"({"seed": 4, "schedule": [{"call": 1, "fault": "invalid_tool_args"}],
      "faults": {"invalid_tool_args": {"probability": 0, "mode": ")") +
                                   mode + R"("}},
      "scenario": [{"tool_calls": [{"name": "charge", "arguments": {"reference": "r1", "amount": 5}}]},
                   {"answer": "charged"}]})");
    w.start();
    auto out = w.run("m");
    ASSERT_TRUE(out.has_value());
    EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
    const std::string kind = std::string(mode) == "syntax" ? "invalid_json" : "schema_violation";
    EXPECT_EQ(out->tool_errors[kind], 1);
    EXPECT_EQ(w.tools_world->calls["charge"], 1);  // the bad call never ran; the good one once
    EXPECT_EQ(w.tools_world->ledger.all_applied().size(), 1u);
  }
}

TEST(Agent, TooManyInvalidCallsFailTheTask) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 5, "faults": {"hallucinated_tool": {"probability": 1.0}},
    "scenario": [{"tool_calls": [{"name": "lookup", "arguments": {"id": "a"}}]}, {"answer": "ok"}]})");
  w.agent_options.max_invalid_tool_calls = 2;
  w.start();
  auto out = w.run("bad");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kFailed);
  EXPECT_THAT(out->reason, HasSubstr("invalid tool calls"));
  EXPECT_EQ(out->tool_errors["unknown_tool"], 3);
  EXPECT_EQ(w.tools_world->calls["lookup"], 0);
}

TEST(Agent, InfiniteLoopIsDetectedAndTheModelGivesAFinalAnswer) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 6, "scenario": [
    {"tool_calls": [{"name": "lookup", "arguments": {"id": "same"}}]},
    {"tool_calls": [{"name": "lookup", "arguments": {"id": "same"}}]},
    {"tool_calls": [{"name": "lookup", "arguments": {"id": "same"}}]},
    {"answer": "best guess: record same"}]})");
  w.start();
  auto out = w.run("loop");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kLoopDetected);
  EXPECT_THAT(out->reason, HasSubstr("same arguments"));
  // The third identical call is not run; the model gets one last request without tools.
  EXPECT_EQ(w.tools_world->calls["lookup"], 2);
  EXPECT_EQ(out->answer, "best guess: record same");
  EXPECT_THAT(w.event_types(), Contains("guard"));
}

TEST(Agent, StepsWithoutProgressAreALoop) {
  AgentWorld w;
  // Different arguments each turn, but the tool's answers repeat: no new information.
  std::string scenario = R"({"seed": 7, "scenario": [)";
  for (int i = 0; i < 10; ++i) {
    scenario += R"({"tool_calls": [{"name": "flaky", "arguments": {"n": )" + std::to_string(i) + R"(}}]},)";
  }
  scenario += R"({"answer": "never"}]})";
  w.add_route("sim/primary", scenario);
  w.agent_options.loop.stop_on_repeated_error = false;
  w.agent_options.loop.max_turns_without_progress = 3;
  w.agent_options.loop.final_answer = false;
  w.start();
  auto out = w.run("stuck");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kLoopDetected);
  EXPECT_THAT(out->reason, HasSubstr("without a new tool result"));
  EXPECT_EQ(out->steps, 3);
}

TEST(Agent, TheSameCallFailingTwiceInARowIsALoop) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 8, "scenario": [
    {"tool_calls": [{"name": "flaky", "arguments": {}}]},
    {"tool_calls": [{"name": "flaky", "arguments": {}}]},
    {"answer": "never"}]})");
  w.agent_options.loop.final_answer = false;
  w.start();
  auto out = w.run("twice");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kLoopDetected);
  EXPECT_THAT(out->reason, HasSubstr("failed with the same error twice"));
  EXPECT_EQ(out->tool_errors["transient"], 2);
  EXPECT_EQ(w.tools_world->calls["flaky"], 4);  // two calls, each retried once by its policy
}

TEST(Agent, BudgetExceededStopsBeforeTheCallThatWouldCrossIt) {
  AgentWorld w;
  std::string scenario = R"({"seed": 9, "scenario": [)";
  for (int i = 0; i < 30; ++i) {
    scenario += R"({"tool_calls": [{"name": "lookup", "arguments": {"id": "x)" + std::to_string(i) + R"("}}]},)";
  }
  scenario += R"({"answer": "done"}]})";
  w.add_route("sim/primary", scenario);
  w.agent_options.prices["sim/primary"] = {.input_per_mtok = 1000, .output_per_mtok = 2000};
  w.agent_options.max_output_tokens = 256;
  w.agent_options.budget.max_cost_usd = 3.0;
  w.agent_options.loop.max_turns_without_progress = 0;
  w.start();
  auto out = w.run("spend");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kBudgetExceeded) << out->reason;
  EXPECT_THAT(out->reason, HasSubstr("max_cost_usd"));
  EXPECT_LE(out->cost_usd, 3.0);  // the estimate stops it before it crosses
  // It did spend: each call costs ~$0.3 and is estimated at ~$0.8 (its whole output allowed).
  EXPECT_GE(out->cost_usd, 3.0 - 1.0);
  EXPECT_GE(out->steps, 5);
  EXPECT_LT(out->steps, 30);
}

TEST(Agent, StepAndModelCallBudgets) {
  AgentWorld w;
  std::string scenario = R"({"seed": 10, "scenario": [)";
  for (int i = 0; i < 30; ++i) {
    scenario += R"({"tool_calls": [{"name": "lookup", "arguments": {"id": "y)" + std::to_string(i) + R"("}}]},)";
  }
  scenario += R"({"answer": "done"}]})";
  w.add_route("sim/primary", scenario);
  w.agent_options.budget.max_steps = 4;
  w.start();
  auto out = w.run("steps");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kBudgetExceeded);
  EXPECT_THAT(out->reason, HasSubstr("max_steps"));
  EXPECT_EQ(out->steps, 4);
  EXPECT_EQ(w.model_calls(), 4u);
}

TEST(Agent, RateLimitStormIsRetriedAndTheTaskFinishes) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 11,
    "faults": {"rate_limited": {"probability": 0.3, "retry_after_ms": 500}},
    "schedule": [{"call": 1, "fault": "rate_limited"}, {"call": 2, "fault": "rate_limited"},
                 {"call": 4, "fault": "rate_limited"}],
    "scenario": [{"tool_calls": [{"name": "lookup", "arguments": {"id": "a"}}]},
                 {"tool_calls": [{"name": "lookup", "arguments": {"id": "b"}}]},
                 {"tool_calls": [{"name": "lookup", "arguments": {"id": "c"}}]},
                 {"answer": "fine"}]})");
  w.add_route("sim/backup", R"({"seed": 12,
    "scenario": [{"tool_calls": [{"name": "lookup", "arguments": {"id": "a"}}]},
                 {"tool_calls": [{"name": "lookup", "arguments": {"id": "b"}}]},
                 {"tool_calls": [{"name": "lookup", "arguments": {"id": "c"}}]},
                 {"answer": "fine"}]})");
  w.start();
  auto out = w.run("storm");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
  EXPECT_GT(out->retries + out->fallbacks, 0);
  EXPECT_EQ(out->model_calls, static_cast<std::int64_t>(w.model_calls(0) + w.model_calls(1)));
  EXPECT_EQ(w.tools_world->calls["lookup"], 3);
}

TEST(Agent, ProviderOutageFallsBackAndIsReportedDegraded) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 13, "faults": {"unavailable": {"probability": 1.0}}})");
  w.add_route("sim/backup", kTwoLookupsThenAnswer);
  w.agent_options.prices["sim/backup"] = {.input_per_mtok = 1, .output_per_mtok = 1};
  w.start();
  auto out = w.run("outage");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
  EXPECT_TRUE(out->degraded);
  EXPECT_EQ(out->models, std::vector<std::string>{"sim/backup"});
  EXPECT_GE(out->fallbacks, 1);
  EXPECT_GT(out->cost_usd, 0);
  EXPECT_THAT(w.event_types(), Contains("fallback"));
}

TEST(Agent, ToolTimeoutIsReportedToTheModel) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 14, "scenario": [
    {"tool_calls": [{"name": "slow", "arguments": {}}]}, {"answer": "it timed out"}]})");
  w.start();
  auto out = w.run("slowtask");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
  EXPECT_EQ(out->tool_errors["timeout"], 1);
  EXPECT_EQ(w.tools_world->alive["slow"], 0);  // the hung call's frame is gone
}

TEST(Agent, ToolCallsOfOneTurnRunConcurrently) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 15, "scenario": [
    {"tool_calls": [{"name": "lookup", "arguments": {"id": "a"}}, {"name": "lookup", "arguments": {"id": "b"}},
                    {"name": "lookup", "arguments": {"id": "c"}}, {"name": "lookup", "arguments": {"id": "d"}}]},
    {"answer": "four"}]})");
  w.lookup_delay = 10s;
  w.agent_options.max_parallel_tools = 2;
  w.start();
  // Two at a time, 10 s each: 20 s for four; one at a time would take 40 s.
  auto early = w.run("par", "x", 25s);
  ASSERT_TRUE(early.has_value());
  EXPECT_EQ(early->status, TaskStatus::kSucceeded) << early->reason;
  EXPECT_EQ(early->tool_calls, 4);
  EXPECT_LT(early->wall_time, 25s);
  EXPECT_GE(early->wall_time, 20s);
}

// kill -9 of the whole program in the middle of a tool call: the task resumes at its last
// recorded step; model turns are not paid again; the idempotent charge is applied once.
TEST(Agent, ProgramCrashMidToolCallResumesWithoutPayingTwice) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 16, "scenario": [
    {"tool_calls": [{"name": "lookup", "arguments": {"id": "a"}}]},
    {"tool_calls": [{"name": "charge", "arguments": {"reference": "r1", "amount": 3}}]},
    {"answer": "charged"}]})");
  w.start();
  auto first = w.run("crash", "charge it", 200ms);  // inside charge (500 ms), after its intent
  EXPECT_FALSE(first.has_value());
  EXPECT_EQ(w.tools_world->calls["charge"], 1);
  const auto calls_before = w.model_calls();
  EXPECT_EQ(calls_before, 2u);
  w.restart();
  auto second = w.run("crash", "charge it");
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->status, TaskStatus::kSucceeded) << second->reason;
  EXPECT_EQ(second->restarts, 1);
  EXPECT_EQ(w.model_calls(), calls_before + 1);  // only the final turn was new
  EXPECT_EQ(w.tools_world->calls["lookup"], 1);
  EXPECT_EQ(w.tools_world->calls["charge"], 2);  // run again with its key...
  auto applied = w.tools_world->ledger.all_applied();
  ASSERT_EQ(applied.size(), 1u);
  EXPECT_EQ(applied.begin()->second, 1);  // ...applied once
  EXPECT_EQ(second->steps, 3);
}

// An unsafe tool interrupted between its side effect and its record is never run again: the
// task waits for an operator.
TEST(Agent, UnsafeToolInterruptedGoesToNeedsAttention) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 17, "scenario": [
    {"tool_calls": [{"name": "charge_unsafe", "arguments": {"reference": "r1", "amount": 3}}]},
    {"answer": "charged"}]})");
  w.start();
  auto first = w.run("unsafe", "charge it", 200ms);
  EXPECT_FALSE(first.has_value());
  w.restart();
  auto second = w.run("unsafe", "charge it");
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->status, TaskStatus::kNeedsAttention);
  EXPECT_THAT(second->reason, HasSubstr("charge_unsafe"));
  EXPECT_EQ(w.tools_world->calls["charge_unsafe"], 1);
  // The outcome counts the recorded model turn (as a cancelled one does), from run() and outcome().
  EXPECT_EQ(second->steps, 1);
  EXPECT_EQ(second->model_calls, 1);
  EXPECT_GT(second->input_tokens, 0);
  EXPECT_GT(second->output_tokens, 0);
  EXPECT_EQ(second->models, std::vector<std::string>{"sim/primary"});
  auto recorded = w.agents->outcome("unsafe");
  ASSERT_THAT(recorded, IsOk());
  EXPECT_EQ(recorded->status, TaskStatus::kNeedsAttention);
  EXPECT_EQ(recorded->steps, 1);
  EXPECT_EQ(recorded->model_calls, 1);
  EXPECT_EQ(recorded->input_tokens, second->input_tokens);
  EXPECT_EQ(recorded->output_tokens, second->output_tokens);
}

// The task's process crashes (is killed) mid-task under the task supervisor: it is restarted
// with backoff and resumes.
TEST(Agent, SupervisedTaskProcessKilledMidTaskIsRestartedAndResumes) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 18, "scenario": [
    {"tool_calls": [{"name": "charge", "arguments": {"reference": "r9", "amount": 1}}]},
    {"answer": "done"}]})");
  w.start();
  auto pid = std::make_shared<Pid>();
  auto outcome = std::make_shared<std::optional<Result<TaskOutcome>>>();
  w.sim->spawn([&w, pid, outcome](Context& ctx) -> Task<> {
    EXPECT_THAT(w.agents->start_supervisor(ctx), IsOk());
    auto started = co_await w.agents->start(ctx, "helper", "sup", "charge r9");
    EXPECT_THAT(started, IsOk());
    if (!started.ok()) co_return;
    *pid = *started;
    auto slept = co_await ctx.sleep(200ms);  // inside the charge
    ctx.runtime().send_exit(*pid, ExitReason::kill());
    outcome->emplace(co_await w.agents->wait(ctx, "sup"));
  });
  w.sim->rt->advance(1h);
  ASSERT_TRUE(outcome->has_value());
  ASSERT_THAT(**outcome, IsOk());
  const TaskOutcome& out = ***outcome;
  EXPECT_EQ(out.status, TaskStatus::kSucceeded) << out.reason;
  EXPECT_EQ(out.restarts, 1);
  auto applied = w.tools_world->ledger.all_applied();
  ASSERT_EQ(applied.size(), 1u);
  EXPECT_EQ(applied.begin()->second, 1);
}

TEST(Agent, CancellationDuringAToolCallEndsTheTaskWithNothingLeftRunning) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 19, "scenario": [
    {"tool_calls": [{"name": "slow", "arguments": {}}]}, {"answer": "never"}]})");
  w.start();
  auto outcome = std::make_shared<std::optional<Result<TaskOutcome>>>();
  w.sim->spawn([&w, outcome](Context& ctx) -> Task<> {
    EXPECT_THAT(w.agents->start_supervisor(ctx), IsOk());
    auto started = co_await w.agents->start(ctx, "helper", "cx", "wait");
    EXPECT_THAT(started, IsOk());
    if (!started.ok()) co_return;
    auto slept = co_await ctx.sleep(500ms);  // the slow tool is running
    EXPECT_EQ(w.tools_world->alive["slow"], 1);
    EXPECT_THAT(w.agents->cancel("cx"), IsOk());
    outcome->emplace(co_await w.agents->wait(ctx, "cx"));
  });
  w.sim->rt->advance(1h);
  ASSERT_TRUE(outcome->has_value());
  ASSERT_THAT(**outcome, IsOk());
  EXPECT_EQ((**outcome)->status, TaskStatus::kCancelled);
  EXPECT_EQ(w.tools_world->alive["slow"], 0);
  EXPECT_EQ(w.tools_world->calls["slow"], 1);
}

// An approval wait is durable: the task waits across a restart of the program, and the call
// runs once when approved.
TEST(Agent, ApprovalWaitSurvivesARestartAndRunsWhenApproved) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 20, "scenario": [
    {"tool_calls": [{"name": "refund", "arguments": {"reference": "r1", "amount": 9}}]}, {"answer": "refunded"}]})");
  w.start();
  auto first = w.run("ap", "refund r1", 10min);
  EXPECT_FALSE(first.has_value());  // waiting
  EXPECT_THAT(w.event_types(), Contains("approval_wait"));
  std::string call_id;
  for (const auto& e : w.events) {
    if (e.type == AgentEvent::Type::kApprovalWait) call_id = e.detail;
  }
  ASSERT_FALSE(call_id.empty());
  EXPECT_EQ(w.tools_world->calls["refund"], 0);
  w.restart();
  w.events.clear();
  // Decided while nothing runs the task: recorded durably, seen when it resumes.
  EXPECT_THAT(w.agents->approve("ap", call_id), IsOk());
  EXPECT_THAT(w.agents->approve("ap", call_id), test::StatusIs(ErrorKind::kAlreadyExists));
  auto second = w.run("ap", "refund r1");
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->status, TaskStatus::kSucceeded) << second->reason;
  EXPECT_EQ(w.tools_world->calls["refund"], 1);
  EXPECT_THAT(w.event_types(), Contains("approval_decided"));
}

TEST(Agent, ApprovalWakesAWaitingTaskAndADenialIsToldToTheModel) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 21, "scenario": [
    {"tool_calls": [{"name": "refund", "arguments": {"reference": "r2", "amount": 9}}]}, {"answer": "not refunded"}]})");
  w.start();
  auto outcome = std::make_shared<std::optional<TaskOutcome>>();
  w.sim->spawn([&w, outcome](Context& ctx) -> Task<> {
    outcome->emplace(co_await w.agents->run(ctx, "helper", "dn", "refund r2"));
  });
  w.sim->rt->advance(5s);
  std::string call_id;
  for (const auto& e : w.events) {
    if (e.type == AgentEvent::Type::kApprovalWait) call_id = e.detail;
  }
  ASSERT_FALSE(call_id.empty());
  EXPECT_THAT(w.agents->deny("dn", call_id, "over the limit"), IsOk());
  w.sim->rt->advance(1min);
  ASSERT_TRUE(outcome->has_value());
  EXPECT_EQ((*outcome)->status, TaskStatus::kSucceeded);
  EXPECT_EQ((*outcome)->tool_errors["denied"], 1);
  EXPECT_EQ(w.tools_world->calls["refund"], 0);
  auto history = w.store->read_history("dn", 0, 100).value();
  bool told = false;
  for (const auto& h : history) told = told || h.message.find("over the limit") != std::string::npos;
  EXPECT_TRUE(told);
}

TEST(Agent, DurableSleepSleepsOnlyWhatIsLeftAfterARestart) {
  AgentWorld w;
  w.add_route("sim/primary", R"({"seed": 22, "scenario": [
    {"tool_calls": [{"name": "sleep", "arguments": {"seconds": 3600}}]}, {"answer": "woke up"}]})");
  w.agent_options.sleep_tool = true;
  w.start();
  auto first = w.run("zz", "wait an hour", 20min);
  EXPECT_FALSE(first.has_value());
  EXPECT_THAT(w.event_types(), Contains("sleep"));
  w.restart();
  // The new runtime's clock starts where the old one was (the same virtual epoch): 40 min left.
  auto early = w.run("zz", "wait an hour", 30min);
  EXPECT_FALSE(early.has_value());
  w.restart();
  auto done = w.run("zz", "wait an hour", 2h);
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->status, TaskStatus::kSucceeded) << done->reason;
  EXPECT_EQ(done->answer, "woke up");
}

TEST(Agent, ForkRunsAWhatIfFromARecordedTurnAndLeavesTheOldTaskAlone) {
  AgentWorld w;
  w.add_route("sim/primary", kTwoLookupsThenAnswer);
  w.start();
  auto out = w.run("orig", "Whose is order 1?");
  ASSERT_TRUE(out.has_value());
  ASSERT_EQ(out->status, TaskStatus::kSucceeded);
  const auto calls = w.model_calls();
  const auto old_steps = w.store->load_steps("orig").value().size();
  const auto old_history = history_size(w, "orig");

  // From turn 2 (after both lookups): the copied turns are replayed, only turn 2 is new.
  EXPECT_THAT(w.agents->fork("orig", "fork-2", {.at_turn = 2}), IsOk());
  auto forked = w.run("fork-2", "ignored");
  ASSERT_TRUE(forked.has_value());
  EXPECT_EQ(forked->status, TaskStatus::kSucceeded) << forked->reason;
  EXPECT_EQ(forked->steps, 3);
  EXPECT_EQ(w.model_calls(), calls + 1);
  EXPECT_EQ(w.tools_world->calls["lookup"], 2);  // not run again

  // From turn 0 with another question: everything runs anew.
  EXPECT_THAT(w.agents->fork("orig", "fork-0", {.at_turn = 0, .input = "Whose is order 2?"}), IsOk());
  auto fresh = w.run("fork-0", "ignored");
  ASSERT_TRUE(fresh.has_value());
  EXPECT_EQ(fresh->status, TaskStatus::kSucceeded);
  EXPECT_EQ(w.tools_world->calls["lookup"], 4);
  auto first = w.store->read_history("fork-0", 0, 1).value();
  ASSERT_EQ(first.size(), 1u);
  EXPECT_THAT(first[0].message, HasSubstr("order 2"));

  // The old task is untouched.
  EXPECT_EQ(w.store->load_steps("orig").value().size(), old_steps);
  EXPECT_EQ(history_size(w, "orig"), old_history);
  auto again = w.run("orig", "x");
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->answer, out->answer);

  EXPECT_THAT(w.agents->fork("orig", "fork-2", {}), test::StatusIs(ErrorKind::kAlreadyExists));
  EXPECT_THAT(w.agents->fork("orig", "f9", {.at_turn = 9}), test::StatusIs(ErrorKind::kNotFound, "turn 9"));
  EXPECT_THAT(w.agents->fork("nope", "f", {}), test::StatusIs(ErrorKind::kNotFound));
}

// The provider says the prompt does not fit: the router compacts it through the agent's context
// manager (summarizing into a checkpoint) and the task goes on.
TEST(Agent, ContextOverflowIsCompactedAndTheTaskGoesOn) {
  AgentWorld w;
  std::string scenario = R"({"seed": 23, "context_window_tokens": 3000, "scenario": [)";
  for (int i = 0; i < 8; ++i) {
    scenario += R"({"tool_calls": [{"name": "big", "arguments": {"n": )" + std::to_string(i) + R"(}}]},)";
  }
  scenario += R"({"answer": "read them all"}]})";
  w.add_route("sim/primary", scenario);
  w.extra_tools.push_back(make_native_tool({.name = "big",
                                            .description = "Returns a long text",
                                            .parameters_schema_json = R"({"type":"object"})",
                                            .nature = EffectNature::kReadOnly},
                                           [](Context&, const ToolInvocation& inv) -> Task<Result<std::string>> {
                                             std::string text;  // ~2,400 bytes of ordinary words
                                             for (int i = 0; text.size() < 2400; ++i) {
                                               text += "record " + std::to_string(i * 7919 % 1000) + " of " +
                                                       inv.arguments_json + " is fine; ";
                                             }
                                             co_return text;
                                           })
                              .value());
  w.agent_options.tools.push_back("big");
  w.agent_options.loop.max_turns_without_progress = 0;
  // The agent's own budget is large (it does not fit the prompt ahead): the router's window
  // check (or the provider's refusal, when the estimate is low) is what makes it compact.
  w.route_window = 3000;
  w.agent_options.context_window_tokens = 200000;
  w.agent_options.max_output_tokens = 256;
  auto summarizer = std::make_shared<llm::SimChatModel>(
      llm::SimModel::from_json(R"({"scenario": [{"answer": "The tool returned long texts."}]})").value());
  w.agent_options.context = std::shared_ptr<const llm::ContextManager>(
      llm::ContextManager::create({.summarizer_model = "sim-summary"}, nullptr, summarizer).value());
  // The sim picks its scenario turn by counting the assistant messages in the prompt, so once
  // old turns are folded into a summary it replays earlier turns: the task cannot reach the
  // scripted answer, and it runs until its step budget. What matters here: it goes on past the
  // point where the prompt stopped fitting (about turn 4), with each prompt compacted.
  w.agent_options.loop.max_identical_calls = 0;
  w.agent_options.budget.max_steps = 12;
  w.start();
  auto out = w.run("ctx", "read everything");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kBudgetExceeded) << out->reason;
  EXPECT_EQ(out->steps, 12);
  EXPECT_GT(w.router->counters(0).compactions + w.router->counters(0).left[0], 0u);
  // The summary checkpoint is in the store, and the history is whole (summaries delete nothing).
  EXPECT_TRUE(w.store->load_history("ctx", 1000).value().summary.has_value());
  EXPECT_EQ(history_size(w, "ctx"), 1u + 12u * 2u);
}

TEST(Agent, AddAgentChecksItsOptions) {
  AgentWorld w;
  w.add_route("sim/primary", kTwoLookupsThenAnswer);
  w.start();
  AgentOptions a{.name = "x", .router = w.router, .tools = {"nope"}};
  EXPECT_THAT(w.agents->add_agent(a), test::StatusIs(ErrorKind::kInvalidArgument, "not in the registry"));
  a.tools = {};
  a.name = "bad name";
  EXPECT_THAT(w.agents->add_agent(a), test::StatusIs(ErrorKind::kInvalidArgument, "name"));
  a.name = "helper";
  EXPECT_THAT(w.agents->add_agent(a), test::StatusIs(ErrorKind::kAlreadyExists));
  a.name = "norouter";
  a.router = nullptr;
  EXPECT_THAT(w.agents->add_agent(a), test::StatusIs(ErrorKind::kInvalidArgument, "router"));
}

TEST(Agent, OutcomeRoundTripsAsJson) {
  TaskOutcome o;
  o.status = TaskStatus::kBudgetExceeded;
  o.answer = "a";
  o.reason = "max_cost_usd";
  o.steps = 3;
  o.model_calls = 5;
  o.cost_usd = 0.25;
  o.models = {"m1", "m2"};
  o.tool_errors = {{"timeout", 2}};
  o.wall_time = 1500ms;
  auto back = decode_outcome(encode_outcome(o));
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->status, o.status);
  EXPECT_EQ(back->models, o.models);
  EXPECT_EQ(back->tool_errors, o.tool_errors);
  EXPECT_EQ(back->wall_time, o.wall_time);
  EXPECT_EQ(back->cost_usd, o.cost_usd);
  EXPECT_THAT(decode_outcome("{}"), test::StatusIs(ErrorKind::kInvalidArgument));
}

}  // namespace
}  // namespace nines::agent
