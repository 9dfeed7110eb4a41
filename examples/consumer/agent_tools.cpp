// An agent with a native tool and an HTTP tool, on the simulated model (README.md, "Use nines in
// your program"; docs/agents.md). The model `sim` follows a script: look up the order (a C++
// function), charge it (an HTTP endpoint: a small payment server this program starts on
// loopback), then answer. It also fails on purpose: the first call gets a 503 (the router retries
// it) and one call asks for a tool that does not exist (the agent tells the model, which tries
// again). The charge goes out with the effect journal's Idempotency-Key, so a crash and resume
// would not charge twice. Exits 0 when the task succeeded and the server took exactly one charge.
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "nines/agent/agent.hpp"
#include "nines/agent/http_tool.hpp"
#include "nines/llm/router.hpp"
#include "nines/llm/sim.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/http_server.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/store/memory_store.hpp"
#include "nines/workflow/workflow.hpp"

using namespace std::chrono_literals;
namespace agent = nines::agent;
namespace llm = nines::llm;
namespace net = nines::net;

// The payment server: applies a charge once per Idempotency-Key.
struct Payments {
  std::mutex mu;
  std::map<std::string, int> charges;  // key -> times applied
  void handle(net::HttpServerRequest&& req, net::HttpResponder r) {
    std::string key(req.headers.get("Idempotency-Key").value_or(""));
    {
      std::lock_guard lock(mu);
      if (req.method != "POST" || key.empty()) {
        (void)r.respond(400, {}, R"({"error":"POST with an Idempotency-Key"})");
        return;
      }
      charges.try_emplace(key, 1);
    }
    (void)r.respond(200, {{"Content-Type", "application/json"}}, R"({"status":"charged"})");
  }
};

constexpr const char* kScript = R"({"seed": 1,
  "schedule": [{"call": 1, "fault": "unavailable"}, {"call": 3, "fault": "hallucinated_tool"}],
  "scenario": [
    {"tool_calls": [{"name": "lookup_order", "arguments": {"id": "A-42"}}]},
    {"tool_calls": [{"name": "charge", "arguments": {"order": "A-42", "cents": 1999}}]},
    {"answer": "Order A-42 was charged $19.99."}]})";

int main() {
  auto env = nines::make_real_environment();
  auto rt = nines::Runtime::create(*env).value();
  auto store = nines::make_memory_store().value();  // open_sqlite_store(path) to survive restarts
  auto engine = nines::WorkflowEngine::create(*env, *store).value();

  Payments payments;
  auto server = net::HttpServer::create(*env, {}, [&](net::HttpServerRequest&& req, net::HttpResponder r) {
                  payments.handle(std::move(req), std::move(r));
                }).value();
  std::shared_ptr<net::HttpClient> http = net::HttpClient::create(*env).value();

  // A native tool: a C++ coroutine. Read-only: safe to run again after a crash.
  auto lookup = agent::make_native_tool(
                    {.name = "lookup_order",
                     .description = "Looks up an order by id",
                     .parameters_schema_json = R"({"type":"object","properties":{"id":{"type":"string"}},
                                                   "required":["id"]})",
                     .nature = nines::EffectNature::kReadOnly},
                    [](nines::Context&, const agent::ToolInvocation& call) -> nines::Task<nines::Result<std::string>> {
                      co_return "order " + call.arguments_json + ": $19.99, unpaid";
                    })
                    .value();
  // An HTTP tool: POST to the payment server. Idempotent: the server dedupes by Idempotency-Key.
  auto charge = agent::make_http_tool({.name = "charge",
                                       .description = "Charges an order",
                                       .parameters_schema_json = R"({"type":"object","required":["order","cents"],
                        "properties":{"order":{"type":"string"},"cents":{"type":"integer","minimum":1}}})",
                                       .nature = nines::EffectNature::kIdempotent},
                                      {.method = agent::HttpMethod::kPost,
                                       .url_template = server->base_url() + "/charges",
                                       .body_template = R"({{"order": {order}, "amount_cents": {cents}}})"},
                                      http)
                    .value();
  auto tools = agent::ToolRegistry::create(*env, {lookup, charge}).value();

  llm::ModelRouteOptions model{
      .name = "sim",
      .model = "sim-1",
      .client = std::make_shared<llm::SimChatModel>(llm::SimModel::from_json(kScript).value())};
  model.retry.backoff = nines::Backoff::full_jitter(10ms, 100ms);  // quick, for the example
  std::shared_ptr<llm::Router> router = llm::Router::create(*env, {.name = "chain", .chain = {model}}).value();

  auto agents = agent::Agents::create(*env, *engine, tools).value();
  agents->add_observer([](const agent::AgentEvent& e) {
    std::printf("  [%s] %s %s\n", std::string(agent::to_string(e.type)).c_str(), e.tool.c_str(), e.detail.c_str());
  });
  nines::Status added = agents->add_agent({.name = "billing",
                                           .router = router,
                                           .system_prompt = "You bill orders. Look the order up, charge it, report.",
                                           .tools = {"lookup_order", "charge"},
                                           .budget = {.max_steps = 10}});
  if (!added.ok()) {
    std::printf("add_agent: %s\n", added.error().to_string().c_str());
    return 1;
  }

  agent::TaskOutcome out;
  auto task = rt->spawn_watched([&](nines::Context& ctx) -> nines::Task<> {
    auto deadline = ctx.with_timeout(30s);
    out = co_await agents->run(ctx, "billing", "bill-A-42", "Please bill order A-42.");
  });
  task.value().exit->wait();
  std::printf("%s: %s\n  steps %lld, model calls %lld, tool calls %lld, tool errors %zu kinds\n",
              std::string(agent::to_string(out.status)).c_str(), out.answer.c_str(), static_cast<long long>(out.steps),
              static_cast<long long>(out.model_calls), static_cast<long long>(out.tool_calls), out.tool_errors.size());
  server->stop();
  std::lock_guard lock(payments.mu);
  return out.status == agent::TaskStatus::kSucceeded && payments.charges.size() == 1 ? 0 : 1;
}
