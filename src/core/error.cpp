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
    case ErrorKind::kContextOverflow: return "context_overflow";
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

void throw_bad_error_access() { throw CheckFailure("error() of a successful Result"); }

}  // namespace internal
std::optional<ErrorKind> error_kind_from_string(std::string_view name) {
  for (int k = 0; k <= static_cast<int>(ErrorKind::kContextOverflow); ++k) {
    if (to_string(static_cast<ErrorKind>(k)) == name) return static_cast<ErrorKind>(k);
  }
  return std::nullopt;
}

namespace {
constexpr std::string_view kErrorMagic = "nines-error/1\n";
}  // namespace

// nines-error/1 \n <kind> \n <retry_at ns, or empty> \n <message>
std::string encode_error(const Error& error) {
  std::string out(kErrorMagic);
  out += to_string(error.kind());
  out += '\n';
  if (error.retry_at()) out += std::to_string(error.retry_at()->time_since_epoch().count());
  out += '\n';
  out += error.message();
  return out;
}

std::optional<Error> decode_error(std::string_view bytes) {
  if (bytes.substr(0, kErrorMagic.size()) != kErrorMagic) return std::nullopt;
  std::string_view rest = bytes.substr(kErrorMagic.size());
  std::size_t nl = rest.find('\n');
  if (nl == std::string_view::npos) return std::nullopt;
  std::optional<ErrorKind> kind = error_kind_from_string(rest.substr(0, nl));
  if (!kind) return std::nullopt;
  rest = rest.substr(nl + 1);
  nl = rest.find('\n');
  if (nl == std::string_view::npos) return std::nullopt;
  std::string_view retry = rest.substr(0, nl);
  Error e(*kind, std::string(rest.substr(nl + 1)));
  if (!retry.empty()) {
    const bool negative = retry[0] == '-';
    std::string_view digits = retry.substr(negative ? 1 : 0);
    if (digits.empty() || digits.size() > 18) return std::nullopt;
    std::int64_t ns = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return std::nullopt;
      ns = ns * 10 + (c - '0');
    }
    e = std::move(e).with_retry_at(TimePoint(Duration(negative ? -ns : ns)));
  }
  return e;
}

}  // namespace nines
