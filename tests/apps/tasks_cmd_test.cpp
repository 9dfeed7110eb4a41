// `nines tasks` (apps/nines/tasks_cmd.hpp), run in-process: against a fake of the service's API
// (docs/api.md) on loopback that answers with canned JSON and records every request, and in
// --store mode on a temporary SQLite file written through the store API.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/core/environment.hpp"
#include "nines/net/http_server.hpp"
#include "nines/store/sqlite_store.hpp"
#include "support/status_matchers.hpp"
#include "tasks_cmd.hpp"

namespace nines::cli {
namespace {

using json = nlohmann::json;
using ::nines::test::IsOk;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// ---- the fake service ------------------------------------------------------------------------

struct Seen {
  std::string method, target, body;
  std::map<std::string, std::string> headers;  // names in lower case
};

struct Canned {
  int status = 200;
  std::string body;                 // JSON
  std::vector<std::string> events;  // non-empty: a text/event-stream with these chunks
  bool end_stream = true;           // false: the stream stays open after the chunks
  bool cut_stream = false;          // the connection closes after the chunks, mid-stream
};

std::string error_body(const std::string& code, const std::string& message) {
  return json{{"error", {{"code", code}, {"message", message}}}}.dump();
}

class FakeApi {
 public:
  // `answer` gets each request (and how many came before it) and says what to send.
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
    if (c.cut_stream) {
      out.abort();
    } else if (c.end_stream) {
      (void)out.end();
    }
  }

  Answer answer_;
  mutable std::mutex mu_;
  std::vector<Seen> seen_;
  std::unique_ptr<Environment> env_ = make_real_environment({.workers = 1, .seed = 3});
  std::unique_ptr<net::HttpServer> server_;
};

// A fake that answers every request the same.
FakeApi always(Canned c) {
  return FakeApi([c](const Seen&, std::size_t) { return c; });
}

const json kTask = json::parse(R"({
  "id": "t-1", "agent": "support", "status": "succeeded", "input": "Refund order 42",
  "created_at": "2026-12-04T22:31:07.123Z", "updated_at": "2026-12-04T22:31:09.456Z", "attempt": 1,
  "outcome": {"status": "succeeded", "answer": "Refunded.", "reason": "", "steps": 3, "model_calls": 4,
              "tool_calls": 2, "input_tokens": 812, "output_tokens": 95, "cost_usd": 0.0031,
              "models": ["sim-primary"], "degraded": false, "retries": 1, "fallbacks": 0, "restarts": 0,
              "tool_errors": {"timeout": 1}, "wall_time_s": 2.333}})");

json task(const std::string& id, const std::string& status) {
  json t = kTask;
  t["id"] = id;
  t["status"] = status;
  t["outcome"]["status"] = status;
  return t;
}

struct Ran {
  int rc = -1;
  std::string out, err;
};

Ran run(TasksCmdOptions o) {
  Ran r;
  r.rc = run_tasks(o, TasksIo::to_strings(r.out, r.err));
  return r;
}

TasksCmdOptions options(const FakeApi& api, std::string command, std::string task_id = "") {
  TasksCmdOptions o;
  o.command = std::move(command);
  o.url = api.url();
  o.task_id = std::move(task_id);
  return o;
}

// ---- list ------------------------------------------------------------------------------------

TEST(TasksList, SendsTheFiltersAndTheTokenAndPrintsATable) {
  FakeApi api = always({.body = json{{"tasks", {kTask, task("t-2", "running")}}}.dump()});
  TasksCmdOptions o = options(api, "list");
  o.status = "running";
  o.agent = "support";
  o.limit = 2;
  o.token = "sekret-token";
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  ASSERT_EQ(api.requests().size(), 1u);
  Seen s = api.requests()[0];
  EXPECT_EQ(s.method, "GET");
  EXPECT_EQ(s.target, "/v1/tasks?status=running&agent=support&limit=2");
  EXPECT_EQ(s.headers["authorization"], "Bearer sekret-token");
  EXPECT_EQ(r.out,
            "ID   AGENT    STATUS     STEPS  COST     UPDATED\n"
            "t-1  support  succeeded  3      $0.0031  2026-12-04T22:31:09.456Z\n"
            "t-2  support  running    3      $0.0031  2026-12-04T22:31:09.456Z\n");
  EXPECT_EQ(r.err, "");
}

