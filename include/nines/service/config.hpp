// nines/service/config.hpp: the service's configuration, read from one YAML file (docs/service.md).
//
// A ServiceConfig is the typed form of the file: the store, the models, the tools (native, HTTP,
// MCP servers), the agents, the supervision groups, the HTTP server and logging. Its fields use
// the names, units and defaults of the option structs they map onto (llm::ModelRouteOptions,
// agent::AgentOptions, agent::ToolSpec, agent::HttpToolOptions, agent::McpServerOptions, ...),
// so building the runtime objects from it is a field-by-field copy.
//
//   ConfigResult r = service::load_config("nines.yaml");
//   if (!r.ok()) {
//     for (const ConfigError& e : r.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
//     return r.unreadable ? 2 : 1;
//   }
//   const ServiceConfig& config = *r.config;
//
// Errors: every problem of the file at once, each with file:line:column and the key's path, e.g.
//   nines.yaml:14:7: agents.support.tools[2]: unknown tool 'serch' (did you mean 'search'?)
// A file that cannot be read, is empty, or is not well-formed YAML gives no config at all (never
// a partial one). Secrets (API keys, auth tokens, the PostgreSQL URL, HTTP tool header values,
// MCP server environment values) are held in Secret, which prints as "[redacted]"; no error
// message quotes the value of a secret or of an interpolated string (it quotes the text written
// in the file, e.g. '${OPENAI_KEY}').
//
// Ownership and thread-safety: ServiceConfig is a plain value; parse_config and load_config are
// pure functions of their inputs (the interpolation source and the file reader they are given).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/agent/always_on.hpp"
#include "nines/agent/http_tool.hpp"
#include "nines/agent/mcp.hpp"
#include "nines/agent/tool.hpp"
#include "nines/core/log.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/llm/router.hpp"
#include "nines/llm/sim.hpp"
#include "nines/net/http_client.hpp"
#include "nines/resilience/circuit_breaker.hpp"
#include "nines/resilience/retry.hpp"
#include "nines/store/sqlite_store.hpp"
#include "nines/store/store.hpp"

namespace nines::service {

// A value that must never be printed: operator<< and to_string show "[redacted]". reveal() is
// the one way to read it (when building a client or comparing a token).
class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string value) : value_(std::move(value)) {}
  const std::string& reveal() const { return value_; }
  bool empty() const { return value_.empty(); }
  friend bool operator==(const Secret&, const Secret&) = default;
  friend std::ostream& operator<<(std::ostream& out, const Secret&) { return out << "[redacted]"; }

 private:
  std::string value_;
};
inline std::string to_string(const Secret&) { return "[redacted]"; }

// ---- store -------------------------------------------------------------------------------------

struct StoreConfig {
  enum class Kind : std::uint8_t { kSqlite, kPostgres };
  Kind kind = Kind::kSqlite;
  std::string sqlite_path = "nines.db";  // store.sqlite.path
  nines::SqliteStoreOptions sqlite;      // store.sqlite.* (durability, busy_timeout, ...)
  Secret postgres_url;                   // store.postgres.url (a libpq conninfo: may hold a password)
  nines::Durability postgres_durability = nines::Durability::kSynced;
  int postgres_connect_timeout_s = 10;
};

// ---- models ------------------------------------------------------------------------------------

enum class Provider : std::uint8_t { kOpenAi, kAnthropic, kSim };
std::string_view to_string(Provider provider);

// llm::ModelRouteOptions::default_retry()'s values (3 attempts, full jitter 250 ms .. 8 s, server
// retry times up to 60 s), repeated here so that the config needs only the llm layer's headers
// and parsers (the config fuzz target links no router); a test checks that they are equal.
RetryOptions default_model_retry();

// One model: a route of an agent's chain (llm::ModelRouteOptions) and the client behind it.
struct ModelConfig {
  std::string name;  // the key under models:; the route's name
  Provider provider = Provider::kSim;
  // Empty: the provider's default (OpenAiOptions / AnthropicOptions). Unused by sim.
  std::string base_url;
  std::string model;                                    // ModelRouteOptions::model
  std::string api_key_env;                              // the variable api_key was read from; empty: none
  Secret api_key;                                       // empty: none (local servers, sim)
  std::vector<std::pair<std::string, Secret>> headers;  // the client's extra_headers
  std::size_t max_response_bytes = std::size_t{16} << 20;
  std::string anthropic_version = "2023-06-01";
  agent::Price price;  // AgentOptions::prices[name] of every agent using this model
  std::int64_t context_window_tokens = 128000;
  std::int64_t max_output_tokens = 4096;
  std::uint64_t requests_per_minute = 0;
  std::uint64_t tokens_per_minute = 0;
  std::size_t max_concurrent_calls = 0;
  Duration max_limiter_wait = std::chrono::seconds(30);
  Duration attempt_timeout = kInfinite;
  std::optional<net::HttpTimeouts> http_timeouts;  // nullopt: the HttpClient's defaults
  RetryOptions retry = default_model_retry();      // equal to llm::ModelRouteOptions::default_retry()
  std::optional<CircuitBreakerOptions> breaker;    // nullopt: CircuitBreakerOptions{}
  std::optional<llm::SimConfig> sim;               // provider sim: its config (docs/sim.md)
};

// ---- tools -------------------------------------------------------------------------------------

