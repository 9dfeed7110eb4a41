// The processes whose parent is this one (zombies included), from /proc: what the tests that
// start OS child processes (MCP servers) check is empty when they end.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

namespace nines::test {

inline std::vector<std::string> children_of_this_process() {
  std::vector<std::string> out;
  const pid_t self = ::getpid();
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string stat;
    std::getline(in, stat);
    // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
    std::size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    char state = '?';
    long ppid = 0;
    rest >> state >> ppid;
    if (ppid == self) out.push_back(name + " " + stat.substr(0, close + 1) + " state " + state);
  }
  return out;
}

}  // namespace nines::test
