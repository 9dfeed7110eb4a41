// The HTTP client: libcurl's multi interface on the environment's event loop.
//
// Threads. Every curl call (easy setup, add/remove, socket_action, pause, cleanup) runs on
// the loop thread, inside Environment callbacks: work from processes is posted to it through
// a queue drained by a zero-delay env timer. curl's socket callback becomes env.watch_fd
// (one-shot watches, re-armed after each readiness while curl still wants the socket), its
// timer callback becomes env.add_timer. A Transfer's fields shared with the requesting
// process are under Transfer::mu; the rest is loop-thread only.
//
// Stale callbacks. The real environment moves a ready watch's or due timer's callback out
// of its tables before running it, so a cancel from an earlier callback of the same loop
// iteration can come too late; each callback carries a generation and checks it.
//
// Ownership. HttpCore holds the active transfers (shared_ptr); a requesting coroutine holds
// its transfer too, and a guard in its frame posts a cancel when the frame goes away before
// the transfer finished (killed process, deadline). Env callbacks hold weak_ptr<HttpCore>.
#include "nines/net/http_client.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <any>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <unordered_map>

#include "net/http_util.hpp"

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

struct Transfer {
  // Set by the requesting process before the hand-over, read-only afterwards.
  std::string method;
  std::string url;
  std::string what;  // "GET http://host/path" for errors
  std::string request_body;
  std::vector<std::string> header_lines;
  bool streaming = false;
  HttpTimeouts timeouts;
  TimePoint started{};
  TimePoint deadline = TimePoint::max();

  // Loop thread only.
  HttpCore* core = nullptr;  // set when the loop starts the transfer
  CURL* easy = nullptr;
  curl_slist* headers_list = nullptr;
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
    if (headers_list != nullptr) curl_slist_free_all(headers_list);
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
    if (multi_ != nullptr) curl_multi_cleanup(multi_);
  }

  Status init();
  void shutdown();

  Environment& env() { return env_; }
  const HttpClientOptions& options() const { return options_; }
  std::size_t in_flight() const { return in_flight_.load(); }
  std::size_t connections_opened() const { return connections_.load(); }

  // Builds a transfer for `req` on the calling (process) thread: validation and the
  // in-flight bound. Nothing is handed to curl yet.
  Result<std::shared_ptr<Transfer>> prepare(Context& ctx, HttpRequest& req, bool streaming);
  // Hands `t` to the loop thread, which adds it to the multi handle.
  void submit(const std::shared_ptr<Transfer>& t);
  // Cancels `t` (from any thread) if it has not finished; frees it on the loop thread.
  void cancel(const std::shared_ptr<Transfer>& t);
  // Resumes a paused stream whose reader made room (any thread).
  void resume(const std::shared_ptr<Transfer>& t);

 private:
  struct Socket {
    unsigned want = 0;
    WatchId watch = 0;
    std::uint64_t gen = 0;
  };

  // Runs fn on the loop thread. False if the client is closed (fn is dropped).
  bool post(std::function<void()> fn);
  void drain_posted();

  // ---- loop thread ----
  void start_transfer(const std::shared_ptr<Transfer>& t);
  void finish(Transfer* t, std::optional<Error> error);
  void check_done();
  void arm_transfer_timer(Transfer* t);
  void on_transfer_timer(Transfer* t, std::uint64_t gen);
  void watch_socket(curl_socket_t s, Socket& st);
  // may_stall: false once the fault point http_stall held this readiness back.
  void on_socket_ready(curl_socket_t s, std::uint64_t gen, unsigned bits, bool may_stall = true);
  void on_curl_timer(std::uint64_t gen);
  Error map_curl_error(Transfer* t, CURLcode code) const;

  static int socket_cb(CURL* easy, curl_socket_t s, int what, void* userp, void* socketp);
  static int timer_cb(CURLM* multi, long timeout_ms, void* userp);
  static size_t write_cb(char* data, size_t size, size_t n, void* userp);
  static size_t header_cb(char* data, size_t size, size_t n, void* userp);

  Environment& env_;
  const HttpClientOptions options_;
  std::atomic<std::size_t> in_flight_{0};
  std::atomic<std::size_t> connections_{0};

  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
  bool drain_scheduled_ = false;
  bool closed_ = false;

  // Loop thread only.
  CURLM* multi_ = nullptr;
  std::unordered_map<Transfer*, std::shared_ptr<Transfer>> active_;
  std::unordered_map<curl_socket_t, Socket> sockets_;
  std::uint64_t next_gen_ = 1;
  TimerId curl_timer_ = 0;
  std::uint64_t curl_timer_gen_ = 0;
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
  multi_ = curl_multi_init();
  if (multi_ == nullptr) return Error(ErrorKind::kInternal, "curl_multi_init failed");
  curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &HttpCore::socket_cb);
  curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &HttpCore::timer_cb);
  curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
  if (options_.max_connections != 0) {
    curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS, static_cast<long>(options_.max_connections));
    // The cache must hold the connections that may be open, or finished ones are closed
    // instead of kept for reuse.
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(options_.max_connections));
  }
  if (options_.max_host_connections != 0) {
    curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(options_.max_host_connections));
  }
  return ok_status();
}

