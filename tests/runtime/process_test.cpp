#include <gtest/gtest.h>

#include "runtime/test_util.hpp"

namespace nines {
namespace {
using testing::Log;
using testing::SimRuntime;

TEST(Process, PingPong) {
  SimRuntime s;
  Log log;
  Pid pong = s.spawn([&](Context& ctx) -> Task<> {
    for (;;) {
      Message m = co_await ctx.receive();
      if (auto* n = m.get<int>()) {
        log.add("pong " + std::to_string(*n));
        (void)co_await ctx.send(m.from(), *n + 1);
        if (*n >= 4) co_return;
      }
    }
  });
  s.spawn([&, pong](Context& ctx) -> Task<> {
    (void)co_await ctx.send(pong, 0);
    for (;;) {
      Message m = co_await ctx.receive();
      int n = *m.get<int>();
      log.add("ping " + std::to_string(n));
      if (n >= 5) co_return;
      (void)co_await ctx.send(pong, n + 1);
    }
  });
  s.rt->run_until_idle();
  EXPECT_EQ(log.get(), (std::vector<std::string>{"pong 0", "ping 1", "pong 2", "ping 3", "pong 4", "ping 5"}));
  EXPECT_EQ(s.rt->process_count(), 0u);
}

}  // namespace
}  // namespace nines
