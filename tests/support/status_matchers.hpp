// gmock matchers for Result<T>, Status and Error, in the style of Abseil's status matchers:
//
//   ASSERT_THAT(r, IsOk());                                     // r is a Result<T> or a Status
//   EXPECT_THAT(r, StatusIs(ErrorKind::kTimeout));              // an error of that kind
//   EXPECT_THAT(r, StatusIs(ErrorKind::kTimeout, "connect"));   // ... whose message contains "connect"
//   EXPECT_THAT(r, StatusIs(ErrorKind::kTimeout, StartsWith("GET ")));  // ... or matches a matcher
//   EXPECT_THAT(r, IsOkAndHolds(Eq(7)));                        // ok, and the value matches
//
// StatusIs also takes an Error. Unlike Abseil's StatusIs, a plain string is a substring of the
// message, not the whole message (pass Eq("...") for that). A failure prints the error's
// to_string(), so the test output says what went wrong.
#pragma once

#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "nines/core/result.hpp"

namespace nines {

// gtest prints values with these (found by argument-dependent lookup).
inline void PrintTo(const Error& e, std::ostream* os) { *os << "error(" << e.to_string() << ")"; }
template <class T>
void PrintTo(const Result<T>& r, std::ostream* os) {
  if (!r.ok()) {
    PrintTo(r.error(), os);
  } else if constexpr (std::is_void_v<T>) {
    *os << "ok";
  } else {
    *os << "ok(" << ::testing::PrintToString(*r) << ")";
  }
}

namespace test {
namespace internal {

// The error a matched value carries, or null when it is ok.
inline const Error* error_of(const Error& e) { return &e; }
template <class T>
const Error* error_of(const Result<T>& r) {
  return r.ok() ? nullptr : &r.error();
}

class IsOkMatcher {
 public:
  template <class T>
  bool MatchAndExplain(const Result<T>& r, ::testing::MatchResultListener* listener) const {
    if (r.ok()) return true;
    *listener << "which is the error \"" << r.error().to_string() << "\"";
    return false;
  }
  void DescribeTo(std::ostream* os) const { *os << "is ok"; }
  void DescribeNegationTo(std::ostream* os) const { *os << "is an error"; }
};

class StatusIsMatcher {
 public:
  StatusIsMatcher(ErrorKind kind, std::optional<::testing::Matcher<const std::string&>> message)
      : kind_(kind), message_(std::move(message)) {}

  template <class V>
  bool MatchAndExplain(const V& v, ::testing::MatchResultListener* listener) const {
    const Error* e = error_of(v);
    if (e == nullptr) {
      *listener << "which is ok";
      return false;
    }
    if (e->kind() != kind_) {
      *listener << "which is the error \"" << e->to_string() << "\", of kind " << to_string(e->kind());
      return false;
    }
    if (!message_) return true;
    ::testing::StringMatchResultListener inner;
    if (message_->MatchAndExplain(e->message(), &inner)) return true;
    *listener << "which is the error \"" << e->to_string() << "\", whose message does not match";
    if (!inner.str().empty()) *listener << " (" << inner.str() << ")";
    return false;
  }
  void DescribeTo(std::ostream* os) const {
    *os << "is an error of kind " << to_string(kind_);
    if (message_) {
      *os << " whose message ";
      message_->DescribeTo(os);
    }
  }
  void DescribeNegationTo(std::ostream* os) const {
    *os << "is not an error of kind " << to_string(kind_);
    if (message_) {
      *os << " whose message ";
      message_->DescribeTo(os);
    }
  }

 private:
  ErrorKind kind_;
  std::optional<::testing::Matcher<const std::string&>> message_;
};

template <class R, class T>
class IsOkAndHoldsImpl : public ::testing::MatcherInterface<R> {
 public:
  explicit IsOkAndHoldsImpl(::testing::Matcher<const T&> inner) : inner_(std::move(inner)) {}

  bool MatchAndExplain(R r, ::testing::MatchResultListener* listener) const override {
    if (!r.ok()) {
      *listener << "which is the error \"" << r.error().to_string() << "\"";
      return false;
    }
    ::testing::StringMatchResultListener inner;
    const bool matched = inner_.MatchAndExplain(*r, &inner);
    *listener << "which is ok(" << ::testing::PrintToString(*r) << ")";
    if (!inner.str().empty()) *listener << ", " << inner.str();
    return matched;
  }
  void DescribeTo(std::ostream* os) const override {
    *os << "is ok and has a value that ";
    inner_.DescribeTo(os);
  }
  void DescribeNegationTo(std::ostream* os) const override {
    *os << "is an error or has a value that ";
    inner_.DescribeNegationTo(os);
  }

 private:
  ::testing::Matcher<const T&> inner_;
};

template <class InnerMatcher>
class IsOkAndHoldsMatcher {
 public:
  explicit IsOkAndHoldsMatcher(InnerMatcher inner) : inner_(std::move(inner)) {}

  template <class R>
  operator ::testing::Matcher<R>() const {  // NOLINT: converts to the matched type's matcher
    using T = typename std::decay_t<R>::value_type;
    return ::testing::Matcher<R>(
        new IsOkAndHoldsImpl<const std::decay_t<R>&, T>(::testing::SafeMatcherCast<const T&>(inner_)));
  }

 private:
  InnerMatcher inner_;
};

}  // namespace internal

// The Result<T> or Status is ok.
inline ::testing::PolymorphicMatcher<internal::IsOkMatcher> IsOk() {
  return ::testing::MakePolymorphicMatcher(internal::IsOkMatcher());
}

// The Result<T>, Status or Error is an error of `kind`.
inline ::testing::PolymorphicMatcher<internal::StatusIsMatcher> StatusIs(ErrorKind kind) {
  return ::testing::MakePolymorphicMatcher(internal::StatusIsMatcher(kind, std::nullopt));
}

// ... and its message contains `message` (a string) or matches it (a matcher of std::string).
template <class MessageMatcher>
::testing::PolymorphicMatcher<internal::StatusIsMatcher> StatusIs(ErrorKind kind, MessageMatcher&& message) {
  if constexpr (std::is_convertible_v<MessageMatcher, std::string_view>) {
    return ::testing::MakePolymorphicMatcher(internal::StatusIsMatcher(
        kind, ::testing::Matcher<const std::string&>(
                  ::testing::HasSubstr(std::string(std::string_view(std::forward<MessageMatcher>(message)))))));
  } else {
    return ::testing::MakePolymorphicMatcher(internal::StatusIsMatcher(
        kind, ::testing::SafeMatcherCast<const std::string&>(std::forward<MessageMatcher>(message))));
  }
}

// The Result<T> is ok and its value matches `inner` (a matcher, or a value to compare with).
template <class InnerMatcher>
internal::IsOkAndHoldsMatcher<std::decay_t<InnerMatcher>> IsOkAndHolds(InnerMatcher&& inner) {
  return internal::IsOkAndHoldsMatcher<std::decay_t<InnerMatcher>>(std::forward<InnerMatcher>(inner));
}

}  // namespace test
}  // namespace nines
