// nines side of bench/peers/llm_client: chat calls through the whole nines model path against
// the sim server (an OpenAI-compatible server on loopback, `nines sim-server`).
//
//   nines_llm_bench BASE_URL CONCURRENCY WARMUP_S MEASURE_S [stream:0|1] [workers]
//
// The path: Router (one route: retry 3 attempts, circuit breaker, requests- and
// tokens-per-minute limiters set high enough never to wait, an attempt timeout of 60 s, the
// prompt-size check against the route's window) -> ModelClient (OpenAI codec) -> HttpClient
// (libcurl multi on the environment's event loop) -> the server. A real runtime
// (make_real_environment, `workers` worker threads, default 1, plus the event-loop thread).
// CONCURRENCY processes each make calls one after another, all the time: WARMUP_S seconds of
// warm-up (connections, caches, and the processes' start spread out), then a window of
// MEASURE_S seconds, then they stop. Metrics (JSON lines, metric names end in
// _c<CONCURRENCY>[_stream] like the SDK side's):
//   calls_per_cpu_s   calls completed in the window / CPU seconds of this process in the window
//                     (user + system, all threads: getrusage at both ends)
//   calls_per_s       calls completed in the window / MEASURE_S
//   (latencies: the calls that started and ended inside the window; percentiles by nearest rank,
//   nines/core/percentile.hpp, like the SDK side's)
//   e2e_p50_us, e2e_p99_us         one call as the process sees it (environment clock)
//   server_p50_us, server_p99_us   the server's own time per request, from its /sim/stats
//   added_p50_us, added_p99_us     per call: e2e minus the server's own time for that call (the
//                                  x-sim-server-us header: from its handler being called to its
//                                  response head being sent, injected delay included)
// NINES_LLM_BENCH_TRANSPORT_ONLY=1: the same calls with the HttpClient alone (a prebuilt
// request body, no router, codec or policies; metrics suffixed _http_only), to tell the
// transport's share of the cost from the model path's. NINES_BENCH_TAG=x suffixes every
// metric name with _x.
// Exit status 1 if any call failed or the server could not be reached.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nines/core/percentile.hpp"
#include "nines/llm/provider.hpp"
#include "nines/llm/router.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/runtime.hpp"
#include "peers/bench_json.hpp"

using namespace nines;
using namespace std::chrono_literals;

namespace {

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// A number of the server's /sim/stats answer (a JSON object); -1 when it is not there, which the
// metric then shows.
double stats_number(const nlohmann::json& stats, const char* name) {
  if (!stats.is_object()) return -1;
  auto it = stats.find(name);
  return it != stats.end() && it->is_number() ? it->get<double>() : -1;
}

struct Bench {
  Environment& env;
  Runtime& rt;
  net::HttpClient& http;
  llm::Router& router;
  bool stream = false;
  bool transport_only = false;  // NINES_LLM_BENCH_TRANSPORT_ONLY=1: HttpClient alone, no llm layer
  std::string base_url;
  std::atomic<std::int64_t> failed{0};
  std::mutex mu;
  std::vector<double> latencies_us;
  std::vector<double> added_us;  // e2e minus the server's own time (its x-sim-server-us), per call

  TimePoint window_start, window_end;
  std::atomic<std::int64_t> completed_in_window{0};

