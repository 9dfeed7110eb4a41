// `nines demo service`: the chaos demo (the README's first command, through scripts/demo.sh).
//
// It writes a config into a fresh temporary directory (the embedded SQLite store; a primary sim
// model with faults on and a scheduled provider outage, a fallback sim model without faults; an
// agent that reads a file through an MCP tool server from npm, when node and the package are
// there, and charges a ledger through an HTTP tool), serves the ledger itself on loopback,
// starts `nines serve` on that config as a child process, and submits tasks through the HTTP
// API (with Idempotency-Keys) a few at a time. Meanwhile it kills the MCP server once and the
// service with SIGKILL once, starts it again and measures how long until it is ready. One
// progress line a second; a final report: tasks by outcome, recovery time, restarts, retries,
// fallbacks, tool errors, duplicate effects, tokens and cost. Then it stops the service with
// SIGTERM.
//
// With OPENAI_API_KEY (or NINES_MODEL_BASE_URL for an OpenAI-compatible server) set, the primary
// model is that real model (NINES_MODEL, default gpt-4o-mini) instead of the faulty sim.
#pragma once

#include <cstdint>
#include <string>

namespace nines::cli {

struct DemoServiceOptions {
  std::uint32_t tasks = 300;
  std::uint32_t concurrency = 16;  // tasks submitted and not yet ended, at most
  bool kill = true;                // kill -9 the service once (and the MCP server once)
  std::uint64_t seed = 7;
  bool keep = false;  // keep the temporary directory (config, store, logs)
};

// Exit status: 0 when every task reached an outcome and no effect was applied twice; 1
// otherwise (the report says why); 2 a usage error.
int run_demo_service(const DemoServiceOptions& options);

}  // namespace nines::cli
