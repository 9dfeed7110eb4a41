// nines/llm/provider.hpp: a model reached over HTTP, made from configuration.
//
// One ProviderConfig names an API (OpenAI-compatible Chat Completions or Anthropic
// Messages), a base URL, where its API key comes from and its HTTP timeouts. make_provider
// builds the codec and a ModelClient (client.hpp) on a shared HttpClient, as a ChatModel the
// router (router.hpp) can put in a chain.
//
//   llm::ProviderConfig cfg{.name = "openai", .api = llm::Provider::kOpenAi,
//                           .base_url = "https://api.openai.com/v1", .api_key_env = "OPENAI_API_KEY"};
//   Result<std::shared_ptr<llm::ChatModel>> m = llm::make_provider(cfg, *http);
//
// API keys: from the named environment variable (api_key_env: the usual way), or given
// inline (api_key: for keys a config loader already resolved from a secret store). A key
// never appears in errors, logs or metrics: errors name the variable, never its value, and
// the codecs redact the key from anything a provider echoes back. Nor is a key echoed that
// was pasted in the wrong field: an api_key_env that is not an upper-case variable name, or a
// base_url without a scheme, is refused without being shown.
//
// Thread-safety: make_provider is a plain function; the model it returns is thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/llm/errors.hpp"
#include "nines/llm/model.hpp"
#include "nines/llm/wire.hpp"
#include "nines/net/http_client.hpp"

namespace nines::llm {

struct ProviderConfig {
  // Names the provider in errors. Required.
  std::string name;
  Provider api = Provider::kOpenAi;
  // OpenAI-compatible: up to and including the version path ("https://api.openai.com/v1",
  // "http://127.0.0.1:8000/v1"); Anthropic: "https://api.anthropic.com". Required.
  std::string base_url;
  // The environment variable holding the key (e.g. "OPENAI_API_KEY"). Set and empty or
  // missing in the environment: an error naming the variable.
  std::string api_key_env;
  // The key itself, when a loader resolved it already. At most one of api_key and
  // api_key_env. Neither: no credential is sent (local servers: vLLM, llama.cpp, Ollama, sim),
  // which is an error for the public OpenAI and Anthropic endpoints.
  std::string api_key;
  // Sent with every request after the standard ones (e.g. OpenAI-Organization).
  Headers extra_headers;
  // nullopt: the HttpClient's defaults.
  std::optional<net::HttpTimeouts> timeouts;
  // OpenAI-compatible only: send max_completion_tokens instead of max_tokens.
  bool use_max_completion_tokens = false;
};

// Reads an environment variable; nullopt when unset. Tests pass their own.
using EnvLookup = std::function<std::optional<std::string>(std::string_view name)>;

// The process environment (getenv).
EnvLookup process_env();

// kInvalidArgument naming the provider and the field: an empty name or base_url, both or an
// unset key source, a missing key for api.openai.com / api.anthropic.com (base_url's host as
// libcurl reads it, compared exactly, in any case, with or without a trailing dot), a key with
// a space, line break or other control character (where, never the key), a URL that is not
// http(s) or that libcurl cannot parse (curl's reason, never the URL).
Result<std::shared_ptr<ChatModel>> make_provider(const ProviderConfig& config, net::HttpClient& http,
                                                 const EnvLookup& env = process_env());

}  // namespace nines::llm
