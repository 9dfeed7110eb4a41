// A stand-in for an external system with side effects (a payment ledger), for the workflow
// tests: it counts every request it receives and every effect it applies, by idempotency
// key. It lives outside whatever the tests crash, like a real remote service.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace nines::test {

class FakeLedger {
 public:
  // Applies the effect named by `key` once: a repeated key returns the first outcome
  // without applying again (what an Idempotency-Key header buys).
  std::string apply_idempotent(const std::string& key) {
    std::lock_guard l(mu_);
    ++raw_[key];
    auto [it, inserted] = applied_.try_emplace(key, 0);
    if (inserted) it->second = 1;
    return "applied:" + key;
  }
  // Applies every request, repeated or not (an API without idempotency keys).
  std::string apply_unsafe(const std::string& key) {
    std::lock_guard l(mu_);
    ++raw_[key];
    ++applied_[key];
    return "applied:" + key;
  }
  // Whether `key` was applied, and its outcome.
  std::optional<std::string> check(const std::string& key) const {
    std::lock_guard l(mu_);
    auto it = applied_.find(key);
    if (it == applied_.end()) return std::nullopt;
    return "applied:" + key;
  }
  int applied(const std::string& key) const {
    std::lock_guard l(mu_);
    auto it = applied_.find(key);
    return it == applied_.end() ? 0 : it->second;
  }
  int raw(const std::string& key) const {
    std::lock_guard l(mu_);
    auto it = raw_.find(key);
    return it == raw_.end() ? 0 : it->second;
  }
  std::map<std::string, int> all_applied() const {
    std::lock_guard l(mu_);
    return applied_;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, int> raw_;
  std::map<std::string, int> applied_;
};

}  // namespace nines::test
