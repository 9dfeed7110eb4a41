// The sim's config: parsing the JSON form and validating (sim.hpp, docs/sim.md).
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <set>
#include <string>
#include <utility>

#include "llm/json_util.hpp"
#include "nines/llm/sim.hpp"

namespace nines::llm {

using internal::Json;

namespace {

constexpr std::array<std::string_view, kSimFaultCount> kFaultNames = {
    "none",       "rate_limited",   "server_error",      "unavailable",       "overloaded", "timeout",
    "cut_stream", "malformed_json", "hallucinated_tool", "invalid_tool_args", "loop",       "context_overflow",
};

constexpr std::int64_t kMaxHangMs = 3'600'000;
constexpr std::int64_t kMaxWindowTokens = std::int64_t{1} << 40;
constexpr std::int64_t kMaxTokensPerChunk = 1 << 16;
constexpr std::size_t kMaxScheduleEntries = 1u << 20;
constexpr std::size_t kMaxTrackedRequests = std::size_t{1} << 26;

std::string join(std::string_view path, std::string_view field) {
  if (path.empty()) return std::string(field);
  return std::string(path) + "." + std::string(field);
}

std::string indexed(std::string_view path, std::size_t i) { return std::string(path) + "[" + std::to_string(i) + "]"; }

// "sim config: <path>: <what>" (the path names the object; `what` names the field in it).
Error config_error(std::string_view path, std::string_view what) {
  std::string m = "sim config: ";
  if (!path.empty()) m.append(path).append(": ");
  m.append(what);
  return Error(ErrorKind::kInvalidArgument, std::move(m));
}

std::string shown(const Json& v) {
  std::string s = internal::dump_json(v);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// Integral values without a fraction ("1", not "1.0").
std::string fmt(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e15)
    return std::to_string(static_cast<std::int64_t>(d));
  Json j = d;
  return internal::dump_json(j);
}

// Reads the fields of one config object, refusing unknown ones.
class Fields {
 public:
  Fields(const Json& obj, std::string path) : obj_(obj), path_(std::move(path)) {}

  Status only(std::initializer_list<std::string_view> allowed) const {
    for (const auto& item : obj_.items()) {
      if (std::find(allowed.begin(), allowed.end(), item.key()) != allowed.end()) continue;
      std::string list;
      for (std::string_view a : allowed) list.append(list.empty() ? "" : ", ").append(a);
      return err("unknown field \"" + item.key() + "\" (expected one of: " + list + ")");
    }
    return ok_status();
  }

  const Json* get(std::string_view field) const { return internal::member(obj_, field); }
  const std::string& path() const { return path_; }
  Error err(std::string_view what) const { return config_error(path_, what); }

  // Absent: `fallback`. Present: a number in [lo, hi].
  Result<double> number(std::string_view field, double lo, double hi, double fallback) const {
    const Json* v = get(field);
    if (!v) return fallback;
    if (!v->is_number()) return err(std::string(field) + " must be a number, got " + shown(*v));
    double d = v->get<double>();
    if (!(d >= lo && d <= hi)) {
      return err(std::string(field) + " must be in [" + fmt(lo) + ", " + fmt(hi) + "], got " + shown(*v));
    }
    return d;
  }

  Result<std::int64_t> integer(std::string_view field, std::int64_t lo, std::int64_t hi, std::int64_t fallback) const {
    const Json* v = get(field);
    if (!v) return fallback;
    std::optional<std::int64_t> i = internal::integer(v);
    if (!i) return err(std::string(field) + " must be an integer, got " + shown(*v));
    if (*i < lo || *i > hi) {
      return err(std::string(field) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                 shown(*v));
    }
    return *i;
  }

  Result<std::optional<std::string>> string(std::string_view field) const {
    const Json* v = get(field);
    if (!v) return std::optional<std::string>();
    if (!v->is_string()) return err(std::string(field) + " must be a string, got " + shown(*v));
    return std::optional<std::string>(v->get<std::string>());
  }

  // A string that must be one of `choices`: its index. Absent: fallback.
  Result<std::size_t> choice(std::string_view field, std::initializer_list<std::string_view> choices,
                             std::size_t fallback) const {
    Result<std::optional<std::string>> s = string(field);
    if (!s.ok()) return std::move(s).error();
    if (!s->has_value()) return fallback;
    std::size_t i = 0;
    std::string list;
    for (std::string_view c : choices) {
      if (c == **s) return i;
      list.append(list.empty() ? "" : ", ").append(c);
      ++i;
    }
    return err(std::string(field) + " must be one of " + list + ", got \"" + **s + "\"");
  }

