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

#include <algorithm>
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

// The two simulated providers, each an OpenAI-compatible server on loopback.
struct Providers {
  std::shared_ptr<llm::SimModel> primary_sim, backup_sim;
  std::unique_ptr<llm::SimServer> primary, backup;
  std::uint16_t primary_port = 0;  // the primary restarts on it after the outage
};

Result<Providers> start_providers(Environment& env) {
  Providers p{.primary_sim = llm::SimModel::from_json(kPrimaryConfig).value(),
              .backup_sim = llm::SimModel::from_json(kBackupConfig).value()};
  auto primary = llm::SimServer::start(env, p.primary_sim, {});
  auto backup = llm::SimServer::start(env, p.backup_sim, {});
  if (!primary.ok() || !backup.ok()) return primary.ok() ? backup.error() : primary.error();
  p.primary = std::move(*primary);
  p.backup = std::move(*backup);
  p.primary_port = p.primary->port();
  return p;
}

// What the agents, the breaker subscriber and the live lines share; the agents are waited for
// before it goes.
struct Tally {
  std::atomic<std::uint64_t> retries{0};
  std::atomic<std::uint64_t> started{0}, answered{0}, degraded{0}, failed{0}, streamed{0};
  std::mutex notes_mu;
  std::vector<std::string> transitions;  // shown above the next live line
  std::vector<std::string> failures;     // the first five

  void note(std::string text) {
    std::lock_guard lock(notes_mu);
    transitions.push_back(std::move(text));
  }
};

// Timeouts short enough that a hung or dead primary is given up on well within the demo.
std::shared_ptr<llm::ChatModel> provider(const char* name, const std::string& url, net::HttpClient& http) {
  net::HttpTimeouts timeouts;
  timeouts.connect = 1s;
  timeouts.first_byte = 2s;
  timeouts.idle = 1s;
  timeouts.total = 10s;
  llm::ProviderConfig c{.name = name, .api = llm::Provider::kOpenAi, .base_url = url, .timeouts = timeouts};
  return llm::make_provider(c, http).value();
}

// The primary gets every policy the router has, so each fault the sim injects meets one.
llm::ModelRouteOptions primary_route(const Providers& p, net::HttpClient& http, Tally& tally) {
  llm::ModelRouteOptions primary;
  primary.name = "primary";
  primary.model = "sim-large";
  primary.client = provider("primary", p.primary->base_url(), http);
  primary.context_window_tokens = 128000;
  primary.max_output_tokens = 1024;
  primary.retry.max_attempts = 3;
  primary.retry.backoff = Backoff::full_jitter(50ms, 1s);
  primary.retry.max_retry_after = 2s;
  primary.retry.observer = [&tally](const RetryEvent& ev) {
    if (ev.type == RetryEvent::Type::kRetry) tally.retries.fetch_add(1, std::memory_order_relaxed);
  };
  primary.breaker = CircuitBreakerOptions{.window_size = 50,
                                          .minimum_calls = 20,
                                          .failure_rate_threshold = 0.5,
                                          .consecutive_failures = 15,
                                          .open_duration = 1500ms,
                                          .half_open_trials = 2};
  primary.requests_per_minute = 60000;
  primary.attempt_timeout = 1500ms;  // a hung reply is given up after 1.5 s and retried
  return primary;
}

// The backup has the primary's policies but no breaker: it is the last resort.
llm::ModelRouteOptions backup_route(const llm::ModelRouteOptions& primary, const Providers& p, net::HttpClient& http) {
  llm::ModelRouteOptions backup = primary;
  backup.name = "backup";
  backup.model = "sim-small";
  backup.client = provider("backup", p.backup->base_url(), http);
  backup.context_window_tokens = 32000;
  backup.breaker.reset();
  return backup;
}

void print_header(const ModelsDemoOptions& o, const Providers& p) {
  std::printf("nines models demo: %zu agents x %zu calls through a router (primary, then backup), on loopback\n",
              o.agents, o.calls_per_agent);
  std::printf(
      "primary: sim-large at %s with injected 429/500/503/529, hangs, cut streams, malformed JSON;"
      " down from %.1f s to %.1f s\n",
      p.primary->base_url().c_str(), o.outage_start_s, o.outage_start_s + o.outage_s);
  std::printf("backup:  sim-small at %s\n\n", p.backup->base_url().c_str());
  std::printf("%6s %8s %8s %9s %8s %10s %10s  %s\n", "time", "calls", "answers", "degraded", "retries", "via backup",
              "failed", "primary breaker");
}

