// `nines tasks list|show|events|cancel|approve|deny|resolve|fork`: the service's tasks from the
// command line, over its HTTP API (docs/api.md), or straight from the store when no service runs
// (--store: list, show and resolve only). The reference, with examples: docs/cli.md.
//
//   TasksCmdOptions o{.command = "show", .url = "http://127.0.0.1:8080", .task_id = "t-1"};
//   int rc = run_tasks(o);                   // prints to stdout / stderr
//   std::string out, err;
//   rc = run_tasks(o, TasksIo::to_strings(out, err));  // tests: the output in strings
//
// Exit status (kTasks* below): 0 ok; 1 the service answered an error (its error.message and the
// HTTP status are printed), or the store refused the change; 2 a usage error; 3 the service (or
// the store) cannot be reached: connection refused, a timeout, a store that cannot be opened;
// 4 not found (404: an unknown task, effect or route).
//
// Output: text for people by default; with `json` the service's JSON as it is, one document
// (for `list --all` one {"tasks": [...]} with every page's tasks; for `events` one line per
// event: {"id": ..., "event": ..., "data": {...}}). Errors go to stderr, one line each, as
// "nines tasks show: task 't-x' not found (404)". The token is sent as a bearer token and never
// printed; URLs are printed without user info or query.
//
// Each call runs on an environment and runtime of its own (one worker), made and torn down
// inside run_tasks: it blocks the calling thread, which must not be a nines worker.
// Thread-safety: run_tasks may be called from several threads at once (nothing is shared).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace nines::cli {

inline constexpr int kTasksOk = 0;
inline constexpr int kTasksServiceError = 1;
inline constexpr int kTasksUsageError = 2;
inline constexpr int kTasksUnreachable = 3;
inline constexpr int kTasksNotFound = 4;

struct TasksCmdOptions {
  // list | show | events | cancel | approve | deny | resolve | fork
  std::string command;
  // The service's base URL (http:// or https://). main.cpp fills it from --url or NINES_URL.
  std::string url = "http://127.0.0.1:8080";
  // Bearer token (--token or NINES_TOKEN); empty: no Authorization header. Never printed.
  std::string token;
  // Direct store mode: "sqlite:PATH", a PATH ending in ".db", or "postgres://..." /
  // "postgresql://...". Empty: talk to the service at `url`.
  std::string store;
  bool json = false;  // the service's JSON instead of text

  // The task the command is about (all but list).
  std::string task_id;

  // list
  std::string status;       // running | needs_attention | succeeded | failed | budget_exceeded |
                            // loop_detected | cancelled | finished; empty: all
  std::string agent;        // empty: all
  std::uint32_t limit = 0;  // tasks per page, 1..500; 0: the service's default (50), or 500 with --all
  std::string cursor;       // start at this page (the previous answer's next_cursor)
  bool all = false;         // follow next_cursor to the last page

  // events
  bool follow = false;        // keep waiting for new events until task_finished
  std::string last_event_id;  // resume after this event (Last-Event-ID)
  // Without `follow`: the stream counts as caught up (every held event printed) once it has
  // been silent this long, in milliseconds.
  std::uint32_t quiet_ms = 1000;
  // With `follow`: how often a stream that ended or broke before task_finished is opened again
  // (with Last-Event-ID), one second apart; reset by every event received.
  std::uint32_t max_reconnects = 10;

  // approve, deny
  std::string call_id;
  std::string reason;  // deny: given to the model; empty: none sent

  // resolve
  std::string effect_id;
  std::optional<bool> applied;  // required: --applied (true) or --not-applied (false)
  std::string outcome;          // applied: what the tool returned, given to the model

  // fork
  std::optional<std::int64_t> at_turn;  // nullopt: the service's default (0)
  std::optional<std::string> input;     // a new user message in place of the old one
  std::string new_id;                   // the new task's id; empty: the service makes one
};

// Where the command writes: `out` for results, `err` for errors and notes. Each call is one or
// more whole lines.
struct TasksIo {
  std::function<void(std::string_view)> out;
  std::function<void(std::string_view)> err;

  // stdout and stderr (flushed after each write, so `events --follow` shows events at once).
  static TasksIo standard();
  // Appends to the two strings (tests). They must outlive the run_tasks call.
  static TasksIo to_strings(std::string& out, std::string& err);
};

// Runs the command; returns its exit status (kTasks*).
int run_tasks(const TasksCmdOptions& options, const TasksIo& io = TasksIo::standard());

}  // namespace nines::cli