// ---------------------------------------------------------------- posting to the loop

bool HttpCore::post(std::function<void()> fn) {
  bool schedule = false;
  {
    std::lock_guard lock(post_mu_);
    if (closed_) return false;
    posted_.push_back(std::move(fn));
    schedule = !std::exchange(drain_scheduled_, true);
  }
  if (schedule) {
    std::weak_ptr<HttpCore> weak = weak_from_this();
    env_.add_timer(env_.now(), [weak] {
      if (auto core = weak.lock()) core->drain_posted();
    });
  }
  return true;
}

void HttpCore::drain_posted() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard lock(post_mu_);
    batch.swap(posted_);
    drain_scheduled_ = false;
  }
  for (auto& fn : batch) fn();
}

void HttpCore::shutdown() {
  auto work = [this] {
    for (auto& [raw, t] : std::unordered_map<Transfer*, std::shared_ptr<Transfer>>(active_)) {
      finish(raw, Error(ErrorKind::kCancelled, t->what + ": the HTTP client was closed"));
    }
    // Closes the cached connections (curl reports their sockets removed) first.
    curl_multi_cleanup(std::exchange(multi_, nullptr));
    for (auto& [s, st] : sockets_) {
      if (st.watch != 0) env_.cancel_watch(st.watch);
    }
    sockets_.clear();
    if (curl_timer_ != 0) env_.cancel_timer(std::exchange(curl_timer_, 0));
    ++curl_timer_gen_;
  };
  if (env_.deterministic()) {
    // One thread: the caller is the loop.
    {
      std::lock_guard lock(post_mu_);
      closed_ = true;
    }
    drain_posted();  // pending cancels and starts (starts of a closed client finish at once)
    work();
    return;
  }
  std::mutex done_mu;
  std::condition_variable done_cv;
  bool done = false;
  bool posted = post([&] {
    {
      std::lock_guard lock(post_mu_);
      closed_ = true;
    }
    drain_posted();
    work();
    std::lock_guard lock(done_mu);
    done = true;
    done_cv.notify_one();
  });
  if (!posted) return;
  std::unique_lock lock(done_mu);
  done_cv.wait(lock, [&] { return done; });
}

// ---------------------------------------------------------------- process side

Result<std::shared_ptr<Transfer>> HttpCore::prepare(Context& ctx, HttpRequest& req, bool streaming) {
  auto t = std::make_shared<Transfer>();
  t->method = req.method;
  t->url = std::move(req.url);
  t->what = req.method + " " + redact_url(t->url);
  if (!is_token(t->method)) {
    return Error(ErrorKind::kInvalidArgument, "HTTP request: bad method for " + redact_url(t->url));
  }
  std::string_view scheme = std::string_view(t->url).substr(0, t->url.find("://"));
  if (t->url.find("://") == std::string::npos || !(iequals(scheme, "http") || iequals(scheme, "https"))) {
    return Error(ErrorKind::kInvalidArgument, t->what + ": only http:// and https:// URLs are supported");
  }
  bool has_content_type = false, has_expect = false;
  for (const auto& f : req.headers.fields()) {
    if (!is_token(f.name) || f.value.find_first_of("\r\n") != std::string::npos) {
      // The value is not echoed: it may be a secret.
      return Error(ErrorKind::kInvalidArgument, t->what + ": header '" + (is_token(f.name) ? f.name : "?") +
                                                    "' has a malformed name or a CR/LF in its value");
    }
    has_content_type |= iequals(f.name, "content-type");
    has_expect |= iequals(f.name, "expect");
    t->header_lines.push_back(f.value.empty() ? f.name + ";" : f.name + ": " + f.value);
  }
  // curl would add these on its own for a body: a form content type nobody asked for, and
  // Expect: 100-continue, which costs a round trip.
  if (!has_content_type) t->header_lines.emplace_back("Content-Type:");
  if (!has_expect) t->header_lines.emplace_back("Expect:");
  t->request_body = std::move(req.body);
  t->streaming = streaming;
  t->timeouts = req.timeouts.value_or(options_.timeouts);
  t->started = ctx.now();
  t->deadline = ctx.deadline();
  if (t->started >= t->deadline) {
    return Error(ErrorKind::kDeadlineExceeded, t->what + ": the process deadline passed before the request");
  }

  std::size_t n = in_flight_.fetch_add(1) + 1;
  if (n > options_.max_in_flight) {
    in_flight_.fetch_sub(1);
    return Error(ErrorKind::kBulkheadFull, t->what + ": " + std::to_string(options_.max_in_flight) +
                                               " HTTP requests are already in flight (max_in_flight)");
  }
  return t;
}

