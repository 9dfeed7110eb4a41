// nines/runtime/message.hpp: what a process receives.
//
// A message carries one value of any copyable or movable type plus its sender. System
// messages have fixed payload types: Exit (an exit signal converted to a message because the
// receiver traps exits) and Down (a monitored process exited).
#pragma once

#include <any>
#include <cstdint>
#include <typeinfo>
#include <utility>

#include "nines/runtime/exit_reason.hpp"
#include "nines/runtime/pid.hpp"

namespace nines {

// Delivered to a process that traps exits when a linked process exits or someone sends it an
// exit signal.
struct Exit {
  Pid from;  // Pid{} when the signal came from outside the runtime
  ExitReason reason;
};

// Delivered to a monitoring process when the monitored process exits (or did not exist:
// reason noproc).
struct Down {
  MonitorRef ref;
  Pid pid;
  ExitReason reason;
};

class Message {
 public:
  Message() = default;
  Message(Pid from, std::any payload, std::uint64_t call_ref = 0)
      : from_(from), call_ref_(call_ref), payload_(std::move(payload)) {}

  Pid from() const { return from_; }

  // True for a request sent with Context::call: answer it with Context::reply.
  bool is_call() const { return call_ref_ != 0; }
  std::uint64_t call_ref() const { return call_ref_; }

  template <class T>
  bool is() const {
    return payload_.type() == typeid(T);
  }
  // The payload if it is a T, else nullptr.
  template <class T>
  const T* get() const {
    return std::any_cast<T>(&payload_);
  }
  template <class T>
  T* get() {
    return std::any_cast<T>(&payload_);
  }

  const std::any& payload() const { return payload_; }
  std::any& payload() { return payload_; }

 private:
  Pid from_;
  std::uint64_t call_ref_ = 0;
  std::any payload_;
};

}  // namespace nines