  // `concurrency` processes make calls until window_end; returns when all ended.
  void run(int concurrency) {
    std::vector<std::shared_ptr<ExitWatch>> exits;
    for (int i = 0; i < concurrency; ++i) {
      auto w = rt.spawn_watched([this](Context& ctx) -> Task<> {
        std::vector<double> mine, mine_added;
        llm::ChatRequest req;
        req.model = "sim";
        req.messages = {llm::Message::system("You are a benchmark."),
                        llm::Message::user("Say hello in a short sentence.")};
        req.max_output_tokens = 64;
        req.stream = stream;
        llm::Router::StreamHooks hooks{.on_text = [](std::string_view) {}};
        const std::string raw_body = R"({"model":"sim","messages":[{"role":"system","content":"You are a benchmark."},)"
                                     R"({"role":"user","content":"Say hello in a short sentence."}],"max_tokens":64})";
        for (TimePoint t0 = ctx.now(); t0 < window_end; t0 = ctx.now()) {
          std::optional<std::string> server_us;
          std::string failure;
          if (transport_only) {
            net::HttpRequest hreq;
            hreq.method = "POST";
            hreq.url = base_url + "/chat/completions";
            hreq.headers.add("Content-Type", "application/json");
            hreq.body = raw_body;
            Result<net::HttpResponse> r = co_await http.request(ctx, std::move(hreq));
            if (!r.ok()) {
              failure = r.error().to_string();
            } else if (r->status != 200) {
              failure = "status " + std::to_string(r->status);
            } else if (auto h = r->headers.get("x-sim-server-us")) {
              server_us = std::string(*h);
            }
          } else {
            Result<llm::RoutedResponse> r = co_await router.route(ctx, req, hooks);
            if (!r.ok()) {
              failure = r.error().to_string();
            } else if (r->response.message.text().empty()) {
              failure = "empty answer";
            } else if (auto h = llm::find_header(r->response.headers, "x-sim-server-us")) {
              server_us = std::string(*h);
            }
          }
          const TimePoint t1 = ctx.now();
          if (!failure.empty() || !server_us) {
            if (failed.fetch_add(1) < 3) {
              std::fprintf(stderr, "nines: call failed: %s\n",
                           failure.empty() ? "a reply without x-sim-server-us" : failure.c_str());
            }
            continue;
          }
          if (t1 >= window_start && t1 <= window_end) completed_in_window.fetch_add(1, std::memory_order_relaxed);
          if (t0 < window_start || t1 > window_end) continue;
          const double e2e_us = static_cast<double>((t1 - t0).count()) / 1e3;
          mine.push_back(e2e_us);
          mine_added.push_back(e2e_us - std::strtod(server_us->c_str(), nullptr));
        }
        std::lock_guard lock(mu);
        latencies_us.insert(latencies_us.end(), mine.begin(), mine.end());
        added_us.insert(added_us.end(), mine_added.begin(), mine_added.end());
      });
      if (!w.ok()) {
        std::fprintf(stderr, "nines: spawn failed: %s\n", w.error().to_string().c_str());
        std::exit(1);
      }
      exits.push_back(std::move(w->exit));
    }
    for (auto& e : exits) e->wait();
  }

  // GET or POST on the server's root (the base URL without /v1); the body.
  std::string admin(const std::string& root, const std::string& method, const std::string& path) {
    std::string body;
    auto w = rt.spawn_watched([&](Context& ctx) -> Task<> {
                 net::HttpRequest req;
                 req.method = method;
                 req.url = root + path;
                 Result<net::HttpResponse> r = co_await http.request(ctx, std::move(req));
                 if (r.ok() && r->status == 200) body = r->body;
               }).value();
    w.exit->wait();
    return body;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s BASE_URL CONCURRENCY WARMUP_S MEASURE_S [stream:0|1] [workers]\n", argv[0]);
    return 2;
  }
  const std::string base_url = argv[1];
  const int concurrency = std::atoi(argv[2]);
  const double warmup_s = std::atof(argv[3]);
  const double measure_s = std::atof(argv[4]);
  const bool stream = argc > 5 && std::string(argv[5]) == "1";
  const unsigned workers = argc > 6 ? static_cast<unsigned>(std::atoi(argv[6])) : 1;
  if (concurrency < 1 || !(warmup_s > 0) || !(measure_s > 0) || workers < 1) {
    std::fprintf(stderr, "CONCURRENCY and workers must be >= 1, WARMUP_S and MEASURE_S > 0\n");
    return 2;
  }
  const std::string root = base_url.substr(0, base_url.rfind("/v1"));
  const char* tag = std::getenv("NINES_BENCH_TAG");  // a suffix for the metric names
  const char* transport = std::getenv("NINES_LLM_BENCH_TRANSPORT_ONLY");
  const std::string label = "c" + std::to_string(concurrency) + (stream ? "_stream" : "") +
                            (transport != nullptr && std::string(transport) == "1" ? "_http_only" : "") +
                            (tag != nullptr && *tag != '\0' ? std::string("_") + tag : "");

