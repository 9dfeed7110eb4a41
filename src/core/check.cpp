// The bodies of NINES_CHECK and NINES_BUG (nines/core/check.hpp).
#include "nines/core/check.hpp"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <string>

#include "nines/core/log.hpp"
#include "nines/core/result.hpp"

namespace nines {

namespace {

std::atomic<std::uint64_t> g_internal_bugs{0};

// Without a logger, NINES_BUG writes to stderr: the first kFirst lines, then only the lines whose
// number is a power of two (a bug met in a loop must not flood the log, yet keeps showing up as it
// grows); dropped lines are counted and named by the next line written. Pacing by count, not by
// time, keeps this file off the clock (the Environment seam) and makes it deterministic.
class StderrPacer {
 public:
  // True if a line may be written now; *dropped gets the lines dropped since the last one.
  bool admit(std::uint64_t* dropped) {
    std::lock_guard<std::mutex> lock(mu_);
    std::uint64_t n = ++seen_;
    bool write = n <= kFirst || (n & (n - 1)) == 0;
    if (!write) {
      ++dropped_;
      return false;
    }
    *dropped = dropped_;
    dropped_ = 0;
    return true;
  }

 private:
  static constexpr std::uint64_t kFirst = 10;
  std::mutex mu_;
  std::uint64_t seen_ = 0;
  std::uint64_t dropped_ = 0;
};

StderrPacer& stderr_pacer() {
  static StderrPacer pacer;
  return pacer;
}

}  // namespace

std::uint64_t internal_bug_count() { return g_internal_bugs.load(std::memory_order_relaxed); }

namespace internal {

void check_failed(const char* expr, const char* file, int line, const std::string& detail) {
  std::string what = std::string("check failed: ") + expr + " at " + file + ":" + std::to_string(line);
  if (!detail.empty()) what += " (" + detail + ")";
  throw CheckFailure(what);
}

Error report_bug(BugMode mode, const char* file, int line, std::string_view detail, Logger* logger) {
  std::uint64_t n = g_internal_bugs.fetch_add(1, std::memory_order_relaxed) + 1;
  if (mode == BugMode::kFail) check_failed("NINES_BUG", file, line, std::string(detail));
  if (logger != nullptr) {
    NINES_LOG(*logger, LogLevel::kError, "internal_bug", "a path that cannot happen did (a bug in nines)",
              {"file", file}, {"line", line}, {"detail", detail}, {"count", n});
  } else if (std::uint64_t dropped = 0; stderr_pacer().admit(&dropped)) {
    std::string d(detail);
    std::fprintf(stderr, "nines: internal_bug at %s:%d: %s (bug %llu; %llu such lines suppressed)\n", file, line,
                 d.c_str(), static_cast<unsigned long long>(n), static_cast<unsigned long long>(dropped));
  }
  return Error(ErrorKind::kInternal,
               "internal bug at " + std::string(file) + ":" + std::to_string(line) + ": " + std::string(detail));
}

}  // namespace internal

}  // namespace nines
