#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "nines/core/check.hpp"
#include "nines/core/environment.hpp"
#include "nines/core/log.hpp"
#include "nines/core/percentile.hpp"
#include "nines/core/result.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

TEST(Result, CarriesValueOrError) {
  Result<int> ok = 7;
  EXPECT_THAT(ok, IsOk());
  EXPECT_EQ(*ok, 7);
  Result<int> bad = Error(ErrorKind::kTimeout, "slow");
  EXPECT_THAT(bad, StatusIs(ErrorKind::kTimeout));
  EXPECT_EQ(bad.error().to_string(), "timeout: slow");
  EXPECT_THROW((void)bad.value(), CheckFailure);
  EXPECT_EQ(bad.value_or(3), 3);
}

TEST(Result, ErrorOfASuccessThrows) {
  Result<int> ok = 7;
  EXPECT_THROW((void)ok.error(), CheckFailure);
  EXPECT_THROW((void)std::move(ok).error(), CheckFailure);
  Status fine = ok_status();
  EXPECT_THROW((void)fine.error(), CheckFailure);
  EXPECT_THROW((void)std::move(fine).error(), CheckFailure);
  Status bad = Error(ErrorKind::kNotFound, "gone");
  EXPECT_EQ(bad.error().kind(), ErrorKind::kNotFound);
  EXPECT_EQ(std::move(bad).error().message(), "gone");
}

TEST(Error, ContextIsPrepended) {
  Error e = Error(ErrorKind::kNoProc, "gone").with_context("calling 'db'");
  EXPECT_EQ(e.message(), "calling 'db': gone");
  EXPECT_THAT(e, StatusIs(ErrorKind::kNoProc));
}

TEST(Error, KindNumberingIsStableAndEveryKindRoundTrips) {
  // Kinds are stored by name, but their numbers must not move either: new kinds go last.
  EXPECT_EQ(static_cast<int>(ErrorKind::kTransient), 0);
  EXPECT_EQ(static_cast<int>(ErrorKind::kInternal), 15);
  EXPECT_EQ(static_cast<int>(ErrorKind::kContextOverflow), 16);
  EXPECT_EQ(to_string(ErrorKind::kContextOverflow), "context_overflow");
  for (int k = 0; k <= static_cast<int>(ErrorKind::kContextOverflow); ++k) {
    auto kind = static_cast<ErrorKind>(k);
    EXPECT_NE(to_string(kind), "unknown") << k;
    EXPECT_EQ(error_kind_from_string(to_string(kind)), kind) << k;
    Error e = Error(kind, "m").with_retry_at(TimePoint(5ms));
    EXPECT_EQ(decode_error(encode_error(e)), e) << k;
  }
  EXPECT_EQ(error_kind_from_string("unknown"), std::nullopt);
}

TEST(Percentile, NearestRankOnASortedSample) {
  EXPECT_EQ(percentile_of_sorted(std::vector<double>{}, 50), 0.0);  // empty: 0, not an out-of-bounds read
  EXPECT_EQ(percentile_of_sorted(std::vector<Duration>{}, 99), Duration{0});
  const std::vector<double> one{7};
  for (double p : {0.0, 1.0, 50.0, 99.0, 100.0}) EXPECT_EQ(percentile_of_sorted(one, p), 7) << p;
  const std::vector<double> four{1, 2, 3, 4};
  EXPECT_EQ(percentile_of_sorted(four, 0), 1);    // the smallest
  EXPECT_EQ(percentile_of_sorted(four, 100), 4);  // the largest
  EXPECT_EQ(percentile_of_sorted(four, 50), 2);   // even count: the lower middle value, no interpolation
  EXPECT_EQ(percentile_of_sorted(four, 50.1), 3);
  EXPECT_EQ(percentile_of_sorted(four, 25), 1);
  EXPECT_EQ(percentile_of_sorted(four, 75), 3);
  EXPECT_EQ(percentile_of_sorted(four, -5), 1);  // out of [0, 100]: clamped
  EXPECT_EQ(percentile_of_sorted(four, 250), 4);
  EXPECT_EQ(percentile_of_sorted(four, std::nan("")), 1);
  std::vector<int> hundred(100);
  for (int i = 0; i < 100; ++i) hundred[static_cast<std::size_t>(i)] = i + 1;
  EXPECT_EQ(percentile_of_sorted(hundred, 50), 50);
  EXPECT_EQ(percentile_of_sorted(hundred, 99), 99);  // exactly rank 99, not one past it
  EXPECT_EQ(percentile_of_sorted(hundred, 99.5), 100);
  std::vector<int> thousand(1000);
  for (int i = 0; i < 1000; ++i) thousand[static_cast<std::size_t>(i)] = i + 1;
  for (int p = 1; p <= 100; ++p) EXPECT_EQ(percentile_of_sorted(thousand, p), p * 10) << p;
  const std::vector<Duration> d{1ms, 2ms, 3ms};
  EXPECT_EQ(percentile_of_sorted(d, 50), 2ms);
}

