// libFuzzer target: parse_config on arbitrary bytes must not crash, hang or leak (scripts/fuzz.sh).
// The environment is a fixed map (no getenv) and token files are never read.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "nines/service/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  nines::service::ConfigSources sources;
  sources.env = [](const std::string& name) -> std::optional<std::string> {
    if (name == "KEY") return std::string("fuzz-secret-value-0123456789");
    return std::nullopt;
  };
  sources.read_file = [](const std::string&) -> nines::Result<std::string> {
    return std::string("fuzz-token-file-0123456789");
  };
  std::string_view text(reinterpret_cast<const char*>(data), size);
  nines::service::ConfigResult r = nines::service::parse_config(text, "fuzz.yaml", sources);
  if (r.ok()) (void)nines::service::debug_string(*r.config);
  for (const auto& e : r.errors) (void)e.to_string();
  return 0;
}
