// Providers from configuration: see include/nines/llm/provider.hpp.
#include "nines/llm/provider.hpp"

#include <cstdlib>
#include <utility>

#include "nines/llm/anthropic.hpp"
#include "nines/llm/client.hpp"
#include "nines/llm/openai.hpp"

namespace nines::llm {

namespace {

Error invalid(const ProviderConfig& c, const std::string& what) {
  return Error(ErrorKind::kInvalidArgument, "provider '" + c.name + "': " + what);
}

bool is_public_endpoint(std::string_view url) {
  return url.find("://api.openai.com") != std::string_view::npos ||
         url.find("://api.anthropic.com") != std::string_view::npos;
}

}  // namespace

EnvLookup process_env() {
  return [](std::string_view name) -> std::optional<std::string> {
    const char* v = std::getenv(std::string(name).c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

Result<std::shared_ptr<ChatModel>> make_provider(const ProviderConfig& config, net::HttpClient& http,
                                                 const EnvLookup& env) {
  if (config.name.empty()) return Error(ErrorKind::kInvalidArgument, "provider: name is empty");
  if (config.base_url.empty()) return invalid(config, "base_url is empty");
  if (config.base_url.rfind("http://", 0) != 0 && config.base_url.rfind("https://", 0) != 0) {
    return invalid(config, "base_url must start with http:// or https://, got '" + config.base_url + "'");
  }
  if (!config.api_key.empty() && !config.api_key_env.empty()) {
    return invalid(config, "set api_key or api_key_env, not both");
  }
  std::string key = config.api_key;
  if (!config.api_key_env.empty()) {
    std::optional<std::string> v = env(config.api_key_env);
    if (!v || v->empty()) {
      return invalid(config, "the environment variable " + config.api_key_env + " (api_key_env) is " +
                                 (v ? "empty" : "not set"));
    }
    key = std::move(*v);
  }
  if (key.empty() && is_public_endpoint(config.base_url)) {
    return invalid(config, config.base_url + " needs an API key: set api_key_env");
  }
  Result<std::unique_ptr<Codec>> codec = Error(ErrorKind::kInternal, "no codec");
  switch (config.api) {
    case Provider::kOpenAi:
      codec = make_openai_codec({.base_url = config.base_url,
                                 .api_key = key,
                                 .extra_headers = config.extra_headers,
                                 .use_max_completion_tokens = config.use_max_completion_tokens});
      break;
    case Provider::kAnthropic:
      codec = make_anthropic_codec(
          {.base_url = config.base_url, .api_key = key, .extra_headers = config.extra_headers});
      break;
  }
  if (!codec.ok()) return codec.error().with_context("provider '" + config.name + "'");
  ModelClientOptions options;
  options.timeouts = config.timeouts;
  return std::shared_ptr<ChatModel>(std::make_shared<ModelClient>(std::move(codec).value(), http, options));
}

}  // namespace nines::llm
