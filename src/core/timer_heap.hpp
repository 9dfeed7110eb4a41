// Internal: the real environment's timers. A binary min-heap of (deadline, sequence, id) over a
// table of slots holding the callbacks; a timer's id names its slot and the slot's generation,
// so cancelling finds the slot at once, frees its callback, and leaves the heap entry behind
// (skipped when it reaches the top; the heap is rebuilt from the live entries when the dead
// ones outnumber them). Adding and cancelling allocate nothing once the vectors have grown
// (the callback's own captures aside).
//
// Why not a std::map: with thousands of model calls in flight, each with a timeout timer that
// is cancelled long before it fires, the map's node allocations and tree walks (plus an
// id -> deadline index) were ~5% of a call's CPU (bench/README.md, "the transport issue").
// Not thread-safe: the environment holds its lock around every call.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "nines/core/check.hpp"
#include "nines/core/time.hpp"

namespace nines::internal {

class TimerHeap {
 public:
  using Id = std::uint64_t;  // never 0

  Id add(TimePoint at, std::function<void()> fn) {
    std::uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = static_cast<std::uint32_t>(slots_.size());
      slots_.emplace_back();
    }
    Slot& s = slots_[slot];
    NINES_DCHECK(!s.live);
    s.fn = std::move(fn);
    s.live = true;
    if (++s.gen == 0) s.gen = 1;  // from 1: an id is never 0
    const Id id = (static_cast<Id>(s.gen) << 32) | slot;
    heap_.push_back(Entry{at, next_seq_++, id});
    std::push_heap(heap_.begin(), heap_.end(), Later{});
    ++live_;
    return id;
  }

  // True if the timer was still pending (its callback is dropped now).
  bool cancel(Id id) {
    Slot* s = find(id);
    if (s == nullptr) return false;
    release(*s, static_cast<std::uint32_t>(id));
    if (heap_.size() > 2 * live_ + kCompactSlack) compact();
    return true;
  }

  bool empty() const { return live_ == 0; }
  std::size_t size() const { return live_; }

  // The earliest pending deadline, or TimePoint::max() when none is pending.
  TimePoint earliest() {
    drop_dead_top();
    return heap_.empty() ? TimePoint::max() : heap_.front().at;
  }

  // Moves the callbacks of the timers due at `now` to `out`, earliest first (ties: in the order
  // they were added); they are no longer pending.
  void take_due(TimePoint now, std::vector<std::function<void()>>& out) {
    for (drop_dead_top(); !heap_.empty() && heap_.front().at <= now; drop_dead_top()) {
      const Id id = heap_.front().id;
      std::pop_heap(heap_.begin(), heap_.end(), Later{});
      heap_.pop_back();
      Slot* s = find(id);
      NINES_DCHECK(s != nullptr);  // drop_dead_top left a live one on top
      out.push_back(std::move(s->fn));
      release(*s, static_cast<std::uint32_t>(id));
    }
  }

 private:
  static constexpr std::size_t kCompactSlack = 1024;
  struct Slot {
    std::function<void()> fn;
    std::uint32_t gen = 0;
    bool live = false;
  };
  struct Entry {
    TimePoint at;
    std::uint64_t seq;
    Id id;
  };
  // std::push_heap keeps the greatest on top: "greater" is earlier.
  struct Later {
    bool operator()(const Entry& a, const Entry& b) const { return a.at != b.at ? a.at > b.at : a.seq > b.seq; }
  };

  Slot* find(Id id) {
    const auto slot = static_cast<std::uint32_t>(id);
    if (slot >= slots_.size()) return nullptr;
    Slot& s = slots_[slot];
    return s.live && s.gen == static_cast<std::uint32_t>(id >> 32) ? &s : nullptr;
  }
  void release(Slot& s, std::uint32_t slot) {
    s.fn = nullptr;
    s.live = false;
    free_.push_back(slot);
    --live_;
  }
  void drop_dead_top() {
    while (!heap_.empty() && find(heap_.front().id) == nullptr) {
      std::pop_heap(heap_.begin(), heap_.end(), Later{});
      heap_.pop_back();
    }
  }
  void compact() {
    std::erase_if(heap_, [this](const Entry& e) { return find(e.id) == nullptr; });
    std::make_heap(heap_.begin(), heap_.end(), Later{});
    NINES_DCHECK(heap_.size() == live_);
  }

  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_;
  std::vector<Entry> heap_;
  std::uint64_t next_seq_ = 0;
  std::size_t live_ = 0;
};

}  // namespace nines::internal
