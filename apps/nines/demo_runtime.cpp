// The runtime demo: a 3-level supervision tree (root -> shard supervisors -> workers) with
// 100,000 workers. A chaos process crashes random workers for the whole run and, midway,
// crashes so many workers of one shard at once that the shard exceeds its restart intensity,
// gives up and escalates; the root restarts that whole subtree. A reporter process prints
// what happens every 250 ms; at the end a summary, and exit 0 only if every worker is alive.
#include "demo_runtime.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "demo_log.hpp"
#include "nines/core/percentile.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/runtime/supervisor.hpp"

namespace nines::cli {
namespace {

struct Crash {};

long rss_mib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6) / 1024;
  }
  return 0;
}

// Time from a child's exit to its restart, per (supervisor, child), from the event stream.
class RecoveryClock {
 public:
  void on_event(const SupervisionEvent& ev) {
    if (ev.type == SupervisionEventType::kChildExited && !ev.by_supervisor) {
      std::lock_guard l(mu_);
      down_since_[{ev.supervisor.id, ev.child_id}] = ev.at;
    } else if (ev.type == SupervisionEventType::kChildRestarted) {
      std::lock_guard l(mu_);
      auto it = down_since_.find({ev.supervisor.id, ev.child_id});
      if (it == down_since_.end()) return;
      recoveries_us_.push_back(to_micros(ev.at - it->second));
      down_since_.erase(it);
    }
  }
  std::vector<double> take() {
    std::lock_guard l(mu_);
    return recoveries_us_;
  }

 private:
  std::mutex mu_;
  std::map<std::pair<std::uint64_t, std::string>, TimePoint> down_since_;
  std::vector<double> recoveries_us_;
};

// How the workers are spread: `total` is workers rounded down to a multiple of shards.
struct Shape {
  std::size_t shards;
  std::size_t per_shard;
  std::size_t total;
};

// What the event subscriber, the chaos process, the reporter and the summary share. It must
// outlive the runtime: the supervisors still restart workers (and emit events) when the demo
// returns.
struct DemoState {
  explicit DemoState(std::size_t total) : slots(std::make_shared<std::vector<std::atomic<std::uint64_t>>>(total)) {}

  void note(std::string text) {
    std::lock_guard l(print_mu);
    notes.push_back(std::move(text));
  }

  // Worker slot -> current pid, written by each worker when it starts.
  std::shared_ptr<std::vector<std::atomic<std::uint64_t>>> slots;
  std::atomic<std::uint64_t> crashes{0};
  std::atomic<std::uint64_t> escalations{0};
  std::atomic<std::uint64_t> crash_exits{0};       // workers that crashed (seen by their supervisor)
  std::atomic<std::uint64_t> stopped_by_sup{0};    // workers stopped by their supervisor
  std::atomic<std::uint64_t> subtree_restarts{0};  // shard supervisors restarted whole by the root
  RecoveryClock recovery;
  std::mutex print_mu;
  std::vector<std::string> notes;
  std::atomic<bool> chaos_done{false};
};

bool is_shard(const SupervisionEvent& ev) { return ev.child_id.rfind("shard-", 0) == 0; }

// The counters come from the event stream, so they count what the supervisors saw, not what
// the chaos process sent.
void watch_events(Runtime& rt, DemoState& s, std::size_t per_shard) {
  rt.events().subscribe([&s, per_shard](const SupervisionEvent& ev) {
    s.recovery.on_event(ev);
    if (ev.type == SupervisionEventType::kChildExited && !is_shard(ev)) {
      (ev.by_supervisor ? s.stopped_by_sup : s.crash_exits).fetch_add(1);
    }
    if (ev.type == SupervisionEventType::kChildRestarted && is_shard(ev)) s.subtree_restarts.fetch_add(1);
    if (ev.type == SupervisionEventType::kEscalated) {
      s.escalations.fetch_add(1);
      s.note(ev.supervisor_name + " exceeded its restart intensity: stopped its " + std::to_string(per_shard) +
             " workers and escalated to its parent");
    } else if (ev.type == SupervisionEventType::kChildRestarted && is_shard(ev)) {
      s.note("root restarted " + ev.child_id + " and its " + std::to_string(per_shard) + " workers");
    }
  });
}

// A worker publishes its pid in its slot, so the chaos process can find whoever holds it now.
ChildSpec worker_spec(std::size_t w, std::size_t slot,
                      const std::shared_ptr<std::vector<std::atomic<std::uint64_t>>>& slots) {
  ChildSpec c;
  // Appended: "w" + std::to_string(w) made g++ 12.2 at -O3 report a false -Wrestrict
  // (operator+(const char*, std::string&&) with a one-character literal).
  c.id = "w";
  c.id += std::to_string(w);
  c.shutdown = ShutdownSpec::brutal_kill();
  c.start = [slots, slot](StartContext& sc) {
    return sc.spawn_link([slots, slot](Context& ctx) -> Task<> {
      (*slots)[slot].store(ctx.self().id, std::memory_order_relaxed);
      for (;;) {
        Message m = co_await ctx.receive();
        if (m.is<Crash>()) throw std::runtime_error("chaos");
      }
    });
  };
  return c;
}

