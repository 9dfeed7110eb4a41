// nines/core/check.hpp: the tiers of assertions (docs/architecture.md, "Assertions").
//
//  NINES_DCHECK(cond)  debug builds only (!NDEBUG): provable invariants, also in hot paths.
//                      In release it is compiled but not evaluated: the condition must
//                      have no side effect.
//  NINES_CHECK(cond)   always on: a state that means memory or logic is corrupt, where going
//                      on would spread the damage. It throws CheckFailure; inside a process
//                      this crashes that process only (its supervisor takes over); outside a
//                      process it terminates as any uncaught exception does.
//  NINES_BUG(detail)   an expression of type Error: a path that cannot happen, but where a
//                      caller can be handed an error and the program may go on. In debug and
//                      sanitizer builds it fails as NINES_CHECK does (throws CheckFailure), so
//                      tests find the bug; in release it counts (internal_bug_count()), logs
//                      one error line (event "internal_bug" with file, line and detail) and
//                      yields Error(kInternal, "internal bug at <file>:<line>: <detail>"):
//                        if (impossible) return NINES_BUG("woken without a slot");
//                      NINES_BUG_LOG(logger, detail) logs through a Logger (env.logger());
//                      NINES_BUG without one writes to stderr, rate-limited.
//  Messy-world conditions are never asserted: they are Error values.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace nines {

class Error;
class Logger;

class CheckFailure : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// What NINES_BUG does: kFail throws CheckFailure (debug and sanitizer builds), kReport
// counts, logs and yields the Error (release).
enum class BugMode : std::uint8_t { kFail, kReport };

// How many NINES_BUGs this process has met (both modes count), for a service to export as a
// metric. Thread-safe.
std::uint64_t internal_bug_count();

namespace internal {
[[noreturn]] void check_failed(const char* expr, const char* file, int line, const std::string& detail);

// The body of NINES_BUG: counts, then throws CheckFailure (kFail) or logs (through `logger`
// if not null, else rate-limited to stderr) and returns Error(kInternal, ...) (kReport).
Error report_bug(BugMode mode, const char* file, int line, std::string_view detail, Logger* logger);
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
// Not evaluated, but still compiled: a variable read only by DCHECKs stays "used", and a
// DCHECK that stops compiling is noticed in debug and release alike.
#define NINES_DCHECK(cond) \
  do {                     \
    (void)sizeof(!(cond)); \
  } while (0)
#else
#define NINES_DCHECK(cond) NINES_CHECK(cond)
#endif

// NINES_BUG fails loudly wherever a test or a sanitizer run may meet it: without NDEBUG, or
// under ASan/TSan (GCC's __SANITIZE_*__, Clang's __has_feature), whatever the optimisation.
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NINES_INTERNAL_SANITIZED 1
#endif
#endif
#if !defined(NDEBUG) || defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || \
    defined(NINES_INTERNAL_SANITIZED)
#define NINES_BUG_MODE ::nines::BugMode::kFail
#else
#define NINES_BUG_MODE ::nines::BugMode::kReport
#endif

#define NINES_BUG(detail) ::nines::internal::report_bug(NINES_BUG_MODE, __FILE__, __LINE__, (detail), nullptr)
#define NINES_BUG_LOG(logger, detail) \
  ::nines::internal::report_bug(NINES_BUG_MODE, __FILE__, __LINE__, (detail), &(logger))
