// nines/agent/delegate.hpp: multi-agent delegation: a tool whose call runs a sub-task of
// another agent as its own durable task, with a budget drawn from the calling task's.
//
//   // Two groups, each an Agents object (its own task supervisor) on the same engine:
//   auto workers = agent::Agents::create(env, *engine, worker_tools).value();
//   workers->add_agent({.name = "researcher", .router = r1, .tools = {"lookup"}});
//   auto research = agent::make_delegate_tool(*workers, {.tool_name = "ask_researcher",
//                                                        .description = "Gives a research task to the researcher",
//                                                        .agent = "researcher"}).value();
//   auto coordinator_tools = agent::ToolRegistry::create(env, {research}).value();
//   auto coordinators = agent::Agents::create(env, *engine, coordinator_tools).value();
//   coordinators->add_agent({.name = "coordinator", .router = r0, .tools = {"ask_researcher"},
//                            .budget = {.max_tokens = 20000}});
//   // in a process: the coordinator's call {"task": "..."} runs a researcher task to its end
//   agent::TaskOutcome out = co_await coordinators->run(ctx, "coordinator", "job-1", "Plan ...");
//
// A call of the tool (kIdempotent) runs the sub-task "<parent>.<agent>.<16 hex>" (a hash of the
// call's idempotency key: delegate_child_id) as a task of `agent` in `agents`: a workflow of
// its own, in a process linked to the call's. Because the id is derived from the journal's
// key, a parent resumed after a crash or a kill -9 calls the tool again with the same key and
// finds the same child: a finished child returns its recorded outcome, an unfinished one is
// resumed where its records end; no second child is started.
//
// Where the child runs: in a process linked to the call's, so in the calling group's process tree
// (the coordinator's task supervisor restarts it with the parent); the sub-agent's Agents only
// supplies the agent, its observers and the workflow kind. Its own group's supervisor is not
// needed, and a crash storm there does not stop delegated sub-tasks. Cancelling the child
// directly (Agents::cancel on the sub-agents' Agents) also kills the call, which is retried and
// then reports the child as cancelled.
//
// Budget: the child runs under its own agent's Budget and, on top of it, under what is left of
// the parent's (ToolInvocation::budget_left: cost, tokens, model calls, wall time) as its
// per-task cap (RunOptions::cap):
//  - a call when the parent has nothing left (and no child exists yet) is refused with
//    kBudgetExceeded, starting nothing;
//  - the child checks the cap itself, before each model call with its estimate, like its own
//    budget: it stops before a call that could cross it (overrun: at most the call in flight)
//    and ends budget_exceeded with a reason naming "the task's cap";
//  - the cap is recorded in the child's first record: a child resumed after a crash or a kill -9
//    (by this tool's retry, a resumed parent, resume_all) keeps it.
// The child's spend (its outcome's cost, tokens and model calls) is reported through
// ToolInvocation::spend, so the parent's outcome and budget count it.
//
// Cancel: the child is started with RunOptions::parent_task_id, so it is recorded in the
// parent's signal log; Agents::cancel of the parent cancels it durably (agent.hpp, cancel()).
//
// Results: the child's answer when it succeeded; otherwise a tool error whose message names the
// child, its status and reason: kBudgetExceeded (budget_exceeded: its own budget or the cap),
// kPermanent (failed, loop_detected, cancelled, needs_attention), kTransient (its run was
// interrupted: retried by the tool's retry policy, which resumes it).
//
// Errors of make_delegate_tool: kInvalidArgument for a bad spec (validate_tool_spec), an
// empty agent, or a timeout <= 0.
//
// Not done: a live spend query (the parent sees the child's spend when the call ends).
// DelegateOptions::prices is no longer used (the child prices its own calls).
//
// Ownership: the tool borrows `agents` (it must outlive the tool and every process that calls
// it). Thread-safety: call() may run in any number of processes.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "nines/agent/agent.hpp"
#include "nines/agent/tool.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"

namespace nines::agent {

struct DelegateOptions {
  std::string tool_name;    // what the coordinator's model calls; [a-zA-Z0-9_-]{1,64}
  std::string description;  // what the model reads about the sub-agent
  std::string agent;        // the sub-agent, registered in the Agents given to make_delegate_tool
  // The arguments' schema; `input_field` (a string) is the sub-task's input.
  std::string parameters_schema_json =
      R"({"type":"object","properties":{"task":{"type":"string","minLength":1}},"required":["task"]})";
  std::string input_field = "task";
  // Bounds each attempt of a call (the whole sub-task, or what is left of it on a retry).
  Duration timeout = std::chrono::hours(1);
  // Unused (kept for source compatibility): the child prices its calls with its agent's table
  // and checks the parent's cost left itself (its per-task cap).
  std::map<std::string, Price> prices;
};

// The id of the child task of the call with this key: "<parent>.<agent>.<16 hex digits>".
std::string delegate_child_id(std::string_view parent_task_id, std::string_view agent,
                              std::string_view idempotency_key);

Result<std::shared_ptr<Tool>> make_delegate_tool(Agents& agents, DelegateOptions options);

}  // namespace nines::agent
