// MCP tool servers (agent/mcp.hpp) against real servers nobody here wrote: the reference servers
// @modelcontextprotocol/server-everything and server-filesystem (npm, installed by
// scripts/setup.sh into tests/agent/mcp_servers), plus tests/agent/fake_mcp_server.mjs for the
// failures real servers do not show on demand (garbage, hangs, exits, bad versions). Every test
// runs real child processes on a real runtime and checks afterwards that no child and no zombie
// is left. They fail when node or the packages are missing, unless NINES_SKIP_MCP=1 asks for a
// skip.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "agent/proc_children.hpp"
#include "nines/agent/mcp.hpp"
#include "nines/agent/registry.hpp"
#include "nines/runtime/runtime.hpp"
#include "support/status_matchers.hpp"

namespace nines::agent {
namespace {

namespace fs = std::filesystem;
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::SizeIs;

fs::path servers_dir() {
  if (const char* d = std::getenv("NINES_MCP_SERVERS_DIR")) return d;
  return fs::path(NINES_AGENT_TEST_DIR) / "mcp_servers";
}
fs::path module_dir() { return servers_dir() / "node_modules/@modelcontextprotocol"; }
std::string everything_js() { return (module_dir() / "server-everything/dist/index.js").string(); }
std::string filesystem_js() { return (module_dir() / "server-filesystem/dist/index.js").string(); }
std::string fake_js() { return (fs::path(NINES_AGENT_TEST_DIR) / "fake_mcp_server.mjs").string(); }

using test::children_of_this_process;

using test::live_in_group;

bool mcp_skipped() {
  const char* v = std::getenv("NINES_SKIP_MCP");
  return v && std::string(v) == "1";
}

#define REQUIRE_MCP_SERVERS()                                                                                   \
  do {                                                                                                          \
    if (mcp_skipped()) GTEST_SKIP() << "NINES_SKIP_MCP=1";                                                      \
    ASSERT_TRUE(fs::exists(everything_js()) && fs::exists(filesystem_js()))                                     \
        << "the MCP reference servers (npm @modelcontextprotocol/server-everything and server-filesystem) are " \
           "not installed in "                                                                                  \
        << servers_dir() << ". Install them with scripts/setup.sh (npm ci in tests/agent/mcp_servers), "        \
        << "or set NINES_SKIP_MCP=1 to skip these tests";                                                       \
  } while (0)

class McpTest : public ::testing::Test {
 protected:
  void TearDown() override {
    rt.reset();  // kills whatever owner is left; its child is killed and reaped as it unwinds
    EXPECT_THAT(children_left_after(std::chrono::seconds(5)), SizeIs(0))
        << "a child process or zombie was left behind (still there 5 s after the runtime went)";
  }

  // This process's children, once there are none or `bound` (real time, from the environment)
  // has passed. The last holder of a child may drop it on another thread a moment after the
  // runtime is gone (the environment's loop thread can hold the runtime's core for a wake), and
  // it reaps the child then: that lag is allowed; a child never reaped is still there after
  // `bound` and fails the test.
  std::vector<std::string> children_left_after(Duration bound) {
    const TimePoint until = env->now() + bound;
    for (;;) {
      std::vector<std::string> left = children_of_this_process();
      if (left.empty() || env->now() >= until) return left;
      std::promise<void> tick;
      std::future<void> ticked = tick.get_future();
      env->add_timer(env->now() + std::chrono::milliseconds(10), [&tick] { tick.set_value(); });
      ticked.wait();
    }
  }

  void run(std::function<Task<>(Context&)> body) {
    auto w = rt->spawn_watched(std::move(body)).value();
    ExitReason r = w.exit->wait();
    EXPECT_TRUE(r.is_normal()) << r.to_string() << "\n" << logs->dump();
  }

  McpServerOptions everything() { return {.name = "everything", .command = {"node", everything_js(), "stdio"}}; }
  McpServerOptions fake(std::vector<std::string> extra = {}) {
    McpServerOptions o{.name = "fake", .command = {"node", fake_js()}};
    o.command.insert(o.command.end(), extra.begin(), extra.end());
    o.restart_backoff = Backoff::constant(std::chrono::milliseconds(10));
    return o;
  }

  static std::shared_ptr<Tool> find(const std::vector<std::shared_ptr<Tool>>& tools, const std::string& name) {
    for (const auto& t : tools) {
      if (t->spec().name == name) return t;
    }
    return nullptr;
  }

  // Waits (on the owner's answers, not on time) until `n` calls are in flight.
  static Task<Result<McpServerStatus>> until_in_flight(Context& ctx, McpServer& server, std::size_t n) {
    for (;;) {
      auto s = co_await server.status(ctx);
      if (!s.ok() || s->in_flight >= n) co_return s;
      co_await ctx.yield();
    }
  }

