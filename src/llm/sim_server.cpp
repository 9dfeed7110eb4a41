// The sim served over HTTP: see include/nines/llm/sim_server.hpp.
#include "nines/llm/sim_server.hpp"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

#include "nines/core/percentile.hpp"

namespace nines::llm {

struct SimServer::State {
  Environment& env;
  std::shared_ptr<SimModel> sim;
  std::size_t max_samples;
  mutable std::mutex mu;
  std::vector<Duration> samples;  // a ring of the last max_samples latencies
  std::size_t next = 0;           // where the next sample goes once the ring is full
  std::uint64_t requests = 0;
  std::atomic<std::uint64_t> in_flight{0};  // Playbacks alive (see SimServerStats::in_flight)

  State(Environment& e, std::shared_ptr<SimModel> s, std::size_t max) : env(e), sim(std::move(s)), max_samples(max) {}

  SimServerStats stats() const {
    std::vector<Duration> v;
    SimServerStats s;
    {
      std::lock_guard lock(mu);
      v = samples;
      s.requests = requests;
    }
    s.in_flight = in_flight.load(std::memory_order_relaxed);
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    // The method the benchmarks use for their own side (bench/peers/llm_client compares them).
    s.latency_p50 = percentile_of_sorted(v, 50);
    s.latency_p99 = percentile_of_sorted(v, 99);
    s.latency_max = v.back();
    return s;
  }

  void reset() {
    std::lock_guard lock(mu);
    samples.clear();
    next = 0;
    requests = 0;
  }

  void record(Duration d) {
    std::lock_guard lock(mu);
    ++requests;
    if (samples.size() < max_samples) {
      samples.push_back(d);
    } else {
      samples[next] = d;
      next = (next + 1) % max_samples;
    }
  }
};

namespace {

using StatePtr = std::shared_ptr<SimServer::State>;

// The reply's headers for the responder: the server frames bodies itself.
net::HttpHeaders to_net(const Headers& headers) {
  net::HttpHeaders out;
  for (const Header& h : headers) {
    std::string lower = h.name;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    if (lower == "content-length" || lower == "transfer-encoding" || lower == "connection") continue;
    out.add(h.name, h.value);
  }
  return out;
}

// A stream's bytes the client has not read (held by the server, beyond the kernel's buffer)
// before the next chunks due at once wait for it, and how long they wait each time.
constexpr std::size_t kMaxUnread = 64u << 10;
constexpr Duration kDrainWait = std::chrono::milliseconds(1);

// Plays one reply back; `start` is when the handler got the request.
struct Playback : std::enable_shared_from_this<Playback> {
  StatePtr state;
  net::HttpResponder responder;
  SimHttpReply reply;
  TimePoint start;
  std::size_t next_chunk = 0;

  explicit Playback(StatePtr s) : state(std::move(s)) { state->in_flight.fetch_add(1, std::memory_order_relaxed); }
  ~Playback() { state->in_flight.fetch_sub(1, std::memory_order_relaxed); }
  Playback(const Playback&) = delete;
  Playback& operator=(const Playback&) = delete;

  void after(Duration d, void (Playback::*step)()) {
    if (d <= Duration::zero()) {
      (this->*step)();
      return;
    }
    later(d, step);
  }

  // On a timer, even for d == 0 (the loop's next turn).
  void later(Duration d, void (Playback::*step)()) {
    auto self = shared_from_this();
    state->env.add_timer(state->env.now() + d, [self, step] { (self.get()->*step)(); });
  }

  void begin() {
    if (reply.end == SimReplyEnd::kHang) {
      after(reply.first_byte_delay + reply.hang, &Playback::hang_up);
      return;
    }
    after(reply.first_byte_delay, &Playback::send_head);
  }

  void hang_up() {
    responder.abort();
    done();
  }

  // The server's own time so far, for clients that measure their added latency; and the two
  // ends of it on the environment's clock (steady_clock on a real environment: the same clock
  // as any other process on this machine), for clients that split theirs into the way to the
  // server and the way back.
  net::HttpHeaders head() const {
    net::HttpHeaders h = to_net(reply.headers);
    const TimePoint now = state->env.now();
    h.add("x-sim-server-us",
          std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(now - start).count()));
    h.add("x-sim-span-ns",
          std::to_string(start.time_since_epoch().count()) + "-" + std::to_string(now.time_since_epoch().count()));
    return h;
  }

  void send_head() {
    if (!reply.stream) {
      Status s = responder.respond(reply.status, head(), std::move(reply.body));
      (void)s;  // the client may be gone: nothing to do then
      done();
      return;
    }
    if (!responder.start_stream(reply.status, head()).ok()) return;
    send_chunk();
  }

