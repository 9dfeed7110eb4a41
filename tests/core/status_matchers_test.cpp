// The test matchers themselves (tests/support/status_matchers.hpp): what they match, and what a
// failure says.
#include "support/status_matchers.hpp"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include "nines/core/result.hpp"

namespace nines {
namespace {

using ::nines::test::IsOk;
using ::nines::test::IsOkAndHolds;
using ::nines::test::StatusIs;
using ::testing::Eq;
using ::testing::Gt;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// What `matcher` says about `value` when it does not match (the "Actual: ..., <this>" part).
template <class V, class M>
std::string explain(const V& value, const M& matcher) {
  ::testing::Matcher<const V&> m = matcher;
  ::testing::StringMatchResultListener listener;
  EXPECT_FALSE(m.MatchAndExplain(value, &listener));
  return listener.str();
}

template <class V, class M>
std::string describe(const M& matcher) {
  ::testing::Matcher<const V&> m = matcher;
  return ::testing::DescribeMatcher<const V&>(m);
}

Result<int> timeout() { return Error(ErrorKind::kTimeout, "connect timeout (200 ms)"); }

TEST(StatusMatchers, IsOkMatchesOkResultsAndStatuses) {
  EXPECT_THAT(Result<int>(7), IsOk());
  EXPECT_THAT(ok_status(), IsOk());
  EXPECT_THAT(timeout(), Not(IsOk()));
  EXPECT_THAT(Status(Error(ErrorKind::kCancelled, "stopped")), Not(IsOk()));
}

TEST(StatusMatchers, IsOkExplainsWithTheError) {
  EXPECT_EQ(explain(timeout(), IsOk()), "which is the error \"timeout: connect timeout (200 ms)\"");
  EXPECT_EQ(explain(Status(Error(ErrorKind::kCancelled, "stopped")), IsOk()),
            "which is the error \"cancelled: stopped\"");
  EXPECT_EQ(describe<Status>(IsOk()), "is ok");
  EXPECT_EQ(describe<Status>(Not(IsOk())), "is an error");
}

TEST(StatusMatchers, StatusIsMatchesTheKind) {
  EXPECT_THAT(timeout(), StatusIs(ErrorKind::kTimeout));
  EXPECT_THAT(timeout(), Not(StatusIs(ErrorKind::kTransient)));
  EXPECT_THAT(Result<int>(7), Not(StatusIs(ErrorKind::kTimeout)));
  EXPECT_THAT(Status(Error(ErrorKind::kNotFound, "x")), StatusIs(ErrorKind::kNotFound));
  EXPECT_THAT(Error(ErrorKind::kNotFound, "x"), StatusIs(ErrorKind::kNotFound));
  EXPECT_THAT(Error(ErrorKind::kNotFound, "x"), Not(StatusIs(ErrorKind::kInternal)));
}

TEST(StatusMatchers, StatusIsWithAStringMatchesASubstringOfTheMessage) {
  EXPECT_THAT(timeout(), StatusIs(ErrorKind::kTimeout, "connect timeout"));
  EXPECT_THAT(timeout(), StatusIs(ErrorKind::kTimeout, std::string("200 ms")));
  EXPECT_THAT(timeout(), Not(StatusIs(ErrorKind::kTimeout, "read timeout")));
  // The kind still has to match.
  EXPECT_THAT(timeout(), Not(StatusIs(ErrorKind::kTransient, "connect timeout")));
}

TEST(StatusMatchers, StatusIsWithAMatcherMatchesTheMessage) {
  EXPECT_THAT(timeout(), StatusIs(ErrorKind::kTimeout, StartsWith("connect")));
  EXPECT_THAT(timeout(), StatusIs(ErrorKind::kTimeout, Eq("connect timeout (200 ms)")));
  EXPECT_THAT(timeout(), Not(StatusIs(ErrorKind::kTimeout, Eq("connect timeout"))));
  EXPECT_THAT(timeout(), StatusIs(ErrorKind::kTimeout, Not(HasSubstr("read"))));
}

TEST(StatusMatchers, StatusIsExplainsWhatDiffers) {
  EXPECT_EQ(explain(Result<int>(7), StatusIs(ErrorKind::kTimeout)), "which is ok");
  EXPECT_EQ(explain(timeout(), StatusIs(ErrorKind::kTransient)),
            "which is the error \"timeout: connect timeout (200 ms)\", of kind timeout");
  EXPECT_EQ(explain(timeout(), StatusIs(ErrorKind::kTimeout, "read")),
            "which is the error \"timeout: connect timeout (200 ms)\", whose message does not match");
  EXPECT_EQ(describe<Result<int>>(StatusIs(ErrorKind::kTimeout)), "is an error of kind timeout");
  EXPECT_EQ(describe<Result<int>>(StatusIs(ErrorKind::kTimeout, "read")),
            "is an error of kind timeout whose message has substring \"read\"");
  EXPECT_EQ(describe<Error>(Not(StatusIs(ErrorKind::kTimeout))), "is not an error of kind timeout");
}

TEST(StatusMatchers, IsOkAndHoldsMatchesTheValue) {
  EXPECT_THAT(Result<int>(7), IsOkAndHolds(7));
  EXPECT_THAT(Result<int>(7), IsOkAndHolds(Gt(5)));
  EXPECT_THAT(Result<std::string>("hello world"), IsOkAndHolds(HasSubstr("world")));
  EXPECT_THAT(Result<int>(7), Not(IsOkAndHolds(8)));
  EXPECT_THAT(timeout(), Not(IsOkAndHolds(Gt(0))));
}

TEST(StatusMatchers, IsOkAndHoldsExplainsWithTheErrorOrTheValue) {
  EXPECT_EQ(explain(timeout(), IsOkAndHolds(7)), "which is the error \"timeout: connect timeout (200 ms)\"");
  EXPECT_EQ(explain(Result<int>(7), IsOkAndHolds(8)), "which is ok(7)");
  EXPECT_EQ(describe<Result<int>>(IsOkAndHolds(8)), "is ok and has a value that is equal to 8");
}

TEST(StatusMatchers, ResultsAndErrorsPrintThemselves) {
  EXPECT_EQ(::testing::PrintToString(timeout()), "error(timeout: connect timeout (200 ms))");
  EXPECT_EQ(::testing::PrintToString(Result<int>(7)), "ok(7)");
  EXPECT_EQ(::testing::PrintToString(ok_status()), "ok");
  EXPECT_EQ(::testing::PrintToString(Error(ErrorKind::kNotFound, "no such key")), "error(not_found: no such key)");
}

// A failing assertion names the error in its message.
TEST(StatusMatchers, AFailingAssertionShowsTheError) {
  EXPECT_NONFATAL_FAILURE(EXPECT_THAT(timeout(), IsOk()), "timeout: connect timeout (200 ms)");
  EXPECT_NONFATAL_FAILURE(EXPECT_THAT(timeout(), StatusIs(ErrorKind::kCancelled)), "of kind timeout");
}

}  // namespace
}  // namespace nines