  std::shared_ptr<CaptureSink> logs = std::make_shared<CaptureSink>();
  std::unique_ptr<Environment> env =
      make_real_environment({.workers = 2, .seed = 7, .log_level = LogLevel::kDebug, .log_sink = logs});
  std::unique_ptr<Runtime> rt = Runtime::create(*env).value();
};

// ---- the reference servers ----

TEST_F(McpTest, EverythingListsToolsWithSchemasAndNatures) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = everything();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    std::vector<std::shared_ptr<Tool>> tools = (*server)->tools();
    EXPECT_GE(tools.size(), 5u);
    std::shared_ptr<Tool> echo = find(tools, "echo");
    EXPECT_NE(echo, nullptr);
    if (echo) {
      EXPECT_THAT(echo->spec().parameters_schema_json, AllOf(HasSubstr("\"message\""), HasSubstr("\"required\"")));
      EXPECT_EQ(echo->spec().description, "Echoes back the input string");
      EXPECT_EQ(echo->spec().nature, EffectNature::kReadOnly);  // readOnlyHint
    }
    EXPECT_NE(find(tools, "get-sum"), nullptr);
    auto status = co_await (*server)->status(ctx);
    EXPECT_THAT(status, IsOk());
    if (status.ok()) {
      EXPECT_TRUE(status->up);
      EXPECT_EQ(status->protocol_version, "2025-06-18");
      EXPECT_GT(status->child_pid, 0);
    }
    co_await (*server)->stop(ctx);
    EXPECT_THAT(children_of_this_process(), SizeIs(0));
  });
}

TEST_F(McpTest, EverythingCallsEchoAndSumThroughTools) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = everything();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    auto tools = (*server)->tools();
    std::shared_ptr<Tool> echo = find(tools, "echo");
    std::shared_ptr<Tool> sum = find(tools, "get-sum");
    EXPECT_TRUE(echo && sum);
    if (!echo || !sum) co_return;
    ToolInvocation call{
        .task_id = "t1", .call_id = "c1", .arguments_json = R"({"message":"hello mcp"})", .idempotency_key = "t1/c1"};
    Result<std::string> r = co_await echo->call(ctx, call);
    EXPECT_THAT(r, IsOk());
    if (r.ok()) {
      EXPECT_EQ(*r, "Echo: hello mcp");
    }
    ToolInvocation add{
        .task_id = "t1", .call_id = "c2", .arguments_json = R"({"a":2,"b":40})", .idempotency_key = "t1/c2"};
    Result<std::string> s = co_await sum->call(ctx, add);
    EXPECT_THAT(s, IsOk());
    if (s.ok()) {
      EXPECT_THAT(*s, HasSubstr("is 42"));
    }
    co_await (*server)->stop(ctx);
  });
}

TEST_F(McpTest, EverythingRefusesInvalidArgumentsWithItsOwnMessage) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = everything();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    Result<std::string> r = co_await (*server)->call(ctx, "get-sum", R"({"a":"two"})", "k1");
    EXPECT_THAT(r, StatusIs(ErrorKind::kPermanent, "expected number"));
    Result<std::string> unknown = co_await (*server)->call(ctx, "no-such-tool", "{}", "k2");
    EXPECT_FALSE(unknown.ok());
    if (!unknown.ok()) {
      EXPECT_TRUE(unknown.error().kind() == ErrorKind::kPermanent ||
                  unknown.error().kind() == ErrorKind::kInvalidArgument)
          << unknown.error().to_string();
      EXPECT_THAT(unknown.error().message(), HasSubstr("no-such-tool"));
    }
    Result<std::string> not_object = co_await (*server)->call(ctx, "echo", "[1,2]", "k3");
    EXPECT_THAT(not_object, StatusIs(ErrorKind::kInvalidArgument, "not a JSON object"));
    co_await (*server)->stop(ctx);
  });
}

