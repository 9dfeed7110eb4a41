// A multi-agent tree with an MCP tool server (docs/agents.md): a coordinator agent delegates to a
// researcher agent whose tools come from an MCP server (npm server-filesystem, a child process)
// reading a folder of notes, then saves a report; both on scripted `sim` models that fail on purpose.
//
// Each agent is a group of its own (an Agents: its own task supervisor, both under one root) on one
// workflow engine. The coordinator's first model call gets a 503 (the router retries it); the
// researcher once calls a tool that does not exist (the agent tells the model, which goes on).
// Usage: nines_example_agent_tree <dir holding node_modules/@modelcontextprotocol | the server's
// dist/index.js>. Exits 0 when both tasks succeeded, the researcher's answer reached the
// coordinator, the report was saved once and the MCP child is gone; 77 (skipped) without node or
// the server, or with NINES_SKIP_MCP=1; 1 otherwise.
#include <signal.h>

#include <unistd.h>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>

#include "nines/agent/agent.hpp"
#include "nines/agent/delegate.hpp"
#include "nines/agent/mcp.hpp"
#include "nines/agent/registry.hpp"
#include "nines/llm/router.hpp"
#include "nines/llm/sim.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/runtime/supervisor.hpp"
#include "nines/store/memory_store.hpp"
#include "nines/workflow/workflow.hpp"

using namespace std::chrono_literals;
namespace agent = nines::agent;
namespace fs = std::filesystem;
namespace llm = nines::llm;

// A router over one scripted sim model, priced so that the outcomes show a cost.
std::shared_ptr<llm::Router> sim_router(nines::Environment& env, const std::string& script) {
  llm::ModelRouteOptions route{.name = "sim",
                               .model = "sim-1",
                               .client = std::make_shared<llm::SimChatModel>(llm::SimModel::from_json(script).value())};
  route.retry.backoff = nines::Backoff::full_jitter(10ms, 100ms);  // quick, for the example
  return llm::Router::create(env, {.name = "chain", .chain = {route}}).value();
}
const std::map<std::string, agent::Price> kPrices = {{"sim", {.input_per_mtok = 3, .output_per_mtok = 15}}};

// The researcher reads the notes (two files in one turn), after a call to a tool that does not exist.
std::string researcher_script(const std::string& notes) {
  return R"({"seed": 2, "schedule": [{"call": 2, "fault": "hallucinated_tool"}], "scenario": [
    {"tool_calls": [{"name": "list_directory", "arguments": {"path": ")" +
         notes + R"("}}]},
    {"tool_calls": [{"name": "read_text_file", "arguments": {"path": ")" +
         notes + R"(/outage.md"}},
                    {"name": "read_text_file", "arguments": {"path": ")" +
         notes + R"(/fix.md"}}]},
    {"answer": "The outage was a full disk on db-2; the fix is log rotation."}]})";
}
// The coordinator's first call gets a 503; then it delegates, saves the report and answers.
constexpr const char* kCoordinatorScript = R"({"seed": 1,
  "schedule": [{"call": 1, "fault": "unavailable"}],
  "scenario": [
    {"tool_calls": [{"name": "ask_researcher", "arguments": {"task": "What do the notes say about the outage?"}}]},
    {"tool_calls": [{"name": "save_report", "arguments": {"title": "Outage", "body": "db-2 disk full; rotate logs"}}]},
    {"answer": "Report 'Outage' saved."}]})";

// What the example checks at the end (observers run in the tasks' processes: lock).
struct Trace {
  std::mutex mu;
  std::map<std::string, int> ok_results;  // tool -> calls that returned ok
  std::string researcher_task;            // the delegated sub-task's id
  void observe(const agent::AgentEvent& e) {
    std::lock_guard lock(mu);
    if (e.type == agent::AgentEvent::Type::kStepStarted) return;
    std::printf("  %-11s [%s] %s %s\n", e.agent.c_str(), std::string(agent::to_string(e.type)).c_str(), e.tool.c_str(),
                e.detail.c_str());
    if (e.type == agent::AgentEvent::Type::kToolResult && e.detail == "ok") ++ok_results[e.tool];
    if (e.agent == "researcher") researcher_task = e.task_id;
  }
};

