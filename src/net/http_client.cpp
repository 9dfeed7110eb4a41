// The HTTP client: libcurl's multi interface on the environment's event loop.
//
// Threads. Every curl call (easy setup, add/remove, socket_action, pause, cleanup) runs while
// one thread holds the core (HttpCore::busy_), on whichever thread needs it: an entry point
// queues its operation and, if nobody holds the core, takes it and runs every queued
// operation (flat combining; HttpCore::run). So a process's worker thread usually starts its
// request itself (it is on the wire before the process waits, with no hand-off to another
// thread), the loop thread reads responses when a socket is ready and runs the timers, and no
// thread ever sleeps waiting for another to leave curl. A call therefore wakes one other
// thread (the response wakes the process) instead of the loop as well. curl's socket
// callback becomes env.watch_fd_rearmable (one registration per connection socket, re-armed
// after each event and kept between requests), its timer callback becomes env.add_timer, except that "time out
// now" (curl asks for it after every new transfer) runs at once, before the core is
// released. Processes whose transfers finished are woken after the core is released (the
// woken process may call in at once). A Transfer's fields shared with the requesting process
// are under Transfer::mu; the rest belong to the core's holder.
//
// Stale callbacks. The real environment takes a ready watch's or due timer's callback for
// running before it runs it, so a cancel from another thread or from an earlier callback of
// the same loop iteration can come too late; each callback carries a generation and checks it.
//
// Ownership. HttpCore holds the active transfers (shared_ptr); a requesting coroutine holds
// its transfer too, and a guard in its frame posts a cancel when the frame goes away before
// the transfer finished (killed process, deadline). Env callbacks hold weak_ptr<HttpCore>.
#include "nines/net/http_client.hpp"

#include <curl/curl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <any>
#include <atomic>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "net/http_util.hpp"
#include "runtime/spin_lock.hpp"

namespace nines::net {

using internal::iequals;
using internal::is_token;
using internal::trim;

// ---------------------------------------------------------------- headers, URL

std::string redact_url(std::string_view url) {
  std::size_t scheme_end = url.find("://");
  std::size_t auth_start = scheme_end == std::string_view::npos ? 0 : scheme_end + 3;
  std::size_t cut = url.find_first_of("?#", auth_start);
  std::string_view base = url.substr(0, cut);
  std::size_t auth_end = base.find('/', auth_start);
  std::string_view authority =
      base.substr(auth_start, auth_end == std::string_view::npos ? std::string_view::npos : auth_end - auth_start);
  std::string out(base.substr(0, auth_start));
  std::size_t at = authority.rfind('@');
  out += at == std::string_view::npos ? authority : authority.substr(at + 1);
  if (auth_end != std::string_view::npos) out += base.substr(auth_end);
  return out;
}

// ---------------------------------------------------------------- internal types

namespace internal {

enum class WakeOn : std::uint8_t { kFinished, kHeaders, kData };

class HttpCore;

// One curl multi handle and its connection pool. curl looks for a free connection to reuse by
// walking every connection it holds to the host (url.c ConnectionExists, O(open connections)
// per request: about 20 us a request at 1,000 connections, measured); a client therefore
// spreads its transfers over pools of at most kTransfersPerShard each.
struct CurlShard {
  HttpCore* core = nullptr;
  CURLM* multi = nullptr;
  std::size_t transfers = 0;  // added and not yet removed
  // curl's timeout, on the environment: armed for timer_at, wanted for want_at (max: none).
  // Lazily re-armed: see HttpCore::arm_curl_timer.
  TimerId timer = 0;
  std::uint64_t timer_gen = 0;
  TimePoint timer_at = TimePoint::max();
  TimePoint want_at = TimePoint::max();
  bool due_now = false;  // curl asked for a zero timeout: run it before the core is released
  bool touched = false;  // in HttpCore::touched_
};

// A request's header lines as libcurl takes them (CURLOPT_HTTPHEADER), with the fields they
// were made from. Requests of one client mostly send the same headers (a provider's
// content-type, accept, authorization), so the core keeps the last list and the next request
// with the same fields shares it instead of building its own (10 allocations a request).
// Shared: curl reads the list for as long as the transfer runs (a retry on a fresh connection
// builds the request again).
struct CurlHeaders {
  std::vector<HttpHeaders::Field> fields;
  bool add_content_type = false;  // "Content-Type:" (no form content type for a body)
  bool add_expect = false;        // "Expect:" (no 100-continue round trip)
  curl_slist* list = nullptr;

  CurlHeaders() = default;
  CurlHeaders(const CurlHeaders&) = delete;
  CurlHeaders& operator=(const CurlHeaders&) = delete;
  ~CurlHeaders() {
    if (list != nullptr) curl_slist_free_all(list);
  }
  bool same(const HttpHeaders& h, bool content_type, bool expect) const {
    if (content_type != add_content_type || expect != add_expect || h.size() != fields.size()) return false;
    for (std::size_t i = 0; i < fields.size(); ++i) {
      if (fields[i].name != h.fields()[i].name || fields[i].value != h.fields()[i].value) return false;
    }
    return true;
  }
};

struct Transfer {
  // Set by the requesting process before the hand-over, read-only afterwards.
  std::string method;
  std::string url;
  // "GET http://host/path", for errors: made when one needs it (two allocations a request less).
  std::string what() const { return method + " " + redact_url(url); }
  std::string request_body;
  HttpHeaders request_headers;  // checked by prepare
  bool add_content_type = false;
  bool add_expect = false;
  bool streaming = false;
  bool https = false;  // the URL's scheme
  HttpTimeouts timeouts;
  TimePoint started{};
  TimePoint deadline = TimePoint::max();

  // The core's holder's (see HttpCore::run).
  HttpCore* core = nullptr;    // set when the transfer starts
  CurlShard* shard = nullptr;  // the multi handle it was added to
  CURL* easy = nullptr;
  std::shared_ptr<const CurlHeaders> header_list;
  char error_buffer[CURL_ERROR_SIZE] = {};
  TimerId timer = 0;
  std::uint64_t timer_gen = 0;
  TimePoint timer_at = TimePoint::max();
  TimePoint last_activity{};
  std::size_t header_bytes = 0;
  std::size_t body_bytes = 0;
  std::optional<Error> abort_error;  // why a callback aborted the transfer

  // Shared with the process, under mu.
  std::mutex mu;
  bool got_first_byte = false;
  bool headers_done = false;
  bool finished = false;
  bool paused = false;          // a stream's buffer is full; curl holds the data
  bool resume_pending = false;  // the reader made room; the loop has yet to resume
  int status = 0;
  HttpHeaders headers;
  std::string body;  // whole body, or a stream's unread bytes
  std::optional<Error> error;
  std::optional<Completion> waiter;
  WakeOn wake_on = WakeOn::kFinished;

  ~Transfer() {
    if (easy != nullptr) curl_easy_cleanup(easy);  // never added (the client closed first)
  }