  // Chunks due at once are written in a loop (not a call per chunk: the stack stays flat
  // however long the stream), until the client has kMaxUnread bytes to read; then the rest
  // waits for it to read them (kDrainWait), as a server streaming a real model would.
  void send_chunk() {
    while (next_chunk < reply.chunks.size()) {
      if (!responder.write(reply.chunks[next_chunk]).ok()) return;
      ++next_chunk;
      if (next_chunk == reply.chunks.size()) break;
      const Duration delay = next_chunk < reply.chunk_delays.size() ? reply.chunk_delays[next_chunk] : Duration::zero();
      if (delay > Duration::zero()) {
        later(delay, &Playback::send_chunk);
        return;
      }
      if (responder.buffered_bytes() > kMaxUnread) {
        later(kDrainWait, &Playback::send_chunk);
        return;
      }
    }
    if (reply.end == SimReplyEnd::kAbort) {
      responder.abort();
    } else {
      (void)responder.end();
    }
    done();
  }

  void done() { state->record(state->env.now() - start); }
};

std::string stats_json(const SimServer::State& state) {
  SimServerStats s = state.stats();
  auto us = [](Duration d) { return std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(d).count()); };
  std::string out = "{\"requests\": " + std::to_string(s.requests) + ", \"in_flight\": " + std::to_string(s.in_flight) +
                    ", \"latency_p50_us\": " + us(s.latency_p50) + ", \"latency_p99_us\": " + us(s.latency_p99) +
                    ", \"latency_max_us\": " + us(s.latency_max) + ", \"faults\": {";
  SimCounters c = state.sim->counters();
  for (std::size_t i = 0; i < kSimFaultCount; ++i) {
    if (i > 0) out += ", ";
    // Appended piece by piece: "\"" + std::string(...) made g++ 12.2 at -O3 report a false
    // -Wrestrict (operator+(const char*, std::string&&) with a one-character literal).
    out.append("\"").append(to_string(static_cast<SimFault>(i))).append("\": ").append(std::to_string(c.faults[i]));
  }
  out += "}}\n";
  return out;
}

}  // namespace

Result<std::unique_ptr<SimServer>> SimServer::start(Environment& env, std::shared_ptr<SimModel> sim,
                                                    SimServerOptions options) {
  if (!sim) return Error(ErrorKind::kInvalidArgument, "sim server: no sim model");
  if (options.max_latency_samples == 0) {
    return Error(ErrorKind::kInvalidArgument, "sim server: max_latency_samples must be >= 1");
  }
  auto state = std::make_shared<State>(env, std::move(sim), options.max_latency_samples);
  // The handler reads the shared state only: it runs on the loop thread from the moment the
  // server listens, before start() returns.
  net::HttpHandler handler = [state](net::HttpServerRequest&& req, net::HttpResponder responder) {
    const std::string_view path = req.path();
    if (path == "/sim/stats" || path == "/sim/stats/reset") {
      net::HttpHeaders h{{"Content-Type", "application/json"}};
      if (path == "/sim/stats" && req.method == "GET") {
        (void)responder.respond(200, h, stats_json(*state));
      } else if (path == "/sim/stats/reset" && req.method == "POST") {
        state->reset();
        (void)responder.respond(200, h, "{\"reset\": true}\n");
      } else {
        (void)responder.respond(405, h, "{\"error\": \"method not allowed\"}\n");
      }
      return;
    }
    auto play = std::make_shared<Playback>(state);
    play->responder = std::move(responder);
    play->start = state->env.now();
    play->reply = state->sim->handle_http(req.method, req.target, req.body);
    play->begin();
  };
  net::HttpServerOptions http_options;
  http_options.bind_address = options.bind_address;
  http_options.port = options.port;
  http_options.max_connections = options.max_connections;
  http_options.max_body_bytes = options.max_body_bytes;
  Result<std::unique_ptr<net::HttpServer>> http = net::HttpServer::create(env, http_options, std::move(handler));
  if (!http.ok()) return http.error().with_context("sim server");
  return std::unique_ptr<SimServer>(new SimServer(state, std::move(http).value()));
}

SimServer::SimServer(std::shared_ptr<State> state, std::unique_ptr<net::HttpServer> http)
    : state_(std::move(state)), http_(std::move(http)) {}

SimServer::~SimServer() { stop(); }

std::uint16_t SimServer::port() const { return http_->port(); }
std::string SimServer::base_url() const { return http_->base_url() + "/v1"; }
SimModel& SimServer::sim() const { return *state_->sim; }
net::HttpServerStats SimServer::http_stats() const { return http_->stats(); }
void SimServer::stop() { http_->stop(); }

SimServerStats SimServer::stats() const { return state_->stats(); }

void SimServer::reset_stats() { state_->reset(); }

}  // namespace nines::llm
