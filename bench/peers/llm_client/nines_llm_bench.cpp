// nines side of bench/peers/llm_client: chat calls through the whole nines model path against
// the sim server (an OpenAI-compatible server on loopback, `nines sim-server`).
//
//   nines_llm_bench BASE_URL CONCURRENCY WARMUP_S MEASURE_S [stream:0|1] [workers]
//
// The path: Router (one route: retry 3 attempts, circuit breaker, requests- and
// tokens-per-minute limiters set high enough never to wait, an attempt timeout of 60 s, the
// prompt-size check against the route's window) -> ModelClient (OpenAI codec) -> HttpClient
// (libcurl multi on the environment's event loop) -> the server. A real runtime
// (make_real_environment, `workers` worker threads, default 1, plus the event-loop thread).
// CONCURRENCY processes each make calls one after another, all the time: WARMUP_S seconds of
// warm-up (connections, caches, and the processes' start spread out), then a window of
// MEASURE_S seconds, then they stop. Metrics (JSON lines, metric names end in
// _c<CONCURRENCY>[_stream] like the SDK side's):
//   calls_per_cpu_s   calls completed in the window / CPU seconds of this process in the window
//                     (user + system, all threads: getrusage at both ends)
//   calls_per_s       calls completed in the window / MEASURE_S
//   (latencies: the calls that started and ended inside the window; percentiles by nearest rank,
//   nines/core/percentile.hpp, like the SDK side's)
//   e2e_p50_us, e2e_p99_us         one call as the process sees it (environment clock)
//   server_p50_us, server_p99_us   the server's own time per request, from its /sim/stats
//   added_p50_us, added_p99_us     per call: e2e minus the server's own time for that call (the
//                                  x-sim-server-us header: from its handler being called to its
//                                  response head being sent, injected delay included)
//   to_server_p50_us, to_server_p99_us      the added latency's two parts, per call, on the
//   from_server_p50_us, from_server_p99_us  machine's monotonic clock (the server's
//                                  x-sim-span-ns): from the call's start to the server's handler
//                                  being called (the request built and sent, the server woken
//                                  and parsing it), and from the server's response head to the
//                                  caller running again (the reply written, this side woken,
//                                  reading and parsing it, the caller resumed)
// Per call in the window, what the calls cost this process (so the figures explain
// themselves):
//   wakeups_per_call     voluntary context switches (a thread went to sleep: each sleep is
//                        followed by a wake-up), getrusage
//   involuntary_switches_per_call  preemptions, getrusage
//   syscalls_per_call    system calls of all threads (per-thread perf counters on the
//                        raw_syscalls:sys_enter tracepoint, opened at the window's start;
//                        omitted when tracefs or perf_event_open is not available)
//   allocs_per_call      allocations: operator new (replaced in this program) plus libcurl's
//                        malloc/calloc/realloc/strdup (curl_global_init_mem)
//   curl_allocs_per_call the part of allocs_per_call that is libcurl's
//   minor_faults_per_call  page faults that found the page in memory, getrusage
//   rss_per_call_in_flight_kib  resident memory at the window's start minus before the
//                        calls began, divided by CONCURRENCY (every call in flight then)
//   heap_per_call_in_flight_kib  the same for heap bytes allocated (mallinfo2)
// NINES_LLM_BENCH_TRANSPORT_ONLY=1: the same calls with the HttpClient alone (a prebuilt
// request body, no router, codec or policies; metrics suffixed _http_only), to tell the
// transport's share of the cost from the model path's. NINES_BENCH_TAG=x suffixes every
// metric name with _x. NINES_BENCH_RECEIVE_BUFFER=N sets HttpClientOptions::receive_buffer_bytes
// (for before/after comparisons of memory per call in one build). NINES_BENCH_CA_FILE=PEM trusts
// that bundle (an https BASE_URL with its own certificate), NINES_BENCH_HTTP2=0 keeps HTTP/1.1
// over TLS (HttpClientOptions::http2 = false). NINES_BENCH_DIST=1 prints the
// added latency's distribution (p10 to p99.9, with its two parts) to stderr.
// Exit status 1 if any call failed or the server could not be reached.
#include <curl/curl.h>
#include <dirent.h>
#include <linux/perf_event.h>
#include <malloc.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nines/core/percentile.hpp"
#include "nines/llm/provider.hpp"
#include "nines/llm/router.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/runtime.hpp"
#include "peers/bench_json.hpp"