void print_outcome(const std::string& task, const agent::TaskOutcome& o) {
  std::printf("%s: %s (%s)\n  steps %lld, model calls %lld (retries %lld), tool calls %lld, cost $%.6f\n", task.c_str(),
              std::string(agent::to_string(o.status)).c_str(),
              o.status == agent::TaskStatus::kSucceeded ? o.answer.c_str() : o.reason.c_str(),
              static_cast<long long>(o.steps), static_cast<long long>(o.model_calls), static_cast<long long>(o.retries),
              static_cast<long long>(o.tool_calls), o.cost_usd);
  for (const auto& [kind, n] : o.tool_errors) std::printf("  tool errors: %s x%lld\n", kind.c_str(), (long long)n);
}

// Why the example cannot run here (it is then skipped), or "" with `js` set to the server's entry.
std::string skip_reason(int argc, char** argv, fs::path& js) {
  if (const char* skip = std::getenv("NINES_SKIP_MCP"); skip != nullptr && std::string(skip) == "1") {
    return "NINES_SKIP_MCP=1";
  }
  if (argc < 2) return "usage: nines_example_agent_tree <dir holding node_modules | the server's index.js>";
  js = argv[1];
  if (fs::is_directory(js)) js /= "node_modules/@modelcontextprotocol/server-filesystem/dist/index.js";
  if (!fs::is_regular_file(js)) return js.string() + " not found (run npm ci in tests/agent/mcp_servers)";
  std::stringstream path(std::getenv("PATH") != nullptr ? std::getenv("PATH") : "");
  for (std::string dir; std::getline(path, dir, ':');) {
    if (!dir.empty() && ::access((fs::path(dir) / "node").c_str(), X_OK) == 0) return "";
  }
  return "node is not in PATH";
}

