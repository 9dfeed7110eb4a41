// A payment ledger behind HTTP/1.1 on loopback, for the agent crash and kill tests: the
// external system an agent's HTTP tools (agent/http_tool.hpp) charge. It lives outside what
// the tests crash (a thread of the test's real environment, or a process of its own) and
// counts every request and every application by the request's Idempotency-Key header:
//   POST /charge/idem     applies once per key (a repeated key is not applied again)  -> 200 "applied:<key>"
//   POST /charge/unsafe   applies every time, whatever the key                       -> 200 "applied:<key>"
//   GET  /charge/check    200 "applied:<key>" if the key was applied, 404 if not
//   GET  /lookup/<id>     200 "record <id>" (read-only; each answered request counts as an
//                         application under its key)
//   GET  /stats           "<key> <requests> <applications> <checks>" lines, then "END"
//   GET  /failed          how many requests were answered 503 (set_fail_every)
//   POST /quit            ends serve()
// Hold points make a crash test's boundary exact: a rule picks requests that are parked
// before they are applied (the request has arrived, nothing is applied) or after (applied, the
// answer not sent); the test waits for held() and then crashes the caller, and release()
// decides what happens to the parked requests.
//
// One poll() loop (serve()), no threads of its own; every other member may be called from
// any thread (one mutex).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace nines::test {

class HttpLedger {
 public:
  enum class Hold { kNone, kBeforeApply, kAfterApply };
  struct Counts {
    int requests = 0;
    int applied = 0;
  };
  // Which requests to hold: (method, path, idempotency key) -> where.
  using HoldRule = std::function<Hold(const std::string&, const std::string&, const std::string&)>;

