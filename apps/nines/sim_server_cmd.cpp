// `nines sim-server [--config FILE] [--port N] [--bind ADDR]`: serves the simulated model
// `sim` (docs/sim.md) as an OpenAI-compatible API until SIGINT or SIGTERM. Prints
// "sim server listening on http://ADDR:PORT/v1" once it listens, then one line of counters
// when it stops. Without --config: the default scenario, no faults.
#include "sim_server_cmd.hpp"

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "nines/core/environment.hpp"
#include "nines/llm/sim_server.hpp"

namespace nines::cli {

namespace {

constexpr const char* kUsage =
    "usage: nines sim-server [--config FILE] [--port N] [--bind ADDR]\n"
    "  serves the simulated model (docs/sim.md) as an OpenAI-compatible API on loopback\n"
    "  --config FILE  the sim's JSON config (scenario, latency, faults); default: no faults\n"
    "  --port N       0 (default): any free port, printed once listening\n"
    "  --bind ADDR    default 127.0.0.1\n";

}  // namespace

int run_sim_server(int argc, char** argv) {
  std::string config = "{}";
  llm::SimServerOptions options;
  for (int i = 0; i < argc; ++i) {
    std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "nines sim-server: %s needs a value\n%s", argv[i], kUsage);
      return 2;
    }
    std::string value = argv[++i];
    if (flag == "--config") {
      std::ifstream in(value);
      if (!in) {
        std::fprintf(stderr, "nines sim-server: cannot read --config %s\n", value.c_str());
        return 2;
      }
      std::stringstream ss;
      ss << in.rdbuf();
      config = ss.str();
    } else if (flag == "--port") {
      char* end = nullptr;
      long port = std::strtol(value.c_str(), &end, 10);
      if (end == value.c_str() || *end != '\0' || port < 0 || port > 65535) {
        std::fprintf(stderr, "nines sim-server: --port must be 0..65535, got '%s'\n", value.c_str());
        return 2;
      }
      options.port = static_cast<std::uint16_t>(port);
    } else if (flag == "--bind") {
      options.bind_address = value;
    } else {
      std::fprintf(stderr, "nines sim-server: unknown option '%s'\n%s", argv[i - 1], kUsage);
      return 2;
    }
  }
  auto sim = llm::SimModel::from_json(config);
  if (!sim.ok()) {
    std::fprintf(stderr, "nines sim-server: %s\n", sim.error().message().c_str());
    return 2;
  }
  // SIGINT/SIGTERM are taken with sigwait below, so they are blocked before any thread starts.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto env = make_real_environment({.workers = 1, .seed = 1});
  auto server = llm::SimServer::start(*env, *sim, options);
  if (!server.ok()) {
    std::fprintf(stderr, "nines sim-server: %s\n", server.error().to_string().c_str());
    return 1;
  }
  std::printf("sim server listening on %s\n", (*server)->base_url().c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  llm::SimServerStats s = (*server)->stats();
  llm::SimCounters c = (*sim)->counters();
  std::printf("sim server stopping (signal %d): %llu requests, %llu calls decided, %llu faults\n", sig,
              static_cast<unsigned long long>(s.requests), static_cast<unsigned long long>(c.calls),
              static_cast<unsigned long long>(c.calls - c.of(llm::SimFault::kNone)));
  (*server)->stop();
  server->reset();
  return 0;
}

}  // namespace nines::cli
