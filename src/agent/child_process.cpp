// An OS child process isolated as an Erlang port is (agent/child_process.hpp).
#include "agent/child_process.hpp"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "nines/core/environment.hpp"

extern char** environ;  // NOLINT: POSIX

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace nines::agent::internal {

namespace {

constexpr std::size_t kReadChunk = 64 * 1024;
constexpr std::size_t kStderrLineBytes = 4096;

std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// Closes the descriptor it holds when it goes: also when the coroutine frame holding it is
// destroyed at a suspension point (its process killed, or the runtime stopped).
struct OwnedFd {
  int fd = -1;
  explicit OwnedFd(int f) : fd(f) {}
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd() { close_fd(fd); }
};

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

bool set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

// argv[0] as execve needs it: itself if it names a path, else the first executable file of
// that name in `path_var`'s directories.
std::optional<std::string> resolve_program(const std::string& program, const std::string& path_var) {
  if (program.find('/') != std::string::npos) return program;
  std::size_t start = 0;
  for (;;) {
    std::size_t end = path_var.find(':', start);
    std::string dir = path_var.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (end == std::string::npos) return std::nullopt;
    start = end + 1;
  }
}

// What the child reports through the exec-error pipe before _exit(127).
struct ExecFailure {
  int stage;  // 1 chdir, 2 setrlimit, 3 execve
  int err;
};

[[noreturn]] void child_fail(int fd, int stage) {
  ExecFailure f{stage, errno};
  [[maybe_unused]] ssize_t n = ::write(fd, &f, sizeof f);
  ::_exit(127);
}

// Runs in the forked child: only async-signal-safe calls from here to execve.
[[noreturn]] void run_child(pid_t parent, int in_r, int out_w, int err_w, int report_w, const char* program,
                            char* const* argv, char* const* envp, const char* dir, const rlimit* limits,
                            const int* resources, int n_limits) {
  ::setpgid(0, 0);
  // Dies with the thread that forked it (a runtime worker): a crashed nines process leaves no
  // server behind.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);
  if (::dup2(in_r, 0) < 0 || ::dup2(out_w, 1) < 0 || ::dup2(err_w, 2) < 0) child_fail(report_w, 3);
  if (dir != nullptr && ::chdir(dir) != 0) child_fail(report_w, 1);
  for (int i = 0; i < n_limits; ++i) {
    if (::setrlimit(resources[i], &limits[i]) != 0) child_fail(report_w, 2);
  }
  sigset_t all;
  ::sigemptyset(&all);
  ::sigprocmask(SIG_SETMASK, &all, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  // Every other descriptor closes at exec (CLOSE_RANGE_CLOEXEC, Linux 5.11; best effort).
  ::syscall(SYS_close_range, 3u, ~0u, 4u);
  ::execve(program, argv, envp);
  child_fail(report_w, 3);
}

}  // namespace

std::string ChildExit::to_string() const {
  if (signal != 0) return "exited with signal " + std::to_string(signal);
  return "exited with status " + std::to_string(code);
}

Task<Result<std::shared_ptr<ChildProcess>>> ChildProcess::spawn(Context& ctx, const ChildOptions& options) {
  const std::string who = "child process '" + options.name + "'";
  if (options.argv.empty() || options.argv[0].empty()) {
    co_return Error(ErrorKind::kInvalidArgument, who + ": no command (argv is empty)");
  }

  // Everything the child needs is built here: after fork it may not allocate.
  std::vector<std::string> env_strings;
  std::string path_var = "/usr/local/bin:/usr/bin:/bin";
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    std::string_view key = kv.substr(0, kv.find('='));
    bool replaced = std::any_of(options.env.begin(), options.env.end(), [&](const auto& p) { return p.first == key; });
    if (!replaced) env_strings.emplace_back(kv);
    if (key == "PATH") path_var = std::string(kv.substr(std::min(kv.size(), key.size() + 1)));
  }
  for (const auto& [k, v] : options.env) {
    env_strings.push_back(k + "=" + v);
    if (k == "PATH") path_var = v;
  }
  std::optional<std::string> program = resolve_program(options.argv[0], path_var);
  if (!program) co_return Error(ErrorKind::kStartFailed, who + ": '" + options.argv[0] + "' not found in PATH");
  std::vector<char*> argv;
  for (const auto& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  rlimit limits[3];
  int resources[3];
  int n_limits = 0;
  auto add_limit = [&](int resource, std::uint64_t value) {
    if (value == 0) return;
    limits[n_limits] = rlimit{static_cast<rlim_t>(value), static_cast<rlim_t>(value)};
    resources[n_limits++] = resource;
  };
  add_limit(RLIMIT_CPU, options.limits.cpu_seconds);
  add_limit(RLIMIT_AS, options.limits.address_space_bytes);
  add_limit(RLIMIT_NOFILE, options.limits.open_files);

  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, report[2] = {-1, -1};
  auto close_all = [&] {
    for (int* p : {in, out, err, report}) {
      close_fd(p[0]);
      close_fd(p[1]);
    }
  };
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0 ||
      ::pipe2(report, O_CLOEXEC) != 0) {
    int e = errno;
    close_all();
    co_return Error(ErrorKind::kStartFailed, who + ": pipe2: " + errno_text(e));
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    close_all();
    co_return Error(ErrorKind::kStartFailed, who + ": fork: " + errno_text(e));
  }
  if (pid == 0) {
    run_child(parent, in[0], out[1], err[1], report[1], program->c_str(), argv.data(), envp.data(),
              options.working_dir.empty() ? nullptr : options.working_dir.c_str(), limits, resources, n_limits);
  }
  ::setpgid(pid, pid);  // also here: kill(-pid) must work even before the child ran
  close_fd(in[0]);
  close_fd(out[1]);
  close_fd(err[1]);
  close_fd(report[1]);

  std::shared_ptr<ChildProcess> child(new ChildProcess());
  child->name_ = options.name;
  child->pid_ = pid;
  child->stdin_fd_ = in[1];
  child->stdout_fd_ = out[0];
  child->stderr_fd_ = err[0];
  child->max_line_bytes_ = std::max<std::size_t>(options.max_line_bytes, 1);
  child->stderr_ring_bytes_ = std::max<std::size_t>(options.stderr_ring_bytes, 1);
  child->chunk_ = std::make_unique<char[]>(kReadChunk);
  child->err_chunk_ = std::make_unique<char[]>(kReadChunk);
  child->pidfd_ = pidfd_open(pid);
  OwnedFd report_owned(std::exchange(report[0], -1));
  const int report_fd = report_owned.fd;
  if (child->pidfd_ < 0) {
    int e = errno;
    ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    child->exit_ = ChildExit{};
    co_return Error(ErrorKind::kStartFailed, who + ": pidfd_open: " + errno_text(e) + " (Linux >= 5.3 is needed)");
  }
  // From here on the destructor kills and reaps whatever happens.
  if (!set_nonblocking(child->stdin_fd_) || !set_nonblocking(child->stdout_fd_) ||
      !set_nonblocking(child->stderr_fd_) || !set_nonblocking(report_fd)) {
    int e = errno;
    co_return Error(ErrorKind::kStartFailed, who + ": fcntl(O_NONBLOCK): " + errno_text(e));
  }

  // The report pipe closes at exec (success) or carries the reason the exec failed.
  ExecFailure failure{};
  std::size_t got = 0;
  for (;;) {
    ssize_t n = ::read(report_fd, reinterpret_cast<char*>(&failure) + got, sizeof failure - got);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
      if (got == sizeof failure) break;
      continue;
    }
    if (n == 0) break;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) break;
    auto ready = co_await ctx.wait_fd(report_fd, kFdReadable, std::chrono::seconds(30));
    if (!ready.ok()) {
      co_return Error(ErrorKind::kStartFailed, who + ": the exec did not happen: " + ready.error().message());
    }
  }
  if (got == sizeof failure) {
    const char* stage = failure.stage == 1 ? "chdir to '" : failure.stage == 2 ? "setrlimit" : "exec of '";
    std::string what = stage;
    if (failure.stage == 1) what += options.working_dir + "'";
    if (failure.stage == 3) what += *program + "'";
    co_return Error(ErrorKind::kStartFailed, who + ": " + what + " failed: " + errno_text(failure.err));
  }
  co_return child;
}

