// Always-on agents with recycling (nines/agent/always_on.hpp).
#include "nines/agent/always_on.hpp"

#include <unistd.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <system_error>
#include <utility>

#include "nines/runtime/runtime.hpp"
#include "nines/runtime/supervisor.hpp"

namespace nines::agent {

namespace {
struct Poke {};  // submit() to the worker: the queue has something
}  // namespace

struct AlwaysOnAgent::State {
  Agents& agents;
  AlwaysOnOptions options;

  mutable std::mutex mu;
  struct Item {
    std::string task_id;
    std::string input;
  };
  std::deque<Item> queue;  // the first is the one running (if any)
  std::vector<std::function<void(const AlwaysOnEvent&)>> observers;
  AlwaysOnCounters counters;
  Pid worker;
  Runtime* runtime = nullptr;
  bool started = false;
  bool idle = false;  // the worker waits for a Poke

  State(Agents& a, AlwaysOnOptions o) : agents(a), options(std::move(o)) {}

  void emit(const AlwaysOnEvent& e) const {
    std::vector<std::function<void(const AlwaysOnEvent&)>> obs;
    {
      std::lock_guard lock(mu);
      obs = observers;
    }
    for (const auto& o : obs) o(e);
  }

  std::optional<Item> front() const {
    std::lock_guard lock(mu);
    if (queue.empty()) return std::nullopt;
    return queue.front();
  }

  // Why the worker should recycle now, as {reason key, text}.
  std::optional<std::pair<std::string, std::string>> recycle_reason(std::int64_t tasks) const {
    if (options.max_tasks > 0 && tasks >= options.max_tasks) {
      return std::make_pair(std::string("max_tasks"), "max_tasks: " + std::to_string(tasks) + " tasks done");
    }
    for (const Watermark& w : options.watermarks) {
      const std::int64_t v = w.probe();
      if (v >= 0 && v >= w.limit) {
        return std::make_pair(w.name, w.name + ": " + std::to_string(v) + " >= " + std::to_string(w.limit));
      }
    }
    return std::nullopt;
  }

