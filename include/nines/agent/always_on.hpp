// nines/agent/always_on.hpp: an always-on agent: a long-lived worker process taking tasks from
// a bounded queue, recycled (a clean restart, its state read again from the store) after N
// tasks or when a watermark is crossed, so that leaks cannot build up.
//
//   auto desk = agent::AlwaysOnAgent::create(*agents, {.agent = "support",
//                                                      .queue_capacity = 64,
//                                                      .max_tasks = 100,
//                                                      .watermarks = {{.name = "rss_bytes",
//                                                                      .probe = agent::resident_bytes_probe(),
//                                                                      .limit = 512 << 20},
//                                                                     {.name = "open_fds",
//                                                                      .probe = agent::open_fds_probe(),
//                                                                      .limit = 1000}}}).value();
//   Pid sup = desk->start(ctx).value();          // in a process: the supervisor and its worker
//   Status s = desk->submit("ticket-42", "Refund order 42");   // from anywhere
//   // kBulkheadFull: the queue is full, try later; the outcome: agents->outcome("ticket-42")
//
// The worker takes the oldest queued task and runs it to its end with Agents::run (one task at
// a time). A task leaves the queue only once it has ended: a task whose run is interrupted, or
// whose worker crashes or is killed, is still first in the queue when the supervisor has
// restarted the worker, and is resumed from its records. After each task the worker counts its
// tasks (max_tasks) and reads every watermark's probe (value >= limit crosses it); then it exits
// with reason {shutdown, "recycle: <why>"}, and its supervisor (a permanent child, restarted
// whatever the reason) starts a fresh one. The queue lives in the AlwaysOnAgent, outside the
// worker: recycling loses no accepted task (submit() returned ok).
//
// Recycles count as restarts for the supervisor's intensity (restart_intensity within
// restart_period): size it for the expected recycle rate, so that only a crash storm stops it.
//
// Errors: create(): kInvalidArgument (no agent, queue_capacity 0, max_tasks < 0, a watermark
// without a probe or a name, bad intensity). submit(): kBulkheadFull when queue_capacity tasks
// wait or run already, kAlreadyExists for a task id queued already, kInvalidArgument for an
// empty id. start(): kAlreadyExists when started already, kStartFailed from the supervisor.
//
// Not durable yet: the queue is in memory; a task accepted but not yet started is lost by a
// kill -9 of the program (one started is a workflow: WorkflowEngine::resume_all resumes it).
//
// Ownership: borrows `agents` (it must outlive this object and its processes); the worker holds
// the queue weakly. Thread-safety: every member may be called from any thread or process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/runtime/process.hpp"

namespace nines::agent {

// The current value of something that grows with leaks; < 0 when it cannot be read (ignored).
using WatermarkProbe = std::function<std::int64_t()>;

struct Watermark {
  std::string name;  // in the recycle reason, e.g. "rss_bytes"
  WatermarkProbe probe;
  std::int64_t limit = 0;  // recycle when probe() >= limit
};

// Resident memory of this program in bytes (/proc/self/statm); -1 if unreadable.
WatermarkProbe resident_bytes_probe();
// Open file descriptors of this program (entries of /proc/self/fd); -1 if unreadable.
WatermarkProbe open_fds_probe();

struct AlwaysOnOptions {
  std::string agent;                  // registered in the Agents; runs every task
  std::string name = "always_on";     // the supervisor's label in runtime events
  std::size_t queue_capacity = 64;    // tasks waiting or running, >= 1
  std::int64_t max_tasks = 100;       // recycle after this many tasks; 0: never for this reason
  std::vector<Watermark> watermarks;  // read after each task
  // How often an idle worker looks at the queue besides being woken by submit().
  Duration idle_poll = std::chrono::seconds(1);
  // The worker's supervisor (recycles count).
  int restart_intensity = 20;
  Duration restart_period = std::chrono::seconds(60);
};

struct AlwaysOnEvent {
  enum class Type : std::uint8_t {
    kTaskDone,  // a task ended (detail: its status)
    kRecycle,   // the worker exits to be restarted clean (detail: why)
    kRestart,   // the worker started again after a recycle or a crash (detail: the life, 1-based)
  };
  Type type = Type::kTaskDone;
  std::string task_id;  // kTaskDone
  std::string detail;
  std::int64_t tasks_this_life = 0;
};

struct AlwaysOnCounters {
  std::int64_t accepted = 0;   // submit() returned ok
  std::int64_t rejected = 0;   // submit() refused (full, duplicate)
  std::int64_t completed = 0;  // tasks that ended and left the queue
  std::int64_t recycles = 0;
  std::map<std::string, std::int64_t> recycles_by_reason;  // "max_tasks", or the watermark's name
  std::int64_t worker_starts = 0;
  std::size_t queued = 0;  // waiting or running now
};

class AlwaysOnAgent {
 public:
  static Result<std::unique_ptr<AlwaysOnAgent>> create(Agents& agents, AlwaysOnOptions options);
  ~AlwaysOnAgent();
  AlwaysOnAgent(const AlwaysOnAgent&) = delete;
  AlwaysOnAgent& operator=(const AlwaysOnAgent&) = delete;

  // Starts the supervisor (linked to the caller) and its worker. Once.
  Result<Pid> start(Context& ctx);
  // Queues a task (see the file comment for the errors); wakes the worker.
  Status submit(std::string task_id, std::string input);
  AlwaysOnCounters counters() const;
  // Called from the worker's process: keep it short.
  void add_observer(std::function<void(const AlwaysOnEvent&)> observer);

  struct State;  // internal

 private:
  explicit AlwaysOnAgent(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

}  // namespace nines::agent