using namespace nines;
using namespace std::chrono_literals;

// ---- allocation counting: operator new (this program) and libcurl's allocator
std::atomic<std::uint64_t> g_allocs{0};
std::atomic<std::uint64_t> g_curl_allocs{0};  // the part of g_allocs that is libcurl's

namespace {

void* curl_malloc_counted(size_t n) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  g_curl_allocs.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n);
}
void curl_free_counted(void* p) { std::free(p); }
void* curl_realloc_counted(void* p, size_t n) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  g_curl_allocs.fetch_add(1, std::memory_order_relaxed);
  return std::realloc(p, n);
}
char* curl_strdup_counted(const char* s) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  g_curl_allocs.fetch_add(1, std::memory_order_relaxed);
  return strdup(s);
}
void* curl_calloc_counted(size_t n, size_t size) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  g_curl_allocs.fetch_add(1, std::memory_order_relaxed);
  return std::calloc(n, size);
}

}  // namespace

// GCC sees free() meet operator new's pointer; they are the pair defined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

// System calls of every thread of this process from now on: a perf counter per thread on the
// raw_syscalls:sys_enter tracepoint. Threads started later are not counted (the runtime's and
// the environment's threads all exist before the window).
class SyscallCounter {
 public:
  SyscallCounter() {
    std::ifstream id_file("/sys/kernel/tracing/events/raw_syscalls/sys_enter/id");
    std::uint64_t id = 0;
    if (!(id_file >> id)) return;
    DIR* d = opendir("/proc/self/task");
    if (d == nullptr) return;
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      perf_event_attr attr{};
      attr.type = PERF_TYPE_TRACEPOINT;
      attr.size = sizeof attr;
      attr.config = id;
      attr.exclude_hv = 1;
      int fd = static_cast<int>(syscall(SYS_perf_event_open, &attr, std::atoi(e->d_name), -1, -1, 0));
      if (fd < 0) {
        ok_ = false;
        break;
      }
      fds_.push_back(fd);
    }
    closedir(d);
    ok_ = ok_ && !fds_.empty();
  }
  ~SyscallCounter() {
    for (int fd : fds_) close(fd);
  }
  // Total so far; -1 if unavailable.
  double read() const {
    if (!ok_) return -1;
    std::uint64_t total = 0;
    for (int fd : fds_) {
      std::uint64_t v = 0;
      if (::read(fd, &v, sizeof v) != sizeof v) return -1;
      total += v;
    }
    return static_cast<double>(total);
  }

 private:
  bool ok_ = true;
  std::vector<int> fds_;
};

// What the window cost: context switches, page faults, allocations, system calls.
struct CostSample {
  double voluntary = 0, involuntary = 0, minor_faults = 0, allocs = 0, curl_allocs = 0, syscalls = -1;
  static CostSample take(const SyscallCounter* sys) {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return {static_cast<double>(u.ru_nvcsw),
            static_cast<double>(u.ru_nivcsw),
            static_cast<double>(u.ru_minflt),
            static_cast<double>(g_allocs.load(std::memory_order_relaxed)),
            static_cast<double>(g_curl_allocs.load(std::memory_order_relaxed)),
            sys != nullptr ? sys->read() : -1};
  }
};

// Heap bytes allocated (every arena, mmapped chunks included).
std::size_t heap_in_use() {
  struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}
std::size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// A number of the server's /sim/stats answer (a JSON object); -1 when it is not there, which the
// metric then shows.
double stats_number(const nlohmann::json& stats, const char* name) {
  if (!stats.is_object()) return -1;
  auto it = stats.find(name);
  return it != stats.end() && it->is_number() ? it->get<double>() : -1;
}

// One call's figures, in microseconds.
struct Sample {
  double e2e_us = 0, added_us = 0, to_server_us = 0, from_server_us = 0;
  bool has_span = false;  // to_server_us and from_server_us are set
};