void HttpCore::submit(const std::shared_ptr<Transfer>& t) {
  std::weak_ptr<HttpCore> weak = weak_from_this();
  bool ok = post([weak, t] {
    if (auto core = weak.lock()) core->start_transfer(t);
  });
  if (!ok) {
    in_flight_.fetch_sub(1);
    std::optional<Completion> c;
    {
      std::lock_guard lock(t->mu);
      t->finished = true;
      t->error = Error(ErrorKind::kCancelled, t->what + ": the HTTP client was closed");
      c = t->take_waiter_if_ready_locked();
    }
    if (c) c->complete(std::any{});
  }
}

void HttpCore::cancel(const std::shared_ptr<Transfer>& t) {
  {
    std::lock_guard lock(t->mu);
    if (t->finished) return;
  }
  std::weak_ptr<HttpCore> weak = weak_from_this();
  post([weak, t] {
    auto core = weak.lock();
    if (core && core->active_.count(t.get()) != 0) {
      core->finish(t.get(), Error(ErrorKind::kCancelled, t->what + ": cancelled"));
    }
  });
}

void HttpCore::resume(const std::shared_ptr<Transfer>& t) {
  std::weak_ptr<HttpCore> weak = weak_from_this();
  post([weak, t] {
    auto core = weak.lock();
    if (!core || core->active_.count(t.get()) == 0) return;
    {
      std::lock_guard lock(t->mu);
      t->paused = false;
      t->resume_pending = false;
    }
    t->last_activity = core->env_.now();  // the pause was the reader's, not the server's
    curl_easy_pause(t->easy, CURLPAUSE_CONT);
    // While paused the timer may have been re-armed for the total timeout only: the idle
    // timeout applies again from now.
    if (core->active_.count(t.get()) != 0) core->arm_transfer_timer(t.get());
    core->check_done();
  });
}

// ---------------------------------------------------------------- loop thread

void HttpCore::start_transfer(const std::shared_ptr<Transfer>& t) {
  Transfer* raw = t.get();
  if (multi_ == nullptr) {  // closed meanwhile
    active_.emplace(raw, t);
    finish(raw, Error(ErrorKind::kCancelled, t->what + ": the HTTP client was closed"));
    return;
  }
  CURL* e = curl_easy_init();
  if (e == nullptr) {
    active_.emplace(raw, t);
    finish(raw, Error(ErrorKind::kInternal, t->what + ": curl_easy_init failed"));
    return;
  }
  raw->easy = e;
  raw->core = this;
  for (const auto& line : raw->header_lines) raw->headers_list = curl_slist_append(raw->headers_list, line.c_str());
  curl_easy_setopt(e, CURLOPT_URL, raw->url.c_str());
  curl_easy_setopt(e, CURLOPT_PRIVATE, raw);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, raw->error_buffer);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, raw->headers_list);
  curl_easy_setopt(e, CURLOPT_USERAGENT, options_.user_agent.c_str());
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &HttpCore::write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, raw);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &HttpCore::header_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, raw);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, to_curl_ms(raw->timeouts.connect));
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, options_.verify_tls ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, options_.verify_tls ? 2L : 0L);
  if (!options_.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, options_.ca_file.c_str());
  if (options_.proxy) curl_easy_setopt(e, CURLOPT_PROXY, options_.proxy->c_str());
  if (options_.follow_redirects) {
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
  }
  const std::string& m = raw->method;
  if (m == "HEAD") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (!raw->request_body.empty() || m == "POST" || m == "PUT" || m == "PATCH") {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, raw->request_body.data());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(raw->request_body.size()));
    if (m != "POST") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m.c_str());
  } else if (m != "GET") {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m.c_str());
  }
  active_.emplace(raw, t);
  raw->last_activity = env_.now();
  CURLMcode rc = curl_multi_add_handle(multi_, e);
  if (rc != CURLM_OK) {
    finish(raw, Error(ErrorKind::kInternal, raw->what + ": curl_multi_add_handle: " + curl_multi_strerror(rc)));
    return;
  }
  arm_transfer_timer(raw);
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
    if (multi_ != nullptr) curl_multi_remove_handle(multi_, t->easy);
    curl_easy_cleanup(std::exchange(t->easy, nullptr));
  }
  if (t->headers_list != nullptr) curl_slist_free_all(std::exchange(t->headers_list, nullptr));
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
  if (c) c->complete(std::any{});
}