ChildProcess::~ChildProcess() {
  {
    std::lock_guard lock(mu_);
    if (!exit_ && pid_ > 0) {
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
      reap_locked(true);
    }
  }
  close_fd(pidfd_);
  close_fd(stdin_fd_);
  close_fd(stdout_fd_);
  close_fd(stderr_fd_);
}

void ChildProcess::reap_locked(bool block) {
  if (exit_ || pidfd_ < 0) return;
  siginfo_t info{};
  // Peek first: while the exited child is unreaped its group id cannot be reused, so whatever
  // it left in its group is killed safely before the reap.
  int rc;
  do {
    rc = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_), &info,
                  WEXITED | WNOWAIT | (block ? 0 : WNOHANG));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0 || info.si_pid == 0) return;
  ::kill(-pid_, SIGKILL);
  do {
    rc = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_), &info, WEXITED);
  } while (rc < 0 && errno == EINTR);
  ChildExit e;
  if (info.si_code == CLD_EXITED) {
    e.code = info.si_status;
  } else {
    e.signal = info.si_status;
  }
  exit_ = e;
}

void ChildProcess::kill() {
  std::lock_guard lock(mu_);
  if (exit_ || pid_ <= 0) return;
  if (::kill(-pid_, SIGKILL) != 0) ::kill(pid_, SIGKILL);
}

