// `nines sim-server [--config FILE] [--port N] [--bind ADDR] [--fault-key request|position]`: serves the simulated
// model `sim` (docs/sim.md) as an OpenAI-compatible API until SIGINT or SIGTERM. Prints "sim server listening on
// http://ADDR:PORT/v1" once it listens, then one line of counters when it stops. Without --config: the default
// scenario, no faults.
#include "sim_server_cmd.hpp"

#include <signal.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "nines/core/environment.hpp"
#include "nines/llm/sim_server.hpp"

namespace nines::cli {

int run_sim_server(const SimServerCmdOptions& o) {
  std::string config = "{}";
  if (!o.config_path.empty()) {
    std::ifstream in(o.config_path);
    if (!in) {
      std::fprintf(stderr, "nines sim-server: cannot read --config %s\n", o.config_path.c_str());
      return 2;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    config = ss.str();
  }
  llm::SimServerOptions options;
  options.port = o.port;
  options.bind_address = o.bind_address;
  auto parsed = llm::parse_sim_config(config);
  if (!parsed.ok()) {
    std::fprintf(stderr, "nines sim-server: %s\n", parsed.error().message().c_str());
    return 2;
  }
  if (o.fault_key == "position") parsed->fault_key = llm::SimFaultKey::kPosition;
  if (o.fault_key == "request") parsed->fault_key = llm::SimFaultKey::kRequest;
  auto sim = llm::SimModel::create(std::move(parsed).value());
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
