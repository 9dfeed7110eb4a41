// `nines demo service` (demo_service.hpp): nines serve under chaos, driven through its API.
#include "demo_service.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/http_server.hpp"
#include "nines/runtime/runtime.hpp"

extern char** environ;

namespace nines::cli {

namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// ---- the ledger: the side effect whose duplicates the demo counts -----------------------------

// POST /charge/{account} with an Idempotency-Key: applied once per key (a resend with the same
// key gets the recorded answer, as a payments API does). The journal's keys start with the task
// id ("<task>#..."): a (task, account) charged under two keys is an effect applied twice.
class Ledger {
 public:
  void handle(net::HttpServerRequest&& req, net::HttpResponder r) {
    const std::string path(req.path());
    const std::string key(req.headers.get("Idempotency-Key").value_or(""));
    if (req.method != "POST" || path.rfind("/charge/", 0) != 0 || key.empty()) {
      (void)r.respond(400, {{"Content-Type", "application/json"}}, R"({"error":"POST /charge/{account} with a key"})");
      return;
    }
    const std::string account = path.substr(8);
    const std::string task = key.substr(0, key.find('#'));
    bool replay = false;
    {
      std::lock_guard lock(mu_);
      ++requests_;
      replay = !keys_.insert(key).second;
      if (!replay) charged_[{task, account}].insert(key);
    }
    json body{{"ok", true}, {"account", account}, {"replayed", replay}};
    (void)r.respond(200, {{"Content-Type", "application/json"}}, body.dump());
  }
  // (task, account) pairs charged under more than one key.
  std::size_t duplicates() const {
    std::lock_guard lock(mu_);
    std::size_t n = 0;
    for (const auto& [k, keys] : charged_) n += keys.size() > 1 ? 1 : 0;
    return n;
  }
  std::size_t applied() const {
    std::lock_guard lock(mu_);
    return keys_.size();
  }
  std::size_t requests() const {
    std::lock_guard lock(mu_);
    return requests_;
  }

 private:
  mutable std::mutex mu_;
  std::set<std::string> keys_;
  std::map<std::pair<std::string, std::string>, std::set<std::string>> charged_;
  std::size_t requests_ = 0;
};

// ---- the config --------------------------------------------------------------------------------

std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    const std::string p = dir + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return {};
}

struct Setup {
  std::string dir;
  std::string mcp_script;  // empty: no MCP server
  std::string real_model;  // empty: the sim
  std::uint16_t ledger_port = 0;
  std::uint64_t seed = 7;
  std::uint32_t tasks = 0;
};

