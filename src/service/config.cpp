// The service config loader (include/nines/service/config.hpp): YAML (yaml-cpp) to ServiceConfig,
// collecting every error with its location and key path. yaml-cpp and nlohmann-json are used here
// only, never in a public header.
#include "nines/service/config.hpp"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace nines::service {
namespace {

// Bounds what one config may make the loader do (aliases can make a small file a large tree).
constexpr std::size_t kMaxNodes = 200'000;

std::string join_path(const std::string& path, std::string_view key) {
  if (path.empty()) return std::string(key);
  return path + "." + std::string(key);
}
std::string index_path(const std::string& path, std::size_t i) { return path + "[" + std::to_string(i) + "]"; }

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// " (did you mean 'x'?)" for the closest candidate within a few edits, else "".
std::string did_you_mean(std::string_view word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_d = std::numeric_limits<std::size_t>::max();
  for (const std::string& c : candidates) {
    std::size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  std::size_t allowed = std::max<std::size_t>(1, std::min<std::size_t>(3, word.size() / 3));
  if (best.empty() || best_d > allowed || best_d >= word.size()) {
    // A word that is a cut-off name ("always" for "always_on") is close too.
    best.clear();
    for (const std::string& c : candidates) {
      if (word.size() >= 3 && c.size() > word.size() && c.compare(0, word.size(), word) == 0) {
        best = c;
        break;
      }
    }
    if (best.empty()) return {};
  }
  return " (did you mean '" + best + "'?)";
}

// How a scalar is shown in a message: the text as written in the file (so an interpolated
// secret is shown as '${NAME}', never its value), cut at 40 characters.
std::string shown(const std::string& raw) {
  std::string s = raw.size() > 40 ? raw.substr(0, 40) + "..." : raw;
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  return "'" + s + "'";
}

const char* kind_name(const YAML::Node& n) {
  if (n.IsMap()) return "a mapping";
  if (n.IsSequence()) return "a list";
  if (n.IsNull()) return "nothing";
  return "a scalar";
}

struct Loc {
  int line = 0;
  int column = 0;
};
Loc loc_of(const YAML::Node& n) {
  YAML::Mark m = n.Mark();
  if (m.is_null()) return {};
  return {m.line + 1, m.column + 1};
}

class Parser {
 public:
  Parser(std::string file, const ConfigSources& sources) : file_(std::move(file)), sources_(sources) {}

  std::vector<ConfigError>& errors() { return errors_; }

  void error(Loc loc, const std::string& path, std::string message) {
    errors_.push_back(ConfigError{file_, loc.line, loc.column, path, std::move(message)});
  }
  void error(const YAML::Node& n, const std::string& path, std::string message) {
    error(loc_of(n), path, std::move(message));
  }

  bool count_node(const YAML::Node& n, const std::string& path) {
    if (++nodes_ <= kMaxNodes) return true;
    if (!too_big_) error(n, path, "the config is too large (more than " + std::to_string(kMaxNodes) + " nodes)");
    too_big_ = true;
    return false;
  }

  // ---- mappings ----

  // The keys of a mapping, checked against `known` (unknown and duplicate keys are errors).
  // Returns false (after an error) when n is not a mapping; a null node is an empty mapping.
  bool fields(const YAML::Node& n, const std::string& path, const std::vector<std::string>& known,
              std::map<std::string, YAML::Node>& out) {
    if (!count_node(n, path)) return false;
    if (n.IsNull()) return true;
    if (!n.IsMap()) {
      error(n, path, std::string("expected a mapping, got ") + kind_name(n));
      return false;
    }
    for (const auto& kv : n) {
      if (!count_node(kv.first, path)) return false;
      if (!kv.first.IsScalar()) {
        error(kv.first, path, std::string("expected a key, got ") + kind_name(kv.first));
        continue;
      }
      const std::string key = kv.first.Scalar();
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        error(kv.first, join_path(path, key), "unknown key '" + key + "'" + did_you_mean(key, known));
        continue;
      }
      if (!out.emplace(key, kv.second).second) error(kv.first, join_path(path, key), "duplicate key '" + key + "'");
    }
    return true;
  }

  // The entries of a mapping of names (models:, tools:, ...), in file order, names checked.
  bool named_entries(const YAML::Node& n, const std::string& path, std::vector<std::pair<std::string, YAML::Node>>& out,
                     bool check_name_chars) {
    if (!count_node(n, path)) return false;
    if (n.IsNull()) return true;
    if (!n.IsMap()) {
      error(n, path, std::string("expected a mapping of names, got ") + kind_name(n));
      return false;
    }
    std::set<std::string> seen;
    for (const auto& kv : n) {
      if (!count_node(kv.first, path)) return false;
      if (!kv.first.IsScalar()) {
        error(kv.first, path, std::string("expected a name, got ") + kind_name(kv.first));
        continue;
      }
      const std::string name = kv.first.Scalar();
      const std::string p = join_path(path, name);
      if (!seen.insert(name).second) {
        error(kv.first, p, "duplicate name '" + name + "'");
        continue;
      }
      if (check_name_chars && !valid_name(name)) {
        error(kv.first, p, "invalid name " + shown(name) + ": use 1 to 64 of [a-zA-Z0-9_-]");
        continue;
      }
      out.emplace_back(name, kv.second);
    }
    return true;
  }

  static bool valid_name(std::string_view s) {
    if (s.empty() || s.size() > 64) return false;
    return std::all_of(s.begin(), s.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    });
  }

  // ---- scalars ----

  // The scalar's text after ${VAR} interpolation; raw is what the file says.
  bool scalar(const YAML::Node& n, const std::string& path, const char* what, std::string& raw, std::string& out) {
    if (!n.IsScalar()) {
      error(n, path, std::string("expected ") + what + ", got " + kind_name(n));
      return false;
    }
    raw = n.Scalar();
    return interpolate(n, path, raw, out);
  }

  bool interpolate(const YAML::Node& n, const std::string& path, const std::string& raw, std::string& out) {
    out.clear();
    bool ok = true;
    for (std::size_t i = 0; i < raw.size();) {
      if (raw.compare(i, 3, "$${") == 0) {
        out += "${";
        i += 3;
        continue;
      }
      if (raw.compare(i, 2, "${") != 0) {
        out += raw[i++];
        continue;
      }
      std::size_t end = raw.find('}', i + 2);
      if (end == std::string::npos) {
        error(n, path, "unterminated '${' (write '$${' for a literal '${')");
        return false;
      }
      std::string name = raw.substr(i + 2, end - i - 2);
      bool name_ok =
          !name.empty() && !(name[0] >= '0' && name[0] <= '9') && std::all_of(name.begin(), name.end(), [](char c) {
            return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
          });
      if (!name_ok) {
        error(n, path, "invalid variable name in " + shown("${" + name + "}") + ": use [A-Za-z_][A-Za-z0-9_]*");
        ok = false;
      } else if (std::optional<std::string> v = env(name)) {
        out += *v;
        remember_secret(*v);
      } else {
        error(n, path, "undefined environment variable '" + name + "'");
        ok = false;
      }
      i = end + 1;
    }
    return ok;
  }

  std::optional<std::string> env(const std::string& name) {
    if (sources_.env) return sources_.env(name);
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  }

  Result<std::string> read_file(const std::string& path) {
    if (sources_.read_file) return sources_.read_file(path);
    std::ifstream in(path, std::ios::binary);
    if (!in) return Error(ErrorKind::kNotFound, "cannot open '" + path + "'");
    std::ostringstream s;
    s << in.rdbuf();
    if (in.bad()) return Error(ErrorKind::kTransient, "cannot read '" + path + "'");
    return s.str();
  }

  bool string(const YAML::Node& n, const std::string& path, std::string& out) {
    std::string raw;
    return scalar(n, path, "a string", raw, out);
  }

  // A secret: never quoted in a message.
  bool secret(const YAML::Node& n, const std::string& path, Secret& out) {
    if (!n.IsScalar()) {
      error(n, path, std::string("expected a string, got ") + kind_name(n));
      return false;
    }
    std::string v;
    if (!interpolate(n, path, n.Scalar(), v)) return false;
    remember_secret(v);
    out = Secret(std::move(v));
    return true;
  }

  // Every value read from the environment or a token file, and every Secret: scrubbed from
  // the error messages at the end (belt and braces: messages quote the file's text, not
  // interpolated values, but a secret may also be written literally somewhere else).
  void remember_secret(const std::string& v) {
    if (v.size() >= 6) secrets_.insert(v);
  }
  void scrub(std::vector<ConfigError>& errors) const {
    for (ConfigError& e : errors) {
      for (const std::string& v : secrets_) {
        for (std::size_t at = e.message.find(v); at != std::string::npos; at = e.message.find(v, at)) {
          e.message.replace(at, v.size(), "[redacted]");
        }
      }
    }
  }