  auto env = make_real_environment({.workers = workers, .seed = 1});
  auto rt = Runtime::create(*env).value();
  net::HttpClientOptions http_options;
  http_options.proxy = "";
  http_options.max_in_flight = static_cast<std::size_t>(concurrency) * 2 + 16;
  auto http = net::HttpClient::create(*env, std::move(http_options)).value();
  llm::ProviderConfig provider{
      .name = "sim", .api = llm::Provider::kOpenAi, .base_url = base_url, .api_key = "sk-bench-not-a-key"};
  auto model = llm::make_provider(provider, *http);
  if (!model.ok()) {
    std::fprintf(stderr, "nines: %s\n", model.error().to_string().c_str());
    return 1;
  }
  llm::ModelRouteOptions route;
  route.name = "sim";
  route.model = "sim";
  route.client = *model;
  route.context_window_tokens = 128000;
  route.max_output_tokens = 64;
  route.requests_per_minute = 100'000'000;
  route.tokens_per_minute = 1'000'000'000'000;
  route.attempt_timeout = 60s;
  auto router = llm::Router::create(*env, llm::RouterOptions{.name = "bench", .chain = {route}});
  if (!router.ok()) {
    std::fprintf(stderr, "nines: %s\n", router.error().to_string().c_str());
    return 1;
  }

  const char* transport_env = std::getenv("NINES_LLM_BENCH_TRANSPORT_ONLY");
  const bool transport_only = transport_env != nullptr && std::string(transport_env) == "1";
  Bench b{.env = *env,
          .rt = *rt,
          .http = *http,
          .router = **router,
          .stream = stream,
          .transport_only = transport_only,
          .base_url = base_url};
  auto seconds = [](double s) { return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s)); };
  b.window_start = env->now() + seconds(warmup_s);
  b.window_end = b.window_start + seconds(measure_s);
  // The window's two ends: reset the server's stats and read the CPU clock.
  double cpu0 = 0, cpu1 = 0;
  std::string stats;
  auto sampler = rt->spawn_watched([&](Context& ctx) -> Task<> {
                     (void)co_await ctx.sleep(b.window_start - ctx.now());
                     cpu0 = cpu_seconds();
                     net::HttpRequest reset;
                     reset.method = "POST";
                     reset.url = root + "/sim/stats/reset";
                     (void)co_await http->request(ctx, std::move(reset));
                     (void)co_await ctx.sleep(b.window_end - ctx.now());
                     cpu1 = cpu_seconds();
                   }).value();
  b.run(concurrency);
  sampler.exit->wait();
  const double cpu = cpu1 - cpu0;
  stats = b.admin(root, "GET", "/sim/stats");
  std::sort(b.latencies_us.begin(), b.latencies_us.end());
  std::sort(b.added_us.begin(), b.added_us.end());
  const double ok = static_cast<double>(b.completed_in_window.load());
  const nlohmann::json stats_json = nlohmann::json::parse(stats, nullptr, /*allow_exceptions=*/false);
  if (!stats_json.is_object()) {
    std::fprintf(stderr, "nines: /sim/stats did not answer a JSON object: '%s'\n", stats.c_str());
  }
  const double server_p50 = stats_number(stats_json, "latency_p50_us");
  const double server_p99 = stats_number(stats_json, "latency_p99_us");
  auto emit = [&](const std::string& metric, double value, const char* unit) {
    bench::emit("llm_client", (metric + "_" + label).c_str(), value, unit);
  };
  emit("calls_per_cpu_s", ok / cpu, "calls/cpu-s");
  emit("calls_per_s", ok / measure_s, "calls/s");
  emit("e2e_p50_us", percentile_of_sorted(b.latencies_us, 50), "us");
  emit("e2e_p99_us", percentile_of_sorted(b.latencies_us, 99), "us");
  emit("server_p50_us", server_p50, "us");
  emit("server_p99_us", server_p99, "us");
  emit("added_p50_us", percentile_of_sorted(b.added_us, 50), "us");
  emit("added_p99_us", percentile_of_sorted(b.added_us, 99), "us");
  if (b.failed > 0) {
    emit("failed_calls", static_cast<double>(b.failed), "calls");
    return 1;
  }
  router->reset();
  model->reset();
  http.reset();
  return 0;
}
