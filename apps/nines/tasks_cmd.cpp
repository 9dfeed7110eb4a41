// `nines tasks ...`: the service's task routes (docs/api.md) as commands, and a direct look at the
// store for when no service runs. The contract: tasks_cmd.hpp; the reference: docs/cli.md.
//
// Over HTTP every command is one request (list --all: one per page; events: a stream, opened
// again after a break with --follow) made from one process on a private environment, on the
// net layer's HttpClient (connect timeout 5 s, 30 s for a whole request; a followed event
// stream has no total timeout). The answers are JSON, read with nlohmann-json without
// exceptions: a field missing or of another type shows as "-".
#include "tasks_cmd.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "api_client.hpp"
#include "nines/agent/agent.hpp"
#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/sse.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/store/postgres_store.hpp"
#include "nines/store/sqlite_store.hpp"
#include "nines/store/store.hpp"
#include "nines/workflow/workflow.hpp"

namespace nines::cli {

namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using api::dump;
using api::fmt;
using api::integer_text;
using api::member;
using api::one_line;
using api::pct;
using api::render_task;
using api::Reporter;
using api::str;

constexpr std::uint32_t kMaxPages = 100'000;  // list --all: a service that never ends its cursor chain
constexpr std::uint32_t kAllPageSize = 500;   // list --all without --limit: the largest page the API gives

// ---- text for people -------------------------------------------------------------------------

// One row per task: id, agent, status, steps, cost, updated.
std::string render_table(const std::vector<json>& tasks) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"ID", "AGENT", "STATUS", "STEPS", "COST", "UPDATED"});
  for (const json& t : tasks) {
    const json& o = member(t, "outcome");
    rows.push_back({str(t, "id", "-"), str(t, "agent", "-"), str(t, "status", "-"), integer_text(o, "steps"),
                    api::cost_text(o), str(t, "updated_at", "-")});
  }
  std::vector<std::size_t> width(rows.front().size(), 0);
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::string text;
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      std::string cell = r[i];
      if (i + 1 < r.size()) cell.resize(width[i] + 2, ' ');
      line += cell;
    }
    text += line + "\n";
  }
  return text;
}

// ---- HTTP ------------------------------------------------------------------------------------

// The service, as this command talks to it: the shared API client and the command's options.
struct Service : api::Api {
  const TasksCmdOptions& o;

  std::string task_path(const std::string& suffix = "") const { return api::task_path(o.task_id, suffix); }
};

std::string task_what(const TasksCmdOptions& o) { return "task '" + o.task_id + "'"; }

Task<int> http_list(Context& ctx, const Service& s) {
  const TasksCmdOptions& o = s.o;
  std::vector<json> tasks;
  std::string cursor = o.cursor;
  std::set<std::string> seen_cursors;
  const std::uint32_t limit = o.limit != 0 ? o.limit : (o.all ? kAllPageSize : 0);
  for (std::uint32_t page = 0; page < kMaxPages; ++page) {
    std::string query;
    auto add = [&query](const char* key, const std::string& value) {
      if (!value.empty()) query += std::string(query.empty() ? "?" : "&") + key + "=" + pct(value);
    };
    add("status", o.status);
    add("agent", o.agent);
    add("limit", limit != 0 ? std::to_string(limit) : "");
    add("cursor", cursor);
    int rc = kTasksOk;
    net::HttpRequest req = s.request("GET", "/v1/tasks" + query);  // named: g++ 12 and temporaries in co_await
    Result<api::JsonAnswer> a = co_await api::exchange(ctx, s, std::move(req), "the task list", rc);
    if (!a.ok()) co_return rc;
    const json& list = member(a->body, "tasks");
    if (!list.is_array()) co_return s.r.fail(kTasksServiceError, "the service's answer has no \"tasks\" list");
    if (!o.all) {
      if (o.json) {
        s.r.out(dump(a->body));
        co_return kTasksOk;
      }
      s.r.out(render_table(std::vector<json>(list.begin(), list.end())));
      const std::string next = str(a->body, "next_cursor");
      if (!next.empty()) s.r.note("more tasks: --all, or --cursor " + next);
      co_return kTasksOk;
    }
    tasks.insert(tasks.end(), list.begin(), list.end());
    cursor = str(a->body, "next_cursor");
    if (cursor.empty()) break;
    if (!seen_cursors.insert(cursor).second) {
      co_return s.r.fail(kTasksServiceError, "the service gave the cursor '" + cursor + "' twice; stopping");
    }
  }
  if (o.json) {
    s.r.out(dump(json{{"tasks", tasks}}));
  } else {
    s.r.out(render_table(tasks));
  }
  co_return kTasksOk;
}