TEST_F(McpTest, EverythingCallsFromManyProcessesShareOneChild) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = everything();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    std::shared_ptr<McpServer> srv = *server;
    auto before = co_await srv->status(ctx);
    constexpr int kCallers = 12;
    std::vector<MonitorRef> mons;
    auto ok = std::make_shared<std::atomic<int>>(0);
    for (int i = 0; i < kCallers; ++i) {
      Behavior caller = [srv, ok, i](Context& c) -> Task<> {
        for (int j = 0; j < 3; ++j) {
          std::string text = "m" + std::to_string(i) + "-" + std::to_string(j);
          auto r = co_await srv->call(c, "echo", R"({"message":")" + text + R"("})", text);
          if (r.ok() && *r == "Echo: " + text) ++*ok;
        }
      };
      auto pid = ctx.spawn(std::move(caller));
      EXPECT_THAT(pid, IsOk());
      if (pid.ok()) mons.push_back(ctx.monitor(*pid));
    }
    for (MonitorRef m : mons) (void)co_await ctx.wait_down(m, std::chrono::seconds(30));
    EXPECT_EQ(ok->load(), kCallers * 3);
    auto after = co_await srv->status(ctx);
    EXPECT_TRUE(before.ok() && after.ok());
    if (before.ok() && after.ok()) {
      EXPECT_EQ(before->child_pid, after->child_pid);
      EXPECT_EQ(after->restarts, 0u);
    }
    co_await srv->stop(ctx);
  });
}

TEST_F(McpTest, EverythingKilledMidCallFailsItTransientlyAndTheNextCallWorks) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = everything();
    o.restart_backoff = Backoff::constant(std::chrono::milliseconds(50));
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    std::shared_ptr<McpServer> srv = *server;
    auto outcome = std::make_shared<std::optional<Result<std::string>>>();
    Behavior caller = [srv, outcome](Context& c) -> Task<> {
      auto r = co_await srv->call(c, "trigger-long-running-operation", R"({"duration":60,"steps":1})", "long-1");
      outcome->emplace(std::move(r));
    };
    auto pid = ctx.spawn(std::move(caller));
    EXPECT_THAT(pid, IsOk());
    if (!pid.ok()) co_return;
    MonitorRef mon = ctx.monitor(*pid);
    auto s = co_await until_in_flight(ctx, *srv, 1);
    EXPECT_THAT(s, IsOk());
    if (!s.ok()) co_return;
    const int old_child = s->child_pid;
    EXPECT_EQ(::kill(old_child, SIGKILL), 0);
    (void)co_await ctx.wait_down(mon, std::chrono::seconds(30));
    EXPECT_TRUE(outcome->has_value());
    if (outcome->has_value()) {
      EXPECT_THAT(**outcome, StatusIs(ErrorKind::kTransient,
                                      "mcp server 'everything' exited with signal 9 while the call was in flight"));
    }
    // The next call waits for the restarted child.
    auto r = co_await srv->call(ctx, "echo", R"({"message":"again"})", "k2", std::chrono::seconds(30));
    EXPECT_THAT(r, IsOk());
    if (r.ok()) {
      EXPECT_EQ(*r, "Echo: again");
    }
    auto after = co_await srv->status(ctx);
    EXPECT_THAT(after, IsOk());
    if (after.ok()) {
      EXPECT_EQ(after->restarts, 1u);
      EXPECT_NE(after->child_pid, old_child);
      EXPECT_THAT(after->last_failure, HasSubstr("exited with signal 9"));
    }
    EXPECT_EQ(logs->count("mcp_server_failed"), 1u) << logs->dump();
    co_await srv->stop(ctx);
    EXPECT_THAT(children_of_this_process(), SizeIs(0));
  });
}

TEST_F(McpTest, FilesystemWritesAndReadsInsideItsDirectoryOnly) {
  REQUIRE_MCP_SERVERS();
  fs::path dir = fs::temp_directory_path() / ("nines_mcp_fs_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  dir = fs::canonical(dir);
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o{.name = "fs", .command = {"node", filesystem_js(), dir.string()}, .tool_prefix = "fs_"};
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    auto tools = (*server)->tools();
    std::shared_ptr<Tool> write = find(tools, "fs_write_file");
    std::shared_ptr<Tool> read = find(tools, "fs_read_text_file");
    std::shared_ptr<Tool> edit = find(tools, "fs_edit_file");
    EXPECT_TRUE(write && read && edit);
    if (!write || !read || !edit) co_return;
    EXPECT_EQ(write->spec().nature, EffectNature::kIdempotent);  // idempotentHint
    EXPECT_EQ(read->spec().nature, EffectNature::kReadOnly);
    EXPECT_EQ(edit->spec().nature, EffectNature::kUnsafe);
    const std::string file = (dir / "note.txt").string();
    ToolInvocation w{.arguments_json = R"({"path":")" + file + R"(","content":"written by nines\n"})",
                     .idempotency_key = "w1"};
    auto wr = co_await write->call(ctx, w);
    EXPECT_THAT(wr, IsOk());
    ToolInvocation r{.arguments_json = R"({"path":")" + file + R"("})", .idempotency_key = "r1"};
    auto rd = co_await read->call(ctx, r);
    EXPECT_THAT(rd, IsOk());
    if (rd.ok()) {
      EXPECT_EQ(*rd, "written by nines\n");
    }
    ToolInvocation outside{.arguments_json = R"({"path":"/etc/hostname"})", .idempotency_key = "r2"};
    auto denied = co_await read->call(ctx, outside);
    EXPECT_THAT(denied, StatusIs(ErrorKind::kPermanent, "Access denied"));
    co_await (*server)->stop(ctx);
  });
  std::ifstream in(dir / "note.txt");
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "written by nines\n");
  fs::remove_all(dir);
}