TEST(Check, AlwaysOnCheckThrowsWithLocation) {
  try {
    NINES_CHECK(1 + 1 == 3);
    FAIL();
  } catch (const CheckFailure& f) {
    EXPECT_THAT(std::string(f.what()), HasSubstr("1 + 1 == 3"));
    EXPECT_THAT(std::string(f.what()), HasSubstr("core_test.cpp"));
  }
}

TEST(Check, BugFailsLikeACheckInThisDebugBuild) {
  std::uint64_t before = internal_bug_count();
  try {
    Error e = NINES_BUG("the impossible");
    FAIL() << e.to_string();
  } catch (const CheckFailure& f) {
    EXPECT_NE(std::string(f.what()).find("the impossible"), std::string::npos);
    EXPECT_NE(std::string(f.what()).find("core_test.cpp"), std::string::npos);
  }
  EXPECT_EQ(internal_bug_count(), before + 1);
}

TEST(Check, BugInReleaseModeCountsLogsAndYieldsAnInternalError) {
  SimEnvironment env(1);
  auto capture = std::make_shared<CaptureSink>();
  env.logger().set_sink(capture);
  std::uint64_t before = internal_bug_count();
  Error e = internal::report_bug(BugMode::kReport, "x.cpp", 12, "woken without a slot", &env.logger());
  EXPECT_EQ(e.kind(), ErrorKind::kInternal);
  EXPECT_EQ(e.message(), "internal bug at x.cpp:12: woken without a slot");
  EXPECT_EQ(internal_bug_count(), before + 1);
  ASSERT_EQ(capture->count("internal_bug"), 1u) << capture->dump();
  auto line = capture->records("internal_bug").front();
  EXPECT_EQ(line.level, LogLevel::kError);
  EXPECT_EQ(line.field("file"), "x.cpp");
  EXPECT_EQ(line.field("line"), "12");
  EXPECT_EQ(line.field("detail"), "woken without a slot");
  // Without a logger: stderr, and the same Error.
  Error bare = internal::report_bug(BugMode::kReport, "y.cpp", 3, "no logger", nullptr);
  EXPECT_EQ(bare.message(), "internal bug at y.cpp:3: no logger");
  EXPECT_EQ(internal_bug_count(), before + 2);
}

TEST(SimEnvironment, SameSeedSameSequence) {
  SimEnvironment a(42), b(42), c(43);
  for (int i = 0; i < 100; ++i) {
    auto x = a.random_u64();
    EXPECT_EQ(x, b.random_u64());
  }
  EXPECT_NE(a.random_u64(), c.random_u64());
  for (int i = 0; i < 1000; ++i) {
    double d = a.random_double();
    EXPECT_GE(d, 0.0);
    EXPECT_LT(d, 1.0);
  }
}