  // Requires mu.
  bool ready_locked(WakeOn on) const {
    if (finished) return true;
    switch (on) {
      case WakeOn::kFinished: return false;
      case WakeOn::kHeaders: return headers_done;
      case WakeOn::kData: return !body.empty();
    }
    return false;
  }

  // Completes the process's wait at once if `on` already holds, else parks the completion.
  void wait_for(WakeOn on, Completion c) {
    {
      std::lock_guard lock(mu);
      if (!ready_locked(on)) {
        waiter = std::move(c);
        wake_on = on;
        return;
      }
    }
    c.complete(std::any{});
  }

  // Requires mu; the caller completes what it returns after unlocking.
  std::optional<Completion> take_waiter_if_ready_locked() {
    if (!waiter || !ready_locked(wake_on)) return std::nullopt;
    std::optional<Completion> c = std::move(waiter);
    waiter.reset();
    return c;
  }
};

class HttpCore : public std::enable_shared_from_this<HttpCore> {
 public:
  HttpCore(Environment& env, HttpClientOptions options) : env_(env), options_(std::move(options)) {}
  ~HttpCore() {
    for (CURL* e : idle_easy_) curl_easy_cleanup(e);
    for (auto& sh : shards_) {
      if (sh->multi != nullptr) curl_multi_cleanup(sh->multi);
    }
  }

  Status init();
  void shutdown();

  Environment& env() { return env_; }
  const HttpClientOptions& options() const { return options_; }
  std::size_t in_flight() const { return in_flight_.load(); }
  std::size_t connections_opened() const { return connections_.load(); }

  // Builds a transfer for `req` (moved from): validation only, no clock, nothing counted, so
  // it may run when the request's task is made rather than when it is awaited.
  Result<std::shared_ptr<Transfer>> build(HttpRequest& req, bool streaming);
  // On the requesting process's thread, when the request starts: its start time and
  // deadline, and the in-flight bound. False with the reason in t.error (t is not shared
  // yet: no lock). Nothing is handed to curl yet.
  bool admit(Context& ctx, Transfer& t);
  // Both (HttpClient::stream's way).
  Result<std::shared_ptr<Transfer>> prepare(Context& ctx, HttpRequest& req, bool streaming) {
    Result<std::shared_ptr<Transfer>> t = build(req, streaming);
    if (!t.ok()) return t;
    if (!admit(ctx, **t)) return std::move(*(*t)->error);
    return t;
  }
  // Adds `t` to the multi handle and lets curl send it, on the calling thread.
  void submit(const std::shared_ptr<Transfer>& t);
  // Cancels `t` (from any thread) if it has not finished, and frees its curl handle.
  void cancel(const std::shared_ptr<Transfer>& t);
  // Resumes a paused stream whose reader made room (any thread).
  void resume(const std::shared_ptr<Transfer>& t);

 private:
  // A socket curl asked to watch: one re-armable watch (env.watch_fd_rearmable) for as long
  // as the socket is open, armed again after each event while curl still wants it (one
  // epoll_ctl per event, not the two of a new one-shot watch). A connection's socket keeps
  // its watch, disarmed, between its requests (parked: curl asked to remove it, want == 0):
  // the next request on it re-arms it. Only sockets curl closes through closesocket_cb are
  // parked (connection sockets); others (the resolver's) are unwatched at once.
  struct Socket {
    CurlShard* shard = nullptr;
    unsigned want = 0;     // what curl wants; 0: parked
    unsigned watched = 0;  // what the watch was last armed for
    WatchId watch = 0;
    std::uint64_t gen = 0;
    bool armed = false;       // armed and its event not yet handled
    bool connection = false;  // opened for a connection: its close reaches closesocket_cb
    bool stalled = false;     // its readiness is held back (fault point http_stall)
  };

  // An operation on curl's state: what an entry point asks for. Whichever thread holds the
  // core runs it (see run()).
  struct Op {
    enum class Kind : std::uint8_t { kSubmit, kCancel, kResume, kSocketReady, kStallEnd, kCurlTimer, kTransferTimer };
    Kind kind;
    std::shared_ptr<Transfer> t;  // kSubmit, kCancel, kResume
    Transfer* raw = nullptr;      // kTransferTimer (may be freed by then: looked up first)
    CurlShard* shard = nullptr;   // kCurlTimer
    curl_socket_t s = -1;         // kSocketReady, kStallEnd
    std::uint64_t gen = 0;        // kSocketReady, kStallEnd, kCurlTimer, kTransferTimer
    unsigned bits = 0;            // kSocketReady, kStallEnd
  };

  // Queues op and, unless another thread holds the core, takes it and runs every queued op
  // (flat combining): no thread ever waits for the core (shutdown excepted), and a request is
  // started by the process's own thread when nobody else is in curl. On the way out: curl's
  // "time out now" runs, finished transfers are collected, the core is released, then the
  // waiting processes are woken. (Watches are one-shot until re-armed, so a socket whose
  // event waits in the queue does not wake the loop again meanwhile.)
  void run(Op op);
  void execute(Op& op);
  // Takes the core, waiting for its holder (shutdown).
  void acquire_blocking();
  // Runs the queued ops (the core held).
  void drain_ops();
  // Releases the core and wakes the processes whose transfers finished.
  void release();

  // ---- the core held ----
  void start_cancel(Transfer* t);
  void start_resume(Transfer* t);
  // Queues c to be completed when the core is released.
  void wake(Completion c) { wake_.push_back(std::move(c)); }
  // The shard for a new transfer: the first with room, or a new one.
  CurlShard* pick_shard();
  Result<CurlShard*> new_shard();
  // Marks sh as used by the current op: settle() looks at it before the core is released.
  void touch(CurlShard* sh) {
    if (!std::exchange(sh->touched, true)) touched_.push_back(sh);
  }
  // For each touched shard: finished transfers collected, and curl's timeout run while curl
  // asks for it to run now.
  void settle();
  // The client's options (the same for every request) on a new easy handle.
  void set_client_options(CURL* e);
  static std::shared_ptr<const CurlHeaders> make_curl_headers(const Transfer& t);
  void start_transfer(const std::shared_ptr<Transfer>& t);
  void finish(Transfer* t, std::optional<Error> error);
  void check_done(CurlShard* sh);
  void arm_transfer_timer(Transfer* t);
  void on_transfer_timer(Transfer* t, std::uint64_t gen);
  // Arms st's watch for st.want (a new watch the first time).
  void arm_socket(curl_socket_t s, Socket& st);
  // may_stall: false once the fault point http_stall held this readiness back.
  void on_socket_ready(curl_socket_t s, std::uint64_t gen, unsigned bits, bool may_stall);
  void on_curl_timer(CurlShard* sh, std::uint64_t gen);
  void arm_curl_timer(CurlShard* sh, TimePoint at);
  Error map_curl_error(Transfer* t, CURLcode code) const;

