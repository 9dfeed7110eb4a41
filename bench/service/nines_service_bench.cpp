// The load generator of bench/service: `nines serve`'s task API (docs/api.md) on loopback,
// driven with net::HttpClient from processes on a runtime of its own. bench/service/run starts
// the service (sim model at zero latency, an agent whose task is one model turn) and calls this.
//
//   nines_service_bench submit  URL PID AGENT SECONDS CLIENTS LABEL
//   nines_service_bench latency URL PID AGENT TASKS LABEL
//
// submit: CLIENTS processes (one keep-alive connection each) POST {"agent","input"} to
//   /v1/tasks back to back for SECONDS (each first makes one untimed POST: the warm-up opens the
//   connections). Times each POST from send to answer (env.now()). Then waits until the service
//   has no task running (GET /v1/tasks?status=running&limit=1, every 20 ms) and reads the
//   service's CPU time (utime + stime of /proc/PID/stat) before the window and after the drain.
//   Metrics (bench "service_submit_cCLIENTS_LABEL"): accepted_per_s (201s / SECONDS),
//   post_p50_us, post_p99_us (201s only), rejected (non-201 answers and failed requests),
//   drain_s (from the end of the window until no task runs), completed_per_s (accepted /
//   (SECONDS + drain_s): what the service sustains when it also runs them), cpu_us_per_task
//   (service CPU from the window's start to the end of the drain / accepted), tasks_with_warm_up
//   (accepted + CLIENTS: every task this run submitted, for per-task counts taken from outside).
// latency: TASKS times, one at a time: POST a task, open GET /v1/tasks/{id}/events (SSE; the
//   service replays what it holds, so a task that finished before the stream opened still sends
//   its task_finished), read until task_finished, then GET /v1/tasks/{id} back to back until it
//   is no longer running (the service sends task_finished before the outcome's record is
//   committed, so the first GET can still say running). Times post_us (send to 201), finish_us
//   (send to the task_finished event) and recorded_us (send to the GET that shows the outcome:
//   the task is durably done), and takes the outcome's wall_time_s (the agent's own run, from
//   its start to its outcome, before the outcome's commit). Metrics (bench
//   "service_latency_LABEL"): post_, finish_, recorded_ and run_ p50_us / p99_us, failed (tasks
//   that did not succeed, streams without task_finished), event_before_record (tasks whose
//   first GET after task_finished still said running), cpu_us_per_task (service CPU over the
//   whole loop / TASKS; includes serving the event stream and the GETs).
// One JSON line per metric: {"bench","system":"nines","metric","value","unit"}. Exit 1 if a
// request fails in a way that makes the numbers meaningless (the service unreachable).
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "nines/core/percentile.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/sse.hpp"
#include "nines/runtime/runtime.hpp"
#include "peers/bench_json.hpp"

using namespace nines;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

template <class T>
T must(Result<T> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "nines_service_bench: %s: %s\n", what, r.error().to_string().c_str());
    std::exit(1);
  }
  return std::move(*r);
}

