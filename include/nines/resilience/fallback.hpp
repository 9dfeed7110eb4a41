// nines/resilience/fallback.hpp: an ordered chain of alternatives (a primary, then
// fallbacks: another provider, a smaller model, a cached answer) that records why each one
// was skipped.
//
//   Fallback<std::string> answer;
//   answer.add("primary", [&](Context& ctx) { return primary_pipeline.run<std::string>(ctx, ask_primary); })
//         .add("small model", [&](Context& ctx) { return ask_small(ctx); })
//         .add("cached", [&](Context&) -> Task<Result<std::string>> { co_return cache.last_answer(); });
//   // in a process:
//   FallbackOutcome<std::string> out = co_await answer.run(ctx);
//   // out.result, out.served_by ("small model"), out.skipped (why "primary" was passed over),
//   // out.degraded()
//
// run() tries the alternatives in order inside the calling process and returns the first
// success, which alternative served it and, for each alternative before it, the error that
// made the chain move on. A failure the `moves_on` predicate rejects (default: everything but
// kCancelled and kDeadlineExceeded, after which no alternative has time left) ends the chain
// at once. When every alternative fails, the result is the last error, its message listing
// what each alternative said.
//
// A Fallback is immutable once built and may be shared by processes (run() is const).
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "nines/core/result.hpp"
#include "nines/runtime/process.hpp"

namespace nines {

struct FallbackSkip {
  std::string alternative;
  Error error;
};

template <class T>
struct FallbackOutcome {
  Result<T> result;
  std::string served_by;              // empty when nothing succeeded
  std::vector<FallbackSkip> skipped;  // in order: why each earlier alternative was passed over
  bool degraded() const { return result.ok() && !skipped.empty(); }
};

inline bool fallback_moves_on_by_default(const Error& e) {
  return e.kind() != ErrorKind::kCancelled && e.kind() != ErrorKind::kDeadlineExceeded;
}

template <class T>
class Fallback {
 public:
  using Alternative = std::function<Task<Result<T>>(Context&)>;

  Fallback& add(std::string name, Alternative fn) {
    alternatives_.push_back({std::move(name), std::move(fn)});
    return *this;
  }
  Fallback& moves_on(std::function<bool(const Error&)> pred) {
    moves_on_ = std::move(pred);
    return *this;
  }
  std::size_t size() const { return alternatives_.size(); }

  Task<FallbackOutcome<T>> run(Context& ctx) const {
    FallbackOutcome<T> out{Error(ErrorKind::kInvalidArgument, "fallback chain has no alternatives"), {}, {}};
    for (const auto& alt : alternatives_) {
      Result<T> r = co_await alt.fn(ctx);
      if (r.ok()) {
        out.result = std::move(r);
        out.served_by = alt.name;
        co_return out;
      }
      FallbackSkip skip{alt.name, r.error()};
      out.skipped.push_back(std::move(skip));
      if (!moves_on_(r.error())) break;
    }
    if (!out.skipped.empty()) out.result = exhausted_error(out.skipped);
    co_return out;
  }

 private:
  struct Named {
    std::string name;
    Alternative fn;
  };

  static Error exhausted_error(const std::vector<FallbackSkip>& skipped) {
    std::string m = "fallback chain failed:";
    for (const auto& s : skipped) m += " [" + s.alternative + ": " + s.error.to_string() + "]";
    return Error(skipped.back().error.kind(), std::move(m));
  }

  std::vector<Named> alternatives_;
  std::function<bool(const Error&)> moves_on_ = fallback_moves_on_by_default;
};

}  // namespace nines