// Level 3: workers. Level 2: shard supervisors (one_for_one, 1,000 restarts per second: far
// above the ~400 per second per shard of the background chaos with 10 shards, far below the storm).
// Level 1: the root (one_for_one, 3 restarts per 10 s).
SupervisorSpec tree_spec(const Shape& shape, const std::shared_ptr<std::vector<std::atomic<std::uint64_t>>>& slots) {
  SupervisorSpec root{.name = "root", .strategy = Strategy::kOneForOne, .intensity = 3, .period = 10s};
  for (std::size_t s = 0; s < shape.shards; ++s) {
    SupervisorSpec shard{
        .name = "shard-" + std::to_string(s), .strategy = Strategy::kOneForOne, .intensity = 1000, .period = 1s};
    shard.children.reserve(shape.per_shard);
    for (std::size_t w = 0; w < shape.per_shard; ++w) {
      shard.children.push_back(worker_spec(w, s * shape.per_shard + w, slots));
    }
    std::string id = shard.name;
    root.children.push_back(ChildSpec::supervisor(std::move(id), std::move(shard)));
  }
  return root;
}

// Up to 2,500 crashes at once (fewer if the shard is smaller) exceed the shard's 1,000 per second
// with room to spare even on a slow, loaded machine, so it gives up and escalates.
void crash_storm(Context& ctx, DemoState& s, const Shape& shape, std::size_t storm_shard) {
  s.note("chaos: crashing 2,500 workers of shard-" + std::to_string(storm_shard) + " at once");
  for (std::size_t i = 0; i < 2500; ++i) {
    std::size_t slot = storm_shard * shape.per_shard + (i * 7919) % shape.per_shard;
    if (ctx.try_send(Pid{(*s.slots)[slot].load(std::memory_order_relaxed)}, Crash{}).ok()) s.crashes.fetch_add(1);
  }
}

// Chaos: ~4,000 crashes per second at random, and at mid-run a storm on one shard.
Task<> chaos(Context& ctx, DemoState& s, Shape shape, Duration run_for) {
  const std::size_t storm_shard = shape.shards > 3 ? 3 : 0;
  TimePoint end = ctx.now() + run_for;
  TimePoint storm_at = ctx.now() + run_for / 2;
  bool stormed = false;
  while (ctx.now() < end) {
    for (int i = 0; i < 40; ++i) {
      std::uint64_t id = (*s.slots)[ctx.env().random_below(shape.total)].load(std::memory_order_relaxed);
      if (ctx.try_send(Pid{id}, Crash{}).ok()) s.crashes.fetch_add(1);
    }
    if (!stormed && ctx.now() >= storm_at) {
      stormed = true;
      crash_storm(ctx, s, shape, storm_shard);
    }
    co_await ctx.sleep(10ms);
  }
  s.chaos_done.store(true);
}

// Reporter: a line every 250 ms, with the notes gathered since the last one above it.
Task<> report(Context& ctx, Runtime& rt, DemoState& s, TimePoint t_start) {
  std::uint64_t last_crashes = 0, last_restarts = 0;
  TimePoint last = ctx.now();
  while (!s.chaos_done.load()) {
    co_await ctx.sleep(250ms);
    TimePoint now = ctx.now();
    double dt = to_seconds(now - last);
    std::uint64_t c = s.crashes.load();
    std::uint64_t r = rt.events().count(SupervisionEventType::kChildRestarted);
    std::lock_guard l(s.print_mu);
    for (auto& n : s.notes) std::printf("        >> %s\n", n.c_str());
    s.notes.clear();
    std::printf("%6.2fs %10.0f %12.0f %11llu %10zu %8ld\n", to_seconds(now - t_start),
                static_cast<double>(c - last_crashes) / dt, static_cast<double>(r - last_restarts) / dt,
                static_cast<unsigned long long>(s.escalations.load()), rt.process_count(), rss_mib());
    std::fflush(stdout);
    last_crashes = c;
    last_restarts = r;
    last = now;
  }
}

struct Alive {
  std::size_t workers = 0;
  std::size_t shards = 0;
  std::string error;  // asking the root failed
};

// Let the last restarts land, then count what is alive: retried, since restarts finish after
// the chaos stops.
Task<> count_alive(Context& ctx, Pid root, std::size_t total, Alive& alive) {
  for (int attempt = 0; attempt < 200; ++attempt) {
    auto kids = co_await which_children(ctx, root, 10s);
    if (!kids.ok()) {
      alive.error = kids.error().to_string();
      co_return;
    }
    alive.workers = alive.shards = 0;
    for (auto& shard : *kids) {
      if (!shard.pid) continue;
      auto counts = co_await count_children(ctx, shard.pid, 10s);
      if (!counts.ok()) continue;
      ++alive.shards;
      alive.workers += counts->active;
    }
    if (alive.workers == total) co_return;
    co_await ctx.sleep(10ms);
  }
}

