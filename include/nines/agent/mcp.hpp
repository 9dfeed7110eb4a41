// nines/agent/mcp.hpp: MCP (Model Context Protocol) tool servers as agent tools, each server an
// OS child process isolated as an Erlang port is.
//
//   McpServerOptions o{.name = "fs",
//                      .command = {"node", dir + "/server-filesystem/dist/index.js", "/srv/data"},
//                      .call_timeout = 30s};
//   // in a process (named first: g++ 12, task.hpp):
//   Result<std::shared_ptr<McpServer>> fs = co_await McpServer::start(ctx, std::move(o));
//   for (auto& tool : (*fs)->tools()) registry.add(tool);  // one agent::Tool per listed tool
//   ...
//   co_await (*fs)->stop(ctx);  // or let the last reference go
//
// Protocol: JSON-RPC 2.0 over the child's stdin/stdout, one JSON message per line (MCP's stdio
// transport). start() sends `initialize` (protocolVersion 2025-06-18, clientInfo {name:"nines"})
// and accepts the versions 2024-11-05, 2025-03-26 and 2025-06-18 in the answer, sends
// `notifications/initialized`, then lists the tools (`tools/list`, following nextCursor for at
// most max_list_pages pages). A tool call is `tools/call` {name, arguments, _meta:
// {"nines/idempotencyKey": key}}; its text content items are concatenated (an image, audio or
// resource item is summarized as "[image image/png, 1234 bytes of base64]" and so on), and a
// result longer than max_result_bytes is cut, ending with "[... cut: N more bytes]". Requests from
// the server are answered (ping with an empty result, anything else with error -32601); its
// notifications are ignored.
//
// Isolation: the child is spawned without a shell (fork + execve), in a process group of its
// own, with its resource limits (McpLimits: rlimits, and a resident-memory watchdog that
// recycles a leaking server between calls) set before the exec, every other descriptor closed,
// signals reset, and PR_SET_PDEATHSIG so that it dies with this program. Its exit is awaited on
// a pidfd (Context::wait_fd) and reaped with waitid(P_PIDFD); killing it kills its whole group.
//
// Design: one nines process, the owner, owns the child and multiplexes every call on it, as an
// Erlang port owner does; a tool's call() is a Context::call to the owner, so calls from any
// number of tasks share one child (at most max_in_flight at once). Two linked helper processes
// drain the child's stdout (lines become messages to the owner) and stderr (kept in a 64 KiB ring,
// logged line by line as event "mcp_server_stderr" at info level). The owner restarts the child
// itself: when the child exits, breaks a pipe, writes a line that is not JSON or longer than
// max_line_bytes, or hangs (it does not answer a ping sent after a call timed out within
// ping_timeout), every call in flight fails with kTransient ("mcp server 'fs' exited with signal
// 9 while the call was in flight"), the child's whole process group is killed and reaped, and a
// new child is started after a restart_backoff delay (initialize again; the tool list is the one
// start() got). Calls made while it is down wait for the new child within their timeout, and fail
// with kTransient if its start fails. The owner never gives up: the tools' circuit breakers (the
// registry's) turn a server that keeps failing into fast failures. Keeping the restart in the
// owner (rather than crashing it under a supervisor) keeps the owner's pid, and so the tools,
// valid for the server's whole life.
//
// Errors of a tool call:
//   kTransient: the child failed while the call was in flight or could not be (re)started, or
//     the owner is gone (the server was stopped);
//   kTimeout: no answer within the call's timeout (the server gets `notifications/cancelled`);
//   kPermanent: the tool said isError=true (the message is its text) or the server answered
//     with a JSON-RPC error; kInvalidArgument for error -32602 (invalid params) or arguments that
//     are not a JSON object;
//   kBulkheadFull: max_in_flight calls are in flight already;
//   kCancelled: the server was stopped while the call was in flight; kDeadlineExceeded: the
//     calling process's deadline passed first (the server gets `notifications/cancelled`).
// A caller killed while its call is in flight makes the owner send `notifications/cancelled`.
// start() fails with kStartFailed (the command cannot be run, the server exits, answers garbage,
// an unknown protocol version or nothing within initialize_timeout: the child is killed and
// reaped before it returns), kInvalidArgument for bad options.
//
// Ownership: start() returns a shared handle; each Tool from tools() holds one, so the server
// lives while anything may call it. When the last reference goes, the owner is told to stop: it
// fails the calls in flight with kCancelled, kills the child's group and reaps it. stop() does
// the same and waits for it. Destroy the handles (and the tools) before the Runtime; destroying
// the Runtime kills the owner, and the child is killed and reaped as its frame unwinds.
//
// Environment: a RealEnvironment (the child runs in real time; under a SimEnvironment its
// timeouts would be counted in virtual time). Linux >= 5.3 (pidfd_open).
//
// Thread-safety: McpServer and its tools may be used from any number of processes at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nines/agent/tool.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/resilience/backoff.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines::agent {

