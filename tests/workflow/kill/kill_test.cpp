// The kill test of issue 4: a worker process runs 300 workflows of 50 steps whose effects go
// to a ledger in another process; the test SIGKILLs the worker at random moments (seeded;
// NINES_KILL_SEED overrides the seed, NINES_KILL_COUNT the number of kills, default 200),
// restarts it, and finally lets it finish. A fast build may finish the work before 200 kills:
// then the next worker gets 300 more workflows (up to 3,000 in all) and the kills go on. Then, reading the SQLite file
// and the ledger:
//  - every workflow ended: completed, or needs_attention because an unsafe effect was
//    interrupted (exactly one such effect);
//  - a completed workflow's result is exactly what an uninterrupted run gives; every step
//    record holds its one true result (no step result lost);
//  - every idempotent or checkable effect of a completed workflow was applied exactly once;
//  - no unsafe effect was applied more than once, anywhere.
// Only kills that hit a running worker count towards the 200.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "nines/store/sqlite_store.hpp"
#include "support/numbered.hpp"
#include "workflow/kill/plan.hpp"

extern char** environ;

namespace nines {
namespace {

constexpr int kWorkflows = 300;      // per batch
constexpr int kMaxWorkflows = 3000;  // batches added while the work finishes before the kills

// Starts args[0]; with `out`, its stdout goes to a pipe whose read end is stored there.
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

// One request to the ledger (blocking; the test is a plain program).
std::string ledger(const std::string& socket_path, const std::string& line) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return "";
  }
  std::string req = line + "\n";
  if (::write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return "";
  }
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (line == "STATS" ? out.ends_with("END\n") : out.ends_with("\n")) break;
  }
  ::close(fd);
  return out;
}