  static int socket_cb(CURL* easy, curl_socket_t s, int what, void* userp, void* socketp);
  static int sockopt_cb(void* clientp, curl_socket_t s, curlsocktype purpose);
  static int closesocket_cb(void* clientp, curl_socket_t s);
  static int timer_cb(CURLM* multi, long timeout_ms, void* userp);
  static size_t write_cb(char* data, size_t size, size_t n, void* userp);
  static size_t header_cb(char* data, size_t size, size_t n, void* userp);

  Environment& env_;
  const HttpClientOptions options_;
  std::atomic<std::size_t> in_flight_{0};
  std::atomic<std::size_t> connections_{0};

  // The core: held by one thread at a time (see run()).
  std::atomic<bool> busy_{false};
  std::atomic<bool> has_ops_{false};
  ::nines::internal::SpinLock ops_mu_;  // a push or a swap: never held long
  std::vector<Op> ops_;
  std::vector<Op> batch_;  // the core held: the ops being run
  // The core held.
  bool closed_ = false;
  // Transfers per shard: kTransfersPerShard, or unbounded (one shard) when max_connections or
  // max_host_connections is set, so that curl enforces them over every connection.
  std::size_t shard_capacity_ = 0;
  std::vector<std::unique_ptr<CurlShard>> shards_;  // never shrinks while the client is open
  std::vector<CurlShard*> touched_;
  std::unordered_map<Transfer*, std::shared_ptr<Transfer>> active_;
  std::unordered_map<curl_socket_t, Socket> sockets_;
  std::uint64_t next_gen_ = 1;
  std::vector<Completion> wake_;
  // Easy handles of finished transfers, for the next ones (curl_easy_init allocates and fills
  // about 20 KiB per handle, and the client's options cost allocations to set); at most
  // kMaxIdleEasy.
  std::vector<CURL*> idle_easy_;
  // The header list of the last request started, for the next one with the same fields.
  std::shared_ptr<const CurlHeaders> last_headers_;
  static constexpr std::size_t kMaxIdleEasy = 64;
  static constexpr std::size_t kTransfersPerShard = 64;
  // CURLOPT_BUFFERSIZE's range in libcurl 7.88 (CURL_MIN_WRITE_SIZE .. CURL_MAX_READ_SIZE).
  static constexpr std::size_t kMinReceiveBuffer = 1024;
  static constexpr std::size_t kMaxReceiveBuffer = 512u << 10;
};

namespace {

std::once_flag g_curl_init_once;
CURLcode g_curl_init_result = CURLE_OK;

long to_curl_ms(Duration d) {
  if (d == kInfinite) return 0;  // curl: 0 means no timeout
  return static_cast<long>(std::max<std::int64_t>(1, to_millis(d)));
}

std::string ms_text(Duration d) { return std::to_string(to_millis(d)) + " ms"; }

}  // namespace

Status HttpCore::init() {
  std::call_once(g_curl_init_once, [] { g_curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (g_curl_init_result != CURLE_OK) {
    return Error(ErrorKind::kInternal, std::string("curl_global_init: ") + curl_easy_strerror(g_curl_init_result));
  }
  if (options_.receive_buffer_bytes < kMinReceiveBuffer || options_.receive_buffer_bytes > kMaxReceiveBuffer) {
    return Error(ErrorKind::kInvalidArgument,
                 "HttpClientOptions::receive_buffer_bytes is " + std::to_string(options_.receive_buffer_bytes) +
                     "; it must be " + std::to_string(kMinReceiveBuffer) + ".." + std::to_string(kMaxReceiveBuffer));
  }
  bool limited = options_.max_connections != 0 || options_.max_host_connections != 0;
  shard_capacity_ = limited ? std::numeric_limits<std::size_t>::max() : kTransfersPerShard;
  auto first = new_shard();
  if (!first.ok()) return std::move(first).error();
  return ok_status();
}

Result<CurlShard*> HttpCore::new_shard() {
  auto sh = std::make_unique<CurlShard>();
  sh->core = this;
  CURLM* m = curl_multi_init();
  if (m == nullptr) return Error(ErrorKind::kInternal, "curl_multi_init failed");
  sh->multi = m;
  curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, &HttpCore::socket_cb);
  curl_multi_setopt(m, CURLMOPT_SOCKETDATA, sh.get());
  curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, &HttpCore::timer_cb);
  curl_multi_setopt(m, CURLMOPT_TIMERDATA, sh.get());
  // HTTP/2 streams share a connection (libcurl's default, said here); this shard's transfers
  // (at most 64) stay under the 100 concurrent streams libcurl allows a connection.
  curl_multi_setopt(m, CURLMOPT_PIPELINING, options_.http2 ? CURLPIPE_MULTIPLEX : CURLPIPE_NOTHING);
  if (options_.max_connections != 0) {
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, static_cast<long>(options_.max_connections));
    // The cache must hold the connections that may be open, or finished ones are closed
    // instead of kept for reuse.
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, static_cast<long>(options_.max_connections));
  } else if (shard_capacity_ != std::numeric_limits<std::size_t>::max()) {
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, static_cast<long>(shard_capacity_));
  }
  if (options_.max_host_connections != 0) {
    curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(options_.max_host_connections));
  }
  shards_.push_back(std::move(sh));
  return shards_.back().get();
}

CurlShard* HttpCore::pick_shard() {
  // First fit: a transfer that just finished left its connection idle in its shard, and the
  // next request (often the same process's) lands in the first shard with room: usually
  // that one, so the connection is reused.
  for (auto& sh : shards_) {
    if (sh->transfers < shard_capacity_) return sh.get();
  }
  auto sh = new_shard();
  if (sh.ok()) return *sh;
  // No new multi handle: the least loaded existing one takes it (curl queues beyond its limits).
  return std::min_element(shards_.begin(), shards_.end(),
                          [](const auto& a, const auto& b) { return a->transfers < b->transfers; })
      ->get();
}

// ---------------------------------------------------------------- locking

void HttpCore::run(Op op) {
  {
    std::lock_guard lock(ops_mu_);
    ops_.push_back(std::move(op));
    has_ops_.store(true, std::memory_order_seq_cst);
  }
  // A holder releases the core and then looks for ops again: one queued after its last look
  // is seen by it or by this thread's exchange (both sequentially consistent), never lost.
  while (has_ops_.load(std::memory_order_seq_cst)) {
    if (busy_.exchange(true, std::memory_order_seq_cst)) return;  // the holder runs it
    drain_ops();
    release();
  }
}

void HttpCore::acquire_blocking() {
  // Shutdown only: the holder is inside curl for microseconds.
  while (busy_.exchange(true, std::memory_order_seq_cst)) sched_yield();
}

void HttpCore::drain_ops() {
  for (;;) {
    {
      std::lock_guard lock(ops_mu_);
      if (ops_.empty()) break;
      batch_.swap(ops_);  // the queue gets the batch's (cleared) storage: no allocation per op
      has_ops_.store(false, std::memory_order_seq_cst);
    }
    for (Op& op : batch_) execute(op);
    batch_.clear();
  }
  settle();
}

void HttpCore::release() {
  std::vector<Completion> wake;
  wake.swap(wake_);
  busy_.store(false, std::memory_order_seq_cst);
  for (auto& c : wake) c.complete(std::any{});
}