// The summary, and the verdict: true when every worker is alive and a shard did give up.
bool print_summary(Environment& env, Runtime& rt, DemoState& s, const Shape& shape, const Alive& alive,
                   TimePoint t_start, const DemoLog& log) {
  auto rec = s.recovery.take();
  std::sort(rec.begin(), rec.end());
  const auto& ev = rt.events();
  std::printf("\nsummary after %.1f s\n", to_seconds(env.now() - t_start));
  auto u = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
  std::printf("  crashes injected          %llu (%llu reached a live worker and were seen by its supervisor)\n",
              u(s.crashes.load()), u(s.crash_exits.load()));
  std::printf("  workers restarted         %llu one by one by their shard supervisor\n",
              u(ev.count(SupervisionEventType::kChildRestarted) - s.subtree_restarts.load()));
  std::printf("  supervisors that gave up  %llu (escalated to their parent)\n",
              u(ev.count(SupervisionEventType::kIntensityExceeded)));
  std::printf("  subtrees restarted whole  %llu by the root (%llu workers stopped by their supervisor first)\n",
              u(s.subtree_restarts.load()), u(s.stopped_by_sup.load()));
  std::printf("  time to recover (MTTR)    p50 %.1f us, p99 %.1f us, max %.1f us over %zu recoveries\n",
              percentile_of_sorted(rec, 50), percentile_of_sorted(rec, 99), percentile_of_sorted(rec, 100), rec.size());
  std::printf("  workers alive at the end  %zu of %zu (%zu of %zu shards up)\n", alive.workers, shape.total,
              alive.shards, shape.shards);
  std::printf("  resident memory           %ld MiB\n", rss_mib());
  print_demo_log(env, log);
  if (!alive.error.empty()) std::printf("  check failed: %s\n", alive.error.c_str());
  return alive.workers == shape.total && alive.error.empty() && ev.count(SupervisionEventType::kIntensityExceeded) >= 1;
}

}  // namespace

int run_runtime_demo(const RuntimeDemoOptions& o) {
  const DemoLog log = open_demo_log("demo-runtime");
  auto env = make_real_environment({.workers = o.threads, .log_sink = log.sink});
  const Shape shape{.shards = o.shards, .per_shard = o.workers / o.shards, .total = o.workers / o.shards * o.shards};
  DemoState s(shape.total);  // before the runtime, so it outlives the supervisors' last events
  auto created = Runtime::create(*env);
  if (!created.ok()) {
    std::fprintf(stderr, "nines: %s\n", created.error().to_string().c_str());
    return 1;
  }
  Runtime& rt = **created;
  watch_events(rt, s, shape.per_shard);
  const SupervisorSpec root = tree_spec(shape, s.slots);

  std::printf("nines runtime demo: %zu workers under %zu shard supervisors under one root (%u scheduler threads)\n",
              shape.total, shape.shards, env->default_workers());
  TimePoint t_start = env->now();
  auto root_pid = start_supervisor(rt, root);
  if (!root_pid.ok()) {
    std::fprintf(stderr, "nines: %s\n", root_pid.error().to_string().c_str());
    return 1;
  }
  std::printf("tree started in %.0f ms: %zu processes, %ld MiB resident\n", to_seconds(env->now() - t_start) * 1e3,
              rt.process_count(), rss_mib());
  std::printf("%7s %10s %12s %11s %10s %8s\n", "time", "crashes/s", "restarts/s", "escalations", "processes",
              "RSS MiB");

  const Duration run_for = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(o.seconds));
  auto chaos_proc = rt.spawn_watched([&](Context& ctx) { return chaos(ctx, s, shape, run_for); }).value();
  auto reporter = rt.spawn_watched([&](Context& ctx) { return report(ctx, rt, s, t_start); }).value();
  chaos_proc.exit->wait();
  reporter.exit->wait();

  Alive alive;
  auto checker =
      rt.spawn_watched([&](Context& ctx) { return count_alive(ctx, *root_pid, shape.total, alive); }).value();
  checker.exit->wait();
  {
    // Notes of what happened after the reporter's last line (on a slow machine the storm's
    // escalation can land after the chaos ended).
    std::lock_guard l(s.print_mu);
    for (auto& n : s.notes) std::printf("        >> %s\n", n.c_str());
    s.notes.clear();
  }

  const bool ok = print_summary(*env, rt, s, shape, alive, t_start, log);
  std::printf("%s\n",
              ok ? "OK: every crash was recovered and the tree is whole" : "FAILED: the tree did not recover fully");
  return ok ? 0 : 1;
}

}  // namespace nines::cli
