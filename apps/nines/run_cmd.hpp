// `nines run AGENT INPUT`: one task in the foreground, against a running service (docs/cli.md):
// submits it (POST /v1/tasks), prints its events one a line as they come (GET
// /v1/tasks/{id}/events, opened again with Last-Event-ID after a break), then its outcome.
//
//   RunCmdOptions o{.agent = "support", .input = "Refund order 42", .url = "http://127.0.0.1:8080"};
//   int rc = run_run_interactive(o);               // stdout/stderr; Ctrl-C stops following
//   std::string out, err;
//   rc = run_run(o, TasksIo::to_strings(out, err), interrupt_fd);  // tests: a pipe as Ctrl-C
//
// Exit status: 0 the task succeeded; 5 (kRunNotSucceeded) it ended otherwise (failed,
// budget_exceeded, loop_detected, cancelled) or waits in needs_attention; 1 the service answered
// an error; 2 a usage error; 3 the service cannot be reached (or the event stream broke for
// good: the task may still run); 4 not found (an unknown agent route, a task gone); 130
// (kRunInterrupted) interrupted while following: the task keeps running (or, with
// cancel_on_interrupt, a second interrupt stopped the wait for the cancel). The same 1-4 as
// `nines tasks` (tasks_cmd.hpp).
//
// Output: text for people on stdout: a line saying the task was submitted, one line per event,
// then the task as `nines tasks show` prints it. With `json`: stdout has only the final task
// object (one line); the other lines go to stderr. Errors are one line on stderr, as
// "nines run: <what>". An interrupt prints the task id and `nines tasks events ID --follow`.
//
// Each call runs on an environment and runtime of its own (one worker), made and torn down
// inside: it blocks the calling thread, which must not be a nines worker. run_run_interactive
// blocks SIGINT in the calling thread before it starts any thread (so call it before any other
// thread exists: main) and reads it from a signalfd. Thread-safety: run_run may be called from
// several threads at once.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "tasks_cmd.hpp"

namespace nines::cli {

inline constexpr int kRunNotSucceeded = 5;
inline constexpr int kRunInterrupted = 130;  // 128 + SIGINT, as shells report it

struct RunCmdOptions {
  std::string agent;  // required: an agent of the service's config
  std::string input;  // required: the user's message
  // The service's base URL and bearer token, as for `nines tasks` (main.cpp fills them from
  // --url / NINES_URL and --token / NINES_TOKEN).
  std::string url = "http://127.0.0.1:8080";
  std::string token;
  bool json = false;  // stdout: only the final task object

  std::string id;               // the task's id; empty: the service makes one
  std::string idempotency_key;  // sent as Idempotency-Key; empty: none
  // The task's budget cap (on top of the agent's); nullopt: not sent.
  std::optional<double> max_cost_usd;
  std::optional<std::int64_t> max_steps;

  // On interrupt: cancel the task (POST /v1/tasks/{id}/cancel) and wait for it to end, instead
  // of leaving it running. A second interrupt stops the wait.
  bool cancel_on_interrupt = false;
  // Reconnects in a row without a new event before giving up (exit 3), one second apart.
  std::uint32_t max_reconnects = 10;
};

// Runs the command; `interrupt_fd`, when >= 0, is a descriptor that becomes readable on each
// interrupt (a signalfd, or a pipe in tests); each interrupt is read from it (up to 128 bytes).
int run_run(const RunCmdOptions& options, const TasksIo& io = TasksIo::standard(), int interrupt_fd = -1);

// run_run on stdout/stderr with SIGINT (Ctrl-C) as the interrupt.
int run_run_interactive(const RunCmdOptions& options);

}  // namespace nines::cli
