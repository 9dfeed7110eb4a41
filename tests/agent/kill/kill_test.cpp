// The agent kill test: a worker program (worker_main.cpp) runs agent tasks whose HTTP tools
// charge a ledger in another process (ledger_main.cpp, http_ledger.hpp) over loopback with
// the effect journal's Idempotency-Key; the test SIGKILLs the worker at random moments
// (seeded; NINES_AGENT_KILL_SEED overrides the seed, NINES_AGENT_KILL_COUNT the number of
// kills, default 60), restarts it each time, and finally lets it finish. When a batch of
// tasks finishes before the kill, the next worker gets 100 more (up to 2,000). Then, reading
// the SQLite file and the ledger:
//  - every task ended with exactly one outcome: succeeded with the answer, 4 model turns and
//    each history message stored once (11 messages), or needs_attention because its unsafe
//    charge was interrupted (exactly that effect waits for an operator);
//  - no charge was applied twice, anywhere (idempotent, checkable and unsafe alike), and every
//    charge of a succeeded task was applied exactly once;
//  - nothing reached the ledger under a key the journal does not hold.
// Only kills that hit a running worker count.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "agent/kill/http_ledger.hpp"
#include "agent/kill/program.hpp"
#include "nines/agent/agent.hpp"
#include "nines/store/sqlite_store.hpp"

extern char** environ;

namespace nines {
namespace {

namespace program = test::agent_program;

constexpr int kTasks = 100;      // per batch
constexpr int kMaxTasks = 2000;  // batches added while the work finishes before the kills

pid_t spawn(const std::vector<std::string>& args, int* out = nullptr) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  ::posix_spawn_file_actions_init(&actions);
  int fds[2] = {-1, -1};
  if (out != nullptr) {
    if (::pipe2(fds, O_CLOEXEC) != 0) return -1;
    ::posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  }
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  ::posix_spawn_file_actions_destroy(&actions);
  if (out != nullptr) {
    ::close(fds[1]);
    *out = fds[0];
  }
  return rc == 0 ? pid : -1;
}

// Waits up to 30 s for the worker's "ready" line; false if it exited or said nothing.
bool wait_ready(int fd) {
  std::string got;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 30'000) <= 0) return false;
    char buf[64];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return false;
    got.append(buf, static_cast<std::size_t>(n));
    if (got.find("ready\n") != std::string::npos) return true;
  }
}