TEST(TasksList, WithoutATokenSendsNoAuthorization) {
  FakeApi api = always({.body = R"({"tasks": []})"});
  Ran r = run(options(api, "list"));
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(api.requests()[0].target, "/v1/tasks");
  EXPECT_FALSE(api.requests()[0].headers.contains("authorization"));
  EXPECT_EQ(r.out, "ID  AGENT  STATUS  STEPS  COST  UPDATED\n");
}

TEST(TasksList, JsonPrintsTheServicesPageAsItIs) {
  const json page = {{"tasks", {kTask}}, {"next_cursor", "c1"}};
  FakeApi api = always({.body = page.dump()});
  TasksCmdOptions o = options(api, "list");
  o.json = true;
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(json::parse(r.out), page);
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "one document on one line";
}

TEST(TasksList, AFirstPageSaysHowToGetTheRest) {
  FakeApi api = always({.body = json{{"tasks", {kTask}}, {"next_cursor", "c1"}}.dump()});
  Ran r = run(options(api, "list"));
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(api.requests().size(), 1u);
  EXPECT_THAT(r.err, HasSubstr("--cursor c1"));
}

// Two pages: the second asked for with the first's next_cursor.
FakeApi two_pages() {
  return FakeApi([](const Seen& s, std::size_t) -> Canned {
    if (s.target.find("cursor=") == std::string::npos) {
      return {.body = json{{"tasks", {task("t-1", "running")}}, {"next_cursor", "c/1"}}.dump()};
    }
    return {.body = json{{"tasks", {task("t-2", "succeeded")}}}.dump()};
  });
}

TEST(TasksList, AllFollowsNextCursorToTheLastPage) {
  FakeApi api = two_pages();
  TasksCmdOptions o = options(api, "list");
  o.all = true;
  o.limit = 1;
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  const std::vector<Seen> seen = api.requests();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].target, "/v1/tasks?limit=1");
  EXPECT_EQ(seen[1].target, "/v1/tasks?limit=1&cursor=c%2F1");
  EXPECT_THAT(r.out, HasSubstr("\nt-1  "));
  EXPECT_THAT(r.out, HasSubstr("\nt-2  "));
  EXPECT_EQ(r.err, "");
}

TEST(TasksList, AllWithJsonPrintsOneDocumentWithEveryPage) {
  FakeApi api = two_pages();
  TasksCmdOptions o = options(api, "list");
  o.all = true;
  o.json = true;
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(api.requests()[0].target, "/v1/tasks?limit=500");
  const json doc = json::parse(r.out);
  ASSERT_EQ(doc["tasks"].size(), 2u);
  EXPECT_EQ(doc["tasks"][0]["id"], "t-1");
  EXPECT_EQ(doc["tasks"][1]["id"], "t-2");
  EXPECT_FALSE(doc.contains("next_cursor"));
}

TEST(TasksList, ACursorThatRepeatsStopsTheListing) {
  FakeApi api = always({.body = json{{"tasks", {kTask}}, {"next_cursor", "same"}}.dump()});
  TasksCmdOptions o = options(api, "list");
  o.all = true;
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksServiceError);
  EXPECT_EQ(api.requests().size(), 2u);
  EXPECT_THAT(r.err, HasSubstr("cursor 'same' twice"));
}

// ---- show and the commands that change a task ------------------------------------------------

TEST(TasksShow, PrintsTheFieldsAndTheOutcome) {
  FakeApi api = always({.body = kTask.dump()});
  Ran r = run(options(api, "show", "t-1"));
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  Seen s = api.requests()[0];
  EXPECT_EQ(s.method, "GET");
  EXPECT_EQ(s.target, "/v1/tasks/t-1");
  EXPECT_EQ(r.out,
            "id          t-1\n"
            "agent       support\n"
            "status      succeeded\n"
            "input       Refund order 42\n"
            "created     2026-12-04T22:31:07.123Z\n"
            "updated     2026-12-04T22:31:09.456Z\n"
            "attempt     1\n"
            "answer      Refunded.\n"
            "steps       3 (model calls 4, tool calls 2)\n"
            "tokens      812 in, 95 out\n"
            "cost        $0.0031\n"
            "models      sim-primary\n"
            "recovery    retries 1, fallbacks 0, restarts 0\n"
            "tool errors timeout 1\n"
            "wall time   2.333 s\n");
}

