// The agent program of the kill and soak tests: the tools (HTTP tools against the ledger of
// http_ledger.hpp, one of each effect nature), the sim model's scenario with faults behind a
// router, and the agent's options. Built the same way by the worker, every restart of it and
// the checking test, so they agree on what a task does without sharing anything.
//
// Each task (one workflow) does, whatever its id:
//   turn 0: lookup(order-1) [read-only GET], charge(a, 5) [idempotent POST /charge/idem]
//   turn 1: charge_checked(b, 7) [checkable POST /charge/unsafe + GET /charge/check],
//           charge(c, 1) [idempotent], lookup(cust-2) [read-only]
//   turn 2: charge_unsafe(d, 2) [unsafe POST /charge/unsafe]
//   turn 3: the final answer "done"
// so a finished task has 6 effects and 11 history messages (the user's, 4 of the model's,
// 6 tool results).
//
// Shape::kShort (the soak's: 10,000 of them in the test command) keeps one call of each nature
// in fewer turns:
//   turn 0: lookup(order-1), charge(a, 5), charge_checked(b, 7)
//   turn 1: charge_unsafe(d, 2)
//   turn 2: the final answer "done"
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/agent/http_tool.hpp"
#include "nines/llm/router.hpp"
#include "nines/llm/sim.hpp"

namespace nines::test::agent_program {

inline constexpr const char* kAgent = "payer";
inline constexpr int kEffectsPerTask = 6;
inline constexpr int kHistoryPerTask = 11;
inline constexpr int kChargesPerTask = 4;
inline constexpr int kShortChargesPerTask = 3;

enum class Shape { kFull, kShort };

inline constexpr const char* kChargeSchema =
    R"({"type":"object","properties":{"reference":{"type":"string"},"amount":{"type":"integer","minimum":1}},
        "required":["reference","amount"]})";
inline constexpr const char* kLookupSchema =
    R"({"type":"object","properties":{"id":{"type":"string"}},"required":["id"]})";

// `model_faults`: each of rate_limited, server_error and unavailable gets this probability.
inline std::string sim_config(std::uint64_t seed, double model_faults, int latency_ms, Shape shape = Shape::kFull) {
  const std::string p = std::to_string(model_faults);
  const std::string scenario = shape == Shape::kFull ? R"(
      {"tool_calls": [{"name": "lookup", "arguments": {"id": "order-1"}},
                      {"name": "charge", "arguments": {"reference": "a", "amount": 5}}]},
      {"tool_calls": [{"name": "charge_checked", "arguments": {"reference": "b", "amount": 7}},
                      {"name": "charge", "arguments": {"reference": "c", "amount": 1}},
                      {"name": "lookup", "arguments": {"id": "cust-2"}}]},
      {"tool_calls": [{"name": "charge_unsafe", "arguments": {"reference": "d", "amount": 2}}]},
      {"answer": "done"})"
                                                     : R"(
      {"tool_calls": [{"name": "lookup", "arguments": {"id": "order-1"}},
                      {"name": "charge", "arguments": {"reference": "a", "amount": 5}},
                      {"name": "charge_checked", "arguments": {"reference": "b", "amount": 7}}]},
      {"tool_calls": [{"name": "charge_unsafe", "arguments": {"reference": "d", "amount": 2}}]},
      {"answer": "done"})";
  return R"({"seed": )" + std::to_string(seed) + R"(,
    "latency": {"first_byte": {"distribution": "fixed", "ms": )" +
         std::to_string(latency_ms) + R"(}},
    "faults": {"rate_limited": {"probability": )" +
         p + R"(, "retry_after_ms": 5},
               "server_error": {"probability": )" +
         p + R"(}, "unavailable": {"probability": )" + p + R"(}},
    "scenario": [)" +
         scenario + "]}";
}

// The four HTTP tools against the ledger at `base` ("http://127.0.0.1:PORT").
inline Result<std::vector<std::shared_ptr<agent::Tool>>> tools(std::shared_ptr<net::HttpClient> http,
                                                               const std::string& base) {
  std::vector<std::shared_ptr<agent::Tool>> out;
  const RetryOptions retry{
      .max_attempts = 4, .backoff = Backoff::full_jitter(std::chrono::milliseconds(2), std::chrono::milliseconds(20))};
  auto add = [&](agent::ToolSpec spec, agent::HttpToolOptions o) -> Status {
    spec.timeout = std::chrono::seconds(5);
    if (spec.nature == EffectNature::kReadOnly || spec.nature == EffectNature::kIdempotent) spec.retry = retry;
    Result<std::shared_ptr<agent::Tool>> t = agent::make_http_tool(std::move(spec), std::move(o), http);
    if (!t.ok()) return std::move(t).error();
    out.push_back(*t);
    return ok_status();
  };
  Status s = add({.name = "lookup",
                  .description = "Looks up a record",
                  .parameters_schema_json = kLookupSchema,
                  .nature = EffectNature::kReadOnly},
                 {.method = agent::HttpMethod::kGet, .url_template = base + "/lookup/{id}"});
  if (s.ok()) {
    s = add({.name = "charge",
             .description = "Charges once per key",
             .parameters_schema_json = kChargeSchema,
             .nature = EffectNature::kIdempotent},
            {.method = agent::HttpMethod::kPost, .url_template = base + "/charge/idem"});
  }
  if (s.ok()) {
    s = add({.name = "charge_checked",
             .description = "Charges; can be asked about",
             .parameters_schema_json = kChargeSchema,
             .nature = EffectNature::kCheckable},
            {.method = agent::HttpMethod::kPost,
             .url_template = base + "/charge/unsafe",
             .check_url_template = base + "/charge/check"});
  }
  if (s.ok()) {
    s = add({.name = "charge_unsafe",
             .description = "Charges every time",
             .parameters_schema_json = kChargeSchema,
             .nature = EffectNature::kUnsafe},
            {.method = agent::HttpMethod::kPost, .url_template = base + "/charge/unsafe"});
  }
  if (!s.ok()) return std::move(s).error();
  return out;
}

inline Result<std::shared_ptr<llm::Router>> router(Environment& env, std::shared_ptr<llm::SimModel> model) {
  llm::ModelRouteOptions r{.name = "sim/primary",
                           .model = "sim",
                           .client = std::make_shared<llm::SimChatModel>(std::move(model)),
                           .context_window_tokens = 128000,
                           .max_output_tokens = 1024};
  r.retry.max_attempts = 8;
  r.retry.backoff = Backoff::full_jitter(std::chrono::milliseconds(1), std::chrono::milliseconds(20));
  llm::RouterOptions ro{.name = "chain"};
  ro.chain.push_back(std::move(r));
  Result<std::unique_ptr<llm::Router>> made = llm::Router::create(env, std::move(ro));
  if (!made.ok()) return std::move(made).error();
  return std::shared_ptr<llm::Router>(std::move(*made));
}

inline agent::AgentOptions agent_options(std::shared_ptr<llm::Router> r) {
  return agent::AgentOptions{.name = kAgent,
                             .router = std::move(r),
                             .system_prompt = "You pay what you are asked to pay.",
                             .tools = {"lookup", "charge", "charge_checked", "charge_unsafe"},
                             .max_output_tokens = 256};
}

inline std::string task_id(int i) { return "task-" + std::to_string(i); }

}  // namespace nines::test::agent_program
