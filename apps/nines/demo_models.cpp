// `nines demo models`: agents calling a flaky model provider through the router, on loopback.
//
// Two simulated providers run as OpenAI-compatible HTTP servers on 127.0.0.1 (the sim,
// docs/sim.md): "primary" injects the faults real APIs have (429 with a retry time, 500, 503,
// 529, hangs, streams cut mid-answer, malformed JSON) with seeded probabilities, and goes down
// completely for a while in the middle of the run (its server is stopped, then started again
// on the same port); "backup" is a smaller, steadier model. Agents (processes) make chat calls,
// half of them streamed, through one Router (primary, then backup): per-route retry with
// jittered backoff honouring retry times, a circuit breaker, rate limits and an attempt
// timeout, over the real HTTP client. Live lines show calls, answers, retries, fallbacks and
// the primary's breaker; the summary checks that every call got an answer.
#include "demo_models.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "demo_log.hpp"
#include "nines/core/environment.hpp"
#include "nines/llm/provider.hpp"
#include "nines/llm/router.hpp"
#include "nines/llm/sim_server.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/runtime.hpp"

namespace nines::cli {

namespace {

using namespace std::chrono_literals;

constexpr const char* kPrimaryConfig = R"({
  "seed": 7, "model": "sim-large",
  "scenario": [{"answer": "Here is the plan: check the inventory, reserve the items, then confirm the order."}],
  "context_window_tokens": 128000,
  "latency": {"first_byte": {"distribution": "lognormal", "median_ms": 60, "sigma": 0.5, "max_ms": 2000},
              "per_chunk": {"distribution": "uniform", "min_ms": 1, "max_ms": 4}},
  "faults": {
    "rate_limited":   {"probability": 0.06, "retry_after_ms": 400},
    "server_error":   {"probability": 0.02},
    "unavailable":    {"probability": 0.03},
    "overloaded":     {"probability": 0.03},
    "timeout":        {"probability": 0.01, "hang_ms": 30000},
    "cut_stream":     {"probability": 0.04},
    "malformed_json": {"probability": 0.02}
  }
})";

constexpr const char* kBackupConfig = R"({
  "seed": 8, "model": "sim-small",
  "scenario": [{"answer": "Plan: check stock, reserve, confirm."}],
  "context_window_tokens": 32000,
  "latency": {"first_byte": {"distribution": "lognormal", "median_ms": 30, "sigma": 0.4, "max_ms": 1000}},
  "faults": {"unavailable": {"probability": 0.01}}
})";

double seconds_since(Environment& env, TimePoint t0) { return std::chrono::duration<double>(env.now() - t0).count(); }

}  // namespace

