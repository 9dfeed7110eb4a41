// `nines run` (apps/nines/run_cmd.hpp), run in-process against a fake of the service's API
// (docs/api.md) on loopback that answers with canned JSON and event streams and records every
// request. Interrupts come through a pipe, written when a given line is printed.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/net/http_server.hpp"
#include "run_cmd.hpp"

namespace nines::cli {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// ---- the fake service (as in tasks_cmd_test.cpp) ---------------------------------------------

struct Seen {
  std::string method, target, body;
  std::map<std::string, std::string> headers;  // names in lower case
};

struct Canned {
  int status = 200;
  std::string body;                 // JSON
  std::vector<std::string> events;  // non-empty: a text/event-stream with these chunks
  bool end_stream = true;           // false: the stream stays open after the chunks
};

class FakeApi {
 public:
  using Answer = std::function<Canned(const Seen&, std::size_t n)>;

  explicit FakeApi(Answer answer) : answer_(std::move(answer)) {
    server_ = net::HttpServer::create(*env_, {}, [this](net::HttpServerRequest&& req, net::HttpResponder out) {
                handle(std::move(req), std::move(out));
              }).value();
  }
  ~FakeApi() { server_->stop(); }

  std::string url() const { return server_->base_url(); }
  std::vector<Seen> requests() const {
    std::lock_guard lock(mu_);
    return seen_;
  }

 private:
  void handle(net::HttpServerRequest&& req, net::HttpResponder out) {
    Seen s{.method = req.method, .target = req.target, .body = req.body, .headers = {}};
    for (const auto& f : req.headers.fields()) {
      std::string name = f.name;
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      s.headers[name] = f.value;
    }
    std::size_t n = 0;
    {
      std::lock_guard lock(mu_);
      n = seen_.size();
      seen_.push_back(s);
    }
    const Canned c = answer_(s, n);
    if (c.events.empty()) {
      (void)out.respond(c.status, {{"Content-Type", "application/json"}}, c.body);
      return;
    }
    (void)out.start_stream(c.status, {{"Content-Type", "text/event-stream"}});
    for (const std::string& chunk : c.events) (void)out.write(chunk);
    if (c.end_stream) (void)out.end();
  }

  Answer answer_;
  mutable std::mutex mu_;
  std::vector<Seen> seen_;
  std::unique_ptr<Environment> env_ = make_real_environment({.workers = 1, .seed = 3});
  std::unique_ptr<net::HttpServer> server_;
};

json task(const std::string& status) {
  json t = json::parse(R"({
    "id": "t-1", "agent": "support", "status": "succeeded", "input": "Refund order 42",
    "created_at": "2026-12-04T22:31:07.123Z", "updated_at": "2026-12-04T22:31:09.456Z", "attempt": 1,
    "outcome": {"status": "succeeded", "answer": "Refunded.", "reason": "", "steps": 3, "model_calls": 4,
                "tool_calls": 2, "input_tokens": 812, "output_tokens": 95, "cost_usd": 0.0031,
                "models": ["sim-primary"], "degraded": false, "retries": 1, "fallbacks": 0, "restarts": 0,
                "tool_errors": {}, "wall_time_s": 2.333}})");
  t["status"] = status;
  if (status == "running") {
    t.erase("outcome");
  } else {
    t["outcome"]["status"] = status;
  }
  return t;
}

std::string sse(const std::string& id, const std::string& type, int step, const std::string& tool,
                const std::string& detail) {
  const json data = {{"task_id", "t-1"}, {"agent", "support"}, {"step", step}, {"tool", tool}, {"detail", detail}};
  return "id: " + id + "\nevent: " + type + "\ndata: " + data.dump() + "\n\n";
}

const std::string kStarted = sse("b.1", "task_started", 0, "", "attempt 1");
const std::string kToolCall = sse("b.2", "tool_call", 1, "ledger_charge", "call_7");
const std::string kRetry = sse("b.3", "retry", 2, "", "sim-primary: unavailable");
const std::string kFinished = sse("b.4", "task_finished", 3, "", "succeeded");

