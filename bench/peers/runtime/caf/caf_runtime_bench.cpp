// caf_runtime_bench -- CAF 0.17 peer of nines_runtime_bench.
//
// Measures the same four actor-runtime workloads as the nines and Erlang
// benchmarks, with event-based (function-based) CAF actors, and prints one
// JSON line per metric on stdout, e.g.
//   {"bench":"ping_pong","system":"caf","metric":"round_trips_per_s","value":123.4,"unit":"1/s"}
// Progress notes go to stderr.
//
// Usage: caf_runtime_bench [N [R [F [W [C]]]]]   (defaults 1e6 1e6 1e6 1000 1e5)
//   spawn_idle       spawn N idle actors (each waits for a message that never
//                    comes). "seconds" runs from the first spawn until every
//                    actor has run its initialization (each bumps an atomic
//                    counter there). bytes_per_process = VmRSS delta with all
//                    N alive / N (the handle vector is pre-touched before the
//                    baseline, so it is not counted).
//   ping_pong        a pinger actor and a ponger actor bounce R round trips.
//   fan_out          one sender actor sends F requests round-robin to W worker
//                    actors without waiting (send all, then collect all F
//                    replies); requests_per_s = F / elapsed.
//   restart_latency  CAF has no supervisor, so a small supervisor actor
//                    monitors the child and spawns a new one on its down_msg.
//                    A child announces itself to the driver with
//                    (started, handle) on start. C times the driver: crashes
//                    the child, waits for the new child's `started`, sends it
//                    a request(ping) and waits for the pong; p50/p99 of that
//                    round in microseconds (nearest rank, the nines side's
//                    helper: include/nines/core/percentile.hpp).
//                    "Crash" = the child calls self->quit(sec::runtime_error):
//                    an abnormal exit reason, seen by monitors exactly like a
//                    failure. (Throwing would also work -- this libcaf is built
//                    with exceptions -- but the default exception handler just
//                    converts the exception into the same quit() call.)
//
// The scheduler is limited to hardware_concurrency() threads (CAF 0.17's
// default is max(hardware_concurrency, 4), i.e. 4 on a 2-core box) to match
// Erlang's one scheduler per core. Timing uses std::chrono::steady_clock.
//
// Build: g++ -O2 -std=c++20 -I<repo>/include caf_runtime_bench.cpp -o caf_runtime_bench -lcaf_core -lpthread
// (include/ only for nines/core/percentile.hpp, header-only and standard-library-only, so that
// both sides compute p50/p99 the same way; nothing else of nines is used or linked.)

#include <caf/all.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "nines/core/percentile.hpp"

using namespace caf;
using clk = std::chrono::steady_clock;

// CAF 0.17 message tags are atom constants (max. 10 characters).
using go_atom = atom_constant<atom("go")>;
using ping_atom = atom_constant<atom("ping")>;
using pong_atom = atom_constant<atom("pong")>;
using req_atom = atom_constant<atom("req")>;
using reply_atom = atom_constant<atom("reply")>;
using crash_atom = atom_constant<atom("crash")>;
using started_atom = atom_constant<atom("started")>;
using stop_atom = atom_constant<atom("stop")>;

namespace {

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

double seconds_since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

void emit(const char* bench, const char* metric, double value, const char* unit) {
  std::printf(
      "{\"bench\":\"%s\",\"system\":\"caf\",\"metric\":\"%s\","
      "\"value\":%.3f,\"unit\":\"%s\"}\n",
      bench, metric, value, unit);
  std::fflush(stdout);
}

// Resident set size of this process in bytes (VmRSS of /proc/self/status).
long long rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  return -1;
}

// ---------------------------------------------------------------------------
// a. spawn_idle
// ---------------------------------------------------------------------------

std::atomic<uint64_t> idle_started{0};

behavior idle_actor(event_based_actor*) {
  idle_started.fetch_add(1, std::memory_order_relaxed);
  // A non-empty behavior keeps the actor alive; an empty one would terminate it.
  return {[](stop_atom) {}};
}

