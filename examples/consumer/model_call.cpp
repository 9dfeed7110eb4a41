// A model call through the router, in a program of your own (README.md, "Use nines in your
// program"). The primary model is the simulated model `sim` (in-process: no network, no API key)
// made to fail every call with a 503; the router retries it, gives up, and falls back to the
// backup, which answers. With real providers, make the clients with llm::make_provider
// (include/nines/llm/provider.hpp). Exits 0 when the backup answered.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "nines/llm/router.hpp"
#include "nines/llm/sim.hpp"
#include "nines/runtime/runtime.hpp"

using namespace std::chrono_literals;
namespace llm = nines::llm;

// [readme:model_call]
std::shared_ptr<llm::ChatModel> sim_model(double unavailable_probability) {
  llm::SimConfig config{.seed = 7};
  config.faults.of(llm::SimFault::kUnavailable) = unavailable_probability;  // 503s
  return std::make_shared<llm::SimChatModel>(llm::SimModel::create(config).value());
}

int main() {
  auto env = nines::make_real_environment();
  auto rt = nines::Runtime::create(*env).value();
  llm::ModelRouteOptions primary{.name = "primary", .model = "sim-large", .client = sim_model(1.0)};
  primary.retry.backoff = nines::Backoff::full_jitter(10ms, 100ms);  // quick, for the example
  llm::ModelRouteOptions backup{.name = "backup", .model = "sim-small", .client = sim_model(0.0)};
  auto router = llm::Router::create(*env, {.name = "assistant", .chain = {primary, backup}}).value();

  bool answered = false;
  auto caller = rt->spawn_watched([&](nines::Context& ctx) -> nines::Task<> {
    llm::ChatRequest req;
    req.messages = {llm::Message::system("You are terse."), llm::Message::user("Say hello.")};
    auto deadline = ctx.with_timeout(10s);  // bounds every retry and fallback below
    nines::Result<llm::RoutedResponse> r = co_await router->route(ctx, req);
    if (!r.ok()) {
      std::printf("failed: %s\n", r.error().to_string().c_str());
      co_return;
    }
    std::printf("%s (served by %s, degraded: %s)\n", r->response.message.text().c_str(), r->served_by.c_str(),
                r->degraded ? "yes" : "no");
    for (const llm::RouteFailure& f : r->fallbacks)
      std::printf("  left %s: %s\n", f.route.c_str(), std::string(llm::to_string(f.reason)).c_str());
    answered = true;
  });
  caller.value().exit->wait();
  return answered ? 0 : 1;
}
// [readme:end]
