// nines side of bench/peers/llm_client: chat calls through the whole nines model path against
// the sim server (an OpenAI-compatible server on loopback, `nines sim-server`).
//
//   nines_llm_bench BASE_URL CONCURRENCY CALLS [stream:0|1] [workers]
//
// The path: Router (one route: retry 3 attempts, circuit breaker, requests- and
// tokens-per-minute limiters set high enough never to wait, an attempt timeout of 60 s, the
// prompt-size check against the route's window) -> ModelClient (OpenAI codec) -> HttpClient
// (libcurl multi on the environment's event loop) -> the server. A real runtime
// (make_real_environment, `workers` worker threads, default 1, plus the event-loop thread).
// CONCURRENCY processes each make calls one after another until CALLS have completed, after a
// warm-up of max(200, CONCURRENCY) calls. Metrics (JSON lines, metric names end in
// _c<CONCURRENCY>[_stream] like the SDK side's):
//   calls_per_cpu_s   completed calls / CPU seconds of this process (user + system, all
//                     threads: getrusage)
//   calls_per_s       completed calls / wall seconds
//   e2e_p50_us, e2e_p99_us         one call as the process sees it (environment clock)
//   server_p50_us, server_p99_us   the server's own time per request, from its /sim/stats
//   added_p50_us, added_p99_us     e2e minus server, percentile by percentile
// Exit status 1 if any call failed or the server could not be reached.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

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

double pct(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  std::size_t i = std::min(sorted.size() - 1, static_cast<std::size_t>(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[i];
}

// A number from the server's /sim/stats JSON ("name": value), without a JSON library.
double json_number(const std::string& body, const std::string& name) {
  std::size_t p = body.find("\"" + name + "\"");
  if (p == std::string::npos) return -1;
  p = body.find(':', p);
  return p == std::string::npos ? -1 : std::strtod(body.c_str() + p + 1, nullptr);
}

struct Bench {
  Environment& env;
  Runtime& rt;
  net::HttpClient& http;
  llm::Router& router;
  bool stream = false;
  std::atomic<std::int64_t> next{0};
  std::atomic<std::int64_t> failed{0};
  std::mutex mu;
  std::vector<double> latencies_us;

  // `concurrency` processes make calls until `calls` were started; returns when all ended.
  void run(int concurrency, std::int64_t calls, bool record) {
    next = 0;
    std::vector<std::shared_ptr<ExitWatch>> exits;
    for (int i = 0; i < concurrency; ++i) {
      auto w = rt.spawn_watched([this, calls, record](Context& ctx) -> Task<> {
        std::vector<double> mine;
        llm::ChatRequest req;
        req.model = "sim";
        req.messages = {llm::Message::system("You are a benchmark."),
                        llm::Message::user("Say hello in a short sentence.")};
        req.max_output_tokens = 64;
        req.stream = stream;
        llm::Router::StreamHooks hooks{.on_text = [](std::string_view) {}};
        while (next.fetch_add(1) < calls) {
          TimePoint t0 = ctx.now();
          Result<llm::RoutedResponse> r = co_await router.route(ctx, req, hooks);
          if (!r.ok() || r->response.message.text().empty()) {
            if (failed.fetch_add(1) < 3) {
              std::fprintf(stderr, "nines: call failed: %s\n",
                           r.ok() ? "empty answer" : r.error().to_string().c_str());
            }
            continue;
          }
          if (record) mine.push_back(static_cast<double>((ctx.now() - t0).count()) / 1e3);
        }
        std::lock_guard lock(mu);
        latencies_us.insert(latencies_us.end(), mine.begin(), mine.end());
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
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s BASE_URL CONCURRENCY CALLS [stream:0|1] [workers]\n", argv[0]);
    return 2;
  }
  const std::string base_url = argv[1];
  const int concurrency = std::atoi(argv[2]);
  const std::int64_t calls = std::atoll(argv[3]);
  const bool stream = argc > 4 && std::string(argv[4]) == "1";
  const unsigned workers = argc > 5 ? static_cast<unsigned>(std::atoi(argv[5])) : 1;
  if (concurrency < 1 || calls < 1 || workers < 1) {
    std::fprintf(stderr, "CONCURRENCY, CALLS and workers must be >= 1\n");
    return 2;
  }
  const std::string root = base_url.substr(0, base_url.rfind("/v1"));
  const std::string label = "c" + std::to_string(concurrency) + (stream ? "_stream" : "");

  auto env = make_real_environment({.workers = workers, .seed = 1});
  auto rt = Runtime::create(*env).value();
  net::HttpClientOptions http_options;
  http_options.proxy = "";
  http_options.max_in_flight = static_cast<std::size_t>(concurrency) * 2 + 16;
  auto http = net::HttpClient::create(*env, std::move(http_options)).value();
  llm::ProviderConfig provider{.name = "sim", .api = llm::Provider::kOpenAi, .base_url = base_url,
                               .api_key = "sk-bench-not-a-key"};
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

  Bench b{.env = *env, .rt = *rt, .http = *http, .router = **router, .stream = stream};
  b.run(concurrency, std::max<std::int64_t>(200, concurrency), false);  // warm-up
  if (b.failed > 0) {
    std::fprintf(stderr, "nines: the warm-up failed (is the sim server at %s?)\n", base_url.c_str());
    return 1;
  }
  b.admin(root, "POST", "/sim/stats/reset");
  const double cpu0 = cpu_seconds();
  const TimePoint t0 = env->now();
  b.run(concurrency, calls, true);
  const double wall = static_cast<double>((env->now() - t0).count()) / 1e9;
  const double cpu = cpu_seconds() - cpu0;
  const std::string stats = b.admin(root, "GET", "/sim/stats");
  std::sort(b.latencies_us.begin(), b.latencies_us.end());
  const double ok = static_cast<double>(b.latencies_us.size());
  const double server_p50 = json_number(stats, "latency_p50_us");
  const double server_p99 = json_number(stats, "latency_p99_us");
  auto emit = [&](const std::string& metric, double value, const char* unit) {
    bench::emit("llm_client", (metric + "_" + label).c_str(), value, unit);
  };
  emit("calls_per_cpu_s", ok / cpu, "calls/cpu-s");
  emit("calls_per_s", ok / wall, "calls/s");
  emit("e2e_p50_us", pct(b.latencies_us, 50), "us");
  emit("e2e_p99_us", pct(b.latencies_us, 99), "us");
  emit("server_p50_us", server_p50, "us");
  emit("server_p99_us", server_p99, "us");
  emit("added_p50_us", pct(b.latencies_us, 50) - server_p50, "us");
  emit("added_p99_us", pct(b.latencies_us, 99) - server_p99, "us");
  if (b.failed > 0) {
    emit("failed_calls", static_cast<double>(b.failed), "calls");
    return 1;
  }
  router->reset();
  model->reset();
  http.reset();
  return 0;
}
