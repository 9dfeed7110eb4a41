// The tool registry (agent/registry.hpp): specs checked, schemas compiled, one policy
// pipeline per tool, fallbacks.
#include "nines/agent/registry.hpp"

#include <algorithm>
#include <atomic>
#include <map>
#include <set>
#include <utility>

#include "nines/resilience/bulkhead.hpp"
#include "nines/resilience/circuit_breaker.hpp"
#include "nines/resilience/pipeline.hpp"
#include "nines/resilience/retry.hpp"

namespace nines::agent {

namespace {
constexpr int kMaxFallbackDepth = 4;

RetryOptions default_tool_retry() {
  RetryOptions o;
  o.max_attempts = 3;
  o.backoff = Backoff::full_jitter(std::chrono::milliseconds(100), std::chrono::seconds(5));
  return o;
}

// Errors a fallback may answer for: the tool could not serve the call, and did not refuse it.
bool fallback_may_answer(ErrorKind k) {
  switch (k) {
    case ErrorKind::kPermanent:
    case ErrorKind::kInvalidArgument:
    case ErrorKind::kCancelled:
    case ErrorKind::kDeadlineExceeded: return false;
    default: return true;
  }
}
}  // namespace

struct ToolRegistry::Impl {
  struct Entry {
    std::shared_ptr<Tool> tool;
    std::shared_ptr<const ArgumentSchema> schema;
    std::shared_ptr<CircuitBreaker> breaker;
    std::optional<Pipeline> pipeline;
    mutable std::atomic<std::uint64_t> calls{0}, attempts{0}, failures{0}, fallbacks{0};
  };
  std::map<std::string, std::unique_ptr<Entry>, std::less<>> tools;
};

ToolRegistry::ToolRegistry(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ToolRegistry::~ToolRegistry() = default;

Result<std::shared_ptr<ToolRegistry>> ToolRegistry::create(Environment& env, std::vector<std::shared_ptr<Tool>> tools) {
  auto impl = std::make_unique<Impl>();
  for (std::size_t i = 0; i < tools.size(); ++i) {
    if (!tools[i]) return Error(ErrorKind::kInvalidArgument, "tool registry: tool " + std::to_string(i) + " is null");
    const ToolSpec& spec = tools[i]->spec();
    if (Status s = validate_tool_spec(spec); !s.ok()) return std::move(s).error().with_context("tool registry");
    if (impl->tools.contains(spec.name)) {
      return Error(ErrorKind::kInvalidArgument, "tool registry: two tools are named '" + spec.name + "'");
    }
    auto e = std::make_unique<Impl::Entry>();
    e->tool = tools[i];
    e->schema = ArgumentSchema::compile(spec.parameters_schema_json).value();  // validated above
    const std::string at = "tool registry: tool '" + spec.name + "'";
    auto breaker = CircuitBreaker::create("tool:" + spec.name, env, spec.breaker.value_or(CircuitBreakerOptions{}));
    if (!breaker.ok()) return std::move(breaker).error().with_context(at);
    e->breaker = *breaker;
    Pipeline::Builder b;
    RetryOptions retry = spec.retry ? *spec.retry : default_tool_retry();
    if (!spec.retry && (spec.nature == EffectNature::kUnsafe || spec.nature == EffectNature::kCheckable)) {
      retry.max_attempts = 1;  // a retry of an unsafe call may apply it twice: only when asked for
    }
    auto policy = RetryPolicy::create(retry);
    if (!policy.ok()) return std::move(policy).error().with_context(at);
    b.retry(std::move(*policy)).circuit_breaker(e->breaker).attempt_timeout(spec.timeout);
    if (spec.max_concurrent > 0) {
      auto bulkhead = Bulkhead::create(
          "tool:" + spec.name, env,
          {.max_concurrent = spec.max_concurrent, .max_queue = spec.max_concurrent * 4, .queue_timeout = kInfinite});
      if (!bulkhead.ok()) return std::move(bulkhead).error().with_context(at);
      b.bulkhead(*bulkhead);
    }
    auto pipeline = b.build();
    if (!pipeline.ok()) return std::move(pipeline).error().with_context(at);
    e->pipeline.emplace(std::move(*pipeline));
    impl->tools.emplace(spec.name, std::move(e));
  }
  // Fallbacks name registered tools, and no chain comes back to where it started.
  for (const auto& [name, e] : impl->tools) {
    std::set<std::string> seen{name};
    std::string next = e->tool->spec().fallback;
    while (!next.empty()) {
      auto it = impl->tools.find(next);
      if (it == impl->tools.end()) {
        return Error(ErrorKind::kInvalidArgument,
                     "tool registry: tool '" + name + "' falls back to '" + next + "', which is not registered");
      }
      if (!seen.insert(next).second) {
        return Error(ErrorKind::kInvalidArgument,
                     "tool registry: the fallbacks of tool '" + name + "' come back to '" + next + "' (a cycle)");
      }
      next = it->second->tool->spec().fallback;
    }
  }
  return std::shared_ptr<ToolRegistry>(new ToolRegistry(std::move(impl)));
}

bool ToolRegistry::contains(std::string_view name) const { return impl_->tools.find(name) != impl_->tools.end(); }

std::vector<std::string> ToolRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : impl_->tools) out.push_back(name);
  return out;
}

