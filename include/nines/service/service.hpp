// nines/service/service.hpp: `nines serve`: the agents of one config file, run as a service with
// an HTTP API (docs/service.md, docs/api.md).
//
//   auto env = make_real_environment();
//   auto rt = Runtime::create(*env).value();
//   auto svc = service::Service::start(*rt, {.config_path = "nines.yaml"});
//   if (!svc.ok()) { std::fprintf(stderr, "%s\n", svc.error().to_string().c_str()); return 1; }
//   // ... serve until SIGTERM:
//   (*svc)->shutdown(std::chrono::seconds(30));
//
// start() loads and checks the config (every error at once, as `nines check`), opens the store,
// builds the model clients and a router per agent, starts the MCP tool servers, registers the
// tools and agents, starts the supervision tree (a root supervisor "nines" with one task
// supervisor per supervision group, and the always-on agents' workers), resumes every task the
// store has as running (tasks left by a crash or a kill -9, by the resumer of each group), and
// listens. It fails, leaving nothing running, when any of that fails: kInvalidArgument for a bad
// config (the message is every error, one per line) or a non-loopback address without auth
// tokens, kAlreadyExists for a taken port, the store's or an MCP server's error otherwise.
//
// The HTTP API, probes and metrics are docs/api.md. A request is answered by a process of its
// own (a store read or a commit never blocks the event loop); at most
// server.max_concurrent_requests are in progress, beyond that 429.
//
// shutdown(grace): readiness goes false and new submissions are refused (503) at once; every
// agent group drains (each task stops at its next checkpoint, agent::Agents::drain); after the
// tasks stopped or `grace` passed, the HTTP server, the supervision tree and the MCP servers are
// stopped and the store closed. Tasks still running are killed: their committed records are
// safe and the next start resumes them.
//
// Not built yet: several service nodes on one PostgreSQL store (task leases with fencing): two
// services on one store would both resume the same running tasks.
//
// Ownership: the Service borrows the Runtime (it must outlive the Service) and owns everything
// else it built. Thread-safety: start() and shutdown() are called from a thread that is not one
// of the runtime's workers (they block); the other members from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nines/agent/tool.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/service/config.hpp"

namespace nines::service {

struct ServiceOptions {
  std::string config_path = "nines.yaml";
  // The tools the config may name with `type: native` (by ToolSpec::name).
  std::vector<std::shared_ptr<agent::Tool>> native_tools;
  // Where ${VAR}, api_key_env and token files are read (default: the process's).
  ConfigSources sources;
  // Overrides server.port (0: an ephemeral port, read it with port()).
  std::optional<std::uint16_t> port;
  // How long start() waits for the MCP servers and the supervision tree.
  Duration start_timeout = std::chrono::seconds(60);
};

class Service {
 public:
  static Result<std::unique_ptr<Service>> start(Runtime& rt, ServiceOptions options);
  // shutdown(0) if not done.
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  std::uint16_t port() const;
  std::string base_url() const;
  // The config running now (a copy: a reload replaces it).
  ServiceConfig config() const;

  // See the file comment. Idempotent. Returns the number of tasks that were still running when
  // the grace period ended (killed; resumed at the next start).
  std::size_t shutdown(Duration grace);

  // Hot reload: reads the config file again and applies it whole, or rejects it whole (the
  // running config is kept; the error is logged as config_reload_rejected and counted). See
  // docs/service.md "Hot reload" for what a reload changes and when a running task sees it.
  // kInvalidArgument: the file is invalid, unreadable, or changes what only a restart can.
  Status reload();
  // reload() when the file changed since the last load (modification time, size or inode; a
  // deleted file counts as changed, and is rejected). Returns whether a reload was applied.
  Result<bool> reload_if_changed();
  std::uint64_t reloads() const;           // applied
  std::uint64_t reloads_rejected() const;  // rejected

  struct Impl;

 private:
  explicit Service(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace nines::service