std::string config_text(const Setup& s) {
  std::ostringstream c;
  const bool mcp = !s.mcp_script.empty();
  // The scenario: read the order (MCP), charge it (HTTP), answer.
  std::string scenario;
  if (mcp)
    scenario += "        - tool_calls: [{name: fs_read_text_file, arguments: {path: " + s.dir + "/files/order.txt}}]\n";
  scenario += "        - tool_calls: [{name: ledger_charge, arguments: {account: acct-7, cents: 1250}}]\n";
  scenario += "        - answer: Charged 12.50 for order 42.\n";
  // A provider outage: a run of calls forced unavailable, long enough to open the breaker.
  std::string outage;
  const std::uint32_t from = std::max<std::uint32_t>(20, s.tasks / 2), to = from + 40;
  for (std::uint32_t call = from; call < to; ++call) {
    outage += "        - {call: " + std::to_string(call) + ", fault: unavailable}\n";
  }
  c << "# Written by `nines demo service`.\nversion: 1\n"
    << "store:\n  sqlite: {path: " << s.dir << "/nines.db, durability: synced}\n"
    << "models:\n";
  if (!s.real_model.empty()) {
    const char* base = std::getenv("NINES_MODEL_BASE_URL");
    c << "  primary:\n    provider: openai\n    model: " << s.real_model << "\n";
    if (base != nullptr && *base != '\0') c << "    base_url: " << base << "\n";
    if (std::getenv("OPENAI_API_KEY") != nullptr) c << "    api_key_env: OPENAI_API_KEY\n";
    c << "    price: {input_per_mtok: 0.15, output_per_mtok: 0.6}\n";
  } else {
    c << "  primary:\n    provider: sim\n    model: sim-1\n"
      << "    price: {input_per_mtok: 2.5, output_per_mtok: 10}\n"
      << "    retry: {max_attempts: 3, backoff: {base: 50ms, cap: 1s}}\n"
      << "    breaker: {window_size: 20, minimum_calls: 8, failure_rate_threshold: 0.5, open_duration: 3s}\n"
      << "    sim:\n      seed: " << s.seed << "\n      fault_key: position\n"
      << "      latency: {first_byte: {distribution: lognormal, median_ms: 150, sigma: 0.5, max_ms: 2000}}\n"
      << "      scenario:\n"
      << scenario << "      faults:\n"
      << "        rate_limited: {probability: 0.05, retry_after_ms: 200}\n"
      << "        server_error: {probability: 0.03}\n"
      << "        unavailable: {probability: 0.02}\n"
      << "        hallucinated_tool: {probability: 0.04}\n"
      << "        invalid_tool_args: {probability: 0.03}\n"
      << "        loop: {probability: 0.02}\n"
      << "      schedule:\n"
      << outage;
  }
  c << "  fallback:\n    provider: sim\n    model: sim-small\n"
    << "    price: {input_per_mtok: 0.15, output_per_mtok: 0.6}\n"
    << "    sim:\n      seed: " << s.seed + 1 << "\n"
    << "      latency: {first_byte: {distribution: fixed, ms: 80}}\n"
    << "      scenario:\n"
    << scenario;
  c << "tools:\n  ledger_charge:\n    type: http\n    description: Charge an account on the ledger.\n"
    << "    parameters:\n      type: object\n      properties: {account: {type: string}, cents: {type: integer, "
       "minimum: 1}}\n"
    << "      required: [account, cents]\n"
    << "    method: POST\n    url: http://127.0.0.1:" << s.ledger_port << "/charge/{account}\n"
    << "    nature: idempotent\n    timeout: 5s\n";
  if (mcp) {
    c << "mcp_servers:\n  fs:\n    command: [" << find_on_path("node") << ", " << s.mcp_script << ", " << s.dir
      << "/files]\n    tool_prefix: fs_\n    nature: {read_text_file: read_only, read_file: read_only}\n";
  }
  c << "agents:\n  support:\n    models: [primary, fallback]\n"
    << "    system_prompt: You settle orders. Read the order, charge it once, confirm.\n"
    << "    tools: [ledger_charge]\n";
  if (mcp) c << "    mcp_servers: [fs]\n";
  // A model that repeats a call (the sim's loop fault repeats the last tool calls) is stopped
  // by the loop guard before the repeat runs: the same charge is never asked of the ledger twice
  // by the model either, so a duplicate in the report can only be the runtime's.
  c << "    guards:\n      budget: {max_steps: 12, max_cost_usd: 0.5}\n"
    << "      loop: {max_identical_calls: 2}\n"
    << "server:\n  address: 127.0.0.1\n  port: 0\n  shutdown_grace: 10s\n"
    << "logging: {level: info}\n";
  return c.str();
}

// ---- the service as a child process -------------------------------------------------------------

struct Child {
  pid_t pid = -1;
  std::string url;
};

