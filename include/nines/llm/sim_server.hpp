// nines/llm/sim_server.hpp: the simulated model `sim` (sim.hpp) served over HTTP on loopback,
// speaking the OpenAI-compatible Chat Completions API.
//
// A SimServer plays each SimModel::handle_http reply back through net::HttpServer: it waits
// the first-byte delay (an environment timer), sends the status and headers, then the whole
// body, or each SSE chunk after its delay, then ends, cuts (abort) or, for a hang, closes the
// connection after the hang without a byte. So tests, benchmarks and the demo run the real
// client path (HttpClient, SSE parser, codec) against every fault the sim injects.
//
//   auto sim = llm::SimModel::from_json(config_json).value();
//   auto server = llm::SimServer::start(env, sim, {}).value();
//   std::string url = server->base_url();     // "http://127.0.0.1:<port>/v1"
//
// Every reply carries `x-sim-server-us`: the server's own time from the request (the handler
// being called) to its response head being sent, injected delay included, so a client can
// tell its own added latency per call. Besides the API it answers, for harnesses:
//   GET  /sim/stats        {"requests": n, "latency_p50_us": .., "latency_p99_us": ..,
//                           "latency_max_us": .., "faults": {"rate_limited": n, ...}}
//                          the server's own time per API request, from the handler being
//                          called to the last byte handed to the connection (injected delays
//                          included), over the requests since the last reset
//   POST /sim/stats/reset  forgets those latencies
// Latencies kept: the last max_latency_samples (a ring); percentiles over them (nearest rank,
// nines/core/percentile.hpp).
//
// Ownership and thread-safety: start() returns the owner; stop() (or the destructor) closes
// the port and every connection. Replies in flight when it stops are dropped. Timers it set
// hold their own reference to its state, so they may fire after it is gone (they do nothing).
// Any thread may call stats() and stop().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/llm/sim.hpp"
#include "nines/net/http_server.hpp"

namespace nines::llm {

struct SimServerOptions {
  // Where to listen; loopback by default (the sim is for tests, benchmarks and demos).
  std::string bind_address = "127.0.0.1";
  // 0: an ephemeral port (read it with port()).
  std::uint16_t port = 0;
  // Open connections at most (the benchmark keeps 1,000 in flight).
  std::size_t max_connections = 20000;
  // Request bodies beyond this get 413.
  std::size_t max_body_bytes = std::size_t{8} << 20;
  // Latency samples kept for /sim/stats (a ring). >= 1.
  std::size_t max_latency_samples = 1u << 20;
};

struct SimServerStats {
  std::uint64_t requests = 0;  // API requests (not /sim/*) since the last reset
  // API requests being answered now: received, their reply not yet played to its end (a
  // gauge: a reset leaves it). A request whose client went away (a killed worker) stays in
  // flight until its reply's delay has passed, so right after a kill this counts the calls
  // the kill cut.
  std::uint64_t in_flight = 0;
  Duration latency_p50{0};
  Duration latency_p99{0};
  Duration latency_max{0};
};

class SimServer {
 public:
  // kInvalidArgument for bad options; the HTTP server's errors for a port that cannot be
  // bound (naming address:port).
  static Result<std::unique_ptr<SimServer>> start(Environment& env, std::shared_ptr<SimModel> sim,
                                                  SimServerOptions options);
  ~SimServer();
  SimServer(const SimServer&) = delete;
  SimServer& operator=(const SimServer&) = delete;

  std::uint16_t port() const;
  // "http://127.0.0.1:<port>/v1": what an OpenAI-compatible client takes as its base URL.
  std::string base_url() const;
  SimModel& sim() const;
  SimServerStats stats() const;
  void reset_stats();
  net::HttpServerStats http_stats() const;
  void stop();

  struct State;

 private:
  SimServer(std::shared_ptr<State> state, std::unique_ptr<net::HttpServer> http);
  std::shared_ptr<State> state_;
  std::unique_ptr<net::HttpServer> http_;
};

}  // namespace nines::llm