TEST(TasksShow, NeedsAttentionShowsWhatItWaitsForAndHowToDecide) {
  json t = task("t-9", "needs_attention");
  t["outcome"]["reason"] = "unsafe effect 'e-3' (idempotency key 'k'): interrupted";
  FakeApi api = always({.body = t.dump()});
  Ran r = run(options(api, "show", "t-9"));
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("waits for   unsafe effect 'e-3' (idempotency key 'k'): interrupted\n"));
  EXPECT_THAT(r.out, HasSubstr("nines tasks resolve t-9 EFFECT_ID --applied"));
}

TEST(TasksShow, JsonPrintsTheTaskAsItIs) {
  FakeApi api = always({.body = kTask.dump()});
  TasksCmdOptions o = options(api, "show", "t-1");
  o.json = true;
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(json::parse(r.out), kTask);
}

TEST(TasksShow, AnUnknownTaskIsExit4WithTheServicesMessage) {
  FakeApi api = always({.status = 404, .body = error_body("not_found", "task 't-x' not found")});
  Ran r = run(options(api, "show", "t-x"));
  EXPECT_EQ(r.rc, kTasksNotFound);
  EXPECT_EQ(r.err, "nines tasks show: task 't-x' not found (404)\n");
  EXPECT_EQ(r.out, "");
}

TEST(TasksShow, A404WithoutAnErrorBodyStillNamesTheTask) {
  FakeApi api = always({.status = 404, .body = "nope"});
  Ran r = run(options(api, "show", "t-x"));
  EXPECT_EQ(r.rc, kTasksNotFound);
  EXPECT_EQ(r.err, "nines tasks show: task 't-x' not found (404)\n");
}

TEST(TasksShow, IdsArePercentEncodedInThePath) {
  FakeApi api = always({.body = kTask.dump()});
  Ran r = run(options(api, "show", "a/b c"));
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(api.requests()[0].target, "/v1/tasks/a%2Fb%20c");
}

TEST(TasksShow, UnauthorizedIsExit1AndSaysHowToGiveAToken) {
  FakeApi api = always({.status = 401, .body = error_body("unauthorized", "a bearer token is required")});
  TasksCmdOptions o = options(api, "show", "t-1");
  o.token = "wrong-token-value";
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksServiceError);
  EXPECT_THAT(r.err, StartsWith("nines tasks show: a bearer token is required (401)"));
  EXPECT_THAT(r.err, HasSubstr("NINES_TOKEN"));
  EXPECT_THAT(r.err + r.out, Not(HasSubstr("wrong-token-value")));
}

TEST(TasksShow, AServiceThatDoesNotAnswerIsExit3NamingTheUrl) {
  std::uint16_t closed_port = 0;
  {
    auto env = make_real_environment({.workers = 1, .seed = 4});
    auto server = net::HttpServer::create(*env, {}, [](net::HttpServerRequest&&, net::HttpResponder) {}).value();
    closed_port = server->port();
  }  // the port is closed again: connections are refused
  TasksCmdOptions o;
  o.command = "show";
  o.task_id = "t-1";
  o.url = "http://127.0.0.1:" + std::to_string(closed_port);
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksUnreachable);
  EXPECT_THAT(r.err, StartsWith("nines tasks show: cannot reach the service at http://127.0.0.1:" +
                                std::to_string(closed_port)));
  EXPECT_THAT(r.err, HasSubstr("nines serve"));
}

TEST(TasksShow, AUrlThatIsNotHttpIsAUsageError) {
  TasksCmdOptions o;
  o.command = "show";
  o.task_id = "t-1";
  o.url = "127.0.0.1:8080";
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksUsageError);
  EXPECT_THAT(r.err, HasSubstr("--url: expected an http:// or https:// URL"));
}

