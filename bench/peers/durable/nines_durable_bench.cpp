// nines side of bench/peers/durable: durable workflow steps on SQLite and PostgreSQL, and the
// raw fdatasync rate of the disk under them.
//
//   nines_durable_bench sync DIR SECONDS
//     raw_fdatasync / fdatasync_per_s: a loop of write(4 KiB) (appending) + fdatasync on a new
//     file DIR/fdatasync.bin for SECONDS; count / elapsed.
//   nines_durable_bench sqlite DIR S R1 R16 R256
//     SQLite store (open_sqlite_store, default options: Durability::kSynced, i.e. WAL with
//     synchronous=FULL) on a new file DIR/nines_sqlite_cC.db for each concurrency C.
//   nines_durable_bench sqlite-batched DIR S R1 R16 R256
//     The same with SqliteStoreOptions::durability = Durability::kBatched (WAL with
//     synchronous=NORMAL: no fsync per commit; what LangGraph's SqliteSaver runs with), as
//     bench "sqlite_batched_cC": context for the comparison, not one of the rows.
//   nines_durable_bench postgres CONNINFO S R1 R16 R256
//     PostgreSQL store (open_postgres_store, default options: kSynced, the server's
//     synchronous_commit) on the server CONNINFO names; workflow ids are unique per
//     concurrency, so one database serves all three.
//
// For each concurrency C in {1, 16, 256}: a real runtime (make_real_environment, 2 workers),
// one WorkflowEngine with default options (Commit::kAuto = a committer thread that groups the
// commits queued together into one backend transaction and one sync). C processes each run
// R_C workflows one after another; a workflow is S steps, each a step<std::string> whose
// function returns a 100-byte string at once, so the step's time is the engine's: recording
// the result (one commit, waited for) plus its bookkeeping. Before timing, one workflow of S
// steps warms up the store and caches. Timed: from spawning the C processes until all have
// ended. Metrics (bench "<backend>_c<C>"):
//   steps_per_s              C * R_C * S / elapsed (steps only: each workflow also commits
//                            its start and its end, which count in the time, not as steps)
//   commit_p50_us/_p99_us    each `co_await wf.step(...)` timed with steady_clock inside the
//                            workflow: the step function is empty, so this is the durable
//                            commit of its record as the workflow sees it (queueing for the
//                            committer, the backend transaction and its sync, resumption);
//                            nearest rank (nines/core/percentile.hpp)
//   backend_commits_per_step backend transactions (WorkflowEngineStats::commit_groups) during
//                            the timed part / steps (start and end commits included above)
//   cpu_us_per_step          process CPU time (user + system, all threads) / steps
// Profiling: NINES_DURABLE_ONLY=C (1, 16 or 256) runs only that concurrency.
// Exit status 1 on any failure (a workflow that does not complete, a store that cannot open).
// Prints one JSON line per metric: {"bench","system":"nines","metric","value","unit"}.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nines/core/percentile.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/store/postgres_store.hpp"
#include "nines/store/sqlite_store.hpp"
#include "nines/workflow/workflow.hpp"
#include "peers/bench_json.hpp"

using namespace nines;

namespace {

using nines::bench::emit;
// Time comes from the environment seam, like everywhere in nines (scripts/check_env_seam.sh):
// the real environment's monotonic clock and wall time.
Environment& clock_env() {
  static std::unique_ptr<Environment> env = make_real_environment({.workers = 1});
  return *env;
}
struct Clock {
  static TimePoint now() { return clock_env().now(); }
};

constexpr unsigned kConcurrency[] = {1, 16, 256};
constexpr std::size_t kPayloadBytes = 100;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "nines_durable_bench: %s\n", what.c_str());
  std::exit(1);
}

template <class T>
T must(Result<T> r, const char* what) {
  if (!r.ok()) die(std::string(what) + ": " + r.error().to_string());
  return std::move(*r);
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6; };
  return s(u.ru_utime) + s(u.ru_stime);
}

// ---- raw fdatasync ----

