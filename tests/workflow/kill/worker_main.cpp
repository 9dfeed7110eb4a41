// nines_kill_worker DB_PATH LEDGER_SOCKET WORKFLOWS: the process the kill test SIGKILLs.
// Opens the SQLite store (synced), resumes every workflow left running in the background
// (resume_all), meanwhile runs workflows wf-0 .. wf-(WORKFLOWS-1) (run() returns at once for
// those already finished, and is refused for those the resumer runs), 8 at a time, and exits 0
// when every one has ended. Each workflow makes 50 steps (plan.hpp): plain steps,
// and effects against the ledger process: idempotent (sent with their key), checkable (the
// ledger is asked on recovery) and unsafe (sent without idempotency).
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>

#include "nines/runtime/runtime.hpp"
#include "nines/store/sqlite_store.hpp"
#include "nines/workflow/workflow.hpp"
#include "support/numbered.hpp"
#include "workflow/kill/plan.hpp"

using namespace nines;

namespace {

std::string g_socket;

// One request line to the ledger, one reply line back, without blocking a worker thread.
Task<Result<std::string>> ledger_request(Context& ctx, std::string line) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) co_return Error(ErrorKind::kTransient, std::string("ledger: socket: ") + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", g_socket.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno != EAGAIN && errno != EINPROGRESS) {
      co_return Error(ErrorKind::kTransient, std::string("ledger: connect: ") + std::strerror(errno));
    }
    auto w = co_await ctx.wait_fd(fd, kFdWritable, std::chrono::seconds(5));
    if (!w.ok()) co_return std::move(w).error();
  }
  line += '\n';
  std::size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(fd, line.data() + off, line.size() - off);
    if (n < 0 && errno == EAGAIN) {
      auto w = co_await ctx.wait_fd(fd, kFdWritable, std::chrono::seconds(5));
      if (!w.ok()) co_return std::move(w).error();
      continue;
    }
    if (n <= 0) co_return Error(ErrorKind::kTransient, std::string("ledger: write: ") + std::strerror(errno));
    off += static_cast<std::size_t>(n);
  }
  std::string reply;
  for (;;) {
    char buf[256];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EAGAIN) {
      auto r = co_await ctx.wait_fd(fd, kFdReadable, std::chrono::seconds(5));
      if (!r.ok()) co_return std::move(r).error();
      continue;
    }
    if (n <= 0) co_return Error(ErrorKind::kTransient, "ledger: connection closed before the reply");
    reply.append(buf, static_cast<std::size_t>(n));
    if (auto nl = reply.find('\n'); nl != std::string::npos) co_return reply.substr(0, nl);
  }
}

Task<Result<std::string>> workflow_body(WorkflowContext& wf) {
  const int number = std::stoi(wf.id().substr(3));
  std::string out;
  for (int s = 0; s < killtest::kSteps; ++s) {
    const char type = killtest::op_type(number, s);
    Result<std::string> r = std::string();
    if (type == 'S') {
      auto fn = [s](Context&) -> Task<Result<std::string>> { co_return nines::test::numbered("s", s + 1); };
      r = co_await wf.step<std::string>("S", std::move(fn));
    } else {
      EffectOptions o;
      o.name = std::string(1, type);
      o.nature = type == 'I'   ? EffectNature::kIdempotent
                 : type == 'C' ? EffectNature::kCheckable
                               : EffectNature::kUnsafe;
      o.arguments = "amount=" + std::to_string(s + 1);
      o.check = [](Context& ctx, const std::string& key) -> Task<Result<std::optional<std::string>>> {
        Result<std::string> reply = co_await ledger_request(ctx, "CHECK " + key);
        if (!reply.ok()) co_return std::move(reply).error();
        if (reply->rfind("YES ", 0) == 0) co_return std::optional<std::string>(reply->substr(4));
        co_return std::optional<std::string>();
      };
      // Only idempotent effects are sent with deduplication by key; checkable ones are not,
      // so only the check keeps them from applying twice.
      const bool dedup = type == 'I';
      auto fn = [dedup](Context& ctx, const std::string& key) -> Task<Result<std::string>> {
        Result<std::string> reply = co_await ledger_request(ctx, (dedup ? "APPLY_IDEM " : "APPLY_UNSAFE ") + key);
        if (!reply.ok()) co_return std::move(reply).error();
        if (reply->rfind("OK ", 0) != 0) co_return Error(ErrorKind::kPermanent, "ledger refused: " + *reply);
        co_return reply->substr(3);
      };
      r = co_await wf.effect(std::move(o), std::move(fn));
    }
    if (!r.ok()) co_return r.error();
    out += *r + ";";
  }
  co_return out;
}