void HttpCore::execute(Op& op) {
  switch (op.kind) {
    case Op::Kind::kSubmit: start_transfer(op.t); break;
    case Op::Kind::kCancel: start_cancel(op.t.get()); break;
    case Op::Kind::kResume: start_resume(op.t.get()); break;
    case Op::Kind::kSocketReady: on_socket_ready(op.s, op.gen, op.bits, /*may_stall=*/true); break;
    case Op::Kind::kStallEnd: on_socket_ready(op.s, op.gen, op.bits, /*may_stall=*/false); break;
    case Op::Kind::kCurlTimer: on_curl_timer(op.shard, op.gen); break;
    case Op::Kind::kTransferTimer: on_transfer_timer(op.raw, op.gen); break;
  }
}

// Runs curl's timeout when it asked for it to run now (after a transfer was added, or to go
// on with one) rather than through a timer on the loop thread. Bounded; beyond, the timer.
void HttpCore::settle() {
  while (!touched_.empty()) {
    CurlShard* sh = touched_.back();
    touched_.pop_back();
    sh->touched = false;
    for (int i = 0;; ++i) {
      check_done(sh);  // removing a finished transfer may ask for a timeout too
      if (!sh->due_now || sh->multi == nullptr) break;
      sh->due_now = false;
      if (i == 8) {
        arm_curl_timer(sh, env_.now());
        break;
      }
      int running = 0;
      curl_multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
  }
}

void HttpCore::shutdown() {
  acquire_blocking();
  closed_ = true;
  drain_ops();  // starts finish at once as cancelled (closed_), cancels and timers find nothing
  for (auto& [raw, t] : std::unordered_map<Transfer*, std::shared_ptr<Transfer>>(active_)) {
    finish(raw, Error(ErrorKind::kCancelled, t->what() + ": the HTTP client was closed"));
  }
  for (CURL* e : idle_easy_) curl_easy_cleanup(e);
  idle_easy_.clear();
  for (auto& sh : shards_) {
    // Closes the cached connections (curl reports their sockets closed) first.
    if (sh->multi != nullptr) curl_multi_cleanup(std::exchange(sh->multi, nullptr));
    if (sh->timer != 0) env_.cancel_timer(std::exchange(sh->timer, 0));
    ++sh->timer_gen;
    sh->timer_at = sh->want_at = TimePoint::max();
    sh->due_now = false;
  }
  for (auto& [s, st] : sockets_) {
    if (st.watch != 0) env_.cancel_watch(st.watch);
  }
  sockets_.clear();
  release();
  // Ops queued from now on find the client closed; whoever queues one runs it.
}

// ---------------------------------------------------------------- process side

Result<std::shared_ptr<Transfer>> HttpCore::build(HttpRequest& req, bool streaming) {
  auto t = std::make_shared<Transfer>();
  t->method = req.method;
  t->url = std::move(req.url);
  if (!is_token(t->method)) {
    return Error(ErrorKind::kInvalidArgument, "HTTP request: bad method for " + redact_url(t->url));
  }
  std::string_view scheme = std::string_view(t->url).substr(0, t->url.find("://"));
  if (t->url.find("://") == std::string::npos || !(iequals(scheme, "http") || iequals(scheme, "https"))) {
    return Error(ErrorKind::kInvalidArgument, t->what() + ": only http:// and https:// URLs are supported");
  }
  t->https = iequals(scheme, "https");
  bool has_content_type = false, has_expect = false;
  for (const auto& f : req.headers.fields()) {
    if (!is_token(f.name) || f.value.find_first_of("\r\n") != std::string::npos) {
      // The value is not echoed: it may be a secret.
      return Error(ErrorKind::kInvalidArgument, t->what() + ": header '" + (is_token(f.name) ? f.name : "?") +
                                                    "' has a malformed name or a CR/LF in its value");
    }
    has_content_type |= iequals(f.name, "content-type");
    has_expect |= iequals(f.name, "expect");
  }
  // curl would add these on its own for a body: a form content type nobody asked for, and
  // Expect: 100-continue, which costs a round trip.
  t->add_content_type = !has_content_type;
  t->add_expect = !has_expect;
  t->request_headers = std::move(req.headers);
  t->request_body = std::move(req.body);
  t->streaming = streaming;
  t->timeouts = req.timeouts.value_or(options_.timeouts);
  return t;
}

bool HttpCore::admit(Context& ctx, Transfer& t) {
  t.started = ctx.now();
  t.deadline = ctx.deadline();
  if (t.started >= t.deadline) {
    t.error = Error(ErrorKind::kDeadlineExceeded, t.what() + ": the process deadline passed before the request");
    return false;
  }
  std::size_t n = in_flight_.fetch_add(1) + 1;
  if (n > options_.max_in_flight) {
    in_flight_.fetch_sub(1);
    t.error = Error(ErrorKind::kBulkheadFull, t.what() + ": " + std::to_string(options_.max_in_flight) +
                                                  " HTTP requests are already in flight (max_in_flight)");
    return false;
  }
  return true;
}

void HttpCore::submit(const std::shared_ptr<Transfer>& t) { run({.kind = Op::Kind::kSubmit, .t = t}); }

void HttpCore::cancel(const std::shared_ptr<Transfer>& t) {
  {
    std::lock_guard lock(t->mu);
    if (t->finished) return;
  }
  run({.kind = Op::Kind::kCancel, .t = t});
}

void HttpCore::resume(const std::shared_ptr<Transfer>& t) { run({.kind = Op::Kind::kResume, .t = t}); }

void HttpCore::start_cancel(Transfer* t) {
  if (active_.count(t) != 0) finish(t, Error(ErrorKind::kCancelled, t->what() + ": cancelled"));
}

void HttpCore::start_resume(Transfer* tp) {
  if (active_.count(tp) == 0) return;
  Transfer* t = tp;
  {
    std::lock_guard lock(t->mu);
    t->paused = false;
    t->resume_pending = false;
  }
  t->last_activity = env_.now();  // the pause was the reader's, not the server's
  if (t->shard != nullptr) touch(t->shard);
  curl_easy_pause(t->easy, CURLPAUSE_CONT);
  // While paused the timer may have been re-armed for the total timeout only: the idle
  // timeout applies again from now.
  if (active_.count(t) != 0) arm_transfer_timer(t);
}

// ---------------------------------------------------------------- the core held

void HttpCore::start_transfer(const std::shared_ptr<Transfer>& t) {
  Transfer* raw = t.get();
  if (closed_) {
    active_.emplace(raw, t);
    finish(raw, Error(ErrorKind::kCancelled, t->what() + ": the HTTP client was closed"));
    return;
  }
  CURL* e = nullptr;
  if (!idle_easy_.empty()) {
    e = idle_easy_.back();
    idle_easy_.pop_back();
  } else if ((e = curl_easy_init()) != nullptr) {
    set_client_options(e);
  }
  if (e == nullptr) {
    active_.emplace(raw, t);
    finish(raw, Error(ErrorKind::kInternal, t->what() + ": curl_easy_init failed"));
    return;
  }
  raw->easy = e;
  raw->core = this;
  if (!last_headers_ || !last_headers_->same(raw->request_headers, raw->add_content_type, raw->add_expect)) {
    last_headers_ = make_curl_headers(*raw);
  }
  raw->header_list = last_headers_;
  // This request's options; every one a previous request on this handle may have set is set
  // again (the client's own were set when the handle was made: set_client_options).
  curl_easy_setopt(e, CURLOPT_URL, raw->url.c_str());
  curl_easy_setopt(e, CURLOPT_PRIVATE, raw);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, raw->error_buffer);
  CurlShard* sh = pick_shard();
  curl_easy_setopt(e, CURLOPT_SOCKOPTDATA, sh);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, sh);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, raw->header_list->list);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, raw);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, raw);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, to_curl_ms(raw->timeouts.connect));
  // Wait for a connection being opened to learn (by ALPN) whether it can take this request as
  // another HTTP/2 stream, rather than open one more: over TLS only, where ALPN answers with
  // the handshake (HttpClientOptions::http2).
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, options_.http2 && raw->https ? 1L : 0L);
  const std::string& m = raw->method;
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, static_cast<const char*>(nullptr));
  if (m == "HEAD") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (!raw->request_body.empty() || m == "POST" || m == "PUT" || m == "PATCH") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 0L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, raw->request_body.data());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(raw->request_body.size()));
    if (m != "POST") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m.c_str());
  } else {
    curl_easy_setopt(e, CURLOPT_NOBODY, 0L);
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    if (m != "GET") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m.c_str());
  }
  active_.emplace(raw, t);
  raw->last_activity = env_.now();
  CURLMcode rc = curl_multi_add_handle(sh->multi, e);
  if (rc == CURLM_OK) {
    raw->shard = sh;
    ++sh->transfers;
    touch(sh);
  }
  if (rc != CURLM_OK) {
    finish(raw, Error(ErrorKind::kInternal, raw->what() + ": curl_multi_add_handle: " + curl_multi_strerror(rc)));
    return;
  }
  arm_transfer_timer(raw);
}