TEST_F(McpTest, FilesystemLargeResultIsCutWithAMarker) {
  REQUIRE_MCP_SERVERS();
  fs::path dir = fs::temp_directory_path() / ("nines_mcp_big_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  dir = fs::canonical(dir);
  {
    std::ofstream out(dir / "big.txt");
    std::string line(99, 'a');
    for (int i = 0; i < 30'000; ++i) out << line << '\n';  // 3,000,000 bytes
  }
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o{.name = "fs", .command = {"node", filesystem_js(), dir.string()}};
    o.max_result_bytes = 1 << 20;
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    const std::string args = R"({"path":")" + (dir / "big.txt").string() + R"("})";
    auto r = co_await (*server)->call(ctx, "read_text_file", args, "big");
    EXPECT_THAT(r, IsOk());
    if (r.ok()) {
      EXPECT_LE(r->size(), (1u << 20) + 64);
      EXPECT_GE(r->size(), 1u << 20);
      EXPECT_THAT(*r, EndsWith("[... cut: " + std::to_string(3'000'000 - (1 << 20)) + " more bytes]"));
    }
    co_await (*server)->stop(ctx);
  });
  fs::remove_all(dir);
}

TEST_F(McpTest, TheRegistryValidatesAndRetriesAReadOnlyCallThroughARestart) {
  REQUIRE_MCP_SERVERS();
  fs::path dir = fs::temp_directory_path() / ("nines_mcp_reg_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  run([&](Context& ctx) -> Task<> {
    McpServerOptions e = everything();
    e.restart_backoff = Backoff::constant(std::chrono::milliseconds(50));
    auto ev = co_await McpServer::start(ctx, std::move(e));
    McpServerOptions f{.name = "fs", .command = {"node", filesystem_js(), dir.string()}, .tool_prefix = "fs_"};
    auto fsrv = co_await McpServer::start(ctx, std::move(f));
    EXPECT_TRUE(ev.ok() && fsrv.ok());
    if (!ev.ok() || !fsrv.ok()) co_return;
    // Every tool of both servers passes the registry's checks (names, draft-7 schemas).
    std::vector<std::shared_ptr<Tool>> all = (*ev)->tools();
    for (auto& t : (*fsrv)->tools()) all.push_back(t);
    EXPECT_EQ(all.size(), (*ev)->listed_tools().size() + (*fsrv)->listed_tools().size());
    auto registry = ToolRegistry::create(ctx.env(), all);
    EXPECT_THAT(registry, IsOk());
    if (!registry.ok()) co_return;
    // The server's schema is checked before anything runs.
    llm::ToolCall bad{.id = "c1", .name = "get-sum", .arguments_json = R"({"a":"two","b":2})"};
    std::optional<ArgumentProblem> problem = (*registry)->check_call(bad);
    EXPECT_TRUE(problem.has_value());
    if (problem) {
      EXPECT_EQ(problem->kind, ArgumentProblemKind::kSchemaViolation);
    }
    // A read-only call whose server is killed under it is retried by the registry (kTransient)
    // and answered by the restarted child.
    std::shared_ptr<McpServer> srv = *ev;
    std::shared_ptr<ToolRegistry> reg = *registry;
    auto run_out = std::make_shared<std::optional<ToolRun>>();
    Behavior caller = [reg, run_out](Context& c) -> Task<> {
      ToolInvocation inv{
          .task_id = "t", .call_id = "c2", .arguments_json = R"({"duration":3,"steps":1})", .idempotency_key = "t/c2"};
      ToolRun r = co_await reg->invoke(c, "trigger-long-running-operation", std::move(inv));
      run_out->emplace(std::move(r));
    };
    auto pid = ctx.spawn(std::move(caller));
    EXPECT_THAT(pid, IsOk());
    if (!pid.ok()) co_return;
    MonitorRef mon = ctx.monitor(*pid);
    auto s = co_await until_in_flight(ctx, *srv, 1);
    EXPECT_THAT(s, IsOk());
    if (!s.ok()) co_return;
    EXPECT_EQ(::kill(s->child_pid, SIGKILL), 0);
    (void)co_await ctx.wait_down(mon, std::chrono::seconds(60));
    EXPECT_TRUE(run_out->has_value());
    if (run_out->has_value()) {
      const ToolRun& r = **run_out;
      EXPECT_THAT(r.result, IsOk());
      if (r.result.ok()) {
        EXPECT_THAT(*r.result, HasSubstr("Long running operation completed"));
      }
      EXPECT_EQ(r.attempts, 2);
    }
    co_await (*ev)->stop(ctx);
    co_await (*fsrv)->stop(ctx);
  });
  fs::remove_all(dir);
}