int run_models_demo(const ModelsDemoOptions& o) {
  const DemoLog log = open_demo_log("demo-models");
  auto env = make_real_environment({.workers = 2, .seed = 42, .log_sink = log.sink});
  auto rt = Runtime::create(*env).value();
  auto primary_sim = llm::SimModel::from_json(kPrimaryConfig).value();
  auto backup_sim = llm::SimModel::from_json(kBackupConfig).value();
  auto primary_server = llm::SimServer::start(*env, primary_sim, {});
  auto backup_server = llm::SimServer::start(*env, backup_sim, {});
  if (!primary_server.ok() || !backup_server.ok()) {
    std::fprintf(stderr, "nines: cannot start the simulated providers: %s\n",
                 (primary_server.ok() ? backup_server.error() : primary_server.error()).to_string().c_str());
    return 1;
  }
  const std::uint16_t primary_port = (*primary_server)->port();
  net::HttpClientOptions http_options;
  http_options.proxy = "";  // loopback only
  auto http = net::HttpClient::create(*env, std::move(http_options)).value();
  net::HttpTimeouts timeouts;
  timeouts.connect = 1s;
  timeouts.first_byte = 2s;
  timeouts.idle = 1s;
  timeouts.total = 10s;
  auto provider = [&](const char* name, const std::string& url) {
    llm::ProviderConfig c{.name = name, .api = llm::Provider::kOpenAi, .base_url = url, .timeouts = timeouts};
    return llm::make_provider(c, *http).value();
  };

  std::atomic<std::uint64_t> retries{0};
  llm::ModelRouteOptions primary;
  primary.name = "primary";
  primary.model = "sim-large";
  primary.client = provider("primary", (*primary_server)->base_url());
  primary.context_window_tokens = 128000;
  primary.max_output_tokens = 1024;
  primary.retry.max_attempts = 3;
  primary.retry.backoff = Backoff::full_jitter(50ms, 1s);
  primary.retry.max_retry_after = 2s;
  primary.retry.observer = [&](const RetryEvent& ev) {
    if (ev.type == RetryEvent::Type::kRetry) retries.fetch_add(1, std::memory_order_relaxed);
  };
  primary.breaker = CircuitBreakerOptions{.window_size = 50,
                                          .minimum_calls = 20,
                                          .failure_rate_threshold = 0.5,
                                          .consecutive_failures = 15,
                                          .open_duration = 1500ms,
                                          .half_open_trials = 2};
  primary.requests_per_minute = 60000;
  primary.attempt_timeout = 1500ms;  // a hung reply is given up after 1.5 s and retried
  llm::ModelRouteOptions backup = primary;
  backup.name = "backup";
  backup.model = "sim-small";
  backup.client = provider("backup", (*backup_server)->base_url());
  backup.context_window_tokens = 32000;
  backup.breaker.reset();
  auto router = llm::Router::create(*env, llm::RouterOptions{.name = "agents", .chain = {primary, backup}}).value();
  std::vector<std::string> transitions;
  std::mutex notes_mu;
  router->breaker(0)->subscribe([&](const BreakerTransition& t) {
    std::lock_guard lock(notes_mu);
    transitions.push_back("primary breaker " + std::string(to_string(t.from)) + " -> " + std::string(to_string(t.to)));
  });

  std::printf("nines models demo: %zu agents x %zu calls through a router (primary, then backup), on loopback\n",
              o.agents, o.calls_per_agent);
  std::printf(
      "primary: sim-large at %s with injected 429/500/503/529, hangs, cut streams, malformed JSON;"
      " down from %.1f s to %.1f s\n",
      (*primary_server)->base_url().c_str(), o.outage_start_s, o.outage_start_s + o.outage_s);
  std::printf("backup:  sim-small at %s\n\n", (*backup_server)->base_url().c_str());
  std::printf("%6s %8s %8s %9s %8s %10s %10s  %s\n", "time", "calls", "answers", "degraded", "retries", "via backup",
              "failed", "primary breaker");

  std::atomic<std::uint64_t> started{0}, answered{0}, degraded{0}, failed{0}, streamed{0};
  std::vector<std::string> failures;
  const TimePoint t0 = env->now();
  std::vector<std::shared_ptr<ExitWatch>> exits;
  for (std::size_t a = 0; a < o.agents; ++a) {
    auto w = rt->spawn_watched([&, a](Context& ctx) -> Task<> {
      llm::ChatRequest req;
      req.messages = {llm::Message::system("You are agent " + std::to_string(a) + ", an order assistant."),
                      llm::Message::user("Plan the order for customer " + std::to_string(a) + ".")};
      for (std::size_t i = 0; i < o.calls_per_agent; ++i) {
        req.stream = (a + i) % 2 == 0;
        started.fetch_add(1, std::memory_order_relaxed);
        llm::Router::StreamHooks hooks{.on_text = [&](std::string_view) {}};
        auto scope = ctx.with_timeout(30s);
        Result<llm::RoutedResponse> r = co_await router->route(ctx, req, hooks);
        if (r.ok()) {
          answered.fetch_add(1, std::memory_order_relaxed);
          if (r->degraded) degraded.fetch_add(1, std::memory_order_relaxed);
          if (req.stream) streamed.fetch_add(1, std::memory_order_relaxed);
          req.messages.push_back(r->response.message);
          req.messages.push_back(llm::Message::user("Next step, please."));
        } else {
          failed.fetch_add(1, std::memory_order_relaxed);
          std::lock_guard lock(notes_mu);
          if (failures.size() < 5) failures.push_back(r.error().to_string());
        }
        (void)co_await ctx.sleep(std::chrono::milliseconds(80 + (a * 7 + i * 13) % 120));  // thinking
      }
    });
    if (!w.ok()) {
      std::fprintf(stderr, "nines: %s\n", w.error().to_string().c_str());
      return 1;
    }
    exits.push_back(std::move(w->exit));
  }

  // The outage, and the live lines, from this thread.
  bool down = false, restored = false;
  std::size_t shown_notes = 0;
  auto all_done = [&] {
    for (auto& e : exits) {
      if (!e->done()) return false;
    }
    return true;
  };
  for (;;) {
    const bool done = all_done();
    const double t = seconds_since(*env, t0);
    if (!down && t >= o.outage_start_s) {
      (*primary_server)->stop();
      down = true;
      std::lock_guard lock(notes_mu);
      transitions.push_back("primary provider DOWN (its server stopped: connections refused)");
    }
    if (down && !restored && t >= o.outage_start_s + o.outage_s) {
      llm::SimServerOptions same_port;
      same_port.port = primary_port;
      auto again = llm::SimServer::start(*env, primary_sim, same_port);
      std::lock_guard lock(notes_mu);
      if (again.ok()) {
        primary_server = std::move(again);
        transitions.push_back("primary provider UP again");
      } else {
        transitions.push_back("primary provider could not restart: " + again.error().to_string());
      }
      restored = true;
    }
    {
      std::lock_guard lock(notes_mu);
      for (; shown_notes < transitions.size(); ++shown_notes)
        std::printf("        >> %s\n", transitions[shown_notes].c_str());
    }
    const llm::RouteCounters backup_counters = router->counters(1);
    std::printf("%5.1fs %8llu %8llu %9llu %8llu %10llu %10llu  %s\n", t,
                static_cast<unsigned long long>(started.load()), static_cast<unsigned long long>(answered.load()),
                static_cast<unsigned long long>(degraded.load()), static_cast<unsigned long long>(retries.load()),
                static_cast<unsigned long long>(backup_counters.served), static_cast<unsigned long long>(failed.load()),
                std::string(to_string(router->breaker(0)->state())).c_str());
    std::fflush(stdout);
    if (done) break;
    // Wait half a second (or until the agents are done) on the environment's clock.
    auto pause = rt->spawn_watched([](Context& ctx) -> Task<> { (void)co_await ctx.sleep(500ms); }).value();
    pause.exit->wait();
  }

  const llm::RouteCounters p = router->counters(0);
  const llm::SimCounters faults = primary_sim->counters();
  std::printf("\nsummary after %.1f s\n", seconds_since(*env, t0));
  std::printf("  calls                     %llu (%llu streamed), every one through the router\n",
              static_cast<unsigned long long>(started.load()), static_cast<unsigned long long>(streamed.load()));
  std::printf(
      "  faults the primary sent   %llu of %llu replies (429 %llu, 500 %llu, 503 %llu, 529 %llu, hangs %llu,"
      " cut streams %llu, malformed %llu)\n",
      static_cast<unsigned long long>(faults.calls - faults.of(llm::SimFault::kNone)),
      static_cast<unsigned long long>(faults.calls),
      static_cast<unsigned long long>(faults.of(llm::SimFault::kRateLimited)),
      static_cast<unsigned long long>(faults.of(llm::SimFault::kServerError)),
      static_cast<unsigned long long>(faults.of(llm::SimFault::kUnavailable)),
      static_cast<unsigned long long>(faults.of(llm::SimFault::kOverloaded)),
      static_cast<unsigned long long>(faults.of(llm::SimFault::kTimeout)),
      static_cast<unsigned long long>(faults.of(llm::SimFault::kCutStream)),
      static_cast<unsigned long long>(faults.of(llm::SimFault::kMalformedJson)));
  std::printf("  retries                   %llu (backoff with jitter, server retry times honoured)\n",
              static_cast<unsigned long long>(retries.load()));
  std::printf("  left the primary          %llu times: retries exhausted %llu, circuit open %llu, rate limited %llu\n",
              static_cast<unsigned long long>(p.left[static_cast<int>(llm::FallbackReason::kRetriesExhausted)] +
                                              p.left[static_cast<int>(llm::FallbackReason::kCircuitOpen)] +
                                              p.left[static_cast<int>(llm::FallbackReason::kRateLimited)] +
                                              p.left[static_cast<int>(llm::FallbackReason::kPermanentError)]),
              static_cast<unsigned long long>(p.left[static_cast<int>(llm::FallbackReason::kRetriesExhausted)]),
              static_cast<unsigned long long>(p.left[static_cast<int>(llm::FallbackReason::kCircuitOpen)]),
              static_cast<unsigned long long>(p.left[static_cast<int>(llm::FallbackReason::kRateLimited)]));
  std::printf("  answers                   %llu: %llu by the primary, %llu by the backup (degraded)\n",
              static_cast<unsigned long long>(answered.load()), static_cast<unsigned long long>(p.served),
              static_cast<unsigned long long>(router->counters(1).served));
  print_demo_log(*env, log);
  for (const std::string& f : failures) std::printf("  failed: %s\n", f.c_str());
  const bool ok = failed.load() == 0 && answered.load() == started.load() && started.load() > 0;
  std::printf("%s\n", ok ? "OK: every call got an answer, through faults and an outage of the primary"
                         : "FAILED: some calls got no answer");
  router.reset();
  http.reset();
  if (*primary_server) (*primary_server)->stop();
  (*backup_server)->stop();
  return ok ? 0 : 1;
}

}  // namespace nines::cli
