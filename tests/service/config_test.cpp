// The service config loader (include/nines/service/config.hpp): every error kind with its exact
// location text, several errors at once, secrets never printed, interpolation, defaults equal to
// the option structs' defaults, and the sample config (config/nines.yaml).
#include "nines/service/config.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "nines/llm/openai.hpp"
#include "support/status_matchers.hpp"

namespace nines::service {
namespace {

using test::IsOkAndHolds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* kSecretValue = "sk-VERY-SECRET-0123456789abcdef";

// The environment the tests see: nothing from the real one.
ConfigSources fake_env(std::map<std::string, std::string> vars = {}) {
  vars.emplace("OPENAI_KEY", kSecretValue);
  ConfigSources s;
  s.env = [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
  s.read_file = [](const std::string& path) -> Result<std::string> {
    if (path == "/run/token") return std::string(kSecretValue) + "\n";
    return Error(ErrorKind::kNotFound, "cannot open '" + path + "'");
  };
  return s;
}

ConfigResult parse(const std::string& text, std::map<std::string, std::string> vars = {}) {
  return parse_config(text, "nines.yaml", fake_env(std::move(vars)));
}

std::vector<std::string> error_lines(const ConfigResult& r) {
  std::vector<std::string> out;
  for (const ConfigError& e : r.errors) out.push_back(e.to_string());
  return out;
}

// The smallest valid config, to which each test adds what it checks.
const std::string kMinimal = R"(models:
  m1:
    provider: sim
agents:
  a1:
    models: [m1]
)";

TEST(ServiceConfig, MinimalConfigParsesWithDefaults) {
  ConfigResult r = parse(kMinimal);
  ASSERT_TRUE(r.ok()) << r.error_text();
  const ServiceConfig& c = *r.config;
  ASSERT_EQ(c.models.size(), 1u);
  ASSERT_EQ(c.agents.size(), 1u);
  EXPECT_EQ(c.store.kind, StoreConfig::Kind::kSqlite);
  EXPECT_EQ(c.store.sqlite_path, "nines.db");
  ASSERT_EQ(c.groups.size(), 1u);
  EXPECT_EQ(c.groups[0].name, "default");
  EXPECT_THAT(c.groups[0].agents, ElementsAre("a1"));
  EXPECT_EQ(c.agents[0].group, "default");
  EXPECT_EQ(c.server.address, "127.0.0.1");
  EXPECT_TRUE(c.models[0].sim.has_value());
}

TEST(ServiceConfig, DefaultsEqualTheOptionStructsDefaults) {
  ConfigResult r = parse(kMinimal);
  ASSERT_TRUE(r.ok()) << r.error_text();
  const ModelConfig& m = r.config->models[0];
  const llm::ModelRouteOptions route;
  EXPECT_EQ(m.context_window_tokens, route.context_window_tokens);
  EXPECT_EQ(m.max_output_tokens, route.max_output_tokens);
  EXPECT_EQ(m.requests_per_minute, route.requests_per_minute);
  EXPECT_EQ(m.tokens_per_minute, route.tokens_per_minute);
  EXPECT_EQ(m.max_limiter_wait, route.max_limiter_wait);
  EXPECT_EQ(m.max_concurrent_calls, route.max_concurrent_calls);
  EXPECT_EQ(m.attempt_timeout, route.attempt_timeout);
  EXPECT_EQ(m.retry.max_attempts, route.retry.max_attempts);
  EXPECT_EQ(m.retry.backoff.base, route.retry.backoff.base);
  EXPECT_EQ(m.retry.backoff.cap, route.retry.backoff.cap);
  EXPECT_EQ(m.retry.max_retry_after, route.retry.max_retry_after);
  EXPECT_EQ(m.retry.max_total_time, route.retry.max_total_time);
  EXPECT_EQ(m.retry.backoff.kind, route.retry.backoff.kind);
  EXPECT_EQ(m.retry.backoff.multiplier, route.retry.backoff.multiplier);
  EXPECT_EQ(m.breaker.has_value(), route.breaker.has_value());
  EXPECT_FALSE(m.http_timeouts.has_value());
  EXPECT_EQ(m.max_response_bytes, llm::OpenAiOptions{}.max_response_bytes);

  const agent::AgentOptions& a = r.config->agents[0].options;
  const agent::AgentOptions def;
  EXPECT_EQ(a.budget.max_steps, def.budget.max_steps);
  EXPECT_EQ(a.budget.max_model_calls, def.budget.max_model_calls);
  EXPECT_EQ(a.budget.max_tokens, def.budget.max_tokens);
  EXPECT_EQ(a.budget.max_cost_usd, def.budget.max_cost_usd);
  EXPECT_EQ(a.budget.max_wall_time, def.budget.max_wall_time);
  EXPECT_EQ(a.loop.max_identical_calls, def.loop.max_identical_calls);
  EXPECT_EQ(a.loop.stop_on_repeated_error, def.loop.stop_on_repeated_error);
  EXPECT_EQ(a.loop.max_turns_without_progress, def.loop.max_turns_without_progress);
  EXPECT_EQ(a.loop.final_answer, def.loop.final_answer);
  EXPECT_EQ(a.max_invalid_tool_calls, def.max_invalid_tool_calls);
  EXPECT_EQ(a.max_parallel_tools, def.max_parallel_tools);
  EXPECT_EQ(a.max_output_tokens, def.max_output_tokens);
  EXPECT_EQ(a.context_window_tokens, def.context_window_tokens);
  EXPECT_EQ(a.max_sleep, def.max_sleep);
  EXPECT_EQ(a.approval_poll, def.approval_poll);
  EXPECT_EQ(r.config->agents[0].mode, AgentMode::kOnDemand);
  const agent::AlwaysOnOptions aon;
  EXPECT_EQ(r.config->agents[0].always_on.queue_capacity, aon.queue_capacity);
  EXPECT_EQ(r.config->agents[0].always_on.max_tasks, aon.max_tasks);
  EXPECT_EQ(r.config->agents[0].always_on.restart_intensity, aon.restart_intensity);

  const agent::AgentsOptions gdef;
  EXPECT_EQ(r.config->groups[0].options.restart_intensity, gdef.restart_intensity);
  EXPECT_EQ(r.config->groups[0].options.restart_period, gdef.restart_period);

  const nines::SqliteStoreOptions sq;
  EXPECT_EQ(r.config->store.sqlite.busy_timeout_ms, sq.busy_timeout_ms);
  EXPECT_EQ(r.config->store.sqlite.cache_bytes, sq.cache_bytes);
  EXPECT_EQ(r.config->store.sqlite.durability, sq.durability);
  EXPECT_EQ(r.config->logging.level, LogLevel::kInfo);
}

TEST(ServiceConfig, ToolAndMcpDefaultsEqualTheOptionStructs) {
  ConfigResult r = parse(kMinimal + R"(tools:
  t:
    type: http
    url: http://127.0.0.1:1/x
mcp_servers:
  s:
    command: [server]
)");
  ASSERT_TRUE(r.ok()) << r.error_text();
  const agent::ToolSpec spec;
  const ToolConfig& t = r.config->tools[0];
  EXPECT_EQ(t.spec.name, "t");
  EXPECT_EQ(t.spec.nature, spec.nature);
  EXPECT_EQ(t.spec.timeout, spec.timeout);
  EXPECT_EQ(t.spec.max_concurrent, spec.max_concurrent);
  EXPECT_EQ(t.spec.retry.has_value(), spec.retry.has_value());
  EXPECT_EQ(t.spec.parameters_schema_json, spec.parameters_schema_json);
  EXPECT_EQ(t.http.max_response_bytes, agent::HttpToolOptions{}.max_response_bytes);
  EXPECT_EQ(t.http.method, agent::HttpMethod::kGet);
  const agent::McpServerOptions mdef;
  const agent::McpServerOptions& m = r.config->mcp_servers[0].options;
  EXPECT_EQ(m.name, "s");
  EXPECT_THAT(m.command, ElementsAre("server"));
  EXPECT_EQ(m.call_timeout, mdef.call_timeout);
  EXPECT_EQ(m.initialize_timeout, mdef.initialize_timeout);
  EXPECT_EQ(m.max_in_flight, mdef.max_in_flight);
  EXPECT_EQ(m.limits.max_resident_bytes, mdef.limits.max_resident_bytes);
  EXPECT_EQ(m.limits.open_files, mdef.limits.open_files);
}

TEST(ServiceConfig, EmptyAndMalformedFilesAreErrors) {
  EXPECT_THAT(error_lines(parse("")), ElementsAre("nines.yaml: the file is empty"));
  EXPECT_THAT(error_lines(parse("# only a comment\n")), ElementsAre("nines.yaml: the file is empty"));
  // Half-written: cut in the middle of a flow list.
  ConfigResult r = parse("models:\n  m1: {provider: sim\n");
  ASSERT_FALSE(r.ok());
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_THAT(r.errors[0].to_string(), ::testing::StartsWith("nines.yaml:"));
  EXPECT_THAT(r.errors[0].message, HasSubstr("invalid YAML"));
  EXPECT_THAT(error_lines(parse("- a\n- b\n")),
              ElementsAre("nines.yaml:1:1: expected a mapping at the top (store:, models:, ...), got a list"));
  EXPECT_THAT(error_lines(parse(kMinimal + "---\nx: 1\n")),
              ElementsAre("nines.yaml: the file holds 2 YAML documents, not one"));
  // yaml-cpp 0.7's LoadAll never returns on these (jbeder/yaml-cpp#1040): found by the fuzzer.
  EXPECT_THAT(error_lines(parse(",\n{")),
              ElementsAre("nines.yaml:1:1: invalid YAML: unexpected text (not a value, key or list item)"));
  EXPECT_THAT(error_lines(parse(",......_bytea]\nmodels: {m: {pr")),
              ElementsAre("nines.yaml:1:1: invalid YAML: unexpected text (not a value, key or list item)"));
}

TEST(ServiceConfig, HalfWrittenFileIsNeverAPartialConfig) {
  // Every prefix of the sample is either the whole valid config or an error: never a partial config.
  std::ifstream in(std::string(NINES_SOURCE_DIR) + "/config/nines.yaml");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(text.empty());
  ConfigResult whole = parse(text);
  ASSERT_TRUE(whole.ok()) << whole.error_text();
  // The sample's last section is logging; a cut before "logging:" loses it, so check a cut that
  // drops required sections: the file up to its models.
  std::size_t agents_at = text.find("\nagents:");
  ASSERT_NE(agents_at, std::string::npos);
  ConfigResult cut = parse(text.substr(0, agents_at + 1));
  EXPECT_FALSE(cut.ok());
  EXPECT_FALSE(cut.config.has_value());
  EXPECT_THAT(cut.error_text(), HasSubstr("required key 'agents' is missing"));
}

TEST(ServiceConfig, UnreadableFile) {
  ConfigResult r = load_config("/nonexistent/nines.yaml");
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(r.unreadable);
  EXPECT_THAT(error_lines(r), ElementsAre("/nonexistent/nines.yaml: cannot read the file"));
}

TEST(ServiceConfig, UnknownKeysWithDidYouMean) {
  ConfigResult r = parse(R"(models:
  m1:
    provider: sim
    contxt_window_tokens: 1000
agents:
  a1:
    models: [m1]
    system_promt: hi
lgging:
  level: info
)");
  EXPECT_THAT(error_lines(r),
              ElementsAre("nines.yaml:4:5: models.m1.contxt_window_tokens: unknown key 'contxt_window_tokens' (did you "
                          "mean 'context_window_tokens'?)",
                          "nines.yaml:8:5: agents.a1.system_promt: unknown key 'system_promt' (did you mean "
                          "'system_prompt'?)",
                          "nines.yaml:9:1: lgging: unknown key 'lgging' (did you mean 'logging'?)"));
  // Nothing close: no suggestion.
  EXPECT_THAT(error_lines(parse(kMinimal + "zzzzzz: 1\n")),
              ElementsAre("nines.yaml:7:1: zzzzzz: unknown key 'zzzzzz'"));
}

TEST(ServiceConfig, UnknownToolReferenceWithDidYouMean) {
  ConfigResult r = parse(R"(models:
  m1: {provider: sim}
tools:
  search: {type: native}
  fetch: {type: native}
agents:
  support:
    models: [m1]
    tools: [search, fetch, serch]
)");
  EXPECT_THAT(error_lines(r),
              ElementsAre("nines.yaml:9:28: agents.support.tools[2]: unknown tool 'serch' (did you mean 'search'?)"));
}

TEST(ServiceConfig, ReferencesAreChecked) {
  ConfigResult r = parse(R"(models:
  primary: {provider: sim}
tools:
  t1: {type: http, url: "http://127.0.0.1:1/a", fallback: t9}
  t2: {type: http, url: "http://127.0.0.1:1/b", fallback: t2}
agents:
  a1:
    models: [primary, primry]
    mcp_servers: [fs]
  a2:
    models: [primary]
supervision:
  groups:
    g1: {agents: [a1, a3]}
    g2: {agents: [a1]}
)");
  EXPECT_THAT(error_lines(r),
              ElementsAre("nines.yaml:4:59: tools.t1.fallback: unknown tool 't9' (did you mean 't1'?)",
                          "nines.yaml:5:59: tools.t2.fallback: a tool cannot be its own fallback",
                          "nines.yaml:8:23: agents.a1.models[1]: unknown model 'primry' (did you mean 'primary'?)",
                          "nines.yaml:9:19: agents.a1.mcp_servers[0]: unknown MCP server 'fs'",
                          "nines.yaml:14:23: supervision.groups.g1.agents[1]: unknown agent 'a3' (did you mean 'a1'?)",
                          "nines.yaml:15:19: supervision.groups.g2.agents[0]: agent 'a1' is already in group 'g1'"));
}

TEST(ServiceConfig, DuplicateNamesAndKeys) {
  ConfigResult r = parse(R"(models:
  m1: {provider: sim}
  m1: {provider: sim}
agents:
  a1:
    models: [m1, m1]
    models: [m1]
)");
  EXPECT_THAT(error_lines(r), ElementsAre("nines.yaml:3:3: models.m1: duplicate name 'm1'",
                                          "nines.yaml:6:18: agents.a1.models[1]: 'm1' is listed twice",
                                          "nines.yaml:7:5: agents.a1.models: duplicate key 'models'"));
}

TEST(ServiceConfig, RequiredKeys) {
  EXPECT_THAT(error_lines(parse("store: {sqlite: {path: x.db}}\n")),
              ElementsAre("nines.yaml:1:1: models: required key 'models' is missing (at least one model)",
                          "nines.yaml:1:1: agents: required key 'agents' is missing (at least one agent)"));
  EXPECT_THAT(error_lines(parse("models:\n  m1: {model: x}\nagents:\n  a1: {tools: []}\n")),
              ElementsAre("nines.yaml:2:7: models.m1.provider: required key 'provider' is missing (openai, "
                          "anthropic or sim)",
                          "nines.yaml:4:7: agents.a1.models: required key 'models' is missing (the model chain, "
                          "primary first)"));
}

TEST(ServiceConfig, TypesAndRanges) {
  ConfigResult r = parse(R"(models:
  m1:
    provider: sim
    context_window_tokens: many
    max_output_tokens: -5
    retry: {max_attempts: 0, backoff: {base: 10x}}
    breaker: {failure_rate_threshold: 1.5, open_duration_jitter: -0.1, open_duration: 0s}
    timeouts: {attempt: [1]}
agents:
  a1:
    models: m1
    max_parallel_tools: 0
    sleep_tool: yes
    mode: always
server:
  port: 70000
  max_body_bytes: 12XB
)");
  EXPECT_THAT(
      error_lines(r),
      ElementsAre(
          "nines.yaml:4:28: models.m1.context_window_tokens: expected a whole number, got 'many'",
          "nines.yaml:5:24: models.m1.max_output_tokens: must be from 1 to 9223372036854775807, got '-5'",
          "nines.yaml:6:27: models.m1.retry.max_attempts: must be from 1 to 100, got '0'",
          "nines.yaml:6:46: models.m1.retry.backoff.base: expected a duration like '250ms', '30s' or '2m', got '10x'",
          "nines.yaml:7:39: models.m1.breaker.failure_rate_threshold: must be in (0, 1], got '1.5'",
          "nines.yaml:7:66: models.m1.breaker.open_duration_jitter: must be in [0, 1], got '-0.1'",
          "nines.yaml:7:87: models.m1.breaker.open_duration: must be a positive duration, got '0s'",
          "nines.yaml:8:25: models.m1.timeouts.attempt: expected a duration, got a list",
          "nines.yaml:11:13: agents.a1.models: expected a list, got a scalar",
          "nines.yaml:12:25: agents.a1.max_parallel_tools: must be from 1 to 1024, got '0'",
          "nines.yaml:13:17: agents.a1.sleep_tool: expected true or false, got 'yes'",
          "nines.yaml:14:11: agents.a1.mode: expected one of on_demand, always_on, got 'always' (did you mean "
          "'always_on'?)",
          "nines.yaml:16:9: server.port: must be from 0 to 65535, got '70000'",
          "nines.yaml:17:19: server.max_body_bytes: expected a size like '16MiB', '64KiB' or a number of bytes, got "
          "'12XB'"));
}

TEST(ServiceConfig, SeveralErrorsAtOnceInFileOrder) {
  ConfigResult r = parse(R"(models:
  m1: {provider: simm}
agents:
  a1: {models: [m2], max_output_tokens: 0}
logging: {level: loud}
)");
  EXPECT_FALSE(r.config.has_value());
  EXPECT_THAT(
      error_lines(r),
      ElementsAre("nines.yaml:2:18: models.m1.provider: expected one of openai, anthropic, sim, got 'simm' (did "
                  "you mean 'sim'?)",
                  "nines.yaml:4:17: agents.a1.models[0]: unknown model 'm2' (did you mean 'm1'?)",
                  "nines.yaml:4:41: agents.a1.max_output_tokens: must be from 1 to 9223372036854775807, got '0'",
                  "nines.yaml:5:18: logging.level: expected one of debug, info, notice, warning, error, "
                  "critical, off, got 'loud'"));
}

TEST(ServiceConfig, ReferenceAndTypeErrorsTogether) {
  // A model whose own keys are wrong still counts as defined: no false "unknown model".
  ConfigResult r = parse("models:\n  m1: {provider: simm}\nagents:\n  a1: {models: [m1, m2], max_parallel_tools: x}\n");
  EXPECT_THAT(
      error_lines(r),
      ElementsAre("nines.yaml:2:18: models.m1.provider: expected one of openai, anthropic, sim, got 'simm' (did "
                  "you mean 'sim'?)",
                  "nines.yaml:4:21: agents.a1.models[1]: unknown model 'm2' (did you mean 'm1'?)",
                  "nines.yaml:4:46: agents.a1.max_parallel_tools: expected a whole number, got 'x'"));
}

TEST(ServiceConfig, Interpolation) {
  ConfigResult r = parse(R"(store:
  sqlite: {path: "${DATA_DIR}/nines.db"}
models:
  m1:
    provider: openai
    base_url: http://${HOST}:8000/v1
    model: "$${literal}"
    api_key: ${OPENAI_KEY}
agents:
  a1: {models: [m1], system_prompt: "cost: $5, ${PROMPT_SUFFIX}"}
)",
                         {{"DATA_DIR", "/var/lib/nines"}, {"HOST", "10.0.0.2"}, {"PROMPT_SUFFIX", "be brief"}});
  ASSERT_TRUE(r.ok()) << r.error_text();
  EXPECT_EQ(r.config->store.sqlite_path, "/var/lib/nines/nines.db");
  EXPECT_EQ(r.config->models[0].base_url, "http://10.0.0.2:8000/v1");
  EXPECT_EQ(r.config->models[0].model, "${literal}");
  EXPECT_EQ(r.config->models[0].api_key.reveal(), kSecretValue);
  EXPECT_EQ(r.config->agents[0].options.system_prompt, "cost: $5, be brief");
}

TEST(ServiceConfig, InterpolationErrors) {
  ConfigResult r = parse(R"(models:
  m1: {provider: sim, model: "${NOPE}"}
  m2: {provider: sim, model: "${unterminated"}
  m3: {provider: sim, model: "${1BAD}"}
agents:
  a1: {models: [m1]}
)");
  EXPECT_THAT(error_lines(r), ElementsAre("nines.yaml:2:30: models.m1.model: undefined environment variable 'NOPE'",
                                          "nines.yaml:3:30: models.m2.model: unterminated '${' (write '$${' for a "
                                          "literal '${')",
                                          "nines.yaml:4:30: models.m3.model: invalid variable name in '${1BAD}': use "
                                          "[A-Za-z_][A-Za-z0-9_]*"));
}

TEST(ServiceConfig, ApiKeyFromANamedVariable) {
  ConfigResult r = parse(R"(models:
  m1: {provider: openai, model: gpt-4o, api_key_env: OPENAI_KEY}
  m2: {provider: anthropic, model: claude, api_key_env: ANTHROPIC_KEY}
agents:
  a1: {models: [m1, m2]}
)");
  EXPECT_THAT(error_lines(r),
              ElementsAre("nines.yaml:3:57: models.m2.api_key_env: environment variable 'ANTHROPIC_KEY' is not set"));
  ConfigResult ok = parse(R"(models:
  m1: {provider: openai, model: gpt-4o, api_key_env: OPENAI_KEY}
agents:
  a1: {models: [m1]}
)");
  ASSERT_TRUE(ok.ok()) << ok.error_text();
  EXPECT_EQ(ok.config->models[0].api_key.reveal(), kSecretValue);
  EXPECT_EQ(ok.config->models[0].api_key_env, "OPENAI_KEY");
}

TEST(ServiceConfig, SecretsAreNeverPrinted) {
  // A valid config with secrets in every secret field: the debug print redacts them.
  ConfigResult r = parse(R"(store:
  postgres: {url: "postgresql://nines:${OPENAI_KEY}@db/nines"}
models:
  m1:
    provider: openai
    api_key: ${OPENAI_KEY}
    headers: {X-Org: "${OPENAI_KEY}"}
tools:
  t1:
    type: http
    url: http://127.0.0.1:1/x
    headers: {Authorization: "Bearer ${OPENAI_KEY}"}
mcp_servers:
  s1: {command: [srv], env: {TOKEN: "${OPENAI_KEY}"}}
agents:
  a1: {models: [m1], tools: [t1], mcp_servers: [s1]}
server:
  address: 0.0.0.0
  auth:
    tokens:
      - {env: OPENAI_KEY, scope: operator}
      - {file: /run/token, scope: read}
)");
  ASSERT_TRUE(r.ok()) << r.error_text();
  const std::string dump = debug_string(*r.config);
  EXPECT_THAT(dump, Not(HasSubstr(kSecretValue)));
  EXPECT_THAT(dump, HasSubstr("[redacted]"));
  EXPECT_EQ(r.config->server.tokens.size(), 2u);
  EXPECT_EQ(r.config->server.tokens[1].token.reveal(), kSecretValue);
  std::ostringstream s;
  s << r.config->models[0].api_key;
  EXPECT_EQ(s.str(), "[redacted]");
  EXPECT_EQ(to_string(r.config->store.postgres_url), "[redacted]");

  // Secrets under a wrong key, of a wrong type or out of range: no message holds the value.
  // (max_output_tokens holds the secret's value written literally: a value equal to a secret
  // read from the environment is scrubbed from every message.)
  const std::string literal = kSecretValue;
  ConfigResult bad = parse(R"(models:
  m1:
    provider: openai
    api_kee: )" + literal + R"(
    api_key: {value: )" + literal +
                           R"(}
    context_window_tokens: ${OPENAI_KEY}
    max_output_tokens: ")" +
                           literal + R"("
    base_url: ${OPENAI_KEY}
agents:
  a1: {models: [m1], mode: "${OPENAI_KEY}"}
server:
  port: ${OPENAI_KEY}
  auth:
    tokens: [{env: OPENAI_KEY, file: /run/token}, {env: OPENAI_KEY, scope: "${OPENAI_KEY}"}]
)");
  ASSERT_FALSE(bad.ok());
  EXPECT_GE(bad.errors.size(), 7u) << bad.error_text();
  EXPECT_THAT(bad.error_text(), Not(HasSubstr("VERY-SECRET")));
  EXPECT_THAT(bad.error_text(), HasSubstr("'${OPENAI_KEY}'"));
}

TEST(ServiceConfig, NonLoopbackNeedsATokenAndTokensAreLongEnough) {
  EXPECT_THAT(error_lines(parse(kMinimal + "server: {address: 0.0.0.0}\n")),
              ElementsAre("nines.yaml:7:19: server.address: a non-loopback address needs at least one token in "
                          "server.auth.tokens"));
  EXPECT_THAT(error_lines(parse(kMinimal + "server: {auth: {tokens: [{env: SHORT}]}}\n", {{"SHORT", "abc"}})),
              ElementsAre("nines.yaml:7:26: server.auth.tokens[0]: the token is shorter than 16 characters"));
  EXPECT_THAT(error_lines(parse(kMinimal + "server: {auth: {tokens: [{file: /missing}]}}\n")),
              ElementsAre("nines.yaml:7:33: server.auth.tokens[0].file: cannot read the token file: cannot open "
                          "'/missing'"));
}

TEST(ServiceConfig, SimConfigErrorsComeFromTheSimParser) {
  ConfigResult r = parse(R"(models:
  m1:
    provider: sim
    sim:
      faults: {rate_limited: {probability: 1.5}}
  m2:
    provider: openai
    sim: {seed: 1}
agents:
  a1: {models: [m1]}
)");
  ASSERT_EQ(r.errors.size(), 2u) << r.error_text();
  EXPECT_EQ(r.errors[0].path, "models.m1.sim");
  EXPECT_EQ(r.errors[0].line, 5);
  EXPECT_THAT(r.errors[0].message, HasSubstr("probability"));
  EXPECT_EQ(r.errors[1].to_string(),
            "nines.yaml:8:10: models.m2.sim: only a model with provider: sim has a sim config");
}

TEST(ServiceConfig, HttpToolChecks) {
  ConfigResult r = parse(kMinimal + R"(tools:
  t1: {type: http, url: "ftp://x", method: GET, body: "{}"}
  t2: {type: http, url: "http://h/x", nature: checkable}
  t3: {type: native, timeout: 5s}
  bad name: {type: native}
)");
  EXPECT_THAT(
      error_lines(r),
      ElementsAre("nines.yaml:8:25: tools.t1.url: expected an http:// or https:// URL template, got 'ftp://x'",
                  "nines.yaml:8:55: tools.t1.body: a GET tool has no body",
                  "nines.yaml:9:47: tools.t2.check_url: a checkable tool needs check_url",
                  "nines.yaml:10:31: tools.t3.timeout: a native tool takes only 'type' (its spec is in its code)",
                  "nines.yaml:11:3: tools.bad name: invalid name 'bad name': use 1 to 64 of [a-zA-Z0-9_-]"));
}

TEST(ServiceConfig, FullMappingOntoTheOptionStructs) {
  ConfigResult r = parse(R"(models:
  m1:
    provider: anthropic
    base_url: https://example.test
    model: claude
    context_window_tokens: 200000
    max_output_tokens: 8192
    price: {input_per_mtok: 3, output_per_mtok: 15}
    limits: {requests_per_minute: 50, tokens_per_minute: 40000, max_concurrent_calls: 8, max_limiter_wait: 2s}
    timeouts: {attempt: 45s, connect: 3s, first_byte: 20s, idle: 10s, total: 5m}
    retry: {max_attempts: 5, max_total_time: 2m, max_retry_after: 30s, backoff: {kind: exponential, base: 1s, cap: 1m30s, multiplier: 3}}
    breaker: {window: time, window_duration: 30s, window_buckets: 6, minimum_calls: 5, failure_rate_threshold: off, consecutive_failures: 4, open_duration: 5s, max_open_duration: 2m}
tools:
  t1:
    type: http
    method: POST
    url: http://127.0.0.1:9/orders/{id}
    body: '{"id": "{id}"}'
    nature: checkable
    check_url: http://127.0.0.1:9/orders/{id}/applied
    timeout: 1500ms
    retry: {max_attempts: 2}
    requires_approval: true
    parameters: '{"type":"object","properties":{"id":{"type":"string"}}}'
mcp_servers:
  s1:
    command: [node, srv.js]
    tool_prefix: s_
    limits: {max_resident: 256MiB, cpu_seconds: 60}
    timeouts: {call: 12s}
    nature: {write_file: unsafe}
agents:
  a1:
    models: [m1]
    tools: [t1, s_read]
    mcp_servers: [s1]
    guards:
      budget: {max_steps: 7, max_model_calls: 9, max_tokens: 10000, max_cost_usd: 1.25, max_wall_time: 1h}
      loop: {max_identical_calls: 0, stop_on_repeated_error: false, max_turns_without_progress: 2, final_answer: false}
      max_invalid_tool_calls: 1
    mode: always_on
    always_on: {queue_capacity: 3, max_tasks: 0, restart_intensity: 2, restart_period: 1m, recycle: {resident_bytes: 1GiB, open_fds: 200}}
supervision:
  groups:
    g: {agents: [a1], restart_intensity: 7, restart_period: 3s, restart_min_delay: 0ms, restart_max_delay: 1s}
logging: {level: debug, format: human}
)");
  ASSERT_TRUE(r.ok()) << r.error_text();
  const ModelConfig& m = r.config->models[0];
  EXPECT_EQ(m.provider, Provider::kAnthropic);
  EXPECT_EQ(m.price.output_per_mtok, 15);
  EXPECT_EQ(m.tokens_per_minute, 40000u);
  EXPECT_EQ(m.max_limiter_wait, std::chrono::seconds(2));
  EXPECT_EQ(m.attempt_timeout, std::chrono::seconds(45));
  ASSERT_TRUE(m.http_timeouts.has_value());
  EXPECT_EQ(m.http_timeouts->total, std::chrono::minutes(5));
  EXPECT_EQ(m.http_timeouts->idle, std::chrono::seconds(10));
  EXPECT_EQ(m.retry.max_attempts, 5);
  EXPECT_EQ(m.retry.backoff.kind, Backoff::Kind::kExponential);
  EXPECT_EQ(m.retry.backoff.cap, std::chrono::seconds(90));
  EXPECT_EQ(m.retry.backoff.multiplier, 3);
  ASSERT_TRUE(m.breaker.has_value());
  EXPECT_EQ(m.breaker->window, BreakerWindow::kTimeBased);
  EXPECT_FALSE(m.breaker->failure_rate_threshold.has_value());
  EXPECT_EQ(m.breaker->consecutive_failures, 4u);
  EXPECT_FALSE(m.sim.has_value());
  const ToolConfig& t = r.config->tools[0];
  EXPECT_EQ(t.http.method, agent::HttpMethod::kPost);
  EXPECT_EQ(t.spec.nature, EffectNature::kCheckable);
  EXPECT_EQ(t.spec.timeout, std::chrono::milliseconds(1500));
  ASSERT_TRUE(t.spec.retry.has_value());
  EXPECT_EQ(t.spec.retry->max_attempts, 2);
  EXPECT_TRUE(t.spec.requires_approval);
  EXPECT_EQ(t.spec.parameters_schema_json, R"({"properties":{"id":{"type":"string"}},"type":"object"})");
  const agent::McpServerOptions& s = r.config->mcp_servers[0].options;
  EXPECT_EQ(s.limits.max_resident_bytes, 256u << 20);
  EXPECT_EQ(s.call_timeout, std::chrono::seconds(12));
  EXPECT_EQ(s.nature.at("write_file"), EffectNature::kUnsafe);
  const AgentConfig& a = r.config->agents[0];
  EXPECT_THAT(a.options.tools, ElementsAre("t1", "s_read"));
  EXPECT_EQ(a.options.budget.max_cost_usd, 1.25);
  EXPECT_EQ(a.options.budget.max_wall_time, std::chrono::hours(1));
  EXPECT_FALSE(a.options.loop.final_answer);
  EXPECT_EQ(a.mode, AgentMode::kAlwaysOn);
  EXPECT_EQ(a.always_on.agent, "a1");
  EXPECT_EQ(a.always_on.queue_capacity, 3u);
  ASSERT_EQ(a.watermarks.size(), 2u);
  EXPECT_EQ(a.watermarks[0].name, "resident_bytes");
  EXPECT_EQ(a.watermarks[0].limit, std::int64_t{1} << 30);
  EXPECT_EQ(a.group, "g");
  EXPECT_EQ(r.config->groups[0].options.restart_intensity, 7);
  EXPECT_EQ(r.config->groups[0].options.restart_min_delay, Duration::zero());
  EXPECT_EQ(r.config->logging.level, LogLevel::kDebug);
  EXPECT_EQ(r.config->logging.format, LogFormat::kHuman);
}

TEST(ServiceConfig, DurationsAndSizes) {
  EXPECT_THAT(parse_duration("250ms"), IsOkAndHolds(Duration(std::chrono::milliseconds(250))));
  EXPECT_THAT(parse_duration("2m"), IsOkAndHolds(Duration(std::chrono::minutes(2))));
  EXPECT_THAT(parse_duration("1m30s"), IsOkAndHolds(Duration(std::chrono::seconds(90))));
  EXPECT_THAT(parse_duration("1.5s"), IsOkAndHolds(Duration(std::chrono::milliseconds(1500))));
  EXPECT_THAT(parse_duration("0"), IsOkAndHolds(Duration::zero()));
  EXPECT_FALSE(parse_duration("30").ok());
  EXPECT_FALSE(parse_duration("-1s").ok());
  EXPECT_FALSE(parse_duration("1d").ok());
  EXPECT_FALSE(parse_duration("99999999999h").ok());
  EXPECT_THAT(parse_size("16MiB"), IsOkAndHolds(std::uint64_t{16} << 20));
  EXPECT_THAT(parse_size("64KiB"), IsOkAndHolds(std::uint64_t{64} << 10));
  EXPECT_THAT(parse_size("1000"), IsOkAndHolds(std::uint64_t{1000}));
  EXPECT_THAT(parse_size("10MB"), IsOkAndHolds(std::uint64_t{10'000'000}));
  EXPECT_FALSE(parse_size("1.5MiB").ok());
  EXPECT_FALSE(parse_size("99999999999999999999").ok());
  EXPECT_FALSE(parse_size("20000000000GiB").ok());
}

TEST(ServiceConfig, SampleConfigParses) {
  ConfigResult r = load_config(std::string(NINES_SOURCE_DIR) + "/config/nines.yaml", fake_env());
  ASSERT_TRUE(r.ok()) << r.error_text();
  const ServiceConfig& c = *r.config;
  ASSERT_EQ(c.models.size(), 2u);
  EXPECT_EQ(c.models[0].name, "sim-primary");
  ASSERT_TRUE(c.models[0].sim.has_value());
  EXPECT_GT(c.models[0].sim->faults.of(llm::SimFault::kRateLimited), 0);
  EXPECT_EQ(c.tools.size(), 2u);
  EXPECT_EQ(c.mcp_servers.size(), 1u);
  ASSERT_EQ(c.agents.size(), 2u);
  EXPECT_THAT(c.agents[0].models, ElementsAre("sim-primary", "sim-fallback"));
  EXPECT_EQ(c.find_agent("librarian")->mode, AgentMode::kAlwaysOn);
  ASSERT_EQ(c.groups.size(), 2u);
  EXPECT_EQ(c.find_agent("support")->group, "front");
  EXPECT_EQ(c.find_agent("librarian")->group, "back");
}

TEST(ServiceConfig, AliasBombIsBounded) {
  std::string text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  for (char c = 'b'; c <= 'j'; ++c) {
    std::string prev(1, static_cast<char>(c - 1));
    text += std::string(1, c) + ": &" + c + " [*" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev +
            ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + "]\n";
  }
  text += "models:\n  m1:\n    provider: sim\n    sim: {scenario: *j}\nagents:\n  a1: {models: [m1]}\n";
  ConfigResult r = parse(text);
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(r.error_text(), HasSubstr("too large"));
}

TEST(ServiceConfig, SelfReferentialAliasIsAnError) {
  ConfigResult r = parse("models:\n  m: {provider: sim, sim: &b {scenario: [*b]}}\nagents:\n  a: {models: [m]}\n");
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(r.error_text(), HasSubstr("nested too deeply"));
}

TEST(ServiceConfig, NulBytesInvalidUtf8AndDeepNestingAreErrors) {
  EXPECT_THAT(error_lines(parse(std::string("models: {}\0", 12))),
              ElementsAre("nines.yaml: the file holds a NUL byte: not a YAML text"));
  EXPECT_THAT(error_lines(parse("models: {}\nagents: {a: \"caf\xc3\xa9 \xff\"}\n")),
              ElementsAre("nines.yaml:2:20: the file is not valid UTF-8"));
  EXPECT_THAT(error_lines(parse("x: \xe2\x82")), ElementsAre("nines.yaml:1:4: the file is not valid UTF-8"));
  EXPECT_THAT(error_lines(parse("x: \xed\xa0\x80\n")), ElementsAre("nines.yaml:1:4: the file is not valid UTF-8"));
  ConfigResult deep = parse("a: " + std::string(5000, '[') + std::string(5000, ']') + "\n");
  EXPECT_FALSE(deep.ok());
  EXPECT_THAT(deep.error_text(), HasSubstr("invalid YAML"));
}

}  // namespace
}  // namespace nines::service