// show, cancel, approve, deny, resolve, fork: one request answered with a task.
Task<int> http_task_call(Context& ctx, const Service& s) {
  const TasksCmdOptions& o = s.o;
  const std::string& c = o.command;
  net::HttpRequest req;
  if (c == "show") {
    req = s.request("GET", s.task_path());
  } else if (c == "cancel") {
    req = s.request("POST", s.task_path("/cancel"), "{}");
  } else if (c == "approve") {
    req = s.request("POST", s.task_path("/approve"), dump(json{{"call_id", o.call_id}}));
  } else if (c == "deny") {
    json body = {{"call_id", o.call_id}};
    if (!o.reason.empty()) body["reason"] = o.reason;
    req = s.request("POST", s.task_path("/deny"), dump(body));
  } else if (c == "resolve") {
    json body = {{"effect_id", o.effect_id}, {"applied", o.applied.value_or(false)}};
    if (!o.outcome.empty()) body["outcome"] = o.outcome;
    req = s.request("POST", s.task_path("/resolve"), dump(body));
  } else {  // fork
    json body = json::object();
    if (!o.new_id.empty()) body["id"] = o.new_id;
    if (o.at_turn) body["at_turn"] = *o.at_turn;
    if (o.input) body["input"] = *o.input;
    req = s.request("POST", s.task_path("/fork"), dump(body));
  }
  int rc = kTasksOk;
  const std::string what = task_what(o);
  Result<api::JsonAnswer> a = co_await api::exchange(ctx, s, std::move(req), what, rc);
  if (!a.ok()) co_return rc;
  if (o.json) {
    s.r.out(dump(a->body));
    co_return kTasksOk;
  }
  const json& t = a->body;
  const std::string status = str(t, "status", "-");
  if (c == "show") {
    s.r.out(render_task(t));
    if (status == "needs_attention") {
      s.r.out("\nAn operator decides: nines tasks resolve " + o.task_id +
              " EFFECT_ID --applied [--outcome TEXT] | --not-applied (the effect is named above)\n");
    }
  } else if (c == "cancel") {
    s.r.out(a->status == 202 ? "task " + o.task_id + ": cancel requested (status " + status + ")\n"
                             : "task " + o.task_id + " has ended already (" + status + "): nothing to cancel\n");
  } else if (c == "approve" || c == "deny") {
    s.r.out("task " + o.task_id + ": call " + o.call_id + (c == "approve" ? " approved" : " denied") + " (status " +
            status + ")\n");
  } else if (c == "resolve") {
    s.r.out("task " + o.task_id + ": effect " + o.effect_id +
            (o.applied.value_or(false) ? " recorded as applied" : " recorded as not applied (it will run again)") +
            "; the task runs again (status " + status + ")\n");
  } else {
    s.r.out("task " + str(t, "id", "-") + ": forked from " + o.task_id + " at turn " +
            std::to_string(o.at_turn.value_or(0)) + " (status " + status + ")\n");
  }
  co_return kTasksOk;
}

