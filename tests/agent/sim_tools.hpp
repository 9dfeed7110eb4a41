// Simulated tools for the whole-system agent simulation (agent_sim.hpp): native tools over a
// simulated ledger (the outside world they change), each failing on purpose with seeded
// faults drawn from the deterministic environment:
//
//   lookup   read-only    never changes the ledger
//   charge   idempotent   applies by idempotency key (a repeated key is applied once)
//   reserve  checkable    applies every request; check() asks the ledger about the key
//   notify   unsafe       applies every request; nothing can tell whether it was applied
//
// Faults, per call (drawn in the call): a transient error before or after the apply, a
// permanent refusal, a slow call (inside the timeout), a hang past the timeout (before or
// after the apply), and a crash of the tool's process (ctx.exit with a crash reason, or a
// thrown exception) before or after the apply. Tools run as native code in processes of the
// runtime: there are no child OS processes in this simulation.
//
// The ledger records every application with the task, the model's call id and the key, so
// the checker can tell an effect applied twice (agent_sim.cpp). It lives outside whatever the
// simulation crashes, like a real remote service. Single-threaded use (the deterministic
// runtime runs one process at a time).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "nines/agent/tool.hpp"
#include "nines/core/environment.hpp"

namespace nines::test {

class SimLedger {
 public:
  struct Application {
    std::string tool;
    std::string task_id;
    std::string call_id;
    std::string key;
  };
  // Called on every application (the trace).
  std::function<void(const Application&)> on_apply;

  // Applies unless `dedup` and the key was applied already. Returns the outcome text.
  std::string apply(const std::string& tool, const agent::ToolInvocation& inv, bool dedup) {
    ++requests_[inv.idempotency_key];
    if (dedup && by_key_.contains(inv.idempotency_key)) return "applied:" + inv.idempotency_key;
    ++by_key_[inv.idempotency_key];
    Application a{.tool = tool, .task_id = inv.task_id, .call_id = inv.call_id, .key = inv.idempotency_key};
    if (on_apply) on_apply(a);
    applications_.push_back(std::move(a));
    return "applied:" + inv.idempotency_key;
  }
  std::optional<std::string> check(const std::string& key) const {
    if (!by_key_.contains(key)) return std::nullopt;
    return "applied:" + key;
  }
  const std::vector<Application>& applications() const { return applications_; }
  const std::map<std::string, int>& by_key() const { return by_key_; }
  // Keys whose target saw more than one request (re-sent with the same key).
  int keys_resent() const {
    int n = 0;
    for (const auto& [k, c] : requests_) n += c > 1;
    return n;
  }

 private:
  std::map<std::string, int> requests_;
  std::map<std::string, int> by_key_;
  std::vector<Application> applications_;
};

// What the tools' faults did, for the tally.
struct SimToolStats {
  std::map<std::string, std::uint64_t> faults;  // by fault name
  std::uint64_t calls = 0;
  std::uint64_t checks = 0;
};

namespace sim_tools_internal {

enum class Fault {
  kNone,
  kTransientBefore,
  kTransientAfter,
  kRefused,
  kSlow,
  kHangBefore,
  kHangAfter,
  kCrashBefore,
  kCrashAfter
};

inline const char* fault_name(Fault f) {
  switch (f) {
    case Fault::kNone: return "none";
    case Fault::kTransientBefore: return "transient_before";
    case Fault::kTransientAfter: return "transient_after";
    case Fault::kRefused: return "refused";
    case Fault::kSlow: return "slow";
    case Fault::kHangBefore: return "hang_before";
    case Fault::kHangAfter: return "hang_after";
    case Fault::kCrashBefore: return "crash_before";
    case Fault::kCrashAfter: return "crash_after";
  }
  return "?";
}

// About one call in three fails in some way.
inline Fault draw_fault(Environment& env) {
  const std::uint64_t u = env.random_below(1000);
  if (u < 640) return Fault::kNone;
  if (u < 700) return Fault::kTransientBefore;
  if (u < 740) return Fault::kTransientAfter;
  if (u < 780) return Fault::kRefused;
  if (u < 860) return Fault::kSlow;
  if (u < 890) return Fault::kHangBefore;
  if (u < 920) return Fault::kHangAfter;
  if (u < 960) return Fault::kCrashBefore;
  return Fault::kCrashAfter;
}

[[noreturn]] inline void crash(Context& ctx, const std::string& tool, bool by_throw) {
  if (by_throw) throw std::runtime_error("sim tool '" + tool + "' threw");
  ctx.exit(ExitReason::crash("nines::test::SimToolCrash", "sim tool '" + tool + "' exited its process"));
}

}  // namespace sim_tools_internal

inline constexpr const char* kSimLookupSchema =
    R"({"type":"object","properties":{"id":{"type":"string"}},"required":["id"],"additionalProperties":false})";
inline constexpr const char* kSimChargeSchema =
    R"({"type":"object","properties":{"reference":{"type":"string"},"amount":{"type":"integer","minimum":1}},
        "required":["reference","amount"]})";