// ---- start-up failures ----

TEST_F(McpTest, AServerThatNeverAnswersInitializeFailsStartAndLeavesNoChild) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o{.name = "mute", .command = {"sleep", "3600"}};
    o.initialize_timeout = std::chrono::milliseconds(300);
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server,
                StatusIs(ErrorKind::kStartFailed, "mcp server 'mute': did not answer initialize within 300 ms"));
    EXPECT_THAT(children_of_this_process(), SizeIs(0));  // killed and reaped before start() returned
  });
}

TEST_F(McpTest, ACommandThatCannotRunFailsStart) {
  run([&](Context& ctx) -> Task<> {
    McpServerOptions missing{.name = "nope", .command = {"/nonexistent/mcp-server"}};
    auto a = co_await McpServer::start(ctx, std::move(missing));
    EXPECT_THAT(a, StatusIs(ErrorKind::kStartFailed, "exec of '/nonexistent/mcp-server' failed"));
    McpServerOptions not_in_path{.name = "nope", .command = {"nines-no-such-program"}};
    auto b = co_await McpServer::start(ctx, std::move(not_in_path));
    EXPECT_THAT(b, StatusIs(ErrorKind::kStartFailed, "'nines-no-such-program' not found in PATH"));
    McpServerOptions bad_dir{.name = "nope", .command = {"sleep", "1"}, .working_dir = "/nonexistent/dir"};
    auto c = co_await McpServer::start(ctx, std::move(bad_dir));
    EXPECT_THAT(c, StatusIs(ErrorKind::kStartFailed, "chdir to '/nonexistent/dir' failed"));
    McpServerOptions empty{.name = "nope"};
    auto d = co_await McpServer::start(ctx, std::move(empty));
    EXPECT_THAT(d, StatusIs(ErrorKind::kInvalidArgument, "command is empty"));
    EXPECT_THAT(children_of_this_process(), SizeIs(0));
  });
}

TEST_F(McpTest, AnUnknownProtocolVersionFailsStartClearly) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake({"--version", "1999-01-01"});
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, StatusIs(ErrorKind::kStartFailed, "protocol version '1999-01-01'"));
    EXPECT_THAT(children_of_this_process(), SizeIs(0));
  });
}

TEST_F(McpTest, AServerExitingDuringStartFailsWithItsStatusAndStderr) {
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o{.name = "crashy", .command = {"sh", "-c", "echo boom: no config >&2; exit 7"}};
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, StatusIs(ErrorKind::kStartFailed,
                                 "mcp server 'crashy' exited with status 7 during start-up "
                                 "(its last stderr line: 'boom: no config')"));
    EXPECT_THAT(children_of_this_process(), SizeIs(0));
  });
}

TEST_F(McpTest, TheChildRunsInItsOwnGroupWithItsLimits) {
  run([&](Context& ctx) -> Task<> {
    // Not an MCP server: it reports its limits and group on stderr and exits, so the start fails
    // and says what it printed last.
    McpServerOptions o{.name = "limits",
                       .command = {"sh", "-c",
                                   "g=member; [ \"$(cut -d' ' -f5 /proc/$$/stat)\" = \"$$\" ] && g=leader; "
                                   "echo \"limits $(ulimit -n) $(ulimit -v) $(ulimit -t) $g\" >&2"},
                       .limits = {.cpu_seconds = 100, .address_space_bytes = std::uint64_t{2} << 30, .open_files = 77}};
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, StatusIs(ErrorKind::kStartFailed, "its last stderr line: 'limits 77 2097152 100 leader'"));
  });
  // The stderr reader logged it line by line.
  bool logged = false;
  for (const auto& r : logs->records("mcp_server_stderr")) {
    logged = logged || (r.message == "limits 77 2097152 100 leader" && r.field("server") == "limits");
  }
  EXPECT_TRUE(logged) << logs->dump();
}