std::shared_ptr<const CurlHeaders> HttpCore::make_curl_headers(const Transfer& t) {
  auto h = std::make_shared<CurlHeaders>();
  h->fields = t.request_headers.fields();
  h->add_content_type = t.add_content_type;
  h->add_expect = t.add_expect;
  auto append = [&h](const std::string& line) {
    if (curl_slist* longer = curl_slist_append(h->list, line.c_str())) h->list = longer;  // else out of memory
  };
  for (const auto& f : h->fields) append(f.value.empty() ? f.name + ";" : f.name + ": " + f.value);
  if (h->add_content_type) append("Content-Type:");
  if (h->add_expect) append("Expect:");
  return h;
}

void HttpCore::set_client_options(CURL* e) {
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  // HTTP/2 over TLS when the server offers it (libcurl's own default, set here so that the
  // option says what happens); HTTP/1.1 otherwise and on plaintext.
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, options_.http2 ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, static_cast<long>(options_.receive_buffer_bytes));
  curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, &HttpCore::sockopt_cb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, &HttpCore::closesocket_cb);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_USERAGENT, options_.user_agent.c_str());
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &HttpCore::write_cb);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &HttpCore::header_cb);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, options_.verify_tls ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, options_.verify_tls ? 2L : 0L);
  if (!options_.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, options_.ca_file.c_str());
  if (options_.proxy) curl_easy_setopt(e, CURLOPT_PROXY, options_.proxy->c_str());
  if (options_.follow_redirects) {
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
  }
}

void HttpCore::finish(Transfer* t, std::optional<Error> error) {
  auto it = active_.find(t);
  if (it == active_.end()) return;
  std::shared_ptr<Transfer> keep = std::move(it->second);
  active_.erase(it);
  if (t->easy != nullptr) {
    long connects = 0;
    if (curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &connects) == CURLE_OK && connects > 0) {
      connections_.fetch_add(static_cast<std::size_t>(connects));
    }
    CURL* e = std::exchange(t->easy, nullptr);
    CurlShard* sh = std::exchange(t->shard, nullptr);
    bool added = sh != nullptr && sh->multi != nullptr && curl_multi_remove_handle(sh->multi, e) == CURLM_OK;
    if (sh != nullptr) {
      --sh->transfers;
      touch(sh);
    }
    if (added && idle_easy_.size() < kMaxIdleEasy) {
      // Kept with the client's options (libcurl's way to reuse a handle for the next
      // transfer): the next request sets its own (start_transfer). No cookie engine or
      // authentication is ever turned on, so nothing of this request carries over.
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, static_cast<curl_slist*>(nullptr));
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, static_cast<const char*>(nullptr));
      curl_easy_setopt(e, CURLOPT_ERRORBUFFER, static_cast<char*>(nullptr));
      idle_easy_.push_back(e);
    } else {
      curl_easy_cleanup(e);
    }
  }
  t->header_list.reset();
  if (t->timer != 0) env_.cancel_timer(std::exchange(t->timer, 0));
  t->timer_gen = 0;
  in_flight_.fetch_sub(1);
  std::optional<Completion> c;
  {
    std::lock_guard lock(t->mu);
    t->finished = true;
    t->error = std::move(error);
    c = t->take_waiter_if_ready_locked();
  }
  if (c) wake(std::move(*c));
}

Error HttpCore::map_curl_error(Transfer* t, CURLcode code) const {
  if (t->abort_error) return *t->abort_error;
  std::string detail = t->error_buffer[0] != '\0' ? std::string(t->error_buffer) : curl_easy_strerror(code);
  // curl's messages may repeat the URL; ours already names it without its query.
  std::string msg = t->what() + ": " + detail;
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      // Only the connect timeout is left to curl; the others are ours (arm_transfer_timer).
      return Error(ErrorKind::kTimeout, t->what() + ": connect timeout (" + ms_text(t->timeouts.connect) + ")");
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT: return Error(ErrorKind::kInvalidArgument, msg);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_FILESIZE_EXCEEDED: return Error(ErrorKind::kPermanent, msg);
    case CURLE_OUT_OF_MEMORY: return Error(ErrorKind::kInternal, msg);
    default:
      // Refused, reset, DNS, TLS handshake, a response cut short, a dead proxy: the network.
      return Error(ErrorKind::kTransient, msg);
  }
}

void HttpCore::check_done(CurlShard* sh) {
  if (sh->multi == nullptr) return;
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(sh->multi, &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    char* priv = nullptr;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
    auto* t = reinterpret_cast<Transfer*>(priv);
    CURLcode code = msg->data.result;
    if (t == nullptr) continue;
    if (code == CURLE_OK) {
      finish(t, std::nullopt);
    } else {
      finish(t, map_curl_error(t, code));
    }
  }
}

