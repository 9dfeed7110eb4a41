// nines/store/group_commit.hpp: merges concurrent callers' batches into one backend commit.
//
// A GroupCommitter sits in front of a Store. Callers of commit() queue their batches; the
// first in the queue becomes the leader, takes the queued batches (up to
// max_batches_per_group and max_bytes_per_group), commits them as one merged batch (one
// transaction, one sync), and wakes their callers. Every caller returns only after its own
// batch is durable (or failed). A failed merged commit fails every batch in it: no batch of
// a failed group is partly or wholly applied. One exception keeps one bad batch from
// failing its neighbours: when the merged commit fails with kNotFound or kInvalidArgument
// (an error about a batch's content, deterministic, and nothing applied), each batch of the
// group is committed again on its own, so only the faulty one fails.
//
// This version blocks the calling thread (leader/follower on a mutex and condition
// variable, as LevelDB's writer queue). Called from a nines process it blocks that
// scheduler worker; a variant that suspends the process instead (await_external) comes with
// the workflow engine.
//
// Ownership: the committer borrows the store, which must outlive it.
// Thread-safety: commit() may be called from any number of threads at once.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include "nines/store/store.hpp"

namespace nines {

struct GroupCommitOptions {
  std::size_t max_batches_per_group = 256;                 // >= 1
  std::size_t max_bytes_per_group = std::size_t{8} << 20;  // a single larger batch still goes alone
};

struct GroupCommitStats {
  std::uint64_t groups = 0;   // backend commits made (merged or alone)
  std::uint64_t batches = 0;  // caller batches committed ok
  std::uint64_t failed_batches = 0;
  std::uint64_t largest_group = 0;  // most batches in one group
};

// The merging step on its own, for committers with their own queue (the workflow engine's
// committer thread): commits the batches as one merged batch and returns each one's status,
// in order, by the rules above (one failure fails all, except a content error, after which
// each is committed alone). `backend_commits`, if given, receives how many Store::commit
// calls it made.
std::vector<Status> commit_merged(Store& store, const std::vector<const WriteBatch*>& batches,
                                  std::uint64_t* backend_commits = nullptr);

class GroupCommitter {
 public:
  explicit GroupCommitter(Store& store, GroupCommitOptions options = {});
  GroupCommitter(const GroupCommitter&) = delete;
  GroupCommitter& operator=(const GroupCommitter&) = delete;

  // Commits batch with other callers' batches; returns when it is durable (ok) or failed
  // (the Store::commit error of its group). An empty batch returns ok at once.
  Status commit(const WriteBatch& batch);

  // Callers waiting in commit() (the leader included).
  std::size_t waiting() const;
  GroupCommitStats stats() const;

 private:
  struct Writer;
  Store& store_;
  GroupCommitOptions options_;
  mutable std::mutex mu_;
  std::deque<Writer*> queue_;
  GroupCommitStats stats_;
};

}  // namespace nines