TEST_F(McpTest, StoppingKillsTheWholeProcessGroup) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    // The server leaves a grandchild in its group: it must die with it.
    McpServerOptions o{.name = "family", .command = {"sh", "-c", "sleep 3600 & exec node \"$0\"", fake_js()}};
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    auto s = co_await (*server)->status(ctx);
    EXPECT_THAT(s, IsOk());
    if (!s.ok()) co_return;
    std::vector<std::string> members = live_in_group(s->child_pid);
    EXPECT_THAT(members, SizeIs(2));  // node and sleep
    // The grandchild is not ours to reap: its exit is awaited through a pidfd of its own.
    std::vector<int> pidfds;
    for (const std::string& m : members) {
      int pid = std::stoi(m);
      if (pid != s->child_pid) pidfds.push_back(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    }
    auto r = co_await (*server)->call(ctx, "echo", R"({"text":"hi"})", "k");
    EXPECT_THAT(r, IsOk());
    co_await (*server)->stop(ctx);
    for (int fd : pidfds) {
      EXPECT_GE(fd, 0);
      if (fd < 0) continue;
      auto gone = co_await ctx.wait_fd(fd, kFdReadable, std::chrono::seconds(10));
      EXPECT_THAT(gone, IsOk());
      ::close(fd);
    }
    EXPECT_THAT(live_in_group(s->child_pid), SizeIs(0));
  });
}

TEST_F(McpTest, AKilledOwnerLeavesNoChild) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    MonitorRef mon = ctx.monitor((*server)->owner());
    ctx.kill_on_purpose((*server)->owner());
    EXPECT_TRUE((co_await ctx.wait_down(mon, std::chrono::seconds(10))).has_value());
    auto r = co_await (*server)->call(ctx, "echo", R"({"text":"x"})", "k");
    EXPECT_THAT(r, StatusIs(ErrorKind::kTransient, "the server is stopped"));
  });
  // TearDown: once the runtime is gone (every frame that held the child unwound), no child.
}

TEST_F(McpTest, DestroyingTheRuntimeWithALiveServerLeavesNoChild) {
  REQUIRE_MCP_SERVERS();
  auto started = std::make_shared<std::promise<bool>>();
  auto w = rt->spawn_watched([started, this](Context& ctx) -> Task<> {
               McpServerOptions o = fake();
               auto server = co_await McpServer::start(ctx, std::move(o));
               started->set_value(server.ok());
               (void)co_await ctx.receive();  // holds the server until the runtime goes
             }).value();
  EXPECT_TRUE(started->get_future().get());
  // TearDown destroys the runtime with the owner and the handle's process alive.
}

// ---- misbehaviour, with the fake server ----

TEST_F(McpTest, ToolListPagesAreFollowed) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake({"--pages", "3"});
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    EXPECT_THAT((*server)->listed_tools(), SizeIs(10));  // 4 + 4 + 2 over three pages
    EXPECT_THAT((*server)->tools(), SizeIs(10));
    co_await (*server)->stop(ctx);
  });
}

TEST_F(McpTest, ServerRequestsAreAnsweredAndToolErrorsArePermanent) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    auto asked = co_await (*server)->call(ctx, "ask_client", "{}", "k1");
    EXPECT_THAT(asked, IsOk());
    if (asked.ok()) {
      EXPECT_EQ(*asked, "ping:ok roots/list:-32601");
    }
    auto failed = co_await (*server)->call(ctx, "fail", "{}", "k2");
    EXPECT_THAT(failed, StatusIs(ErrorKind::kPermanent, "the fake tool failed on purpose"));
    co_await (*server)->stop(ctx);  // waits for the stderr reader to log the last lines
  });
  std::vector<std::string> lines;
  for (const auto& r : logs->records("mcp_server_stderr")) lines.push_back(r.message);
  EXPECT_THAT(lines, Contains("got initialize"));
  EXPECT_THAT(lines, Contains("got notifications/initialized"));
}

TEST_F(McpTest, ATimedOutCallIsCancelledOnTheServer) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    auto slow = co_await (*server)->call(ctx, "sleep", "{}", "k1", std::chrono::milliseconds(200));
    EXPECT_THAT(slow, StatusIs(ErrorKind::kTimeout, "tool 'sleep' did not answer within 200 ms"));
    auto seen = co_await (*server)->call(ctx, "cancels", "{}", "k2");
    EXPECT_THAT(seen, IsOk());
    if (seen.ok()) {
      EXPECT_THAT(*seen, HasSubstr(":timed out after 200 ms"));
    }
    auto s = co_await (*server)->status(ctx);
    // A slow tool is not a hung server: it answered the ping (before `cancels`, in order).
    if (s.ok()) {
      EXPECT_EQ(s->restarts, 0u);
    }
    co_await (*server)->stop(ctx);
  });
}