TEST(TasksCancel, PostsToCancelAndSaysSo) {
  FakeApi api = always({.status = 202, .body = task("t-1", "running").dump()});
  TasksCmdOptions o = options(api, "cancel", "t-1");
  o.token = "tok";
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  Seen s = api.requests()[0];
  EXPECT_EQ(s.method, "POST");
  EXPECT_EQ(s.target, "/v1/tasks/t-1/cancel");
  EXPECT_EQ(json::parse(s.body), json::object());
  EXPECT_EQ(s.headers["content-type"], "application/json");
  EXPECT_EQ(s.headers["authorization"], "Bearer tok");
  EXPECT_EQ(r.out, "task t-1: cancel requested (status running)\n");
}

TEST(TasksCancel, ATaskThatEndedIsLeftAsItIs) {
  FakeApi api = always({.status = 200, .body = task("t-1", "succeeded").dump()});
  Ran r = run(options(api, "cancel", "t-1"));
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(r.out, "task t-1 has ended already (succeeded): nothing to cancel\n");
}

TEST(TasksApprove, PostsTheCallId) {
  FakeApi api = always({.body = task("t-1", "running").dump()});
  TasksCmdOptions o = options(api, "approve", "t-1");
  o.call_id = "call_7";
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  Seen s = api.requests()[0];
  EXPECT_EQ(s.method, "POST");
  EXPECT_EQ(s.target, "/v1/tasks/t-1/approve");
  EXPECT_EQ(json::parse(s.body), (json{{"call_id", "call_7"}}));
  EXPECT_EQ(r.out, "task t-1: call call_7 approved (status running)\n");
}

TEST(TasksApprove, ACallDecidedAlreadyIsExit1WithTheConflict) {
  FakeApi api = always({.status = 409, .body = error_body("conflict", "call 'call_7' was decided already")});
  TasksCmdOptions o = options(api, "approve", "t-1");
  o.call_id = "call_7";
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksServiceError);
  EXPECT_EQ(r.err, "nines tasks approve: call 'call_7' was decided already (409)\n");
}

TEST(TasksDeny, PostsTheCallIdAndTheReason) {
  FakeApi api = always({.body = task("t-1", "running").dump()});
  TasksCmdOptions o = options(api, "deny", "t-1");
  o.call_id = "call_7";
  o.reason = "not today";
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(api.requests()[0].target, "/v1/tasks/t-1/deny");
  EXPECT_EQ(json::parse(api.requests()[0].body), (json{{"call_id", "call_7"}, {"reason", "not today"}}));
  EXPECT_EQ(r.out, "task t-1: call call_7 denied (status running)\n");
}

TEST(TasksResolve, PostsTheDecision) {
  FakeApi api = always({.body = task("t-1", "running").dump()});
  TasksCmdOptions o = options(api, "resolve", "t-1");
  o.effect_id = "e-3";
  o.applied = true;
  o.outcome = "{\"charged\": true}";
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(api.requests()[0].method, "POST");
  EXPECT_EQ(api.requests()[0].target, "/v1/tasks/t-1/resolve");
  EXPECT_EQ(json::parse(api.requests()[0].body),
            (json{{"effect_id", "e-3"}, {"applied", true}, {"outcome", "{\"charged\": true}"}}));
  EXPECT_THAT(r.out, HasSubstr("effect e-3 recorded as applied"));

  o.applied = false;
  o.outcome = "";
  r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(json::parse(api.requests()[1].body), (json{{"effect_id", "e-3"}, {"applied", false}}));
  EXPECT_THAT(r.out, HasSubstr("recorded as not applied"));
}

TEST(TasksResolve, ATaskNotInNeedsAttentionIsExit1) {
  FakeApi api = always({.status = 409, .body = error_body("conflict", "task 't-1' is not in needs_attention")});
  TasksCmdOptions o = options(api, "resolve", "t-1");
  o.effect_id = "e-3";
  o.applied = false;
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksServiceError);
  EXPECT_EQ(r.err, "nines tasks resolve: task 't-1' is not in needs_attention (409)\n");
}

