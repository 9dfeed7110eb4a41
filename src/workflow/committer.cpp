#include "workflow/committer.hpp"

#include <any>
#include <utility>
#include <vector>

#include "nines/core/check.hpp"
#include "nines/store/group_commit.hpp"

namespace nines::internal {

Task<Status> InlineCommitter::commit(Context& ctx, WriteBatch batch) {
  Environment& env = ctx.env();
  if (crashed_ || env.fault(FaultPoint::kCommitterCrash)) {
    // Dead with this commit in flight, applied or not; nobody hears back from it again.
    if (!std::exchange(crashed_, true) && env.fault_draw(2) == 0) (void)store_.commit(batch);
    Result<std::any> never = co_await ctx.await_external([](Completion) {});
    co_return never.ok() ? Error(ErrorKind::kInternal, "workflow engine: the committer crashed") : never.error();
  }
  if (env.fault(FaultPoint::kStoreCommitSlow)) {
    auto slept = co_await ctx.sleep(env.fault_delay(FaultPoint::kStoreCommitSlow));
    if (!slept.ok()) co_return std::move(slept).error().with_context("workflow engine: a slow commit");
  }
  if (env.fault(FaultPoint::kStoreCommitFail)) {
    groups_.fetch_add(1, std::memory_order_relaxed);
    co_return Error(ErrorKind::kTransient, "workflow engine: the store commit failed (fault point store_commit_fail)");
  }
  Status s = store_.commit(batch);
  groups_.fetch_add(1, std::memory_order_relaxed);
  if (s.ok()) batches_.fetch_add(1, std::memory_order_relaxed);
  co_return s;
}

Result<std::unique_ptr<ThreadCommitter>> ThreadCommitter::create(Environment& env, Store& store,
                                                                 ThreadCommitterOptions options) {
  std::unique_ptr<ThreadCommitter> c(new ThreadCommitter(store, options));
  ThreadCommitter* self = c.get();
  auto thread = env.start_thread("nines-commit", [self] { self->loop(); });
  if (!thread.ok()) return std::move(thread).error().with_context("workflow engine: starting the committer thread");
  c->thread_ = std::move(*thread);
  return c;
}

ThreadCommitter::~ThreadCommitter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_) thread_->join();
}

Task<Status> ThreadCommitter::commit(Context& ctx, WriteBatch batch) {
  if (batch.empty()) co_return ok_status();
  // Commits in progress (inline or waited for), this one included.
  struct InFlight {
    std::atomic<int>& n;
    int before;
    explicit InFlight(std::atomic<int>& count) : n(count), before(count.fetch_add(1, std::memory_order_acq_rel)) {}
    ~InFlight() { n.fetch_sub(1, std::memory_order_acq_rel); }
  } in_flight(in_flight_);
  // Alone (nobody else committing or queued) with a fast store: inline. Under load the
  // commits go to the thread and group.
  if (store_.fast_commits() && in_flight.before == 0 && queued_.load(std::memory_order_acquire) == 0 &&
      committing_.try_lock()) {
    Status s = store_.commit(batch);
    committing_.unlock();
    groups_.fetch_add(1, std::memory_order_relaxed);
    if (s.ok()) batches_.fetch_add(1, std::memory_order_relaxed);
    co_return s;
  }
  bool full = false;
  // The batch moves into the queue when the process is suspended; if the process is killed
  // while it waits, the batch is still committed (or failed) and the completion is dropped.
  std::function<void(Completion)> start = [this, &batch, &full](Completion c) {
    {
      std::lock_guard lock(mu_);
      if (queue_.size() >= options_.max_queued || stopping_) {
        full = true;
      } else {
        queue_.push_back(Item{std::move(batch), c});
        queued_.store(queue_.size(), std::memory_order_release);
      }
    }
    if (full) {
      c.complete(Error(ErrorKind::kTransient, "workflow engine: the commit queue is full or stopping"));
    } else {
      cv_.notify_one();
    }
  };
  Result<std::any> r = co_await ctx.await_external(std::move(start));
  if (!r.ok()) co_return std::move(r).error();
  co_return ok_status();
}

void ThreadCommitter::loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and everything is committed
    std::deque<Item> group;
    std::size_t bytes = 0;
    while (!queue_.empty() && group.size() < options_.max_group_batches &&
           (group.empty() || bytes + queue_.front().batch.approximate_bytes() <= options_.max_group_bytes)) {
      bytes += queue_.front().batch.approximate_bytes();
      group.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    NINES_DCHECK(!group.empty());  // the first item is always taken, whatever its size
    queued_.store(queue_.size(), std::memory_order_release);
    // Taken before mu_ is let go: an inline commit (which needs nothing queued and this
    // lock) cannot overtake the group just taken from the queue.
    std::unique_lock committing(committing_);
    lock.unlock();
    commit_group(group, committing);
    lock.lock();
  }
}

void ThreadCommitter::commit_group(std::deque<Item>& group, std::unique_lock<std::mutex>& committing) {
  std::vector<const WriteBatch*> batches;
  batches.reserve(group.size());
  for (const Item& item : group) batches.push_back(&item.batch);
  std::uint64_t backend_commits = 0;
  std::vector<Status> results;
  try {
    results = commit_merged(store_, batches, &backend_commits);
  } catch (const std::exception& e) {
    // A store that throws is a bug; its batches fail (nothing is known to be applied) and
    // the thread lives on, instead of terminating the program.
    results.assign(group.size(),
                   Error(ErrorKind::kInternal, std::string("workflow engine: the store threw: ") + e.what()));
  }
  // One status per batch, or a waiting workflow would never be completed.
  NINES_CHECK(results.size() == group.size());
  committing.unlock();
  // Completed after committing_ is released: a woken workflow's next commit may go inline.
  groups_.fetch_add(backend_commits, std::memory_order_relaxed);
  for (std::size_t i = 0; i < group.size(); ++i) {
    if (results[i].ok()) {
      batches_.fetch_add(1, std::memory_order_relaxed);
      group[i].done.complete(std::any{});
    } else {
      group[i].done.complete(std::move(results[i]).error());
    }
  }
}

}  // namespace nines::internal
