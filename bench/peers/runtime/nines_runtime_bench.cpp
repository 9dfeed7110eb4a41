// nines side of bench/peers/runtime: the same four workloads as the Erlang and CAF peers.
//
//   nines_runtime_bench N R F W C
//   spawn_idle       a driver process spawns N idle processes (each counts itself started,
//                    then waits for a message that never comes); seconds from the first
//                    spawn until all N have started; bytes_per_process = VmRSS delta / N
//                    while all are alive.
//   ping_pong        two processes bounce a message R round trips (timed in the pinger).
//   fan_out          one process sends F requests round-robin over W worker processes, each
//                    replies; the sender sends all, then collects all F replies.
//   restart_latency  a one_for_one supervisor with one child; the child's start sends
//                    Started{pid} to the driver. C times: t0; tell the child to crash; wait
//                    for Started from the new instance; ping it and wait for the pong; t1.
//                    p50/p99 of t1 - t0 (nearest rank: nines/core/percentile.hpp).
// Prints one JSON line per metric to stdout:
//   {"bench":...,"system":"nines","metric":...,"value":...,"unit":...}
// Time comes from the real Environment (the only clock nines code may read).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "nines/core/percentile.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/runtime/supervisor.hpp"
#include "peers/bench_json.hpp"

using namespace nines;

namespace {

using nines::bench::emit;

long rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6) * 1024;
  }
  return 0;
}

std::unique_ptr<Runtime> make_runtime(Environment& env, std::size_t mailbox = 1 << 16) {
  auto rt = Runtime::create(env, {.default_mailbox_capacity = mailbox});
  if (!rt.ok()) {
    std::fprintf(stderr, "runtime: %s\n", rt.error().to_string().c_str());
    std::exit(1);
  }
  return std::move(*rt);
}

struct Done {};

void bench_spawn_idle(Environment& env, std::uint64_t n) {
  auto rt = make_runtime(env);
  std::atomic<std::uint64_t> started{0};
  double secs = 0;
  long rss_before = rss_bytes();
  long rss_after = 0;
  auto driver = rt->spawn_watched([&](Context& ctx) -> Task<> {
                    Pid self = ctx.self();
                    TimePoint t0 = ctx.now();
                    for (std::uint64_t i = 0; i < n; ++i) {
                      auto r = ctx.spawn([&started, self, n](Context& c) -> Task<> {
                        if (started.fetch_add(1) + 1 == n) (void)c.try_send(self, Done{});
                        (void)co_await c.receive();
                      });
                      if (!r.ok()) std::abort();
                    }
                    (void)co_await ctx.receive();
                    secs = to_seconds(ctx.now() - t0);
                    rss_after = rss_bytes();
                  }).value();
  driver.exit->wait();
  emit("spawn_idle", "seconds", secs, "s");
  emit("spawn_idle", "spawn_rate", static_cast<double>(n) / secs, "procs/s");
  emit("spawn_idle", "bytes_per_process", static_cast<double>(rss_after - rss_before) / static_cast<double>(n), "B");
}

void bench_ping_pong(Environment& env, std::uint64_t rounds) {
  auto rt = make_runtime(env);
  double secs = 0;
  Pid pong = rt->spawn([](Context& ctx) -> Task<> {
                 for (;;) {
                   Message m = co_await ctx.receive();
                   if (m.is<Done>()) co_return;
                   (void)co_await ctx.send(m.from(), *m.get<std::uint64_t>());
                 }
               }).value();
  auto ping = rt->spawn_watched([&, pong](Context& ctx) -> Task<> {
                  TimePoint t0 = ctx.now();
                  for (std::uint64_t i = 0; i < rounds; ++i) {
                    (void)co_await ctx.send(pong, i);
                    (void)co_await ctx.receive();
                  }
                  secs = to_seconds(ctx.now() - t0);
                  (void)co_await ctx.send(pong, Done{});
                }).value();
  ping.exit->wait();
  emit("ping_pong", "round_trips_per_s", static_cast<double>(rounds) / secs, "1/s");
}