int main(int argc, char** argv) {
  fs::path server_js;
  if (std::string why = skip_reason(argc, argv, server_js); !why.empty()) {
    std::printf("skipped: %s\n", why.c_str());
    return 77;
  }
  // The notes the researcher reads, in a folder of their own.
  const fs::path notes = fs::temp_directory_path() / ("nines_agent_tree_" + std::to_string(::getpid()));
  fs::create_directories(notes);
  std::ofstream(notes / "outage.md") << "03:12 db-2 stopped accepting writes: disk full (logs).\n";
  std::ofstream(notes / "fix.md") << "Rotate db-2's logs daily; alert at 80% disk.\n";
  const std::string dir = fs::canonical(notes).string();

  auto env = nines::make_real_environment();
  auto rt = nines::Runtime::create(*env).value();
  auto store = nines::make_memory_store().value();  // open_sqlite_store(path) to survive restarts
  auto engine = nines::WorkflowEngine::create(*env, *store).value();

  Trace trace;
  std::atomic<int> reports_saved{0};
  agent::TaskOutcome job, research;
  int mcp_pid = 0;
  bool mcp_gone = false;

  auto main_process = rt->spawn_watched([&](nines::Context& ctx) -> nines::Task<> {
    auto deadline = ctx.with_timeout(45s);
    // The MCP server: a child process whose tools/list becomes agent tools (read_text_file, ...).
    agent::McpServerOptions fs_options{.name = "fs", .command = {"node", server_js.string(), dir}};
    auto fs_server = co_await agent::McpServer::start(ctx, std::move(fs_options));
    if (!fs_server.ok()) {
      std::printf("mcp: %s\n", fs_server.error().to_string().c_str());
      co_return;
    }
    mcp_pid = (co_await (*fs_server)->status(ctx)).value().child_pid;

    // Group 1, the researchers: the MCP server's tools.
    auto researchers =
        agent::Agents::create(*env, *engine, agent::ToolRegistry::create(*env, (*fs_server)->tools()).value()).value();
    researchers->add_observer([&](const agent::AgentEvent& e) { trace.observe(e); });
    nines::Status ok = researchers->add_agent({.name = "researcher",
                                               .router = sim_router(*env, researcher_script(dir)),
                                               .system_prompt = "You answer from the notes in " + dir,
                                               .tools = {"list_directory", "read_text_file"},
                                               .budget = {.max_steps = 8},
                                               .prices = kPrices});

    // Group 2, the coordinators: the researcher as a tool, and a native tool with an effect.
    auto ask = agent::make_delegate_tool(*researchers, {.tool_name = "ask_researcher",
                                                        .description = "Gives a research task to the researcher",
                                                        .agent = "researcher",
                                                        .prices = kPrices})
                   .value();
    auto save = agent::make_native_tool(
                    {.name = "save_report",
                     .description = "Saves a report",
                     .parameters_schema_json = R"({"type":"object","required":["title","body"],
                       "properties":{"title":{"type":"string"},"body":{"type":"string"}}})",
                     .nature = nines::EffectNature::kUnsafe},  // journaled: runs at most once
                    [&](nines::Context&, const agent::ToolInvocation&) -> nines::Task<nines::Result<std::string>> {
                      ++reports_saved;
                      co_return std::string("saved");
                    })
                    .value();
    auto coordinators =
        agent::Agents::create(*env, *engine, agent::ToolRegistry::create(*env, {ask, save}).value()).value();
    coordinators->add_observer([&](const agent::AgentEvent& e) { trace.observe(e); });
    if (ok.ok()) {
      ok = coordinators->add_agent({.name = "coordinator",
                                    .router = sim_router(*env, kCoordinatorScript),
                                    .system_prompt = "Ask the researcher, then save a report.",
                                    .tools = {"ask_researcher", "save_report"},
                                    .budget = {.max_steps = 8, .max_cost_usd = 1.0},
                                    .prices = kPrices});
    }
    if (!ok.ok()) {
      std::printf("add_agent: %s\n", ok.error().to_string().c_str());
      co_return;
    }

    // Both groups' task supervisors under one root; the coordinator's task runs under its own.
    nines::SupervisorSpec root{.name = "agents", .strategy = nines::Strategy::kOneForOne};
    root.children = {researchers->supervisor_child("researchers"), coordinators->supervisor_child("coordinators")};
    nines::Pid sup = nines::start_supervisor(ctx.runtime(), root).value();
    const std::string job_id = "report-1";
    if ((co_await coordinators->start(ctx, "coordinator", job_id, "Write a report on last night's outage.")).ok()) {
      nines::Result<agent::TaskOutcome> done = co_await coordinators->wait(ctx, job_id);
      if (done.ok()) job = *done;
      if (auto child = researchers->outcome(trace.researcher_task); child.ok()) research = *child;
    }

    // Shut down: the supervision tree, then the MCP server (its child is killed and reaped).
    auto down = ctx.monitor(sup);
    ctx.runtime().send_exit(sup, nines::ExitReason::shutdown());  // children stop in reverse order
    (void)co_await ctx.wait_down(down);
    co_await (*fs_server)->stop(ctx);
    mcp_gone = mcp_pid > 0 && ::kill(mcp_pid, 0) == -1 && errno == ESRCH;
  });
  main_process.value().exit->wait();

  print_outcome("report-1 (coordinator)", job);
  print_outcome(trace.researcher_task + " (researcher)", research);
  std::printf("reports saved: %d; MCP server child %d %s\n", reports_saved.load(), mcp_pid,
              mcp_gone ? "exited and reaped" : "STILL THERE");
  fs::remove_all(notes);
  const bool good = job.status == agent::TaskStatus::kSucceeded && research.status == agent::TaskStatus::kSucceeded &&
                    trace.ok_results["ask_researcher"] == 1 && trace.ok_results["read_text_file"] == 2 &&
                    reports_saved == 1 && job.retries >= 1 && research.tool_errors.count("unknown_tool") == 1 &&
                    mcp_gone;
  return good ? 0 : 1;
}