  bool integer(const YAML::Node& n, const std::string& path, std::int64_t& out, std::int64_t lo, std::int64_t hi) {
    std::string raw, text;
    if (!scalar(n, path, "a whole number", raw, text)) return false;
    std::int64_t v = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || ptr != text.data() + text.size()) {
      error(n, path, "expected a whole number, got " + shown(raw));
      return false;
    }
    if (v < lo || v > hi) {
      error(n, path, "must be from " + std::to_string(lo) + " to " + std::to_string(hi) + ", got " + shown(raw));
      return false;
    }
    out = v;
    return true;
  }
  template <class T>
  bool whole(const YAML::Node& n, const std::string& path, T& out, std::int64_t lo,
             std::int64_t hi = std::numeric_limits<std::int64_t>::max()) {
    std::int64_t v = 0;
    if (!integer(
            n, path, v, lo,
            std::min<std::int64_t>(hi, static_cast<std::int64_t>(std::min<std::uint64_t>(
                                           std::numeric_limits<T>::max(), std::numeric_limits<std::int64_t>::max())))))
      return false;
    out = static_cast<T>(v);
    return true;
  }

  bool number(const YAML::Node& n, const std::string& path, double& out, double lo, double hi, bool lo_open = false) {
    std::string raw, text;
    if (!scalar(n, path, "a number", raw, text)) return false;
    double v = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || !std::isfinite(v)) {
      error(n, path, "expected a number, got " + shown(raw));
      return false;
    }
    if (v < lo || v > hi || (lo_open && v == lo)) {
      std::ostringstream range;
      range << (lo_open ? "(" : "[") << lo << ", " << hi << "]";
      error(n, path, "must be in " + range.str() + ", got " + shown(raw));
      return false;
    }
    out = v;
    return true;
  }
  bool probability(const YAML::Node& n, const std::string& path, double& out) { return number(n, path, out, 0, 1); }

  bool boolean(const YAML::Node& n, const std::string& path, bool& out) {
    std::string raw, text;
    if (!scalar(n, path, "true or false", raw, text)) return false;
    if (text == "true") {
      out = true;
    } else if (text == "false") {
      out = false;
    } else {
      error(n, path, "expected true or false, got " + shown(raw));
      return false;
    }
    return true;
  }

  // positive: > 0 required; allow_none: "none" is kInfinite.
  bool duration(const YAML::Node& n, const std::string& path, Duration& out, bool positive = true,
                bool allow_none = false) {
    std::string raw, text;
    if (!scalar(n, path, "a duration", raw, text)) return false;
    if (allow_none && text == "none") {
      out = kInfinite;
      return true;
    }
    Result<Duration> d = parse_duration(text);
    if (!d.ok()) {
      error(n, path,
            "expected a duration like '250ms', '30s' or '2m'" + std::string(allow_none ? " (or 'none')" : "") +
                ", got " + shown(raw));
      return false;
    }
    if (positive && *d <= Duration::zero()) {
      error(n, path, "must be a positive duration, got " + shown(raw));
      return false;
    }
    out = *d;
    return true;
  }

  template <class T>
  bool size(const YAML::Node& n, const std::string& path, T& out, std::uint64_t lo = 0) {
    std::string raw, text;
    if (!scalar(n, path, "a size", raw, text)) return false;
    Result<std::uint64_t> v = parse_size(text);
    if (!v.ok()) {
      error(n, path, "expected a size like '16MiB', '64KiB' or a number of bytes, got " + shown(raw));
      return false;
    }
    if (*v < lo || *v > std::numeric_limits<T>::max() || *v > std::uint64_t{1} << 62) {
      error(n, path, "must be at least " + std::to_string(lo) + " bytes and at most 4EiB, got " + shown(raw));
      return false;
    }
    out = static_cast<T>(*v);
    return true;
  }

  // One of `names`; out is its index.
  bool choice(const YAML::Node& n, const std::string& path, const std::vector<std::string>& names, std::size_t& out) {
    std::string raw, text;
    if (!scalar(n, path, "a name", raw, text)) return false;
    auto it = std::find(names.begin(), names.end(), text);
    if (it == names.end()) {
      std::string list;
      for (const std::string& s : names) list += (list.empty() ? "" : ", ") + s;
      error(n, path, "expected one of " + list + ", got " + shown(raw) + did_you_mean(text, names));
      return false;
    }
    out = static_cast<std::size_t>(it - names.begin());
    return true;
  }

  bool string_list(const YAML::Node& n, const std::string& path, std::vector<std::pair<std::string, YAML::Node>>& out) {
    if (!count_node(n, path)) return false;
    if (n.IsNull()) return true;
    if (!n.IsSequence()) {
      error(n, path, std::string("expected a list, got ") + kind_name(n));
      return false;
    }
    bool ok = true;
    for (std::size_t i = 0; i < n.size(); ++i) {
      YAML::Node item = n[i];
      if (!count_node(item, path)) return false;
      std::string s;
      if (string(item, index_path(path, i), s)) {
        out.emplace_back(std::move(s), item);
      } else {
        ok = false;
      }
    }
    return ok;
  }

  bool secret_map(const YAML::Node& n, const std::string& path, std::vector<std::pair<std::string, Secret>>& out) {
    std::vector<std::pair<std::string, YAML::Node>> entries;
    if (!named_entries(n, path, entries, false)) return false;
    for (auto& [k, v] : entries) {
      Secret s;
      if (secret(v, join_path(path, k), s)) out.emplace_back(k, std::move(s));
    }
    return true;
  }

  // YAML to JSON (for the sim config and tool parameter schemas): plain scalars are typed
  // (null, booleans, integers, numbers), quoted ones are strings.
  bool to_json(const YAML::Node& n, const std::string& path, nlohmann::json& out, int depth = 0) {
    if (!count_node(n, path)) return false;
    if (depth > 64) {
      error(n, path, "nested too deeply");
      return false;
    }
    if (n.IsNull()) {
      out = nullptr;
      return true;
    }
    if (n.IsSequence()) {
      out = nlohmann::json::array();
      for (std::size_t i = 0; i < n.size(); ++i) {
        nlohmann::json item;
        if (!to_json(n[i], index_path(path, i), item, depth + 1)) return false;
        out.push_back(std::move(item));
      }
      return true;
    }
    if (n.IsMap()) {
      out = nlohmann::json::object();
      for (const auto& kv : n) {
        if (!kv.first.IsScalar()) {
          error(kv.first, path, std::string("expected a key, got ") + kind_name(kv.first));
          return false;
        }
        const std::string key = kv.first.Scalar();
        if (out.contains(key)) {
          error(kv.first, join_path(path, key), "duplicate key '" + key + "'");
          return false;
        }
        if (!to_json(kv.second, join_path(path, key), out[key], depth + 1)) return false;
      }
      return true;
    }
    std::string raw = n.Scalar(), text;
    if (!interpolate(n, path, raw, text)) return false;
    if (n.Tag() == "!") {
      out = text;
      return true;
    }
    if (text == "null" || text == "~" || text.empty()) {
      out = nullptr;
    } else if (text == "true" || text == "false") {
      out = text == "true";
    } else {
      const char* end = text.data() + text.size();
      std::int64_t i = 0;
      double d = 0;
      if (auto r = std::from_chars(text.data(), end, i); r.ec == std::errc() && r.ptr == end) {
        out = i;
      } else if (auto r2 = std::from_chars(text.data(), end, d);
                 r2.ec == std::errc() && r2.ptr == end && std::isfinite(d)) {
        out = d;
      } else {
        out = text;
      }
    }
    return true;
  }

  // ---- sections ----

  void retry(const YAML::Node& n, const std::string& path, RetryOptions& r);
  void backoff(const YAML::Node& n, const std::string& path, Backoff& b);
  void breaker(const YAML::Node& n, const std::string& path, CircuitBreakerOptions& b);
  void store(const YAML::Node& n, const std::string& path, StoreConfig& s);
  void model(const std::string& name, const YAML::Node& n, const std::string& path, ModelConfig& m);
  void tool(const std::string& name, const YAML::Node& n, const std::string& path, ToolConfig& t);
  void mcp(const std::string& name, const YAML::Node& n, const std::string& path, McpServerConfig& m);
  void agent(const std::string& name, const YAML::Node& n, const std::string& path, AgentConfig& a);
  void group(const std::string& name, const YAML::Node& n, const std::string& path, GroupConfig& g);
  void server(const YAML::Node& n, const std::string& path, ServerConfig& s);
  void logging(const YAML::Node& n, const std::string& path, LoggingConfig& l);
  void document(const YAML::Node& root, ServiceConfig& c);
  void references(ServiceConfig& c);

 private:
  // A name written somewhere that must name something defined elsewhere.
  struct Ref {
    std::string name;
    Loc loc;
    std::string path;
  };
  struct AgentRefs {
    std::vector<Ref> models, tools, mcp_servers;
  };

  std::string file_;
  const ConfigSources& sources_;
  std::vector<ConfigError> errors_;
  std::size_t nodes_ = 0;
  bool too_big_ = false;
  std::set<std::string> secrets_;
  std::map<std::string, AgentRefs> agent_refs_;
  std::map<std::string, std::vector<Ref>> group_refs_;
  std::map<std::string, Ref> tool_fallbacks_;
  std::map<std::string, Loc> agent_locs_;
  Loc models_loc_, agents_loc_;
  bool saw_models_ = false, saw_agents_ = false;
};

const std::vector<std::string> kNatureNames = {"read_only", "idempotent", "checkable", "unsafe"};
const std::vector<std::string> kMethodNames = {"GET", "POST", "PUT", "PATCH", "DELETE"};

void Parser::backoff(const YAML::Node& n, const std::string& path, Backoff& b) {
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path, {"kind", "base", "cap", "multiplier"}, f)) return;
  bool ok = true;
  if (f.count("kind")) {
    std::size_t k = 0;
    if (choice(f["kind"], join_path(path, "kind"),
               {"constant", "exponential", "full_jitter", "equal_jitter", "decorrelated_jitter"}, k)) {
      b.kind = static_cast<Backoff::Kind>(k);
    } else {
      ok = false;
    }
  }
  if (f.count("base")) ok &= duration(f["base"], join_path(path, "base"), b.base, false);
  if (f.count("cap")) ok &= duration(f["cap"], join_path(path, "cap"), b.cap);
  if (f.count("multiplier")) ok &= number(f["multiplier"], join_path(path, "multiplier"), b.multiplier, 1, 1000);
  if (!ok) return;
  if (Status s = b.validate(); !s.ok()) error(n, path, s.error().message());
}

