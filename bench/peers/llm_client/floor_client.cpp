// The floor of bench/peers/llm_client: the least any client can add to a call on this machine
// against the sim server. One thread, one epoll, C keep-alive connections, a request written
// once and sent as is, a response read until its Content-Length is in and the two timing
// headers picked out of it: no HTTP library, no JSON parsing, no timers, no policies, no
// allocation per call. Not a client anyone should use (it handles only the sim server's
// answers: 200, Content-Length framing, keep-alive); a measuring stick for the added latency and
// the CPU per call that the kernel's loopback path, the scheduler and the server leave to a
// client on these two cores.
//
//   nines_floor_client BASE_URL CONCURRENCY WARMUP_S MEASURE_S
//
// BASE_URL is http://127.0.0.1:PORT/v1 (loopback, plaintext). The same window, metrics and
// percentile method as nines_llm_bench (calls_per_cpu_s, calls_per_s, added_p50/p99_us,
// to_server/from_server p50/p99_us, wakeups_per_call), as JSON lines with "system": "floor".
// Exit status 1 if a call failed or the server could not be reached.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "nines/core/percentile.hpp"

namespace {

double now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);  // steady_clock's clock: the sim server's x-sim-span-ns
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

long voluntary_switches() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_nvcsw;
}

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "floor: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

void emit(const std::string& metric, double value, const char* unit) {
  std::printf("{\"bench\":\"llm_client\",\"system\":\"floor\",\"metric\":\"%s\",\"value\":%.6g,\"unit\":\"%s\"}\n",
              metric.c_str(), value, unit);
  std::fflush(stdout);
}

// The value of header `name` (lower case, with ": ") in a response head, or empty.
std::string_view header(std::string_view head, std::string_view name) {
  for (std::size_t at = 0; at < head.size();) {
    std::size_t eol = head.find("\r\n", at);
    if (eol == std::string_view::npos) eol = head.size();
    std::string_view line = head.substr(at, eol - at);
    if (line.size() > name.size() + 1 && line[name.size()] == ':' &&
        std::equal(name.begin(), name.end(), line.begin(), [](char a, char b) {
          return a == static_cast<char>(std::tolower(static_cast<unsigned char>(b)));
        })) {
      std::string_view v = line.substr(name.size() + 1);
      while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
      return v;
    }
    at = eol + 2;
  }
  return {};
}