// One agent: a conversation that grows with each answer, half of the calls streamed.
Task<> agent(Context& ctx, llm::Router& router, Tally& tally, std::size_t a, std::size_t calls) {
  llm::ChatRequest req;
  req.messages = {llm::Message::system("You are agent " + std::to_string(a) + ", an order assistant."),
                  llm::Message::user("Plan the order for customer " + std::to_string(a) + ".")};
  for (std::size_t i = 0; i < calls; ++i) {
    req.stream = (a + i) % 2 == 0;
    tally.started.fetch_add(1, std::memory_order_relaxed);
    llm::Router::StreamHooks hooks{.on_text = [&](std::string_view) {}};
    auto scope = ctx.with_timeout(30s);
    Result<llm::RoutedResponse> r = co_await router.route(ctx, req, hooks);
    if (r.ok()) {
      tally.answered.fetch_add(1, std::memory_order_relaxed);
      if (r->degraded) tally.degraded.fetch_add(1, std::memory_order_relaxed);
      if (req.stream) tally.streamed.fetch_add(1, std::memory_order_relaxed);
      req.messages.push_back(r->response.message);
      req.messages.push_back(llm::Message::user("Next step, please."));
    } else {
      tally.failed.fetch_add(1, std::memory_order_relaxed);
      std::lock_guard lock(tally.notes_mu);
      if (tally.failures.size() < 5) tally.failures.push_back(r.error().to_string());
    }
    (void)co_await ctx.sleep(std::chrono::milliseconds(80 + (a * 7 + i * 13) % 120));  // thinking
  }
}

// The outage, from the demo's thread: the primary's server is stopped at outage_start_s and
// started again on the same port outage_s later, so clients see refused connections, then
// the same URL working again.
class Outage {
 public:
  void at(double t, const ModelsDemoOptions& o, Environment& env, Providers& p, Tally& tally) {
    if (!down_ && t >= o.outage_start_s) {
      p.primary->stop();
      down_ = true;
      tally.note("primary provider DOWN (its server stopped: connections refused)");
    }
    if (down_ && !restored_ && t >= o.outage_start_s + o.outage_s) {
      llm::SimServerOptions same_port;
      same_port.port = p.primary_port;
      auto again = llm::SimServer::start(env, p.primary_sim, same_port);
      if (again.ok()) {
        p.primary = std::move(*again);
        tally.note("primary provider UP again");
      } else {
        tally.note("primary provider could not restart: " + again.error().to_string());
      }
      restored_ = true;
    }
  }

 private:
  bool down_ = false, restored_ = false;
};

// The notes since the last line, then one line of counters.
void print_live_line(double t, Tally& tally, std::size_t& shown_notes, const llm::Router& router) {
  {
    std::lock_guard lock(tally.notes_mu);
    for (; shown_notes < tally.transitions.size(); ++shown_notes)
      std::printf("        >> %s\n", tally.transitions[shown_notes].c_str());
  }
  const llm::RouteCounters backup_counters = router.counters(1);
  auto u = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
  std::printf("%5.1fs %8llu %8llu %9llu %8llu %10llu %10llu  %s\n", t, u(tally.started.load()),
              u(tally.answered.load()), u(tally.degraded.load()), u(tally.retries.load()), u(backup_counters.served),
              u(tally.failed.load()), std::string(to_string(router.breaker(0)->state())).c_str());
  std::fflush(stdout);
}

