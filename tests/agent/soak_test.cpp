// The agent soak: many agent tasks (program.hpp: model turns and HTTP tool calls of every
// effect nature) on the real runtime with a SQLite store, the in-process sim model with faults
// (rate limits, 500s, 503s: 5% each) and a flaky ledger (every 7th idempotent or read-only
// request answered 503), 64 tasks at a time. It prints resident memory (from /proc/self/statm),
// the live heap (ASan builds) and open descriptors (/proc/self/fd) after a warm-up and at the
// end, and asserts both are flat within a stated tolerance, that every task succeeded, and that
// every charge was applied exactly once.
//
//   AgentSoak.TenThousand  10,000 tasks of the short shape (three turns, one call of each
//                          nature), in the test command for the debug build (ctest agent_soak,
//                          labels agent and soak; ~1.5 min under ASan on this 2-core machine).
//                          NINES_AGENT_SOAK_TASKS=N runs N instead.
//   AgentSoak.Short        400 tasks of the full shape (four turns, six calls): what the TSan
//                          build runs (ctest agent_soak_short), where 10,000 would take too long.
//
// Under ASan freed memory sits in a quarantine before it is reused, which would read as
// growth: this binary caps the quarantine at 16 MB (__asan_default_options below) and the
// warm-up runs past it. It also keeps 8 frames of each allocation's stack instead of 30
// (cheaper allocations; leak reports stay readable).
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "agent/kill/http_ledger.hpp"
#include "agent/kill/program.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/store/sqlite_store.hpp"

#if defined(__SANITIZE_ADDRESS__)
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();  // sanitizer/allocator_interface.h
extern "C" void __sanitizer_print_memory_profile(std::size_t top_percent, std::size_t max_contexts);
#endif

extern "C" const char* __asan_default_options() { return "quarantine_size_mb=16:malloc_context_size=8"; }

extern char** environ;

