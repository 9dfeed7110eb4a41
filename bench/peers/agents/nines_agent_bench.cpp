// nines_agent_bench: the nines worker of bench/peers/agents. It runs the benchmark's agent tasks
// with the agent layer, the way a nines user would, and resumes the unfinished ones when started
// again after a kill -9. Same contract as node/langgraph_agent.mjs (see its header):
//
//   nines_agent_bench --spec SPEC.json --sim URL --ledger URL --db FILE --progress FILE
//                     --tasks N [--concurrency C]
//
// stdout: "worker start pid=<pid> todo=<n>", "resume task-<k>" (a task left running in the
// store by the killed worker), "done task-<k> ok" or "done task-<k> failed <reason>", and at the
// end "summary {json}" (CPU time from getrusage, wall time, tool calls, tasks ok/failed).
//
// The agent: Agents (nines/agent/agent.hpp) on a WorkflowEngine over SQLite (--db; synced
// commits, nines' default), one task = one workflow resumed by running it again under its id.
// The model: a Router with one route, the OpenAI provider on the sim server, 7 attempts per
// call (full jitter 250 ms .. 8 s: the router's default backoff; LangGraph's side has
// ChatOpenAI's 6 retries). Tools: 9 read-only native lookups answering from their argument, and
// `charge`, an HTTP tool (make_http_tool) that POSTs {"reference": "<task>/<reference>"} to the
// ledger with the effect journal's idempotency key as the Idempotency-Key header: declared
// kIdempotent, so a charge interrupted by a kill is sent again with the same key and the ledger
// applies it once. NINES_AGENT_BENCH_BACKOFF=langchain (a control for the model-call figure)
// waits between attempts as LangChain does instead of the router's default.
#include <nlohmann/json.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/agent/http_tool.hpp"
#include "nines/core/environment.hpp"
#include "nines/llm/provider.hpp"
#include "nines/llm/router.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/store/sqlite_store.hpp"
#include "nines/workflow/workflow.hpp"

namespace {

using nlohmann::json;
using namespace nines;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "nines_agent_bench: %s\n", what.c_str());
  std::exit(2);
}

template <class T>
T must(Result<T> r, const char* what) {
  if (!r.ok()) die(std::string(what) + ": " + r.error().to_string());
  return std::move(*r);
}

std::string fill(std::string t, const std::map<std::string, std::string>& vars) {
  std::string out;
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (t[i] == '{') {
      std::size_t end = t.find('}', i);
      if (end != std::string::npos) {
        auto it = vars.find(t.substr(i + 1, end - i - 1));
        if (it != vars.end()) {
          out += it->second;
          i = end;
          continue;
        }
      }
    }
    out += t[i];
  }
  return out;
}

double cpu_us(long sec, long usec) { return static_cast<double>(sec) * 1e6 + static_cast<double>(usec); }

struct Args {
  std::string spec, sim, ledger, db, progress;
  int tasks = 0;
  int concurrency = 20;
};

Args parse(int argc, char** argv) {
  Args a;
  std::map<std::string, std::string*> s = {
      {"--spec", &a.spec}, {"--sim", &a.sim}, {"--ledger", &a.ledger}, {"--db", &a.db}, {"--progress", &a.progress}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (auto it = s.find(k); it != s.end()) {
      *it->second = argv[i + 1];
    } else if (k == "--tasks") {
      a.tasks = std::atoi(argv[i + 1]);
    } else if (k == "--concurrency") {
      a.concurrency = std::atoi(argv[i + 1]);
    } else {
      die("bad argument " + k);
    }
  }
  if (a.spec.empty() || a.sim.empty() || a.ledger.empty() || a.db.empty() || a.progress.empty() || a.tasks <= 0) {
    die("--spec, --sim, --ledger, --db, --progress and --tasks are required");
  }
  return a;
}

// What the runner processes share.
struct Shared {
  agent::Agents* agents = nullptr;
  Store* store = nullptr;
  std::vector<std::string> todo;
  std::string answer;
  std::string user_t;
  FILE* progress = nullptr;
  std::mutex out_mu;
  std::atomic<std::size_t> next{0};
  std::atomic<int> ok{0}, failed{0}, resumed{0};
};

