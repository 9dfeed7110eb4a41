#include <cstdio>
#include <string>

#include "nines/core/check.hpp"
#include "nines/core/result.hpp"

namespace nines {

std::string_view to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kTransient: return "transient";
    case ErrorKind::kRateLimited: return "rate_limited";
    case ErrorKind::kTimeout: return "timeout";
    case ErrorKind::kPermanent: return "permanent";
    case ErrorKind::kCancelled: return "cancelled";
    case ErrorKind::kBudgetExceeded: return "budget_exceeded";
    case ErrorKind::kCircuitOpen: return "circuit_open";
    case ErrorKind::kBulkheadFull: return "bulkhead_full";
    case ErrorKind::kDeadlineExceeded: return "deadline_exceeded";
    case ErrorKind::kNoProc: return "noproc";
    case ErrorKind::kMailboxFull: return "mailbox_full";
    case ErrorKind::kInvalidArgument: return "invalid_argument";
    case ErrorKind::kAlreadyExists: return "already_exists";
    case ErrorKind::kNotFound: return "not_found";
    case ErrorKind::kStartFailed: return "start_failed";
    case ErrorKind::kInternal: return "internal";
  }
  return "unknown";
}

Error Error::with_context(std::string_view context) const& {
  Error copy = *this;
  return std::move(copy).with_context(context);
}

Error Error::with_context(std::string_view context) && {
  std::string m;
  m.reserve(context.size() + 2 + message_.size());
  m.append(context).append(": ").append(message_);
  message_ = std::move(m);
  return std::move(*this);
}

std::string Error::to_string() const {
  std::string s(nines::to_string(kind_));
  s.append(": ").append(message_);
  return s;
}

namespace internal {

void throw_bad_result_access(const Error& error) {
  throw CheckFailure("value() of a failed Result: " + error.to_string());
}

void check_failed(const char* expr, const char* file, int line, const std::string& detail) {
  std::string what = std::string("check failed: ") + expr + " at " + file + ":" + std::to_string(line);
  if (!detail.empty()) what += " (" + detail + ")";
  throw CheckFailure(what);
}

}  // namespace internal
}  // namespace nines
