#include "net/test_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>

namespace nines::net::test {

namespace {

int listen_on_loopback(int backlog, int* port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, backlog) != 0) {
    ::close(fd);
    throw std::runtime_error(std::string("bind/listen failed: ") + std::strerror(errno));
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

std::string chunk(const std::string& s) {
  char size[32];
  std::snprintf(size, sizeof size, "%zx\r\n", s.size());
  return size + s + "\r\n";
}

std::string response(int status, const std::string& reason, const std::string& extra_headers, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n" + extra_headers + "\r\n" + body;
}

std::string find_header(const std::string& head, const std::string& name) {
  // Case-insensitive search for "\r\n<name>:".
  std::string lower_head = head, needle = "\r\n" + name + ":";
  for (auto& c : lower_head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (auto& c : needle) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::size_t p = lower_head.find(needle);
  if (p == std::string::npos) return {};
  p += needle.size();
  std::size_t e = head.find("\r\n", p);
  std::string v = head.substr(p, e - p);
  while (!v.empty() && v.front() == ' ') v.erase(0, 1);
  return v;
}

}  // namespace

struct TestServer::Conn {
  enum class Mode { kIdle, kNever, kSseGate, kStall, kTrickle, kCannedGate, kDelay };
  int fd = -1;
  std::vector<std::string> pending;  // canned chunks waiting for release()
  bool canned_end = true;
  bool close_after = false;  // close once `out` is sent
  std::string in, out;
  Mode mode = Mode::kIdle;
  TimePoint next_at{};
  int trickled = 0;
};

TestServer::TestServer(Environment& env) : env_(env) {
  listen_fd_ = listen_on_loopback(4096, &port_);
  set_nonblocking(listen_fd_);
  thread_ = env_.start_thread("test-http-server", [this] { run(); }).value();
}

TestServer::~TestServer() {
  stop_.store(true);
  thread_->join();
  ::close(listen_fd_);
}

void TestServer::run() {
  std::vector<std::unique_ptr<Conn>> conns;
  std::vector<pollfd> fds;
  while (!stop_.load()) {
    fds.clear();
    fds.push_back({listen_fd_, POLLIN, 0});
    for (auto& c : conns) fds.push_back({c->fd, static_cast<short>(POLLIN | (c->out.empty() ? 0 : POLLOUT)), 0});
    ::poll(fds.data(), fds.size(), 5);
    TimePoint now = env_.now();
    if (fds[0].revents & POLLIN) {
      for (;;) {
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        auto c = std::make_unique<Conn>();
        c->fd = fd;
        conns.push_back(std::move(c));
        accepted_.fetch_add(1);
      }
    }
    for (std::size_t i = 0; i < conns.size(); ++i) {
      Conn& c = *conns[i];
      short rev = i + 1 < fds.size() ? fds[i + 1].revents : 0;  // accepted this round: not polled yet
      bool dead = false;
      if (rev & (POLLIN | POLLHUP | POLLERR)) {
        char buf[16384];
        ssize_t n = ::read(c.fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
          dead = true;
        } else if (n > 0) {
          c.in.append(buf, static_cast<std::size_t>(n));
        }
      }
      // Requests, one at a time per connection (no pipelining needed).
      while (!dead && c.mode == Conn::Mode::kIdle) {
        std::size_t he = c.in.find("\r\n\r\n");
        if (he == std::string::npos) break;
        std::string head = c.in.substr(0, he + 2);
        std::string cl = find_header(head, "content-length");
        std::size_t body_len = cl.empty() ? 0 : std::stoul(cl);
        if (c.in.size() < he + 4 + body_len) break;
        std::string body = c.in.substr(he + 4, body_len);
        c.in.erase(0, he + 4 + body_len);
        requests_.fetch_add(1);
        std::size_t sp1 = head.find(' '), sp2 = head.find(' ', sp1 + 1);
        std::string method = head.substr(0, sp1), path = head.substr(sp1 + 1, sp2 - sp1 - 1);
        std::optional<CannedResponse> canned;
        {
          std::lock_guard lock(mu_);
          seen_.push_back(SeenRequest{method, path, head, body});
          if (auto it = canned_.find(path); it != canned_.end()) canned = it->second;
        }
        if (canned) {
          const CannedResponse& cr = *canned;
          if (cr.chunks.empty()) {
            c.out += response(cr.status, "Canned", cr.headers, cr.body);
            if (!cr.end) c.close_after = true;
          } else {
            c.out += "HTTP/1.1 " + std::to_string(cr.status) +
                     " Canned\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n" + cr.headers +
                     "\r\n";
            std::size_t now_count = cr.gated ? 1 : cr.chunks.size();
            for (std::size_t k = 0; k < now_count; ++k) c.out += chunk(cr.chunks[k]);
            c.canned_end = cr.end;
            if (now_count < cr.chunks.size()) {
              c.pending.assign(cr.chunks.begin() + static_cast<std::ptrdiff_t>(now_count), cr.chunks.end());
              c.mode = Conn::Mode::kCannedGate;
            } else if (cr.end) {
              c.out += "0\r\n\r\n";
            } else {
              c.close_after = true;
            }
          }
        } else if (path == "/hello") {
          c.out += response(200, "OK", "X-Test: yes\r\n", "hello");
        } else if (path.starts_with("/echo")) {
          c.out += response(200, "OK", "X-Got-Custom: " + find_header(head, "x-custom") + "\r\n", method + " " + body);
        } else if (path.starts_with("/status/")) {
          int st = std::stoi(path.substr(8));
          c.out += response(st, "Whatever", "", "status " + std::to_string(st));
        } else if (path == "/ratelimited") {
          c.out += response(429, "Too Many Requests", "Retry-After: 7\r\n", "slow down");
        } else if (path.starts_with("/big/")) {
          c.out += response(200, "OK", "", std::string(std::stoul(path.substr(5)), 'x'));
        } else if (path == "/sse" || path == "/stall" || path == "/trickle") {
          c.out += "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
          if (path == "/sse") {
            c.out += chunk(": hello\n\ndata: one\n\n");
            c.mode = Conn::Mode::kSseGate;
          } else if (path == "/stall") {
            c.out += chunk("data: first\n\n");
            c.mode = Conn::Mode::kStall;
          } else {
            c.mode = Conn::Mode::kTrickle;
            c.next_at = now;
          }
        } else if (path == "/never") {
          c.mode = Conn::Mode::kNever;
        } else if (path.starts_with("/delay/")) {  // "late", after that many milliseconds
          c.mode = Conn::Mode::kDelay;
          c.next_at = now + std::chrono::milliseconds(std::stoi(path.substr(7)));
        } else {
          c.out += response(404, "Not Found", "", "no such path");
        }
      }
      if (!dead && c.mode == Conn::Mode::kSseGate && gate_.load()) {
        c.out += chunk("event: done\r\ndata: two\r\ndata: three\r\n\r\n");
        c.out += "0\r\n\r\n";
        c.mode = Conn::Mode::kIdle;
      }
      if (!dead && c.mode == Conn::Mode::kCannedGate && gate_.load()) {
        for (const auto& p : c.pending) c.out += chunk(p);
        c.pending.clear();
        if (c.canned_end) {
          c.out += "0\r\n\r\n";
        } else {
          c.close_after = true;
        }
        c.mode = Conn::Mode::kIdle;
      }
      if (!dead && c.mode == Conn::Mode::kDelay && now >= c.next_at) {
        c.out += response(200, "OK", "", "late");
        c.mode = Conn::Mode::kIdle;
      }
      if (!dead && c.mode == Conn::Mode::kTrickle && now >= c.next_at) {
        c.out += chunk("data: " + std::to_string(c.trickled++) + "\n\n");
        c.next_at = now + std::chrono::milliseconds(30);
      }
      if (!dead && !c.out.empty()) {
        ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
        if (n > 0) {
          c.out.erase(0, static_cast<std::size_t>(n));
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
          dead = true;
        }
      }
      if (!dead && c.close_after && c.out.empty()) dead = true;
      if (dead) {
        ::close(c.fd);
        c.fd = -1;
        closed_.fetch_add(1);
      }
    }
    std::erase_if(conns, [](const std::unique_ptr<Conn>& c) { return c->fd < 0; });
  }
  for (auto& c : conns) ::close(c->fd);
}

BlackholePort::BlackholePort() {
  listen_fd_ = listen_on_loopback(0, &port_);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port_));
  for (int i = 0; i < 3; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    [[maybe_unused]] int r = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    fillers_.push_back(fd);
  }
  pause_ms(50);
}

BlackholePort::~BlackholePort() {
  for (int fd : fillers_) ::close(fd);
  ::close(listen_fd_);
}

int closed_port() {
  int port = 0;
  int fd = listen_on_loopback(1, &port);
  ::close(fd);
  return port;
}

void pause_ms(int ms) { ::poll(nullptr, 0, ms); }

}  // namespace nines::net::test