void bench_spawn_idle(actor_system& sys, uint64_t n) {
  std::vector<actor> actors(n);  // value-initialized: pages touched before baseline
  idle_started = 0;
  auto rss0 = rss_bytes();
  auto t0 = clk::now();
  for (uint64_t i = 0; i < n; ++i) actors[i] = sys.spawn(idle_actor);
  while (idle_started.load(std::memory_order_relaxed) < n) std::this_thread::sleep_for(std::chrono::microseconds(100));
  auto secs = seconds_since(t0);
  auto rss1 = rss_bytes();
  emit("spawn_idle", "seconds", secs, "s");
  emit("spawn_idle", "spawn_rate", static_cast<double>(n) / secs, "procs/s");
  emit("spawn_idle", "bytes_per_process", static_cast<double>(rss1 - rss0) / static_cast<double>(n), "B");
  for (auto& a : actors) anon_send_exit(a, exit_reason::kill);
  actors.clear();
  sys.await_all_actors_done();
}

// ---------------------------------------------------------------------------
// b. ping_pong
// ---------------------------------------------------------------------------

behavior ponger(event_based_actor*) {
  // Returning a value from a handler sends it back to the sender.
  return {[](ping_atom) { return pong_atom::value; }};
}

struct pinger_state {
  uint64_t left = 0;
  clk::time_point t0;
  response_promise done;
};

// On `go`: bounce `rounds` pings off `pong`, then answer the `go` request
// with the elapsed seconds.
behavior pinger(stateful_actor<pinger_state>* self, actor pong, uint64_t rounds) {
  return {
      [=](go_atom) {
        auto& st = self->state;
        st.done = self->make_response_promise();
        st.left = rounds;
        st.t0 = clk::now();
        self->send(pong, ping_atom::value);
      },
      [=](pong_atom) {
        auto& st = self->state;
        if (--st.left > 0) {
          self->send(pong, ping_atom::value);
          return;
        }
        st.done.deliver(seconds_since(st.t0));
        self->send_exit(pong, exit_reason::user_shutdown);
        self->quit();
      },
  };
}

void bench_ping_pong(actor_system& sys, uint64_t rounds) {
  {
    auto pong = sys.spawn(ponger);
    auto ping = sys.spawn(pinger, pong, rounds);
    scoped_actor driver{sys};
    driver->request(ping, infinite, go_atom::value)
        .receive(
            [&](double secs) { emit("ping_pong", "round_trips_per_s", static_cast<double>(rounds) / secs, "1/s"); },
            [&](error& err) { throw std::runtime_error("ping_pong: " + sys.render(err)); });
  }
  sys.await_all_actors_done();
}

// ---------------------------------------------------------------------------
// c. fan_out
// ---------------------------------------------------------------------------

behavior fan_worker(event_based_actor*) {
  return {[](req_atom) { return reply_atom::value; }};
}

struct fan_state {
  std::vector<actor> workers;
  uint64_t pending = 0;
  clk::time_point t0;
  response_promise done;
};

// Spawns the workers up front. On `go`: sends all `requests` round-robin,
// counts the replies, then answers the `go` request with the elapsed seconds.
behavior fan_sender(stateful_actor<fan_state>* self, uint64_t requests, uint64_t n_workers) {
  for (uint64_t i = 0; i < n_workers; ++i) self->state.workers.push_back(self->spawn(fan_worker));
  return {
      [=](go_atom) {
        auto& st = self->state;
        st.done = self->make_response_promise();
        st.pending = requests;
        st.t0 = clk::now();
        for (uint64_t i = 0; i < requests; ++i) self->send(st.workers[i % n_workers], req_atom::value);
      },
      [=](reply_atom) {
        auto& st = self->state;
        if (--st.pending > 0) return;
        st.done.deliver(seconds_since(st.t0));
        for (auto& w : st.workers) self->send_exit(w, exit_reason::user_shutdown);
        self->quit();
      },
  };
}

void bench_fan_out(actor_system& sys, uint64_t requests, uint64_t n_workers) {
  {
    auto sender = sys.spawn(fan_sender, requests, n_workers);
    scoped_actor driver{sys};
    driver->request(sender, infinite, go_atom::value)
        .receive([&](double secs) { emit("fan_out", "requests_per_s", static_cast<double>(requests) / secs, "1/s"); },
                 [&](error& err) { throw std::runtime_error("fan_out: " + sys.render(err)); });
  }
  sys.await_all_actors_done();
}

// ---------------------------------------------------------------------------
// d. restart_latency
// ---------------------------------------------------------------------------

// The supervised child: announces itself to the driver, answers pings and
// "crashes" (exits with an error reason) on `crash`.
behavior child_actor(event_based_actor* self, actor driver) {
  self->send(driver, started_atom::value, actor_cast<actor>(self));
  return {
      [=](crash_atom) { self->quit(sec::runtime_error); },
      [](ping_atom) { return pong_atom::value; },
  };
}

