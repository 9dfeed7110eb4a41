// Providers from configuration: see include/nines/llm/provider.hpp.
#include "nines/llm/provider.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <utility>

#include "nines/llm/anthropic.hpp"
#include "nines/llm/client.hpp"
#include "nines/llm/openai.hpp"

namespace nines::llm {

namespace {

Error invalid(const ProviderConfig& c, const std::string& what) {
  return Error(ErrorKind::kInvalidArgument, "provider '" + c.name + "': " + what);
}

// A POSIX environment variable name: letters, digits and '_', not starting with a digit.
bool is_variable_name(std::string_view s) {
  if (s.empty() || (s[0] >= '0' && s[0] <= '9')) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// Names are shown in errors only when written as variable names are (OPENAI_API_KEY): a key
// pasted in their place (a common slip) must not be echoed, and keys are mixed or lower case.
bool is_shown_name(std::string_view s) {
  return is_variable_name(s) && std::none_of(s.begin(), s.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

// The host of base_url as libcurl reads it (lower case, one trailing dot dropped: "API.OpenAI.com."
// is api.openai.com), or curl's reason for refusing the URL. curl's parser rather than a
// substring test: curl is what sends the requests, so the host checked is the host the key
// goes to; a look-alike (api.openai.com.example.net) or userinfo (api.openai.com@other) is
// judged by its real host.
Result<std::string> url_host(const std::string& url) {
  std::unique_ptr<CURLU, decltype(&curl_url_cleanup)> u(curl_url(), &curl_url_cleanup);
  if (!u) return Error(ErrorKind::kInternal, "curl_url: out of memory");
  CURLUcode rc = curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0);
  char* raw = nullptr;
  if (rc == CURLUE_OK) rc = curl_url_get(u.get(), CURLUPART_HOST, &raw, 0);
  if (rc != CURLUE_OK) return Error(ErrorKind::kInvalidArgument, curl_url_strerror(rc));
  std::unique_ptr<char, decltype(&curl_free)> host_part(raw, &curl_free);
  std::string host(host_part.get());
  std::transform(host.begin(), host.end(), host.begin(),
                 [](unsigned char c) { return static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c); });
  if (!host.empty() && host.back() == '.') host.pop_back();
  return host;
}

// The hosts of the public provider APIs, which refuse every call without a key: starting
// without one is a configuration error, better reported when the provider is made.
bool is_public_host(std::string_view host) { return host == "api.openai.com" || host == "api.anthropic.com"; }

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
    // A URL with another scheme is shown; anything else may be a key put in the wrong field.
    if (config.base_url.find("://") == std::string::npos) {
      return invalid(config,
                     "base_url must start with http:// or https://; the value given has no scheme (not shown: "
                     "it may be a key)");
    }
    return invalid(config,
                   "base_url must start with http:// or https://, got '" + redact_secrets(config.base_url) + "'");
  }
  Result<std::string> host = url_host(config.base_url);
  if (!host.ok()) {
    // curl's reason says which part is wrong; the URL is not shown (a key may be in it).
    return invalid(config, "base_url is not a URL libcurl can parse: " + host.error().message() +
                               " (the value is not shown: it may hold a key)");
  }
  if (!config.api_key.empty() && !config.api_key_env.empty()) {
    return invalid(config, "set api_key or api_key_env, not both");
  }
  std::string key = config.api_key;
  if (!config.api_key_env.empty()) {
    if (!is_variable_name(config.api_key_env)) {
      return invalid(config,
                     "api_key_env must name an environment variable (letters, digits and '_'); the value "
                     "given is not a name (not shown: it may be the key itself)");
    }
    std::optional<std::string> v = env(config.api_key_env);
    if (!v || v->empty()) {
      const std::string which = is_shown_name(config.api_key_env)
                                    ? config.api_key_env
                                    : "named by api_key_env (not shown: not in upper case, it may be a key)";
      return invalid(config, "the environment variable " + which + " (api_key_env) is " + (v ? "empty" : "not set"));
    }
    key = std::move(*v);
  }
  // A key is one printable token; a line break or a space (a secret made from a file keeps
  // its final newline) would make every call fail as malformed, far from the cause.
  if (auto bad = std::find_if(key.begin(), key.end(), [](unsigned char c) { return c <= ' ' || c >= 0x7f; });
      bad != key.end()) {
    const std::string from =
        config.api_key_env.empty()
            ? std::string("api_key")
            : "the environment variable " +
                  (is_shown_name(config.api_key_env) ? config.api_key_env : std::string("named by api_key_env"));
    const char* what = (*bad == '\n' || *bad == '\r') ? "a line break" : "a space or control character";
    return invalid(config, "the key in " + from + " contains " + what + " at byte " +
                               std::to_string(bad - key.begin() + 1) + " of " + std::to_string(key.size()) +
                               " (not shown); a key is one printable token");
  }
  // Only the host is shown: the rest of the URL (userinfo, query) may hold a secret.
  if (key.empty() && is_public_host(*host)) {
    return invalid(config, "base_url's host " + *host + " needs an API key: set api_key_env");
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
      codec =
          make_anthropic_codec({.base_url = config.base_url, .api_key = key, .extra_headers = config.extra_headers});
      break;
  }
  if (!codec.ok()) return codec.error().with_context("provider '" + config.name + "'");
  ModelClientOptions options;
  options.timeouts = config.timeouts;
  return std::shared_ptr<ChatModel>(std::make_shared<ModelClient>(std::move(codec).value(), http, options));
}

}  // namespace nines::llm