int run_sync(const std::string& dir, double seconds) {
  std::string path = dir + "/fdatasync.bin";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die("cannot create " + path);
  std::vector<char> block(4096, 'x');
  std::uint64_t n = 0;
  auto t0 = Clock::now();
  double elapsed = 0;
  do {
    if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size())) die("write " + path);
    if (::fdatasync(fd) != 0) die("fdatasync " + path);
    ++n;
    elapsed = to_seconds(Clock::now() - t0);
  } while (elapsed < seconds);
  ::close(fd);
  std::filesystem::remove(path);
  emit("raw_fdatasync", "fdatasync_per_s", static_cast<double>(n) / elapsed, "1/s");
  return 0;
}

// ---- workflows ----

const std::string& payload() {
  static const std::string p(kPayloadBytes, 'p');
  return p;
}

// Step functions: return the payload at once.
Task<Result<std::string>> empty_step(Context&) { co_return payload(); }

struct Samples {
  std::vector<std::vector<double>> per_process;  // step latencies in us, by process index
};

// One configuration: C processes, each running `reps` workflows of `steps` steps.
void run_config(const std::string& bench, const std::function<std::unique_ptr<Store>()>& open_store, unsigned c,
                std::int64_t steps, std::int64_t reps, const std::string& id_prefix) {
  auto env = make_real_environment({.workers = 2});
  auto rt = must(Runtime::create(*env), "runtime");
  std::unique_ptr<Store> store = open_store();
  auto engine = must(WorkflowEngine::create(*env, *store), "engine");

  Samples samples;
  samples.per_process.resize(c + 1);  // the last one is the warm-up's
  auto body = [steps, &samples](WorkflowContext& wf) -> Task<Result<std::string>> {
    std::vector<double>& mine = samples.per_process[std::stoul(wf.input())];
    for (std::int64_t i = 0; i < steps; ++i) {
      auto t0 = Clock::now();
      // Not "s" + std::to_string(i): g++ 12.2 at -O3 reports a false -Wrestrict in
      // operator+(const char*, std::string&&) with a one-character literal.
      std::string name = "s";
      name += std::to_string(i);
      Result<std::string> r = co_await wf.step<std::string>(std::move(name), empty_step);
      auto t1 = Clock::now();
      if (!r.ok()) co_return r.error();
      mine.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    co_return std::string("done");
  };
  if (auto s = engine->register_kind("chain", body); !s.ok()) die("register_kind: " + s.error().to_string());

  std::atomic<std::uint64_t> failures{0};
  auto spawn_runner = [&](unsigned index, std::int64_t count, std::string tag) {
    Behavior b = [&, index, count, tag](Context& ctx) -> Task<> {
      for (std::int64_t r = 0; r < count; ++r) {
        std::string id = id_prefix + "-" + tag + "-" + std::to_string(index) + "-" + std::to_string(r);
        Result<std::string> res = co_await engine->run(ctx, "chain", id, std::to_string(index));
        if (!res.ok() || *res != "done") {
          if (failures.fetch_add(1) == 0) {
            std::fprintf(stderr, "nines_durable_bench: workflow %s: %s\n", id.c_str(),
                         res.ok() ? res->c_str() : res.error().to_string().c_str());
          }
        }
      }
    };
    return must(rt->spawn_watched(std::move(b)), "spawn").exit;
  };

  // Warm-up: one workflow.
  spawn_runner(c, 1, "warm")->wait();
  if (failures.load() != 0) die(bench + ": the warm-up workflow failed");

  for (unsigned p = 0; p < c; ++p) samples.per_process[p].reserve(static_cast<std::size_t>(reps * steps));
  WorkflowEngineStats before = engine->stats();
  double cpu0 = cpu_seconds();
  auto t0 = Clock::now();
  std::vector<std::shared_ptr<ExitWatch>> done;
  done.reserve(c);
  for (unsigned p = 0; p < c; ++p) done.push_back(spawn_runner(p, reps, "run"));
  for (auto& w : done) w->wait();
  double elapsed = to_seconds(Clock::now() - t0);
  double cpu = cpu_seconds() - cpu0;
  WorkflowEngineStats after = engine->stats();
  if (failures.load() != 0) die(bench + ": " + std::to_string(failures.load()) + " workflows failed");

  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(c * reps * steps));
  for (unsigned p = 0; p < c; ++p) lat.insert(lat.end(), samples.per_process[p].begin(), samples.per_process[p].end());
  const double total = static_cast<double>(c) * static_cast<double>(reps) * static_cast<double>(steps);
  if (lat.size() != static_cast<std::size_t>(total)) die(bench + ": step count mismatch");
  emit(bench.c_str(), "steps_per_s", total / elapsed, "1/s");
  std::sort(lat.begin(), lat.end());
  emit(bench.c_str(), "commit_p50_us", percentile_of_sorted(lat, 50), "us");
  emit(bench.c_str(), "commit_p99_us", percentile_of_sorted(lat, 99), "us");
  emit(bench.c_str(), "backend_commits_per_step",
       static_cast<double>(after.commit_groups - before.commit_groups) / total, "1");
  emit(bench.c_str(), "cpu_us_per_step", cpu * 1e6 / total, "us");
  engine.reset();  // waits for queued commits; nothing is running
}

