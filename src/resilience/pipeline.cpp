#include "nines/resilience/pipeline.hpp"

#include <string>

namespace nines {

Result<Pipeline> Pipeline::Builder::build() const {
  if (parts_.attempt_timeout <= Duration::zero()) {
    return Error(ErrorKind::kInvalidArgument, "Pipeline.attempt_timeout must be > 0 (use kInfinite for none)");
  }
  for (const internal::PipelineLimiter& l : parts_.limiters) {
    if (!l.limiter) return Error(ErrorKind::kInvalidArgument, "Pipeline.rate_limiter is null");
    if (l.units == 0) return Error(ErrorKind::kInvalidArgument, "Pipeline.rate_limiter units must be >= 1");
  }
  return Pipeline(std::make_shared<const internal::PipelineParts>(parts_));
}

namespace internal {

Error attempt_deadline_to_timeout(Error e, TimePoint caller_deadline, TimePoint attempt_deadline, TimePoint now,
                                  Duration attempt_timeout) {
  if (attempt_timeout == kInfinite || now >= caller_deadline || now < attempt_deadline) return e;
  return Error(ErrorKind::kTimeout,
               "attempt timed out after " + std::to_string(to_millis(attempt_timeout)) + " ms (" + e.message() + ")");
}

}  // namespace internal
}  // namespace nines