namespace nines::agent {
namespace {

namespace program = test::agent_program;

struct Usage {
  long rss_kb = 0;
  int fds = 0;
  long heap_kb = -1;  // bytes the program holds allocated (ASan builds only; -1 otherwise)
};

Usage usage() {
  Usage u;
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  u.rss_kb = resident * (::sysconf(_SC_PAGESIZE) / 1024);
#if defined(__SANITIZE_ADDRESS__)
  u.heap_kb = static_cast<long>(__sanitizer_get_current_allocated_bytes() / 1024);
#endif
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (const dirent* e = ::readdir(d)) u.fds += e->d_name[0] != '.';
    ::closedir(d);
    u.fds -= 1;  // the directory's own descriptor
  }
  return u;
}

struct SoakResult {
  Usage warm, end;
  std::map<TaskStatus, int> outcomes;
  int stray = 0;  // runs that ended neither with an outcome nor interrupted
  std::map<std::string, test::HttpLedger::Counts> ledger;
  int tool_faults = 0;
  std::int64_t model_retries = 0;
  std::int64_t tool_errors = 0;  // tool calls that failed for good (the model saw the error)
};

SoakResult soak(int tasks, int warmup, program::Shape shape) {
  SoakResult res;
  std::string dir = ::testing::TempDir() + "nines_agent_soak_XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp";
    return res;
  }
  // The ledger runs in a process of its own, so that its books (which grow with every
  // charge) are not counted in this process's memory.
  const std::string port_file = dir + "/ledger.port";
  std::vector<std::string> args = {NINES_AGENT_KILL_LEDGER_BIN, port_file, "7"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t ledger_pid = -1;
  if (::posix_spawn(&ledger_pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) {
    ADD_FAILURE() << "cannot start the ledger";
    return res;
  }
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reaper{ledger_pid};
  int port = 0;
  for (int i = 0; i < 1000 && port == 0; ++i) {
    std::ifstream in(port_file);
    if (!(in >> port)) port = 0;
    if (port == 0) ::poll(nullptr, 0, 10);  // a 10 ms pause
  }
  if (port == 0) {
    ADD_FAILURE() << "the ledger did not start";
    return res;
  }
  auto env = make_real_environment({.workers = 2, .seed = 2026});
  {
    // A 4 MB page cache (the default is 64 MB): full within the warm-up, so that what grows
    // after it is not the cache filling up.
    auto store =
        open_sqlite_store(dir + "/soak.db", {.durability = Durability::kBatched, .cache_bytes = 4 << 20}).value();
    auto engine = WorkflowEngine::create(*env, *store).value();
    net::HttpClientOptions http_options;
    http_options.proxy = "";
    http_options.timeouts.total = std::chrono::seconds(10);
    std::shared_ptr<net::HttpClient> http = net::HttpClient::create(*env, std::move(http_options)).value();
    auto registry =
        ToolRegistry::create(*env, program::tools(http, "http://127.0.0.1:" + std::to_string(port)).value()).value();
    auto model = llm::SimModel::from_json(program::sim_config(7, 0.05, 0, shape)).value();
    auto agents = Agents::create(*env, *engine, registry).value();
    Status added = agents->add_agent(program::agent_options(program::router(*env, model).value()));
    EXPECT_TRUE(added.ok()) << added.error().to_string();
    std::atomic<int> stray{0};
    std::map<TaskStatus, int> outcomes;  // the root process only
    std::mutex outcomes_mu;
    std::atomic<std::int64_t> retries{0}, tool_errors{0};
    auto rt = Runtime::create(*env).value();
    auto root = rt->spawn_watched([&](Context& ctx) -> Task<> {
                    std::set<MonitorRef> running;
                    int done = 0;
                    std::function<bool(const Message&)> is_down = [&running](const Message& m) {
                      const Down* d = m.get<Down>();
                      return d != nullptr && running.contains(d->ref);
                    };
                    auto one_down = [&]() -> Task<> {
                      std::optional<Message> m = co_await ctx.receive_if(is_down);
                      running.erase(m->get<Down>()->ref);
                      if (++done == warmup) res.warm = usage();
                    };
                    for (int i = 0; i < tasks; ++i) {
                      while (running.size() >= 64) co_await one_down();
                      Behavior child = [&, i](Context& c) -> Task<> {
                        for (int attempt = 0; attempt < 20; ++attempt) {
                          TaskOutcome out = co_await agents->run(c, program::kAgent, program::task_id(i), "pay");
                          if (out.status == TaskStatus::kInterrupted) continue;  // resumed at its last record
                          retries += out.retries;
                          for (const auto& [kind, n] : out.tool_errors) tool_errors += n;
                          std::lock_guard l(outcomes_mu);
                          ++outcomes[out.status];
                          co_return;
                        }
                        ++stray;
                      };
                      running.insert(ctx.monitor(ctx.spawn(std::move(child)).value()));
                    }
                    while (!running.empty()) co_await one_down();
                  }).value();
    ExitReason r = root.exit->wait();
    EXPECT_TRUE(r.is_normal()) << r.to_string();
    res.end = usage();
#if defined(__SANITIZE_ADDRESS__)
    // NINES_AGENT_SOAK_PROFILE=1: where the live heap was allocated, biggest first (to stderr).
    if (std::getenv("NINES_AGENT_SOAK_PROFILE") != nullptr) __sanitizer_print_memory_profile(90, 12);
#endif
    res.outcomes = outcomes;
    res.stray = stray.load();
    res.model_retries = retries.load();
    res.tool_errors = tool_errors.load();
    rt.reset();
    agents.reset();
  }
  std::istringstream stats(test::ledger_request(port, "GET", "/stats"));
  for (std::string key; stats >> key && key != "END";) {
    int requests = 0, applied = 0, checks = 0;
    stats >> requests >> applied >> checks;
    if (requests > 0 || applied > 0) res.ledger[key] = {requests, applied};
  }
  res.tool_faults = std::atoi(test::ledger_request(port, "GET", "/failed").c_str());
  test::ledger_request(port, "POST", "/quit");
  std::filesystem::remove_all(dir);
  return res;
}

void check(const SoakResult& r, int tasks, program::Shape shape, long rss_tolerance_kb, int fd_tolerance) {
  std::printf(
      "agent soak: %d tasks; warm-up: rss %ld kB, heap %ld kB, %d fds; end: rss %ld kB, heap %ld kB, %d fds; %d tool "
      "faults (503), %lld tool errors seen by the model, %lld model retries\n",
      tasks, r.warm.rss_kb, r.warm.heap_kb, r.warm.fds, r.end.rss_kb, r.end.heap_kb, r.end.fds, r.tool_faults,
      static_cast<long long>(r.tool_errors), static_cast<long long>(r.model_retries));
  EXPECT_EQ(r.stray, 0);
  EXPECT_EQ(r.outcomes.count(TaskStatus::kSucceeded) ? r.outcomes.at(TaskStatus::kSucceeded) : 0, tasks);
  // Every 7th idempotent or read-only request fails: four per full task, two or three per short one.
  EXPECT_GT(r.tool_faults, shape == program::Shape::kFull ? tasks / 2 : tasks / 4) << "the faults did not happen";
  EXPECT_GT(r.model_retries, tasks / 10) << "the model faults did not happen";
  // Every charge applied at most once; all of them, but for a call whose retries all met a 503
  // (the model is told and goes on: the task still succeeds).
  int applied_once = 0;
  for (const auto& [key, c] : r.ledger) {
    if (key.ends_with("/tool:lookup")) continue;
    EXPECT_LE(c.applied, 1) << key;
    applied_once += c.applied == 1;
  }
  const int charges = shape == program::Shape::kFull ? program::kChargesPerTask : program::kShortChargesPerTask;
  EXPECT_GE(applied_once + r.tool_errors, static_cast<std::int64_t>(tasks) * charges);
  EXPECT_LE(r.tool_errors, tasks / 50);
  EXPECT_LE(r.end.rss_kb - r.warm.rss_kb, rss_tolerance_kb) << "resident memory grew";
  EXPECT_LE(r.end.fds - r.warm.fds, fd_tolerance) << "descriptors leaked";
}

// Tolerances: 24 MB of resident memory (allocator caches, SQLite's page cache and the
// quarantine settle within it; a leak of 1 kB per task is 9 MB here) and 8 descriptors
// (connections the HTTP client may keep open or not).
TEST(AgentSoak, Short) {
  const int tasks = 400;
  check(soak(tasks, 150, program::Shape::kFull), tasks, program::Shape::kFull, 24 << 10, 8);
}

TEST(AgentSoak, TenThousand) {
  const char* n = std::getenv("NINES_AGENT_SOAK_TASKS");
  const int tasks = n != nullptr ? std::atoi(n) : 10000;
  ASSERT_GE(tasks, 100) << "NINES_AGENT_SOAK_TASKS";
  check(soak(tasks, tasks / 5, program::Shape::kShort), tasks, program::Shape::kShort, 24 << 10, 8);
}

}  // namespace
}  // namespace nines::agent
