// Processes from /proc for the tests that start OS child processes (MCP servers):
// children_of_this_process() (zombies included) must be empty when they end; live_in_group()
// lists a process group's members that are not zombies.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

namespace nines::test {

// Calls fn(pid, comm-and-pid text, state, ppid, pgrp) for every process in /proc.
template <class Fn>
void for_each_process(Fn&& fn) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string stat;
    std::getline(in, stat);
    // pid (comm) state ppid pgrp ...: comm may hold spaces, so parse after the last ')'.
    std::size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    char state = '?';
    long ppid = 0, pgrp = 0;
    rest >> state >> ppid >> pgrp;
    fn(name, stat.substr(0, close + 1), state, ppid, pgrp);
  }
}

inline std::vector<std::string> children_of_this_process() {
  std::vector<std::string> out;
  const pid_t self = ::getpid();
  for_each_process([&](const std::string& pid, const std::string& head, char state, long ppid, long) {
    if (ppid == self) out.push_back(pid + " " + head + " state " + state);
  });
  return out;
}

// The processes of process group `pgid` that are not zombies.
inline std::vector<std::string> live_in_group(long pgid) {
  std::vector<std::string> out;
  for_each_process([&](const std::string& pid, const std::string&, char state, long, long pgrp) {
    if (pgrp == pgid && state != 'Z') out.push_back(pid + " state " + state);
  });
  return out;
}

}  // namespace nines::test