// Resource limits set in the child before exec (setrlimit).
struct McpLimits {
  // RLIMIT_CPU: CPU seconds over one child's life. Default 0: no limit (a server lives long).
  std::uint64_t cpu_seconds = 0;
  // RLIMIT_AS: address space. Default 64 GiB. Not a memory bound for Node.js servers: V8
  // reserves about 10 GiB of address space per WebAssembly instance, and Node's fetch (undici)
  // instantiates one, so under 8 GiB a server dies at its first HTTP request ("Cannot allocate
  // Wasm memory"; tests/agent/crash_test.cpp's MCP tools do such requests). 0: no limit.
  std::uint64_t address_space_bytes = std::uint64_t{64} << 30;
  // RLIMIT_NOFILE. Default 1024. 0: inherited.
  std::uint64_t open_files = 1024;
  // Not an rlimit: a watchdog. Every resident_check_interval the owner sums the resident memory
  // of the child's process group (from /proc); above max_resident_bytes the server is recycled:
  // new calls wait (within their timeouts), the calls in flight finish (or time out), then the
  // child's group is killed and a new child started at once (initialize again). Logged as
  // "mcp_server_recycled", counted in McpServerStatus::recycles. 0: no watchdog.
  std::uint64_t max_resident_bytes = std::uint64_t{2} << 30;
  Duration resident_check_interval = std::chrono::seconds(5);
};

struct McpServerOptions {
  // In errors, logs and the owner's registered name (none unless register_owner). Required.
  std::string name;
  // argv of the server; argv[0] is looked up in PATH unless it holds a '/'. No shell. Required.
  std::vector<std::string> command;
  // Added to (or replacing in) this program's environment for the child.
  std::vector<std::pair<std::string, std::string>> env;
  std::string working_dir;  // empty: this program's
  McpLimits limits;
  // initialize (and the tool listing) must be answered within this, each.
  Duration initialize_timeout = std::chrono::seconds(20);
  // Default timeout of one tool call (each Tool's spec().timeout; the registry may pass less).
  Duration call_timeout = std::chrono::seconds(60);
  // After a call timed out, the server must answer a ping within this or it counts as hung.
  Duration ping_timeout = std::chrono::seconds(5);
  // A write to the child's stdin must complete within this or the child counts as hung.
  Duration write_timeout = std::chrono::seconds(10);
  // Delay before restarting a failed child: attempt n waits restart_backoff.next(n). The count
  // starts again once a child has stayed up for restart_backoff.cap.
  Backoff restart_backoff = Backoff::full_jitter(std::chrono::milliseconds(100), std::chrono::seconds(10));
  // Calls in flight at once; beyond, kBulkheadFull.
  std::size_t max_in_flight = 64;
  // A tool's text result is cut beyond this (with a marker).
  std::size_t max_result_bytes = std::size_t{1} << 20;
  // A stdout line (one JSON-RPC message) longer than this is garbage: the child is failed.
  std::size_t max_line_bytes = std::size_t{16} << 20;
  // tools/list pages followed at most.
  std::size_t max_list_pages = 32;
  // Prepended to every tool's name ("fs_" -> "fs_read_file"). Characters outside
  // [a-zA-Z0-9_-] in a server's tool name become '_'; a name is cut at 64 characters.
  std::string tool_prefix;
  // The nature of a tool by its server name, overriding its annotations. Otherwise:
  // readOnlyHint=true -> kReadOnly, else idempotentHint=true -> kIdempotent, else kUnsafe.
  std::map<std::string, EffectNature> nature;
  // Registers the owner process as "mcp:<name>".
  bool register_owner = false;
};

// A tool as the server listed it.
struct McpToolInfo {
  std::string name;  // the server's name for it (tools/call uses this one)
  std::string description;
  std::string input_schema_json;
  bool read_only_hint = false;
  bool idempotent_hint = false;
};

struct McpServerStatus {
  bool up = false;             // a child is running and initialized
  int child_pid = 0;           // 0 when none
  std::uint64_t restarts = 0;  // children started after the first
  std::size_t in_flight = 0;
  std::string protocol_version;      // what the server answered to initialize
  std::string last_failure;          // why the last child failed or was recycled; empty if none was
  std::uint64_t recycles = 0;        // children replaced by the resident-memory watchdog (in restarts too)
  std::uint64_t resident_bytes = 0;  // the child's group at the last check; 0 before the first
};

class McpServer : public std::enable_shared_from_this<McpServer> {
 public:
  // Starts the owner and the child, initializes and lists the tools (see the file comment).
  static Task<Result<std::shared_ptr<McpServer>>> start(Context& ctx, McpServerOptions options);

  // Tells the owner to stop (without waiting).
  ~McpServer();
  McpServer(const McpServer&) = delete;
  McpServer& operator=(const McpServer&) = delete;

  const std::string& name() const { return options_.name; }
  Pid owner() const { return owner_; }
  const std::vector<McpToolInfo>& listed_tools() const { return listed_; }

  // One Tool per listed tool whose spec is valid (validate_tool_spec) and whose sanitized name
  // is not taken by an earlier one; the others are logged as event "mcp_tool_skipped" and left
  // out. Each holds a reference to this server.
  std::vector<std::shared_ptr<Tool>> tools();

  // One tools/call: `tool` is the server's name for it. timeout <= 0: call_timeout.
  Task<Result<std::string>> call(Context& ctx, std::string tool, std::string arguments_json,
                                 std::string idempotency_key, Duration timeout = Duration::zero());

  // kTransient if the owner is gone.
  Task<Result<McpServerStatus>> status(Context& ctx);

  // Fails the calls in flight with kCancelled, kills and reaps the child, ends the owner; waits
  // for all of it. Calls afterwards fail with kTransient.
  Task<> stop(Context& ctx);

 private:
  McpServer(Runtime& rt, McpServerOptions options, Pid owner, std::vector<McpToolInfo> listed)
      : rt_(rt), options_(std::move(options)), owner_(owner), listed_(std::move(listed)) {}

  Runtime& rt_;
  McpServerOptions options_;
  Pid owner_;
  std::vector<McpToolInfo> listed_;
};

}  // namespace nines::agent