// The one timer of a transfer, for the first-byte, idle and total timeouts and the deadline.
// It is armed for the earliest of them and, when it fires, re-armed if activity has moved
// that point (so data arriving costs no timer operation).
void HttpCore::arm_transfer_timer(Transfer* t) {
  TimePoint at = std::min(add_saturating(t->started, t->timeouts.total), t->deadline);
  bool first_byte, paused;
  {
    std::lock_guard lock(t->mu);
    first_byte = t->got_first_byte;
    paused = t->paused;
  }
  if (!first_byte) {
    // Also by the earliest moment the idle timeout can be due once the first byte is in: the
    // first byte then finds this timer early enough and arms nothing (one timer add per
    // request instead of two). A timer that fires with nothing due re-arms.
    at = std::min(
        {at, add_saturating(t->started, t->timeouts.first_byte), add_saturating(t->started, t->timeouts.idle)});
  } else if (!paused) {
    at = std::min(at, add_saturating(t->last_activity, t->timeouts.idle));
  }
  if (at == TimePoint::max()) return;
  if (t->timer != 0) {
    if (t->timer_at <= at) return;  // fires earlier anyway and re-arms
    env_.cancel_timer(std::exchange(t->timer, 0));
  }
  // Generations are unique per client, so a stale timer of a freed transfer never matches
  // a new transfer that reuses its address.
  std::uint64_t gen = next_gen_++;
  t->timer_gen = gen;
  t->timer_at = at;
  std::weak_ptr<HttpCore> weak = weak_from_this();
  t->timer = env_.add_timer(at, [weak, t, gen] {
    if (auto core = weak.lock()) core->run({.kind = Op::Kind::kTransferTimer, .raw = t, .gen = gen});
  });
}

void HttpCore::on_transfer_timer(Transfer* t, std::uint64_t gen) {
  // `t` may be freed: look it up before touching it.
  if (active_.count(t) == 0 || t->timer_gen != gen) return;
  t->timer = 0;
  TimePoint now = env_.now();
  bool first_byte, paused;
  {
    std::lock_guard lock(t->mu);
    first_byte = t->got_first_byte;
    paused = t->paused;
  }
  Duration elapsed = now - t->started;
  if (now >= t->deadline) {
    finish(t, Error(ErrorKind::kDeadlineExceeded,
                    t->what() + ": the process deadline passed after " + ms_text(elapsed) + " in flight"));
  } else if (now >= add_saturating(t->started, t->timeouts.total)) {
    finish(t, Error(ErrorKind::kTimeout, t->what() + ": total timeout (" + ms_text(t->timeouts.total) + ")"));
  } else if (!first_byte && now >= add_saturating(t->started, t->timeouts.first_byte)) {
    finish(t, Error(ErrorKind::kTimeout,
                    t->what() + ": first-byte timeout (" + ms_text(t->timeouts.first_byte) + "): no response yet"));
  } else if (first_byte && !paused && now >= add_saturating(t->last_activity, t->timeouts.idle)) {
    finish(t, Error(ErrorKind::kTimeout, t->what() + ": idle timeout (" + ms_text(t->timeouts.idle) +
                                             " without data) after " + std::to_string(t->body_bytes) + " body bytes"));
  } else {
    arm_transfer_timer(t);
  }
}

int HttpCore::socket_cb(CURL* /*easy*/, curl_socket_t s, int what, void* userp, void* /*socketp*/) {
  auto* sh = static_cast<CurlShard*>(userp);
  HttpCore* core = sh->core;
  if (what == CURL_POLL_REMOVE) {
    auto it = core->sockets_.find(s);
    if (it == core->sockets_.end()) return 0;
    if (it->second.connection) {
      it->second.want = 0;  // parked (see Socket); an event still armed is ignored
      it->second.stalled = false;
      return 0;
    }
    if (it->second.watch != 0) core->env_.cancel_watch(it->second.watch);
    core->sockets_.erase(it);
    return 0;
  }
  Socket& st = core->sockets_[s];
  st.shard = sh;
  unsigned want = what == CURL_POLL_IN ? kFdReadable : what == CURL_POLL_OUT ? kFdWritable : kFdReadable | kFdWritable;
  if (st.stalled) {
    // A stalled socket (fault point http_stall) is not armed until the stall ends, and gets
    // its events then; new events end the stall.
    if (st.want == want) return 0;
    st.stalled = false;
  }
  st.want = want;
  core->arm_socket(s, st);
  return 0;
}

int HttpCore::sockopt_cb(void* clientp, curl_socket_t s, curlsocktype purpose) {
  if (purpose == CURLSOCKTYPE_IPCXN) {
    auto* sh = static_cast<CurlShard*>(clientp);
    Socket& st = sh->core->sockets_[s];
    st.connection = true;
    st.shard = sh;
  }
  return CURL_SOCKOPT_OK;
}

int HttpCore::closesocket_cb(void* clientp, curl_socket_t s) {
  HttpCore* core = static_cast<CurlShard*>(clientp)->core;
  auto it = core->sockets_.find(s);
  if (it != core->sockets_.end()) {
    if (it->second.watch != 0) core->env_.cancel_watch(it->second.watch);
    core->sockets_.erase(it);
  }
  return ::close(s);
}

void HttpCore::arm_socket(curl_socket_t s, Socket& st) {
  if (st.watch != 0) {
    if (st.armed && st.watched == st.want) return;
    st.watched = st.want;
    st.armed = env_.rearm_watch(st.watch, st.want);
    if (st.armed) return;
    env_.cancel_watch(std::exchange(st.watch, 0));  // gone: cannot happen for an open socket
  }
  // A new watch, with a generation of its own: a callback of an earlier one finds it stale.
  std::uint64_t gen = next_gen_++;
  st.gen = gen;
  st.watched = st.want;
  std::weak_ptr<HttpCore> weak = weak_from_this();
  auto w = env_.watch_fd_rearmable(s, st.want, [weak, s, gen](unsigned bits) {
    if (auto core = weak.lock()) core->run({.kind = Op::Kind::kSocketReady, .s = s, .gen = gen, .bits = bits});
  });
  // A failed watch leaves the socket to curl's own timeouts and ours; it cannot happen for
  // a valid open socket.
  st.watch = w.ok() ? *w : 0;
  st.armed = w.ok();
}

