// nines/core/fault.hpp: the fault points, in one list (FoundationDB's BUGGIFY).
//
// A fault point is a place in runtime, store, workflow or net code that asks the environment
// "does point P fire now?" (Environment::fault) and, if so, behaves as the real failure it
// stands for would make it behave. Only the SimEnvironment ever answers yes, and only after
// set_faults turned points on; draws come from a stream of their own, derived from the seed,
// so one seed with the same FaultOptions replays exactly, and turning faults on does not
// change the environment's other random draws. In the real environment a fault point costs
// one test of a plain bool that is always false.
//
// Every point is listed here and nowhere else; docs/sim.md ("Fault points") says how to turn
// them on and replay a seed.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/core/time.hpp"

namespace nines {

enum class FaultPoint : std::uint8_t {
  // src/workflow/committer.cpp (InlineCommitter, the committer of the deterministic
  // environment): a store commit fails before anything is applied, with kTransient. Stands
  // for a lost database connection, a lock or statement timeout, a full disk.
  kStoreCommitFail,
  // Same place: the commit is applied only after Environment::fault_delay of virtual time,
  // the committing process suspended meanwhile. Stands for a slow fsync or a loaded database.
  kStoreCommitSlow,
  // Same place: the committer dies with a commit in flight. The batch is applied or not
  // (drawn), the committing process never hears back, and every later commit through that
  // committer waits forever too, until the program restarts (a crashed committer thread
  // leaves its group's waiters and every later one hanging). A process deadline ends such a
  // wait with kDeadlineExceeded, as for any wait.
  kCommitterCrash,
  // src/runtime/runtime_core.cpp (RuntimeCore::add_timer: sleep, receive and call timeouts,
  // send_after, process deadlines): the timer fires Environment::fault_delay late. Stands
  // for a loaded machine or a descheduled thread.
  kTimerLate,
  // src/runtime/runtime_core.cpp (RuntimeCore::deliver_to): a user message finds the
  // target's mailbox at its bound, and the target's overflow policy applies (kReject: the
  // send fails with kMailboxFull; kDropOldest: its oldest user message is dropped;
  // kSuspendSender: the sender waits for room, only when the mailbox holds a message, so a
  // receive will make room). Stands for a burst of traffic.
  kMailboxFull,
  // src/net/http_client.cpp (HttpCore::on_socket_ready): a ready socket is left alone for
  // Environment::fault_delay before curl reads or writes it. Stands for a stalled peer, a
  // slow network, packet loss and retransmission.
  kHttpStall,
  // src/net/http_client.cpp (HttpCore::write_cb): response bytes arrive and the connection is
  // reset: the transfer ends with kTransient ("connection reset"), after whatever was
  // already delivered (a stream's reader has seen the earlier bytes). Stands for a peer,
  // proxy or load balancer resetting the connection mid-response.
  kHttpReset,
};

inline constexpr std::size_t kFaultPointCount = 7;

// "store_commit_fail", "store_commit_slow", "committer_crash", "timer_late", "mailbox_full",
// "http_stall", "http_reset".
std::string_view to_string(FaultPoint point);
// The point named `name` (as to_string spells it); nullopt if none.
std::optional<FaultPoint> parse_fault_point(std::string_view name);

// Which fault points fire, how often and how long their delays are. Default: none.
struct FaultOptions {
  // Per point (indexed by the enum's value), the chance it fires each time it is reached,
  // in [0, 1]. 0: off.
  std::array<double, kFaultPointCount> probability{};
  // Delays (a slow commit, a late timer, a stall) are uniform in [1 ms, max_delay].
  Duration max_delay = std::chrono::milliseconds(100);

  // Every point with `p`.
  static FaultOptions all(double p) {
    FaultOptions o;
    o.probability.fill(p);
    return o;
  }
  FaultOptions& set(FaultPoint point, double p) {
    probability[static_cast<std::size_t>(point)] = p;
    return *this;
  }
  double of(FaultPoint point) const { return probability[static_cast<std::size_t>(point)]; }
  bool any() const {
    for (double p : probability)
      if (p > 0) return true;
    return false;
  }
};

// Reads "store_commit_fail=0.2,timer_late=0.5" (points not named are off; "all=0.1" sets
// every point, later items win): the form NINES_SIM_FAULTS takes in the simulation tests.
// Errors: kInvalidArgument naming the item that is not <point>=<probability in [0, 1]>.
Result<FaultOptions> parse_fault_options(std::string_view spec);

}  // namespace nines