// A service that creates t-1, serves `streams` for its events (one per request, the last one again
// for any later request) and the task as `final_status`.
FakeApi service_with_streams(std::vector<Canned> streams, std::string final_status = "succeeded") {
  auto events_seen = std::make_shared<std::size_t>(0);
  auto mu = std::make_shared<std::mutex>();
  return FakeApi([=](const Seen& s, std::size_t) -> Canned {
    if (s.method == "POST" && s.target == "/v1/tasks") return {.status = 201, .body = task("running").dump()};
    if (s.method == "POST" && s.target == "/v1/tasks/t-1/cancel")
      return {.status = 202, .body = task("running").dump()};
    if (s.target == "/v1/tasks/t-1/events") {
      std::lock_guard lock(*mu);
      const std::size_t i = std::min(*events_seen, streams.size() - 1);
      ++*events_seen;
      return streams[i];
    }
    if (s.target == "/v1/tasks/t-1") return {.body = task(final_status).dump()};
    return {.status = 404, .body = R"({"error": {"code": "not_found", "message": "no route"}})"};
  });
}

struct Ran {
  int rc = -1;
  std::string out, err;
};

// Runs the command; when `interrupt_on` is given, every printed line (stdout or stderr) that
// contains it writes one byte to the interrupt pipe (Ctrl-C, as the watcher reads it).
Ran run(const RunCmdOptions& o, const std::string& interrupt_on = "") {
  int fds[2];
  EXPECT_EQ(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
  Ran r;
  auto maybe_interrupt = [&](std::string_view s) {
    if (!interrupt_on.empty() && s.find(interrupt_on) != std::string_view::npos) (void)!::write(fds[1], "i", 1);
  };
  TasksIo io{.out =
                 [&](std::string_view s) {
                   r.out += s;
                   maybe_interrupt(s);
                 },
             .err =
                 [&](std::string_view s) {
                   r.err += s;
                   maybe_interrupt(s);
                 }};
  r.rc = run_run(o, io, fds[0]);
  ::close(fds[0]);
  ::close(fds[1]);
  return r;
}

RunCmdOptions options(const FakeApi& api) {
  RunCmdOptions o;
  o.agent = "support";
  o.input = "Refund order 42";
  o.url = api.url();
  return o;
}

// ---- tests -----------------------------------------------------------------------------------

TEST(Run, SubmitsFollowsTheEventsAndPrintsTheOutcome) {
  FakeApi api = service_with_streams({{.events = {kStarted, kToolCall, kRetry, kFinished}}});
  RunCmdOptions o = options(api);
  o.token = "sekret-token";
  o.id = "t-1";
  o.idempotency_key = "key-1";
  o.max_cost_usd = 0.5;
  o.max_steps = 20;
  Ran r = run(o);
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::vector<Seen> seen = api.requests();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, "/v1/tasks");
  EXPECT_EQ(json::parse(seen[0].body), (json{{"agent", "support"},
                                             {"input", "Refund order 42"},
                                             {"id", "t-1"},
                                             {"budget", {{"max_cost_usd", 0.5}, {"max_steps", 20}}}}));
  EXPECT_EQ(seen[0].headers.at("idempotency-key"), "key-1");
  EXPECT_EQ(seen[0].headers.at("authorization"), "Bearer sekret-token");
  EXPECT_EQ(seen[1].target, "/v1/tasks/t-1/events");
  EXPECT_EQ(seen[1].headers.at("accept"), "text/event-stream");
  EXPECT_EQ(seen[2].method, "GET");
  EXPECT_EQ(seen[2].target, "/v1/tasks/t-1");
  EXPECT_THAT(r.out, StartsWith("task t-1 submitted (agent support)\n"
                                "step 0 task_started attempt 1\n"
                                "step 1 tool_call ledger_charge call_7\n"
                                "step 2 retry sim-primary: unavailable\n"
                                "step 3 task_finished succeeded\n"
                                "\n"
                                "id          t-1\n"));
  EXPECT_THAT(r.out, HasSubstr("status      succeeded\n"));
  EXPECT_THAT(r.out, HasSubstr("answer      Refunded.\n"));
  EXPECT_THAT(r.out, HasSubstr("steps       3 (model calls 4, tool calls 2)\n"));
  EXPECT_THAT(r.out, HasSubstr("tokens      812 in, 95 out\n"));
  EXPECT_THAT(r.out, HasSubstr("cost        $0.0031\n"));
  EXPECT_THAT(r.out, HasSubstr("recovery    retries 1, fallbacks 0, restarts 0\n"));
  EXPECT_EQ(r.err, "");
  EXPECT_THAT(r.out + r.err, Not(HasSubstr("sekret-token")));
}