// One runner: takes the next task until none is left.
Task<> run_tasks(Context& ctx, Shared* sh) {
  for (;;) {
    std::size_t i = sh->next.fetch_add(1);
    if (i >= sh->todo.size()) co_return;
    const std::string task = sh->todo[i];
    if (auto w = sh->store->get_workflow(task); w.ok() && w->status == WorkflowStatus::kRunning) {
      sh->resumed.fetch_add(1);
      std::lock_guard lock(sh->out_mu);
      std::printf("resume %s\n", task.c_str());
      std::fflush(stdout);
    }
    std::string input = fill(sh->user_t, {{"task", task}});
    agent::TaskOutcome out = co_await sh->agents->run(ctx, "orders", task, std::move(input));
    std::string line = "done " + task;
    if (out.status == agent::TaskStatus::kSucceeded && out.answer == sh->answer) {
      line += " ok";
      sh->ok.fetch_add(1);
    } else {
      std::string why = std::string(agent::to_string(out.status)) + ": " + out.reason.substr(0, 160);
      for (char& c : why) {
        if (c == '\n') c = ' ';
      }
      line += " failed " + why;
      sh->failed.fetch_add(1);
    }
    std::lock_guard lock(sh->out_mu);
    std::fprintf(sh->progress, "%s\n", line.c_str());
    std::fflush(sh->progress);
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse(argc, argv);
  json spec;
  {
    std::ifstream f(args.spec);
    if (!f) die("cannot read " + args.spec);
    spec = json::parse(f, nullptr, false);
    if (spec.is_discarded()) die(args.spec + " is not JSON");
  }

  auto env = make_real_environment({.workers = 2});
  auto rt = must(Runtime::create(*env), "runtime");
  // NINES_AGENT_BENCH_DURABILITY=batched: LangGraph's durability (its SqliteSaver does not
  // fsync); the default is nines' own, a synced commit per record.
  SqliteStoreOptions store_options;
  if (const char* d = std::getenv("NINES_AGENT_BENCH_DURABILITY"); d != nullptr && std::string(d) == "batched") {
    store_options.durability = Durability::kBatched;
  }
  auto store = must(open_sqlite_store(args.db, store_options), "sqlite store");
  auto engine = must(WorkflowEngine::create(*env, *store), "workflow engine");
  std::shared_ptr<net::HttpClient> http = must(net::HttpClient::create(*env), "http client");

  std::shared_ptr<llm::ChatModel> provider =
      must(llm::make_provider({.name = "sim", .api = llm::Provider::kOpenAi, .base_url = args.sim}, *http), "provider");
  llm::ModelRouteOptions route{.name = "sim", .model = "sim-1", .client = provider};
  route.retry.max_attempts = 7;
  // NINES_AGENT_BENCH_BACKOFF=langchain: a control, not nines' default: LangChain's waits
  // (p-retry: 1 s x 2^n x a random factor in [1, 2], i.e. equal jitter from 2 s), to measure how
  // much of the model calls per task depends on the time a task spends waiting between attempts
  // (a task waiting is not in a call, so a kill cuts no call of it).
  if (const char* b = std::getenv("NINES_AGENT_BENCH_BACKOFF"); b != nullptr && std::string(b) == "langchain") {
    route.retry.backoff = Backoff::equal_jitter(std::chrono::seconds(2), std::chrono::seconds(64));
  }
  auto router = std::shared_ptr<llm::Router>(
      must(llm::Router::create(*env, {.name = "bench", .chain = {std::move(route)}}), "router"));

  std::atomic<std::uint64_t> tool_calls{0};
  std::vector<std::shared_ptr<agent::Tool>> tools;
  std::vector<std::string> names;
  for (const json& t : spec.at("tools")) {
    const std::string name = t.at("name").get<std::string>();
    const std::string key = t.at("key").get<std::string>();
    const std::string schema = json{
        {"type", "object"},
        {"properties", {{key, {{"type", "string"}}}}},
        {"required", {key}},
        {"additionalProperties",
         false}}.dump();
    names.push_back(name);
    if (name == "charge") {
      agent::ToolSpec http_spec{
          .name = "charge_http",
          .description = "POST /charges",
          .parameters_schema_json = R"({"type":"object","properties":{"reference":{"type":"string"}}})",
          .nature = EffectNature::kIdempotent};
      auto post = must(agent::make_http_tool(http_spec,
                                             {.method = agent::HttpMethod::kPost,
                                              .url_template = args.ledger + "/charges",
                                              .body_template = R"({{"reference": {reference}}})"},
                                             http),
                       "charge tool");
      const std::string reference_t = spec.at("charge_reference").get<std::string>();
      const std::string result_t = spec.at("charge_result").get<std::string>();
      agent::ToolSpec charge{.name = name,
                             .description = t.at("description").get<std::string>(),
                             .parameters_schema_json = schema,
                             .nature = EffectNature::kIdempotent};
      tools.push_back(must(agent::make_native_tool(
                               charge,
                               [post, key, reference_t, result_t, &tool_calls](
                                   Context& ctx, const agent::ToolInvocation& inv) -> Task<Result<std::string>> {
                                 tool_calls.fetch_add(1);
                                 json a = json::parse(inv.arguments_json);
                                 const std::string reference = fill(
                                     reference_t, {{"task", inv.task_id}, {"reference", a.at(key).get<std::string>()}});
                                 agent::ToolInvocation inner = inv;
                                 inner.arguments_json = json{{"reference", reference}}.dump();
                                 Result<std::string> r = co_await post->call(ctx, inner);
                                 if (!r.ok()) co_return r.error();
                                 json body = json::parse(*r, nullptr, false);
                                 std::string id =
                                     body.is_object() ? body.value("id", std::string("?")) : std::string("?");
                                 co_return fill(result_t, {{"reference", reference}, {"charge_id", id}});
                               }),
                           "charge"));
    } else {
      const std::string lookup_t = spec.at("lookup_result").get<std::string>();
      agent::ToolSpec lookup{.name = name,
                             .description = t.at("description").get<std::string>(),
                             .parameters_schema_json = schema,
                             .nature = EffectNature::kReadOnly};
      tools.push_back(must(
          agent::make_native_tool(lookup,
                                  [name, key, lookup_t, &tool_calls](
                                      Context&, const agent::ToolInvocation& inv) -> Task<Result<std::string>> {
                                    tool_calls.fetch_add(1);
                                    json a = json::parse(inv.arguments_json);
                                    co_return fill(
                                        lookup_t,
                                        {{"tool", name}, {"key", a.at(key).get<std::string>()}, {"task", inv.task_id}});
                                  }),
          "lookup"));
    }
  }
  auto registry = must(agent::ToolRegistry::create(*env, tools), "tool registry");
  auto agents = must(agent::Agents::create(*env, *engine, registry), "agents");
  agent::AgentOptions orders{
      .name = "orders", .router = router, .system_prompt = spec.at("system_prompt").get<std::string>(), .tools = names};
  orders.max_invalid_tool_calls = 20;
  orders.budget.max_steps = 50;
  if (Status s = agents->add_agent(orders); !s.ok()) die("add_agent: " + s.error().to_string());

  // Tasks that ended in an earlier run are not run again; those left running are resumed.
  std::set<std::string> ended;
  {
    std::ifstream f(args.progress);
    std::string line;
    while (std::getline(f, line)) {
      std::istringstream is(line);
      std::string done, task;
      if (is >> done >> task && done == "done") ended.insert(task);
    }
  }
  std::vector<std::string> todo;
  for (int k = 0; k < args.tasks; ++k) {
    std::string id = "task-" + std::to_string(k);
    if (!ended.contains(id)) todo.push_back(id);
  }
  std::printf("worker start pid=%d todo=%zu\n", static_cast<int>(getpid()), todo.size());
  std::fflush(stdout);

  Shared sh{.agents = agents.get(),
            .store = store.get(),
            .todo = std::move(todo),
            .answer = spec.at("answer").get<std::string>(),
            .user_t = spec.at("user_message").get<std::string>(),
            .progress = std::fopen(args.progress.c_str(), "a")};
  if (sh.progress == nullptr) die("cannot open " + args.progress);

  rusage ru0{};
  getrusage(RUSAGE_SELF, &ru0);
  const TimePoint t0 = env->now();
  Shared* shared = &sh;
  Behavior runner = [shared](Context& ctx) -> Task<> { co_await run_tasks(ctx, shared); };
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int c = 0; c < std::max(1, args.concurrency); ++c) {
    watches.push_back(must(rt->spawn_watched(runner), "spawn").exit);
  }
  for (auto& w : watches) w->wait();
  const double wall_s = std::chrono::duration<double>(env->now() - t0).count();
  rusage ru1{};
  getrusage(RUSAGE_SELF, &ru1);
  std::fclose(sh.progress);
  json summary = {{"tasks_run", sh.todo.size()},
                  {"ok", sh.ok.load()},
                  {"failed", sh.failed.load()},
                  {"resumed", sh.resumed.load()},
                  {"tool_calls", tool_calls.load()},
                  {"cpu_user_us", cpu_us(ru1.ru_utime.tv_sec, ru1.ru_utime.tv_usec) -
                                      cpu_us(ru0.ru_utime.tv_sec, ru0.ru_utime.tv_usec)},
                  {"cpu_system_us", cpu_us(ru1.ru_stime.tv_sec, ru1.ru_stime.tv_usec) -
                                        cpu_us(ru0.ru_stime.tv_sec, ru0.ru_stime.tv_usec)},
                  {"wall_s", wall_s}};
  std::printf("summary %s\n", summary.dump().c_str());
  std::fflush(stdout);
  return 0;
}