// The service's user + system CPU time in seconds (fields 14 and 15 of /proc/PID/stat, after
// the command name, which may hold spaces: read from the last ')').
double cpu_seconds(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t close = text.rfind(')');
  if (close == std::string::npos) {
    std::fprintf(stderr, "nines_service_bench: cannot read /proc/%ld/stat\n", pid);
    std::exit(1);
  }
  std::istringstream fields(text.substr(close + 2));
  std::string skip;
  for (int i = 3; i <= 13; ++i) fields >> skip;  // state .. cmajflt
  unsigned long long utime = 0, stime = 0;
  fields >> utime >> stime;
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

struct Bench {
  Environment& env;
  Runtime& rt;
  net::HttpClient& http;
  std::string url;  // base, no trailing '/'
  std::string agent;
  std::string label;

  net::HttpRequest post_task(const std::string& input) const {
    net::HttpRequest req;
    req.method = "POST";
    req.url = url + "/v1/tasks";
    req.headers.add("Content-Type", "application/json");
    req.body = json{{"agent", agent}, {"input", input}}.dump();
    return req;
  }
  net::HttpRequest get(const std::string& path) const {
    net::HttpRequest req;
    req.url = url + path;
    return req;
  }

  // Runs `body` in a process and waits for it.
  void run(Behavior body) const {
    auto w = must(rt.spawn_watched(std::move(body)), "spawn");
    ExitReason why = w.exit->wait();
    if (!why.is_normal()) {
      std::fprintf(stderr, "nines_service_bench: a process ended abnormally: %s\n", why.to_string().c_str());
      std::exit(1);
    }
  }
};

double us(Duration d) { return to_seconds(d) * 1e6; }

void emit_percentiles(const std::string& bench, const std::string& name, std::vector<double>& sample) {
  std::sort(sample.begin(), sample.end());
  nines::bench::emit(bench.c_str(), (name + "_p50_us").c_str(), percentile_of_sorted(sample, 50), "us");
  nines::bench::emit(bench.c_str(), (name + "_p99_us").c_str(), percentile_of_sorted(sample, 99), "us");
}

int submit(const Bench& b, long pid, double seconds, int clients) {
  std::atomic<long> rejected{0};
  std::vector<std::vector<double>> post_us(static_cast<std::size_t>(clients));
  // Warm-up: one POST per client, all at once, so every connection is open before the clock.
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int c = 0; c < clients; ++c) {
    watches.push_back(must(b.rt.spawn_watched([&b, c](Context& ctx) -> Task<> {
                        net::HttpRequest req = b.post_task("warm-up " + std::to_string(c));
                        (void)co_await b.http.request(ctx, std::move(req));
                      }),
                           "spawn")
                          .exit);
  }
  for (auto& w : watches) w->wait();
  watches.clear();

  const double cpu0 = cpu_seconds(pid);
  const TimePoint t0 = b.env.now();
  const TimePoint end = t0 + std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds));
  for (int c = 0; c < clients; ++c) {
    watches.push_back(must(b.rt.spawn_watched([&, c](Context& ctx) -> Task<> {
                        std::vector<double>& mine = post_us[static_cast<std::size_t>(c)];
                        for (long i = 0;; ++i) {
                          const TimePoint start = ctx.now();
                          if (start >= end) break;
                          net::HttpRequest req = b.post_task("c" + std::to_string(c) + " #" + std::to_string(i));
                          Result<net::HttpResponse> r = co_await b.http.request(ctx, std::move(req));
                          if (r.ok() && r->status == 201) {
                            mine.push_back(us(ctx.now() - start));
                          } else {
                            ++rejected;
                          }
                        }
                      }),
                           "spawn")
                          .exit);
  }
  for (auto& w : watches) w->wait();
  const TimePoint window_end = b.env.now();

  // Drain: until no task runs.
  bool drained = false;
  b.run([&](Context& ctx) -> Task<> {
    for (int i = 0; i < 30'000; ++i) {  // at most ~10 minutes
      net::HttpRequest req = b.get("/v1/tasks?status=running&limit=1");
      Result<net::HttpResponse> r = co_await b.http.request(ctx, std::move(req));
      if (r.ok() && r->status == 200) {
        json page = json::parse(r->body, nullptr, false);
        if (page.is_object() && page["tasks"].is_array() && page["tasks"].empty()) {
          drained = true;
          co_return;
        }
      }
      (void)co_await ctx.sleep(20ms);
    }
  });
  const double drain_s = to_seconds(b.env.now() - window_end);
  const double cpu = cpu_seconds(pid) - cpu0;
  if (!drained) {
    std::fprintf(stderr, "nines_service_bench: tasks still running after the drain limit\n");
    return 1;
  }

  std::vector<double> all;
  for (auto& v : post_us) all.insert(all.end(), v.begin(), v.end());
  const double accepted = static_cast<double>(all.size());
  const double window_s = to_seconds(window_end - t0);
  const std::string bench = "service_submit_c" + std::to_string(clients) + "_" + b.label;
  nines::bench::emit(bench.c_str(), "accepted_per_s", accepted / window_s, "tasks/s");
  emit_percentiles(bench, "post", all);
  nines::bench::emit(bench.c_str(), "rejected", static_cast<double>(rejected.load()), "count");
  nines::bench::emit(bench.c_str(), "drain_s", drain_s, "s");
  nines::bench::emit(bench.c_str(), "completed_per_s", accepted / (window_s + drain_s), "tasks/s");
  nines::bench::emit(bench.c_str(), "cpu_us_per_task", accepted > 0 ? cpu / accepted * 1e6 : 0, "us");
  nines::bench::emit(bench.c_str(), "tasks_with_warm_up", accepted + clients, "count");
  return 0;
}