template <class T>
T must(Result<T> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "nines_kill_worker: %s: %s\n", what, r.error().to_string().c_str());
    std::exit(1);
  }
  return std::move(*r);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: nines_kill_worker DB_PATH LEDGER_SOCKET WORKFLOWS\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  g_socket = argv[2];
  const int workflows = std::atoi(argv[3]);
  auto env = make_real_environment({.workers = 2});
  auto store = must(open_sqlite_store(argv[1]), "opening the store");
  auto engine = must(WorkflowEngine::create(*env, *store), "engine");
  if (Status s = engine->register_kind("k50", workflow_body); !s.ok()) return 1;
  auto rt = must(Runtime::create(*env), "runtime");
  // The test waits for this line before it starts the clock to its kill, so kills land in
  // the work, not in the start-up.
  std::printf("ready\n");
  std::fflush(stdout);
  std::atomic<int> failures{0};
  auto root = must(rt->spawn_watched([&](Context& ctx) -> Task<> {
    // Resumes what the last (killed) run left running, in the background, while new work
    // starts at once: the documented way (workflow.hpp).
    auto resumer = engine->resume_all(ctx, 8);
    if (!resumer.ok()) {
      std::fprintf(stderr, "resume_all: %s\n", resumer.error().to_string().c_str());
      ++failures;
      co_return;
    }
    std::set<MonitorRef> running;
    const MonitorRef resumer_ref = ctx.monitor(*resumer);
    std::function<bool(const Message&)> is_down = [&running](const Message& m) {
      const Down* d = m.get<Down>();
      return d != nullptr && running.contains(d->ref);
    };
    for (int i = 0; i < workflows; ++i) {
      while (running.size() >= 8) {
        std::optional<Message> m = co_await ctx.receive_if(is_down);
        running.erase(m->get<Down>()->ref);
      }
      Behavior child = [&engine, &failures, i](Context& c) -> Task<> {
        WorkflowOutcome out = co_await engine->run_outcome(c, "k50", killtest::workflow_id(i), "");
        // Completed and needs_attention are expected ends; so is "running already": the
        // resumer runs it to its end. Anything else is not.
        const bool resumer_has_it =
            out.end == RunEnd::kRefused && out.result.error().kind() == ErrorKind::kAlreadyExists;
        if (out.end != RunEnd::kCompleted && out.end != RunEnd::kNeedsAttention && !resumer_has_it) {
          std::fprintf(stderr, "%s: %s: %s\n", killtest::workflow_id(i).c_str(),
                       std::string(to_string(out.end)).c_str(),
                       out.result.ok() ? "ok" : out.result.error().to_string().c_str());
          ++failures;
        }
      };
      running.insert(ctx.monitor(ctx.spawn(std::move(child)).value()));
    }
    while (!running.empty()) {
      std::optional<Message> m = co_await ctx.receive_if(is_down);
      running.erase(m->get<Down>()->ref);
    }
    std::function<bool(const Message&)> is_resumer_down = [resumer_ref](const Message& m) {
      const Down* d = m.get<Down>();
      return d != nullptr && d->ref == resumer_ref;
    };
    std::optional<Message> m = co_await ctx.receive_if(is_resumer_down);
    if (!m->get<Down>()->reason.is_normal()) {
      std::fprintf(stderr, "resumer: %s\n", m->get<Down>()->reason.to_string().c_str());
      ++failures;
    }
  }),
                   "spawn");
  root.exit->wait();
  return failures == 0 ? 0 : 3;
}