void HttpCore::on_socket_ready(curl_socket_t s, std::uint64_t gen, unsigned bits, bool may_stall) {
  auto it = sockets_.find(s);
  if (it == sockets_.end() || it->second.gen != gen || it->second.shard == nullptr ||
      it->second.shard->multi == nullptr) {
    return;
  }
  Socket& st = it->second;
  if (may_stall) st.armed = false;  // the event disarmed it
  if (st.want == 0) return;         // parked: the next request re-arms it
  if (!may_stall) {
    if (!st.stalled) return;  // curl changed or dropped the socket meanwhile
    st.stalled = false;
  } else if (env_.fault(FaultPoint::kHttpStall)) {
    // The bytes wait in the socket: curl hears of them only after the stall, and the
    // socket is not armed meanwhile (new events asked for meanwhile end the stall).
    st.stalled = true;
    std::weak_ptr<HttpCore> weak = weak_from_this();
    env_.add_timer(add_saturating(env_.now(), env_.fault_delay(FaultPoint::kHttpStall)), [weak, s, gen, bits] {
      if (auto core = weak.lock()) core->run({.kind = Op::Kind::kStallEnd, .s = s, .gen = gen, .bits = bits});
    });
    return;
  }
  int action = ((bits & kFdReadable) ? CURL_CSELECT_IN : 0) | ((bits & kFdWritable) ? CURL_CSELECT_OUT : 0) |
               ((bits & kFdError) ? CURL_CSELECT_ERR : 0);
  int running = 0;
  CurlShard* sh = st.shard;
  touch(sh);
  curl_multi_socket_action(sh->multi, s, action, &running);
  // Armed again if curl still wants the socket (curl may have closed it meanwhile).
  it = sockets_.find(s);
  if (it != sockets_.end() && it->second.gen == gen && it->second.want != 0 && !it->second.stalled) {
    arm_socket(s, it->second);
  }
}

int HttpCore::timer_cb(CURLM* /*multi*/, long timeout_ms, void* userp) {
  auto* sh = static_cast<CurlShard*>(userp);
  HttpCore* core = sh->core;
  sh->due_now = timeout_ms == 0;  // run before the core is released (settle)
  if (sh->due_now) core->touch(sh);
  if (timeout_ms <= 0) {
    sh->want_at = TimePoint::max();  // an armed timer stays; it finds nothing wanted
    return 0;
  }
  core->arm_curl_timer(sh, add_saturating(core->env_.now(), std::chrono::milliseconds(timeout_ms)));
  return 0;
}

// curl moves its timeout with every transfer added or finished, mostly later (the earliest
// deadline among a shard's transfers). A timer armed for an earlier moment is kept: when it
// fires it re-arms for what curl wants then (on_curl_timer). Only an earlier timeout replaces
// it, so most moves cost no timer at all (they cost two environment timer operations each).
void HttpCore::arm_curl_timer(CurlShard* sh, TimePoint at) {
  sh->want_at = at;
  if (sh->timer != 0) {
    if (sh->timer_at <= at) return;
    env_.cancel_timer(std::exchange(sh->timer, 0));
  }
  std::uint64_t gen = ++sh->timer_gen;
  sh->timer_at = at;
  std::weak_ptr<HttpCore> weak = weak_from_this();
  sh->timer = env_.add_timer(at, [weak, sh, gen] {
    if (auto c = weak.lock()) c->run({.kind = Op::Kind::kCurlTimer, .shard = sh, .gen = gen});
  });
}

void HttpCore::on_curl_timer(CurlShard* sh, std::uint64_t gen) {
  if (gen != sh->timer_gen || sh->multi == nullptr) return;
  sh->timer = 0;
  sh->timer_at = TimePoint::max();
  const TimePoint want = std::exchange(sh->want_at, TimePoint::max());
  if (want == TimePoint::max()) return;  // withdrawn since it was armed
  if (want > env_.now()) {
    arm_curl_timer(sh, want);  // moved later since it was armed
    return;
  }
  touch(sh);
  int running = 0;
  curl_multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
}

size_t HttpCore::header_cb(char* data, size_t size, size_t n, void* userp) {
  auto* t = static_cast<Transfer*>(userp);
  HttpCore* core = t->core;
  std::size_t len = size * n;
  t->header_bytes += len;
  if (t->header_bytes > core->options_.max_header_bytes) {
    t->abort_error =
        Error(ErrorKind::kPermanent, t->what() + ": response headers larger than " +
                                         std::to_string(core->options_.max_header_bytes) + " bytes (max_header_bytes)");
    return 0;
  }
  t->last_activity = core->env_.now();
  std::string_view line(data, len);
  std::optional<Completion> c;
  bool first = false;
  {
    std::lock_guard lock(t->mu);
    first = !std::exchange(t->got_first_byte, true);
    if (line.starts_with("HTTP/")) {
      // A new response (after a 100 Continue or a followed redirect) replaces the previous.
      std::size_t sp = line.find(' ');
      t->status = sp == std::string_view::npos ? 0 : std::atoi(std::string(line.substr(sp + 1, 3)).c_str());
      t->headers.clear();
      t->headers_done = false;
    } else if (trim(line).empty()) {
      bool will_follow = core->options_.follow_redirects && t->status >= 300 && t->status < 400 && t->status != 304 &&
                         t->headers.contains("location");
      if (t->status >= 200 && !will_follow) {
        t->headers_done = true;
        c = t->take_waiter_if_ready_locked();
      }
    } else if ((line.front() == ' ' || line.front() == '\t') && !t->headers.empty()) {
      // obs-fold: a continuation of the previous field's value (rare; rebuilt by copy).
      auto fields = t->headers.fields();
      fields.back().value += ' ';
      fields.back().value += trim(line);
      t->headers.clear();
      for (auto& f : fields) t->headers.add(std::move(f.name), std::move(f.value));
    } else if (std::size_t colon = line.find(':'); colon != std::string_view::npos) {
      t->headers.add(std::string(trim(line.substr(0, colon))), std::string(trim(line.substr(colon + 1))));
    }
  }
  // The idle timeout starts with the first byte and may be shorter than the first-byte one.
  if (first) core->arm_transfer_timer(t);
  if (c) core->wake(std::move(*c));
  return len;
}

size_t HttpCore::write_cb(char* data, size_t size, size_t n, void* userp) {
  auto* t = static_cast<Transfer*>(userp);
  HttpCore* core = t->core;
  std::size_t len = size * n;
  if (core->env_.fault(FaultPoint::kHttpReset)) {
    t->abort_error =
        Error(ErrorKind::kTransient, t->what() + ": connection reset after " + std::to_string(t->body_bytes) +
                                         " body bytes (fault point http_reset)");
    return 0;
  }
  if (t->body_bytes + len > core->options_.max_body_bytes) {
    t->abort_error =
        Error(ErrorKind::kPermanent, t->what() + ": response body larger than " +
                                         std::to_string(core->options_.max_body_bytes) + " bytes (max_body_bytes)");
    return 0;
  }
  std::optional<Completion> c;
  {
    std::lock_guard lock(t->mu);
    t->got_first_byte = true;
    if (t->streaming && !t->body.empty() && t->body.size() + len > core->options_.stream_buffer_bytes) {
      // The reader is behind: curl keeps these bytes and offers them again after resume().
      t->paused = true;
      return CURL_WRITEFUNC_PAUSE;
    }
    t->body.append(data, len);
    c = t->take_waiter_if_ready_locked();
  }
  t->body_bytes += len;
  t->last_activity = core->env_.now();
  if (c) core->wake(std::move(*c));
  return len;
}