// What the sim server says of a call: its own time (x-sim-server-us) and the two ends of it on
// the monotonic clock ctx.now() reads too (x-sim-span-ns: "START-END").
struct ServerTiming {
  std::int64_t server_us = -1;  // -1: the header was missing or not a number
  std::int64_t start_ns = 0, head_ns = 0;

  static ServerTiming of(std::optional<std::string_view> server_us, std::optional<std::string_view> span) {
    ServerTiming t;
    auto number = [](std::string_view text, std::int64_t& out) {
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
      return ec == std::errc() && end == text.data() + text.size();
    };
    if (!server_us || !number(*server_us, t.server_us)) t.server_us = -1;
    const std::size_t dash = span ? span->find('-') : std::string_view::npos;
    if (dash == std::string_view::npos || !number(span->substr(0, dash), t.start_ns) ||
        !number(span->substr(dash + 1), t.head_ns)) {
      t.start_ns = t.head_ns = 0;
    }
    return t;
  }

  Sample sample(TimePoint t0, TimePoint t1) const {
    Sample x;
    x.e2e_us = static_cast<double>((t1 - t0).count()) / 1e3;
    x.added_us = x.e2e_us - static_cast<double>(server_us);
    x.has_span = head_ns > 0;
    if (x.has_span) {
      x.to_server_us = static_cast<double>(start_ns - t0.time_since_epoch().count()) / 1e3;
      x.from_server_us = static_cast<double>(t1.time_since_epoch().count() - head_ns) / 1e3;
    }
    return x;
  }
};

struct Bench {
  Environment& env;
  Runtime& rt;
  net::HttpClient& http;
  llm::Router& router;
  bool stream = false;
  bool transport_only = false;  // NINES_LLM_BENCH_TRANSPORT_ONLY=1: HttpClient alone, no llm layer
  std::string base_url;
  std::atomic<std::int64_t> failed{0};
  std::mutex mu;
  std::vector<double> latencies_us;
  std::vector<double> added_us;                      // e2e minus the server's own time (its x-sim-server-us), per call
  std::vector<double> to_server_us, from_server_us;  // its two parts (x-sim-span-ns), per call

  TimePoint window_start, window_end;
  std::atomic<std::int64_t> completed_in_window{0};

  // The request of the transport-only mode: the body the openai codec would build.
  net::HttpRequest raw_request() const {
    net::HttpRequest hreq;
    hreq.method = "POST";
    hreq.url = base_url + "/chat/completions";
    hreq.headers.add("Content-Type", "application/json");
    hreq.body = R"({"model":"sim","messages":[{"role":"system","content":"You are a benchmark."},)"
                R"({"role":"user","content":"Say hello in a short sentence."}],"max_tokens":64})";
    return hreq;
  }