TEST_F(McpTest, ACallerKilledMidCallCancelsItOnTheServer) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    std::shared_ptr<McpServer> srv = *server;
    Behavior caller = [srv](Context& c) -> Task<> { (void)co_await srv->call(c, "sleep", "{}", "k1"); };
    auto pid = ctx.spawn(std::move(caller));
    EXPECT_THAT(pid, IsOk());
    if (!pid.ok()) co_return;
    auto s = co_await until_in_flight(ctx, *srv, 1);
    EXPECT_THAT(s, IsOk());
    ctx.kill_on_purpose(*pid);
    auto seen = co_await srv->call(ctx, "cancels", "{}", "k2", std::chrono::seconds(10));
    EXPECT_THAT(seen, IsOk());
    if (seen.ok()) {
      EXPECT_THAT(*seen, HasSubstr(":the caller exited: killed"));
    }
    co_await srv->stop(ctx);
  });
}

TEST_F(McpTest, GarbageOnStdoutFailsTheCallsInFlightAndRestarts) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    auto r = co_await (*server)->call(ctx, "garbage", "{}", "k1");
    EXPECT_THAT(r, StatusIs(ErrorKind::kTransient, "wrote garbage on stdout"));
    auto next = co_await (*server)->call(ctx, "echo", R"({"text":"fine"})", "k2");
    EXPECT_THAT(next, IsOk());
    if (next.ok()) {
      EXPECT_EQ(*next, "fine");
    }
    auto s = co_await (*server)->status(ctx);
    if (s.ok()) {
      EXPECT_EQ(s->restarts, 1u);
    }
    co_await (*server)->stop(ctx);
  });
}

TEST_F(McpTest, ALineLongerThanTheBoundFailsTheServer) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    o.max_line_bytes = 4096;
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    auto r = co_await (*server)->call(ctx, "long_line", R"({"bytes":100000})", "k1");
    EXPECT_THAT(r, StatusIs(ErrorKind::kTransient, "longer than 4096 bytes"));
    // One that arrives whole, newline included, in a single read is refused too.
    auto small = co_await (*server)->call(ctx, "long_line", R"({"bytes":5000})", "k3");
    EXPECT_THAT(small, StatusIs(ErrorKind::kTransient, "longer than 4096 bytes"));
    auto next = co_await (*server)->call(ctx, "echo", R"({"text":"fine"})", "k2");
    EXPECT_THAT(next, IsOk());
    co_await (*server)->stop(ctx);
  });
}

TEST_F(McpTest, AServerExitingMidCallFailsItWithItsExitStatus) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    auto r = co_await (*server)->call(ctx, "exit", R"({"code":3})", "k1");
    EXPECT_THAT(r,
                StatusIs(ErrorKind::kTransient, "mcp server 'fake' exited with status 3 while the call was in flight"));
    auto next = co_await (*server)->call(ctx, "echo", R"({"text":"back"})", "k2");
    EXPECT_THAT(next, IsOk());
    co_await (*server)->stop(ctx);
  });
}

TEST_F(McpTest, ABrokenPipeFailsStartWithoutEndingThisProgram) {
  run([&](Context& ctx) -> Task<> {
    // Reads initialize, closes its stdin, answers: the notification after it meets a pipe
    // nobody reads (EPIPE; SIGPIPE must not end this program).
    McpServerOptions o{.name = "deaf",
                       .command = {"sh", "-c",
                                   "read line; exec 0<&-; echo '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":"
                                   "{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{}}}'; sleep 3600"}};
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, StatusIs(ErrorKind::kStartFailed, "broken pipe"));
    EXPECT_THAT(children_of_this_process(), SizeIs(0));
  });
}

TEST_F(McpTest, AHungServerIsDetectedByPingAndRestarted) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    o.ping_timeout = std::chrono::milliseconds(300);
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    auto frozen = co_await (*server)->call(ctx, "freeze", "{}", "k1", std::chrono::milliseconds(200));
    EXPECT_THAT(frozen, StatusIs(ErrorKind::kTimeout));
    // In flight when the ping goes unanswered: fails with the hang.
    auto stuck = co_await (*server)->call(ctx, "echo", R"({"text":"x"})", "k2", std::chrono::seconds(20));
    EXPECT_THAT(stuck, StatusIs(ErrorKind::kTransient, "did not answer a ping within 300 ms"));
    auto next = co_await (*server)->call(ctx, "echo", R"({"text":"thawed"})", "k3", std::chrono::seconds(20));
    EXPECT_THAT(next, IsOk());
    if (next.ok()) {
      EXPECT_EQ(*next, "thawed");
    }
    co_await (*server)->stop(ctx);
  });
}

