// The real environment's timer heap (src/core/timer_heap.hpp): order, cancellation, ids that
// are never reused ambiguously, and the rebuild that drops cancelled entries. Checked against a
// reference model (a std::multimap) over a seeded random sequence of operations.
#include "core/timer_heap.hpp"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

namespace nines::internal {
namespace {

TimePoint at_ms(int ms) { return TimePoint{} + std::chrono::milliseconds(ms); }

// Runs the callbacks due at `now`.
void fire(TimerHeap& h, TimePoint now) {
  std::vector<std::function<void()>> due;
  h.take_due(now, due);
  for (auto& fn : due) fn();
}

TEST(TimerHeap, DueTimersComeEarliestFirstTiesInTheOrderAdded) {
  TimerHeap h;
  std::vector<int> fired;
  h.add(at_ms(30), [&] { fired.push_back(30); });
  h.add(at_ms(10), [&] { fired.push_back(10); });
  h.add(at_ms(20), [&] { fired.push_back(21); });
  h.add(at_ms(20), [&] { fired.push_back(22); });
  h.add(at_ms(40), [&] { fired.push_back(40); });
  EXPECT_EQ(h.earliest(), at_ms(10));
  fire(h, at_ms(30));
  EXPECT_EQ(fired, (std::vector<int>{10, 21, 22, 30}));
  EXPECT_EQ(h.size(), 1u);
  EXPECT_EQ(h.earliest(), at_ms(40));
}

TEST(TimerHeap, ACancelledTimerNeverFiresAndItsIdIsDeadForGood) {
  TimerHeap h;
  int fired = 0;
  auto a = h.add(at_ms(10), [&] { ++fired; });
  EXPECT_NE(a, 0u);
  EXPECT_TRUE(h.cancel(a));
  EXPECT_FALSE(h.cancel(a));  // twice
  EXPECT_TRUE(h.empty());
  EXPECT_EQ(h.earliest(), TimePoint::max());
  // The slot is reused: the old id must not cancel the new timer.
  auto b = h.add(at_ms(10), [&] { fired += 10; });
  EXPECT_NE(a, b);
  EXPECT_FALSE(h.cancel(a));
  fire(h, at_ms(10));
  EXPECT_EQ(fired, 10);
  EXPECT_FALSE(h.cancel(b));  // fired: no longer pending
}

TEST(TimerHeap, CancellingFreesTheCallbackAtOnce) {
  TimerHeap h;
  auto token = std::make_shared<int>(1);
  auto id = h.add(at_ms(1000), [token] {});
  EXPECT_EQ(token.use_count(), 2);
  h.cancel(id);
  EXPECT_EQ(token.use_count(), 1);
}

// Thousands of timers cancelled long before they are due (a model call's timeout): the heap
// keeps what is pending in order and stays bounded (rebuilt when dead entries pile up).
TEST(TimerHeap, MatchesAReferenceModelUnderRandomAddCancelAndFire) {
  std::mt19937_64 rng(7);
  TimerHeap h;
  std::multimap<std::pair<TimePoint, std::uint64_t>, int> model;  // (at, seq) -> value
  std::map<TimerHeap::Id, std::pair<TimePoint, std::uint64_t>> ids;
  std::vector<int> fired_heap, fired_model;
  std::uint64_t seq = 0;
  int now_ms = 0;
  for (int step = 0; step < 200'000; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 5) {
      const int at = now_ms + static_cast<int>(rng() % 5000);
      const int value = step;
      auto id = h.add(at_ms(at), [&fired_heap, value] { fired_heap.push_back(value); });
      ASSERT_EQ(ids.count(id), 0u) << "an id of a pending timer was reused";
      ids[id] = {at_ms(at), seq};
      model.emplace(std::make_pair(at_ms(at), seq++), value);
    } else if (op < 9 && !ids.empty()) {
      auto it = ids.begin();
      std::advance(it, static_cast<long>(rng() % ids.size()));
      ASSERT_TRUE(h.cancel(it->first));
      model.erase(model.find(it->second));
      ids.erase(it);
    } else {
      now_ms += static_cast<int>(rng() % 200);
      std::vector<std::function<void()>> due;
      h.take_due(at_ms(now_ms), due);
      for (auto& fn : due) fn();
      while (!model.empty() && model.begin()->first.first <= at_ms(now_ms)) {
        fired_model.push_back(model.begin()->second);
        model.erase(model.begin());
      }
      std::erase_if(ids, [&](const auto& kv) { return kv.second.first <= at_ms(now_ms); });
      ASSERT_EQ(fired_heap, fired_model) << "at step " << step;
    }
    ASSERT_EQ(h.size(), model.size());
    ASSERT_EQ(h.earliest(), model.empty() ? TimePoint::max() : model.begin()->first.first);
  }
  EXPECT_GT(fired_model.size(), 1000u);
}

}  // namespace
}  // namespace nines::internal