TEST(Run, OptionsLeftOutAreNotSent) {
  FakeApi api = service_with_streams({{.events = {kFinished}}});
  Ran r = run(options(api));
  ASSERT_EQ(r.rc, 0) << r.err;
  const Seen post = api.requests()[0];
  EXPECT_EQ(json::parse(post.body), (json{{"agent", "support"}, {"input", "Refund order 42"}}));
  EXPECT_FALSE(post.headers.contains("idempotency-key"));
  EXPECT_FALSE(post.headers.contains("authorization"));
}

TEST(Run, AnOutcomeOtherThanSucceededIsExit5) {
  for (const char* status : {"failed", "budget_exceeded", "loop_detected", "cancelled", "needs_attention"}) {
    FakeApi api = service_with_streams({{.events = {kStarted, kFinished}}}, status);
    Ran r = run(options(api));
    EXPECT_EQ(r.rc, kRunNotSucceeded) << status << ": " << r.err;
    EXPECT_THAT(r.out, HasSubstr(std::string("status      ") + status + "\n"));
  }
}

TEST(Run, JsonPrintsOnlyTheFinalTaskOnStdout) {
  FakeApi api = service_with_streams({{.events = {kStarted, kFinished}}});
  RunCmdOptions o = options(api);
  o.json = true;
  Ran r = run(o);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(r.out), task("succeeded"));
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "one document on one line";
  EXPECT_EQ(r.err,
            "task t-1 submitted (agent support)\nstep 0 task_started attempt 1\nstep 3 task_finished succeeded\n");
}

TEST(Run, AStreamThatEndsEarlyIsOpenedAgainAfterTheLastEventSeen) {
  FakeApi api = service_with_streams({{.events = {kStarted, kToolCall}}, {.events = {kFinished}}});
  Ran r = run(options(api));
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::vector<Seen> seen = api.requests();
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_FALSE(seen[1].headers.contains("last-event-id"));
  EXPECT_EQ(seen[2].target, "/v1/tasks/t-1/events");
  EXPECT_EQ(seen[2].headers.at("last-event-id"), "b.2");
  EXPECT_THAT(r.err, HasSubstr("reconnecting after event b.2"));
  EXPECT_THAT(r.out, HasSubstr("step 1 tool_call ledger_charge call_7\nstep 3 task_finished succeeded\n"));
}

TEST(Run, AnInterruptStopsFollowingLeavesTheTaskRunningAndSaysHowToFollowAgain) {
  // The stream stays open after task_started (a task that runs on); Ctrl-C once it is printed.
  FakeApi api = service_with_streams({{.events = {kStarted}, .end_stream = false}});
  Ran r = run(options(api), "task_started");
  EXPECT_EQ(r.rc, kRunInterrupted) << r.err;
  EXPECT_THAT(r.err, HasSubstr("stopped following task t-1 (it keeps running)"));
  EXPECT_THAT(r.err, HasSubstr("nines tasks events t-1 --follow --url " + api.url()));
  for (const Seen& s : api.requests()) EXPECT_THAT(s.target, Not(HasSubstr("/cancel")));
}