void Parser::retry(const YAML::Node& n, const std::string& path, RetryOptions& r) {
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path, {"max_attempts", "max_total_time", "max_retry_after", "backoff"}, f)) return;
  if (f.count("max_attempts")) whole(f["max_attempts"], join_path(path, "max_attempts"), r.max_attempts, 1, 100);
  if (f.count("max_total_time"))
    duration(f["max_total_time"], join_path(path, "max_total_time"), r.max_total_time, true, true);
  if (f.count("max_retry_after"))
    duration(f["max_retry_after"], join_path(path, "max_retry_after"), r.max_retry_after, false);
  if (f.count("backoff")) backoff(f["backoff"], join_path(path, "backoff"), r.backoff);
}

void Parser::breaker(const YAML::Node& n, const std::string& path, CircuitBreakerOptions& b) {
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path,
              {"window", "window_size", "window_duration", "window_buckets", "minimum_calls", "failure_rate_threshold",
               "slow_call_rate_threshold", "slow_call_duration", "consecutive_failures", "open_duration",
               "open_duration_multiplier", "max_open_duration", "open_duration_jitter", "half_open_trials"},
              f))
    return;
  auto p = [&](const char* k) { return join_path(path, k); };
  bool ok = true;
  if (f.count("window")) {
    std::size_t k = 0;
    if (choice(f["window"], p("window"), {"count", "time"}, k)) {
      b.window = k == 0 ? BreakerWindow::kCountBased : BreakerWindow::kTimeBased;
    }
  }
  if (f.count("window_size")) ok &= whole(f["window_size"], p("window_size"), b.window_size, 1, 1'000'000);
  if (f.count("window_duration")) duration(f["window_duration"], p("window_duration"), b.window_duration);
  if (f.count("window_buckets")) whole(f["window_buckets"], p("window_buckets"), b.window_buckets, 1, 10'000);
  if (f.count("minimum_calls")) ok &= whole(f["minimum_calls"], p("minimum_calls"), b.minimum_calls, 1, 1'000'000);
  auto rate = [&](const char* k, std::optional<double>& out) {
    if (!f.count(k)) return;
    if (f[k].IsScalar() && f[k].Scalar() == "off") {
      out.reset();
      return;
    }
    double v = 0;
    if (number(f[k], p(k), v, 0, 1, true)) out = v;
  };
  rate("failure_rate_threshold", b.failure_rate_threshold);
  rate("slow_call_rate_threshold", b.slow_call_rate_threshold);
  if (f.count("slow_call_duration")) duration(f["slow_call_duration"], p("slow_call_duration"), b.slow_call_duration);
  if (f.count("consecutive_failures"))
    whole(f["consecutive_failures"], p("consecutive_failures"), b.consecutive_failures, 0, 1'000'000);
  bool open_ok = true;
  if (f.count("open_duration")) open_ok &= duration(f["open_duration"], p("open_duration"), b.open_duration);
  if (f.count("open_duration_multiplier"))
    number(f["open_duration_multiplier"], p("open_duration_multiplier"), b.open_duration_multiplier, 1, 1000);
  if (f.count("max_open_duration"))
    open_ok &= duration(f["max_open_duration"], p("max_open_duration"), b.max_open_duration);
  if (f.count("open_duration_jitter"))
    probability(f["open_duration_jitter"], p("open_duration_jitter"), b.open_duration_jitter);
  if (f.count("half_open_trials"))
    whole(f["half_open_trials"], p("half_open_trials"), b.half_open_trials, 1, 1'000'000);
  if (ok && b.window == BreakerWindow::kCountBased && b.minimum_calls > b.window_size) {
    error(f.count("minimum_calls") ? f["minimum_calls"] : n, p("minimum_calls"),
          "must be at most window_size (" + std::to_string(b.window_size) + ")");
  }
  if (open_ok && b.max_open_duration < b.open_duration) {
    error(f.count("max_open_duration") ? f["max_open_duration"] : n, p("max_open_duration"),
          "must be at least open_duration");
  }
}

void Parser::store(const YAML::Node& n, const std::string& path, StoreConfig& s) {
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path, {"sqlite", "postgres"}, f)) return;
  if (f.count("sqlite") && f.count("postgres")) {
    error(f["postgres"], join_path(path, "postgres"), "give either store.sqlite or store.postgres, not both");
    return;
  }
  const std::vector<std::string> durability = {"synced", "batched"};
  if (f.count("sqlite")) {
    const std::string sp = join_path(path, "sqlite");
    std::map<std::string, YAML::Node> g;
    if (!fields(f["sqlite"], sp,
                {"path", "durability", "busy_timeout", "max_size", "cache", "wal_autocheckpoint_pages"}, g))
      return;
    s.kind = StoreConfig::Kind::kSqlite;
    if (g.count("path")) {
      if (string(g["path"], join_path(sp, "path"), s.sqlite_path) && s.sqlite_path.empty())
        error(g["path"], join_path(sp, "path"), "must not be empty");
    }
    std::size_t k = 0;
    if (g.count("durability") && choice(g["durability"], join_path(sp, "durability"), durability, k))
      s.sqlite.durability = static_cast<nines::Durability>(k);
    if (g.count("busy_timeout")) {
      Duration d{};
      if (duration(g["busy_timeout"], join_path(sp, "busy_timeout"), d)) {
        if (d > std::chrono::hours(1)) {
          error(g["busy_timeout"], join_path(sp, "busy_timeout"), "must be at most 1h");
        } else {
          s.sqlite.busy_timeout_ms = static_cast<int>(std::max<std::int64_t>(1, to_millis(d)));
        }
      }
    }
    if (g.count("max_size")) size(g["max_size"], join_path(sp, "max_size"), s.sqlite.max_size_bytes);
    if (g.count("cache")) size(g["cache"], join_path(sp, "cache"), s.sqlite.cache_bytes);
    if (g.count("wal_autocheckpoint_pages"))
      whole(g["wal_autocheckpoint_pages"], join_path(sp, "wal_autocheckpoint_pages"), s.sqlite.wal_autocheckpoint_pages,
            1, 1 << 30);
  }
  if (f.count("postgres")) {
    const std::string pp = join_path(path, "postgres");
    std::map<std::string, YAML::Node> g;
    if (!fields(f["postgres"], pp, {"url", "durability", "connect_timeout"}, g)) return;
    s.kind = StoreConfig::Kind::kPostgres;
    if (!g.count("url")) {
      error(f["postgres"], join_path(pp, "url"), "required key 'url' is missing");
    } else if (secret(g["url"], join_path(pp, "url"), s.postgres_url) && s.postgres_url.empty()) {
      error(g["url"], join_path(pp, "url"), "must not be empty");
    }
    std::size_t k = 0;
    if (g.count("durability") && choice(g["durability"], join_path(pp, "durability"), durability, k))
      s.postgres_durability = static_cast<nines::Durability>(k);
    if (g.count("connect_timeout")) {
      Duration d{};
      if (duration(g["connect_timeout"], join_path(pp, "connect_timeout"), d)) {
        if (d < std::chrono::seconds(1) || d > std::chrono::hours(1)) {
          error(g["connect_timeout"], join_path(pp, "connect_timeout"), "must be from 1s to 1h");
        } else {
          s.postgres_connect_timeout_s = static_cast<int>(std::chrono::duration_cast<std::chrono::seconds>(d).count());
        }
      }
    }
  }
}

std::string dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

bool http_url(const std::string& s) {
  return (s.rfind("http://", 0) == 0 && s.size() > 7) || (s.rfind("https://", 0) == 0 && s.size() > 8);
}