// NINES_DURABLE_ONLY=C: skip the other concurrencies (for perf/strace of one configuration).
bool selected(unsigned c) {
  const char* only = std::getenv("NINES_DURABLE_ONLY");
  return only == nullptr || *only == '\0' || std::strtoul(only, nullptr, 10) == c;
}

struct Sizes {
  std::int64_t steps = 0;
  std::int64_t reps[3] = {0, 0, 0};
};

Sizes parse_sizes(char** argv) {
  Sizes s;
  s.steps = std::strtoll(argv[0], nullptr, 10);
  for (int i = 0; i < 3; ++i) s.reps[i] = std::strtoll(argv[1 + i], nullptr, 10);
  if (s.steps <= 0 || s.reps[0] <= 0 || s.reps[1] <= 0 || s.reps[2] <= 0) die("S and R must be > 0");
  return s;
}

int run_sqlite(const std::string& dir, const Sizes& sizes, Durability durability) {
  const std::string name = durability == Durability::kSynced ? "sqlite" : "sqlite_batched";
  SqliteStoreOptions options;
  options.durability = durability;
  for (int i = 0; i < 3; ++i) {
    unsigned c = kConcurrency[i];
    if (!selected(c)) continue;
    std::string path = dir + "/nines_" + name + "_c" + std::to_string(c) + ".db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
    run_config(
        name + "_c" + std::to_string(c), [&] { return must(open_sqlite_store(path, options), "open_sqlite_store"); }, c,
        sizes.steps, sizes.reps[i], "c" + std::to_string(c));
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
  }
  return 0;
}

int run_postgres(const std::string& conninfo, const Sizes& sizes) {
  // Ids unique per run of this program too, so a reused database does not resume old ones.
  std::string run_tag = std::to_string(clock_env().unix_time_ns());
  for (int i = 0; i < 3; ++i) {
    unsigned c = kConcurrency[i];
    if (!selected(c)) continue;
    run_config(
        "postgres_c" + std::to_string(c), [&] { return must(open_postgres_store(conninfo), "open_postgres_store"); }, c,
        sizes.steps, sizes.reps[i], run_tag + "-c" + std::to_string(c));
  }
  return 0;
}

int usage() {
  std::fprintf(stderr,
               "usage: nines_durable_bench sync DIR SECONDS\n"
               "       nines_durable_bench sqlite|sqlite-batched DIR S R1 R16 R256\n"
               "       nines_durable_bench postgres CONNINFO S R1 R16 R256\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  std::string mode = argv[1];
  if (mode == "sync" && argc == 4) {
    double secs = std::strtod(argv[3], nullptr);
    if (secs <= 0) return usage();
    return run_sync(argv[2], secs);
  }
  if (mode == "sqlite" && argc == 7) return run_sqlite(argv[2], parse_sizes(argv + 3), Durability::kSynced);
  if (mode == "sqlite-batched" && argc == 7) return run_sqlite(argv[2], parse_sizes(argv + 3), Durability::kBatched);
  if (mode == "postgres" && argc == 7) return run_postgres(argv[2], parse_sizes(argv + 3));
  return usage();
}