// The four tools, over `ledger` (both must outlive every call). `faults` off: every call
// succeeds after a short delay.
inline std::vector<std::shared_ptr<agent::Tool>> make_sim_tools(std::shared_ptr<SimLedger> ledger,
                                                                std::shared_ptr<SimToolStats> stats, bool faults) {
  using sim_tools_internal::Fault;
  struct Def {
    const char* name;
    EffectNature nature;
    bool dedup;
    bool applies;
  };
  static constexpr Def kDefs[] = {{"lookup", EffectNature::kReadOnly, true, false},
                                  {"charge", EffectNature::kIdempotent, true, true},
                                  {"reserve", EffectNature::kCheckable, false, true},
                                  {"notify", EffectNature::kUnsafe, false, true}};
  std::vector<std::shared_ptr<agent::Tool>> out;
  for (const Def& d : kDefs) {
    agent::ToolSpec spec{.name = d.name,
                         .description = std::string("simulated ") + d.name,
                         .parameters_schema_json = d.applies ? kSimChargeSchema : kSimLookupSchema,
                         .nature = d.nature,
                         .timeout = std::chrono::seconds(2)};
    if (d.nature == EffectNature::kReadOnly || d.nature == EffectNature::kIdempotent) {
      spec.retry = RetryOptions{.max_attempts = 2, .backoff = Backoff::constant(std::chrono::milliseconds(300))};
    }
    const std::string name = d.name;
    const bool dedup = d.dedup, applies = d.applies;
    agent::NativeToolFn fn = [ledger, stats, faults, name, dedup, applies](
                                 Context& c, const agent::ToolInvocation& inv) -> Task<Result<std::string>> {
      ++stats->calls;
      const Fault f = faults ? sim_tools_internal::draw_fault(c.env()) : Fault::kNone;
      if (f != Fault::kNone) ++stats->faults[sim_tools_internal::fault_name(f)];
      const bool by_throw = c.env().random_below(2) == 0;
      Duration before = std::chrono::milliseconds(10 + c.env().random_below(200));
      if (f == Fault::kSlow) before += std::chrono::milliseconds(1000 + c.env().random_below(800));
      if (f == Fault::kHangBefore) before = std::chrono::hours(1);
      auto s = co_await c.sleep(before);
      if (!s.ok()) co_return s.error();
      if (f == Fault::kTransientBefore) co_return Error(ErrorKind::kTransient, name + ": backend 503");
      if (f == Fault::kRefused) co_return Error(ErrorKind::kPermanent, name + ": refused (insufficient funds)");
      if (f == Fault::kCrashBefore) sim_tools_internal::crash(c, name, by_throw);
      std::string result = applies ? ledger->apply(name, inv, dedup) : "record for " + inv.arguments_json;
      if (f == Fault::kTransientAfter) co_return Error(ErrorKind::kTransient, name + ": connection reset");
      if (f == Fault::kCrashAfter) sim_tools_internal::crash(c, name, by_throw);
      if (f == Fault::kHangAfter) {
        auto h = co_await c.sleep(std::chrono::hours(1));
        if (!h.ok()) co_return h.error();
      }
      co_return result;
    };
    agent::NativeCheckFn check;
    if (d.nature == EffectNature::kCheckable) {
      check = [ledger, stats](Context&, const agent::ToolInvocation& inv) -> Task<Result<std::optional<std::string>>> {
        ++stats->checks;
        co_return ledger->check(inv.idempotency_key);
      };
    }
    out.push_back(agent::make_native_tool(std::move(spec), std::move(fn), std::move(check)).value());
  }
  return out;
}

}  // namespace nines::test