std::optional<ChildExit> ChildProcess::exit() const {
  std::lock_guard lock(mu_);
  return exit_;
}

Task<Result<ChildExit>> ChildProcess::wait_exit(Context& ctx, Duration timeout) {
  const TimePoint deadline = add_saturating(ctx.now(), timeout);
  for (;;) {
    {
      std::lock_guard lock(mu_);
      reap_locked(false);
      if (exit_) co_return *exit_;
    }
    TimePoint now = ctx.now();
    if (now >= deadline) {
      co_return Error(ErrorKind::kTimeout, "child process '" + name_ + "' (pid " + std::to_string(pid_) +
                                               ") did not exit within " + std::to_string(to_millis(timeout)) + " ms");
    }
    auto ready = co_await ctx.wait_fd(pidfd_, kFdReadable, deadline - now);
    if (!ready.ok() && ready.error().kind() != ErrorKind::kTimeout) co_return std::move(ready).error();
  }
}

Task<Status> ChildProcess::write_all(Context& ctx, std::string_view bytes, Duration timeout) {
  const TimePoint deadline = add_saturating(ctx.now(), timeout);
  std::size_t off = 0;
  while (off < bytes.size()) {
    // A write to a pipe whose reader is gone raises SIGPIPE, which would end the whole program:
    // it is blocked on this thread for the write and consumed if the write raised it.
    sigset_t pipe_set, old_set, pending;
    ::sigemptyset(&pipe_set);
    ::sigaddset(&pipe_set, SIGPIPE);
    ::sigemptyset(&pending);
    ::pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
    ::sigpending(&pending);
    const bool was_pending = ::sigismember(&pending, SIGPIPE) == 1;
    ssize_t n = ::write(stdin_fd_, bytes.data() + off, bytes.size() - off);
    const int e = errno;
    if (n < 0 && e == EPIPE && !was_pending) {
      struct timespec zero {};
      while (::sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    ::pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
    if (n > 0) {
      off += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && e == EINTR) continue;
    if (n < 0 && e != EAGAIN) {
      co_return Error(ErrorKind::kTransient,
                      "writing to the stdin of child process '" + name_ + "': " + errno_text(e) + " (broken pipe)");
    }
    TimePoint now = ctx.now();
    if (now >= deadline) {
      co_return Error(ErrorKind::kTimeout, "child process '" + name_ + "' did not read its stdin within " +
                                               std::to_string(to_millis(timeout)) + " ms");
    }
    auto ready = co_await ctx.wait_fd(stdin_fd_, kFdWritable, deadline - now);
    if (!ready.ok() && ready.error().kind() != ErrorKind::kTimeout) co_return std::move(ready).error();
  }
  co_return ok_status();
}

Task<Result<std::optional<std::string>>> ChildProcess::read_line(Context& ctx) {
  std::size_t scanned = 0;
  for (;;) {
    std::size_t nl = out_buf_.find('\n', scanned);
    if (nl != std::string::npos && nl <= max_line_bytes_) {
      std::string line = out_buf_.substr(0, nl);
      out_buf_.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      co_return std::optional<std::string>(std::move(line));
    }
    scanned = out_buf_.size();
    if (nl != std::string::npos || out_buf_.size() > max_line_bytes_) {
      co_return Error(ErrorKind::kTransient, "child process '" + name_ + "' wrote a line longer than " +
                                                 std::to_string(max_line_bytes_) + " bytes on stdout");
    }
    if (out_eof_) {
      if (out_buf_.empty()) co_return std::optional<std::string>();
      std::string line = std::move(out_buf_);
      out_buf_.clear();
      co_return std::optional<std::string>(std::move(line));
    }
    char* buf = chunk_.get();
    ssize_t n = ::read(stdout_fd_, buf, kReadChunk);
    if (n > 0) {
      out_buf_.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0) {
      out_eof_ = true;
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) {
      co_return Error(ErrorKind::kTransient,
                      "reading the stdout of child process '" + name_ + "': " + errno_text(errno));
    }
    auto ready = co_await ctx.wait_fd(stdout_fd_, kFdReadable);
    if (!ready.ok()) co_return std::move(ready).error();
  }
}

Task<std::optional<std::string>> ChildProcess::read_stderr_line(Context& ctx) {
  for (;;) {
    std::size_t nl = err_buf_.find('\n');
    if (nl != std::string::npos || err_buf_.size() >= kStderrLineBytes || (err_eof_ && !err_buf_.empty())) {
      std::size_t take = nl != std::string::npos ? nl : std::min(err_buf_.size(), kStderrLineBytes);
      std::string line = err_buf_.substr(0, take);
      err_buf_.erase(0, nl != std::string::npos ? nl + 1 : take);
      co_return line;
    }
    if (err_eof_) co_return std::nullopt;
    char* buf = err_chunk_.get();
    ssize_t n = ::read(stderr_fd_, buf, kReadChunk);
    if (n > 0) {
      append_stderr(std::string_view(buf, static_cast<std::size_t>(n)));
      err_buf_.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      auto ready = co_await ctx.wait_fd(stderr_fd_, kFdReadable);
      if (!ready.ok()) co_return std::nullopt;
      continue;
    }
    err_eof_ = true;  // EOF or a read error: nothing more comes
  }
}

void ChildProcess::append_stderr(std::string_view bytes) {
  std::lock_guard lock(mu_);
  if (bytes.size() >= stderr_ring_bytes_) {
    ring_.assign(bytes.substr(bytes.size() - stderr_ring_bytes_));
    return;
  }
  std::size_t keep = stderr_ring_bytes_ - bytes.size();
  if (ring_.size() > keep) ring_.erase(0, ring_.size() - keep);
  ring_.append(bytes);
}

std::string ChildProcess::stderr_tail() const {
  std::lock_guard lock(mu_);
  return ring_;
}

std::string ChildProcess::last_stderr_line(std::size_t max) const {
  std::lock_guard lock(mu_);
  std::size_t end = ring_.size();
  while (end > 0 && (ring_[end - 1] == '\n' || ring_[end - 1] == '\r' || ring_[end - 1] == ' ')) --end;
  std::size_t start = ring_.rfind('\n', end == 0 ? 0 : end - 1);
  start = start == std::string::npos ? 0 : start + 1;
  std::string line = ring_.substr(start, end - start);
  if (line.size() > max) line = line.substr(0, max) + "...";
  return line;
}

}  // namespace nines::agent::internal