TEST(KillTest, TwoHundredKillsLoseNoStepAndApplyNoEffectTwice) {
  const std::uint64_t seed =
      std::getenv("NINES_KILL_SEED") ? std::strtoull(std::getenv("NINES_KILL_SEED"), nullptr, 10) : 20261128;
  const int wanted_kills = std::getenv("NINES_KILL_COUNT") ? std::atoi(std::getenv("NINES_KILL_COUNT")) : 200;
  std::string dir = ::testing::TempDir() + "nines_kill_XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const std::string db = dir + "/wf.db", sock = dir + "/ledger.sock";

  pid_t ledger_pid = spawn({NINES_KILL_LEDGER_BIN, sock});
  ASSERT_GT(ledger_pid, 0);
  for (int i = 0; i < 500 && ledger(sock, "CHECK none").empty(); ++i) sleep_us(10'000);
  ASSERT_EQ(ledger(sock, "CHECK none"), "NO\n") << "the ledger did not start";

  std::mt19937_64 rng(seed);
  int kills = 0, runs = 0, finished_early = 0;
  int workflows = kWorkflows;
  bool done = false;
  while (kills < wanted_kills) {
    int out = -1;
    pid_t pid = spawn({NINES_KILL_WORKER_BIN, db, sock, std::to_string(workflows)}, &out);
    ASSERT_GT(pid, 0);
    ++runs;
    const bool ready = wait_ready(out);
    ::close(out);
    if (ready) sleep_us(static_cast<long>(rng() % 30'000));  // 0-30 ms into the work
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {  // it ended by itself before the kill
      ++finished_early;
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker failed, status " << status;
      if (workflows >= kMaxWorkflows) {
        done = true;
        break;
      }
      workflows += kWorkflows;  // more work, and the kills go on
      continue;
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    ++kills;
  }
  // Then to the end, without kills.
  if (!done) {
    pid_t pid = spawn({NINES_KILL_WORKER_BIN, db, sock, std::to_string(workflows)});
    ASSERT_GT(pid, 0);
    ++runs;
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the last worker run failed, status " << status;
  }
  std::printf("kill test: seed %llu, %d kills of a running worker, %d runs, %d workflows (%d batches finished early)\n",
              static_cast<unsigned long long>(seed), kills, runs, workflows, finished_early);
  EXPECT_GE(kills, wanted_kills) << "the workflows finished before " << wanted_kills << " kills: make the work longer";

  // The ledger's view: requests and applications per key.
  std::map<std::string, std::pair<int, int>> seen;
  std::istringstream stats(ledger(sock, "STATS"));
  for (std::string key; stats >> key && key != "END";) {
    int requests = 0, applied = 0;
    stats >> requests >> applied;
    seen[key] = {requests, applied};
  }
  ledger(sock, "QUIT");
  ::waitpid(ledger_pid, nullptr, 0);

  auto store = open_sqlite_store(db).value();
  int completed = 0, attention = 0, resent = 0;
  for (int w = 0; w < workflows; ++w) {
    const std::string id = killtest::workflow_id(w);
    auto rec = store->get_workflow(id);
    ASSERT_TRUE(rec.ok()) << id << ": " << rec.error().to_string();
    const std::vector<StepRecord> steps = store->load_steps(id).value();
    for (const StepRecord& s : steps) {
      EXPECT_EQ(s.status, StepStatus::kOk) << id << " step " << s.seq;
      EXPECT_EQ(s.result, test::numbered("s", s.seq)) << id << " step " << s.seq;
    }
    int attention_effects = 0;
    std::map<int, std::string> keys;  // 0-based step -> the key its intent was recorded with
    const std::vector<EffectRecord> effects = store->load_effects(id).value();
    for (const EffectRecord& e : effects) {
      attention_effects += e.state == EffectState::kNeedsAttention;
      keys[std::stoi(e.effect_id.substr(0, e.effect_id.find(':'))) - 1] = e.idempotency_key;
    }
    int plain_steps = 0;
    for (int s = 0; s < killtest::kSteps; ++s) {
      const char type = killtest::op_type(w, s);
      if (type == 'S') {
        ++plain_steps;
        continue;
      }
      if (!keys.count(s)) {
        EXPECT_NE(rec->status, WorkflowStatus::kCompleted) << id << " completed without effect " << s + 1;
        continue;  // never started
      }
      const std::string& key = keys[s];
      const auto [requests, applied] = seen.count(key) ? seen[key] : std::pair<int, int>{0, 0};
      resent += requests > 1;
      if (type == 'U' || type == 'C') {  // sent without key deduplication
        EXPECT_LE(applied, 1) << type << " effect " << key << " applied " << applied << " times";
      }
      if (rec->status == WorkflowStatus::kCompleted) {
        EXPECT_EQ(applied, 1) << key << " of completed " << id;
      }
    }
    // Nothing of this workflow reached the ledger under a key the journal does not have.
    std::size_t ledger_keys = 0;
    for (const auto& [key, counts] : seen) ledger_keys += key.rfind(id + "#", 0) == 0 && counts.second > 0;
    EXPECT_LE(ledger_keys, keys.size()) << id;
    if (rec->status == WorkflowStatus::kCompleted) {
      ++completed;
      EXPECT_EQ(rec->result, killtest::expected_result(w, keys)) << id;
      EXPECT_EQ(static_cast<int>(steps.size()), plain_steps) << id << ": a step record is missing";
      EXPECT_EQ(attention_effects, 0) << id;
    } else {
      EXPECT_EQ(rec->status, WorkflowStatus::kNeedsAttention) << id << ": " << rec->result;
      EXPECT_EQ(attention_effects, 1) << id;
      ++attention;
    }
  }
  std::printf("kill test: %d workflows completed, %d need attention, %d effects re-sent with their key\n", completed,
              attention, resent);
  EXPECT_GT(completed, workflows / 2);
  // The kills must have interrupted effects between their intent and their outcome, or this
  // test proves little. How many depends on the machine's speed (an idle run here: ~60
  // idempotent effects re-sent and ~20 unsafe ones stopped; with two builds running beside
  // it: 18 and 1), so the bar is low.
  EXPECT_GE(resent + attention, 5) << "too few kills landed inside an effect";
}

}  // namespace
}  // namespace nines