  // `concurrency` processes make calls until window_end; returns when all ended.
  void run(int concurrency) {
    std::vector<std::shared_ptr<ExitWatch>> exits;
    for (int i = 0; i < concurrency; ++i) {
      auto w = rt.spawn_watched([this](Context& ctx) -> Task<> {
        std::vector<Sample> mine;
        llm::ChatRequest req;
        req.model = "sim";
        req.messages = {llm::Message::system("You are a benchmark."),
                        llm::Message::user("Say hello in a short sentence.")};
        req.max_output_tokens = 64;
        req.stream = stream;
        llm::Router::StreamHooks hooks{.on_text = [](std::string_view) {}};
        // This frame is the caller's part of the memory of a call in flight (the c10000 row):
        // it holds the caller's request and its own figures, and reads each response where
        // the call's task left it (a named task, no copy here); the transport-only request is
        // built by a function, not kept in the frame; the server's timing headers are read
        // into numbers at once.
        for (TimePoint t0 = ctx.now(); t0 < window_end; t0 = ctx.now()) {
          ServerTiming timing;
          std::string failure;
          if (transport_only) {
            Task<Result<net::HttpResponse>> requesting = http.request(ctx, raw_request());
            Result<net::HttpResponse>&& r = co_await requesting;
            if (!r.ok()) {
              failure = r.error().to_string();
            } else if (r->status != 200) {
              failure = "status " + std::to_string(r->status);
            } else {
              timing = ServerTiming::of(r->headers.get("x-sim-server-us"), r->headers.get("x-sim-span-ns"));
            }
          } else {
            Task<Result<llm::RoutedResponse>> routing = router.route(ctx, req, hooks);
            Result<llm::RoutedResponse>&& r = co_await routing;
            if (!r.ok()) {
              failure = r.error().to_string();
            } else if (r->response.message.text().empty()) {
              failure = "empty answer";
            } else {
              timing = ServerTiming::of(llm::find_header(r->response.headers, "x-sim-server-us"),
                                        llm::find_header(r->response.headers, "x-sim-span-ns"));
            }
          }
          const TimePoint t1 = ctx.now();
          if (!failure.empty() || timing.server_us < 0) {
            if (failed.fetch_add(1) < 3) {
              std::fprintf(stderr, "nines: call failed: %s\n",
                           failure.empty() ? "a reply without x-sim-server-us" : failure.c_str());
            }
            continue;
          }
          if (t1 >= window_start && t1 <= window_end) completed_in_window.fetch_add(1, std::memory_order_relaxed);
          if (t0 < window_start || t1 > window_end) continue;
          mine.push_back(timing.sample(t0, t1));
        }
        std::lock_guard lock(mu);
        for (const Sample& x : mine) {
          latencies_us.push_back(x.e2e_us);
          added_us.push_back(x.added_us);
          if (x.has_span) {
            to_server_us.push_back(x.to_server_us);
            from_server_us.push_back(x.from_server_us);
          }
        }
      });
      if (!w.ok()) {
        std::fprintf(stderr, "nines: spawn failed: %s\n", w.error().to_string().c_str());
        std::exit(1);
      }
      exits.push_back(std::move(w->exit));
    }
    for (auto& e : exits) e->wait();
  }

  // GET or POST on the server's root (the base URL without /v1); the body.
  std::string admin(const std::string& root, const std::string& method, const std::string& path) {
    std::string body;
    auto w = rt.spawn_watched([&](Context& ctx) -> Task<> {
                 net::HttpRequest req;
                 req.method = method;
                 req.url = root + path;
                 Result<net::HttpResponse> r = co_await http.request(ctx, std::move(req));
                 if (r.ok() && r->status == 200) body = r->body;
               }).value();
    w.exit->wait();
    return body;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s BASE_URL CONCURRENCY WARMUP_S MEASURE_S [stream:0|1] [workers]\n", argv[0]);
    return 2;
  }
  const std::string base_url = argv[1];
  const int concurrency = std::atoi(argv[2]);
  const double warmup_s = std::atof(argv[3]);
  const double measure_s = std::atof(argv[4]);
  const bool stream = argc > 5 && std::string(argv[5]) == "1";
  const unsigned workers = argc > 6 ? static_cast<unsigned>(std::atoi(argv[6])) : 1;
  if (concurrency < 1 || !(warmup_s > 0) || !(measure_s > 0) || workers < 1) {
    std::fprintf(stderr, "CONCURRENCY and workers must be >= 1, WARMUP_S and MEASURE_S > 0\n");
    return 2;
  }
  const std::string root = base_url.substr(0, base_url.rfind("/v1"));
  const char* tag = std::getenv("NINES_BENCH_TAG");  // a suffix for the metric names
  const char* transport = std::getenv("NINES_LLM_BENCH_TRANSPORT_ONLY");
  const std::string label = "c" + std::to_string(concurrency) + (stream ? "_stream" : "") +
                            (transport != nullptr && std::string(transport) == "1" ? "_http_only" : "") +
                            (tag != nullptr && *tag != '\0' ? std::string("_") + tag : "");