struct Conn {
  int fd = -1;
  double t0 = 0;      // when the request was written
  std::string in;     // what has been read of the current response
  bool busy = false;  // a request is out
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s BASE_URL CONCURRENCY WARMUP_S MEASURE_S\n", argv[0]);
    return 2;
  }
  const std::string base_url = argv[1];
  const int concurrency = std::atoi(argv[2]);
  const double warmup_s = std::atof(argv[3]);
  const double measure_s = std::atof(argv[4]);
  const char* tag = std::getenv("NINES_BENCH_TAG");
  const std::string label =
      "c" + std::to_string(concurrency) + (tag != nullptr && *tag != '\0' ? std::string("_") + tag : "");
  unsigned port = 0;
  if (std::sscanf(base_url.c_str(), "http://127.0.0.1:%u/v1", &port) != 1 || port == 0 || port > 65535 ||
      concurrency < 1 || !(warmup_s > 0) || !(measure_s > 0)) {
    std::fprintf(stderr, "floor: BASE_URL must be http://127.0.0.1:PORT/v1, CONCURRENCY >= 1, times > 0\n");
    return 2;
  }
  // The body nines_llm_bench's transport-only mode sends (what the OpenAI codec builds).
  const std::string body = R"({"model":"sim","messages":[{"role":"system","content":"You are a benchmark."},)"
                           R"({"role":"user","content":"Say hello in a short sentence."}],"max_tokens":64})";
  const std::string request = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                              "\r\nAuthorization: Bearer sk-bench-not-a-key\r\nContent-Type: application/json\r\n"
                              "Content-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body;

  const int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) fail("epoll_create1");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::vector<Conn> conns(static_cast<std::size_t>(concurrency));
  for (std::size_t i = 0; i < conns.size(); ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);  // blocking connect, then non-blocking
    if (fd < 0) fail("socket");
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) fail("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // as libcurl and Node set it
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) fail("epoll_ctl");
    conns[i].fd = fd;
    conns[i].in.reserve(2048);
  }

  const double start = now_ns();
  const double window_start = start + warmup_s * 1e9;
  const double window_end = window_start + measure_s * 1e9;
  auto send_request = [&](Conn& c) {
    c.t0 = now_ns();
    c.busy = true;
    c.in.clear();
    std::size_t sent = 0;
    while (sent < request.size()) {  // a few hundred bytes: the socket's buffer takes them at once
      ssize_t n = ::send(c.fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n < 0) fail("send");
      sent += static_cast<std::size_t>(n);
    }
  };
  for (Conn& c : conns) send_request(c);

  std::vector<double> added, to_server, from_server;
  added.reserve(static_cast<std::size_t>(concurrency) * 4096);
  long completed = 0, failed = 0, in_flight = concurrency;
  double cpu0 = -1, cpu1 = -1;
  long switches0 = 0, switches1 = 0;
  std::vector<epoll_event> events(256);
  char buf[4096];
  while (in_flight > 0) {
    const double t = now_ns();
    if (cpu0 < 0 && t >= window_start) {
      cpu0 = cpu_seconds();
      switches0 = voluntary_switches();
    }
    if (cpu1 < 0 && t >= window_end) {
      cpu1 = cpu_seconds();
      switches1 = voluntary_switches();
    }
    const int timeout_ms = cpu1 < 0 ? 1 + static_cast<int>(((cpu0 < 0 ? window_start : window_end) - t) / 1e6) : 1000;
    const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), timeout_ms);
    if (n < 0 && errno != EINTR) fail("epoll_wait");
    for (int e = 0; e < n; ++e) {
      Conn& c = conns[events[static_cast<std::size_t>(e)].data.u64];
      for (;;) {
        ssize_t r = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (r <= 0) fail("recv (the server closed a connection)");
        c.in.append(buf, static_cast<std::size_t>(r));
      }
      const std::size_t head_end = c.in.find("\r\n\r\n");
      if (!c.busy || head_end == std::string::npos) continue;
      const std::string_view head(c.in.data(), head_end);
      const std::size_t length = std::strtoul(std::string(header(head, "content-length")).c_str(), nullptr, 10);
      if (c.in.size() < head_end + 4 + length) continue;  // the body is not all in yet
      const double t1 = now_ns();
      c.busy = false;
      --in_flight;
      const std::string_view span = header(head, "x-sim-span-ns");
      const std::string_view server_us = header(head, "x-sim-server-us");
      if (head.substr(0, 12) != "HTTP/1.1 200" || span.empty() || server_us.empty()) {
        if (failed++ < 3)
          std::fprintf(stderr, "floor: a bad answer: %.*s\n", static_cast<int>(head.size()), head.data());
      } else {
        if (t1 >= window_start && t1 <= window_end) ++completed;
        if (c.t0 >= window_start && t1 <= window_end) {
          const std::string s(span);
          char* dash = nullptr;
          const double server_start = std::strtod(s.c_str(), &dash);
          const double server_head = std::strtod(dash + 1, nullptr);
          added.push_back((t1 - c.t0) / 1e3 - std::strtod(std::string(server_us).c_str(), nullptr));
          to_server.push_back((server_start - c.t0) / 1e3);
          from_server.push_back((t1 - server_head) / 1e3);
        }
      }
      if (t1 < window_end) {
        send_request(c);
        ++in_flight;
      }
    }
  }
  const double cpu = cpu1 - cpu0;
  std::sort(added.begin(), added.end());
  std::sort(to_server.begin(), to_server.end());
  std::sort(from_server.begin(), from_server.end());
  emit("calls_per_cpu_s_" + label, static_cast<double>(completed) / cpu, "calls/cpu-s");
  emit("calls_per_s_" + label, static_cast<double>(completed) / measure_s, "calls/s");
  emit("added_p50_us_" + label, nines::percentile_of_sorted(added, 50), "us");
  emit("added_p99_us_" + label, nines::percentile_of_sorted(added, 99), "us");
  emit("to_server_p50_us_" + label, nines::percentile_of_sorted(to_server, 50), "us");
  emit("to_server_p99_us_" + label, nines::percentile_of_sorted(to_server, 99), "us");
  emit("from_server_p50_us_" + label, nines::percentile_of_sorted(from_server, 50), "us");
  emit("from_server_p99_us_" + label, nines::percentile_of_sorted(from_server, 99), "us");
  if (completed > 0) {
    emit("wakeups_per_call_" + label, static_cast<double>(switches1 - switches0) / static_cast<double>(completed),
         "per call");
  }
  for (Conn& c : conns) close(c.fd);
  close(ep);
  if (failed > 0) {
    emit("failed_calls_" + label, static_cast<double>(failed), "calls");
    return 1;
  }
  return 0;
}
