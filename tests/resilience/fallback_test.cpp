#include "nines/resilience/fallback.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;

using Alt = Fallback<std::string>::Alternative;

Alt answer(std::string text) {
  return [text](Context&) -> Task<Result<std::string>> { co_return text; };
}
Alt fail(ErrorKind kind, std::string why) {
  return [kind, why](Context&) -> Task<Result<std::string>> { co_return Error(kind, why); };
}
// Takes `d` of virtual time, then answers.
Alt slow(Duration d, std::string text) {
  return [d, text](Context& ctx) -> Task<Result<std::string>> {
    auto slept = co_await ctx.sleep(d);
    if (!slept.ok()) co_return slept.error();
    co_return text;
  };
}

FallbackOutcome<std::string> run_chain(const Fallback<std::string>& chain, Duration deadline = kInfinite) {
  test::SimRuntime s;
  std::optional<FallbackOutcome<std::string>> out;
  s.spawn([&](Context& ctx) -> Task<> {
    auto scope = ctx.with_timeout(deadline);
    out.emplace(co_await chain.run(ctx));
  });
  s.rt->advance(1h);
  return std::move(*out);
}

TEST(Fallback, PrimaryServesWhenHealthy) {
  Fallback<std::string> chain;
  chain.add("gpt-4o", answer("big")).add("gpt-4o-mini", answer("small"));
  auto out = run_chain(chain);
  EXPECT_EQ(*out.result, "big");
  EXPECT_EQ(out.served_by, "gpt-4o");
  EXPECT_FALSE(out.degraded());
}

TEST(Fallback, RecordsWhyEachAlternativeWasSkipped) {
  Fallback<std::string> chain;
  chain.add("openai", fail(ErrorKind::kCircuitOpen, "breaker open"))
      .add("anthropic", fail(ErrorKind::kRateLimited, "429"))
      .add("local", answer("small model"));
  auto out = run_chain(chain);
  ASSERT_THAT(out.result, IsOk());
  EXPECT_EQ(*out.result, "small model");
  EXPECT_EQ(out.served_by, "local");
  EXPECT_TRUE(out.degraded());
  ASSERT_EQ(out.skipped.size(), 2u);
  EXPECT_EQ(out.skipped[0].alternative, "openai");
  EXPECT_THAT(out.skipped[0].error, StatusIs(ErrorKind::kCircuitOpen));
  EXPECT_EQ(out.skipped[1].alternative, "anthropic");
  EXPECT_EQ(out.skipped[1].error.message(), "429");
}

TEST(Fallback, AllFailingGivesTheLastErrorListingEveryone) {
  Fallback<std::string> chain;
  chain.add("a", fail(ErrorKind::kTransient, "503")).add("b", fail(ErrorKind::kTimeout, "slow"));
  auto out = run_chain(chain);
  ASSERT_THAT(out.result, StatusIs(ErrorKind::kTimeout));
  EXPECT_EQ(out.result.error().message(), "fallback chain failed: [a: transient: 503] [b: timeout: slow]");
  EXPECT_TRUE(out.served_by.empty());
}

TEST(Fallback, DeadlineEndsTheChainAtOnce) {
  Fallback<std::string> chain;
  chain.add("slow primary", slow(10s, "late")).add("fallback", answer("never asked"));
  auto out = run_chain(chain, 2s);
  ASSERT_THAT(out.result, StatusIs(ErrorKind::kDeadlineExceeded));
  ASSERT_EQ(out.skipped.size(), 1u);  // the fallback was not tried: no time left
}

TEST(Fallback, CustomPredicateStopsOnPermanentErrors) {
  Fallback<std::string> chain;
  chain.add("a", fail(ErrorKind::kPermanent, "bad request")).add("b", answer("b"));
  chain.moves_on([](const Error& e) { return e.kind() != ErrorKind::kPermanent; });
  auto out = run_chain(chain);
  ASSERT_THAT(out.result, StatusIs(ErrorKind::kPermanent));
}

TEST(Fallback, EmptyChainIsAnInvalidArgument) {
  Fallback<std::string> chain;
  auto out = run_chain(chain);
  EXPECT_THAT(out.result, StatusIs(ErrorKind::kInvalidArgument));
}

}  // namespace
}  // namespace nines