  // Listens on 127.0.0.1 (an ephemeral port when port == 0). port() is 0 if that failed.
  explicit HttpLedger(int port = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 512) != 0) return;
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~HttpLedger() {
    for (Conn& c : conns_) ::close(c.fd);
    for (Parked& p : parked_) ::close(p.fd);
    ::close(fd_);
  }
  HttpLedger(const HttpLedger&) = delete;
  HttpLedger& operator=(const HttpLedger&) = delete;

  int port() const { return port_; }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }

  // Every n-th request to /charge/idem or /lookup/ (n > 0; 0: none) is answered 503 without
  // being applied: a flaky target for the retry policies of idempotent and read-only tools.
  void set_fail_every(int n) {
    std::lock_guard l(mu_);
    fail_every_ = n;
  }
  int failed() const {
    std::lock_guard l(mu_);
    return failed_;
  }

  void set_hold(HoldRule rule) {
    std::lock_guard l(mu_);
    hold_ = std::move(rule);
  }
  // Requests parked now.
  std::size_t held() const {
    std::lock_guard l(mu_);
    return parked_.size();
  }
  // Ends every parked request: one held before it was applied is applied when `apply` (the
  // target got it and went on, though the caller is gone) or dropped otherwise; one held after
  // it was applied stays applied. Either way its connection is closed without an answer.
  void release(bool apply) {
    std::lock_guard l(mu_);
    for (Parked& p : parked_) {
      if (p.where == Hold::kBeforeApply && apply) apply_locked(p.path, p.key);
      ::close(p.fd);
    }
    parked_.clear();
  }
  Counts counts(const std::string& key) const {
    std::lock_guard l(mu_);
    auto it = ledger_.find(key);
    return it == ledger_.end() ? Counts{} : it->second;
  }
  // GET /charge/check requests for `key`.
  int checks(const std::string& key) const {
    std::lock_guard l(mu_);
    auto it = checks_.find(key);
    return it == checks_.end() ? 0 : it->second;
  }
  std::map<std::string, Counts> all() const {
    std::lock_guard l(mu_);
    return ledger_;
  }
  void stop() { stop_.store(true); }

  // Serves until stop() or POST /quit.
  void serve() {
    while (!stop_.load()) {
      std::vector<pollfd> fds{{fd_, POLLIN, 0}};
      for (const Conn& c : conns_) fds.push_back({c.fd, static_cast<short>(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
      if (::poll(fds.data(), fds.size(), 5) < 0 && errno != EINTR) return;
      if (fds[0].revents & POLLIN) {
        for (;;) {
          int cfd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
          if (cfd < 0) break;
          conns_.push_back({cfd, {}, {}});
        }
      }
      for (std::size_t i = 1; i < fds.size(); ++i) {
        Conn& c = conns_[i - 1];
        if (fds[i].revents & POLLOUT) flush(c);
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        char buf[8192];
        ssize_t n = ::read(c.fd, buf, sizeof buf);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) {
          ::close(c.fd);
          c.fd = -1;
          continue;
        }
        c.in.append(buf, static_cast<std::size_t>(n));
        handle_input(c);
      }
      std::erase_if(conns_, [](const Conn& c) { return c.fd < 0; });
    }
  }

 private:
  struct Conn {
    int fd;
    std::string in, out;
  };
  struct Parked {
    int fd;
    Hold where;
    std::string path, key;
  };

  static std::string header(const std::string& head, std::string name) {
    std::string lower = head;
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::size_t p = lower.find("\r\n" + name + ":");
    if (p == std::string::npos) return {};
    p += name.size() + 3;
    while (p < head.size() && head[p] == ' ') ++p;
    return head.substr(p, head.find("\r\n", p) - p);
  }

  static std::string reply(int status, const std::string& body) {
    const char* reason = status == 200   ? "OK"
                         : status == 404 ? "Not Found"
                         : status == 503 ? "Service Unavailable"
                                         : "Bad Request";
    return "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\nContent-Type: text/plain\r\n\r\n" + body;
  }

  void flush(Conn& c) {
    while (!c.out.empty()) {
      ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        if (n < 0 && errno == EAGAIN) return;
        ::close(c.fd);
        c.fd = -1;
        c.out.clear();
        return;
      }
      c.out.erase(0, static_cast<std::size_t>(n));
    }
  }

  // Under mu_.
  std::string apply_locked(const std::string& path, const std::string& key) {
    Counts& k = ledger_[key];
    if (path.rfind("/lookup/", 0) == 0) {  // a read: counted as run, every time
      ++k.applied;
      return "record " + path.substr(8);
    }
    if (path == "/charge/unsafe" || k.applied == 0) ++k.applied;
    return "applied:" + key;
  }

  void handle_input(Conn& c) {
    for (;;) {
      std::size_t end = c.in.find("\r\n\r\n");
      if (end == std::string::npos) return;
      const std::string head = c.in.substr(0, end);
      const std::string length = header(head, "Content-Length");
      const std::size_t body_len = length.empty() ? 0 : std::stoul(length);
      if (c.in.size() < end + 4 + body_len) return;
      c.in.erase(0, end + 4 + body_len);
      const std::size_t sp1 = head.find(' '), sp2 = head.find(' ', sp1 + 1);
      const std::string method = head.substr(0, sp1), path = head.substr(sp1 + 1, sp2 - sp1 - 1);
      const std::string key = header(head, "Idempotency-Key");
      std::lock_guard l(mu_);
      const bool charge = method == "POST" && (path == "/charge/idem" || path == "/charge/unsafe");
      const bool lookup = method == "GET" && path.rfind("/lookup/", 0) == 0;
      const bool flaky = path == "/charge/idem" || lookup;
      if (flaky && fail_every_ > 0 && ++flaky_seen_ % fail_every_ == 0) {
        ++failed_;
        c.out += reply(503, "try again");
      } else if (charge || lookup) {
        ++ledger_[key].requests;
        const Hold h = hold_ ? hold_(method, path, key) : Hold::kNone;
        if (h == Hold::kAfterApply) apply_locked(path, key);
        if (h != Hold::kNone) {
          parked_.push_back({c.fd, h, path, key});
          c.fd = -1;  // the connection now belongs to the parked request
          return;
        }
        c.out += reply(200, apply_locked(path, key));
      } else if (method == "GET" && path == "/charge/check") {
        ++checks_[key];
        auto it = ledger_.find(key);
        c.out += it != ledger_.end() && it->second.applied > 0 ? reply(200, "applied:" + key) : reply(404, "no");
      } else if (method == "GET" && path == "/stats") {
        std::map<std::string, std::string> lines;
        for (const auto& [k, n] : ledger_) {
          lines[k] = std::to_string(n.requests) + " " + std::to_string(n.applied);
        }
        for (const auto& [k, n] : checks_) lines.try_emplace(k, "0 0");
        std::string out;
        for (const auto& [k, line] : lines) {
          auto ch = checks_.find(k);
          out += k + " " + line + " " + std::to_string(ch == checks_.end() ? 0 : ch->second) + "\n";
        }
        c.out += reply(200, out + "END\n");
      } else if (method == "GET" && path == "/failed") {
        c.out += reply(200, std::to_string(failed_));
      } else if (path == "/quit") {
        c.out += reply(200, "bye");
        stop_.store(true);
      } else {
        c.out += reply(400, "unknown " + method + " " + path);
      }
      flush(c);
      if (c.fd < 0) return;
    }
  }

  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<Conn> conns_;  // serve()'s thread only
  mutable std::mutex mu_;
  HoldRule hold_;
  std::vector<Parked> parked_;
  std::map<std::string, Counts> ledger_;
  std::map<std::string, int> checks_;
  int fail_every_ = 0;
  long flaky_seen_ = 0;
  int failed_ = 0;
};

// One blocking request to a ledger on loopback `port` from a plain thread (not a process): the
// response body, or "" if it could not be sent.
inline std::string ledger_request(int port, const std::string& method, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return "";
  }
  const std::string req = method + " " + path + " HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
  if (::write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return "";
  }
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    const std::size_t head = out.find("\r\n\r\n");
    if (head == std::string::npos) continue;
    const std::size_t cl = out.find("Content-Length: ");
    if (cl == std::string::npos) break;
    const std::size_t len = std::stoul(out.substr(cl + 16));
    if (out.size() >= head + 4 + len) {
      out = out.substr(head + 4, len);
      break;
    }
  }
  ::close(fd);
  return out;
}

}  // namespace nines::test