TEST(Run, CancelOnInterruptCancelsAndFollowsTheTaskToItsEnd) {
  FakeApi api = service_with_streams(
      {{.events = {kStarted}, .end_stream = false}, {.events = {sse("b.2", "task_finished", 1, "", "cancelled")}}},
      "cancelled");
  RunCmdOptions o = options(api);
  o.cancel_on_interrupt = true;
  Ran r = run(o, "task_started");
  EXPECT_EQ(r.rc, kRunNotSucceeded) << r.err;
  const std::vector<Seen> seen = api.requests();
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[2].method, "POST");
  EXPECT_EQ(seen[2].target, "/v1/tasks/t-1/cancel");
  EXPECT_EQ(seen[3].headers.at("last-event-id"), "b.1");
  EXPECT_THAT(r.err, HasSubstr("cancel requested for task t-1"));
  EXPECT_THAT(r.out, HasSubstr("step 1 task_finished cancelled\n"));
  EXPECT_THAT(r.out, HasSubstr("status      cancelled\n"));
}

TEST(Run, ASecondInterruptStopsWaitingForTheCancel) {
  // Every stream stays open without task_finished: the task does not stop.
  FakeApi api = service_with_streams({{.events = {kStarted}, .end_stream = false}});
  RunCmdOptions o = options(api);
  o.cancel_on_interrupt = true;
  Ran r = run(o, "task_started");  // printed on each stream: the second time is the second Ctrl-C
  EXPECT_EQ(r.rc, kRunInterrupted) << r.err;
  EXPECT_THAT(r.err, HasSubstr("stopped following task t-1 (cancel requested)"));
}

TEST(Run, AnExistingTaskWithTheSameKeyIsFollowed) {
  FakeApi api = FakeApi([](const Seen& s, std::size_t) -> Canned {
    if (s.method == "POST") return {.status = 200, .body = task("succeeded").dump()};
    if (s.target == "/v1/tasks/t-1/events") return {.events = {kFinished}};
    return {.body = task("succeeded").dump()};
  });
  RunCmdOptions o = options(api);
  o.idempotency_key = "k";
  Ran r = run(o);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.out, StartsWith("task t-1 exists already (same id or idempotency key; status succeeded)"));
}

TEST(Run, AnUnknownAgentIsExit1WithTheServicesMessage) {
  FakeApi api = FakeApi([](const Seen&, std::size_t) -> Canned {
    return {.status = 400,
            .body = R"({"error": {"code": "invalid_argument", "message": "field 'agent': unknown agent 'suport'",
                        "field": "agent"}})"};
  });
  RunCmdOptions o = options(api);
  o.agent = "suport";
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksServiceError);
  EXPECT_EQ(r.err, "nines run: field 'agent': unknown agent 'suport' (400)\n");
  EXPECT_EQ(r.out, "");
}

TEST(Run, AServiceThatDoesNotAnswerIsExit3) {
  std::uint16_t closed_port = 0;
  {
    auto env = make_real_environment({.workers = 1, .seed = 4});
    auto server = net::HttpServer::create(*env, {}, [](net::HttpServerRequest&&, net::HttpResponder) {}).value();
    closed_port = server->port();
  }
  RunCmdOptions o;
  o.agent = "support";
  o.input = "hi";
  o.url = "http://127.0.0.1:" + std::to_string(closed_port);
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksUnreachable);
  EXPECT_THAT(r.err, StartsWith("nines run: cannot reach the service at http://127.0.0.1:"));
}

TEST(Run, UsageErrors) {
  RunCmdOptions o;
  o.input = "hi";
  EXPECT_EQ(run(o).rc, kTasksUsageError);
  o.agent = "support";
  o.url = "127.0.0.1:8080";
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksUsageError);
  EXPECT_THAT(r.err, HasSubstr("--url: expected an http:// or https:// URL"));
  o.url = "http://127.0.0.1:9";
  o.max_steps = -1;
  EXPECT_EQ(run(o).rc, kTasksUsageError);
}

}  // namespace
}  // namespace nines::cli