struct sup_state {
  actor child;
};

// Minimal one_for_one supervisor for one child: monitor it, and whenever it
// goes down, start a fresh one. `stop` kills the child and ends supervision.
behavior supervisor_actor(stateful_actor<sup_state>* self, actor driver) {
  auto start_child = [=] {
    self->state.child = self->spawn(child_actor, driver);
    self->monitor(self->state.child);
  };
  self->set_down_handler([=](down_msg&) { start_child(); });
  start_child();
  return {
      [=](stop_atom) {
        self->demonitor(self->state.child);
        self->send_exit(self->state.child, exit_reason::kill);
        self->quit();
      },
  };
}

struct restart_state {
  actor sup;
  actor child;
  bool running = false;
  uint64_t left = 0;
  clk::time_point t0;
  std::vector<double> samples_us;
  response_promise done;
};

// On `go`: starts the supervisor, then runs `rounds` crash/restart/ping
// rounds and answers the `go` request with (p50_us, p99_us).
behavior restart_driver(stateful_actor<restart_state>* self, uint64_t rounds) {
  auto crash_child = [=] {
    self->state.t0 = clk::now();
    self->send(self->state.child, crash_atom::value);
  };
  return {
      [=](go_atom) {
        auto& st = self->state;
        st.done = self->make_response_promise();
        st.left = rounds;
        st.samples_us.reserve(rounds);
        st.sup = self->spawn(supervisor_actor, actor_cast<actor>(self));
      },
      [=](started_atom, actor child) {
        auto& st = self->state;
        st.child = child;
        if (!st.running) {  // first instance: start the measurement loop
          st.running = true;
          crash_child();
          return;
        }
        self->request(child, infinite, ping_atom::value).then([=](pong_atom) {
          auto& st = self->state;
          st.samples_us.push_back(seconds_since(st.t0) * 1e6);
          if (--st.left > 0) {
            crash_child();
            return;
          }
          self->send(st.sup, stop_atom::value);
          auto& v = st.samples_us;
          std::sort(v.begin(), v.end());
          st.done.deliver(nines::percentile_of_sorted(v, 50), nines::percentile_of_sorted(v, 99));
          self->quit();
        });
      },
  };
}

void bench_restart_latency(actor_system& sys, uint64_t rounds) {
  {
    auto drv = sys.spawn(restart_driver, rounds);
    scoped_actor driver{sys};
    driver->request(drv, infinite, go_atom::value)
        .receive(
            [&](double p50, double p99) {
              emit("restart_latency", "p50_us", p50, "us");
              emit("restart_latency", "p99_us", p99, "us");
            },
            [&](error& err) { throw std::runtime_error("restart_latency: " + sys.render(err)); });
  }
  sys.await_all_actors_done();
}

uint64_t parse_arg(int argc, char** argv, int i, uint64_t fallback) {
  if (i >= argc) return fallback;
  char* end = nullptr;
  auto v = std::strtoull(argv[i], &end, 10);
  if (end == argv[i] || *end != '\0' || v == 0) {
    std::fprintf(stderr, "bad argument '%s' (want N R F W C, positive ints)\n", argv[i]);
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 6) {
    std::fprintf(stderr, "usage: %s [N [R [F [W [C]]]]]\n", argv[0]);
    return 2;
  }
  auto n = parse_arg(argc, argv, 1, 1000000);
  auto r = parse_arg(argc, argv, 2, 1000000);
  auto f = parse_arg(argc, argv, 3, 1000000);
  auto w = parse_arg(argc, argv, 4, 1000);
  auto c = parse_arg(argc, argv, 5, 100000);
  auto threads = std::max(1u, std::thread::hardware_concurrency());
  actor_system_config cfg;
  cfg.set("scheduler.max-threads", static_cast<size_t>(threads));
  try {
    actor_system sys{cfg};
    std::fprintf(stderr,
                 "[caf] CAF %d.%d.%d, %u scheduler threads, N=%" PRIu64 " R=%" PRIu64 " F=%" PRIu64 " W=%" PRIu64
                 " C=%" PRIu64 "\n",
                 CAF_MAJOR_VERSION, CAF_MINOR_VERSION, CAF_PATCH_VERSION, threads, n, r, f, w, c);
    bench_spawn_idle(sys, n);
    bench_ping_pong(sys, r);
    bench_fan_out(sys, f, w);
    bench_restart_latency(sys, c);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "caf_runtime_bench failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
