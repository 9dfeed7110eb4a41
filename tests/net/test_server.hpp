// A small HTTP/1.1 server for the net tests, on loopback, with plain sockets and poll(), run
// on a thread from the environment. It keeps connections alive, counts them, and serves
// scripted behaviours by path:
//   /hello              200 "hello", X-Test: yes
//   /echo               200, body "<method> <body>", X-Got-Custom: <the X-Custom request header>
//   /status/<n>         status n, body "status <n>"
//   /ratelimited        429 with Retry-After: 7
//   /big/<n>            200 with an n-byte body
//   /sse                chunked text/event-stream: one event at once, the rest (and the end)
//                       only after release() is called
//   /never              reads the request, never answers
//   /stall              headers and one chunk, then silence
//   /trickle            a chunk every 30 ms, never ending
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "nines/core/environment.hpp"

namespace nines::net::testing {

class TestServer {
 public:
  explicit TestServer(Environment& env);
  ~TestServer();
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;

  int port() const { return port_; }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }

  std::size_t connections_accepted() const { return accepted_.load(); }
  std::size_t connections_closed() const { return closed_.load(); }
  std::size_t requests_seen() const { return requests_.load(); }
  // Lets every /sse stream send its remaining events and end.
  void release() { gate_.store(true); }

 private:
  struct Conn;
  void run();

  Environment& env_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> gate_{false};
  std::atomic<std::size_t> accepted_{0}, closed_{0}, requests_{0};
  std::unique_ptr<Thread> thread_;
};

// A loopback port whose listen backlog is full, so a connect to it hangs (SYNs are dropped):
// for connect timeouts.
class BlackholePort {
 public:
  BlackholePort();
  ~BlackholePort();
  int port() const { return port_; }

 private:
  int listen_fd_ = -1;
  int port_ = 0;
  std::vector<int> fillers_;
};

// A loopback port with nothing listening (connections are refused).
int closed_port();

// Sleeps the calling (test) thread for about `ms` without a clock (poll with a timeout).
void pause_ms(int ms);

}  // namespace nines::net::testing