struct ToolConfig {
  enum class Kind : std::uint8_t { kNative, kHttp };
  Kind kind = Kind::kNative;
  // name, description, parameters_schema_json, nature, timeout, max_concurrent, retry, breaker,
  // fallback, requires_approval. A native tool's spec comes from its code; only its name is
  // read (the service looks it up among the tools it was built with).
  agent::ToolSpec spec;
  agent::HttpToolOptions http;                          // kHttp; its headers are in `headers`
  std::vector<std::pair<std::string, Secret>> headers;  // HttpToolOptions::headers (values may hold credentials)
};

struct McpServerConfig {
  agent::McpServerOptions options;  // everything but env
  std::vector<std::pair<std::string, Secret>> env;
};

// ---- agents ------------------------------------------------------------------------------------

enum class AgentMode : std::uint8_t { kOnDemand, kAlwaysOn };

struct WatermarkConfig {
  std::string name;  // "resident_bytes" or "open_fds" (the probes the service provides)
  std::int64_t limit = 0;
};

struct AgentConfig {
  // name, system_prompt, tools, budget, loop, max_invalid_tool_calls, max_parallel_tools,
  // max_output_tokens, context_window_tokens, model, sleep_tool, max_sleep, approval_poll.
  // router and prices are built from `models`.
  agent::AgentOptions options;
  std::vector<std::string> models;       // the chain, primary first (names under models:)
  std::vector<std::string> mcp_servers;  // every tool of these servers is the agent's too
  AgentMode mode = AgentMode::kOnDemand;
  // kAlwaysOn: queue_capacity, max_tasks, idle_poll, restart_intensity, restart_period (agent
  // and name are set by the service); the watermarks' probes are the service's.
  agent::AlwaysOnOptions always_on;
  std::vector<WatermarkConfig> watermarks;
  std::string group;  // the supervision group running its tasks
};

// One task supervisor (an agent::Agents with these options) and the agents it runs.
struct GroupConfig {
  std::string name;
  std::vector<std::string> agents;
  agent::AgentsOptions options;  // restart_intensity, restart_period, restart_min_delay, restart_max_delay
};

// ---- server and logging ------------------------------------------------------------------------

enum class TokenScope : std::uint8_t { kRead, kOperator };

struct AuthToken {
  std::string source;  // "env:NAME" or "file:PATH" (for messages; never the token)
  Secret token;
  TokenScope scope = TokenScope::kOperator;
};

struct ServerConfig {
  std::string address = "127.0.0.1";  // loopback by default; any other needs a token
  std::uint16_t port = 8080;
  std::size_t max_body_bytes = std::size_t{1} << 20;
  std::size_t max_concurrent_requests = 256;  // in progress at once; beyond: 429 with Retry-After
  // SIGTERM: how long running tasks get to reach a checkpoint before they are killed.
  Duration shutdown_grace = std::chrono::seconds(30);
  std::vector<AuthToken> tokens;
};

struct LoggingConfig {
  LogLevel level = LogLevel::kInfo;
  LogFormat format = LogFormat::kJsonLines;
};

struct ServiceConfig {
  StoreConfig store;
  std::vector<ModelConfig> models;  // in file order
  std::vector<ToolConfig> tools;
  std::vector<McpServerConfig> mcp_servers;
  std::vector<AgentConfig> agents;
  std::vector<GroupConfig> groups;  // every agent is in exactly one ("default" for those no group names)
  ServerConfig server;
  LoggingConfig logging;

  const ModelConfig* find_model(std::string_view name) const;
  const AgentConfig* find_agent(std::string_view name) const;
};

// A readable dump of the whole config (for `nines check --print` and debugging). Secrets print
// as [redacted].
std::string debug_string(const ServiceConfig& config);

// ---- loading -----------------------------------------------------------------------------------

struct ConfigError {
  std::string file;
  int line = 0;      // 1-based; 0: the file as a whole
  int column = 0;    // 1-based
  std::string path;  // the key's path, e.g. "agents.support.tools[2]"; empty: the document
  std::string message;
  // "file:line:column: path: message" (parts that are unknown are left out).
  std::string to_string() const;
};

struct ConfigResult {
  std::optional<ServiceConfig> config;  // set exactly when errors is empty
  std::vector<ConfigError> errors;      // in file order
  bool unreadable = false;              // the file could not be read (load_config only)
  bool ok() const { return config.has_value(); }
  // All errors, one per line.
  std::string error_text() const;
};

struct ConfigSources {
  // ${NAME} in string values, api_key_env and auth tokens' env: the variable's value, or
  // nullopt when it is not set. Default: the process environment (getenv).
  std::function<std::optional<std::string>(const std::string& name)> env;
  // Auth tokens' file: the file's content, or an error saying why not. Default: reads the file.
  std::function<Result<std::string>(const std::string& path)> read_file;
};

// The largest config file accepted, in bytes.
inline constexpr std::size_t kMaxConfigBytes = std::size_t{4} << 20;

// Parses YAML text; `name` is the file name used in errors.
ConfigResult parse_config(std::string_view text, std::string_view name, const ConfigSources& sources = {});
// Reads and parses a file. An unreadable file: unreadable = true and one error naming it.
ConfigResult load_config(const std::string& path, const ConfigSources& sources = {});

// Parses "250ms", "30s", "2m", "1h", "1m30s" (units ns, us, ms, s, m, h; a bare 0 is 0). Positive
// or zero; overflow is an error. For tools that take durations in the same syntax.
Result<Duration> parse_duration(std::string_view text);
// Parses "16MiB", "64KiB", "1GiB", "512B", "10MB" (decimal units too) or a plain integer (bytes).
Result<std::uint64_t> parse_size(std::string_view text);

}  // namespace nines::service
