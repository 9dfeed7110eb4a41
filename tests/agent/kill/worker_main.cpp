// nines_agent_kill_worker DB_PATH LEDGER_PORT TASKS: the program the agent kill test SIGKILLs.
// Opens the SQLite store, builds the agent of program.hpp (HTTP tools against the ledger
// process, the in-process sim model with faults), resumes every task left running by the
// last (killed) run in the background (WorkflowEngine::resume_all), meanwhile runs tasks
// task-0 .. task-(TASKS-1) 8 at a time (a finished task returns its outcome at once; one the
// resumer runs is refused here and ended there), and exits 0 when every task has ended:
// succeeded, or needs_attention (an unsafe charge interrupted by a kill). A run interrupted
// for another reason (the model's retries exhausted) is run again, at most 50 times.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "agent/kill/program.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/store/sqlite_store.hpp"
#include "nines/workflow/workflow.hpp"

using namespace nines;
namespace program = nines::test::agent_program;

namespace {

template <class T>
T must(Result<T> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "nines_agent_kill_worker: %s: %s\n", what, r.error().to_string().c_str());
    std::exit(1);
  }
  return std::move(*r);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: nines_agent_kill_worker DB_PATH LEDGER_PORT TASKS\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  const std::string base = std::string("http://127.0.0.1:") + argv[2];
  const int tasks = std::atoi(argv[3]);
  auto env = make_real_environment({.workers = 2});
  // kBatched: a commit survives kill -9 of the process (what this test does), not power loss.
  auto store = must(open_sqlite_store(argv[1], {.durability = Durability::kBatched}), "opening the store");
  auto engine = must(WorkflowEngine::create(*env, *store), "engine");
  net::HttpClientOptions http_options;
  http_options.proxy = "";
  http_options.timeouts.total = std::chrono::seconds(10);
  std::shared_ptr<net::HttpClient> http = must(net::HttpClient::create(*env, std::move(http_options)), "http client");
  auto registry = must(agent::ToolRegistry::create(*env, must(program::tools(http, base), "tools")), "registry");
  // Seeded per run: the faults differ from run to run, and still follow the request.
  auto model = must(llm::SimModel::from_json(program::sim_config(env->random_u64() % 1000, 0.05, 2)), "sim model");
  auto router = must(program::router(*env, model), "router");
  // NINES_AGENT_KILL_UNJOURNALED=1: the broken variant without the effect journal, to see the
  // test catch charges applied twice (not registered; run by hand).
  agent::AgentsOptions agents_options;
  agents_options.unjournaled_tools_for_testing = std::getenv("NINES_AGENT_KILL_UNJOURNALED") != nullptr;
  auto agents = must(agent::Agents::create(*env, *engine, registry, agents_options), "agents");
  if (Status s = agents->add_agent(program::agent_options(router)); !s.ok()) {
    std::fprintf(stderr, "add_agent: %s\n", s.error().to_string().c_str());
    return 1;
  }
  auto rt = must(Runtime::create(*env), "runtime");
  // The test starts the clock to its kill at this line, so kills land in the work.
  std::printf("ready\n");
  std::fflush(stdout);
  std::atomic<int> failures{0};
  auto root = must(rt->spawn_watched([&](Context& ctx) -> Task<> {
    auto resumer = engine->resume_all(ctx, 8);
    if (!resumer.ok()) {
      std::fprintf(stderr, "resume_all: %s\n", resumer.error().to_string().c_str());
      ++failures;
      co_return;
    }
    const MonitorRef resumer_ref = ctx.monitor(*resumer);
    std::set<MonitorRef> running;
    std::function<bool(const Message&)> is_down = [&running](const Message& m) {
      const Down* d = m.get<Down>();
      return d != nullptr && running.contains(d->ref);
    };
    for (int i = 0; i < tasks; ++i) {
      while (running.size() >= 8) {
        std::optional<Message> m = co_await ctx.receive_if(is_down);
        running.erase(m->get<Down>()->ref);
      }
      Behavior child = [&agents, &failures, i](Context& c) -> Task<> {
        for (int attempt = 0; attempt < 50; ++attempt) {
          agent::TaskOutcome out =
              co_await agents->run(c, program::kAgent, program::task_id(i), "pay task " + std::to_string(i));
          if (out.status == agent::TaskStatus::kSucceeded || out.status == agent::TaskStatus::kNeedsAttention) {
            co_return;
          }
          // The resumer runs it: it ends there.
          if (out.status == agent::TaskStatus::kFailed && out.reason.find("already_exists") != std::string::npos) {
            co_return;
          }
          if (out.status != agent::TaskStatus::kInterrupted) {
            std::fprintf(stderr, "%s: %s: %s\n", program::task_id(i).c_str(),
                         std::string(agent::to_string(out.status)).c_str(), out.reason.c_str());
            ++failures;
            co_return;
          }
          auto slept = co_await c.sleep(std::chrono::milliseconds(5));
        }
        std::fprintf(stderr, "%s: still interrupted after 50 runs\n", program::task_id(i).c_str());
        ++failures;
      };
      running.insert(ctx.monitor(ctx.spawn(std::move(child)).value()));
    }
    while (!running.empty()) {
      std::optional<Message> m = co_await ctx.receive_if(is_down);
      running.erase(m->get<Down>()->ref);
    }
    std::function<bool(const Message&)> is_resumer_down = [resumer_ref](const Message& m) {
      const Down* d = m.get<Down>();
      return d != nullptr && d->ref == resumer_ref;
    };
    std::optional<Message> m = co_await ctx.receive_if(is_resumer_down);
    if (!m->get<Down>()->reason.is_normal()) {
      std::fprintf(stderr, "resumer: %s\n", m->get<Down>()->reason.to_string().c_str());
      ++failures;
    }
    // What the resumer left unfinished (its run was interrupted): run here until it ends.
    for (int i = 0; i < tasks; ++i) {
      for (int attempt = 0; attempt < 50; ++attempt) {
        Result<agent::TaskOutcome> o = agents->outcome(program::task_id(i));
        if (o.ok() || o.error().kind() != ErrorKind::kTransient) break;
        agent::TaskOutcome out = co_await agents->run(ctx, program::kAgent, program::task_id(i), "");
        if (out.status == agent::TaskStatus::kInterrupted) {
          auto slept = co_await ctx.sleep(std::chrono::milliseconds(5));
        }
      }
    }
  }),
                   "spawn");
  root.exit->wait();
  rt.reset();
  agents.reset();
  return failures == 0 ? 0 : 3;
}