// The summary, and the verdict: true when every call got an answer.
bool print_summary(Environment& env, TimePoint t0, const Tally& tally, const llm::Router& router,
                   const llm::SimModel& primary_sim, const DemoLog& log) {
  auto u = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
  const llm::RouteCounters p = router.counters(0);
  const llm::SimCounters faults = primary_sim.counters();
  auto left = [&p](llm::FallbackReason r) { return p.left[static_cast<int>(r)]; };
  std::printf("\nsummary after %.1f s\n", seconds_since(env, t0));
  std::printf("  calls                     %llu (%llu streamed), every one through the router\n",
              u(tally.started.load()), u(tally.streamed.load()));
  std::printf(
      "  faults the primary sent   %llu of %llu replies (429 %llu, 500 %llu, 503 %llu, 529 %llu, hangs %llu,"
      " cut streams %llu, malformed %llu)\n",
      u(faults.calls - faults.of(llm::SimFault::kNone)), u(faults.calls), u(faults.of(llm::SimFault::kRateLimited)),
      u(faults.of(llm::SimFault::kServerError)), u(faults.of(llm::SimFault::kUnavailable)),
      u(faults.of(llm::SimFault::kOverloaded)), u(faults.of(llm::SimFault::kTimeout)),
      u(faults.of(llm::SimFault::kCutStream)), u(faults.of(llm::SimFault::kMalformedJson)));
  std::printf("  retries                   %llu (backoff with jitter, server retry times honoured)\n",
              u(tally.retries.load()));
  std::printf("  left the primary          %llu times: retries exhausted %llu, circuit open %llu, rate limited %llu\n",
              u(left(llm::FallbackReason::kRetriesExhausted) + left(llm::FallbackReason::kCircuitOpen) +
                left(llm::FallbackReason::kRateLimited) + left(llm::FallbackReason::kPermanentError)),
              u(left(llm::FallbackReason::kRetriesExhausted)), u(left(llm::FallbackReason::kCircuitOpen)),
              u(left(llm::FallbackReason::kRateLimited)));
  std::printf("  answers                   %llu: %llu by the primary, %llu by the backup (degraded)\n",
              u(tally.answered.load()), u(p.served), u(router.counters(1).served));
  print_demo_log(env, log);
  for (const std::string& f : tally.failures) std::printf("  failed: %s\n", f.c_str());
  return tally.failed.load() == 0 && tally.answered.load() == tally.started.load() && tally.started.load() > 0;
}

}  // namespace

int run_models_demo(const ModelsDemoOptions& o) {
  const DemoLog log = open_demo_log("demo-models");
  auto env = make_real_environment({.workers = 2, .seed = 42, .log_sink = log.sink});
  auto rt = Runtime::create(*env).value();
  auto launched = start_providers(*env);
  if (!launched.ok()) {
    std::fprintf(stderr, "nines: cannot start the simulated providers: %s\n", launched.error().to_string().c_str());
    return 1;
  }
  Providers& providers = *launched;
  net::HttpClientOptions http_options;
  http_options.proxy = "";  // loopback only
  auto http = net::HttpClient::create(*env, std::move(http_options)).value();

  Tally tally;
  const llm::ModelRouteOptions primary = primary_route(providers, *http, tally);
  const llm::ModelRouteOptions backup = backup_route(primary, providers, *http);
  auto router = llm::Router::create(*env, llm::RouterOptions{.name = "agents", .chain = {primary, backup}}).value();
  router->breaker(0)->subscribe([&tally](const BreakerTransition& t) {
    tally.note("primary breaker " + std::string(to_string(t.from)) + " -> " + std::string(to_string(t.to)));
  });

  print_header(o, providers);
  const TimePoint t0 = env->now();
  std::vector<std::shared_ptr<ExitWatch>> exits;
  for (std::size_t a = 0; a < o.agents; ++a) {
    auto w = rt->spawn_watched([&, a](Context& ctx) { return agent(ctx, *router, tally, a, o.calls_per_agent); });
    if (!w.ok()) {
      std::fprintf(stderr, "nines: %s\n", w.error().to_string().c_str());
      return 1;
    }
    exits.push_back(std::move(w->exit));
  }

  // The outage, and the live lines, from this thread.
  Outage outage;
  std::size_t shown_notes = 0;
  auto all_done = [&] { return std::all_of(exits.begin(), exits.end(), [](const auto& e) { return e->done(); }); };
  for (;;) {
    const bool done = all_done();
    const double t = seconds_since(*env, t0);
    outage.at(t, o, *env, providers, tally);
    print_live_line(t, tally, shown_notes, *router);
    if (done) break;
    // Wait half a second (or until the agents are done) on the environment's clock.
    auto pause = rt->spawn_watched([](Context& ctx) -> Task<> { (void)co_await ctx.sleep(500ms); }).value();
    pause.exit->wait();
  }

  const bool ok = print_summary(*env, t0, tally, *router, *providers.primary_sim, log);
  std::printf("%s\n", ok ? "OK: every call got an answer, through faults and an outage of the primary"
                         : "FAILED: some calls got no answer");
  router.reset();
  http.reset();
  if (providers.primary) providers.primary->stop();
  providers.backup->stop();
  return ok ? 0 : 1;
}

}  // namespace nines::cli