int latency(const Bench& b, long pid, int tasks) {
  std::vector<double> post_us, finish_us, recorded_us, run_us;
  long failed = 0;
  long event_first = 0;  // tasks still "running" on the first GET after their task_finished event
  bool unreachable = false;
  const double cpu0 = cpu_seconds(pid);
  b.run([&](Context& ctx) -> Task<> {
    for (int i = 0; i < tasks; ++i) {
      const TimePoint start = ctx.now();
      net::HttpRequest post = b.post_task("latency #" + std::to_string(i));
      Result<net::HttpResponse> r = co_await b.http.request(ctx, std::move(post));
      if (!r.ok()) {
        unreachable = true;
        co_return;
      }
      const TimePoint posted = ctx.now();
      const json created = json::parse(r->body, nullptr, false);
      const std::string id =
          r->status == 201 && created.is_object() && created["id"].is_string() ? created["id"].get<std::string>() : "";
      if (id.empty()) {
        ++failed;
        continue;
      }
      net::HttpRequest events = b.get("/v1/tasks/" + id + "/events");
      events.headers.add("Accept", "text/event-stream");
      events.timeouts = net::HttpTimeouts{.connect = 5s, .first_byte = 30s, .idle = 30s, .total = 60s};
      Result<net::HttpStream> stream = co_await b.http.stream(ctx, std::move(events));
      bool finished = false;
      if (stream.ok() && stream->status() == 200) {
        net::SseParser parser;
        while (!finished) {
          Result<std::optional<std::string>> piece = co_await stream->next(ctx);
          if (!piece.ok() || !piece->has_value()) break;
          std::vector<net::SseEvent> got;
          if (!parser.feed(**piece, got).ok()) break;
          for (const net::SseEvent& ev : got) finished = finished || ev.type == "task_finished";
        }
      }
      const TimePoint done = ctx.now();
      if (!finished) {
        ++failed;
        continue;
      }
      // The outcome's record: read until it is no longer running (the event can come first).
      json task;
      for (int read = 0; read < 10'000; ++read) {
        net::HttpRequest show = b.get("/v1/tasks/" + id);
        Result<net::HttpResponse> t = co_await b.http.request(ctx, std::move(show));
        task = t.ok() ? json::parse(t->body, nullptr, false) : json();
        if (!task.is_object() || task["status"] != "running") break;
        if (read == 0) ++event_first;
      }
      const TimePoint recorded = ctx.now();
      if (!task.is_object() || task["status"] != "succeeded" || !task["outcome"]["wall_time_s"].is_number()) {
        ++failed;
        continue;
      }
      post_us.push_back(us(posted - start));
      finish_us.push_back(us(done - start));
      recorded_us.push_back(us(recorded - start));
      run_us.push_back(task["outcome"]["wall_time_s"].get<double>() * 1e6);
    }
  });
  const double cpu = cpu_seconds(pid) - cpu0;
  if (unreachable) {
    std::fprintf(stderr, "nines_service_bench: the service did not answer a POST\n");
    return 1;
  }
  const std::string bench = "service_latency_" + b.label;
  emit_percentiles(bench, "post", post_us);
  emit_percentiles(bench, "finish", finish_us);
  emit_percentiles(bench, "recorded", recorded_us);
  emit_percentiles(bench, "run", run_us);
  nines::bench::emit(bench.c_str(), "failed", static_cast<double>(failed), "count");
  nines::bench::emit(bench.c_str(), "event_before_record", static_cast<double>(event_first), "count");
  nines::bench::emit(bench.c_str(), "cpu_us_per_task", cpu / tasks * 1e6, "us");
  return 0;
}

int usage() {
  std::fprintf(stderr,
               "usage: nines_service_bench submit URL PID AGENT SECONDS CLIENTS LABEL\n"
               "       nines_service_bench latency URL PID AGENT TASKS LABEL\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const std::string mode = argv[1];
  const bool is_submit = mode == "submit" && argc == 8;
  const bool is_latency = mode == "latency" && argc == 7;
  if (!is_submit && !is_latency) return usage();
  std::string url = argv[2];
  while (url.ends_with('/')) url.pop_back();
  const long pid = std::atol(argv[3]);
  if (pid <= 0) return usage();

  auto env = make_real_environment({.workers = 1, .seed = 1, .log_level = LogLevel::kError});
  auto rt = must(Runtime::create(*env, {.workers = 1}), "runtime");
  const int clients = is_submit ? std::atoi(argv[6]) : 1;
  auto http = must(net::HttpClient::create(
                       *env, {.max_connections = static_cast<std::size_t>(std::max(clients, 1)) + 1, .proxy = ""}),
                   "http client");
  Bench b{.env = *env, .rt = *rt, .http = *http, .url = url, .agent = argv[4], .label = argv[is_submit ? 7 : 6]};
  int rc = 0;
  if (is_submit) {
    const double seconds = std::atof(argv[5]);
    if (!(seconds > 0) || clients <= 0) return usage();
    rc = submit(b, pid, seconds, clients);
  } else {
    const int tasks = std::atoi(argv[5]);
    if (tasks <= 0) return usage();
    rc = latency(b, pid, tasks);
  }
  http.reset();
  return rc;
}