TEST(TasksResolve, WithoutADecisionIsAUsageError) {
  TasksCmdOptions o;
  o.command = "resolve";
  o.task_id = "t-1";
  o.effect_id = "e-3";
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksUsageError);
  EXPECT_THAT(r.err, HasSubstr("--applied"));
  o.applied = false;
  o.outcome = "charged";  // an outcome of an effect that did not happen
  r = run(o);
  EXPECT_EQ(r.rc, kTasksUsageError);
  EXPECT_THAT(r.err, HasSubstr("--outcome goes with --applied"));
}

TEST(TasksFork, PostsTheTurnTheInputAndTheNewId) {
  FakeApi api = always({.status = 201, .body = task("t-1b", "running").dump()});
  TasksCmdOptions o = options(api, "fork", "t-1");
  o.at_turn = 2;
  o.input = "Refund order 43";
  o.new_id = "t-1b";
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(api.requests()[0].target, "/v1/tasks/t-1/fork");
  EXPECT_EQ(json::parse(api.requests()[0].body), (json{{"id", "t-1b"}, {"at_turn", 2}, {"input", "Refund order 43"}}));
  EXPECT_EQ(r.out, "task t-1b: forked from t-1 at turn 2 (status running)\n");

  o.at_turn.reset();
  o.input.reset();
  o.new_id = "";
  r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(json::parse(api.requests()[1].body), json::object());
}

// ---- events ----------------------------------------------------------------------------------

std::string sse(const std::string& id, const std::string& type, const json& data) {
  return "id: " + id + "\nevent: " + type + "\ndata: " + data.dump() + "\n\n";
}

json event_data(int step, const std::string& tool, const std::string& detail) {
  return {{"task_id", "t-1"}, {"agent", "support"}, {"step", step},
          {"tool", tool},     {"detail", detail},   {"at", "2026-12-04T22:31:08.010Z"}};
}

const std::vector<std::string> kEvents = {
    sse("5f2c.1", "task_started", event_data(0, "", "attempt 1")),
    // split mid-event: the parser joins the pieces
    sse("5f2c.2", "tool_result", event_data(2, "ledger_charge", "ok")).substr(0, 20),
    sse("5f2c.2", "tool_result", event_data(2, "ledger_charge", "ok")).substr(20) + ": keep-alive\n\n",
    sse("5f2c.3", "task_finished", event_data(3, "", "succeeded")),
};

TEST(TasksEvents, PrintsEachEventOnOneLineAndSendsLastEventId) {
  FakeApi api = always({.events = kEvents});
  TasksCmdOptions o = options(api, "events", "t-1");
  o.last_event_id = "5f2c.0";
  o.token = "tok";
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  Seen s = api.requests()[0];
  EXPECT_EQ(s.method, "GET");
  EXPECT_EQ(s.target, "/v1/tasks/t-1/events");
  EXPECT_EQ(s.headers["last-event-id"], "5f2c.0");
  EXPECT_EQ(s.headers["accept"], "text/event-stream");
  EXPECT_EQ(s.headers["authorization"], "Bearer tok");
  EXPECT_EQ(r.out,
            "step 0 task_started attempt 1\n"
            "step 2 tool_result ledger_charge ok\n"
            "step 3 task_finished succeeded\n");
}

TEST(TasksEvents, JsonPrintsOneLinePerEvent) {
  FakeApi api = always({.events = kEvents});
  TasksCmdOptions o = options(api, "events", "t-1");
  o.json = true;
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_FALSE(api.requests()[0].headers.contains("last-event-id"));
  std::vector<json> lines;
  std::size_t at = 0;
  for (std::size_t nl; (nl = r.out.find('\n', at)) != std::string::npos; at = nl + 1) {
    lines.push_back(json::parse(r.out.substr(at, nl - at)));
  }
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1],
            (json{{"id", "5f2c.2"}, {"event", "tool_result"}, {"data", event_data(2, "ledger_charge", "ok")}}));
  EXPECT_EQ(lines[2]["event"], "task_finished");
}