// Cancels its transfer when the requesting coroutine's frame goes away first (the process
// was killed, or its wait ended by the deadline).
class TransferGuard {
 public:
  TransferGuard(std::shared_ptr<HttpCore> core, std::shared_ptr<Transfer> t)
      : core_(std::move(core)), t_(std::move(t)) {}
  TransferGuard(const TransferGuard&) = delete;
  TransferGuard& operator=(const TransferGuard&) = delete;
  ~TransferGuard() {
    if (t_) core_->cancel(t_);
  }
  // The transfer now belongs to someone else (an HttpStream).
  void release() { t_.reset(); }

 private:
  std::shared_ptr<HttpCore> core_;
  std::shared_ptr<Transfer> t_;
};

// Result of the wait in a request: the deadline error reworded to name the request.
Result<std::any> name_wait_error(Result<std::any> r, const Transfer& t, TimePoint now) {
  if (r.ok()) return r;
  if (r.error().kind() == ErrorKind::kDeadlineExceeded) {
    return Error(ErrorKind::kDeadlineExceeded,
                 t.what() + ": the process deadline passed after " + ms_text(now - t.started) + " in flight");
  }
  return Error(r.error().kind(), t.what() + ": " + r.error().message());
}

}  // namespace internal

// ---------------------------------------------------------------- HttpClient, HttpStream

using internal::HttpCore;
using internal::Transfer;
using internal::TransferGuard;
using internal::WakeOn;

Result<std::unique_ptr<HttpClient>> HttpClient::create(Environment& env, HttpClientOptions options) {
  auto core = std::make_shared<HttpCore>(env, std::move(options));
  if (auto s = core->init(); !s.ok()) return std::move(s).error();
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(core)));
}

HttpClient::~HttpClient() {
  if (core_) core_->shutdown();
}

std::size_t HttpClient::in_flight() const { return core_->in_flight(); }
std::size_t HttpClient::connections_opened() const { return core_->connections_opened(); }
const HttpClientOptions& HttpClient::options() const { return core_->options(); }

namespace {

Task<Result<HttpResponse>> failed_request(Error e) { co_return e; }

// The whole response, once the transfer finished (the wait's result first; the clock is read
// here, after the wait: an argument's order of evaluation is unspecified).
Result<HttpResponse> response_of(Result<std::any>&& waited, Transfer& t, Context& ctx) {
  if (!waited.ok()) return internal::name_wait_error(std::move(waited), t, ctx.now()).error();
  std::lock_guard lock(t.mu);
  if (t.error) return *t.error;
  HttpResponse response;
  response.status = t.status;
  response.headers = std::move(t.headers);
  response.body = std::move(t.body);
  return response;
}

// A request from the moment it is awaited. Its frame is memory every request in flight
// holds: the request itself is in the Transfer by then, and what is done before and after the
// wait is in HttpCore::admit and response_of.
Task<Result<HttpResponse>> run_request(Context& ctx, std::shared_ptr<HttpCore> core, std::shared_ptr<Transfer> t) {
  if (!core->admit(ctx, *t)) co_return std::move(*t->error);
  TransferGuard guard(core, t);
  core->submit(t);
  std::function<void(Completion)> start = [t](Completion c) { t->wait_for(WakeOn::kFinished, std::move(c)); };
  Result<std::any> waited = co_await ctx.await_external(std::move(start));
  co_return response_of(std::move(waited), *t, ctx);  // (no co_await in a co_return: no slot for its value)
}

}  // namespace

// Not a coroutine: the request is checked and moved into its Transfer when the task is made
// (an invalid one fails when awaited, as before); the clock, the deadline and the in-flight
// bound are read when it is awaited (run_request).
Task<Result<HttpResponse>> HttpClient::request(Context& ctx, HttpRequest req) {
  Result<std::shared_ptr<Transfer>> t = core_->build(req, /*streaming=*/false);
  if (!t.ok()) return failed_request(std::move(t).error());
  return run_request(ctx, core_, std::move(t).value());
}

Task<Result<HttpStream>> HttpClient::stream(Context& ctx, HttpRequest req) {
  std::shared_ptr<HttpCore> core = core_;
  auto prepared = core->prepare(ctx, req, /*streaming=*/true);
  if (!prepared.ok()) co_return std::move(prepared).error();
  std::shared_ptr<Transfer> t = std::move(*prepared);
  TransferGuard guard(core, t);
  core->submit(t);
  std::function<void(Completion)> start = [t](Completion c) { t->wait_for(WakeOn::kHeaders, std::move(c)); };
  Result<std::any> waited = co_await ctx.await_external(std::move(start));
  waited = internal::name_wait_error(std::move(waited), *t, ctx.now());
  if (!waited.ok()) co_return std::move(waited).error();
  int status;
  HttpHeaders headers;
  {
    std::lock_guard lock(t->mu);
    // Finished before its headers were complete: the error. Finished after: a short body,
    // still buffered for next().
    if (t->error && !t->headers_done) co_return *t->error;
    status = t->status;
    headers = t->headers;
  }
  guard.release();
  co_return HttpStream(std::move(core), std::move(t), status, std::move(headers));
}

HttpStream::HttpStream(std::shared_ptr<HttpCore> core, std::shared_ptr<Transfer> t, int status, HttpHeaders headers)
    : core_(std::move(core)), t_(std::move(t)), status_(status), headers_(std::move(headers)) {}

HttpStream::HttpStream(HttpStream&&) noexcept = default;

HttpStream& HttpStream::operator=(HttpStream&& o) noexcept {
  if (this != &o) {
    if (t_) core_->cancel(t_);
    core_ = std::move(o.core_);
    t_ = std::move(o.t_);
    status_ = o.status_;
    headers_ = std::move(o.headers_);
  }
  return *this;
}

HttpStream::~HttpStream() {
  if (t_) core_->cancel(t_);
}

Task<Result<std::optional<std::string>>> HttpStream::next(Context& ctx) {
  std::shared_ptr<Transfer> t = t_;
  if (!t) co_return std::optional<std::string>();
  bool must_wait;
  {
    std::lock_guard lock(t->mu);
    must_wait = !t->ready_locked(WakeOn::kData);
  }
  if (must_wait) {
    std::function<void(Completion)> start = [t](Completion c) { t->wait_for(WakeOn::kData, std::move(c)); };
    Result<std::any> waited = co_await ctx.await_external(std::move(start));
    waited = internal::name_wait_error(std::move(waited), *t, ctx.now());
    // The reader gave up (its deadline): the stream is over for it.
    if (!waited.ok()) {
      core_->cancel(t);
      co_return std::move(waited).error();
    }
  }
  std::string chunk;
  bool resume = false;
  std::optional<Error> error;
  {
    std::lock_guard lock(t->mu);
    chunk.swap(t->body);
    resume = t->paused && !std::exchange(t->resume_pending, true);
    if (chunk.empty() && t->finished && t->error) error = std::exchange(t->error, std::nullopt);
  }
  if (resume) core_->resume(t);
  if (!chunk.empty()) co_return std::optional<std::string>(std::move(chunk));
  if (error) {
    t_.reset();  // later calls: end of stream
    co_return std::move(*error);
  }
  co_return std::optional<std::string>();
}

}  // namespace nines::net
