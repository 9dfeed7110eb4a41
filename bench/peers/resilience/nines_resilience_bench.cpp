// nines side of bench/peers/resilience: the cost of a full resilience pipeline (retry,
// circuit breaker, bulkhead, rate limiter, attempt timeout) around a call that does nothing.
//
//   nines_resilience_bench N
//   pipeline_1thread   one process on a one-worker runtime makes N sequential calls through
//                      the pipeline: ns_per_call = elapsed / N.
//   pipeline_2threads  two processes on a two-worker runtime make N calls each through ONE
//                      shared pipeline (shared breaker, bulkhead, limiter, retry counters):
//                      calls_per_s = 2N / elapsed.
// Policies as in the cockatiel peer: retry (3 attempts, exponential backoff), breaker (opens
// after 5 consecutive failures, half-open after 10 s), bulkhead (1,000 concurrent, 1,000
// queued), attempt timeout 1 s, and a token-bucket rate limiter sized never to bind.
// Prints one JSON line per metric: {"bench","system":"nines","metric","value","unit"}.
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "nines/resilience/pipeline.hpp"
#include "nines/runtime/runtime.hpp"
#include "peers/bench_json.hpp"

using namespace nines;

namespace {

using nines::bench::emit;

template <class T>
T must(Result<T> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "nines_resilience_bench: %s: %s\n", what, r.error().to_string().c_str());
    std::exit(1);
  }
  return std::move(*r);
}

Pipeline make_pipeline(Environment& env) {
  auto retry = must(RetryPolicy::create({.max_attempts = 3, .backoff = Backoff::exponential(100ms, 10s)}), "retry");
  CircuitBreakerOptions bo;
  bo.consecutive_failures = 5;
  bo.failure_rate_threshold = std::nullopt;
  bo.open_duration = 10s;
  auto breaker = must(CircuitBreaker::create("bench", env, bo), "breaker");
  auto bulkhead = must(Bulkhead::create("bench", env, {.max_concurrent = 1000, .max_queue = 1000}), "bulkhead");
  constexpr std::uint64_t kHuge = std::uint64_t{1} << 40;
  auto limiter = must(
      RateLimiter::create("bench", env, {.capacity = kHuge, .refill_units = kHuge, .refill_period = 1ms}), "limiter");
  return must(Pipeline::Builder()
                  .retry(retry)
                  .circuit_breaker(breaker)
                  .bulkhead(bulkhead)
                  .rate_limiter(limiter)
                  .attempt_timeout(1s)
                  .build(),
              "pipeline");
}

// The call that does nothing.
Task<Result<int>> noop(Context&) { co_return 1; }

// `processes` processes each make `n` calls through one shared pipeline; returns seconds.
double run(unsigned workers, unsigned processes, std::uint64_t n) {
  auto env = make_real_environment({.workers = workers});
  auto rt = must(Runtime::create(*env), "runtime");
  Pipeline pipeline = make_pipeline(*env);
  const Pipeline::Call<int> call = noop;
  // Warm up (allocator, caches) on the same pipeline.
  auto warm = must(rt->spawn_watched([&](Context& ctx) -> Task<> {
    for (std::uint64_t i = 0; i < n / 10 + 1; ++i) (void)co_await pipeline.run<int>(ctx, call);
  }),
                   "spawn");
  warm.exit->wait();
  std::atomic<unsigned> failures{0};
  TimePoint t0 = env->now();
  std::vector<std::shared_ptr<ExitWatch>> done;
  for (unsigned p = 0; p < processes; ++p) {
    auto w = must(rt->spawn_watched([&](Context& ctx) -> Task<> {
      for (std::uint64_t i = 0; i < n; ++i) {
        Result<int> r = co_await pipeline.run<int>(ctx, call);
        if (!r.ok()) failures.fetch_add(1);
      }
    }),
                  "spawn");
    done.push_back(w.exit);
  }
  for (auto& w : done) w->wait();
  double secs = to_seconds(env->now() - t0);
  if (failures.load() != 0) {
    std::fprintf(stderr, "nines_resilience_bench: %u calls failed\n", failures.load());
    std::exit(1);
  }
  return secs;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1'000'000;
  if (n == 0) {
    std::fprintf(stderr, "usage: nines_resilience_bench N (N > 0)\n");
    return 2;
  }
  double one = run(1, 1, n);
  emit("pipeline_1thread", "ns_per_call", one * 1e9 / static_cast<double>(n), "ns");
  double two = run(2, 2, n);
  emit("pipeline_2threads", "calls_per_s", 2.0 * static_cast<double>(n) / two, "1/s");
  return 0;
}