TEST(TasksEvents, WithoutFollowStopsOnceTheHeldEventsAreIn) {
  // A running task: the stream stays open after what the service holds.
  FakeApi api = always({.events = {kEvents[0]}, .end_stream = false});
  TasksCmdOptions o = options(api, "events", "t-1");
  o.quiet_ms = 300;
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(r.out, "step 0 task_started attempt 1\n");
  EXPECT_THAT(r.err, HasSubstr("--follow"));
}

TEST(TasksEvents, FollowReconnectsAfterTheLastEventItSaw) {
  // The first stream ends (a restart of the service) before task_finished; the second
  // continues after the last event seen.
  FakeApi api([](const Seen&, std::size_t n) -> Canned {
    if (n == 0) return {.events = {kEvents[0], kEvents[1], kEvents[2]}};
    return {.events = {kEvents[3]}};
  });
  TasksCmdOptions o = options(api, "events", "t-1");
  o.follow = true;
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  const std::vector<Seen> seen = api.requests();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_FALSE(seen[0].headers.contains("last-event-id"));
  EXPECT_EQ(seen[1].headers.at("last-event-id"), "5f2c.2");
  EXPECT_EQ(r.out,
            "step 0 task_started attempt 1\n"
            "step 2 tool_result ledger_charge ok\n"
            "step 3 task_finished succeeded\n");
  EXPECT_THAT(r.err, HasSubstr("reconnecting after event 5f2c.2"));
}

TEST(TasksEvents, WithoutFollowACutStreamIsExit3AfterTheEventsBeforeIt) {
  FakeApi api = always({.events = {kEvents[0]}, .cut_stream = true});
  Ran r = run(options(api, "events", "t-1"));
  EXPECT_EQ(r.rc, kTasksUnreachable);
  EXPECT_EQ(r.out, "step 0 task_started attempt 1\n");
  EXPECT_THAT(r.err, StartsWith("nines tasks events: the event stream from " + api.url() + " broke: "));
}

TEST(TasksEvents, FollowGivesUpAfterMaxReconnectsWithoutAnEvent) {
  FakeApi api = always({.events = {": keep-alive\n\n"}});  // every stream ends at once, with no event
  TasksCmdOptions o = options(api, "events", "t-1");
  o.follow = true;
  o.max_reconnects = 1;
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksUnreachable);
  EXPECT_EQ(api.requests().size(), 2u);
  EXPECT_THAT(r.err, HasSubstr("1 reconnects failed; giving up"));
}

TEST(TasksEvents, AnUnknownTaskIsExit4) {
  FakeApi api = always({.status = 404, .body = error_body("not_found", "task 't-x' not found")});
  Ran r = run(options(api, "events", "t-x"));
  EXPECT_EQ(r.rc, kTasksNotFound);
  EXPECT_EQ(r.err, "nines tasks events: task 't-x' not found (404)\n");
}

// ---- the store, directly ---------------------------------------------------------------------

TimePoint at_ms(std::int64_t unix_ms) { return TimePoint(std::chrono::milliseconds(unix_ms)); }
constexpr std::int64_t kT0 = 1796423467123;  // 2026-12-04T22:31:07.123Z