  if (curl_global_init_mem(CURL_GLOBAL_DEFAULT, curl_malloc_counted, curl_free_counted, curl_realloc_counted,
                           curl_strdup_counted, curl_calloc_counted) != CURLE_OK) {
    std::fprintf(stderr, "nines: curl_global_init_mem failed\n");
    return 1;
  }
  auto env = make_real_environment({.workers = workers, .seed = 1});
  // NINES_BENCH_NO_WORKER_POLL=1: the loop thread alone runs event callbacks
  // (RuntimeOptions::poll_in_workers = false), for a before/after comparison in one build.
  auto rt = Runtime::create(*env, {.poll_in_workers = std::getenv("NINES_BENCH_NO_WORKER_POLL") == nullptr}).value();
  net::HttpClientOptions http_options;
  http_options.proxy = "";
  http_options.max_in_flight = static_cast<std::size_t>(concurrency) * 2 + 16;
  // NINES_BENCH_RECEIVE_BUFFER=N: HttpClientOptions::receive_buffer_bytes (an A/B switch).
  if (const char* rb = std::getenv("NINES_BENCH_RECEIVE_BUFFER")) {
    http_options.receive_buffer_bytes = static_cast<std::size_t>(std::atol(rb));
  }
  // NINES_BENCH_CA_FILE=PEM: trust this bundle (a TLS server with its own certificate);
  // NINES_BENCH_HTTP2=0: HTTP/1.1 over TLS too (HttpClientOptions::http2 = false).
  if (const char* ca = std::getenv("NINES_BENCH_CA_FILE")) http_options.ca_file = ca;
  if (const char* h2 = std::getenv("NINES_BENCH_HTTP2")) http_options.http2 = std::string(h2) != "0";
  auto http = net::HttpClient::create(*env, std::move(http_options)).value();
  llm::ProviderConfig provider{
      .name = "sim", .api = llm::Provider::kOpenAi, .base_url = base_url, .api_key = "sk-bench-not-a-key"};
  auto model = llm::make_provider(provider, *http);
  if (!model.ok()) {
    std::fprintf(stderr, "nines: %s\n", model.error().to_string().c_str());
    return 1;
  }
  llm::ModelRouteOptions route;
  route.name = "sim";
  route.model = "sim";
  route.client = *model;
  route.context_window_tokens = 128000;
  route.max_output_tokens = 64;
  route.requests_per_minute = 100'000'000;
  route.tokens_per_minute = 1'000'000'000'000;
  route.attempt_timeout = 60s;
  auto router = llm::Router::create(*env, llm::RouterOptions{.name = "bench", .chain = {route}});
  if (!router.ok()) {
    std::fprintf(stderr, "nines: %s\n", router.error().to_string().c_str());
    return 1;
  }

