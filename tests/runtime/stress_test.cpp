// Stress on the real multi-threaded scheduler (run under ASan+UBSan and TSan by the test
// command): many processes under one dynamic supervisor, a fifth of them crashed at random
// at once, nothing lost. 100,000 processes; 30,000 in sanitizer builds, where 100,000 take about
// a minute each (the same paths, fewer times); NINES_STRESS_CHILDREN=N sets N.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <unordered_set>
#include <vector>

#include "nines/runtime/runtime.hpp"
#include "nines/runtime/supervisor.hpp"

namespace nines {
namespace {

struct Crash {};
struct Ping {};

std::size_t stress_children() {
  if (const char* n = std::getenv("NINES_STRESS_CHILDREN"); n != nullptr && std::atoi(n) >= 10) {
    return static_cast<std::size_t>(std::atoi(n));
  }
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return 30'000;
#else
  return 100'000;
#endif
}

TEST(Stress, ManyChildrenRandomCrashesAllRestartedNoneLost) {
  const std::size_t kChildren = stress_children();
  const std::size_t kCrashes = kChildren / 5;
  // Generous call timeouts: CI runs this under sanitizers on a loaded 2-core machine; the test
  // is about counts, not speed.
  auto env = make_real_environment({.workers = 2, .seed = 12345});
  auto rt = Runtime::create(*env).value();

  auto starts = std::make_shared<std::vector<std::atomic<int>>>(kChildren);
  std::vector<int> crashes(kChildren, 0);
  std::atomic<std::uint64_t> restarted_events{0};
  rt->events().subscribe([&](const SupervisionEvent& ev) {
    if (ev.type == SupervisionEventType::kChildRestarted) restarted_events.fetch_add(1);
  });

  SupervisorSpec spec{.name = "pool", .strategy = Strategy::kSimpleOneForOne, .intensity = 1'000'000, .period = 1s};
  ChildSpec tmpl;
  tmpl.id = "worker";
  tmpl.restart = RestartType::kPermanent;
  tmpl.start = [starts](StartContext& sc) {
    std::size_t index = std::any_cast<std::size_t>(sc.arg());
    return sc.spawn_link([starts, index](Context& ctx) -> Task<> {
      (*starts)[index].fetch_add(1);
      for (;;) {
        Message m = co_await ctx.receive();
        if (m.is<Crash>()) throw std::runtime_error("injected crash");
        if (m.is_call()) ctx.reply(m, index);
      }
    });
  };
  spec.children.push_back(tmpl);

  std::string failure;
  auto driver = rt->spawn_watched([&](Context& ctx) -> Task<> {
                    auto fail = [&](std::string why) { failure = std::move(why); };
                    auto sup = start_supervisor_link(ctx, spec);
                    if (!sup.ok()) co_return fail(sup.error().to_string());
                    for (std::size_t i = 0; i < kChildren; ++i) {
                      auto r = co_await start_dynamic_child(ctx, *sup, std::any(i), 60s);
                      if (!r.ok()) co_return fail(r.error().to_string());
                    }
                    auto kids = co_await which_children(ctx, *sup, 60s);
                    if (!kids.ok() || kids->size() != kChildren) co_return fail("which_children before crashes");
                    // Crash kCrashes distinct random children, all at once.
                    std::vector<std::size_t> order(kChildren);
                    for (std::size_t i = 0; i < kChildren; ++i) order[i] = i;
                    for (std::size_t i = 0; i < kCrashes; ++i) {
                      std::size_t j = i + ctx.env().random_below(kChildren - i);
                      std::swap(order[i], order[j]);
                      Pid victim = (*kids)[order[i]].pid;
                      auto index = co_await ctx.call(victim, Ping{}, 60s);
                      if (!index.ok()) co_return fail("ping before crash: " + index.error().to_string());
                      ++crashes[*index->get<std::size_t>()];
                      (void)co_await ctx.send(victim, Crash{});
                    }
                    // Wait (in virtual-or-real process time, never blocking a worker) until the
                    // supervisor has restarted every one of them.
                    for (int tries = 0;; ++tries) {
                      auto counts = co_await count_children(ctx, *sup, 60s);
                      if (!counts.ok()) co_return fail(counts.error().to_string());
                      if (counts->restarts == kCrashes && counts->active == kChildren) break;
                      if (counts->restarts > kCrashes) co_return fail("more restarts than crashes");
                      if (tries > 600'000) co_return fail("restarts never completed");
                      co_await ctx.sleep(1ms);
                    }
                    kids = co_await which_children(ctx, *sup, 60s);
                    if (!kids.ok() || kids->size() != kChildren) co_return fail("which_children after crashes");
                    std::unordered_set<Pid> pids;
                    for (auto& k : *kids) pids.insert(k.pid);
                    if (pids.size() != kChildren || pids.count(Pid{})) co_return fail("lost or duplicate children");
                    // Every child answers.
                    std::vector<int> answered(kChildren, 0);
                    for (auto& k : *kids) {
                      auto r = co_await ctx.call(k.pid, Ping{}, 60s);
                      if (!r.ok()) co_return fail("ping after crashes: " + r.error().to_string());
                      ++answered[*r->get<std::size_t>()];
                    }
                    for (std::size_t i = 0; i < kChildren; ++i) {
                      if (answered[i] != 1)
                        co_return fail("child " + std::to_string(i) + " answered " + std::to_string(answered[i]));
                    }
                    ctx.unlink(*sup);
                    ctx.send_exit(*sup, ExitReason::shutdown());
                  }).value();
  ExitReason r = driver.exit->wait();
  ASSERT_TRUE(failure.empty()) << failure;
  EXPECT_TRUE(r.is_normal()) << r.to_string();
  for (std::size_t i = 0; i < kChildren; ++i) {
    ASSERT_EQ((*starts)[i].load(), 1 + crashes[i]) << "child " << i;
  }
  EXPECT_EQ(restarted_events.load(), kCrashes);
  EXPECT_EQ(rt->events().count(SupervisionEventType::kChildStarted), kChildren);
  EXPECT_EQ(rt->events().count(SupervisionEventType::kIntensityExceeded), 0u);
}

// Many processes ping-ponging across both workers while others crash and are linked:
// message counts must be exact and every exit must reach its linked partner.
TEST(Stress, ConcurrentLinksAndMessagesOnTwoWorkers) {
  constexpr int kPairs = 2000;
  constexpr int kRounds = 50;
  auto env = make_real_environment({.workers = 2, .seed = 7});
  auto rt = Runtime::create(*env).value();
  std::atomic<int> round_trips{0};
  std::atomic<int> partner_exits{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int i = 0; i < kPairs; ++i) {
    auto echo = rt->spawn_watched([](Context& ctx) -> Task<> {
                    ctx.set_trap_exit(true);
                    for (;;) {
                      Message m = co_await ctx.receive();
                      if (m.is<Exit>()) co_return;
                      (void)co_await ctx.send(m.from(), *m.get<int>());
                    }
                  }).value();
    watches.push_back(echo.exit);
    ASSERT_TRUE(rt->spawn([&, echo = echo.pid](Context& ctx) -> Task<> {
                    ctx.link(echo);
                    for (int k = 0; k < kRounds; ++k) {
                      (void)co_await ctx.send(echo, k);
                      Message m = co_await ctx.receive();
                      if (*m.get<int>() == k) round_trips.fetch_add(1);
                    }
                    throw std::runtime_error("done: crash on purpose");
                  }).ok());
  }
  for (auto& w : watches) {
    ExitReason r = w->wait();
    if (r.is_normal()) partner_exits.fetch_add(1);
  }
  EXPECT_EQ(round_trips.load(), kPairs * kRounds);
  EXPECT_EQ(partner_exits.load(), kPairs);  // every echo saw its client's crash and exited
  EXPECT_EQ(rt->process_count(), 0u);
}

}  // namespace
}  // namespace nines