class TasksStore : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("nines_tasks_cmd_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "nines.db").string();
    std::filesystem::remove(path_);
    auto store = open_sqlite_store(path_).value();
    agent::TaskOutcome ok{.status = agent::TaskStatus::kSucceeded, .answer = "Refunded.", .steps = 3, .cost_usd = 0.02};
    agent::TaskOutcome over{.status = agent::TaskStatus::kBudgetExceeded, .reason = "max_steps", .steps = 20};
    WriteBatch b;
    b.create_workflow("t-1", "agent:support", "Refund order 42", at_ms(kT0))
        .set_workflow_status("t-1", WorkflowStatus::kCompleted, agent::encode_outcome(ok), at_ms(kT0 + 2333));
    b.create_workflow("t-2", "agent:support", "Where is order 7?", at_ms(kT0));
    b.create_workflow("t-3", "agent:billing", "Charge order 9", at_ms(kT0));
    b.put_effect_intent({.workflow_id = "t-3",
                         .effect_id = "e-2",
                         .idempotency_key = "t-3#1/2/charge",
                         .nature = EffectNature::kUnsafe,
                         .arguments = R"({"order": 9})",
                         .recorded_at = at_ms(kT0 + 1000)});
    b.put_effect_outcome("t-3", "e-2", EffectState::kNeedsAttention, std::nullopt, at_ms(kT0 + 1500));
    b.set_workflow_status("t-3", WorkflowStatus::kNeedsAttention, "unsafe effect 'e-2': interrupted",
                          at_ms(kT0 + 1500));
    b.create_workflow("t-4", "refund", "not an agent task", at_ms(kT0));
    b.create_workflow("t-5", "agent:support", "Loop", at_ms(kT0))
        .set_workflow_status("t-5", WorkflowStatus::kCompleted, agent::encode_outcome(over), at_ms(kT0 + 9000));
    b.create_workflow("t-6", "agent:support", "Oops", at_ms(kT0))
        .set_workflow_status("t-6", WorkflowStatus::kFailed, encode_error(Error(ErrorKind::kPermanent, "tool broke")),
                             at_ms(kT0 + 5000));
    ASSERT_THAT(store->commit(b), IsOk());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  TasksCmdOptions store_options(std::string command, std::string task_id = "") {
    TasksCmdOptions o;
    o.command = std::move(command);
    o.task_id = std::move(task_id);
    o.store = path_;
    o.url = "http://127.0.0.1:1";  // never asked
    return o;
  }

  std::filesystem::path dir_;
  std::string path_;
};

std::vector<std::string> ids(const std::string& list_json) {
  std::vector<std::string> out;
  const json doc = json::parse(list_json);
  for (const json& t : doc["tasks"]) out.push_back(t["id"]);
  return out;
}

TEST_F(TasksStore, ListsAgentTasksInTheServicesOrder) {
  Ran r = run(store_options("list"));
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_EQ(r.out,
            "ID   AGENT    STATUS           STEPS  COST     UPDATED\n"
            "t-2  support  running          -      -        2026-12-04T22:31:07.123Z\n"
            "t-3  billing  needs_attention  -      -        2026-12-04T22:31:08.623Z\n"
            "t-1  support  succeeded        3      $0.0200  2026-12-04T22:31:09.456Z\n"
            "t-5  support  budget_exceeded  20     $0.0000  2026-12-04T22:31:16.123Z\n"
            "t-6  support  failed           -      -        2026-12-04T22:31:12.123Z\n");
}

TEST_F(TasksStore, ListFiltersByStatusAndAgentAndLimits) {
  TasksCmdOptions o = store_options("list");
  o.json = true;
  o.status = "succeeded";
  EXPECT_THAT(ids(run(o).out), ElementsAre("t-1"));
  o.status = "finished";
  EXPECT_THAT(ids(run(o).out), ElementsAre("t-1", "t-5", "t-6"));
  o.status = "failed";
  EXPECT_THAT(ids(run(o).out), ElementsAre("t-6"));
  o.status = "";
  o.agent = "billing";
  EXPECT_THAT(ids(run(o).out), ElementsAre("t-3"));
  o.agent = "";
  o.limit = 2;
  Ran r = run(o);
  EXPECT_THAT(ids(r.out), ElementsAre("t-2", "t-3"));
  EXPECT_THAT(r.err, HasSubstr("--all"));
  o.all = true;
  EXPECT_THAT(ids(run(o).out), ElementsAre("t-2", "t-3", "t-1", "t-5", "t-6"));
  o.cursor = "c1";  // the service's cursors mean nothing here
  EXPECT_EQ(run(o).rc, kTasksUsageError);
}

TEST_F(TasksStore, ShowsATaskAsTheApiDoes) {
  TasksCmdOptions o = store_options("show", "t-1");
  o.json = true;
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  const json t = json::parse(r.out);
  EXPECT_EQ(t["id"], "t-1");
  EXPECT_EQ(t["agent"], "support");
  EXPECT_EQ(t["status"], "succeeded");
  EXPECT_EQ(t["input"], "Refund order 42");
  EXPECT_EQ(t["created_at"], "2026-12-04T22:31:07.123Z");
  EXPECT_EQ(t["updated_at"], "2026-12-04T22:31:09.456Z");
  EXPECT_EQ(t["outcome"]["answer"], "Refunded.");
  EXPECT_EQ(t["outcome"]["steps"], 3);

  o = store_options("show", "t-6");
  r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("status      failed\n"));
  EXPECT_THAT(r.out, HasSubstr("reason      tool broke\n"));
}