void Parser::model(const std::string& name, const YAML::Node& n, const std::string& path, ModelConfig& m) {
  m.name = name;
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path,
              {"provider", "base_url", "model", "api_key_env", "api_key", "headers", "max_response_bytes",
               "anthropic_version", "price", "context_window_tokens", "max_output_tokens", "limits", "timeouts",
               "retry", "breaker", "sim"},
              f))
    return;
  auto p = [&](const char* k) { return join_path(path, k); };
  if (!f.count("provider")) {
    error(n, p("provider"), "required key 'provider' is missing (openai, anthropic or sim)");
  } else {
    std::size_t k = 0;
    if (choice(f["provider"], p("provider"), {"openai", "anthropic", "sim"}, k)) m.provider = static_cast<Provider>(k);
  }
  if (f.count("base_url") && string(f["base_url"], p("base_url"), m.base_url) && !http_url(m.base_url))
    error(f["base_url"], p("base_url"), "expected an http:// or https:// URL, got " + shown(f["base_url"].Scalar()));
  if (f.count("model")) string(f["model"], p("model"), m.model);
  if (f.count("api_key_env") && f.count("api_key")) {
    error(f["api_key"], p("api_key"), "give either api_key or api_key_env, not both");
  } else if (f.count("api_key_env")) {
    if (string(f["api_key_env"], p("api_key_env"), m.api_key_env)) {
      if (std::optional<std::string> v = env(m.api_key_env)) {
        remember_secret(*v);
        m.api_key = Secret(*v);
      } else {
        error(f["api_key_env"], p("api_key_env"), "environment variable '" + m.api_key_env + "' is not set");
      }
    }
  } else if (f.count("api_key")) {
    secret(f["api_key"], p("api_key"), m.api_key);
  }
  if (f.count("headers")) secret_map(f["headers"], p("headers"), m.headers);
  if (f.count("max_response_bytes")) size(f["max_response_bytes"], p("max_response_bytes"), m.max_response_bytes, 1);
  if (f.count("anthropic_version")) string(f["anthropic_version"], p("anthropic_version"), m.anthropic_version);
  if (f.count("price")) {
    std::map<std::string, YAML::Node> g;
    const std::string pp = p("price");
    if (fields(f["price"], pp, {"input_per_mtok", "output_per_mtok", "cached_input_per_mtok"}, g)) {
      if (g.count("input_per_mtok"))
        number(g["input_per_mtok"], join_path(pp, "input_per_mtok"), m.price.input_per_mtok, 0, 1e6);
      if (g.count("output_per_mtok"))
        number(g["output_per_mtok"], join_path(pp, "output_per_mtok"), m.price.output_per_mtok, 0, 1e6);
      if (g.count("cached_input_per_mtok"))
        number(g["cached_input_per_mtok"], join_path(pp, "cached_input_per_mtok"), m.price.cached_input_per_mtok, 0,
               1e6);
    }
  }
  bool window_ok = true;
  if (f.count("context_window_tokens"))
    window_ok &= whole(f["context_window_tokens"], p("context_window_tokens"), m.context_window_tokens, 1);
  if (f.count("max_output_tokens"))
    window_ok &= whole(f["max_output_tokens"], p("max_output_tokens"), m.max_output_tokens, 1);
  if (window_ok && m.max_output_tokens >= m.context_window_tokens) {
    error(f.count("max_output_tokens") ? f["max_output_tokens"] : n, p("max_output_tokens"),
          "must be below context_window_tokens (" + std::to_string(m.context_window_tokens) + ")");
  }
  if (f.count("limits")) {
    std::map<std::string, YAML::Node> g;
    const std::string lp = p("limits");
    if (fields(f["limits"], lp,
               {"requests_per_minute", "tokens_per_minute", "max_concurrent_calls", "max_limiter_wait"}, g)) {
      if (g.count("requests_per_minute"))
        whole(g["requests_per_minute"], join_path(lp, "requests_per_minute"), m.requests_per_minute, 0);
      if (g.count("tokens_per_minute"))
        whole(g["tokens_per_minute"], join_path(lp, "tokens_per_minute"), m.tokens_per_minute, 0);
      if (g.count("max_concurrent_calls"))
        whole(g["max_concurrent_calls"], join_path(lp, "max_concurrent_calls"), m.max_concurrent_calls, 0, 1'000'000);
      if (g.count("max_limiter_wait"))
        duration(g["max_limiter_wait"], join_path(lp, "max_limiter_wait"), m.max_limiter_wait, false);
    }
  }
  if (f.count("timeouts")) {
    std::map<std::string, YAML::Node> g;
    const std::string tp = p("timeouts");
    if (fields(f["timeouts"], tp, {"attempt", "connect", "first_byte", "idle", "total"}, g)) {
      if (g.count("attempt")) duration(g["attempt"], join_path(tp, "attempt"), m.attempt_timeout, true, true);
      if (g.count("connect") || g.count("first_byte") || g.count("idle") || g.count("total")) {
        net::HttpTimeouts t;
        if (g.count("connect")) duration(g["connect"], join_path(tp, "connect"), t.connect);
        if (g.count("first_byte")) duration(g["first_byte"], join_path(tp, "first_byte"), t.first_byte);
        if (g.count("idle")) duration(g["idle"], join_path(tp, "idle"), t.idle);
        if (g.count("total")) duration(g["total"], join_path(tp, "total"), t.total);
        m.http_timeouts = t;
      }
    }
  }
  if (f.count("retry")) retry(f["retry"], p("retry"), m.retry);
  if (f.count("breaker")) {
    m.breaker.emplace();
    breaker(f["breaker"], p("breaker"), *m.breaker);
  }
  if (f.count("sim")) {
    if (m.provider != Provider::kSim) {
      error(f["sim"], p("sim"), "only a model with provider: sim has a sim config");
    } else {
      nlohmann::json j;
      if (to_json(f["sim"], p("sim"), j)) {
        if (j.is_null()) j = nlohmann::json::object();
        Result<llm::SimConfig> sc = llm::parse_sim_config(dump(j));
        if (sc.ok()) {
          m.sim = std::move(*sc);
        } else {
          error(f["sim"], p("sim"), sc.error().message());
        }
      }
    }
  } else if (m.provider == Provider::kSim) {
    m.sim = llm::SimConfig{};
  }
}

void Parser::tool(const std::string& name, const YAML::Node& n, const std::string& path, ToolConfig& t) {
  t.spec.name = name;
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path,
              {"type", "description", "parameters", "method", "url", "body", "check_url", "headers", "nature",
               "timeout", "max_concurrent", "max_response_bytes", "retry", "breaker", "fallback", "requires_approval"},
              f))
    return;
  auto p = [&](const char* k) { return join_path(path, k); };
  if (!f.count("type")) {
    error(n, p("type"), "required key 'type' is missing (native or http)");
    return;
  }
  std::size_t kind = 0;
  if (!choice(f["type"], p("type"), {"native", "http"}, kind)) return;
  t.kind = static_cast<ToolConfig::Kind>(kind);
  if (t.kind == ToolConfig::Kind::kNative) {
    for (const auto& [k, v] : f) {
      if (k != "type") error(v, join_path(path, k), "a native tool takes only 'type' (its spec is in its code)");
    }
    return;
  }
  if (f.count("description")) string(f["description"], p("description"), t.spec.description);
  if (f.count("parameters")) {
    const YAML::Node& pn = f["parameters"];
    if (pn.IsScalar()) {
      std::string text;
      if (string(pn, p("parameters"), text)) {
        nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
        if (j.is_discarded() || !j.is_object()) {
          error(pn, p("parameters"), "expected a JSON Schema object (a mapping, or JSON text)");
        } else {
          t.spec.parameters_schema_json = dump(j);
        }
      }
    } else {
      nlohmann::json j;
      if (to_json(pn, p("parameters"), j)) {
        if (!j.is_object()) {
          error(pn, p("parameters"), "expected a JSON Schema object (a mapping, or JSON text)");
        } else {
          t.spec.parameters_schema_json = dump(j);
        }
      }
    }
  }
  if (f.count("method")) {
    std::size_t k = 0;
    if (choice(f["method"], p("method"), kMethodNames, k)) t.http.method = static_cast<agent::HttpMethod>(k);
  }
  if (!f.count("url")) {
    error(n, p("url"), "required key 'url' is missing");
  } else if (string(f["url"], p("url"), t.http.url_template) && !http_url(t.http.url_template)) {
    error(f["url"], p("url"), "expected an http:// or https:// URL template, got " + shown(f["url"].Scalar()));
  }
  if (f.count("body")) {
    string(f["body"], p("body"), t.http.body_template);
    if (t.http.method == agent::HttpMethod::kGet) error(f["body"], p("body"), "a GET tool has no body");
  }
  if (f.count("check_url") && string(f["check_url"], p("check_url"), t.http.check_url_template) &&
      !http_url(t.http.check_url_template)) {
    error(f["check_url"], p("check_url"), "expected an http:// or https:// URL template");
  }
  if (f.count("headers")) secret_map(f["headers"], p("headers"), t.headers);
  if (f.count("nature")) {
    std::size_t k = 0;
    if (choice(f["nature"], p("nature"), kNatureNames, k)) t.spec.nature = static_cast<EffectNature>(k);
  }
  if (t.spec.nature == EffectNature::kCheckable && t.http.check_url_template.empty())
    error(f.count("nature") ? f["nature"] : n, p("check_url"), "a checkable tool needs check_url");
  if (f.count("timeout")) duration(f["timeout"], p("timeout"), t.spec.timeout);
  if (f.count("max_concurrent")) whole(f["max_concurrent"], p("max_concurrent"), t.spec.max_concurrent, 0, 1'000'000);
  if (f.count("max_response_bytes"))
    size(f["max_response_bytes"], p("max_response_bytes"), t.http.max_response_bytes, 1);
  if (f.count("retry")) {
    t.spec.retry.emplace();
    retry(f["retry"], p("retry"), *t.spec.retry);
  }
  if (f.count("breaker")) {
    t.spec.breaker.emplace();
    breaker(f["breaker"], p("breaker"), *t.spec.breaker);
  }
  if (f.count("fallback") && string(f["fallback"], p("fallback"), t.spec.fallback)) {
    tool_fallbacks_[name] = Ref{t.spec.fallback, loc_of(f["fallback"]), p("fallback")};
  }
  if (f.count("requires_approval")) boolean(f["requires_approval"], p("requires_approval"), t.spec.requires_approval);
}