TEST(SimEnvironment, TimersFireInDeadlineOrderOnlyWhenDue) {
  SimEnvironment env(1);
  std::vector<int> order;
  TimePoint t0 = env.now();
  env.add_timer(t0 + 30ms, [&] { order.push_back(3); });
  env.add_timer(t0 + 10ms, [&] { order.push_back(1); });
  TimerId cancelled = env.add_timer(t0 + 20ms, [&] { order.push_back(2); });
  EXPECT_TRUE(env.cancel_timer(cancelled));
  EXPECT_FALSE(env.cancel_timer(cancelled));
  EXPECT_EQ(env.fire_due_timers(), 0u);
  env.set_now(t0 + 10ms);
  EXPECT_EQ(env.fire_due_timers(), 1u);
  env.set_now(t0 + 60s);
  EXPECT_EQ(env.fire_due_timers(), 1u);
  EXPECT_EQ(order, (std::vector<int>{1, 3}));
  env.set_now(t0);  // never backwards
  EXPECT_EQ(env.now(), t0 + 60s);
}

TEST(SimEnvironment, RefusesThreadsAndBadWatches) {
  SimEnvironment env(1);
  auto t = env.start_thread("x", [] {});
  ASSERT_THAT(t, StatusIs(ErrorKind::kInvalidArgument));
  EXPECT_FALSE(env.watch_fd(-1, kFdReadable, [](unsigned) {}).ok());
  EXPECT_FALSE(env.watch_fd(0, 0, [](unsigned) {}).ok());
}

TEST(SimEnvironment, PollsPipeReadiness) {
  SimEnvironment env(1);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  unsigned seen = 0;
  ASSERT_THAT(env.watch_fd(fds[0], kFdReadable, [&](unsigned bits) { seen = bits; }), IsOk());
  EXPECT_EQ(env.poll_fds(), 0u);
  ASSERT_EQ(write(fds[1], "x", 1), 1);
  EXPECT_EQ(env.poll_fds(), 1u);
  EXPECT_TRUE(seen & kFdReadable);
  EXPECT_EQ(env.pending_watches(), 0u);
  close(fds[0]);
  close(fds[1]);
}

TEST(SimEnvironment, RearmableWatchFiresOncePerArming) {
  SimEnvironment env(1);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  int fired = 0;
  auto id = env.watch_fd_rearmable(fds[0], kFdReadable, [&](unsigned bits) {
    EXPECT_TRUE(bits & kFdReadable);
    ++fired;
  });
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(env.poll_fds(), 0u);
  ASSERT_EQ(write(fds[1], "x", 1), 1);
  EXPECT_EQ(env.poll_fds(), 1u);
  EXPECT_EQ(env.poll_fds(), 0u);  // still readable, but disarmed
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(env.pending_watches(), 1u);  // registered while disarmed
  EXPECT_TRUE(env.rearm_watch(*id, kFdReadable));
  EXPECT_EQ(env.poll_fds(), 1u);
  EXPECT_EQ(fired, 2);
  EXPECT_TRUE(env.cancel_watch(*id));
  EXPECT_FALSE(env.rearm_watch(*id, kFdReadable));
  EXPECT_EQ(env.poll_fds(), 0u);
  // A one-shot watch cannot be re-armed.
  auto once = env.watch_fd(fds[0], kFdReadable, [](unsigned) {});
  ASSERT_THAT(once, IsOk());
  EXPECT_FALSE(env.rearm_watch(*once, kFdReadable));
  EXPECT_FALSE(env.watch_fd_rearmable(-1, kFdReadable, [](unsigned) {}).ok());
  EXPECT_FALSE(env.watch_fd_rearmable(fds[0], 0, [](unsigned) {}).ok());
  close(fds[0]);
  close(fds[1]);
}

