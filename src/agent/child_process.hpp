// agent/child_process.hpp (internal): an OS child process isolated as an Erlang port is: its
// own process group, resource limits set before exec, stdin/stdout pipes the owner reads and
// writes with Context::wait_fd, stderr kept in a bounded ring buffer, and always reaped.
//
//   ChildOptions o{.argv = {"node", "server.js"}, .name = "fs"};
//   auto child = co_await ChildProcess::spawn(ctx, o);  // kStartFailed: exec failed (errno named)
//   Status s = co_await (*child)->write_all(ctx, "{...}\n", 5s);
//   Result<ChildProcess::Read> r = co_await (*child)->read_line(ctx);  // a line, or EOF
//   (*child)->kill();                                                  // SIGKILL to the group
//   Result<ChildExit> e = co_await (*child)->wait_exit(ctx, 5s);       // pidfd + waitid(P_PIDFD)
//
// Spawning forks, and the child (only async-signal-safe calls) makes itself a process-group
// leader, dies with the forking thread's runtime (PR_SET_PDEATHSIG), applies the limits, closes
// every other fd, resets signals and execs (execve; the program is found in PATH by the parent).
// An exec failure comes back through a CLOEXEC pipe with its errno.
//
// Ownership: the object owns the pipes, the pidfd and the child. Its destructor kills the
// whole group with SIGKILL and reaps the child (a blocking waitid on a SIGKILLed child: it
// returns at once, as the kernel only has to tear the process down), so no child and no zombie
// outlive it. It is shared (std::shared_ptr) between its owner and the process draining its
// stderr, so a pipe is never closed under a reader (no fd reuse race).
//
// Thread-safety: the reads, writes and waits are for one process at a time; kill(), exit(),
// stderr_tail() and the destructor may be called from any thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines::agent::internal {

struct ChildLimits {
  // RLIMIT_CPU: CPU seconds over the child's life (SIGXCPU, then SIGKILL). 0: no limit.
  std::uint64_t cpu_seconds = 0;
  // RLIMIT_AS: address space. Default 64 GiB (Node.js reserves several GiB up front and about
  // 10 GiB per WebAssembly instance: see McpLimits). 0: no limit.
  std::uint64_t address_space_bytes = std::uint64_t{64} << 30;
  // RLIMIT_NOFILE: open files. Default 1024. 0: inherited.
  std::uint64_t open_files = 1024;
};

struct ChildOptions {
  std::vector<std::string> argv;  // argv[0] is looked up in PATH unless it contains a '/'
  // Added to (or replacing in) the parent's environment.
  std::vector<std::pair<std::string, std::string>> env;
  std::string working_dir;  // empty: the parent's
  ChildLimits limits;
  std::string name;  // in errors and logs
  std::size_t max_line_bytes = std::size_t{16} << 20;
  std::size_t stderr_ring_bytes = std::size_t{64} << 10;
};

// How the child ended: exited with `code`, or killed by `signal`.
struct ChildExit {
  int code = 0;
  int signal = 0;
  // "exited with status 1", "exited with signal 9".
  std::string to_string() const;
};

class ChildProcess {
 public:
  // Forks and execs; waits (wait_fd) for the exec to happen. kInvalidArgument: empty argv;
  // kStartFailed: pipes, fork, pidfd_open or the exec failed (the errno is named, the child
  // is reaped).
  static Task<Result<std::shared_ptr<ChildProcess>>> spawn(Context& ctx, const ChildOptions& options);

  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }

  // Writes all of `bytes` to the child's stdin; waits for room (wait_fd) at most `timeout`
  // in all. kTransient: the pipe is broken (the child closed stdin or exited); kTimeout: the
  // child did not read within `timeout`. SIGPIPE is blocked on this thread around the write.
  Task<Status> write_all(Context& ctx, std::string_view bytes, Duration timeout);

  // The next line of stdout (without its '\n'), or nullopt at EOF. kTransient: a read error
  // or a line longer than max_line_bytes (garbage). Waits as long as it takes (the process's
  // deadline bounds it).
  Task<Result<std::optional<std::string>>> read_line(Context& ctx);

  // The next line of stderr (lossy: at most max_line_bytes, the rest of a longer line is
  // dropped), or nullopt at EOF. Each line also goes to the ring buffer.
  Task<std::optional<std::string>> read_stderr_line(Context& ctx);

  // SIGKILL to the whole process group. Idempotent; nothing once the child is reaped.
  void kill();
  // Waits for the child to exit (wait_fd on the pidfd) and reaps it (waitid(P_PIDFD)).
  // kTimeout after `timeout`. Once reaped, returns the same exit again.
  Task<Result<ChildExit>> wait_exit(Context& ctx, Duration timeout);
  // The exit if the child has been reaped.
  std::optional<ChildExit> exit() const;

  // The newest stderr bytes (at most stderr_ring_bytes).
  std::string stderr_tail() const;
  // The last non-empty stderr line, at most `max` bytes.
  std::string last_stderr_line(std::size_t max = 300) const;

 private:
  ChildProcess() = default;
  // Reaps if the child exited (WNOHANG) or, with block, waits for it. Under mu_.
  void reap_locked(bool block);
  void append_stderr(std::string_view bytes);

  std::string name_;
  pid_t pid_ = -1;
  int pidfd_ = -1;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  int stderr_fd_ = -1;
  std::size_t max_line_bytes_ = 0;
  std::size_t stderr_ring_bytes_ = 0;
  std::unique_ptr<char[]> chunk_;      // read buffer of read_line
  std::unique_ptr<char[]> err_chunk_;  // read buffer of read_stderr_line
  std::string out_buf_;                // stdout bytes after the last complete line
  std::string err_buf_;                // stderr bytes after the last complete line
  bool out_eof_ = false;
  bool err_eof_ = false;

  mutable std::mutex mu_;  // guards what follows
  std::optional<ChildExit> exit_;
  std::string ring_;
};

}  // namespace nines::agent::internal
