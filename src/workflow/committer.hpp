// Internal: how the workflow engine's batches reach the store.
//
// InlineCommitter commits on the calling worker thread (the deterministic environment, where
// the memory store does not block, and callers that ask for it). The store fault points
// (store_commit_fail, store_commit_slow, committer_crash: core/fault.hpp) are here, since
// only the deterministic environment fires them and it always commits inline. ThreadCommitter runs one
// committer thread: a committing process hands its batch over and is suspended
// (Context::await_external); the thread takes every batch queued meanwhile (bounded), commits
// them as one merged batch (one transaction, one sync), and completes each waiter with the
// outcome only after the commit returned: group commit without blocking a worker. With a
// store whose commits are fast (no sync: Store::fast_commits), a caller that finds nothing
// queued and nobody committing commits inline instead: a lone workflow then pays no thread
// hand-off, and under load the commits still group on the thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"
#include "nines/store/store.hpp"

namespace nines::internal {

class Committer {
 public:
  virtual ~Committer() = default;
  // Commits `batch` (grouped with others' if the committer groups); ok once durable.
  virtual Task<Status> commit(Context& ctx, WriteBatch batch) = 0;
  std::uint64_t batches() const { return batches_.load(std::memory_order_relaxed); }
  std::uint64_t groups() const { return groups_.load(std::memory_order_relaxed); }

 protected:
  std::atomic<std::uint64_t> batches_{0};
  std::atomic<std::uint64_t> groups_{0};
};

class InlineCommitter final : public Committer {
 public:
  explicit InlineCommitter(Store& store) : store_(store) {}
  Task<Status> commit(Context& ctx, WriteBatch batch) override;

 private:
  Store& store_;
  bool crashed_ = false;  // fault point committer_crash fired: every commit hangs
};

struct ThreadCommitterOptions {
  std::size_t max_group_batches = 256;
  std::size_t max_group_bytes = std::size_t{8} << 20;
  std::size_t max_queued = 100'000;
};

class ThreadCommitter final : public Committer {
 public:
  // Starts the committer thread on `env`.
  static Result<std::unique_ptr<ThreadCommitter>> create(Environment& env, Store& store,
                                                         ThreadCommitterOptions options);
  // Commits everything queued, then stops the thread.
  ~ThreadCommitter() override;
  Task<Status> commit(Context& ctx, WriteBatch batch) override;

 private:
  struct Item {
    WriteBatch batch;
    Completion done;
  };
  ThreadCommitter(Store& store, ThreadCommitterOptions options) : store_(store), options_(options) {}
  void loop();
  // Commits a group; each item's status in `out`, same order.
  void commit_group(std::deque<Item>& group, std::unique_lock<std::mutex>& committing);

  Store& store_;
  const ThreadCommitterOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stopping_ = false;
  // Held by whoever is committing: the thread (a group) or, for a store with fast commits,
  // a caller that found nothing queued and nobody committing (it commits inline).
  std::mutex committing_;
  std::atomic<std::size_t> queued_{0};  // queue_.size(), readable without mu_
  std::atomic<int> in_flight_{0};       // callers inside commit()
  std::unique_ptr<Thread> thread_;
};

}  // namespace nines::internal
