// Requests per second of net::HttpServer on loopback, driven by net::HttpClient.
//
//   nines_http_server_bench REQUESTS CONNECTIONS [shared|raw]
//
// C processes (C = CONNECTIONS) on a two-worker runtime each make REQUESTS / C sequential
// GETs through one HttpClient (max_connections = C, so every process keeps one keep-alive
// connection busy: C concurrent requests at all times). The handler answers at once with a
// 13-byte body. One warm-up round (a request per process) opens the connections before the
// clock starts. The server runs on its own RealEnvironment (its own loop thread); with
// `shared` it shares the client's environment, so one loop thread runs both ends.
// `raw` replaces the HttpClient by a minimal client on the main thread (C blocking-free
// sockets under poll(2), one request in flight per connection, a fixed request, the response
// recognised by its known length), to show the server's own capacity: libcurl and the
// runtime cost more per request than the server does.
// Prints one JSON line per metric: {"bench","system":"nines","metric","value","unit"}.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "nines/net/http_client.hpp"
#include "nines/net/http_server.hpp"
#include "nines/runtime/runtime.hpp"
#include "peers/bench_json.hpp"

using namespace nines;

namespace {

template <class T>
T must(Result<T> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "nines_http_server_bench: %s: %s\n", what, r.error().to_string().c_str());
    std::exit(1);
  }
  return std::move(*r);
}

// Runs `per_process` requests in each of `procs` processes; returns how many failed.
int run_round(Runtime& rt, net::HttpClient& client, const std::string& url, int procs, int per_process) {
  std::atomic<int> failed{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  watches.reserve(static_cast<std::size_t>(procs));
  for (int p = 0; p < procs; ++p) {
    watches.push_back(must(rt.spawn_watched([&, per_process](Context& ctx) -> Task<> {
                        for (int i = 0; i < per_process; ++i) {
                          net::HttpRequest req;
                          req.url = url;
                          auto r = co_await client.request(ctx, std::move(req));
                          if (!r.ok() || r->status != 200) ++failed;
                        }
                      }),
                           "spawn")
                          .exit);
  }
  for (auto& w : watches) w->wait();
  return failed.load();
}

// The raw client: C connections, each sending the next request once the whole previous
// response is in. Returns the seconds taken for `per_conn` requests on each, or < 0 on error.
double run_raw(Environment& env, std::uint16_t port, int conns, long per_conn) {
  static constexpr std::string_view kRequest = "GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n";
  std::vector<pollfd> fds(static_cast<std::size_t>(conns));
  for (auto& p : fds) {
    p.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (::connect(p.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return -1;
    int one = 1;
    ::setsockopt(p.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    p.events = POLLIN;
  }
  // The response's length, from one exchange.
  std::string first;
  if (::send(fds[0].fd, kRequest.data(), kRequest.size(), 0) != static_cast<ssize_t>(kRequest.size())) return -1;
  char buf[4096];
  while (first.find("\r\n\r\n") == std::string::npos || !first.ends_with("bench\n")) {
    ssize_t n = ::recv(fds[0].fd, buf, sizeof buf, 0);
    if (n <= 0) return -1;
    first.append(buf, static_cast<std::size_t>(n));
  }
  std::size_t response_size = first.size();
  std::vector<long> done(fds.size(), 0);
  std::vector<std::size_t> got(fds.size(), 0);
  TimePoint t0 = env.now();
  for (auto& p : fds) {
    if (::send(p.fd, kRequest.data(), kRequest.size(), 0) != static_cast<ssize_t>(kRequest.size())) return -1;
  }
  long open = conns;
  while (open > 0) {
    if (::poll(fds.data(), fds.size(), 10'000) <= 0) return -1;
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if ((fds[i].revents & POLLIN) == 0) continue;
      ssize_t n = ::recv(fds[i].fd, buf, sizeof buf, 0);
      if (n <= 0) return -1;
      got[i] += static_cast<std::size_t>(n);
      while (got[i] >= response_size) {
        got[i] -= response_size;
        if (++done[i] == per_conn) {
          fds[i].events = 0;
          --open;
        } else if (::send(fds[i].fd, kRequest.data(), kRequest.size(), 0) != static_cast<ssize_t>(kRequest.size())) {
          return -1;
        }
      }
    }
  }
  double seconds = to_seconds(env.now() - t0);
  for (auto& p : fds) ::close(p.fd);
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  long requests = argc > 1 ? std::atol(argv[1]) : 0;
  long connections = argc > 2 ? std::atol(argv[2]) : 0;
  bool shared = argc > 3 && std::strcmp(argv[3], "shared") == 0;
  bool raw = argc > 3 && std::strcmp(argv[3], "raw") == 0;
  if (requests <= 0 || connections <= 0 || requests < connections) {
    std::fprintf(stderr,
                 "usage: nines_http_server_bench REQUESTS CONNECTIONS [shared|raw] (REQUESTS >= CONNECTIONS > 0)\n");
    return 2;
  }
  auto client_env = make_real_environment({.workers = 2, .seed = 1});
  std::unique_ptr<Environment> own_server_env;
  if (!shared) own_server_env = make_real_environment({.workers = 1, .seed = 2});
  Environment& server_env = shared ? *client_env : *own_server_env;

  auto server =
      must(net::HttpServer::create(server_env, {.max_connections = static_cast<std::size_t>(connections) + 16},
                                   [](net::HttpServerRequest&&, net::HttpResponder r) {
                                     net::HttpHeaders h{{"Content-Type", "text/plain"}};
                                     (void)r.respond(200, std::move(h), "hello, bench\n");
                                   }),
           "server");
  if (raw) {
    double seconds = run_raw(*client_env, server->port(), static_cast<int>(connections), requests / connections);
    if (seconds <= 0) {
      std::fprintf(stderr, "nines_http_server_bench: the raw client failed\n");
      return 1;
    }
    double total = static_cast<double>(requests / connections * connections);
    nines::bench::emit("http_server_raw_client", "requests_per_s", total / seconds, "req/s");
    nines::bench::emit("http_server_raw_client", "mean_latency_us",
                       seconds / static_cast<double>(requests / connections) * 1e6, "us");
    nines::bench::emit("http_server_raw_client", "connections_accepted",
                       static_cast<double>(server->stats().connections_accepted), "count");
    return 0;
  }
  auto rt = must(Runtime::create(*client_env, {.workers = 2}), "runtime");
  auto client = must(
      net::HttpClient::create(*client_env, {.max_connections = static_cast<std::size_t>(connections), .proxy = ""}),
      "client");
  std::string url = server->base_url() + "/bench";
  int procs = static_cast<int>(connections);
  int per_process = static_cast<int>(requests / connections);

  if (run_round(*rt, *client, url, procs, 1) != 0) {
    std::fprintf(stderr, "nines_http_server_bench: warm-up requests failed\n");
    return 1;
  }
  TimePoint t0 = client_env->now();
  int failed = run_round(*rt, *client, url, procs, per_process);
  double seconds = to_seconds(client_env->now() - t0);
  if (failed != 0) {
    std::fprintf(stderr, "nines_http_server_bench: %d requests failed\n", failed);
    return 1;
  }
  double total = static_cast<double>(procs) * per_process;
  const char* bench = shared ? "http_server_shared_loop" : "http_server";
  nines::bench::emit(bench, "requests_per_s", total / seconds, "req/s");
  nines::bench::emit(bench, "mean_latency_us", seconds / per_process * 1e6, "us");
  nines::bench::emit(bench, "connections_accepted", static_cast<double>(server->stats().connections_accepted), "count");
  client.reset();
  server.reset();
  return 0;
}
