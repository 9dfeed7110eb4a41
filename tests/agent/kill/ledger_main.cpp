// nines_agent_kill_ledger PORT_FILE [FAIL_EVERY]: the external system of the agent kill test, in a process
// of its own that outlives every worker the test kills (like a remote payment API). Serves
// http_ledger.hpp on an ephemeral loopback port, writes the port to PORT_FILE (written to a
// temporary name and renamed, so a reader never sees half of it), and serves until POST /quit.
// FAIL_EVERY > 0 answers every n-th idempotent or read-only request 503 (HttpLedger::set_fail_every).
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "agent/kill/http_ledger.hpp"

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: nines_agent_kill_ledger PORT_FILE [FAIL_EVERY]\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  nines::test::HttpLedger ledger;
  if (argc == 3) ledger.set_fail_every(std::atoi(argv[2]));
  if (ledger.port() == 0) {
    std::fprintf(stderr, "nines_agent_kill_ledger: cannot listen on loopback\n");
    return 1;
  }
  const std::string tmp = std::string(argv[1]) + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return 1;
  std::fprintf(f, "%d\n", ledger.port());
  std::fclose(f);
  if (std::rename(tmp.c_str(), argv[1]) != 0) return 1;
  ledger.serve();
  return 0;
}
