// The nines command line.
//   nines demo runtime [--workers N] [--shards N] [--seconds S] [--threads N]
//   nines demo models [--agents N] [--calls N]
//   nines sim-server [--config FILE] [--port N] [--bind ADDR]
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>

#include "demo_models.hpp"
#include "demo_runtime.hpp"
#include "sim_server_cmd.hpp"

namespace {

constexpr const char* kUsage =
    "usage: nines demo runtime [--workers N] [--shards N] [--seconds S] [--threads N]\n"
    "       nines demo models [--agents N] [--calls N]\n"
    "       nines sim-server [--config FILE] [--port N] [--bind ADDR]\n"
    "\n"
    "  demo runtime   a 3-level supervision tree with 100,000 workers under a crash storm,\n"
    "                 shown live; exits 0 when every crash was recovered\n"
    "  demo models    agents calling a flaky simulated model provider (429s, 5xx, hangs, cut\n"
    "                 streams, malformed JSON, then an outage) through the router, on loopback;\n"
    "                 exits 0 when every call got an answer\n"
    "  sim-server     the simulated model as an OpenAI-compatible API on loopback, with\n"
    "                 seeded faults (docs/sim.md), until Ctrl-C\n";

bool parse_number(std::string_view flag, const char* text, double& out) {
  char* end = nullptr;
  out = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(out > 0)) {
    std::fprintf(stderr, "nines: %.*s needs a positive number, got '%s'\n", static_cast<int>(flag.size()),
                 flag.data(), text);
    return false;
  }
  return true;
}

// Reads "--flag number" pairs from argv[first..]; `apply(flag, value)` takes a known flag and
// returns false for an unknown one. False (after saying why on stderr) on any error.
bool parse_flags(int argc, char** argv, int first, const std::function<bool(std::string_view, double)>& apply) {
  for (int i = first; i < argc; i += 2) {
    std::string_view flag = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "nines: %s needs a value\n%s", argv[i], kUsage);
      return false;
    }
    double v = 0;
    if (!parse_number(flag, argv[i + 1], v)) return false;
    if (!apply(flag, v)) {
      std::fprintf(stderr, "nines: unknown option '%s'\n%s", argv[i], kUsage);
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (std::string_view(argv[1]) == "sim-server") return nines::cli::run_sim_server(argc - 2, argv + 2);
  if (std::string_view(argv[1]) == "demo" && argc >= 3 && std::string_view(argv[2]) == "models") {
    nines::cli::ModelsDemoOptions m;
    bool ok = parse_flags(argc, argv, 3, [&](std::string_view flag, double v) {
      if (flag == "--agents") m.agents = static_cast<std::size_t>(v);
      else if (flag == "--calls") m.calls_per_agent = static_cast<std::size_t>(v);
      else return false;
      return true;
    });
    if (!ok) return 2;
    return nines::cli::run_models_demo(m);
  }
  if (std::string_view(argv[1]) != "demo" || argc < 3 || std::string_view(argv[2]) != "runtime") {
    std::fprintf(stderr, "nines: unknown command '%s'\n%s", argv[1], kUsage);
    return 2;
  }
  nines::cli::RuntimeDemoOptions o;
  bool ok = parse_flags(argc, argv, 3, [&](std::string_view flag, double v) {
    if (flag == "--workers") o.workers = static_cast<std::size_t>(v);
    else if (flag == "--shards") o.shards = static_cast<std::size_t>(v);
    else if (flag == "--seconds") o.seconds = v;
    else if (flag == "--threads") o.threads = static_cast<unsigned>(v);
    else return false;
    return true;
  });
  if (!ok) return 2;
  if (o.shards > o.workers) {
    std::fprintf(stderr, "nines: --shards (%zu) must not exceed --workers (%zu)\n", o.shards, o.workers);
    return 2;
  }
  return nines::cli::run_runtime_demo(o);
}
