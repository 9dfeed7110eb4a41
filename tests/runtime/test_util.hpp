// Helpers for runtime tests: a deterministic runtime and a thread-safe event log.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/runtime/runtime.hpp"

namespace nines::test {

struct SimRuntime {
  explicit SimRuntime(std::uint64_t seed = 1, RuntimeOptions options = {}) : env(seed) {
    auto r = Runtime::create(env, options);
    rt = std::move(*r);
  }
  SimEnvironment env;
  std::unique_ptr<Runtime> rt;

  Pid spawn(Behavior b, SpawnOptions o = {}) { return rt->spawn(std::move(b), std::move(o)).value(); }
};

// Records strings from any process, in order.
class Log {
 public:
  void add(std::string s) {
    std::lock_guard l(mu_);
    v_.push_back(std::move(s));
  }
  std::vector<std::string> get() const {
    std::lock_guard l(mu_);
    return v_;
  }
  void clear() {
    std::lock_guard l(mu_);
    v_.clear();
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> v_;
};

}  // namespace nines::test