// events: the stream, printed as it comes; with --follow opened again after a break.
Task<int> http_events(Context& ctx, const Service& s) {
  const TasksCmdOptions& o = s.o;
  const api::StreamOptions options{.follow = o.follow,
                                   .last_event_id = o.last_event_id,
                                   .quiet_ms = o.quiet_ms,
                                   .max_reconnects = o.max_reconnects,
                                   .note_when_caught_up = !o.json};
  co_return co_await api::stream_events(ctx, s, o.task_id, options, [&s, &o](const net::SseEvent& ev) {
    s.r.out(o.json ? api::event_json_line(ev) : api::render_event(ev));
  });
}

Task<> run_http_process(Context& ctx, net::HttpClient& http, const TasksCmdOptions& o, const Reporter& r, int& rc) {
  std::string base = o.url;
  while (base.ends_with('/')) base.pop_back();
  const Service s{{.http = http, .r = r, .base = base, .token = o.token}, o};
  if (o.command == "list") {
    rc = co_await http_list(ctx, s);
  } else if (o.command == "events") {
    rc = co_await http_events(ctx, s);
  } else {
    rc = co_await http_task_call(ctx, s);
  }
}

int run_http(const TasksCmdOptions& o, const Reporter& r) {
  if (!o.url.starts_with("http://") && !o.url.starts_with("https://")) {
    return r.fail(kTasksUsageError, "--url: expected an http:// or https:// URL, got '" + net::redact_url(o.url) + "'");
  }
  auto env = make_real_environment({.workers = 1, .seed = 1, .log_level = LogLevel::kError});
  auto rt = Runtime::create(*env, {.workers = 1});
  if (!rt.ok()) return r.fail(kTasksServiceError, rt.error().to_string());
  net::HttpClientOptions options;
  if (api::loopback_url(o.url)) options.proxy = "";  // a proxy from the environment is no way to loopback
  auto http = net::HttpClient::create(*env, std::move(options));
  if (!http.ok()) return r.fail(kTasksServiceError, http.error().to_string());
  int rc = kTasksServiceError;
  net::HttpClient& client = **http;
  auto w = (*rt)->spawn_watched([&](Context& ctx) { return run_http_process(ctx, client, o, r, rc); });
  if (!w.ok()) return r.fail(kTasksServiceError, w.error().to_string());
  ExitReason why = w->exit->wait();
  if (!why.is_normal()) rc = r.fail(kTasksServiceError, "the request ended abnormally: " + why.to_string());
  http->reset();  // before the environment
  return rc;
}

// ---- the store, directly ---------------------------------------------------------------------

constexpr std::string_view kAgentKindPrefix = "agent:";

