// nines/core/result.hpp: errors as values.
//
// Every failure a caller may handle is a Result<T> carrying an Error with a kind that
// policies act on (retry decides from the kind, a breaker counts by kind, ...). Exceptions
// are for bugs: they are caught at the process boundary, where they crash that process only.
//
// Thread-safety: Error and Result are values; distinct objects may be used from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "nines/core/time.hpp"

namespace nines {

// The kinds a caller reacts to differently. A new kind is added only when some caller must
// react to it differently from the existing ones.
enum class ErrorKind : std::uint8_t {
  kTransient,         // may succeed if tried again (5xx, connection reset)
  kRateLimited,       // told to slow down (429); may carry an earliest retry time
  kTimeout,           // an attempt or a call did not finish in its time
  kPermanent,         // retrying cannot help (400, 401, bad input to an external system)
  kCancelled,         // the caller gave up or the process was stopped
  kBudgetExceeded,    // a retry, cost or token budget is spent
  kCircuitOpen,       // a circuit breaker refused the call
  kBulkheadFull,      // no concurrency slot was free
  kDeadlineExceeded,  // an overall deadline passed
  kNoProc,            // the target process does not exist (or exited)
  kMailboxFull,       // the target's mailbox is full and its policy is reject
  kInvalidArgument,   // the caller passed something malformed; says what and where
  kAlreadyExists,     // a name or id is taken
  kNotFound,          // a named thing does not exist
  kStartFailed,       // a process or child could not be started
  kInternal,          // a bug or an invariant broken at run time (log-and-count tier)
  kContextOverflow,   // a model's context window cannot hold the prompt (plus the reserved
                      // output): not retryable as is; the caller compacts the prompt or
                      // falls back to a model with a larger window
  // New kinds go last: the numbering of earlier kinds never changes.
};

std::string_view to_string(ErrorKind kind);

class Error {
 public:
  Error(ErrorKind kind, std::string message) : kind_(kind), message_(std::move(message)) {}

  ErrorKind kind() const { return kind_; }
  const std::string& message() const { return message_; }

  // Prepends context ("starting child 'db': <message>"), keeping the kind.
  Error with_context(std::string_view context) const&;
  Error with_context(std::string_view context) &&;

  // rate_limited: the earliest time (environment clock) at which a retry may succeed, when
  // the other side said so (Retry-After). Retry policies never retry earlier.
  const std::optional<TimePoint>& retry_at() const { return retry_at_; }
  Error with_retry_at(TimePoint t) && {
    retry_at_ = t;
    return std::move(*this);
  }

  // "<kind>: <message>", e.g. "noproc: process <0.42> does not exist".
  std::string to_string() const;

  friend bool operator==(const Error&, const Error&) = default;

 private:
  ErrorKind kind_;
  std::string message_;
  std::optional<TimePoint> retry_at_;
};

template <class T>
class [[nodiscard]] Result {
 public:
  using value_type = T;

  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  // Precondition: ok(). Checked: a violation throws (a bug, crashing the calling process).
  T& value() & {
    check_ok();
    return std::get<0>(v_);
  }
  const T& value() const& {
    check_ok();
    return std::get<0>(v_);
  }
  T&& value() && {
    check_ok();
    return std::get<0>(std::move(v_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  // Precondition: !ok(). Checked as value() is.
  const Error& error() const& {
    check_error();
    return std::get<1>(v_);
  }
  Error&& error() && {
    check_error();
    return std::get<1>(std::move(v_));
  }

  template <class U>
  T value_or(U&& fallback) const& {
    return ok() ? std::get<0>(v_) : static_cast<T>(std::forward<U>(fallback));
  }

 private:
  void check_ok() const;
  void check_error() const;
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  using value_type = void;
  Result() = default;
  Result(Error error) : error_(std::move(error)), has_error_(true) {}  // NOLINT

  bool ok() const { return !has_error_; }
  explicit operator bool() const { return ok(); }
  // Precondition: !ok(). Checked: a violation throws (a bug, crashing the calling process).
  const Error& error() const& {
    check_error();
    return error_;
  }
  Error&& error() && {
    check_error();
    return std::move(error_);
  }

 private:
  void check_error() const;
  Error error_{ErrorKind::kInternal, {}};
  bool has_error_ = false;
};

using Status = Result<void>;

inline Status ok_status() { return {}; }

namespace internal {
[[noreturn]] void throw_bad_result_access(const Error& error);
[[noreturn]] void throw_bad_error_access();
}  // namespace internal

template <class T>
void Result<T>::check_ok() const {
  if (!ok()) [[unlikely]]
    internal::throw_bad_result_access(std::get<1>(v_));
}

template <class T>
void Result<T>::check_error() const {
  if (ok()) [[unlikely]]
    internal::throw_bad_error_access();
}

inline void Result<void>::check_error() const {
  if (ok()) [[unlikely]]
    internal::throw_bad_error_access();
}

// Errors cross process boundaries and land in the store, so they serialize: a versioned
// text form carrying the kind (by name), the retry time and the message. decode_error gives
// back an equal Error, or nullopt if the bytes are not an encoded error.
std::string encode_error(const Error& error);
std::optional<Error> decode_error(std::string_view bytes);
// The kind named `name` (as to_string(ErrorKind) spells it), if any.
std::optional<ErrorKind> error_kind_from_string(std::string_view name);

}  // namespace nines
