// Internal: the schedulers that run processes.
//  - ThreadedScheduler: N workers on environment threads, each with a private LIFO slot (a
//    process woken by the running one runs next on the same worker: ping-pong stays on one
//    core), a local FIFO that idle workers steal from, and a global queue for wakeups from
//    outside the workers. Idle workers sleep on a futex (an epoch word every wake changes).
//  - DeterministicScheduler: one run set on the caller's thread; the next process is drawn
//    with the environment's seeded generator, so a seed fixes the interleaving.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"

namespace nines::internal {

class Process;
class RuntimeCore;

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  virtual Result<void> start() = 0;
  virtual void stop() = 0;
  // Queues p (which holds a reference for the queue).
  virtual void push(Process* p) = 0;
  // Deterministic only: runs processes until none is runnable; returns how many runs.
  virtual std::size_t run_ready() { return 0; }
  // Processes still queued after stop(), handed back so their references can be dropped.
  virtual std::vector<Process*> drain_queued() = 0;
};

std::unique_ptr<Scheduler> make_threaded_scheduler(RuntimeCore& core, unsigned workers);
std::unique_ptr<Scheduler> make_deterministic_scheduler(RuntimeCore& core);

}  // namespace nines::internal
