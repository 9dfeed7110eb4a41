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
// plus canned responses set by the test (set_canned), which take precedence. Every request is
// recorded (requests()).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "nines/core/environment.hpp"

namespace nines::net::test {

// A scripted response for one path.
struct CannedResponse {
  int status = 200;
  std::string headers;              // extra header lines, each ending in "\r\n"
  std::string body;                 // sent with Content-Length (when chunks is empty)
  std::vector<std::string> chunks;  // non-empty: chunked transfer (text/event-stream), a chunk each
  bool gated = false;               // chunks after the first wait for release()
  bool end = true;                  // false: after the chunks the connection closes, without the
                                    // last chunk (a stream cut mid-answer)
};

struct SeenRequest {
  std::string method, path;
  std::string head;  // the request line and header lines
  std::string body;
};

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

  void set_canned(const std::string& path, CannedResponse response) {
    std::lock_guard lock(mu_);
    canned_[path] = std::move(response);
  }
  std::vector<SeenRequest> requests() const {
    std::lock_guard lock(mu_);
    return seen_;
  }

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
  mutable std::mutex mu_;
  std::map<std::string, CannedResponse> canned_;
  std::vector<SeenRequest> seen_;
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

}  // namespace nines::net::test