  const char* transport_env = std::getenv("NINES_LLM_BENCH_TRANSPORT_ONLY");
  const bool transport_only = transport_env != nullptr && std::string(transport_env) == "1";
  Bench b{.env = *env,
          .rt = *rt,
          .http = *http,
          .router = **router,
          .stream = stream,
          .transport_only = transport_only,
          .base_url = base_url};
  auto seconds = [](double s) { return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s)); };
  b.window_start = env->now() + seconds(warmup_s);
  b.window_end = b.window_start + seconds(measure_s);
  // The window's two ends: reset the server's stats and read the CPU clock.
  double cpu0 = 0, cpu1 = 0;
  const std::size_t rss_before = resident_bytes();
  const std::size_t heap_before = heap_in_use();
  std::size_t heap_window = 0;
  std::size_t rss_window = 0;
  CostSample cost0, cost1;
  std::unique_ptr<SyscallCounter> syscalls;
  std::string stats;
  auto sampler = rt->spawn_watched([&](Context& ctx) -> Task<> {
                     (void)co_await ctx.sleep(b.window_start - ctx.now());
                     rss_window = resident_bytes();
                     heap_window = heap_in_use();
                     syscalls = std::make_unique<SyscallCounter>();
                     cost0 = CostSample::take(syscalls.get());
                     cpu0 = cpu_seconds();
                     net::HttpRequest reset;
                     reset.method = "POST";
                     reset.url = root + "/sim/stats/reset";
                     (void)co_await http->request(ctx, std::move(reset));
                     (void)co_await ctx.sleep(b.window_end - ctx.now());
                     cpu1 = cpu_seconds();
                     cost1 = CostSample::take(syscalls.get());
                   }).value();
  b.run(concurrency);
  sampler.exit->wait();
  const double cpu = cpu1 - cpu0;
  stats = b.admin(root, "GET", "/sim/stats");
  std::sort(b.latencies_us.begin(), b.latencies_us.end());
  std::sort(b.added_us.begin(), b.added_us.end());
  std::sort(b.to_server_us.begin(), b.to_server_us.end());
  std::sort(b.from_server_us.begin(), b.from_server_us.end());
  const double ok = static_cast<double>(b.completed_in_window.load());
  const nlohmann::json stats_json = nlohmann::json::parse(stats, nullptr, /*allow_exceptions=*/false);
  if (!stats_json.is_object()) {
    std::fprintf(stderr, "nines: /sim/stats did not answer a JSON object: '%s'\n", stats.c_str());
  }
  const double server_p50 = stats_number(stats_json, "latency_p50_us");
  const double server_p99 = stats_number(stats_json, "latency_p99_us");
  auto emit = [&](const std::string& metric, double value, const char* unit) {
    bench::emit("llm_client", (metric + "_" + label).c_str(), value, unit);
  };
  emit("calls_per_cpu_s", ok / cpu, "calls/cpu-s");
  emit("calls_per_s", ok / measure_s, "calls/s");
  emit("e2e_p50_us", percentile_of_sorted(b.latencies_us, 50), "us");
  emit("e2e_p99_us", percentile_of_sorted(b.latencies_us, 99), "us");
  emit("server_p50_us", server_p50, "us");
  emit("server_p99_us", server_p99, "us");
  emit("added_p50_us", percentile_of_sorted(b.added_us, 50), "us");
  emit("added_p99_us", percentile_of_sorted(b.added_us, 99), "us");
  if (std::getenv("NINES_BENCH_DIST") != nullptr) {  // the distributions, not just p50/p99
    for (double p : {10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.0, 98.0, 99.0, 99.5, 99.9}) {
      std::fprintf(stderr, "p%.1f to %.0f from %.0f added %.0f\n", p, percentile_of_sorted(b.to_server_us, p),
                   percentile_of_sorted(b.from_server_us, p), percentile_of_sorted(b.added_us, p));
    }
  }
  if (!b.to_server_us.empty()) {  // a sim server that sends x-sim-span-ns
    emit("to_server_p50_us", percentile_of_sorted(b.to_server_us, 50), "us");
    emit("to_server_p99_us", percentile_of_sorted(b.to_server_us, 99), "us");
    emit("from_server_p50_us", percentile_of_sorted(b.from_server_us, 50), "us");
    emit("from_server_p99_us", percentile_of_sorted(b.from_server_us, 99), "us");
  }
  if (ok > 0) {
    emit("wakeups_per_call", (cost1.voluntary - cost0.voluntary) / ok, "per call");
    emit("involuntary_switches_per_call", (cost1.involuntary - cost0.involuntary) / ok, "per call");
    if (cost0.syscalls >= 0 && cost1.syscalls >= 0) {
      emit("syscalls_per_call", (cost1.syscalls - cost0.syscalls) / ok, "per call");
    }
    emit("allocs_per_call", (cost1.allocs - cost0.allocs) / ok, "per call");
    emit("curl_allocs_per_call", (cost1.curl_allocs - cost0.curl_allocs) / ok, "per call");
    emit("minor_faults_per_call", (cost1.minor_faults - cost0.minor_faults) / ok, "per call");
  }
  emit("heap_per_call_in_flight_kib",
       (static_cast<double>(heap_window) - static_cast<double>(heap_before)) / 1024.0 / concurrency, "KiB");
  emit("rss_per_call_in_flight_kib",
       (static_cast<double>(rss_window) - static_cast<double>(rss_before)) / 1024.0 / concurrency, "KiB");
  if (b.failed > 0) {
    emit("failed_calls", static_cast<double>(b.failed), "calls");
    return 1;
  }
  router->reset();
  model->reset();
  http.reset();
  return 0;
}