TEST(RealEnvironment, RearmableWatchFiresOncePerArming) {
  auto env = make_real_environment({.workers = 1, .seed = 5});
  std::mutex mu;
  std::condition_variable cv;
  int fired = 0;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  auto id = env->watch_fd_rearmable(fds[0], kFdReadable, [&](unsigned bits) {
    EXPECT_TRUE(bits & kFdReadable);
    std::lock_guard l(mu);
    ++fired;
    cv.notify_all();
  });
  ASSERT_THAT(id, IsOk());
  ASSERT_EQ(write(fds[1], "x", 1), 1);
  {
    std::unique_lock l(mu);
    cv.wait(l, [&] { return fired == 1; });
  }
  // The byte is still there (level readiness), yet a disarmed watch stays quiet: a timer
  // 20 ms later finds it fired once.
  bool checked = false;
  env->add_timer(env->now() + 20ms, [&] {
    std::lock_guard l(mu);
    checked = true;
    cv.notify_all();
  });
  {
    std::unique_lock l(mu);
    cv.wait(l, [&] { return checked; });
    EXPECT_EQ(fired, 1);
  }
  EXPECT_TRUE(env->rearm_watch(*id, kFdReadable));
  {
    std::unique_lock l(mu);
    cv.wait(l, [&] { return fired == 2; });
  }
  EXPECT_TRUE(env->cancel_watch(*id));
  EXPECT_FALSE(env->rearm_watch(*id, kFdReadable));
  close(fds[0]);
  close(fds[1]);
}

TEST(RealEnvironment, TimersAndWatchesFire) {
  auto env = make_real_environment({.workers = 2, .seed = 5});
  EXPECT_EQ(env->default_workers(), 2u);
  std::mutex mu;
  std::condition_variable cv;
  int fired = 0;
  env->add_timer(env->now() + 1ms, [&] {
    std::lock_guard l(mu);
    ++fired;
    cv.notify_all();
  });
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ASSERT_THAT(env->watch_fd(fds[0], kFdReadable,
                            [&](unsigned) {
                              std::lock_guard l(mu);
                              ++fired;
                              cv.notify_all();
                            }),
              IsOk());
  ASSERT_EQ(write(fds[1], "x", 1), 1);
  std::unique_lock l(mu);
  cv.wait(l, [&] { return fired == 2; });
  close(fds[0]);
  close(fds[1]);
}

// Regression: the loop computed its wait as deadline - now, which overflows for a deadline
// long past (TimePoint::min()): UB, in practice a wait of centuries, so the timer never fired.
TEST(RealEnvironment, ATimerDueLongAgoFiresAtOnce) {
  auto env = make_real_environment({.workers = 1, .seed = 4});
  std::mutex mu;
  std::condition_variable cv;
  bool fired = false;
  env->add_timer(TimePoint::min(), [&] {
    std::lock_guard l(mu);
    fired = true;
    cv.notify_all();
  });
  std::unique_lock l(mu);
  EXPECT_TRUE(cv.wait_for(l, std::chrono::seconds(10), [&] { return fired; }));
}

// Regression: the loop waits with epoll_pwait2 (Linux 5.11); where the kernel lacks it
// (ENOSYS) or a container's seccomp profile refuses it, the loop spun on the error for ever
// and no timer or watch ever fired. The child makes epoll_pwait2 fail with ENOSYS, then needs
// one timer to fire.
// The netpoller seam (Environment::poll_events): a thread that polls runs the callbacks of
// what is due itself, a waiting poll is interrupted, and with pollers attached but none
// polling the loop thread's monitor still runs timers and asks the pollers back.
thread_local bool tl_polling_thread = false;