void Parser::mcp(const std::string& name, const YAML::Node& n, const std::string& path, McpServerConfig& m) {
  agent::McpServerOptions& o = m.options;
  o.name = name;
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path,
              {"command", "env", "working_dir", "tool_prefix", "limits", "timeouts", "restart_backoff", "max_in_flight",
               "max_result_bytes", "max_line_bytes", "max_list_pages", "nature"},
              f))
    return;
  auto p = [&](const char* k) { return join_path(path, k); };
  if (!f.count("command")) {
    error(n, p("command"), "required key 'command' is missing (the server's argv, a list)");
  } else {
    std::vector<std::pair<std::string, YAML::Node>> argv;
    if (string_list(f["command"], p("command"), argv)) {
      if (argv.empty()) error(f["command"], p("command"), "must not be empty");
      for (auto& [s, node] : argv) o.command.push_back(s);
    }
  }
  if (f.count("env")) secret_map(f["env"], p("env"), m.env);
  if (f.count("working_dir")) string(f["working_dir"], p("working_dir"), o.working_dir);
  if (f.count("tool_prefix")) string(f["tool_prefix"], p("tool_prefix"), o.tool_prefix);
  if (f.count("limits")) {
    std::map<std::string, YAML::Node> g;
    const std::string lp = p("limits");
    if (fields(f["limits"], lp,
               {"cpu_seconds", "address_space", "open_files", "max_resident", "resident_check_interval"}, g)) {
      if (g.count("cpu_seconds")) whole(g["cpu_seconds"], join_path(lp, "cpu_seconds"), o.limits.cpu_seconds, 0);
      if (g.count("address_space"))
        size(g["address_space"], join_path(lp, "address_space"), o.limits.address_space_bytes);
      if (g.count("open_files")) whole(g["open_files"], join_path(lp, "open_files"), o.limits.open_files, 0, 1 << 20);
      if (g.count("max_resident")) size(g["max_resident"], join_path(lp, "max_resident"), o.limits.max_resident_bytes);
      if (g.count("resident_check_interval"))
        duration(g["resident_check_interval"], join_path(lp, "resident_check_interval"),
                 o.limits.resident_check_interval);
    }
  }
  if (f.count("timeouts")) {
    std::map<std::string, YAML::Node> g;
    const std::string tp = p("timeouts");
    if (fields(f["timeouts"], tp, {"initialize", "call", "ping", "write"}, g)) {
      if (g.count("initialize")) duration(g["initialize"], join_path(tp, "initialize"), o.initialize_timeout);
      if (g.count("call")) duration(g["call"], join_path(tp, "call"), o.call_timeout);
      if (g.count("ping")) duration(g["ping"], join_path(tp, "ping"), o.ping_timeout);
      if (g.count("write")) duration(g["write"], join_path(tp, "write"), o.write_timeout);
    }
  }
  if (f.count("restart_backoff")) backoff(f["restart_backoff"], p("restart_backoff"), o.restart_backoff);
  if (f.count("max_in_flight")) whole(f["max_in_flight"], p("max_in_flight"), o.max_in_flight, 1, 1'000'000);
  if (f.count("max_result_bytes")) size(f["max_result_bytes"], p("max_result_bytes"), o.max_result_bytes, 1);
  if (f.count("max_line_bytes")) size(f["max_line_bytes"], p("max_line_bytes"), o.max_line_bytes, 1);
  if (f.count("max_list_pages")) whole(f["max_list_pages"], p("max_list_pages"), o.max_list_pages, 1, 1'000'000);
  if (f.count("nature")) {
    std::vector<std::pair<std::string, YAML::Node>> entries;
    if (named_entries(f["nature"], p("nature"), entries, false)) {
      for (auto& [tool_name, v] : entries) {
        std::size_t k = 0;
        if (choice(v, join_path(p("nature"), tool_name), kNatureNames, k))
          o.nature[tool_name] = static_cast<EffectNature>(k);
      }
    }
  }
}

void Parser::agent(const std::string& name, const YAML::Node& n, const std::string& path, AgentConfig& a) {
  agent::AgentOptions& o = a.options;
  o.name = name;
  agent_locs_[name] = loc_of(n);
  AgentRefs& refs = agent_refs_[name];
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path,
              {"models", "system_prompt", "tools", "mcp_servers", "guards", "max_parallel_tools", "max_output_tokens",
               "context_window_tokens", "model", "sleep_tool", "max_sleep", "approval_poll", "mode", "always_on"},
              f))
    return;
  auto p = [&](const char* k) { return join_path(path, k); };
  auto refs_of = [&](const char* key, std::vector<std::string>& out, std::vector<Ref>& into) {
    std::vector<std::pair<std::string, YAML::Node>> items;
    string_list(f[key], p(key), items);
    std::set<std::string> seen;
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string ip = index_path(p(key), i);
      if (!seen.insert(items[i].first).second) {
        error(items[i].second, ip, "'" + items[i].first + "' is listed twice");
        continue;
      }
      out.push_back(items[i].first);
      into.push_back(Ref{items[i].first, loc_of(items[i].second), ip});
    }
  };
  if (!f.count("models")) {
    error(n, p("models"), "required key 'models' is missing (the model chain, primary first)");
  } else {
    refs_of("models", a.models, refs.models);
    if (a.models.empty() && f["models"].IsSequence()) error(f["models"], p("models"), "must name at least one model");
  }
  if (f.count("system_prompt")) string(f["system_prompt"], p("system_prompt"), o.system_prompt);
  if (f.count("tools")) refs_of("tools", o.tools, refs.tools);
  if (f.count("mcp_servers")) refs_of("mcp_servers", a.mcp_servers, refs.mcp_servers);
  if (f.count("guards")) {
    std::map<std::string, YAML::Node> g;
    const std::string gp = p("guards");
    if (fields(f["guards"], gp, {"budget", "loop", "max_invalid_tool_calls"}, g)) {
      if (g.count("budget")) {
        std::map<std::string, YAML::Node> b;
        const std::string bp = join_path(gp, "budget");
        if (fields(g["budget"], bp, {"max_steps", "max_model_calls", "max_tokens", "max_cost_usd", "max_wall_time"},
                   b)) {
          if (b.count("max_steps")) whole(b["max_steps"], join_path(bp, "max_steps"), o.budget.max_steps, 0);
          if (b.count("max_model_calls"))
            whole(b["max_model_calls"], join_path(bp, "max_model_calls"), o.budget.max_model_calls, 0);
          if (b.count("max_tokens")) whole(b["max_tokens"], join_path(bp, "max_tokens"), o.budget.max_tokens, 0);
          if (b.count("max_cost_usd"))
            number(b["max_cost_usd"], join_path(bp, "max_cost_usd"), o.budget.max_cost_usd, 0, 1e9);
          if (b.count("max_wall_time"))
            duration(b["max_wall_time"], join_path(bp, "max_wall_time"), o.budget.max_wall_time, true, true);
        }
      }
      if (g.count("loop")) {
        std::map<std::string, YAML::Node> l;
        const std::string lp = join_path(gp, "loop");
        if (fields(g["loop"], lp,
                   {"max_identical_calls", "stop_on_repeated_error", "max_turns_without_progress", "final_answer"},
                   l)) {
          if (l.count("max_identical_calls"))
            whole(l["max_identical_calls"], join_path(lp, "max_identical_calls"), o.loop.max_identical_calls, 0,
                  1'000'000);
          if (l.count("stop_on_repeated_error"))
            boolean(l["stop_on_repeated_error"], join_path(lp, "stop_on_repeated_error"),
                    o.loop.stop_on_repeated_error);
          if (l.count("max_turns_without_progress"))
            whole(l["max_turns_without_progress"], join_path(lp, "max_turns_without_progress"),
                  o.loop.max_turns_without_progress, 0, 1'000'000);
          if (l.count("final_answer")) boolean(l["final_answer"], join_path(lp, "final_answer"), o.loop.final_answer);
        }
      }
      if (g.count("max_invalid_tool_calls"))
        whole(g["max_invalid_tool_calls"], join_path(gp, "max_invalid_tool_calls"), o.max_invalid_tool_calls, 0,
              1'000'000);
    }
  }
  if (f.count("max_parallel_tools"))
    whole(f["max_parallel_tools"], p("max_parallel_tools"), o.max_parallel_tools, 1, 1024);
  if (f.count("max_output_tokens")) whole(f["max_output_tokens"], p("max_output_tokens"), o.max_output_tokens, 1);
  if (f.count("context_window_tokens"))
    whole(f["context_window_tokens"], p("context_window_tokens"), o.context_window_tokens, 0);
  if (f.count("model")) string(f["model"], p("model"), o.model);
  if (f.count("sleep_tool")) boolean(f["sleep_tool"], p("sleep_tool"), o.sleep_tool);
  if (f.count("max_sleep")) duration(f["max_sleep"], p("max_sleep"), o.max_sleep);
  if (f.count("approval_poll")) duration(f["approval_poll"], p("approval_poll"), o.approval_poll);
  if (f.count("mode")) {
    std::size_t k = 0;
    if (choice(f["mode"], p("mode"), {"on_demand", "always_on"}, k)) a.mode = static_cast<AgentMode>(k);
  }
  a.always_on.agent = name;
  a.always_on.name = "always_on:" + name;
  if (f.count("always_on")) {
    if (a.mode != AgentMode::kAlwaysOn) {
      error(f["always_on"], p("always_on"), "always_on settings need mode: always_on");
      return;
    }
    std::map<std::string, YAML::Node> g;
    const std::string ap = p("always_on");
    agent::AlwaysOnOptions& w = a.always_on;
    if (fields(f["always_on"], ap,
               {"queue_capacity", "max_tasks", "idle_poll", "restart_intensity", "restart_period", "recycle"}, g)) {
      if (g.count("queue_capacity"))
        whole(g["queue_capacity"], join_path(ap, "queue_capacity"), w.queue_capacity, 1, 1'000'000);
      if (g.count("max_tasks")) whole(g["max_tasks"], join_path(ap, "max_tasks"), w.max_tasks, 0);
      if (g.count("idle_poll")) duration(g["idle_poll"], join_path(ap, "idle_poll"), w.idle_poll);
      if (g.count("restart_intensity"))
        whole(g["restart_intensity"], join_path(ap, "restart_intensity"), w.restart_intensity, 1, 1'000'000);
      if (g.count("restart_period")) duration(g["restart_period"], join_path(ap, "restart_period"), w.restart_period);
      if (g.count("recycle")) {
        std::map<std::string, YAML::Node> r;
        const std::string rp = join_path(ap, "recycle");
        if (fields(g["recycle"], rp, {"resident_bytes", "open_fds"}, r)) {
          std::int64_t v = 0;
          if (r.count("resident_bytes") && size(r["resident_bytes"], join_path(rp, "resident_bytes"), v, 1))
            a.watermarks.push_back({"resident_bytes", v});
          if (r.count("open_fds") && whole(r["open_fds"], join_path(rp, "open_fds"), v, 1, 1 << 24))
            a.watermarks.push_back({"open_fds", v});
        }
      }
    }
  }
}