TEST_F(McpTest, AServerOverItsMemoryLimitIsRecycledBetweenCalls) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    o.limits.max_resident_bytes = std::uint64_t{160} << 20;
    o.limits.resident_check_interval = std::chrono::milliseconds(50);
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    std::shared_ptr<McpServer> srv = *server;
    auto first = co_await srv->status(ctx);
    EXPECT_THAT(first, IsOk());
    const int first_pid = first.ok() ? first->child_pid : 0;
    // Leaks 256 MiB and answers 800 ms later: over the limit with the call in flight, which
    // finishes on the old child; a call made meanwhile waits and is served by the new one.
    auto grown = std::make_shared<std::optional<Result<std::string>>>();
    Behavior leaker = [srv, grown](Context& c) -> Task<> {
      auto r = co_await srv->call(c, "grow", R"({"mb":256,"hold_ms":800})", "k1", std::chrono::seconds(20));
      grown->emplace(std::move(r));
    };
    auto pid = ctx.spawn(std::move(leaker));
    EXPECT_THAT(pid, IsOk());
    if (!pid.ok()) co_return;
    MonitorRef mon = ctx.monitor(*pid);
    co_await ctx.sleep(std::chrono::milliseconds(400));
    auto waited = co_await srv->call(ctx, "echo", R"({"text":"after"})", "k2", std::chrono::seconds(20));
    EXPECT_THAT(waited, IsOk());
    (void)co_await ctx.wait_down(mon, std::chrono::seconds(10));
    EXPECT_TRUE(grown->has_value());
    if (grown->has_value()) {
      EXPECT_THAT(**grown, IsOk()) << "the call in flight was not cut by the recycle";
    }
    auto after = co_await srv->status(ctx);
    EXPECT_THAT(after, IsOk());
    if (after.ok()) {
      EXPECT_EQ(after->recycles, 1u);
      EXPECT_EQ(after->restarts, 1u);
      EXPECT_NE(after->child_pid, first_pid);
      EXPECT_THAT(after->last_failure, HasSubstr("over its limit of 160 MiB (max_resident_bytes): recycled"));
      EXPECT_LT(after->resident_bytes, std::uint64_t{160} << 20);
    }
    co_await srv->stop(ctx);
  });
  bool logged = false;
  for (const auto& r : logs->records("mcp_server_recycled")) logged = logged || r.field("server") == "fake";
  EXPECT_TRUE(logged) << logs->dump();
}

TEST_F(McpTest, StopFailsCallsInFlightAndLaterCallsAreTransient) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    std::shared_ptr<McpServer> srv = *server;
    auto outcome = std::make_shared<std::optional<Result<std::string>>>();
    Behavior caller = [srv, outcome](Context& c) -> Task<> {
      auto r = co_await srv->call(c, "sleep", "{}", "k1");
      outcome->emplace(std::move(r));
    };
    auto pid = ctx.spawn(std::move(caller));
    EXPECT_THAT(pid, IsOk());
    if (!pid.ok()) co_return;
    MonitorRef mon = ctx.monitor(*pid);
    (void)co_await until_in_flight(ctx, *srv, 1);
    co_await srv->stop(ctx);
    EXPECT_THAT(children_of_this_process(), SizeIs(0));
    (void)co_await ctx.wait_down(mon, std::chrono::seconds(10));
    EXPECT_TRUE(outcome->has_value());
    if (outcome->has_value()) {
      EXPECT_THAT(**outcome, StatusIs(ErrorKind::kCancelled, "was stopped"));
    }
    auto later = co_await srv->call(ctx, "echo", R"({"text":"x"})", "k2");
    EXPECT_THAT(later, StatusIs(ErrorKind::kTransient, "the server is stopped"));
  });
}

TEST_F(McpTest, DroppingTheLastReferenceStopsTheServer) {
  REQUIRE_MCP_SERVERS();
  run([&](Context& ctx) -> Task<> {
    McpServerOptions o = fake();
    auto server = co_await McpServer::start(ctx, std::move(o));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) co_return;
    Pid owner = (*server)->owner();
    MonitorRef mon = ctx.monitor(owner);
    std::vector<std::shared_ptr<Tool>> tools = (*server)->tools();
    server = Error(ErrorKind::kCancelled, "dropped");  // the tools still hold it
    ToolInvocation call{.arguments_json = R"({"text":"held"})", .idempotency_key = "k"};
    auto r = co_await find(tools, "echo")->call(ctx, call);
    EXPECT_THAT(r, IsOk());
    tools.clear();  // the last reference: the owner stops, the child is reaped
    auto down = co_await ctx.wait_down(mon, std::chrono::seconds(20));
    EXPECT_TRUE(down.has_value());
    EXPECT_THAT(children_of_this_process(), SizeIs(0));
  });
}

}  // namespace
}  // namespace nines::agent