Error HttpCore::map_curl_error(Transfer* t, CURLcode code) const {
  if (t->abort_error) return *t->abort_error;
  std::string detail = t->error_buffer[0] != '\0' ? std::string(t->error_buffer) : curl_easy_strerror(code);
  // curl's messages may repeat the URL; ours already names it without its query.
  std::string msg = t->what + ": " + detail;
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      // Only the connect timeout is left to curl; the others are ours (arm_transfer_timer).
      return Error(ErrorKind::kTimeout, t->what + ": connect timeout (" + ms_text(t->timeouts.connect) + ")");
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

void HttpCore::check_done() {
  if (multi_ == nullptr) return;
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
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
    at = std::min(at, add_saturating(t->started, t->timeouts.first_byte));
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
    if (auto core = weak.lock()) core->on_transfer_timer(t, gen);
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
                    t->what + ": the process deadline passed after " + ms_text(elapsed) + " in flight"));
  } else if (now >= add_saturating(t->started, t->timeouts.total)) {
    finish(t, Error(ErrorKind::kTimeout, t->what + ": total timeout (" + ms_text(t->timeouts.total) + ")"));
  } else if (!first_byte && now >= add_saturating(t->started, t->timeouts.first_byte)) {
    finish(t, Error(ErrorKind::kTimeout,
                    t->what + ": first-byte timeout (" + ms_text(t->timeouts.first_byte) + "): no response yet"));
  } else if (first_byte && !paused && now >= add_saturating(t->last_activity, t->timeouts.idle)) {
    finish(t, Error(ErrorKind::kTimeout, t->what + ": idle timeout (" + ms_text(t->timeouts.idle) +
                                             " without data) after " + std::to_string(t->body_bytes) + " body bytes"));
  } else {
    arm_transfer_timer(t);
  }
}

int HttpCore::socket_cb(CURL* /*easy*/, curl_socket_t s, int what, void* userp, void* /*socketp*/) {
  auto* core = static_cast<HttpCore*>(userp);
  if (what == CURL_POLL_REMOVE) {
    auto it = core->sockets_.find(s);
    if (it != core->sockets_.end()) {
      if (it->second.watch != 0) core->env_.cancel_watch(it->second.watch);
      core->sockets_.erase(it);
    }
    return 0;
  }
  Socket& st = core->sockets_[s];
  unsigned want = what == CURL_POLL_IN ? kFdReadable : what == CURL_POLL_OUT ? kFdWritable : kFdReadable | kFdWritable;
  if (st.watch != 0 && st.want == want) return 0;
  st.want = want;
  if (st.watch != 0) core->env_.cancel_watch(std::exchange(st.watch, 0));
  core->watch_socket(s, st);
  return 0;
}

void HttpCore::watch_socket(curl_socket_t s, Socket& st) {
  std::uint64_t gen = next_gen_++;
  st.gen = gen;
  std::weak_ptr<HttpCore> weak = weak_from_this();
  auto w = env_.watch_fd(s, st.want, [weak, s, gen](unsigned bits) {
    if (auto core = weak.lock()) core->on_socket_ready(s, gen, bits);
  });
  // A failed watch leaves the socket to curl's own timeouts and ours; it cannot happen for
  // a valid open socket.
  st.watch = w.ok() ? *w : 0;
}