void Parser::group(const std::string& name, const YAML::Node& n, const std::string& path, GroupConfig& g) {
  g.name = name;
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path, {"agents", "restart_intensity", "restart_period", "restart_min_delay", "restart_max_delay"}, f))
    return;
  auto p = [&](const char* k) { return join_path(path, k); };
  std::vector<Ref>& refs = group_refs_[name];
  if (!f.count("agents")) {
    error(n, p("agents"), "required key 'agents' is missing");
  } else {
    std::vector<std::pair<std::string, YAML::Node>> items;
    string_list(f["agents"], p("agents"), items);
    for (std::size_t i = 0; i < items.size(); ++i) {
      g.agents.push_back(items[i].first);
      refs.push_back(Ref{items[i].first, loc_of(items[i].second), index_path(p("agents"), i)});
    }
  }
  agent::AgentsOptions& o = g.options;
  if (f.count("restart_intensity"))
    whole(f["restart_intensity"], p("restart_intensity"), o.restart_intensity, 1, 1'000'000);
  if (f.count("restart_period")) duration(f["restart_period"], p("restart_period"), o.restart_period);
  bool ok = true;
  if (f.count("restart_min_delay"))
    ok &= duration(f["restart_min_delay"], p("restart_min_delay"), o.restart_min_delay, false);
  if (f.count("restart_max_delay")) ok &= duration(f["restart_max_delay"], p("restart_max_delay"), o.restart_max_delay);
  if (ok && o.restart_max_delay < o.restart_min_delay)
    error(f.count("restart_max_delay") ? f["restart_max_delay"] : n, p("restart_max_delay"),
          "must be at least restart_min_delay");
}

bool loopback(const std::string& a) {
  return a == "localhost" || a == "::1" || a == "[::1]" || a.rfind("127.", 0) == 0;
}

void Parser::server(const YAML::Node& n, const std::string& path, ServerConfig& s) {
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path, {"address", "port", "max_body_bytes", "max_concurrent_requests", "shutdown_grace", "auth"}, f))
    return;
  auto p = [&](const char* k) { return join_path(path, k); };
  if (f.count("address") && string(f["address"], p("address"), s.address) && s.address.empty())
    error(f["address"], p("address"), "must not be empty");
  if (f.count("port")) whole(f["port"], p("port"), s.port, 0, 65535);
  if (f.count("max_body_bytes")) size(f["max_body_bytes"], p("max_body_bytes"), s.max_body_bytes, 1);
  if (f.count("max_concurrent_requests"))
    whole(f["max_concurrent_requests"], p("max_concurrent_requests"), s.max_concurrent_requests, 1, 1'000'000);
  if (f.count("shutdown_grace")) duration(f["shutdown_grace"], p("shutdown_grace"), s.shutdown_grace);
  if (f.count("auth")) {
    std::map<std::string, YAML::Node> g;
    const std::string ap = p("auth");
    if (fields(f["auth"], ap, {"tokens"}, g) && g.count("tokens")) {
      const YAML::Node& list = g["tokens"];
      const std::string tp = join_path(ap, "tokens");
      if (!list.IsSequence()) {
        error(list, tp, std::string("expected a list, got ") + kind_name(list));
      } else {
        for (std::size_t i = 0; i < list.size(); ++i) {
          const std::string ip = index_path(tp, i);
          std::map<std::string, YAML::Node> t;
          if (!fields(list[i], ip, {"env", "file", "scope"}, t)) continue;
          AuthToken token;
          if (t.count("scope")) {
            std::size_t k = 0;
            if (choice(t["scope"], join_path(ip, "scope"), {"read", "operator"}, k))
              token.scope = static_cast<TokenScope>(k);
          }
          if (t.count("env") == t.count("file")) {
            error(list[i], ip, "give exactly one of 'env' (a variable's name) or 'file' (a path)");
            continue;
          }
          std::string where;
          if (t.count("env")) {
            if (!string(t["env"], join_path(ip, "env"), where)) continue;
            token.source = "env:" + where;
            std::optional<std::string> v = env(where);
            if (!v) {
              error(t["env"], join_path(ip, "env"), "environment variable '" + where + "' is not set");
              continue;
            }
            remember_secret(*v);
            token.token = Secret(*v);
          } else {
            if (!string(t["file"], join_path(ip, "file"), where)) continue;
            token.source = "file:" + where;
            Result<std::string> content = read_file(where);
            if (!content.ok()) {
              error(t["file"], join_path(ip, "file"), "cannot read the token file: " + content.error().message());
              continue;
            }
            std::string v = *content;
            while (!v.empty() && (v.back() == '\n' || v.back() == '\r' || v.back() == ' ')) v.pop_back();
            remember_secret(v);
            token.token = Secret(std::move(v));
          }
          if (token.token.reveal().size() < 16) {
            error(list[i], ip, "the token is shorter than 16 characters");
            continue;
          }
          s.tokens.push_back(std::move(token));
        }
      }
    }
  }
  if (!loopback(s.address) && s.tokens.empty()) {
    error(f.count("address") ? f["address"] : n, p("address"),
          "a non-loopback address needs at least one token in server.auth.tokens");
  }
}

void Parser::logging(const YAML::Node& n, const std::string& path, LoggingConfig& l) {
  std::map<std::string, YAML::Node> f;
  if (!fields(n, path, {"level", "format"}, f)) return;
  std::size_t k = 0;
  if (f.count("level") && choice(f["level"], join_path(path, "level"),
                                 {"debug", "info", "notice", "warning", "error", "critical", "off"}, k))
    l.level = static_cast<LogLevel>(k);
  if (f.count("format") && choice(f["format"], join_path(path, "format"), {"human", "json"}, k))
    l.format = static_cast<LogFormat>(k);
}

void Parser::document(const YAML::Node& root, ServiceConfig& c) {
  std::map<std::string, YAML::Node> f;
  if (!root.IsMap()) {
    error(root, "", std::string("expected a mapping at the top (store:, models:, ...), got ") + kind_name(root));
    return;
  }
  if (!fields(root, "",
              {"version", "store", "models", "tools", "mcp_servers", "agents", "supervision", "server", "logging"}, f))
    return;
  if (f.count("version")) {
    int v = 0;
    whole(f["version"], "version", v, 1, 1);
  }
  if (f.count("store")) store(f["store"], "store", c.store);
  if (f.count("models")) {
    saw_models_ = true;
    models_loc_ = loc_of(f["models"]);
    std::vector<std::pair<std::string, YAML::Node>> entries;
    named_entries(f["models"], "models", entries, false);
    for (auto& [name, node] : entries) {
      c.models.emplace_back();
      model(name, node, join_path("models", name), c.models.back());
    }
  }
  if (f.count("tools")) {
    std::vector<std::pair<std::string, YAML::Node>> entries;
    named_entries(f["tools"], "tools", entries, true);
    for (auto& [name, node] : entries) {
      c.tools.emplace_back();
      tool(name, node, join_path("tools", name), c.tools.back());
    }
  }
  if (f.count("mcp_servers")) {
    std::vector<std::pair<std::string, YAML::Node>> entries;
    named_entries(f["mcp_servers"], "mcp_servers", entries, true);
    for (auto& [name, node] : entries) {
      c.mcp_servers.emplace_back();
      mcp(name, node, join_path("mcp_servers", name), c.mcp_servers.back());
    }
  }
  if (f.count("agents")) {
    saw_agents_ = true;
    agents_loc_ = loc_of(f["agents"]);
    std::vector<std::pair<std::string, YAML::Node>> entries;
    named_entries(f["agents"], "agents", entries, true);
    for (auto& [name, node] : entries) {
      c.agents.emplace_back();
      agent(name, node, join_path("agents", name), c.agents.back());
    }
  }
  if (f.count("supervision")) {
    std::map<std::string, YAML::Node> g;
    if (fields(f["supervision"], "supervision", {"groups"}, g) && g.count("groups")) {
      std::vector<std::pair<std::string, YAML::Node>> entries;
      named_entries(g["groups"], "supervision.groups", entries, true);
      for (auto& [name, node] : entries) {
        c.groups.emplace_back();
        group(name, node, join_path("supervision.groups", name), c.groups.back());
      }
    }
  }
  if (f.count("server")) server(f["server"], "server", c.server);
  if (f.count("logging")) logging(f["logging"], "logging", c.logging);
  if (!saw_models_) error(root, "models", "required key 'models' is missing (at least one model)");
  if (!saw_agents_) error(root, "agents", "required key 'agents' is missing (at least one agent)");
  if (saw_models_ && c.models.empty() && errors_.empty())
    error(models_loc_, "models", "must define at least one model");
  if (saw_agents_ && c.agents.empty() && errors_.empty())
    error(agents_loc_, "agents", "must define at least one agent");
}

