// `nines run AGENT INPUT`: submit, follow, print the outcome. The contract: run_cmd.hpp; the
// reference: docs/cli.md.
//
// One process does the work on a private environment: it submits the task, then spawns a
// follower (the event stream, printed as it comes; api::stream_events opens it again after a
// break) and, when there is an interrupt descriptor, a watcher that waits on it and sends
// Interrupt to the process. The process waits for whichever comes first: the follower's end
// (then it reads the task and prints the outcome) or an interrupt (then it kills the follower
// and stops, or with --cancel-on-interrupt cancels the task and follows it to its end).
#include "run_cmd.hpp"

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <utility>

#include "api_client.hpp"
#include "nines/core/environment.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/runtime.hpp"

namespace nines::cli {

namespace {

using api::json;
using namespace std::chrono_literals;

struct Interrupt {};

// The final GET may come a moment before the service has the outcome in the record the
// task_finished event announced: read again, 100 ms apart, this many times.
constexpr int kOutcomeReads = 50;

struct Run {
  const RunCmdOptions& o;
  const api::Api& api;
  const api::Reporter& r;

  // Progress: stdout, or stderr with --json (stdout then holds the final task only).
  void progress(const std::string& line) const {
    if (o.json) {
      r.note(line.ends_with('\n') ? line.substr(0, line.size() - 1) : line);
    } else {
      r.out(line.ends_with('\n') ? line : line + "\n");
    }
  }

  net::HttpRequest submission() const {
    json body = {{"agent", o.agent}, {"input", o.input}};
    if (!o.id.empty()) body["id"] = o.id;
    json budget = json::object();
    if (o.max_cost_usd) budget["max_cost_usd"] = *o.max_cost_usd;
    if (o.max_steps) budget["max_steps"] = *o.max_steps;
    if (!budget.empty()) body["budget"] = budget;
    net::HttpRequest req = api.request("POST", "/v1/tasks", api::dump(body));
    if (!o.idempotency_key.empty()) req.headers.add("Idempotency-Key", o.idempotency_key);
    return req;
  }