std::string rfc3339(TimePoint t) {
  const std::int64_t ns = t.time_since_epoch().count();
  std::int64_t secs = ns / 1'000'000'000;
  std::int64_t ms = (ns % 1'000'000'000) / 1'000'000;
  if (ms < 0) {
    ms += 1000;
    secs -= 1;
  }
  const std::time_t tt = static_cast<std::time_t>(secs);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt("%s.%03lldZ", buf, static_cast<long long>(ms));
}

// The API's form of an outcome (agent::outcome_api_json).
json outcome_json(const agent::TaskOutcome& o) { return json::parse(agent::outcome_api_json(o)); }

// The record as the API's task object. The task's status: the workflow's, except completed,
// which is the recorded outcome's. Outcomes of failed, cancelled and needs_attention
// workflows hold only the status and the reason (the store has no counters for them).
json task_json(const WorkflowRecord& w) {
  json t = {{"id", w.id},
            {"agent", w.kind.substr(kAgentKindPrefix.size())},
            {"status", std::string(to_string(w.status))},
            {"input", w.input},
            {"created_at", rfc3339(w.created_at)},
            {"updated_at", rfc3339(w.updated_at)},
            {"attempt", w.attempt}};
  switch (w.status) {
    case WorkflowStatus::kRunning: break;
    case WorkflowStatus::kCompleted: {
      Result<agent::TaskOutcome> o = agent::decode_outcome(w.result);
      if (o.ok()) {
        t["status"] = std::string(agent::to_string(o->status));
        t["outcome"] = outcome_json(*o);
      } else {
        t["status"] = "failed";
        t["outcome"] = {{"status", "failed"},
                        {"reason", "the recorded outcome cannot be read: " + o.error().message()}};
      }
      break;
    }
    case WorkflowStatus::kNeedsAttention: t["outcome"] = {{"status", "needs_attention"}, {"reason", w.result}}; break;
    case WorkflowStatus::kFailed:
    case WorkflowStatus::kCancelled: {
      std::optional<Error> e = decode_error(w.result);
      t["outcome"] = {{"status", std::string(to_string(w.status))}, {"reason", e ? e->message() : w.result}};
      break;
    }
  }
  return t;
}

bool is_agent_task(const WorkflowRecord& w) { return w.kind.starts_with(kAgentKindPrefix); }

// One status's workflows in id order, read a page at a time.
class StatusPager {
 public:
  StatusPager(Store& store, WorkflowStatus status) : store_(store), status_(status) {}
  // The next record, nullopt at the end; the store's error as it is.
  Result<std::optional<WorkflowRecord>> peek() {
    if (pos_ == page_.size() && !done_) {
      Result<std::vector<WorkflowRecord>> page = store_.list_workflows(status_, after_, kPage);
      if (!page.ok()) return std::move(page).error();
      page_ = std::move(*page);
      pos_ = 0;
      done_ = page_.size() < kPage;
      if (!page_.empty()) after_ = page_.back().id;
    }
    if (pos_ == page_.size()) return std::optional<WorkflowRecord>();
    return std::optional<WorkflowRecord>(page_[pos_]);
  }
  void pop() { ++pos_; }

 private:
  static constexpr std::size_t kPage = 200;
  Store& store_;
  WorkflowStatus status_;
  std::string after_;
  std::vector<WorkflowRecord> page_;
  std::size_t pos_ = 0;
  bool done_ = false;
};

int store_error(const Reporter& r, const Error& e, const std::string& what) {
  if (e.kind() == ErrorKind::kNotFound) return r.fail(kTasksNotFound, what + " not found (" + e.message() + ")");
  if (e.kind() == ErrorKind::kTransient) return r.fail(kTasksUnreachable, "the store: " + e.message());
  return r.fail(kTasksServiceError, "the store: " + e.message());
}

// The same order as the service: running, needs_attention, then every ended task, by id.
int store_list(Store& store, const TasksCmdOptions& o, const Reporter& r) {
  const std::set<std::string> ended = {"succeeded", "failed", "budget_exceeded", "loop_detected", "cancelled"};
  auto wanted = [&](const std::string& status) {
    if (o.status.empty()) return true;
    if (o.status == "finished") return ended.contains(status);
    return status == o.status;
  };
  std::vector<std::vector<WorkflowStatus>> groups;
  if (o.status.empty() || o.status == "running") groups.push_back({WorkflowStatus::kRunning});
  if (o.status.empty() || o.status == "needs_attention") groups.push_back({WorkflowStatus::kNeedsAttention});
  if (o.status != "running" && o.status != "needs_attention") {
    std::vector<WorkflowStatus> g = {WorkflowStatus::kCompleted};
    if (o.status.empty() || o.status == "finished" || o.status == "failed") g.push_back(WorkflowStatus::kFailed);
    if (o.status.empty() || o.status == "finished" || o.status == "cancelled") g.push_back(WorkflowStatus::kCancelled);
    groups.push_back(g);
  }
  const std::size_t limit = o.all ? SIZE_MAX : (o.limit != 0 ? o.limit : 50);
  std::vector<json> tasks;
  bool more = false;
  for (const auto& group : groups) {
    std::vector<StatusPager> pagers;
    for (WorkflowStatus st : group) pagers.emplace_back(store, st);
    for (;;) {
      // The smallest id among the group's statuses next.
      StatusPager* next = nullptr;
      std::optional<WorkflowRecord> rec;
      for (StatusPager& p : pagers) {
        Result<std::optional<WorkflowRecord>> head = p.peek();
        if (!head.ok()) return store_error(r, head.error(), "the task list");
        if (*head && (!rec || (*head)->id < rec->id)) {
          rec = std::move(*head);
          next = &p;
        }
      }
      if (next == nullptr) break;
      next->pop();
      if (!is_agent_task(*rec)) continue;
      if (!o.agent.empty() && rec->kind.substr(kAgentKindPrefix.size()) != o.agent) continue;
      json t = task_json(*rec);
      if (!wanted(str(t, "status"))) continue;
      if (tasks.size() == limit) {
        more = true;
        break;
      }
      tasks.push_back(std::move(t));
    }
    if (more) break;
  }
  if (o.json) {
    r.out(dump(json{{"tasks", tasks}}));
  } else {
    r.out(render_table(tasks));
  }
  if (more) r.note("more tasks: --all, or a larger --limit");
  return kTasksOk;
}

int store_show(Store& store, const TasksCmdOptions& o, const Reporter& r) {
  Result<WorkflowRecord> w = store.get_workflow(o.task_id);
  if (!w.ok()) {
    if (w.error().kind() == ErrorKind::kNotFound) return r.fail(kTasksNotFound, task_what(o) + " not found (404)");
    return store_error(r, w.error(), task_what(o));
  }
  if (!is_agent_task(*w)) {
    return r.fail(kTasksNotFound,
                  task_what(o) + " not found: it is a workflow of kind '" + w->kind + "', not an agent task");
  }
  Result<std::vector<EffectRecord>> effects = store.load_effects(o.task_id);
  if (!effects.ok()) return store_error(r, effects.error(), task_what(o));
  json t = task_json(*w);
  std::vector<const EffectRecord*> waiting;
  for (const EffectRecord& e : *effects) {
    if (e.state == EffectState::kNeedsAttention) waiting.push_back(&e);
  }
  if (o.json) {
    json list = json::array();
    for (const EffectRecord* e : waiting) {
      list.push_back({{"effect_id", e->effect_id},
                      {"nature", std::string(to_string(e->nature))},
                      {"idempotency_key", e->idempotency_key},
                      {"arguments", e->arguments},
                      {"intent_at", rfc3339(e->intent_at)}});
    }
    t["effects_waiting"] = list;  // the store's view only: not a field of the API's task object
    r.out(dump(t));
    return kTasksOk;
  }
  std::string text = render_task(t);
  for (const EffectRecord* e : waiting) {
    text += fmt("\neffect      %s (%s, intent recorded %s)\n", e->effect_id.c_str(),
                std::string(to_string(e->nature)).c_str(), rfc3339(e->intent_at).c_str());
    text += fmt("  key       %s\n  arguments %s\n", e->idempotency_key.c_str(), one_line(e->arguments).c_str());
    text += "  decide:   nines tasks resolve " + o.task_id + " " + e->effect_id + " --store " + o.store +
            " --applied [--outcome TEXT] | --not-applied\n";
  }
  r.out(text);
  return kTasksOk;
}

int store_resolve(Store& store, const TasksCmdOptions& o, const Reporter& r) {
  auto env = make_real_environment({.workers = 1, .seed = 1, .log_level = LogLevel::kError});
  auto engine = WorkflowEngine::create(*env, store, {.commit = WorkflowEngineOptions::Commit::kInline});
  if (!engine.ok()) return r.fail(kTasksServiceError, engine.error().to_string());
  Result<WorkflowRecord> before = store.get_workflow(o.task_id);
  if (!before.ok()) {
    if (before.error().kind() == ErrorKind::kNotFound) return r.fail(kTasksNotFound, task_what(o) + " not found (404)");
    return store_error(r, before.error(), task_what(o));
  }
  const EffectResolution resolution{.applied = o.applied.value_or(false), .outcome = o.outcome};
  if (Status s = (*engine)->resolve_effect(o.task_id, o.effect_id, resolution); !s.ok()) {
    if (s.error().kind() == ErrorKind::kNotFound) {
      return r.fail(kTasksNotFound,
                    "effect '" + o.effect_id + "' of " + task_what(o) + " not found (" + s.error().message() + ")");
    }
    return store_error(r, s.error(), task_what(o));
  }
  Result<WorkflowRecord> after = store.get_workflow(o.task_id);
  if (o.json) {
    if (!after.ok()) return store_error(r, after.error(), task_what(o));
    r.out(dump(task_json(*after)));
    return kTasksOk;
  }
  std::string text = "task " + o.task_id + ": effect " + o.effect_id +
                     (resolution.applied ? " recorded as applied (its outcome goes to the model)"
                                         : " recorded as not applied (it runs again, with its idempotency key)") +
                     "\n";
  if (after.ok() && after->status == WorkflowStatus::kNeedsAttention) {
    text += "the task still needs attention: other effects wait for a decision ('nines tasks show " + o.task_id +
            " --store ...' lists them)\n";
  } else {
    text +=
        "the task is running again in the store, but nothing runs it from here: start the service "
        "('nines serve -c FILE') on this store to resume it\n";
  }
  r.out(text);
  return kTasksOk;
}

int run_store(const TasksCmdOptions& o, const Reporter& r) {
  if (o.command != "list" && o.command != "show" && o.command != "resolve") {
    return r.fail(kTasksUsageError, "needs a running service (--url); with --store only list, show and resolve work");
  }
  const bool postgres = o.store.starts_with("postgres://") || o.store.starts_with("postgresql://");
  const bool sqlite = o.store.starts_with("sqlite:") || o.store.ends_with(".db");
  if (!postgres && !sqlite) {
    return r.fail(kTasksUsageError, "--store: expected sqlite:PATH, a PATH ending in .db, or postgres://..., got '" +
                                        net::redact_url(o.store) + "'");
  }
  const std::string path = o.store.starts_with("sqlite:") ? o.store.substr(7) : o.store;
  std::error_code ec;
  // Opening creates a missing file: a mistyped path would look like an empty store.
  if (sqlite && (path.empty() || !std::filesystem::exists(path, ec))) {
    return r.fail(kTasksUnreachable, "--store: no such file '" + path + "'");
  }
  Result<std::unique_ptr<Store>> store = postgres ? open_postgres_store(o.store) : open_sqlite_store(path);
  if (!store.ok()) {
    return r.fail(kTasksUnreachable,
                  "--store: cannot open " + net::redact_url(o.store) + ": " + store.error().message());
  }
  if (o.command == "list") return store_list(**store, o, r);
  if (o.command == "show") return store_show(**store, o, r);
  return store_resolve(**store, o, r);
}

// What CLI11 checks too, checked again for callers that build options by hand.
std::string usage_problem(const TasksCmdOptions& o) {
  static const std::set<std::string> kCommands = {"list",    "show", "events",  "cancel",
                                                  "approve", "deny", "resolve", "fork"};
  if (!kCommands.contains(o.command)) return "unknown command '" + o.command + "'";
  if (o.command != "list" && o.task_id.empty()) return "ID is required";
  if ((o.command == "approve" || o.command == "deny") && o.call_id.empty()) return "CALL_ID is required";
  if (o.command == "resolve" && o.effect_id.empty()) return "EFFECT_ID is required";
  if (o.command == "resolve" && !o.applied) return "one of --applied and --not-applied is required";
  if (o.command == "resolve" && !*o.applied && !o.outcome.empty()) return "--outcome goes with --applied only";
  if (o.limit > 500) return "--limit: expected a whole number from 1 to 500";
  if (!o.store.empty() && !o.cursor.empty())
    return "--cursor: the service's cursors do not apply to --store (use --all)";
  return "";
}

}  // namespace

int run_tasks(const TasksCmdOptions& o, const TasksIo& io) {
  const Reporter r(io, "nines tasks " + o.command);
  if (std::string problem = usage_problem(o); !problem.empty()) return r.fail(kTasksUsageError, problem);
  return o.store.empty() ? run_http(o, r) : run_store(o, r);
}

}  // namespace nines::cli