std::vector<std::string> names_of(const auto& items, auto name) {
  std::vector<std::string> out;
  for (const auto& i : items) out.push_back(name(i));
  return out;
}

void Parser::references(ServiceConfig& c) {
  const std::vector<std::string> models = names_of(c.models, [](const ModelConfig& m) { return m.name; });
  const std::vector<std::string> tools = names_of(c.tools, [](const ToolConfig& t) { return t.spec.name; });
  const std::vector<std::string> servers =
      names_of(c.mcp_servers, [](const McpServerConfig& m) { return m.options.name; });
  const std::vector<std::string> agents = names_of(c.agents, [](const AgentConfig& a) { return a.options.name; });
  auto has = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  for (const auto& [tool_name, ref] : tool_fallbacks_) {
    if (ref.name == tool_name) {
      error(ref.loc, ref.path, "a tool cannot be its own fallback");
    } else if (!has(tools, ref.name)) {
      error(ref.loc, ref.path, "unknown tool '" + ref.name + "'" + did_you_mean(ref.name, tools));
    }
  }
  for (AgentConfig& a : c.agents) {
    const AgentRefs& r = agent_refs_[a.options.name];
    for (const Ref& m : r.models) {
      if (!has(models, m.name)) error(m.loc, m.path, "unknown model '" + m.name + "'" + did_you_mean(m.name, models));
    }
    for (const Ref& t : r.tools) {
      if (has(tools, t.name)) continue;
      // An MCP server's tools are listed at run time: a name with a declared server's prefix
      // cannot be checked offline.
      bool prefixed = std::any_of(c.mcp_servers.begin(), c.mcp_servers.end(), [&](const McpServerConfig& s) {
        return !s.options.tool_prefix.empty() && t.name.rfind(s.options.tool_prefix, 0) == 0 &&
               has(a.mcp_servers, s.options.name);
      });
      if (!prefixed) error(t.loc, t.path, "unknown tool '" + t.name + "'" + did_you_mean(t.name, tools));
    }
    for (const Ref& s : r.mcp_servers) {
      if (!has(servers, s.name))
        error(s.loc, s.path, "unknown MCP server '" + s.name + "'" + did_you_mean(s.name, servers));
    }
  }
  std::map<std::string, std::string> group_of;
  for (GroupConfig& g : c.groups) {
    for (const Ref& a : group_refs_[g.name]) {
      if (!has(agents, a.name)) {
        error(a.loc, a.path, "unknown agent '" + a.name + "'" + did_you_mean(a.name, agents));
      } else if (auto [it, inserted] = group_of.emplace(a.name, g.name); !inserted) {
        error(a.loc, a.path, "agent '" + a.name + "' is already in group '" + it->second + "'");
      }
    }
  }
  std::vector<std::string> ungrouped;
  for (AgentConfig& a : c.agents) {
    auto it = group_of.find(a.options.name);
    if (it != group_of.end()) {
      a.group = it->second;
    } else {
      a.group = "default";
      ungrouped.push_back(a.options.name);
    }
  }
  if (!ungrouped.empty()) {
    auto it = std::find_if(c.groups.begin(), c.groups.end(), [](const GroupConfig& g) { return g.name == "default"; });
    if (it == c.groups.end()) {
      c.groups.push_back(GroupConfig{.name = "default"});
      it = std::prev(c.groups.end());
    }
    for (std::string& n : ungrouped) it->agents.push_back(std::move(n));
  }
}

// The offset of the first byte that is not part of well-formed UTF-8 (no overlongs, no
// surrogates, at most U+10FFFF), or npos. YAML text is Unicode, and JSON (the sim config, tool
// schemas) cannot hold anything else.
std::size_t invalid_utf8_at(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    for (std::size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return i;
      const auto d = static_cast<unsigned char>(s[i + k]);
      if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) return i;
    }
    i += n + 1;
  }
  return std::string_view::npos;
}

// Counts a stream's documents and remembers where each begins (its first event). yaml-cpp 0.7's
// LoadAll loops forever, allocating, on some invalid text (",\n{": the parser reports an empty
// document without consuming the token, again and again; jbeder/yaml-cpp#1040, fixed upstream in
// PR #1319): so the documents are counted here, at most three, and a document that begins where
// the one before began is that error.
class DocumentCounter final : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> starts;  // each document's first node
  void OnDocumentStart(const YAML::Mark&) override { first_ = true; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& m, YAML::anchor_t) override { note(m); }
  void OnAlias(const YAML::Mark& m, YAML::anchor_t) override { note(m); }
  void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t, const std::string&) override { note(m); }
  void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    note(m);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    note(m);
  }
  void OnMapEnd() override {}

 private:
  void note(const YAML::Mark& m) {
    if (!first_) return;
    first_ = false;
    starts.push_back(m);
  }
  bool first_ = false;
};

bool error_before(const ConfigError& a, const ConfigError& b) {
  return std::tie(a.line, a.column) < std::tie(b.line, b.column);
}

}  // namespace

static ConfigResult parse_impl(std::string_view text, std::string_view name, const ConfigSources& sources) {
  ConfigResult result;
  Parser parser(std::string(name), sources);
  auto whole_file = [&](std::string message) {
    result.errors.push_back(ConfigError{std::string(name), 0, 0, "", std::move(message)});
    return result;
  };
  if (text.size() > kMaxConfigBytes) {
    return whole_file("the file is larger than " + std::to_string(kMaxConfigBytes) + " bytes");
  }
  if (text.find('\0') != std::string_view::npos) return whole_file("the file holds a NUL byte: not a YAML text");
  if (std::size_t bad = invalid_utf8_at(text); bad != std::string_view::npos) {
    std::size_t line_start = bad == 0 ? std::string_view::npos : text.rfind('\n', bad - 1);
    line_start = line_start == std::string_view::npos ? 0 : line_start + 1;
    const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(bad), '\n');
    result.errors.push_back(ConfigError{std::string(name), static_cast<int>(line),
                                        static_cast<int>(bad - line_start + 1), "", "the file is not valid UTF-8"});
    return result;
  }
  YAML::Node root;
  try {
    const std::string owned(text);
    std::istringstream stream(owned);
    YAML::Parser yaml(stream);
    DocumentCounter counter;
    while (counter.starts.size() < 3 && yaml.HandleNextDocument(counter)) {
      const std::size_t n = counter.starts.size();
      if (n >= 2 && counter.starts[n - 1].pos == counter.starts[n - 2].pos) {
        const YAML::Mark& m = counter.starts[n - 1];
        result.errors.push_back(ConfigError{std::string(name), m.line + 1, m.column + 1, "",
                                            "invalid YAML: unexpected text (not a value, key or list item)"});
        return result;
      }
    }
    if (counter.starts.size() > 1) {
      return whole_file("the file holds " + std::string(counter.starts.size() > 2 ? "3 or more" : "2") +
                        " YAML documents, not one");
    }
    root = YAML::Load(owned);
  } catch (const YAML::Exception& e) {
    ConfigError err{std::string(name), 0, 0, "", "invalid YAML: " + e.msg};
    if (!e.mark.is_null()) {
      err.line = e.mark.line + 1;
      err.column = e.mark.column + 1;
    }
    result.errors.push_back(std::move(err));
    return result;
  } catch (const std::exception& e) {
    return whole_file(std::string("invalid YAML: ") + e.what());
  }
  if (!root.IsDefined() || root.IsNull()) return whole_file("the file is empty");
  ServiceConfig config;
  try {
    parser.document(root, config);
    parser.references(config);
  } catch (const YAML::Exception& e) {
    return whole_file(std::string("invalid YAML: ") + e.msg);
  } catch (const std::exception& e) {  // should not happen (log-and-count tier): never a partial config
    return whole_file(std::string("internal error while loading: ") + e.what());
  }
  parser.scrub(parser.errors());
  result.errors = std::move(parser.errors());
  std::stable_sort(result.errors.begin(), result.errors.end(), error_before);
  if (result.errors.empty()) result.config = std::move(config);
  return result;
}

ConfigResult parse_config(std::string_view text, std::string_view name, const ConfigSources& sources) {
  return parse_impl(text, name, sources);
}

ConfigResult load_config(const std::string& path, const ConfigSources& sources) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  if (in) s << in.rdbuf();
  if (!in || in.bad()) {
    ConfigResult r;
    r.unreadable = true;
    r.errors.push_back(ConfigError{path, 0, 0, "", "cannot read the file"});
    return r;
  }
  return parse_impl(s.str(), path, sources);
}

std::string ConfigError::to_string() const {
  std::string out = file;
  if (line > 0) out += ":" + std::to_string(line) + ":" + std::to_string(column);
  out += ": ";
  if (!path.empty()) out += path + ": ";
  return out + message;
}

std::string ConfigResult::error_text() const {
  std::string out;
  for (const ConfigError& e : errors) out += e.to_string() + "\n";
  return out;
}

RetryOptions default_model_retry() {
  RetryOptions r;
  r.max_attempts = 3;
  r.backoff = Backoff::full_jitter(std::chrono::milliseconds(250), std::chrono::seconds(8));
  r.max_retry_after = std::chrono::seconds(60);
  return r;
}