TEST(RealEnvironment, APollingThreadRunsTheCallbacksItself) {
  auto env = make_real_environment({.workers = 1, .seed = 9});
  const std::uint64_t id = env->attach_pollers([] {});
  ASSERT_NE(id, 0u);
  tl_polling_thread = true;
  // The monitor could take a turn between add_timer and poll_events only after a stall of
  // its whole period; a few tries make that moot.
  bool here = false;
  for (int attempt = 0; attempt < 5 && !here; ++attempt) {
    std::atomic<int> where{0};
    env->add_timer(env->now(), [&] { where.store(tl_polling_thread ? 1 : 2); });
    for (int i = 0; i < 1000 && where.load() == 0; ++i) env->poll_events(false, {});
    here = where.load() == 1;
    // Not a waiting poll: the monitor may run the timer between the look at `where` and the
    // poll, and a waiting poll with nothing left to wait for would never return.
    while (where.load() == 0) {
      env->poll_events(false, {});
      sched_yield();
    }
  }
  tl_polling_thread = false;
  EXPECT_TRUE(here);
  // may_block says no: the poll does not wait even with nothing due.
  int asked = 0;
  EXPECT_TRUE(env->poll_events(true, [&] {
    ++asked;
    return false;
  }));
  EXPECT_EQ(asked, 1);
  env->detach_pollers(id);
}

TEST(RealEnvironment, InterruptPollEndsAWaitingPoll) {
  auto env = make_real_environment({.workers = 1, .seed = 9});
  const std::uint64_t id = env->attach_pollers([] {});
  std::atomic<bool> done{false};
  auto t = env->start_thread("poller", [&] {
    // No timer, no fd: only an interrupt (or the monitor's turn) ends the wait.
    while (!env->poll_events(true, {})) {
    }
    done.store(true);
  });
  ASSERT_THAT(t, IsOk());
  while (!done.load()) {
    env->interrupt_poll();
    sched_yield();
  }
  (*t)->join();
  env->detach_pollers(id);
}

TEST(RealEnvironment, WithPollersAttachedButIdleTheMonitorRunsTimers) {
  auto env = make_real_environment({.workers = 1, .seed = 9});
  std::atomic<int> unpolled{0};
  const std::uint64_t id = env->attach_pollers([&] { unpolled.fetch_add(1); });
  std::mutex mu;
  std::condition_variable cv;
  int fired = 0;
  auto fire = [&] {
    std::lock_guard l(mu);
    ++fired;
    cv.notify_all();
  };
  // Nobody calls poll_events: the monitor notices and polls (its period: 10 ms to 1 s).
  env->add_timer(env->now() + 1ms, fire);
  {
    std::unique_lock l(mu);
    ASSERT_TRUE(cv.wait_for(l, 30s, [&] { return fired == 1; }));
  }
  // The monitor asks the pollers back right after its turn, so just after the timer ran.
  const TimePoint give_up = env->now() + 30s;
  while (unpolled.load() == 0 && env->now() < give_up) sched_yield();
  EXPECT_GE(unpolled.load(), 1);
  // Detached: the loop thread waits in epoll itself again.
  env->detach_pollers(id);
  const int calls = unpolled.load();
  env->add_timer(env->now() + 1ms, fire);
  {
    std::unique_lock l(mu);
    ASSERT_TRUE(cv.wait_for(l, 30s, [&] { return fired == 2; }));
  }
  EXPECT_EQ(unpolled.load(), calls);
}

TEST(RealEnvironment, TimersFireWhereEpollPwait2IsMissing) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_epoll_pwait2, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog program{.len = static_cast<unsigned short>(sizeof filter / sizeof filter[0]), .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(3);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) _exit(3);
    auto env = make_real_environment({.workers = 1, .seed = 3});
    const int out = fds[1];
    env->add_timer(env->now() + 1ms, [out] { (void)!write(out, "t", 1); });
    pollfd p{.fd = fds[0], .events = POLLIN, .revents = 0};
    _exit(poll(&p, 1, 10'000) == 1 ? 0 : 1);  // no return: the loop may be spinning
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  close(fds[0]);
  close(fds[1]);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  if (WEXITSTATUS(status) == 3) GTEST_SKIP() << "seccomp filters are not available here";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the timer did not fire within 10 s";
}

}  // namespace
}  // namespace nines
