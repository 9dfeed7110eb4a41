// nines/core/check.hpp: the three tiers of assertions.
//
//  NINES_DCHECK(cond)  debug builds only: provable invariants.
//  NINES_CHECK(cond)   always on: a state that means memory or logic is corrupt. It throws
//                      CheckFailure; inside a process this crashes that process only (its
//                      supervisor takes over); outside a process it terminates as any
//                      uncaught exception does.
//  Messy-world conditions are never asserted: they are Error values.
#pragma once

#include <stdexcept>
#include <string>

namespace nines {

class CheckFailure : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

namespace internal {
[[noreturn]] void check_failed(const char* expr, const char* file, int line, const std::string& detail);
}  // namespace internal

}  // namespace nines

#define NINES_CHECK(cond)                                                        \
  do {                                                                           \
    if (!(cond)) [[unlikely]]                                                    \
      ::nines::internal::check_failed(#cond, __FILE__, __LINE__, std::string()); \
  } while (0)

#define NINES_CHECK_MSG(cond, msg)                                       \
  do {                                                                   \
    if (!(cond)) [[unlikely]]                                            \
      ::nines::internal::check_failed(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)

#ifdef NDEBUG
#define NINES_DCHECK(cond) \
  do {                     \
  } while (0)
#else
#define NINES_DCHECK(cond) NINES_CHECK(cond)
#endif