void sleep_us(long us) {
  timespec ts{us / 1'000'000, (us % 1'000'000) * 1000};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

TEST(AgentKillTest, KilledWorkersFinishEveryTaskOnceAndChargeNothingTwice) {
  const std::uint64_t seed = std::getenv("NINES_AGENT_KILL_SEED")
                                 ? std::strtoull(std::getenv("NINES_AGENT_KILL_SEED"), nullptr, 10)
                                 : 20261204;
  const int wanted_kills =
      std::getenv("NINES_AGENT_KILL_COUNT") ? std::atoi(std::getenv("NINES_AGENT_KILL_COUNT")) : 60;
  std::string dir = ::testing::TempDir() + "nines_agent_kill_XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const std::string db = dir + "/agents.db", port_file = dir + "/ledger.port";

  pid_t ledger_pid = spawn({NINES_AGENT_KILL_LEDGER_BIN, port_file});
  ASSERT_GT(ledger_pid, 0);
  struct Reaper {  // the ledger does not outlive a failed assertion
    pid_t pid;
    ~Reaper() {
      if (::waitpid(pid, nullptr, WNOHANG) == 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
    }
  } reaper{ledger_pid};
  int port = 0;
  for (int i = 0; i < 1000 && port == 0; ++i) {
    std::ifstream in(port_file);
    if (!(in >> port)) port = 0;
    if (port == 0) sleep_us(10'000);
  }
  ASSERT_GT(port, 0) << "the ledger did not start";
  ASSERT_EQ(test::ledger_request(port, "GET", "/stats"), "END\n");

  std::mt19937_64 rng(seed);
  int kills = 0, runs = 0, finished_early = 0;
  int tasks = kTasks;
  bool done = false;
  while (kills < wanted_kills) {
    int out = -1;
    pid_t pid = spawn({NINES_AGENT_KILL_WORKER_BIN, db, std::to_string(port), std::to_string(tasks)}, &out);
    ASSERT_GT(pid, 0);
    ++runs;
    const bool ready = wait_ready(out);
    ::close(out);
    if (ready) sleep_us(static_cast<long>(rng() % 150'000));  // 0-150 ms into the work
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {  // it ended by itself before the kill
      ++finished_early;
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker failed, status " << status;
      if (tasks >= kMaxTasks) {
        done = true;
        break;
      }
      tasks += kTasks;
      continue;
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    ++kills;
  }
  if (!done) {
    pid_t pid = spawn({NINES_AGENT_KILL_WORKER_BIN, db, std::to_string(port), std::to_string(tasks)});
    ASSERT_GT(pid, 0);
    ++runs;
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the last worker run failed, status " << status;
  }
  std::printf("agent kill test: seed %llu, %d kills of a running worker, %d runs, %d tasks (%d batches early)\n",
              static_cast<unsigned long long>(seed), kills, runs, tasks, finished_early);
  EXPECT_GE(kills, wanted_kills);

  std::map<std::string, std::pair<int, int>> seen;  // key -> requests, applications
  int checks = 0;                                   // check() requests, all keys
  std::istringstream stats(test::ledger_request(port, "GET", "/stats"));
  for (std::string key; stats >> key && key != "END";) {
    int requests = 0, applied = 0, asked = 0;
    stats >> requests >> applied >> asked;
    if (requests > 0 || applied > 0) seen[key] = {requests, applied};
    checks += asked;
  }
  test::ledger_request(port, "POST", "/quit");

  auto store = open_sqlite_store(db).value();
  int succeeded = 0, attention = 0, resent = 0, lookups_again = 0, restarted = 0;
  std::set<std::string> journal_keys;
  for (int t = 0; t < tasks; ++t) {
    const std::string id = program::task_id(t);
    auto rec = store->get_workflow(id);
    ASSERT_TRUE(rec.ok()) << id << ": " << rec.error().to_string();
    const std::vector<EffectRecord> effects = store->load_effects(id).value();
    int waiting = 0;
    for (const EffectRecord& e : effects) {
      journal_keys.insert(e.idempotency_key);
      const auto [requests, applied] = seen.count(e.idempotency_key) ? seen[e.idempotency_key] : std::pair{0, 0};
      if (ends_with(e.idempotency_key, "/tool:lookup")) {
        lookups_again += requests > 1;
        if (e.outcome) {
          EXPECT_GE(requests, 1) << e.idempotency_key;
        }
        continue;
      }
      resent += requests > 1;
      EXPECT_LE(applied, 1) << e.idempotency_key << " applied " << applied << " times";
      if (e.state == EffectState::kNeedsAttention) {
        ++waiting;
        EXPECT_TRUE(ends_with(e.idempotency_key, "/tool:charge_unsafe")) << e.idempotency_key;
      } else {
        EXPECT_TRUE(e.outcome.has_value()) << e.idempotency_key << " of " << id << " has no outcome";
        EXPECT_EQ(applied, 1) << e.idempotency_key << " has an outcome but was applied " << applied << " times";
      }
    }
    if (rec->status == WorkflowStatus::kCompleted) {
      Result<agent::TaskOutcome> out = agent::decode_outcome(rec->result);
      ASSERT_TRUE(out.ok()) << id << ": " << rec->result;
      EXPECT_EQ(out->status, agent::TaskStatus::kSucceeded) << id << ": " << out->reason;
      EXPECT_EQ(out->answer, "done") << id;
      EXPECT_EQ(out->steps, 4) << id;
      restarted += out->restarts > 0;
      EXPECT_EQ(static_cast<int>(effects.size()), program::kEffectsPerTask) << id;
      EXPECT_EQ(waiting, 0) << id;
      EXPECT_EQ(store->read_history(id, 0, 1000).value().size(), static_cast<std::size_t>(program::kHistoryPerTask))
          << id << ": a history message is missing or stored twice";
      ++succeeded;
    } else {
      EXPECT_EQ(rec->status, WorkflowStatus::kNeedsAttention) << id << ": " << rec->result;
      EXPECT_EQ(waiting, 1) << id;
      ++attention;
    }
  }
  for (const auto& [key, counts] : seen) {
    EXPECT_TRUE(journal_keys.contains(key)) << "the ledger got " << key << ", which no journal holds";
    if (!ends_with(key, "/tool:lookup")) {
      EXPECT_LE(counts.second, 1) << key;
    }
  }
  std::printf(
      "agent kill test: %d tasks succeeded (%d of them restarted), %d need attention, %d charges re-sent with their "
      "key, %d lookups run again, %d checks of interrupted checkable charges\n",
      succeeded, restarted, attention, resent, lookups_again, checks);
  EXPECT_GT(succeeded, tasks / 2);
  // The kills must have landed inside tasks and inside effects, or this proves little.
  EXPECT_GE(restarted, 5);
  EXPECT_GE(resent + attention + lookups_again, 3) << "too few kills landed inside an effect";
}

}  // namespace
}  // namespace nines