// Starts `nines serve` with its output appended to `log`; the URL is read from its "listening
// on" line. Waits up to 60 s.
Task<Result<Child>> start_service(Context& ctx, const std::string& config, const std::string& log) {
  std::error_code ec;
  const auto offset = std::filesystem::exists(log, ec) ? std::filesystem::file_size(log, ec) : 0;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  std::string self = "/proc/self/exe";
  std::vector<std::string> args = {"nines", "serve", "-c", config, "--port", "0"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The demo's own signal mask is not the service's.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  Child child;
  const int rc = posix_spawn(&child.pid, self.c_str(), &fa, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) co_return Error(ErrorKind::kStartFailed, "cannot start nines serve: " + std::string(strerror(rc)));
  for (int i = 0; i < 600; ++i) {
    (void)co_await ctx.sleep(100ms);
    int status = 0;
    if (::waitpid(child.pid, &status, WNOHANG) == child.pid) {
      co_return Error(ErrorKind::kStartFailed, "nines serve exited at start (its log: " + log + ")");
    }
    std::ifstream in(log);
    in.seekg(static_cast<std::streamoff>(offset));
    std::string line;
    while (std::getline(in, line)) {
      const std::size_t at = line.find("listening on http://");
      if (at == std::string::npos || line.find("nines serve:") != 0) continue;
      std::string url = line.substr(at + 13);
      child.url = url.substr(0, url.find(' '));
      co_return child;
    }
  }
  ::kill(child.pid, SIGKILL);
  ::waitpid(child.pid, nullptr, 0);
  co_return Error(ErrorKind::kTimeout, "nines serve did not start within 60 s (its log: " + log + ")");
}

// The MCP server's node process: a child of the service whose command line names the package.
pid_t find_mcp_child(pid_t service) {
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return -1;
  pid_t found = -1;
  while (dirent* e = ::readdir(d)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string s((std::istreambuf_iterator<char>(stat)), {});
    const std::size_t close = s.rfind(')');
    if (close == std::string::npos) continue;
    int ppid = 0;
    char state = 0;
    if (std::sscanf(s.c_str() + close + 1, " %c %d", &state, &ppid) != 2 || ppid != service) continue;
    std::ifstream cmd("/proc/" + std::to_string(pid) + "/cmdline");
    std::string c((std::istreambuf_iterator<char>(cmd)), {});
    if (c.find("server-filesystem") != std::string::npos) found = pid;
  }
  ::closedir(d);
  return found;
}

// ---- the driver --------------------------------------------------------------------------------

struct Tally {
  std::map<std::string, std::size_t> by_status;
  std::size_t ended = 0;
  std::int64_t retries = 0, fallbacks = 0, restarts = 0, degraded = 0, input_tokens = 0, output_tokens = 0;
  double cost = 0;
  std::map<std::string, std::int64_t> tool_errors;
};

struct Driver {
  const DemoServiceOptions& o;
  net::HttpClient& http;
  Ledger& ledger;
  std::string config;
  std::string log;
  Child service;
  int rc = 1;

  net::HttpRequest request(std::string method, const std::string& path, std::string body = {}) const {
    net::HttpRequest r;
    r.method = std::move(method);
    r.url = service.url + path;
    r.body = std::move(body);
    if (!r.body.empty()) r.headers.add("Content-Type", "application/json");
    r.timeouts = net::HttpTimeouts{.connect = 2s, .first_byte = 10s, .idle = 10s, .total = 10s};
    return r;
  }

  // Every task of the service (pages of 500), or an error while it is down.
  Task<Result<Tally>> tally(Context& ctx) {
    Tally t;
    std::string cursor;
    for (;;) {
      std::string path = "/v1/tasks?limit=500";
      if (!cursor.empty()) path += "&cursor=" + cursor;
      Result<net::HttpResponse> r = co_await http.request(ctx, request("GET", path));
      if (!r.ok()) co_return std::move(r).error();
      if (r->status != 200) co_return Error(ErrorKind::kTransient, "GET /v1/tasks: " + std::to_string(r->status));
      json page = json::parse(r->body, nullptr, false);
      if (page.is_discarded()) co_return Error(ErrorKind::kTransient, "GET /v1/tasks: not JSON");
      const json tasks = page.value("tasks", json::array());
      for (const json& task : tasks) {
        const std::string status = task.value("status", "");
        ++t.by_status[status];
        if (status != "running") ++t.ended;
        if (!task.contains("outcome")) continue;
        const json& out = task["outcome"];
        t.retries += out.value("retries", std::int64_t{0});
        t.fallbacks += out.value("fallbacks", std::int64_t{0});
        t.restarts += out.value("restarts", std::int64_t{0});
        t.degraded += out.value("degraded", false) ? 1 : 0;
        t.input_tokens += out.value("input_tokens", std::int64_t{0});
        t.output_tokens += out.value("output_tokens", std::int64_t{0});
        t.cost += out.value("cost_usd", 0.0);
        const json errors = out.value("tool_errors", json::object());
        for (const auto& [kind, n] : errors.items()) {
          if (n.is_number_integer()) t.tool_errors[kind] += n.get<std::int64_t>();
        }
      }
      if (!page.contains("next_cursor")) break;
      cursor = page["next_cursor"].get<std::string>();
    }
    co_return t;
  }

  Task<std::string> breakers(Context& ctx) {
    Result<net::HttpResponse> r = co_await http.request(ctx, request("GET", "/v1/models"));
    if (!r.ok() || r->status != 200) co_return "?";
    json j = json::parse(r->body, nullptr, false);
    std::string out;
    if (j.is_discarded()) co_return "?";
    const json models = j.value("models", json::array());
    for (const json& m : models) {
      const json routes = m.value("routes", json::array());
      for (const json& route : routes) {
        out += (out.empty() ? "" : " ") + m.value("name", "") + "=" + route.value("breaker", "");
      }
    }
    co_return out;
  }

  Task<bool> ready(Context& ctx) {
    Result<net::HttpResponse> r = co_await http.request(ctx, request("GET", "/readyz"));
    co_return r.ok() && r->status == 200;
  }

  Task<> run(Context& ctx) {
    const TimePoint t0 = ctx.now();
    auto secs = [&] { return std::chrono::duration<double>(ctx.now() - t0).count(); };
    Result<Child> started = co_await start_service(ctx, config, log);
    if (!started.ok()) {
      std::printf("demo: %s\n", started.error().message().c_str());
      co_return;
    }
    service = *started;
    std::printf("nines serve is up at %s (pid %d); submitting %u tasks, %u at a time\n\n", service.url.c_str(),
                service.pid, o.tasks, o.concurrency);
    std::uint32_t next = 0;  // tasks submitted (their keys demo-0 .. demo-next-1)
    std::string event;       // what the chaos did since the last line
    bool mcp_killed = !o.kill, service_killed = !o.kill;
    double recovery_s = -1;
    Tally last;
    double last_print = -1;
    for (;;) {
      Result<Tally> t = co_await tally(ctx);
      if (t.ok()) last = *t;
      // Submit while fewer than `concurrency` of ours are running.
      const std::size_t running = last.by_status.count("running") ? last.by_status["running"] : 0;
      std::uint32_t budget = running < o.concurrency ? o.concurrency - static_cast<std::uint32_t>(running) : 0;
      while (t.ok() && budget > 0 && next < o.tasks) {
        json body{{"agent", "support"}, {"input", "Settle order " + std::to_string(42 + next)}};
        net::HttpRequest req = request("POST", "/v1/tasks", body.dump());
        req.headers.add("Idempotency-Key", "demo-" + std::to_string(o.seed) + "-" + std::to_string(next));
        Result<net::HttpResponse> r = co_await http.request(ctx, std::move(req));
        if (!r.ok() || (r->status != 200 && r->status != 201)) break;  // the service is down: later
        ++next;
        --budget;
      }
      // Chaos: the MCP server at 20%, the service at 40%.
      if (!mcp_killed && last.ended * 5 >= o.tasks) {
        mcp_killed = true;
        const pid_t mcp = find_mcp_child(service.pid);
        if (mcp > 0 && ::kill(mcp, SIGKILL) == 0) {
          event += (event.empty() ? "" : "; ") + std::string("killed the MCP server (pid ") + std::to_string(mcp) + ")";
        }
      }
      if (!service_killed && last.ended * 5 >= o.tasks * 2) {
        service_killed = true;
        ::kill(service.pid, SIGKILL);
        ::waitpid(service.pid, nullptr, 0);
        const TimePoint down = ctx.now();
        std::printf("[%5.1fs] kill -9 nines serve (pid %d); starting it again\n", secs(), service.pid);
        Result<Child> again = co_await start_service(ctx, config, log);
        if (!again.ok()) {
          std::printf("demo: %s\n", again.error().message().c_str());
          co_return;
        }
        service = *again;
        while (!co_await ready(ctx)) (void)co_await ctx.sleep(20ms);
        recovery_s = std::chrono::duration<double>(ctx.now() - down).count();
        char back[128];
        std::snprintf(back, sizeof back, "service back (pid %d), ready %.2f s after the kill", service.pid, recovery_s);
        event += (event.empty() ? "" : "; ") + std::string(back);
      }
      if (secs() - last_print >= 1 || (next == o.tasks && last.ended >= o.tasks)) {
        last_print = secs();
        std::string outcomes;
        for (const auto& [status, n] : last.by_status) outcomes += " " + status + "=" + std::to_string(n);
        if (outcomes.empty()) outcomes = " -";
        const std::string b = co_await breakers(ctx);
        std::printf("[%5.1fs] %zu/%u done |%s | retries %lld fallbacks %lld restarts %lld | breakers %s%s%s\n", secs(),
                    last.ended, o.tasks, outcomes.c_str(), static_cast<long long>(last.retries),
                    static_cast<long long>(last.fallbacks), static_cast<long long>(last.restarts), b.c_str(),
                    event.empty() ? "" : " | ", event.c_str());
        std::fflush(stdout);
        event.clear();
      }
      if (next == o.tasks && last.ended >= o.tasks) break;
      if (secs() > 600) {
        std::printf("demo: not every task ended within 10 minutes\n");
        break;
      }
      (void)co_await ctx.sleep(200ms);
    }

    // The report.
    const std::size_t dups = ledger.duplicates();
    std::printf("\n== report\n");
    std::printf("tasks:              %u submitted, %zu ended\n", o.tasks, last.ended);
    for (const auto& [status, n] : last.by_status) std::printf("  %-18s%zu\n", status.c_str(), n);
    if (recovery_s >= 0) std::printf("recovery:           kill -9 -> ready again in %.2f s\n", recovery_s);
    std::printf("task restarts:      %lld (runs resumed at their last recorded step)\n",
                static_cast<long long>(last.restarts));
    std::printf("retries:            %lld model calls beyond one per turn\n", static_cast<long long>(last.retries));
    std::printf("fallbacks:          %lld (tasks served by the fallback model at least once: %lld)\n",
                static_cast<long long>(last.fallbacks), static_cast<long long>(last.degraded));
    std::string errors;
    for (const auto& [kind, n] : last.tool_errors) errors += " " + kind + "=" + std::to_string(n);
    std::printf("tool errors:       %s\n", errors.empty() ? " none" : errors.c_str());
    std::printf("ledger:             %zu charges applied, %zu requests (resends with the same key included)\n",
                ledger.applied(), ledger.requests());
    std::printf("duplicate effects:  %zu\n", dups);
    std::printf("tokens:             %lld in, %lld out; cost $%.4f\n", static_cast<long long>(last.input_tokens),
                static_cast<long long>(last.output_tokens), last.cost);

    // A graceful stop.
    ::kill(service.pid, SIGTERM);
    int status = 0;
    ::waitpid(service.pid, &status, 0);
    std::printf("nines serve stopped on SIGTERM: exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    const bool all_ended = last.ended >= o.tasks && next == o.tasks;
    if (all_ended && dups == 0) {
      std::printf("\nOK: every task reached an outcome and no effect was applied twice.\n");
      rc = 0;
    } else {
      std::printf("\nFAILED: %s\n", !all_ended ? "not every task reached an outcome" : "an effect was applied twice");
    }
  }
};

}  // namespace

int run_demo_service(const DemoServiceOptions& o) {
  if (o.tasks == 0 || o.concurrency == 0) {
    std::fprintf(stderr, "nines demo service: --tasks and --concurrency must be at least 1\n");
    return 2;
  }
  // The service we start must not inherit a blocked SIGTERM; we block nothing ourselves.
  std::error_code ec;
  std::string tmpl = (std::filesystem::temp_directory_path(ec) / "nines-demo-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::fprintf(stderr, "nines demo service: cannot make a temporary directory\n");
    return 1;
  }
  Setup s{.dir = tmpl, .seed = o.seed, .tasks = o.tasks};
  std::filesystem::create_directories(s.dir + "/files", ec);
  std::ofstream(s.dir + "/files/order.txt") << "order 42: 1 x nines t-shirt, 12.50 USD, account acct-7\n";
  const std::string script =
      std::filesystem::absolute(
          "tests/agent/mcp_servers/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js", ec)
          .string();
  if (!find_on_path("node").empty() && std::filesystem::exists(script, ec)) {
    s.mcp_script = script;
  } else {
    std::printf("(no node or @modelcontextprotocol/server-filesystem here: the demo runs without its MCP tool)\n");
  }
  if (std::getenv("OPENAI_API_KEY") != nullptr || std::getenv("NINES_MODEL_BASE_URL") != nullptr) {
    const char* m = std::getenv("NINES_MODEL");
    s.real_model = m != nullptr && *m != '\0' ? m : "gpt-4o-mini";
    std::printf("(a model API is configured: the primary model is %s, not the faulty sim)\n", s.real_model.c_str());
  }

  auto env = make_real_environment({.workers = 2, .seed = o.seed, .log_level = LogLevel::kError});
  auto rt = Runtime::create(*env, {.workers = 2});
  if (!rt.ok()) return 1;
  Ledger ledger;
  auto server = net::HttpServer::create(
      *env, {.bind_address = "127.0.0.1", .port = 0},
      [&ledger](net::HttpServerRequest&& req, net::HttpResponder r) { ledger.handle(std::move(req), std::move(r)); });
  if (!server.ok()) {
    std::fprintf(stderr, "nines demo service: the ledger: %s\n", server.error().to_string().c_str());
    return 1;
  }
  s.ledger_port = (*server)->port();
  const std::string config = s.dir + "/nines.yaml";
  std::ofstream(config) << config_text(s);
  net::HttpClientOptions ho;
  ho.proxy = "";  // loopback only
  auto http = net::HttpClient::create(*env, std::move(ho));
  if (!http.ok()) return 1;
  std::printf(
      "nines demo service: %u tasks through nines serve, with a flaky model, an outage, a tool server crash%s\n",
      o.tasks, o.kill ? " and a kill -9" : "");
  std::printf("work directory: %s (config nines.yaml, store nines.db, service log serve.log)\n\n", s.dir.c_str());
  Driver d{.o = o, .http = **http, .ledger = ledger, .config = config, .log = s.dir + "/serve.log"};
  auto w = (*rt)->spawn_watched([&d](Context& ctx) { return d.run(ctx); });
  if (w.ok()) w->exit->wait();
  if (d.service.pid > 0 && ::kill(d.service.pid, 0) == 0) {
    ::kill(d.service.pid, SIGKILL);
    ::waitpid(d.service.pid, nullptr, 0);
  }
  (*server)->stop();
  http->reset();
  if (!o.keep) {
    std::filesystem::remove_all(s.dir, ec);
  } else {
    std::printf("kept %s\n", s.dir.c_str());
  }
  return d.rc;
}

}  // namespace nines::cli