std::string_view to_string(Provider provider) {
  switch (provider) {
    case Provider::kOpenAi: return "openai";
    case Provider::kAnthropic: return "anthropic";
    case Provider::kSim: return "sim";
  }
  return "unknown";
}

const ModelConfig* ServiceConfig::find_model(std::string_view name) const {
  for (const ModelConfig& m : models) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

const AgentConfig* ServiceConfig::find_agent(std::string_view name) const {
  for (const AgentConfig& a : agents) {
    if (a.options.name == name) return &a;
  }
  return nullptr;
}

Result<Duration> parse_duration(std::string_view text) {
  auto bad = [&] { return Error(ErrorKind::kInvalidArgument, "invalid duration '" + std::string(text) + "'"); };
  if (text == "0") return Duration::zero();
  if (text.empty()) return bad();
  using Ns = std::chrono::nanoseconds;
  struct Unit {
    std::string_view name;
    std::int64_t ns;
  };
  static constexpr Unit kUnits[] = {{"ns", 1},
                                    {"us", 1'000},
                                    {"ms", 1'000'000},
                                    {"s", 1'000'000'000},
                                    {"m", 60'000'000'000},
                                    {"h", 3'600'000'000'000}};
  long double total = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    std::size_t start = i;
    while (i < text.size() && ((text[i] >= '0' && text[i] <= '9') || text[i] == '.')) ++i;
    if (i == start) return bad();
    double v = 0;
    auto [ptr, ec] = std::from_chars(text.data() + start, text.data() + i, v);
    if (ec != std::errc() || ptr != text.data() + i) return bad();
    std::size_t ustart = i;
    while (i < text.size() && text[i] >= 'a' && text[i] <= 'z') ++i;
    std::string_view unit = text.substr(ustart, i - ustart);
    const Unit* u = std::find_if(std::begin(kUnits), std::end(kUnits), [&](const Unit& x) { return x.name == unit; });
    if (u == std::end(kUnits)) return bad();
    total += static_cast<long double>(v) * static_cast<long double>(u->ns);
    if (total > static_cast<long double>(std::numeric_limits<std::int64_t>::max() / 2)) return bad();
  }
  return Ns(static_cast<std::int64_t>(total));
}

Result<std::uint64_t> parse_size(std::string_view text) {
  auto bad = [&] { return Error(ErrorKind::kInvalidArgument, "invalid size '" + std::string(text) + "'"); };
  std::size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
  if (i == 0) return bad();
  std::uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + i, v);
  if (ec != std::errc() || ptr != text.data() + i) return bad();
  std::string_view unit = text.substr(i);
  static const std::pair<std::string_view, std::uint64_t> kUnits[] = {
      {"", 1},       {"B", 1},      {"KiB", 1ull << 10}, {"MiB", 1ull << 20},  {"GiB", 1ull << 30}, {"TiB", 1ull << 40},
      {"KB", 1'000}, {"kB", 1'000}, {"MB", 1'000'000},   {"GB", 1'000'000'000}};
  for (const auto& [name, mult] : kUnits) {
    if (name != unit) continue;
    if (v > std::numeric_limits<std::uint64_t>::max() / mult) return bad();
    return v * mult;
  }
  return bad();
}

namespace {

std::string dur(Duration d) {
  if (d == kInfinite) return "none";
  std::int64_t ns = d.count();
  if (ns % 1'000'000'000 == 0) return std::to_string(ns / 1'000'000'000) + "s";
  if (ns % 1'000'000 == 0) return std::to_string(ns / 1'000'000) + "ms";
  return std::to_string(ns) + "ns";
}

void dump_retry(std::ostringstream& o, const char* indent, const RetryOptions& r) {
  o << indent << "retry: {max_attempts: " << r.max_attempts << ", max_total_time: " << dur(r.max_total_time)
    << ", max_retry_after: " << dur(r.max_retry_after) << ", backoff: {kind: " << static_cast<int>(r.backoff.kind)
    << ", base: " << dur(r.backoff.base) << ", cap: " << dur(r.backoff.cap) << ", multiplier: " << r.backoff.multiplier
    << "}}\n";
}

void dump_breaker(std::ostringstream& o, const char* indent, const std::optional<CircuitBreakerOptions>& b) {
  if (!b) return;
  o << indent << "breaker: {window_size: " << b->window_size << ", minimum_calls: " << b->minimum_calls
    << ", failure_rate_threshold: "
    << (b->failure_rate_threshold ? std::to_string(*b->failure_rate_threshold) : std::string("off"))
    << ", consecutive_failures: " << b->consecutive_failures << ", open_duration: " << dur(b->open_duration)
    << ", half_open_trials: " << b->half_open_trials << "}\n";
}

}  // namespace

std::string debug_string(const ServiceConfig& c) {
  std::ostringstream o;
  o << "store:\n";
  if (c.store.kind == StoreConfig::Kind::kSqlite) {
    o << "  sqlite: {path: " << c.store.sqlite_path << ", durability: " << nines::to_string(c.store.sqlite.durability)
      << ", busy_timeout_ms: " << c.store.sqlite.busy_timeout_ms << "}\n";
  } else {
    o << "  postgres: {url: " << c.store.postgres_url << ", connect_timeout_s: " << c.store.postgres_connect_timeout_s
      << "}\n";
  }
  o << "models:\n";
  for (const ModelConfig& m : c.models) {
    o << "  " << m.name << ":\n    provider: " << to_string(m.provider) << "\n    base_url: " << m.base_url
      << "\n    model: " << m.model << "\n    api_key_env: " << m.api_key_env << "\n    api_key: " << m.api_key << "\n";
    for (const auto& [k, v] : m.headers) o << "    header " << k << ": " << v << "\n";
    o << "    context_window_tokens: " << m.context_window_tokens << "\n    max_output_tokens: " << m.max_output_tokens
      << "\n    price: {input_per_mtok: " << m.price.input_per_mtok << ", output_per_mtok: " << m.price.output_per_mtok
      << "}\n    limits: {requests_per_minute: " << m.requests_per_minute
      << ", tokens_per_minute: " << m.tokens_per_minute << ", max_concurrent_calls: " << m.max_concurrent_calls
      << "}\n    attempt_timeout: " << dur(m.attempt_timeout) << "\n";
    dump_retry(o, "    ", m.retry);
    dump_breaker(o, "    ", m.breaker);
    if (m.sim) o << "    sim: {seed: " << m.sim->seed << ", scenario_turns: " << m.sim->scenario.size() << "}\n";
  }
  o << "tools:\n";
  for (const ToolConfig& t : c.tools) {
    o << "  " << t.spec.name << ": {type: " << (t.kind == ToolConfig::Kind::kNative ? "native" : "http");
    if (t.kind == ToolConfig::Kind::kHttp) {
      o << ", method: " << kMethodNames[static_cast<std::size_t>(t.http.method)] << ", url: " << t.http.url_template
        << ", nature: " << kNatureNames[static_cast<std::size_t>(t.spec.nature)] << ", timeout: " << dur(t.spec.timeout)
        << ", fallback: " << t.spec.fallback
        << ", requires_approval: " << (t.spec.requires_approval ? "true" : "false");
      for (const auto& [k, v] : t.headers) o << ", header " << k << ": " << v;
    }
    o << "}\n";
  }
  o << "mcp_servers:\n";
  for (const McpServerConfig& m : c.mcp_servers) {
    o << "  " << m.options.name << ": {command: [";
    for (std::size_t i = 0; i < m.options.command.size(); ++i) o << (i ? ", " : "") << m.options.command[i];
    o << "], tool_prefix: " << m.options.tool_prefix;
    for (const auto& [k, v] : m.env) o << ", env " << k << ": " << v;
    o << "}\n";
  }
  o << "agents:\n";
  for (const AgentConfig& a : c.agents) {
    o << "  " << a.options.name << ": {models: [";
    for (std::size_t i = 0; i < a.models.size(); ++i) o << (i ? ", " : "") << a.models[i];
    o << "], tools: [";
    for (std::size_t i = 0; i < a.options.tools.size(); ++i) o << (i ? ", " : "") << a.options.tools[i];
    o << "], mode: " << (a.mode == AgentMode::kAlwaysOn ? "always_on" : "on_demand") << ", group: " << a.group
      << ", max_steps: " << a.options.budget.max_steps << ", max_parallel_tools: " << a.options.max_parallel_tools
      << "}\n";
  }
  o << "supervision:\n";
  for (const GroupConfig& g : c.groups) {
    o << "  " << g.name << ": {agents: [";
    for (std::size_t i = 0; i < g.agents.size(); ++i) o << (i ? ", " : "") << g.agents[i];
    o << "], restart_intensity: " << g.options.restart_intensity
      << ", restart_period: " << dur(g.options.restart_period) << "}\n";
  }
  o << "server: {address: " << c.server.address << ", port: " << c.server.port
    << ", max_body_bytes: " << c.server.max_body_bytes
    << ", max_concurrent_requests: " << c.server.max_concurrent_requests
    << ", shutdown_grace_ms: " << std::chrono::duration_cast<std::chrono::milliseconds>(c.server.shutdown_grace).count()
    << ", tokens: [";
  for (std::size_t i = 0; i < c.server.tokens.size(); ++i)
    o << (i ? ", " : "") << c.server.tokens[i].source << " " << c.server.tokens[i].token;
  o << "]}\nlogging: {level: " << to_string(c.logging.level)
    << ", format: " << (c.logging.format == LogFormat::kHuman ? "human" : "json") << "}\n";
  return o.str();
}

}  // namespace nines::service