  std::string follow_again(const std::string& id) const {
    return "nines tasks events " + id + " --follow" +
           (o.url != "http://127.0.0.1:8080" ? " --url " + net::redact_url(api.base) : "");
  }
};

// Reads the task until it is no longer running (bounded); prints it; the exit status.
Task<int> finish(Context& ctx, const Run& run, const std::string& id) {
  const std::string what = "task '" + id + "'";
  for (int i = 0;; ++i) {
    int rc = kTasksOk;
    net::HttpRequest req = run.api.request("GET", api::task_path(id));
    Result<api::JsonAnswer> t = co_await api::exchange(ctx, run.api, std::move(req), what, rc);
    if (!t.ok()) co_return rc;
    const std::string status = api::str(t->body, "status", "-");
    if (status == "running" && i + 1 < kOutcomeReads) {
      (void)co_await ctx.sleep(100ms);
      continue;
    }
    if (run.o.json) {
      run.r.out(api::dump(t->body));
    } else {
      run.r.out("\n" + api::render_task(t->body));
    }
    co_return status == "succeeded" ? kTasksOk : kRunNotSucceeded;
  }
}

Task<> run_process(Context& ctx, net::HttpClient& http, const RunCmdOptions& o, const api::Reporter& r,
                   int interrupt_fd, int& rc) {
  std::string base = o.url;
  while (base.ends_with('/')) base.pop_back();
  const api::Api a{.http = http, .r = r, .base = base, .token = o.token};
  const Run run{.o = o, .api = a, .r = r};

  net::HttpRequest post = run.submission();
  Result<api::JsonAnswer> created = co_await api::exchange(ctx, a, std::move(post), "agent '" + o.agent + "'", rc);
  if (!created.ok()) co_return;
  const std::string id = api::str(created->body, "id");
  if (id.empty()) {
    rc = r.fail(kTasksServiceError, "the service's answer has no task id: " + api::one_line(created->body.dump()));
    co_return;
  }
  const std::string status = api::str(created->body, "status", "-");
  run.progress(created->status == 201 ? "task " + id + " submitted (agent " + o.agent + ")"
                                      : "task " + id + " exists already (same id or idempotency key; status " + status +
                                            "): following it");

  const Pid self = ctx.self();
  std::optional<Pid> watcher;
  if (interrupt_fd >= 0) {
    Result<Pid> w = ctx.spawn([interrupt_fd, self](Context& c) -> Task<> {
      for (;;) {
        Result<std::any> ready = co_await c.wait_fd(interrupt_fd, kFdReadable);
        if (!ready.ok()) co_return;
        char buf[128];  // a signalfd hands out whole 128-byte records
        if (::read(interrupt_fd, buf, sizeof buf) <= 0) continue;
        (void)c.try_send(self, Interrupt{});
      }
    });
    if (w.ok()) watcher = *w;
  }

  std::string last_id;
  bool cancel_sent = false;
  for (;;) {
    int follow_rc = kTasksServiceError;
    Result<Pid> follower = ctx.spawn([&](Context& c) -> Task<> {
      const api::StreamOptions options{.follow = true, .last_event_id = last_id, .max_reconnects = o.max_reconnects};
      follow_rc = co_await api::stream_events(
          c, a, id, options, [&run](const net::SseEvent& ev) { run.progress(api::render_event(ev)); }, &last_id);
    });
    if (!follower.ok()) {
      rc = r.fail(kTasksServiceError, follower.error().to_string());
      break;
    }
    const MonitorRef watch = ctx.monitor(*follower);
    bool interrupted = false;
    for (;;) {
      Message m = co_await ctx.receive();
      if (m.get<Interrupt>() != nullptr) {
        interrupted = true;
        break;
      }
      if (const Down* d = m.get<Down>(); d != nullptr && d->ref == watch) break;
    }
    if (!interrupted) {
      if (follow_rc == kTasksOk) {
        rc = co_await finish(ctx, run, id);
      } else {
        rc = follow_rc;
        r.note("task " + id + " may still be running; follow it with: " + run.follow_again(id));
      }
      break;
    }
    ctx.kill_on_purpose(*follower);
    (void)co_await ctx.wait_down(watch);
    if (!o.cancel_on_interrupt || cancel_sent) {
      r.note("\nstopped following task " + id + (cancel_sent ? " (cancel requested)" : " (it keeps running)") +
             "; follow it again with: " + run.follow_again(id));
      rc = kRunInterrupted;
      break;
    }
    int cancel_rc = kTasksOk;
    net::HttpRequest cancel = a.request("POST", api::task_path(id, "/cancel"), "{}");
    Result<api::JsonAnswer> c = co_await api::exchange(ctx, a, std::move(cancel), "task '" + id + "'", cancel_rc);
    if (!c.ok()) {
      rc = cancel_rc;
      break;
    }
    cancel_sent = true;
    r.note("\ncancel requested for task " + id + " (status " + api::str(c->body, "status", "-") +
           "); waiting for it to stop (interrupt again to stop waiting)");
  }
  if (watcher) ctx.kill_on_purpose(*watcher);
}

std::string usage_problem(const RunCmdOptions& o) {
  if (o.agent.empty()) return "AGENT is required";
  if (o.input.empty()) return "INPUT is required";
  if (!o.url.starts_with("http://") && !o.url.starts_with("https://")) {
    return "--url: expected an http:// or https:// URL, got '" + net::redact_url(o.url) + "'";
  }
  if (o.max_cost_usd && !(*o.max_cost_usd >= 0)) return "--max-cost-usd: expected a number >= 0";
  if (o.max_steps && *o.max_steps < 0) return "--max-steps: expected a whole number >= 0";
  return "";
}

}  // namespace

int run_run(const RunCmdOptions& o, const TasksIo& io, int interrupt_fd) {
  const api::Reporter r(io, "nines run");
  if (std::string problem = usage_problem(o); !problem.empty()) return r.fail(kTasksUsageError, problem);
  auto env = make_real_environment({.workers = 1, .seed = 1, .log_level = LogLevel::kError});
  auto rt = Runtime::create(*env, {.workers = 1});
  if (!rt.ok()) return r.fail(kTasksServiceError, rt.error().to_string());
  net::HttpClientOptions options;
  if (api::loopback_url(o.url)) options.proxy = "";  // a proxy from the environment is no way to loopback
  auto http = net::HttpClient::create(*env, std::move(options));
  if (!http.ok()) return r.fail(kTasksServiceError, http.error().to_string());
  int rc = kTasksServiceError;
  net::HttpClient& client = **http;
  auto w = (*rt)->spawn_watched([&](Context& ctx) { return run_process(ctx, client, o, r, interrupt_fd, rc); });
  if (!w.ok()) return r.fail(kTasksServiceError, w.error().to_string());
  ExitReason why = w->exit->wait();
  if (!why.is_normal()) rc = r.fail(kTasksServiceError, "the run ended abnormally: " + why.to_string());
  http->reset();  // before the environment
  return rc;
}

int run_run_interactive(const RunCmdOptions& o) {
  // Blocked before the environment starts its threads (they inherit the mask), so SIGINT is
  // only ever read from the signalfd, never delivered.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  const int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  const int rc = run_run(o, TasksIo::standard(), fd);
  if (fd >= 0) ::close(fd);
  return rc;
}

}  // namespace nines::cli