void bench_fan_out(Environment& env, std::uint64_t requests, std::uint64_t workers) {
  // The sender's mailbox holds every reply at once (Erlang's is unbounded; ours is bounded
  // by design, so it is sized for the workload).
  auto rt = make_runtime(env);
  double secs = 0;
  std::vector<Pid> ws;
  for (std::uint64_t i = 0; i < workers; ++i) {
    ws.push_back(rt->spawn([](Context& ctx) -> Task<> {
                     for (;;) {
                       Message m = co_await ctx.receive();
                       if (m.is<Done>()) co_return;
                       (void)co_await ctx.send(m.from(), *m.get<std::uint64_t>());
                     }
                   }).value());
  }
  auto sender = rt->spawn_watched(
                      [&](Context& ctx) -> Task<> {
                        TimePoint t0 = ctx.now();
                        for (std::uint64_t i = 0; i < requests; ++i) {
                          auto r = co_await ctx.send(ws[i % workers], i);
                          if (!r.ok()) std::abort();
                        }
                        for (std::uint64_t i = 0; i < requests; ++i) (void)co_await ctx.receive();
                        secs = to_seconds(ctx.now() - t0);
                        for (Pid w : ws) (void)co_await ctx.send(w, Done{});
                      },
                      {.mailbox_capacity = requests + 16})
                    .value();
  sender.exit->wait();
  emit("fan_out", "requests_per_s", static_cast<double>(requests) / secs, "1/s");
}

struct Started {
  Pid pid;
};
struct CrashNow {};
struct Ping {};

void bench_restart_latency(Environment& env, std::uint64_t crashes) {
  auto rt = make_runtime(env);
  std::vector<double> lat_us;
  lat_us.reserve(crashes);
  auto driver = rt->spawn_watched([&](Context& ctx) -> Task<> {
                    Pid self = ctx.self();
                    SupervisorSpec spec{.name = "bench_sup",
                                        .strategy = Strategy::kOneForOne,
                                        .intensity = 100'000'000,
                                        .period = std::chrono::seconds(1)};
                    ChildSpec child;
                    child.id = "worker";
                    child.start = [self](StartContext& sc) {
                      return sc.spawn_link([self](Context& c) -> Task<> {
                        (void)c.try_send(self, Started{c.self()});
                        for (;;) {
                          Message m = co_await c.receive();
                          if (m.is<CrashNow>()) throw std::runtime_error("crash requested");
                          if (m.is<Ping>()) (void)co_await c.send(m.from(), Ping{});
                        }
                      });
                    };
                    spec.children.push_back(child);
                    auto sup = start_supervisor_link(ctx, spec);
                    if (!sup.ok()) std::abort();
                    Pid cur = (co_await ctx.receive()).get<Started>()->pid;
                    for (std::uint64_t i = 0; i < crashes; ++i) {
                      TimePoint t0 = ctx.now();
                      (void)co_await ctx.send(cur, CrashNow{});
                      Message m = co_await ctx.receive();
                      cur = m.get<Started>()->pid;
                      (void)co_await ctx.send(cur, Ping{});
                      (void)co_await ctx.receive();
                      lat_us.push_back(to_micros(ctx.now() - t0));
                    }
                    ctx.unlink(*sup);
                    ctx.send_exit(*sup, ExitReason::shutdown());
                  }).value();
  driver.exit->wait();
  std::sort(lat_us.begin(), lat_us.end());
  emit("restart_latency", "p50_us", percentile_of_sorted(lat_us, 50), "us");
  emit("restart_latency", "p99_us", percentile_of_sorted(lat_us, 99), "us");
}

}  // namespace

int main(int argc, char** argv) {
  auto arg = [&](int i, std::uint64_t def) { return argc > i ? std::strtoull(argv[i], nullptr, 10) : def; };
  std::uint64_t n = arg(1, 1'000'000), r = arg(2, 1'000'000), f = arg(3, 1'000'000), w = arg(4, 1000),
                c = arg(5, 100'000);
  auto env = make_real_environment();
  std::fprintf(stderr, "nines: spawn_idle N=%llu\n", static_cast<unsigned long long>(n));
  bench_spawn_idle(*env, n);
  std::fprintf(stderr, "nines: ping_pong R=%llu\n", static_cast<unsigned long long>(r));
  bench_ping_pong(*env, r);
  std::fprintf(stderr, "nines: fan_out F=%llu W=%llu\n", static_cast<unsigned long long>(f),
               static_cast<unsigned long long>(w));
  bench_fan_out(*env, f, w);
  std::fprintf(stderr, "nines: restart_latency C=%llu\n", static_cast<unsigned long long>(c));
  bench_restart_latency(*env, c);
  return 0;
}