  Result<const Json*> object(std::string_view field) const {
    const Json* v = get(field);
    if (v && !v->is_object()) return err(std::string(field) + " must be an object, got " + shown(*v));
    return v;
  }

  Result<const Json*> array(std::string_view field) const {
    const Json* v = get(field);
    if (v && !v->is_array()) return err(std::string(field) + " must be an array, got " + shown(*v));
    return v;
  }

 private:
  const Json& obj_;
  std::string path_;
};

#define NINES_SIM_TRY(var, expr)                                  \
  auto var##_result = (expr);                                     \
  if (!var##_result.ok()) return std::move(var##_result).error(); \
  auto var = std::move(var##_result).value()

#define NINES_SIM_TRY_STATUS(expr)              \
  do {                                          \
    Status s_ = (expr);                         \
    if (!s_.ok()) return std::move(s_).error(); \
  } while (0)

Result<SimLatency> parse_latency(const Json& j, const std::string& path) {
  if (!j.is_object()) return config_error(path, "must be an object, got " + shown(j));
  Fields f(j, path);
  NINES_SIM_TRY(dist, f.choice("distribution", {"fixed", "uniform", "lognormal"}, 0));
  SimLatency l;
  switch (dist) {
    case 0: {
      NINES_SIM_TRY_STATUS(f.only({"distribution", "ms"}));
      l.distribution = SimLatency::Distribution::kFixed;
      NINES_SIM_TRY(ms, f.number("ms", 0, kMaxLatencyMs, 0));
      l.ms = ms;
      break;
    }
    case 1: {
      NINES_SIM_TRY_STATUS(f.only({"distribution", "min_ms", "max_ms"}));
      l.distribution = SimLatency::Distribution::kUniform;
      if (!f.get("min_ms") || !f.get("max_ms")) return f.err("a uniform distribution needs min_ms and max_ms");
      NINES_SIM_TRY(lo, f.number("min_ms", 0, kMaxLatencyMs, 0));
      NINES_SIM_TRY(hi, f.number("max_ms", 0, kMaxLatencyMs, 0));
      l.min_ms = lo;
      l.max_ms = hi;
      break;
    }
    default: {
      NINES_SIM_TRY_STATUS(f.only({"distribution", "median_ms", "sigma", "max_ms"}));
      l.distribution = SimLatency::Distribution::kLogNormal;
      if (!f.get("median_ms")) return f.err("a lognormal distribution needs median_ms (and sigma)");
      NINES_SIM_TRY(median, f.number("median_ms", 0, kMaxLatencyMs, 0));
      NINES_SIM_TRY(sigma, f.number("sigma", 0, 10, 0));
      NINES_SIM_TRY(cap, f.number("max_ms", 0, kMaxLatencyMs, 0));
      l.median_ms = median;
      l.sigma = sigma;
      l.max_ms = cap;
      break;
    }
  }
  return l;
}

Result<SimTurn> parse_turn(const Json& j, const std::string& path) {
  if (!j.is_object()) return config_error(path, "a turn must be an object, got " + shown(j));
  Fields f(j, path);
  NINES_SIM_TRY_STATUS(f.only({"tool_calls", "answer"}));
  const bool has_calls = f.get("tool_calls") != nullptr, has_answer = f.get("answer") != nullptr;
  if (has_calls == has_answer) return f.err("a turn has either tool_calls or answer (exactly one of them)");
  SimTurn turn;
  if (has_answer) {
    NINES_SIM_TRY(answer, f.string("answer"));
    if (answer) turn.answer = std::move(*answer);
    return turn;
  }
  NINES_SIM_TRY(calls, f.array("tool_calls"));
  if (calls->empty()) return f.err("tool_calls is empty (a turn without calls is an answer)");
  for (std::size_t i = 0; i < calls->size(); ++i) {
    const Json& c = (*calls)[i];
    std::string cpath = indexed(join(path, "tool_calls"), i);
    if (!c.is_object()) return config_error(cpath, "a tool call must be an object, got " + shown(c));
    Fields cf(c, cpath);
    NINES_SIM_TRY_STATUS(cf.only({"name", "arguments"}));
    NINES_SIM_TRY(name, cf.string("name"));
    if (!name || name->empty()) return cf.err("name must be a non-empty string");
    SimToolCallSpec spec{.name = std::move(*name)};
    if (const Json* args = cf.get("arguments")) spec.arguments_json = internal::dump_json(*args);
    turn.tool_calls.push_back(std::move(spec));
  }
  return turn;
}

Status parse_faults(const Json& j, SimConfig& config) {
  const std::string path = "faults";
  for (const auto& item : j.items()) {
    std::string fpath = join(path, item.key());
    std::optional<SimFault> fault = sim_fault_from_string(item.key());
    if (!fault || *fault == SimFault::kNone) {
      std::string list;
      for (std::size_t i = 1; i < kSimFaultCount; ++i) list.append(i == 1 ? "" : ", ").append(kFaultNames[i]);
      return config_error(path, "unknown fault \"" + item.key() + "\" (faults: " + list + ")");
    }
    const Json& spec = item.value();
    if (!spec.is_object())
      return config_error(fpath, "must be an object such as {\"probability\": 0.1}, got " + shown(spec));
    Fields f(spec, fpath);
    switch (*fault) {
      case SimFault::kRateLimited: NINES_SIM_TRY_STATUS(f.only({"probability", "retry_after_ms"})); break;
      case SimFault::kTimeout: NINES_SIM_TRY_STATUS(f.only({"probability", "hang_ms"})); break;
      case SimFault::kCutStream: NINES_SIM_TRY_STATUS(f.only({"probability", "after_chunks", "after_fraction"})); break;
      case SimFault::kInvalidToolArgs: NINES_SIM_TRY_STATUS(f.only({"probability", "mode"})); break;
      default: NINES_SIM_TRY_STATUS(f.only({"probability"})); break;
    }
    NINES_SIM_TRY(prob, f.number("probability", 0, 1, 0));
    config.faults.of(*fault) = prob;
    switch (*fault) {
      case SimFault::kRateLimited: {
        NINES_SIM_TRY(ms, f.integer("retry_after_ms", 0, kMaxHangMs, config.faults.retry_after_ms));
        config.faults.retry_after_ms = ms;
        break;
      }
      case SimFault::kTimeout: {
        NINES_SIM_TRY(ms, f.integer("hang_ms", 1, kMaxHangMs, config.faults.hang_ms));
        config.faults.hang_ms = ms;
        break;
      }
      case SimFault::kCutStream: {
        if (f.get("after_chunks") && f.get("after_fraction")) {
          return f.err("after_chunks and after_fraction exclude each other");
        }
        if (f.get("after_chunks")) {
          NINES_SIM_TRY(k, f.integer("after_chunks", 0, 1 << 20, 0));
          config.faults.cut_after_chunks = k;
        }
        NINES_SIM_TRY(frac, f.number("after_fraction", 0, 1, config.faults.cut_after_fraction));
        config.faults.cut_after_fraction = frac;
        break;
      }
      case SimFault::kInvalidToolArgs: {
        NINES_SIM_TRY(mode, f.choice("mode", {"syntax", "schema", "either"}, 2));
        config.faults.invalid_args = static_cast<SimArgsBreak>(mode);
        break;
      }
      default: break;
    }
  }
  return ok_status();
}

Status parse_schedule(const Json& j, SimConfig& config) {
  for (std::size_t i = 0; i < j.size(); ++i) {
    std::string path = indexed("schedule", i);
    const Json& e = j[i];
    if (!e.is_object())
      return config_error(path, "an entry must be an object {\"call\": n, \"fault\": name}, got " + shown(e));
    Fields f(e, path);
    NINES_SIM_TRY_STATUS(f.only({"call", "fault"}));
    if (!f.get("call") || !f.get("fault")) return f.err("an entry needs call and fault");
    NINES_SIM_TRY(call, f.integer("call", 1, INT64_MAX, 1));
    NINES_SIM_TRY(name, f.string("fault"));
    if (!name) return f.err("an entry needs call and fault");
    std::optional<SimFault> fault = sim_fault_from_string(*name);
    if (!fault) return f.err("fault \"" + *name + "\" is not a fault name (none, rate_limited, ...)");
    config.schedule.push_back({.call = static_cast<std::uint64_t>(call), .fault = *fault});
  }
  return ok_status();
}

}  // namespace

std::string_view to_string(SimFault fault) {
  auto i = static_cast<std::size_t>(fault);
  return i < kSimFaultCount ? kFaultNames[i] : "unknown";
}

std::optional<SimFault> sim_fault_from_string(std::string_view name) {
  for (std::size_t i = 0; i < kSimFaultCount; ++i) {
    if (kFaultNames[i] == name) return static_cast<SimFault>(i);
  }
  return std::nullopt;
}

Result<SimConfig> parse_sim_config(std::string_view json) {
  std::optional<Json> doc = internal::parse_json(json);
  if (!doc) return config_error("", "not valid JSON (or nested deeper than 256 levels)");
  if (!doc->is_object()) return config_error("", "the config must be a JSON object, got " + shown(*doc));
  Fields top(*doc, "");
  NINES_SIM_TRY_STATUS(top.only({"seed", "model", "scenario", "after_last_turn", "context_window_tokens", "output",
                                 "latency", "faults", "schedule", "max_tracked_requests", "fault_key"}));
  SimConfig c;
  if (const Json* seed = top.get("seed")) {
    if (!seed->is_number_unsigned() && !(seed->is_number_integer() && seed->get<std::int64_t>() >= 0)) {
      return config_error("", "seed must be an unsigned 64-bit integer, got " + shown(*seed));
    }
    c.seed = seed->get<std::uint64_t>();
  }
  NINES_SIM_TRY(model, top.string("model"));
  if (model) c.model = std::move(*model);
  NINES_SIM_TRY(scenario, top.array("scenario"));
  if (scenario) {
    for (std::size_t i = 0; i < scenario->size(); ++i) {
      NINES_SIM_TRY(turn, parse_turn((*scenario)[i], indexed("scenario", i)));
      c.scenario.push_back(std::move(turn));
    }
  }
  NINES_SIM_TRY(after, top.choice("after_last_turn", {"repeat_final", "repeat_last", "error"}, 0));
  c.after_last_turn = static_cast<SimAfterLastTurn>(after);
  NINES_SIM_TRY(key, top.choice("fault_key", {"request", "position"}, 0));
  c.fault_key = static_cast<SimFaultKey>(key);
  NINES_SIM_TRY(window, top.integer("context_window_tokens", 1, kMaxWindowTokens, c.context_window_tokens));
  c.context_window_tokens = window;
  NINES_SIM_TRY(tracked, top.integer("max_tracked_requests", 1, static_cast<std::int64_t>(kMaxTrackedRequests),
                                     static_cast<std::int64_t>(c.max_tracked_requests)));
  c.max_tracked_requests = static_cast<std::size_t>(tracked);

  NINES_SIM_TRY(output, top.object("output"));
  if (output) {
    Fields f(*output, "output");
    NINES_SIM_TRY_STATUS(f.only({"tokens_per_chunk"}));
    NINES_SIM_TRY(tpc, f.integer("tokens_per_chunk", 1, kMaxTokensPerChunk, c.tokens_per_chunk));
    c.tokens_per_chunk = tpc;
  }
  NINES_SIM_TRY(latency, top.object("latency"));
  if (latency) {
    Fields f(*latency, "latency");
    NINES_SIM_TRY_STATUS(f.only({"first_byte", "per_chunk"}));
    if (const Json* fb = f.get("first_byte")) {
      NINES_SIM_TRY(l, parse_latency(*fb, "latency.first_byte"));
      c.first_byte = l;
    }
    if (const Json* pc = f.get("per_chunk")) {
      NINES_SIM_TRY(l, parse_latency(*pc, "latency.per_chunk"));
      c.per_chunk = l;
    }
  }
  NINES_SIM_TRY(faults, top.object("faults"));
  if (faults) NINES_SIM_TRY_STATUS(parse_faults(*faults, c));
  NINES_SIM_TRY(schedule, top.array("schedule"));
  if (schedule) NINES_SIM_TRY_STATUS(parse_schedule(*schedule, c));

  NINES_SIM_TRY_STATUS(validate_sim_config(c));
  return c;
}

Status validate_sim_config(const SimConfig& c) {
  for (std::size_t i = 0; i < c.scenario.size(); ++i) {
    const SimTurn& t = c.scenario[i];
    for (std::size_t k = 0; k < t.tool_calls.size(); ++k) {
      std::string path = indexed(join(indexed("scenario", i), "tool_calls"), k);
      if (t.tool_calls[k].name.empty()) return config_error(path, "name must be a non-empty string");
      if (!internal::parse_json(t.tool_calls[k].arguments_json)) {
        return config_error(path, "arguments_json is not valid JSON");
      }
    }
  }
  if (c.context_window_tokens < 1) {
    return config_error("", "context_window_tokens must be at least 1, got " + std::to_string(c.context_window_tokens));
  }
  if (c.tokens_per_chunk < 1 || c.tokens_per_chunk > kMaxTokensPerChunk) {
    return config_error("output", "tokens_per_chunk must be in [1, " + std::to_string(kMaxTokensPerChunk) + "], got " +
                                      std::to_string(c.tokens_per_chunk));
  }
  if (c.max_tracked_requests < 1 || c.max_tracked_requests > kMaxTrackedRequests) {
    return config_error("", "max_tracked_requests must be in [1, " + std::to_string(kMaxTrackedRequests) + "]");
  }
  for (const auto& [l, path] :
       {std::pair{&c.first_byte, "latency.first_byte"}, std::pair{&c.per_chunk, "latency.per_chunk"}}) {
    auto in_range = [](double v) { return v >= 0 && v <= kMaxLatencyMs; };
    if (!in_range(l->ms) || !in_range(l->min_ms) || !in_range(l->max_ms) || !in_range(l->median_ms)) {
      return config_error(path, "every delay must be in [0, " + fmt(kMaxLatencyMs) + "] ms");
    }
    if (l->distribution == SimLatency::Distribution::kUniform && l->min_ms > l->max_ms) {
      return config_error(path, "min_ms " + fmt(l->min_ms) + " is above max_ms " + fmt(l->max_ms));
    }
    if (!(l->sigma >= 0 && l->sigma <= 10)) return config_error(path, "sigma must be in [0, 10], got " + fmt(l->sigma));
  }
  double sum = 0;
  for (std::size_t i = 1; i < kSimFaultCount; ++i) {
    double p = c.faults.probability[i];
    if (!(p >= 0 && p <= 1)) {
      return config_error(join("faults", kFaultNames[i]), "probability must be in [0, 1], got " + fmt(p));
    }
    sum += p;
  }
  if (sum > 1 + 1e-9) {
    return config_error(
        "faults", "the probabilities add up to " + fmt(sum) + ", must be at most 1 (a call gets at most one fault)");
  }
  if (c.faults.retry_after_ms < 0 || c.faults.retry_after_ms > kMaxHangMs) {
    return config_error("faults.rate_limited", "retry_after_ms must be in [0, " + std::to_string(kMaxHangMs) + "]");
  }
  if (c.faults.hang_ms < 1 || c.faults.hang_ms > kMaxHangMs) {
    return config_error("faults.timeout", "hang_ms must be in [1, " + std::to_string(kMaxHangMs) + "]");
  }
  if (c.faults.cut_after_chunks && *c.faults.cut_after_chunks < 0) {
    return config_error("faults.cut_stream", "after_chunks must be at least 0");
  }
  if (!(c.faults.cut_after_fraction >= 0 && c.faults.cut_after_fraction <= 1)) {
    return config_error("faults.cut_stream",
                        "after_fraction must be in [0, 1], got " + fmt(c.faults.cut_after_fraction));
  }
  if (c.schedule.size() > kMaxScheduleEntries) {
    return config_error("", "schedule has more than " + std::to_string(kMaxScheduleEntries) + " entries");
  }
  std::set<std::uint64_t> calls;
  for (std::size_t i = 0; i < c.schedule.size(); ++i) {
    if (c.schedule[i].call < 1) return config_error(indexed("schedule", i), "call must be at least 1");
    if (!calls.insert(c.schedule[i].call).second) {
      return config_error(indexed("schedule", i), "call " + std::to_string(c.schedule[i].call) + " is scheduled twice");
    }
    if (static_cast<std::size_t>(c.schedule[i].fault) >= kSimFaultCount) {
      return config_error(indexed("schedule", i), "fault is not a SimFault");
    }
  }
  return ok_status();
}

#undef NINES_SIM_TRY
#undef NINES_SIM_TRY_STATUS

}  // namespace nines::llm
