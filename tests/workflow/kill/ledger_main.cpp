// nines_kill_ledger SOCKET_PATH: the external system of the kill test. A ledger on a unix
// socket that records every request and applies effects, one line per request:
//   APPLY_IDEM <key>    applies <key> once (a repeated key is not applied again) -> "OK applied:<key>"
//   APPLY_UNSAFE <key>  applies every time (no idempotency)                      -> "OK applied:<key>"
//   CHECK <key>         "YES applied:<key>" or "NO"
//   STATS               one "<key> <requests> <applications>" line per key, then "END"
//   QUIT                exits
// It outlives the worker the test kills, like a remote service would. One thread, poll().
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

struct Counts {
  int requests = 0;
  int applied = 0;
};
std::map<std::string, Counts> ledger;

std::string handle(const std::string& line, bool& quit) {
  auto sp = line.find(' ');
  std::string cmd = line.substr(0, sp);
  std::string key = sp == std::string::npos ? "" : line.substr(sp + 1);
  if (cmd == "APPLY_IDEM" || cmd == "APPLY_UNSAFE") {
    Counts& c = ledger[key];
    ++c.requests;
    if (cmd == "APPLY_UNSAFE" || c.applied == 0) ++c.applied;
    return "OK applied:" + key + "\n";
  }
  if (cmd == "CHECK") {
    auto it = ledger.find(key);
    return it != ledger.end() && it->second.applied > 0 ? "YES applied:" + key + "\n" : "NO\n";
  }
  if (cmd == "STATS") {
    std::string out;
    for (const auto& [k, c] : ledger)
      out += k + " " + std::to_string(c.requests) + " " + std::to_string(c.applied) + "\n";
    return out + "END\n";
  }
  if (cmd == "QUIT") {
    quit = true;
    return "BYE\n";
  }
  return "ERR unknown command\n";
}

bool write_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 1000);
      continue;
    }
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: nines_kill_ledger SOCKET_PATH\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  int lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", argv[1]);
  ::unlink(argv[1]);
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(lfd, 512) != 0) {
    std::fprintf(stderr, "nines_kill_ledger: cannot listen on %s: %s\n", argv[1], std::strerror(errno));
    return 1;
  }
  struct Client {
    int fd;
    std::string buf;
  };
  std::vector<Client> clients;
  bool quit = false;
  while (!quit) {
    std::vector<pollfd> fds{{lfd, POLLIN, 0}};
    for (const Client& c : clients) fds.push_back({c.fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR) return 1;
    if (fds[0].revents & POLLIN) {
      int cfd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (cfd >= 0) clients.push_back({cfd, {}});
    }
    for (std::size_t i = 1; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      Client& c = clients[i - 1];
      char tmp[4096];
      ssize_t n = ::read(c.fd, tmp, sizeof tmp);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) {  // closed (a killed worker's connection ends here)
        ::close(c.fd);
        c.fd = -1;
        continue;
      }
      c.buf.append(tmp, static_cast<std::size_t>(n));
      std::size_t nl;
      while ((nl = c.buf.find('\n')) != std::string::npos) {
        std::string line = c.buf.substr(0, nl);
        c.buf.erase(0, nl + 1);
        if (!write_all(c.fd, handle(line, quit))) break;
      }
    }
    std::erase_if(clients, [](const Client& c) { return c.fd < 0; });
  }
  ::unlink(argv[1]);
  return 0;
}