std::shared_ptr<Tool> ToolRegistry::find(std::string_view name) const {
  auto it = impl_->tools.find(name);
  return it == impl_->tools.end() ? nullptr : it->second->tool;
}

std::vector<llm::ToolDefinition> ToolRegistry::definitions(const std::vector<std::string>& names) const {
  std::vector<llm::ToolDefinition> out;
  auto add = [&](const Tool& t) {
    out.push_back({.name = t.spec().name,
                   .description = t.spec().description,
                   .parameters_schema_json = t.spec().parameters_schema_json});
  };
  if (names.empty()) {
    for (const auto& [name, e] : impl_->tools) add(*e->tool);
  } else {
    for (const std::string& n : names) {
      if (auto it = impl_->tools.find(n); it != impl_->tools.end()) add(*it->second->tool);
    }
  }
  return out;
}

std::optional<ArgumentProblem> ToolRegistry::check_call(const llm::ToolCall& call,
                                                        const std::vector<std::string>& allowed) const {
  auto it = impl_->tools.find(call.name);
  bool permitted = allowed.empty() || std::find(allowed.begin(), allowed.end(), call.name) != allowed.end();
  if (it == impl_->tools.end() || !permitted) {
    std::vector<std::string> valid = allowed.empty() ? names() : allowed;
    return unknown_tool_problem(call.name, valid);
  }
  return it->second->schema->check(call.arguments_json);
}

Task<ToolRun> ToolRegistry::invoke(Context& ctx, std::string name, ToolInvocation invocation) const {
  ToolRun run;
  for (int depth = 0; depth <= kMaxFallbackDepth; ++depth) {
    auto it = impl_->tools.find(name);
    if (it == impl_->tools.end()) {
      run.result = Error(ErrorKind::kNotFound, "no tool named '" + name + "'");
      co_return run;
    }
    Impl::Entry& e = *it->second;
    e.calls.fetch_add(1, std::memory_order_relaxed);
    int attempts = 0;
    auto call = [&e, &invocation, &attempts](Context& c) -> Task<Result<std::string>> {
      ++attempts;
      e.attempts.fetch_add(1, std::memory_order_relaxed);
      co_return co_await e.tool->call(c, invocation);
    };
    run.result = co_await e.pipeline->run<std::string>(ctx, std::move(call));
    run.attempts += attempts;
    run.served_by = name;
    if (run.result.ok()) co_return run;
    e.failures.fetch_add(1, std::memory_order_relaxed);
    const std::string& fallback = e.tool->spec().fallback;
    if (fallback.empty() || !fallback_may_answer(run.result.error().kind())) co_return run;
    e.fallbacks.fetch_add(1, std::memory_order_relaxed);
    run.degraded = true;
    name = fallback;
  }
  co_return run;
}

ToolCounters ToolRegistry::counters(std::string_view name) const {
  auto it = impl_->tools.find(name);
  if (it == impl_->tools.end()) return {};
  const Impl::Entry& e = *it->second;
  return {.calls = e.calls.load(std::memory_order_relaxed),
          .attempts = e.attempts.load(std::memory_order_relaxed),
          .failures = e.failures.load(std::memory_order_relaxed),
          .fallbacks = e.fallbacks.load(std::memory_order_relaxed)};
}

std::shared_ptr<CircuitBreaker> ToolRegistry::breaker(std::string_view name) const {
  auto it = impl_->tools.find(name);
  return it == impl_->tools.end() ? nullptr : it->second->breaker;
}

}  // namespace nines::agent