void HttpCore::on_socket_ready(curl_socket_t s, std::uint64_t gen, unsigned bits, bool may_stall) {
  auto it = sockets_.find(s);
  if (it == sockets_.end() || it->second.gen != gen || multi_ == nullptr) return;
  it->second.watch = 0;
  if (may_stall && env_.fault(FaultPoint::kHttpStall)) {
    // The bytes wait in the socket: curl hears of them only after the stall (a watch that
    // curl asks for meanwhile takes over; this one then finds its generation stale).
    std::weak_ptr<HttpCore> weak = weak_from_this();
    env_.add_timer(add_saturating(env_.now(), env_.fault_delay(FaultPoint::kHttpStall)), [weak, s, gen, bits] {
      if (auto core = weak.lock()) core->on_socket_ready(s, gen, bits, false);
    });
    return;
  }
  int action = ((bits & kFdReadable) ? CURL_CSELECT_IN : 0) | ((bits & kFdWritable) ? CURL_CSELECT_OUT : 0) |
               ((bits & kFdError) ? CURL_CSELECT_ERR : 0);
  int running = 0;
  curl_multi_socket_action(multi_, s, action, &running);
  // One-shot watches: watch again unless curl changed or removed the socket meanwhile.
  it = sockets_.find(s);
  if (it != sockets_.end() && it->second.gen == gen && it->second.watch == 0) watch_socket(s, it->second);
  check_done();
}

int HttpCore::timer_cb(CURLM* /*multi*/, long timeout_ms, void* userp) {
  auto* core = static_cast<HttpCore*>(userp);
  if (core->curl_timer_ != 0) core->env_.cancel_timer(std::exchange(core->curl_timer_, 0));
  std::uint64_t gen = ++core->curl_timer_gen_;
  if (timeout_ms < 0) return 0;
  std::weak_ptr<HttpCore> weak = core->weak_from_this();
  core->curl_timer_ =
      core->env_.add_timer(add_saturating(core->env_.now(), std::chrono::milliseconds(timeout_ms)), [weak, gen] {
        if (auto c = weak.lock()) c->on_curl_timer(gen);
      });
  return 0;
}

void HttpCore::on_curl_timer(std::uint64_t gen) {
  if (gen != curl_timer_gen_ || multi_ == nullptr) return;
  curl_timer_ = 0;
  int running = 0;
  curl_multi_socket_action(multi_, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done();
}

size_t HttpCore::header_cb(char* data, size_t size, size_t n, void* userp) {
  auto* t = static_cast<Transfer*>(userp);
  HttpCore* core = t->core;
  std::size_t len = size * n;
  t->header_bytes += len;
  if (t->header_bytes > core->options_.max_header_bytes) {
    t->abort_error =
        Error(ErrorKind::kPermanent, t->what + ": response headers larger than " +
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
  if (c) c->complete(std::any{});
  return len;
}

size_t HttpCore::write_cb(char* data, size_t size, size_t n, void* userp) {
  auto* t = static_cast<Transfer*>(userp);
  HttpCore* core = t->core;
  std::size_t len = size * n;
  if (core->env_.fault(FaultPoint::kHttpReset)) {
    t->abort_error =
        Error(ErrorKind::kTransient, t->what + ": connection reset after " + std::to_string(t->body_bytes) +
                                         " body bytes (fault point http_reset)");
    return 0;
  }
  if (t->body_bytes + len > core->options_.max_body_bytes) {
    t->abort_error =
        Error(ErrorKind::kPermanent, t->what + ": response body larger than " +
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
  if (c) c->complete(std::any{});
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
                 t.what + ": the process deadline passed after " + ms_text(now - t.started) + " in flight");
  }
  return Error(r.error().kind(), t.what + ": " + r.error().message());
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

Task<Result<HttpResponse>> HttpClient::request(Context& ctx, HttpRequest req) {
  std::shared_ptr<HttpCore> core = core_;
  auto prepared = core->prepare(ctx, req, /*streaming=*/false);
  if (!prepared.ok()) co_return std::move(prepared).error();
  std::shared_ptr<Transfer> t = std::move(*prepared);
  TransferGuard guard(core, t);
  core->submit(t);
  std::function<void(Completion)> start = [t](Completion c) { t->wait_for(WakeOn::kFinished, std::move(c)); };
  Result<std::any> waited = co_await ctx.await_external(std::move(start));
  waited = internal::name_wait_error(std::move(waited), *t, ctx.now());
  if (!waited.ok()) co_return std::move(waited).error();
  std::lock_guard lock(t->mu);
  if (t->error) co_return *t->error;
  HttpResponse response;
  response.status = t->status;
  response.headers = std::move(t->headers);
  response.body = std::move(t->body);
  co_return response;
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