  Task<> work(Context& ctx) {
    std::int64_t life = 0;
    {
      std::lock_guard lock(mu);
      worker = ctx.self();
      runtime = &ctx.runtime();
      life = ++counters.worker_starts;
    }
    if (life > 1) emit({.type = AlwaysOnEvent::Type::kRestart, .detail = std::to_string(life)});
    std::int64_t tasks = 0;
    for (;;) {
      std::optional<Item> item = front();
      if (!item) {
        {
          std::lock_guard lock(mu);
          idle = queue.empty();
          if (!idle) continue;
        }
        std::function<bool(const Message&)> is_poke = [](const Message& m) { return m.get<Poke>() != nullptr; };
        (void)co_await ctx.receive_if(std::move(is_poke), options.idle_poll);
        std::lock_guard lock(mu);
        idle = false;
        continue;
      }
      TaskOutcome out = co_await agents.run(ctx, options.agent, item->task_id, item->input);
      // Interrupted: the task stays first; the restarted worker resumes it.
      if (out.status == TaskStatus::kInterrupted) {
        ctx.exit(ExitReason::crash("nines::agent::Interrupted", item->task_id + ": " + out.reason));
      }
      {
        std::lock_guard lock(mu);
        if (!queue.empty() && queue.front().task_id == item->task_id) queue.pop_front();
        ++counters.completed;
      }
      ++tasks;
      emit({.type = AlwaysOnEvent::Type::kTaskDone,
            .task_id = item->task_id,
            .detail = std::string(to_string(out.status)),
            .tasks_this_life = tasks});
      if (auto why = recycle_reason(tasks)) {
        {
          std::lock_guard lock(mu);
          ++counters.recycles;
          ++counters.recycles_by_reason[why->first];
        }
        emit({.type = AlwaysOnEvent::Type::kRecycle, .detail = why->second, .tasks_this_life = tasks});
        ctx.exit(ExitReason::shutdown("recycle: " + why->second));
      }
    }
  }
};

WatermarkProbe resident_bytes_probe() {
  return []() -> std::int64_t {
    std::ifstream statm("/proc/self/statm");
    std::int64_t size = 0;
    std::int64_t resident = 0;
    if (!(statm >> size >> resident)) return -1;
    const long page = ::sysconf(_SC_PAGESIZE);
    return page > 0 ? resident * page : -1;
  };
}

WatermarkProbe open_fds_probe() {
  return []() -> std::int64_t {
    std::error_code ec;
    std::filesystem::directory_iterator it("/proc/self/fd", ec);
    if (ec) return -1;
    std::int64_t n = 0;
    for (const auto& entry : it) {
      (void)entry;
      ++n;
    }
    return n - 1;  // the iterator's own descriptor
  };
}

AlwaysOnAgent::AlwaysOnAgent(std::shared_ptr<State> state) : state_(std::move(state)) {}
AlwaysOnAgent::~AlwaysOnAgent() = default;

Result<std::unique_ptr<AlwaysOnAgent>> AlwaysOnAgent::create(Agents& agents, AlwaysOnOptions options) {
  auto bad = [](const std::string& what) { return Error(ErrorKind::kInvalidArgument, "always-on agent: " + what); };
  if (options.agent.empty()) return bad("no agent");
  if (options.queue_capacity == 0) return bad("queue_capacity must be >= 1");
  if (options.max_tasks < 0) return bad("max_tasks must be >= 0");
  if (options.idle_poll <= Duration::zero()) return bad("idle_poll must be > 0");
  if (options.restart_intensity < 1) return bad("restart_intensity must be >= 1");
  for (const Watermark& w : options.watermarks) {
    if (w.name.empty() || !w.probe) return bad("a watermark needs a name and a probe");
  }
  return std::unique_ptr<AlwaysOnAgent>(new AlwaysOnAgent(std::make_shared<State>(agents, std::move(options))));
}

Result<Pid> AlwaysOnAgent::start(Context& ctx) {
  {
    std::lock_guard lock(state_->mu);
    if (state_->started) return Error(ErrorKind::kAlreadyExists, "always-on agent: started already");
    state_->started = true;
  }
  std::weak_ptr<State> weak = state_;
  Behavior worker = [weak](Context& c) -> Task<> {
    std::shared_ptr<State> s = weak.lock();
    if (!s) co_return;
    co_await s->work(c);
  };
  SupervisorSpec spec{.name = "",
                      .strategy = Strategy::kOneForOne,
                      .intensity = state_->options.restart_intensity,
                      .period = state_->options.restart_period};
  ChildSpec child = ChildSpec::worker("worker", std::move(worker));
  child.restart = RestartType::kPermanent;  // a recycle exits with shutdown: restarted too
  spec.children.push_back(std::move(child));
  Result<Pid> sup = start_supervisor_link(ctx, spec);
  if (!sup.ok()) {
    std::lock_guard lock(state_->mu);
    state_->started = false;
  }
  return sup;
}

Status AlwaysOnAgent::submit(std::string task_id, std::string input) {
  if (task_id.empty()) return Error(ErrorKind::kInvalidArgument, "always-on agent: empty task id");
  Pid worker;
  Runtime* rt = nullptr;
  {
    std::lock_guard lock(state_->mu);
    for (const auto& item : state_->queue) {
      if (item.task_id == task_id) {
        ++state_->counters.rejected;
        return Error(ErrorKind::kAlreadyExists, "always-on agent: task '" + task_id + "' is queued already");
      }
    }
    if (state_->queue.size() >= state_->options.queue_capacity) {
      ++state_->counters.rejected;
      return Error(ErrorKind::kBulkheadFull, "always-on agent '" + state_->options.agent + "': the queue is full (" +
                                                 std::to_string(state_->options.queue_capacity) + " tasks)");
    }
    state_->queue.push_back({std::move(task_id), std::move(input)});
    ++state_->counters.accepted;
    if (state_->idle) {  // a busy worker looks at the queue after its task: no message needed
      worker = state_->worker;
      rt = state_->runtime;
    }
  }
  if (rt != nullptr && worker != Pid{}) (void)rt->send(worker, Poke{});
  return ok_status();
}

AlwaysOnCounters AlwaysOnAgent::counters() const {
  std::lock_guard lock(state_->mu);
  AlwaysOnCounters c = state_->counters;
  c.queued = state_->queue.size();
  return c;
}

void AlwaysOnAgent::add_observer(std::function<void(const AlwaysOnEvent&)> observer) {
  std::lock_guard lock(state_->mu);
  state_->observers.push_back(std::move(observer));
}

}  // namespace nines::agent
