// nines/resilience/classify.hpp: how policies read a failure.
//
// Every failure carries an ErrorKind (core/result.hpp). Policies act on the kind: retry never
// retries kPermanent, a rate_limited failure waits at least until Error::retry_at(), a breaker
// counts only the kinds it is told to. Callers whose errors need another reading plug in a
// Classifier: it may return a different kind for an error (for example kPermanent for a 429
// "insufficient_quota").
#pragma once

#include <functional>

#include "nines/core/result.hpp"

namespace nines {

using Classifier = std::function<ErrorKind(const Error&)>;

// The kind the error carries.
inline ErrorKind classify_default(const Error& e) { return e.kind(); }

// Whether a failure of this kind may succeed if tried again.
inline bool is_retryable(ErrorKind k) {
  switch (k) {
    case ErrorKind::kTransient:
    case ErrorKind::kRateLimited:
    case ErrorKind::kTimeout:
    case ErrorKind::kMailboxFull: return true;
    default: return false;
  }
}

}  // namespace nines
