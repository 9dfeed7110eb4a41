// nines/runtime/task.hpp: Task<T>, the coroutine type of process bodies and of everything a
// process awaits.
//
// A Task is lazy (it starts when awaited), owns its coroutine frame, and resumes its awaiter
// by symmetric transfer when it finishes. An exception thrown inside propagates to the
// awaiter; escaping a process's root task it crashes that process (and only that process).
// Tasks are not thread-safe: a process's tasks run on whichever worker runs the process, one
// at a time.
//
// g++ 12 bug (fixed in later releases): an aggregate temporary with non-trivial members
// written inside a co_await expression, as in `co_await ctx.call(pid, Req{std::move(s)})`, is
// copied bitwise into the coroutine frame and later destroyed twice. Name it first:
//   Req req{std::move(s)};
//   auto r = co_await ctx.call(pid, std::move(req));
// The same holds for a lambda with non-trivial captures (`[text = s] { ... }`) written inside
// the co_await expression: name the lambda first. Temporaries of class types that are not
// aggregates or closures (std::string("x")) and trivially copyable ones (Ping{}, Pos{1, 2}) are
// not affected. tests/runtime/process_test.cpp pins the named pattern down.
//
// `co_await task` yields an rvalue reference into the task's frame, valid until the end of the
// full-expression that awaits it (the Task temporary owns the frame). Take the result by value:
// `T x = co_await f();`. A reference bound to it (`auto&& x = co_await f();`,
// `const T& x = co_await f();`, `for (auto& e : co_await f())`) dangles once the statement ends.
#pragma once

#include <coroutine>
#include <exception>
#include <utility>
#include <variant>

namespace nines {

template <class T = void>
class Task;

namespace internal {

// How a task was started, so that one that finishes without ever suspending returns to its
// awaiter by a plain return instead of a symmetric transfer. Symmetric transfer is a tail
// call only when the compiler optimises it; at -O0 (the sanitizer builds) a loop awaiting
// tasks that complete at once would grow the stack by a frame per iteration until it
// overflows. A process's tasks run on one worker at a time, so no synchronisation is needed.
enum class TaskStart : unsigned char {
  kDetached,         // resumed by the runtime (a process's root task) or after a suspension
  kRunningInline,    // being run from its awaiter's await_suspend
  kCompletedInline,  // finished during that run: the awaiter continues without suspending
};

template <class T>
struct TaskPromiseBase {
  std::coroutine_handle<> continuation;
  std::exception_ptr exception;
  TaskStart start = TaskStart::kDetached;

  std::suspend_always initial_suspend() noexcept { return {}; }

  struct FinalAwaiter {
    bool await_ready() noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      auto& promise = h.promise();
      if (promise.start == TaskStart::kRunningInline) {
        promise.start = TaskStart::kCompletedInline;
        return std::noop_coroutine();  // back into the awaiter's await_suspend
      }
      auto c = promise.continuation;
      return c ? c : std::noop_coroutine();
    }
    void await_resume() noexcept {}
  };
  FinalAwaiter final_suspend() noexcept { return {}; }
  void unhandled_exception() noexcept { exception = std::current_exception(); }
};

// Runs task `h` from its awaiter's await_suspend. Returns false (the awaiter goes on without
// suspending) if the task finished without suspending, true if it suspended: then it resumes
// the awaiter when it finishes (see TaskStart).
template <class P>
bool start_inline(std::coroutine_handle<P> h, std::coroutine_handle<> awaiter) {
  auto& promise = h.promise();
  promise.continuation = awaiter;
  promise.start = TaskStart::kRunningInline;
  h.resume();
  if (promise.start == TaskStart::kCompletedInline) return false;
  promise.start = TaskStart::kDetached;
  return true;
}

}  // namespace internal

template <class T>
class [[nodiscard]] Task {
 public:
  struct promise_type : internal::TaskPromiseBase<T> {
    std::variant<std::monostate, T> value;
    Task get_return_object() { return Task(std::coroutine_handle<promise_type>::from_promise(*this)); }
    template <class U>
    void return_value(U&& v) {
      value.template emplace<1>(std::forward<U>(v));
    }
  };

  Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      if (h_) h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  ~Task() {
    if (h_) h_.destroy();
  }

  bool await_ready() const noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> awaiter) { return internal::start_inline(h_, awaiter); }
  // The result, as an rvalue reference into the finished task's frame (see the file comment):
  // `T x = co_await f();`, `x = co_await f();` and `o.emplace(co_await f())` move it from there
  // at once. Returning T by value would make g++ keep a second T in the awaiter's frame for
  // every co_await written as an assignment or an argument, and a coroutine frame is memory a
  // call in flight holds.
  T&& await_resume() {
    if (h_.promise().exception) std::rethrow_exception(h_.promise().exception);
    return std::move(std::get<1>(h_.promise().value));
  }

 private:
  explicit Task(std::coroutine_handle<promise_type> h) : h_(h) {}
  std::coroutine_handle<promise_type> h_;
};

template <>
class [[nodiscard]] Task<void> {
 public:
  struct promise_type : internal::TaskPromiseBase<void> {
    Task get_return_object() { return Task(std::coroutine_handle<promise_type>::from_promise(*this)); }
    void return_void() noexcept {}
  };

  Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      if (h_) h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  ~Task() {
    if (h_) h_.destroy();
  }

  bool await_ready() const noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> awaiter) { return internal::start_inline(h_, awaiter); }
  void await_resume() {
    if (h_.promise().exception) std::rethrow_exception(h_.promise().exception);
  }

  // For the runtime, which drives a process's root task directly.
  std::coroutine_handle<promise_type> handle() const { return h_; }
  std::coroutine_handle<promise_type> release() { return std::exchange(h_, {}); }

 private:
  explicit Task(std::coroutine_handle<promise_type> h) : h_(h) {}
  std::coroutine_handle<promise_type> h_;
};

}  // namespace nines
