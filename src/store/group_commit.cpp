// Group commit: LevelDB's writer queue. The writer at the front of the queue is the leader;
// it commits the batches queued behind it (up to the limits) as one, with the mutex released,
// then hands each its status and wakes the next leader.
#include "nines/store/group_commit.hpp"

#include <algorithm>
#include <exception>
#include <vector>

#include "nines/core/check.hpp"

namespace nines {

struct GroupCommitter::Writer {
  explicit Writer(const WriteBatch& b) : batch(b) {}
  const WriteBatch& batch;
  std::condition_variable cv;
  bool done = false;
  Status status;
};

GroupCommitter::GroupCommitter(Store& store, GroupCommitOptions options) : store_(store), options_(options) {
  options_.max_batches_per_group = std::max<std::size_t>(1, options_.max_batches_per_group);
}

std::vector<Status> commit_merged(Store& store, const std::vector<const WriteBatch*>& batches,
                                  std::uint64_t* backend_commits) {
  std::vector<Status> results(batches.size());
  std::uint64_t commits = 1;
  if (batches.size() == 1) {
    results[0] = store.commit(*batches[0]);
  } else if (!batches.empty()) {
    WriteBatch merged;
    for (const WriteBatch* b : batches) merged.append(*b);
    Status s = store.commit(merged);
    const bool content_error =
        !s.ok() && (s.error().kind() == ErrorKind::kNotFound || s.error().kind() == ErrorKind::kInvalidArgument);
    if (content_error) {
      // Nothing was applied, and the error is about some batch's content: find which by
      // committing each alone, so one caller's bad batch does not fail the others.
      for (std::size_t i = 0; i < batches.size(); ++i) results[i] = store.commit(*batches[i]);
      commits += batches.size();
    } else {
      std::fill(results.begin(), results.end(), s);
    }
  }
  if (backend_commits != nullptr) *backend_commits = batches.empty() ? 0 : commits;
  return results;
}

Status GroupCommitter::commit(const WriteBatch& batch) {
  if (batch.empty()) return ok_status();
  Writer self(batch);
  std::unique_lock lock(mu_);
  queue_.push_back(&self);
  self.cv.wait(lock, [&] { return self.done || queue_.front() == &self; });
  if (self.done) return std::move(self.status);

  // Leader: take a group from the front of the queue.
  NINES_DCHECK(queue_.front() == &self);
  std::vector<Writer*> group{&self};
  std::size_t bytes = batch.approximate_bytes();
  for (std::size_t i = 1; i < queue_.size() && group.size() < options_.max_batches_per_group; ++i) {
    std::size_t b = queue_[i]->batch.approximate_bytes();
    if (bytes + b > options_.max_bytes_per_group) break;
    bytes += b;
    group.push_back(queue_[i]);
  }
  lock.unlock();

  std::vector<const WriteBatch*> batches;
  batches.reserve(group.size());
  for (Writer* w : group) batches.push_back(&w->batch);
  std::uint64_t backend_commits = 0;
  std::vector<Status> results;
  std::exception_ptr thrown;
  try {
    results = commit_merged(store_, batches, &backend_commits);
  } catch (...) {
    // A throwing store is a bug; the followers must still be released (their batches'
    // fate is unknown), then the exception goes on to crash the leader's process.
    thrown = std::current_exception();
    backend_commits = 1;
    results.assign(group.size(), Status(Error(ErrorKind::kInternal, "store commit threw")));
  }

  // One status per batch, whatever the store did (commit_merged's contract).
  NINES_CHECK(results.size() == group.size());
  lock.lock();
  stats_.groups += backend_commits;
  stats_.largest_group = std::max<std::uint64_t>(stats_.largest_group, group.size());
  for (std::size_t i = 0; i < group.size(); ++i) {
    if (results[i].ok())
      ++stats_.batches;
    else
      ++stats_.failed_batches;
    // Only the leader pops, and its group is the front of the queue, in order: anything else
    // would wake a writer whose batch was not committed.
    NINES_CHECK_MSG(queue_.front() == group[i], "group commit: the queue's front is not the group's next writer");
    queue_.pop_front();
    if (group[i] == &self) continue;
    group[i]->status = std::move(results[i]);
    group[i]->done = true;
    group[i]->cv.notify_one();
  }
  if (!queue_.empty()) queue_.front()->cv.notify_one();
  if (thrown) {
    lock.unlock();
    std::rethrow_exception(thrown);
  }
  return std::move(results[0]);
}

std::size_t GroupCommitter::waiting() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

GroupCommitStats GroupCommitter::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace nines