TEST_F(TasksStore, ShowNamesTheEffectsThatWait) {
  Ran r = run(store_options("show", "t-3"));
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("status      needs_attention\n"));
  EXPECT_THAT(r.out, HasSubstr("waits for   unsafe effect 'e-2': interrupted\n"));
  EXPECT_THAT(r.out, HasSubstr("effect      e-2 (unsafe, intent recorded 2026-12-04T22:31:08.123Z)\n"));
  EXPECT_THAT(r.out, HasSubstr("key       t-3#1/2/charge\n"));
  EXPECT_THAT(r.out, HasSubstr("nines tasks resolve t-3 e-2 --store " + path_));
}

TEST_F(TasksStore, ShowOfAnUnknownTaskOrAnotherKindIsExit4) {
  Ran r = run(store_options("show", "t-x"));
  EXPECT_EQ(r.rc, kTasksNotFound);
  EXPECT_EQ(r.err, "nines tasks show: task 't-x' not found (404)\n");
  r = run(store_options("show", "t-4"));
  EXPECT_EQ(r.rc, kTasksNotFound);
  EXPECT_THAT(r.err, HasSubstr("not an agent task"));
}

TEST_F(TasksStore, ResolveRecordsTheDecisionAndSaysTheTaskNeedsAService) {
  TasksCmdOptions o = store_options("resolve", "t-3");
  o.effect_id = "e-2";
  o.applied = true;
  o.outcome = "charged";
  Ran r = run(o);
  ASSERT_EQ(r.rc, kTasksOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("effect e-2 recorded as applied"));
  EXPECT_THAT(r.out, HasSubstr("nines serve"));

  auto store = open_sqlite_store(path_).value();
  EXPECT_EQ(store->get_workflow("t-3").value().status, WorkflowStatus::kRunning);
  auto effects = store->load_effects("t-3").value();
  ASSERT_EQ(effects.size(), 1u);
  EXPECT_EQ(effects[0].state, EffectState::kDone);
  EXPECT_EQ(effects[0].outcome, "charged");

  // Decided already: the task is not in needs_attention any more.
  r = run(o);
  EXPECT_EQ(r.rc, kTasksServiceError);
  EXPECT_THAT(r.err, HasSubstr("not needs_attention"));
}

TEST_F(TasksStore, ResolveOfAnUnknownTaskOrEffectIsExit4) {
  TasksCmdOptions o = store_options("resolve", "t-x");
  o.effect_id = "e-2";
  o.applied = false;
  EXPECT_EQ(run(o).rc, kTasksNotFound);
  o.task_id = "t-3";
  o.effect_id = "e-9";
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksNotFound);
  EXPECT_THAT(r.err, HasSubstr("effect 'e-9'"));
}

TEST_F(TasksStore, OtherCommandsNeedAService) {
  for (const char* command : {"events", "cancel", "approve", "deny", "fork"}) {
    TasksCmdOptions o = store_options(command, "t-1");
    o.call_id = "c";
    Ran r = run(o);
    EXPECT_EQ(r.rc, kTasksUsageError) << command;
    EXPECT_THAT(r.err, HasSubstr("needs a running service")) << command;
  }
}

TEST_F(TasksStore, AMissingFileIsNotCreated) {
  TasksCmdOptions o = store_options("list");
  o.store = "sqlite:" + (dir_ / "missing.db").string();
  Ran r = run(o);
  EXPECT_EQ(r.rc, kTasksUnreachable);
  EXPECT_THAT(r.err, HasSubstr("no such file"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "missing.db"));
  o.store = "mysql://x";
  EXPECT_EQ(run(o).rc, kTasksUsageError);
}

}  // namespace
}  // namespace nines::cli
