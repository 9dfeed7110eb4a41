// The HTTP server: non-blocking sockets on the environment's event loop, requests parsed by
// llhttp (through HttpRequestParser, net/http_request_parser.hpp).
//
// Locking. One recursive mutex per server (ServerCore::mu_) guards every connection and the
// listener. The loop's callbacks (accept, readiness, the timeout timer) and the handler run
// under it; responder calls from any thread take it too, and may re-enter it from inside the
// handler. The loop is single-threaded, so the lock is uncontended unless responders run on
// other threads.
//
// Watches. Environment watches are one-shot; a connection has at most one at a time, for the
// readiness it currently needs (readable while reading a request or to notice the client
// leaving during a response; writable while output is pending). Every watch carries a
// generation: the real environment runs a ready callback after taking it out of its table, so
// a cancel can come too late and the stale callback must ignore itself. A watch is always
// cancelled before its fd is closed (a cancel after the close could remove the watch of a
// new fd with the same number).
//
// Timeouts without per-request timers. Each kind of timeout has one constant duration, so
// connections waiting under it form a FIFO list ordered by deadline (intrusive, O(1) to
// join, leave or move to the tail on progress). One server timer is armed for the earliest
// head of the lists; when it fires it expires the heads that are due and re-arms. A request
// costs no timer operation and no scan over the connections.
//
// Ownership. ServerCore owns the connections (shared_ptr in conns_); a responder holds its
// connection; a connection holds the core. The cycle is broken when a connection closes (it
// leaves conns_). Env callbacks hold weak pointers.
#include "nines/net/http_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "net/http_request_parser.hpp"
#include "net/http_util.hpp"
#include "nines/core/check.hpp"

namespace nines::net {

std::string_view HttpServerRequest::path() const {
  std::string_view t(target);
  return t.substr(0, t.find('?'));
}

std::string_view HttpServerRequest::query() const {
  std::string_view t(target);
  std::size_t q = t.find('?');
  return q == std::string_view::npos ? std::string_view() : t.substr(q + 1);
}

namespace internal {

namespace {

constexpr std::size_t kReadBufferBytes = 64u << 10;
constexpr int kReadsPerEvent = 4;  // then the watch is re-armed: other connections get a turn
constexpr int kAcceptsPerEvent = 64;
constexpr std::size_t kKeepOutputCapacity = 64u << 10;  // a drained output buffer larger than this is freed
constexpr std::size_t kLingerBytes = 1u << 20;          // discarded after an error answer before closing
constexpr Duration kLingerTimeout = std::chrono::seconds(2);
constexpr Duration kAcceptRetry = std::chrono::milliseconds(100);  // after EMFILE and the like
// A head (or the trailers) as received, whitespace included. llhttp has no bound of its own;
// this is the one http-parser had (HTTP_MAX_HEADER_SIZE), and max_header_bytes stays within it.
constexpr std::size_t kMaxHeadBytes = 80u << 10;

// Where a connection is in its request/response cycle.
enum class Phase : std::uint8_t {
  kIdle,        // keep-alive, waiting for the first byte of a request
  kHead,        // reading a request head
  kBody,        // reading a request body
  kResponding,  // the handler has the request; the response is not fully written yet
  kLinger,      // answered with an error: discarding what the client still sends, then close
  kClosed,
};

// The only moves of a connection's phase (set_phase checks them): a request goes head, body
// (a request without one passes through it at once), responding, then idle for the next one
// or closed; the server's own error answer (reject) comes before the handler has the request,
// never during its response; anything but closed may close.
[[maybe_unused]] bool legal_phase_move(Phase from, Phase to) {
  switch (to) {
    case Phase::kIdle: return from == Phase::kResponding;
    case Phase::kHead: return from == Phase::kIdle;
    case Phase::kBody: return from == Phase::kHead;
    case Phase::kResponding: return from == Phase::kBody;
    case Phase::kLinger: return from == Phase::kHead || from == Phase::kBody;
    case Phase::kClosed: return from != Phase::kClosed;
  }
  return false;
}

// The current request's response.
enum class Reply : std::uint8_t { kNone, kStreaming, kDone };

// The timeout lists (see the file comment); kNone: in none.
enum ListKind : std::uint8_t { kListHead, kListIdle, kListIo, kListLinger, kListCount, kListNone = kListCount };

std::string errno_text(int e) { return std::strerror(e); }

// The status line's reason phrase (llhttp has only the enum names: "NOT_FOUND").
std::string_view reason_phrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 208: return "Already Reported";
    case 226: return "IM Used";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Entity";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 510: return "Not Extended";
    case 511: return "Network Authentication Required";
    default: return "Unknown";
  }
}

void append_number(std::string& out, std::uint64_t n) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, n);
  out.append(buf, r.ptr);
}

bool header_value_ok(std::string_view v) {
  return v.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

// True if the comma-separated header value contains `token` (case-insensitively).
bool has_token(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    std::size_t comma = value.find(',');
    if (iequals(trim(value.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

Error cancelled(std::string_view why) { return Error(ErrorKind::kCancelled, "HTTP response: " + std::string(why)); }
Error misuse(std::string_view why) { return Error(ErrorKind::kInvalidArgument, "HTTP response: " + std::string(why)); }

}  // namespace

struct ServerCounters {
  std::atomic<std::uint64_t> connections_accepted{0}, connections_open{0}, requests{0};
  std::atomic<std::uint64_t> responses[6] = {};  // by status / 100
  std::atomic<std::uint64_t> rejected_connection_limit{0}, rejected_malformed{0}, rejected_too_large{0},
      rejected_timeout{0}, closed_idle{0}, closed_slow_reader{0}, closed_by_client{0}, handler_errors{0}, aborted{0};

  static void inc(std::atomic<std::uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }
  void response(int status) {
    int cls = status / 100;
    if (cls >= 1 && cls <= 5) inc(responses[cls]);
  }
};

class ServerConn : public std::enable_shared_from_this<ServerConn> {
 public:
  ServerConn(std::shared_ptr<ServerCore> core, int fd, HttpRequestParser::Limits limits)
      : core_(std::move(core)), fd_(fd) {
    parser_.emplace(limits);
  }
  ~ServerConn() {
    if (fd_ >= 0) ::close(fd_);  // never reached in practice: close() runs first
  }

  void set_phase(Phase next) {
    NINES_DCHECK(legal_phase_move(phase_, next));
    phase_ = next;
  }

  // Everything below is guarded by core_->mu_.
  std::shared_ptr<ServerCore> core_;
  int fd_;
  Phase phase_ = Phase::kHead;
  Reply reply_ = Reply::kNone;
  std::uint64_t seq_ = 0;     // number of the request being (or last) handled
  bool keep_alive_ = true;    // of the current request: the connection serves another after it
  bool head_method_ = false;  // the current request is HEAD: responses carry no body
  bool http10_ = false;
  bool chunked_out_ = false;     // the current stream is sent chunked
  bool in_dispatch_ = false;     // inside the handler call for this connection
  bool read_blocked_ = false;    // pipelined bytes wait in the socket until the response is done
  bool process_posted_ = false;  // pipelined bytes in pending_in_ are to be parsed by a posted task
  bool send_continue_ = false;   // answer Expect: 100-continue unless the body is here already

  // Request parsing; reset (its memory freed) when the connection closes.
  std::optional<HttpRequestParser> parser_;
  std::string pending_in_;  // bytes read past a complete request (pipelining)
  std::size_t lingered_ = 0;

  // Output not yet taken by the kernel: out_[out_off_..].
  std::string out_;
  std::size_t out_off_ = 0;
  std::size_t buffered() const { return out_.size() - out_off_; }

  // The readiness watch.
  WatchId watch_ = 0;
  unsigned watch_events_ = 0;
  std::uint64_t watch_gen_ = 0;

  // The timeout list the connection is in.
  ListKind list_ = kListNone;
  ServerConn* prev_ = nullptr;
  ServerConn* next_ = nullptr;
  TimePoint deadline_{};
};

class ServerCore : public std::enable_shared_from_this<ServerCore> {
 public:
  ServerCore(Environment& env, HttpServerOptions options, HttpHandler handler, int listen_fd)
      : env_(env), options_(std::move(options)), handler_(std::move(handler)), listen_fd_(listen_fd) {
    durations_[kListHead] = options_.header_timeout;
    durations_[kListIdle] = options_.idle_timeout;
    durations_[kListIo] = options_.io_timeout;
    durations_[kListLinger] = std::min(kLingerTimeout, options_.io_timeout);
    parser_limits_ = {.max_header_bytes = options_.max_header_bytes,
                      .max_raw_head_bytes = kMaxHeadBytes,
                      .max_body_bytes = options_.max_body_bytes};
    read_buf_.resize(kReadBufferBytes);
  }
  ~ServerCore() {
    if (listen_fd_ >= 0) ::close(listen_fd_);
  }

  void start() {
    std::lock_guard lock(mu_);
    watch_listener();
  }
  void stop();
  HttpServerStats stats() const;
  const HttpServerOptions& options() const { return options_; }

  // Responder calls (any thread).
  bool open(ServerConn& c, std::uint64_t seq);
  Status respond(ServerConn& c, std::uint64_t seq, int status, const HttpHeaders& headers, std::string body);
  Status start_stream(ServerConn& c, std::uint64_t seq, int status, const HttpHeaders& headers);
  Status write(ServerConn& c, std::uint64_t seq, std::string_view chunk);
  Status end(ServerConn& c, std::uint64_t seq);
  void abort(ServerConn& c, std::uint64_t seq);
  std::size_t buffered(ServerConn& c);

 private:
  // ---- listener
  void watch_listener();
  void on_listen_ready(std::uint64_t gen);
  void refuse_at_limit(int fd);
  void add_connection(int fd);

  // ---- connections (all under mu_)
  void on_conn_ready(ServerConn& c, std::uint64_t gen, unsigned bits);
  void on_readable(ServerConn& c);
  void feed(ServerConn& c, const char* data, std::size_t len);
  bool parse(ServerConn& c, const char*& data, std::size_t& len);
  void dispatch(ServerConn& c);
  void post_pending(ServerConn& c);
  void reject(ServerConn& c, int status, std::string_view reason, std::atomic<std::uint64_t>& counter);
  void response_written(ServerConn& c);
  void queue_output(ServerConn& c, std::string_view a, std::string_view b = {}, std::string_view d = {});
  void flush(ServerConn& c);
  void close(ServerConn& c);
  void settle(ServerConn& c);
  void update_watch(ServerConn& c);
  Status check_open(ServerConn& c, std::uint64_t seq);
  Status build_head(ServerConn& c, int status, const HttpHeaders& headers, bool stream, std::size_t body_size);

  // ---- timeout lists and the server timer
  void list_remove(ServerConn& c);
  void list_append(ServerConn& c, ListKind kind, TimePoint now);
  void arm_timer(TimePoint at);
  void on_timer(std::uint64_t gen);
  void expire(ServerConn& c, ListKind kind);

  Environment& env_;
  const HttpServerOptions options_;
  HttpHandler handler_;
  HttpRequestParser::Limits parser_limits_;
  ServerCounters counters_;

  std::recursive_mutex mu_;
  // Guarded by mu_.
  bool stopped_ = false;
  int listen_fd_;
  WatchId listen_watch_ = 0;
  std::uint64_t listen_gen_ = 0;
  TimerId accept_retry_timer_ = 0;
  std::unordered_map<ServerConn*, std::shared_ptr<ServerConn>> conns_;
  std::string read_buf_;  // shared by all reads (one at a time, under mu_)
  std::string scratch_;   // a response head being built
  struct List {
    ServerConn* head = nullptr;
    ServerConn* tail = nullptr;
  };
  std::array<List, kListCount> lists_;
  std::array<Duration, kListCount> durations_{};
  TimerId timer_ = 0;
  TimePoint timer_at_ = TimePoint::max();
  std::uint64_t timer_gen_ = 0;

  friend class nines::net::HttpServer;
};

// ---------------------------------------------------------------- listener

void ServerCore::watch_listener() {
  if (stopped_) return;
  std::uint64_t gen = ++listen_gen_;
  std::weak_ptr<ServerCore> weak = weak_from_this();
  auto w = env_.watch_fd(listen_fd_, kFdReadable, [weak, gen](unsigned) {
    if (auto core = weak.lock()) core->on_listen_ready(gen);
  });
  listen_watch_ = w.ok() ? *w : 0;  // cannot fail for an open socket
}

void ServerCore::on_listen_ready(std::uint64_t gen) {
  std::lock_guard lock(mu_);
  if (stopped_ || gen != listen_gen_) return;
  listen_watch_ = 0;
  for (int i = 0; i < kAcceptsPerEvent; ++i) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      if (e == EINTR || e == ECONNABORTED || e == EPROTO) continue;
      if (e == EAGAIN || e == EWOULDBLOCK) break;
      // Out of file descriptors or memory: the listener stays readable, so watching it again
      // at once would spin. Retry a little later.
      std::weak_ptr<ServerCore> weak = weak_from_this();
      accept_retry_timer_ = env_.add_timer(add_saturating(env_.now(), kAcceptRetry), [weak] {
        if (auto core = weak.lock()) {
          std::lock_guard relock(core->mu_);
          core->accept_retry_timer_ = 0;
          core->watch_listener();
        }
      });
      return;
    }
    ServerCounters::inc(counters_.connections_accepted);
    if (conns_.size() >= options_.max_connections) {
      refuse_at_limit(fd);
    } else {
      add_connection(fd);
      if (stopped_) return;  // by the handler
    }
  }
  watch_listener();
}

void ServerCore::refuse_at_limit(int fd) {
  static constexpr std::string_view kBusy =
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 41\r\n"
      "Connection: close\r\nRetry-After: 1\r\n\r\nthe server has too many open connections\n";
  // Best effort: a new socket's send buffer is empty, so this normally goes out whole.
  [[maybe_unused]] ssize_t n = ::send(fd, kBusy.data(), kBusy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ::close(fd);
  ServerCounters::inc(counters_.rejected_connection_limit);
  counters_.response(503);
}

void ServerCore::add_connection(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // responses and chunks go out at once
  auto conn = std::make_shared<ServerConn>(shared_from_this(), fd, parser_limits_);
  ServerConn& c = *conn;
  conns_.emplace(&c, conn);
  ServerCounters::inc(counters_.connections_open);
  NINES_DCHECK(c.phase_ == Phase::kHead);  // the header timeout runs from the accept
  // The request often arrived with the connection: read it now rather than after a watch.
  on_readable(c);
  if (c.phase_ != Phase::kClosed) settle(c);
}

// ---------------------------------------------------------------- reading

void ServerCore::on_conn_ready(ServerConn& c, std::uint64_t gen, unsigned bits) {
  std::lock_guard lock(mu_);
  if (c.phase_ == Phase::kClosed || gen != c.watch_gen_) return;  // closed, or a stale watch
  c.watch_ = 0;
  c.watch_events_ = 0;
  if (c.buffered() > 0 && (bits & (kFdWritable | kFdError))) flush(c);
  if (c.phase_ != Phase::kClosed && (bits & (kFdReadable | kFdError))) on_readable(c);
  if (c.phase_ != Phase::kClosed) settle(c);
}

void ServerCore::on_readable(ServerConn& c) {
  if (c.phase_ == Phase::kResponding) {
    // Not reading (pipelined requests wait), only noticing a client that went away.
    char byte;
    ssize_t n = ::recv(c.fd_, &byte, 1, MSG_PEEK);
    if (n > 0) {
      c.read_blocked_ = true;
    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      ServerCounters::inc(counters_.closed_by_client);
      close(c);
    }
    return;
  }
  if (c.phase_ == Phase::kLinger) {
    for (;;) {
      ssize_t n = ::recv(c.fd_, read_buf_.data(), read_buf_.size(), 0);
      if (n > 0) {
        c.lingered_ += static_cast<std::size_t>(n);
        if (c.lingered_ > kLingerBytes) break;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      break;  // EOF or an error
    }
    close(c);
    return;
  }
  for (int i = 0; i < kReadsPerEvent; ++i) {
    ssize_t n = ::recv(c.fd_, read_buf_.data(), read_buf_.size(), 0);
    if (n > 0) {
      if (c.phase_ == Phase::kBody && c.list_ == kListIo) {
        // Progress: the body's silence timeout starts again.
        list_remove(c);
        list_append(c, kListIo, env_.now());
      }
      feed(c, read_buf_.data(), static_cast<std::size_t>(n));
      if (c.phase_ != Phase::kIdle && c.phase_ != Phase::kHead && c.phase_ != Phase::kBody) return;
      if (static_cast<std::size_t>(n) < read_buf_.size()) return;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    // EOF or a reset: between requests this is the client's normal goodbye; within one, the
    // client gave up on it.
    if (c.phase_ != Phase::kIdle) ServerCounters::inc(counters_.closed_by_client);
    close(c);
    return;
  }
}

// Parses `data`, dispatching each complete request; pipelined requests that the handler
// answered at once are parsed in the same call (a loop, not recursion).
void ServerCore::feed(ServerConn& c, const char* data, std::size_t len) {
  std::string carry;
  for (;;) {
    if (!parse(c, data, len)) return;  // needs more bytes, or rejected
    dispatch(c);
    if (c.phase_ != Phase::kIdle || c.pending_in_.empty() || c.process_posted_) return;
    carry = std::move(c.pending_in_);
    c.pending_in_.clear();
    data = carry.data();
    len = carry.size();
  }
}

// Runs the parser over data. True when a request is complete (the bytes after it are in
// pending_in_); false when it needs more bytes, or when the request was rejected.
bool ServerCore::parse(ServerConn& c, const char*& data, std::size_t& len) {
  HttpRequestParser& parser = *c.parser_;
  for (;;) {
    if (c.phase_ == Phase::kIdle && len > 0) c.set_phase(Phase::kHead);
    HttpRequestParser::Step step = parser.execute(data, len);
    data += step.consumed;
    len -= step.consumed;
    switch (step.event) {
      case HttpRequestParser::Event::kHead:
        // Checked and accepted: from here the body's silence timeout applies.
        c.set_phase(Phase::kBody);
        c.keep_alive_ = parser.keep_alive();
        c.head_method_ = parser.head_method();
        c.http10_ = parser.http10();
        c.send_continue_ = parser.expects_continue();
        continue;  // the body, or at once the end of a request without one
      case HttpRequestParser::Event::kRequest:
        c.send_continue_ = false;  // the body came with the head
        c.pending_in_.assign(data, len);
        len = 0;
        return true;
      case HttpRequestParser::Event::kError: {
        int status = parser.error_status();
        auto& counter = status == 413 || status == 431 ? counters_.rejected_too_large : counters_.rejected_malformed;
        reject(c, status, parser.error_reason(), counter);
        return false;
      }
      case HttpRequestParser::Event::kNeedMore:
        if (std::exchange(c.send_continue_, false)) {
          static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
          counters_.response(100);
          queue_output(c, kContinue);
        }
        return false;
    }
  }
}

void ServerCore::dispatch(ServerConn& c) {
  c.seq_++;
  c.reply_ = Reply::kNone;
  c.set_phase(Phase::kResponding);
  c.read_blocked_ = !c.pending_in_.empty();  // known pipelined bytes: no need to peek for EOF
  list_remove(c);
  ServerCounters::inc(counters_.requests);
  std::uint64_t seq = c.seq_;
  HttpServerRequest request = c.parser_->take_request();
  HttpResponder responder(c.shared_from_this(), seq);
  c.in_dispatch_ = true;
  bool threw = false;
  try {
    handler_(std::move(request), std::move(responder));
  } catch (...) {
    threw = true;
  }
  c.in_dispatch_ = false;
  if (threw) {
    ServerCounters::inc(counters_.handler_errors);
    if (c.phase_ == Phase::kClosed || c.seq_ != seq) return;
    if (c.reply_ == Reply::kNone) {
      HttpHeaders h{{"Content-Type", "text/plain"}};
      (void)respond(c, seq, 500, h, "internal server error: the handler failed\n");
    } else if (c.reply_ == Reply::kStreaming) {
      close(c);
    }
  }
}

// Pipelined bytes are parsed by a task on the loop (the handler must run there), after a
// response that finished outside the handler call (later, or on another thread).
void ServerCore::post_pending(ServerConn& c) {
  c.process_posted_ = true;
  std::weak_ptr<ServerConn> weak = c.weak_from_this();
  std::uint64_t seq = c.seq_;
  env_.add_timer(env_.now(), [weak, seq] {
    auto conn = weak.lock();
    if (!conn) return;
    ServerCore& core = *conn->core_;
    std::lock_guard lock(core.mu_);
    ServerConn& pc = *conn;
    if (pc.phase_ != Phase::kIdle || pc.seq_ != seq || !pc.process_posted_) return;
    pc.process_posted_ = false;
    std::string carry = std::move(pc.pending_in_);
    pc.pending_in_.clear();
    core.feed(pc, carry.data(), carry.size());
    if (pc.phase_ != Phase::kClosed) core.settle(pc);
  });
}

// ---------------------------------------------------------------- writing

// Sends a, b and d in order: directly if nothing is pending (most of the time all of it goes
// out at once, without a copy), the rest into out_.
void ServerCore::queue_output(ServerConn& c, std::string_view a, std::string_view b, std::string_view d) {
  std::array<std::string_view, 3> parts{a, b, d};
  std::size_t sent = 0;
  if (c.buffered() == 0) {
    c.out_.clear();
    c.out_off_ = 0;
    iovec iov[3];
    int count = 0;
    for (auto part : parts) {
      if (!part.empty()) iov[count++] = {const_cast<char*>(part.data()), part.size()};
    }
    if (count == 0) return;
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(count);
    ssize_t n;
    do {
      n = ::sendmsg(c.fd_, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      close(c);  // reset or gone
      return;
    }
    sent = n < 0 ? 0 : static_cast<std::size_t>(n);
  }
  for (auto part : parts) {
    if (sent >= part.size()) {
      sent -= part.size();
      continue;
    }
    c.out_.append(part.data() + sent, part.size() - sent);
    sent = 0;
  }
}

void ServerCore::flush(ServerConn& c) {
  while (c.buffered() > 0) {
    ssize_t n = ::send(c.fd_, c.out_.data() + c.out_off_, c.buffered(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) {
      close(c);
      return;
    }
    c.out_off_ += static_cast<std::size_t>(n);
    if (c.list_ == kListIo) {  // progress: the write timeout starts again
      list_remove(c);
      list_append(c, kListIo, env_.now());
    }
  }
  if (c.buffered() > 0) return;
  c.out_.clear();
  c.out_off_ = 0;
  if (c.out_.capacity() > kKeepOutputCapacity) std::string().swap(c.out_);
  if (c.phase_ == Phase::kLinger) {
    ::shutdown(c.fd_, SHUT_WR);
  } else if (c.phase_ == Phase::kResponding && c.reply_ == Reply::kDone) {
    response_written(c);
  }
}

// The current response is complete and written: close, or wait for the next request.
void ServerCore::response_written(ServerConn& c) {
  if (!c.keep_alive_ || stopped_) {
    close(c);
    return;
  }
  NINES_DCHECK(c.reply_ == Reply::kDone && c.buffered() == 0);
  c.set_phase(Phase::kIdle);
  c.read_blocked_ = false;
  if (c.pending_in_.empty() || c.in_dispatch_) return;  // in the handler: feed() goes on
  post_pending(c);
}

// `h` becomes "HTTP/1.1 <status> <reason>\r\n".
static void start_status_line(std::string& h, int status) {
  h.clear();
  h += "HTTP/1.1 ";
  append_number(h, static_cast<std::uint64_t>(status));
  h += ' ';
  h += reason_phrase(status);
  h += "\r\n";
}

// The server's own answer to a request it will not hand over; the connection then closes,
// after discarding (for a bounded time and amount) what the client still sends, so that a
// close with unread bytes does not reset the connection before the client reads the answer.
void ServerCore::reject(ServerConn& c, int status, std::string_view reason, std::atomic<std::uint64_t>& counter) {
  ServerCounters::inc(counter);
  counters_.response(status);
  std::string& h = scratch_;
  start_status_line(h, status);
  h += "Content-Type: text/plain\r\nContent-Length: ";
  append_number(h, reason.size() + 1);
  h += "\r\nConnection: close\r\n\r\n";
  h += reason;
  h += '\n';
  c.keep_alive_ = false;
  c.reply_ = Reply::kDone;
  c.pending_in_.clear();
  c.set_phase(Phase::kLinger);
  queue_output(c, h);
  if (c.phase_ == Phase::kClosed) return;
  if (c.buffered() == 0) ::shutdown(c.fd_, SHUT_WR);  // else once flushed
}

void ServerCore::close(ServerConn& c) {
  if (c.phase_ == Phase::kClosed) return;
  std::shared_ptr<ServerConn> keep = c.shared_from_this();  // conns_ may hold the last owner
  list_remove(c);
  if (c.watch_ != 0) env_.cancel_watch(std::exchange(c.watch_, 0));
  c.watch_events_ = 0;
  ++c.watch_gen_;
  ::close(std::exchange(c.fd_, -1));
  c.set_phase(Phase::kClosed);
  c.process_posted_ = false;
  std::string().swap(c.out_);
  c.out_off_ = 0;
  std::string().swap(c.pending_in_);
  c.parser_.reset();
  conns_.erase(&c);
  counters_.connections_open.fetch_sub(1, std::memory_order_relaxed);
}

// Puts the connection in the timeout list and under the watch its state needs.
void ServerCore::settle(ServerConn& c) {
  ListKind want = kListNone;
  switch (c.phase_) {
    case Phase::kIdle: want = c.process_posted_ ? kListNone : kListIdle; break;
    case Phase::kHead: want = kListHead; break;
    case Phase::kBody: want = kListIo; break;
    case Phase::kResponding: want = c.buffered() > 0 ? kListIo : kListNone; break;
    case Phase::kLinger: want = kListLinger; break;
    case Phase::kClosed: return;
  }
  if (want != c.list_) {
    list_remove(c);
    if (want != kListNone) list_append(c, want, env_.now());
  }
  update_watch(c);
}

void ServerCore::update_watch(ServerConn& c) {
  unsigned want = c.buffered() > 0 ? kFdWritable : 0;
  switch (c.phase_) {
    case Phase::kIdle: want |= c.process_posted_ ? 0 : kFdReadable; break;
    case Phase::kHead:
    case Phase::kBody: want |= kFdReadable; break;
    case Phase::kResponding: want |= c.read_blocked_ ? 0 : kFdReadable; break;
    case Phase::kLinger: want |= c.buffered() > 0 ? 0 : kFdReadable; break;
    case Phase::kClosed: return;
  }
  if (c.watch_ != 0 && c.watch_events_ == want) return;
  if (c.watch_ != 0) env_.cancel_watch(std::exchange(c.watch_, 0));
  c.watch_events_ = 0;
  if (want == 0) return;
  std::uint64_t gen = ++c.watch_gen_;
  std::weak_ptr<ServerConn> weak = c.weak_from_this();
  auto w = env_.watch_fd(c.fd_, want, [weak, gen](unsigned bits) {
    if (auto conn = weak.lock()) conn->core_->on_conn_ready(*conn, gen, bits);
  });
  if (!w.ok()) {  // cannot happen for an open socket; never leave a connection unwatched
    close(c);
    return;
  }
  c.watch_ = *w;
  c.watch_events_ = want;
}

// ---------------------------------------------------------------- timeouts

void ServerCore::list_remove(ServerConn& c) {
  if (c.list_ == kListNone) return;
  List& l = lists_[c.list_];
  (c.prev_ ? c.prev_->next_ : l.head) = c.next_;
  (c.next_ ? c.next_->prev_ : l.tail) = c.prev_;
  c.prev_ = c.next_ = nullptr;
  c.list_ = kListNone;
}

void ServerCore::list_append(ServerConn& c, ListKind kind, TimePoint now) {
  Duration d = durations_[kind];
  if (d == kInfinite) return;  // this timeout is off: no list
  List& l = lists_[kind];
  c.list_ = kind;
  c.deadline_ = add_saturating(now, d);
  c.prev_ = l.tail;
  c.next_ = nullptr;
  (l.tail ? l.tail->next_ : l.head) = &c;
  l.tail = &c;
  // Later in its list than any other, so it can only be the earliest overall if it is
  // earlier than the armed timer.
  if (timer_ == 0 || c.deadline_ < timer_at_) arm_timer(c.deadline_);
}

void ServerCore::arm_timer(TimePoint at) {
  if (stopped_) return;
  if (timer_ != 0) env_.cancel_timer(std::exchange(timer_, 0));
  std::uint64_t gen = ++timer_gen_;
  timer_at_ = at;
  std::weak_ptr<ServerCore> weak = weak_from_this();
  timer_ = env_.add_timer(at, [weak, gen] {
    if (auto core = weak.lock()) core->on_timer(gen);
  });
}

void ServerCore::on_timer(std::uint64_t gen) {
  std::lock_guard lock(mu_);
  if (stopped_ || gen != timer_gen_) return;
  timer_ = 0;
  timer_at_ = TimePoint::max();
  TimePoint now = env_.now();
  for (int k = 0; k < kListCount; ++k) {
    auto kind = static_cast<ListKind>(k);
    while (lists_[k].head != nullptr && lists_[k].head->deadline_ <= now) {
      std::shared_ptr<ServerConn> conn = lists_[k].head->shared_from_this();
      list_remove(*conn);
      expire(*conn, kind);
      if (conn->phase_ != Phase::kClosed) settle(*conn);
    }
  }
  TimePoint next = TimePoint::max();
  for (const List& l : lists_) {
    if (l.head != nullptr) next = std::min(next, l.head->deadline_);
  }
  if (next != TimePoint::max() && (timer_ == 0 || next < timer_at_)) arm_timer(next);
}

void ServerCore::expire(ServerConn& c, ListKind kind) {
  switch (kind) {
    case kListHead:
      reject(c, 408,
             "request head not received within " + std::to_string(to_millis(options_.header_timeout)) +
                 " ms (header_timeout)",
             counters_.rejected_timeout);
      return;
    case kListIdle:
      ServerCounters::inc(counters_.closed_idle);
      close(c);
      return;
    case kListIo:
      if (c.phase_ == Phase::kBody) {
        reject(c, 408,
               "request body stalled for " + std::to_string(to_millis(options_.io_timeout)) + " ms (io_timeout)",
               counters_.rejected_timeout);
      } else {
        ServerCounters::inc(counters_.closed_slow_reader);
        close(c);
      }
      return;
    case kListLinger:
    case kListCount: close(c); return;
  }
}

// ---------------------------------------------------------------- responder calls

Status ServerCore::check_open(ServerConn& c, std::uint64_t seq) {
  if (c.phase_ == Phase::kClosed) {
    return cancelled(stopped_ ? "the server stopped"
                              : "the connection is closed (the client went away, abort(), or a timeout)");
  }
  if (c.seq_ != seq || c.reply_ == Reply::kDone) return misuse("this request was answered already");
  return ok_status();
}

bool ServerCore::open(ServerConn& c, std::uint64_t seq) {
  std::lock_guard lock(mu_);
  return c.phase_ != Phase::kClosed && c.seq_ == seq && c.reply_ != Reply::kDone;
}

std::size_t ServerCore::buffered(ServerConn& c) {
  std::lock_guard lock(mu_);
  return c.phase_ == Phase::kClosed ? 0 : c.buffered();
}

// Validates and builds the status line and headers into scratch_; sets keep_alive_ and the
// framing of the response.
Status ServerCore::build_head(ServerConn& c, int status, const HttpHeaders& headers, bool stream,
                              std::size_t body_size) {
  if (status < 200 || status > 599) {
    return misuse("status " + std::to_string(status) + " is outside 200..599");
  }
  bool close_requested = false;
  for (const auto& f : headers.fields()) {
    if (!is_token(f.name)) return misuse("header name '" + f.name + "' is not a token");
    if (!header_value_ok(f.value)) return misuse("header '" + f.name + "' has CR, LF or NUL in its value");
    if (iequals(f.name, "content-length") || iequals(f.name, "transfer-encoding")) {
      return misuse("header '" + f.name + "' is set by the server (it frames the body)");
    }
    if (iequals(f.name, "connection")) close_requested |= has_token(f.value, "close");
  }
  bool no_body_status = status == 204 || status == 304;
  if (no_body_status && (stream || body_size > 0)) {
    return misuse("status " + std::to_string(status) + " has no body");
  }
  // A stream to an HTTP/1.0 client has no chunked encoding: its end is the connection's.
  bool close_delimited = stream && c.http10_ && !c.head_method_;
  if (close_requested || close_delimited || stopped_) c.keep_alive_ = false;
  c.chunked_out_ = stream && !c.http10_ && !c.head_method_;

  std::string& h = scratch_;
  start_status_line(h, status);
  for (const auto& f : headers.fields()) {
    if (iequals(f.name, "connection")) continue;
    h += f.name;
    h += ": ";
    h += f.value;
    h += "\r\n";
  }
  if (stream) {
    if (!c.http10_) h += "Transfer-Encoding: chunked\r\n";
  } else if (!no_body_status) {
    h += "Content-Length: ";
    append_number(h, body_size);
    h += "\r\n";
  }
  if (!c.keep_alive_) {
    h += "Connection: close\r\n";
  } else if (c.http10_) {
    h += "Connection: keep-alive\r\n";
  }
  h += "\r\n";
  return ok_status();
}

Status ServerCore::respond(ServerConn& c, std::uint64_t seq, int status, const HttpHeaders& headers, std::string body) {
  std::lock_guard lock(mu_);
  std::shared_ptr<ServerConn> keep = c.shared_from_this();
  if (auto s = check_open(c, seq); !s.ok()) return s;
  if (c.reply_ != Reply::kNone) return misuse("respond() after start_stream(); use write() and end()");
  if (auto s = build_head(c, status, headers, /*stream=*/false, body.size()); !s.ok()) return s;
  c.reply_ = Reply::kDone;
  counters_.response(status);
  queue_output(c, scratch_, c.head_method_ ? std::string_view() : std::string_view(body));
  if (c.phase_ == Phase::kClosed) return cancelled("the client went away while the response was sent");
  if (c.buffered() == 0) response_written(c);
  if (c.phase_ != Phase::kClosed) settle(c);
  return ok_status();
}

Status ServerCore::start_stream(ServerConn& c, std::uint64_t seq, int status, const HttpHeaders& headers) {
  std::lock_guard lock(mu_);
  std::shared_ptr<ServerConn> keep = c.shared_from_this();
  if (auto s = check_open(c, seq); !s.ok()) return s;
  if (c.reply_ != Reply::kNone) return misuse("start_stream() called twice");
  if (auto s = build_head(c, status, headers, /*stream=*/true, 0); !s.ok()) return s;
  c.reply_ = Reply::kStreaming;
  counters_.response(status);
  queue_output(c, scratch_);
  if (c.phase_ == Phase::kClosed) return cancelled("the client went away while the response was sent");
  settle(c);
  return ok_status();
}

Status ServerCore::write(ServerConn& c, std::uint64_t seq, std::string_view chunk) {
  std::lock_guard lock(mu_);
  std::shared_ptr<ServerConn> keep = c.shared_from_this();
  if (auto s = check_open(c, seq); !s.ok()) return s;
  if (c.reply_ != Reply::kStreaming) return misuse("write() without start_stream()");
  if (chunk.empty() || c.head_method_) return ok_status();
  if (c.chunked_out_) {
    char size_line[24];
    auto r = std::to_chars(size_line, size_line + sizeof size_line - 2, chunk.size(), 16);
    *r.ptr++ = '\r';
    *r.ptr++ = '\n';
    queue_output(c, std::string_view(size_line, static_cast<std::size_t>(r.ptr - size_line)), chunk, "\r\n");
  } else {
    queue_output(c, chunk);
  }
  if (c.phase_ == Phase::kClosed) return cancelled("the client went away while the stream was written");
  if (c.buffered() > options_.max_output_bytes) {
    std::size_t held = c.buffered();
    ServerCounters::inc(counters_.closed_slow_reader);
    close(c);
    return cancelled("the client reads too slowly: " + std::to_string(held) + " bytes unread, more than " +
                     std::to_string(options_.max_output_bytes) + " (max_output_bytes); connection closed");
  }
  settle(c);
  return ok_status();
}

Status ServerCore::end(ServerConn& c, std::uint64_t seq) {
  std::lock_guard lock(mu_);
  std::shared_ptr<ServerConn> keep = c.shared_from_this();
  if (auto s = check_open(c, seq); !s.ok()) return s;
  if (c.reply_ != Reply::kStreaming) return misuse("end() without start_stream()");
  c.reply_ = Reply::kDone;
  if (c.chunked_out_) queue_output(c, "0\r\n\r\n");
  if (c.phase_ == Phase::kClosed) return cancelled("the client went away while the stream was ended");
  if (c.buffered() == 0) response_written(c);
  if (c.phase_ != Phase::kClosed) settle(c);
  return ok_status();
}

void ServerCore::abort(ServerConn& c, std::uint64_t seq) {
  std::lock_guard lock(mu_);
  std::shared_ptr<ServerConn> keep = c.shared_from_this();
  if (!check_open(c, seq).ok()) return;
  ServerCounters::inc(counters_.aborted);
  close(c);
}

// ---------------------------------------------------------------- stop, stats

void ServerCore::stop() {
  std::lock_guard lock(mu_);
  if (stopped_) return;
  stopped_ = true;
  if (listen_watch_ != 0) env_.cancel_watch(std::exchange(listen_watch_, 0));
  ++listen_gen_;
  if (accept_retry_timer_ != 0) env_.cancel_timer(std::exchange(accept_retry_timer_, 0));
  if (listen_fd_ >= 0) ::close(std::exchange(listen_fd_, -1));
  if (timer_ != 0) env_.cancel_timer(std::exchange(timer_, 0));
  ++timer_gen_;
  std::vector<std::shared_ptr<ServerConn>> all;
  all.reserve(conns_.size());
  for (auto& [raw, conn] : conns_) all.push_back(conn);
  for (auto& conn : all) close(*conn);
}

HttpServerStats ServerCore::stats() const {
  auto get = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  const ServerCounters& k = counters_;
  HttpServerStats s;
  s.connections_accepted = get(k.connections_accepted);
  s.connections_open = get(k.connections_open);
  s.requests = get(k.requests);
  s.responses_1xx = get(k.responses[1]);
  s.responses_2xx = get(k.responses[2]);
  s.responses_3xx = get(k.responses[3]);
  s.responses_4xx = get(k.responses[4]);
  s.responses_5xx = get(k.responses[5]);
  s.rejected_connection_limit = get(k.rejected_connection_limit);
  s.rejected_malformed = get(k.rejected_malformed);
  s.rejected_too_large = get(k.rejected_too_large);
  s.rejected_timeout = get(k.rejected_timeout);
  s.closed_idle = get(k.closed_idle);
  s.closed_slow_reader = get(k.closed_slow_reader);
  s.closed_by_client = get(k.closed_by_client);
  s.handler_errors = get(k.handler_errors);
  s.aborted = get(k.aborted);
  return s;
}

}  // namespace internal

// ---------------------------------------------------------------- HttpResponder

bool HttpResponder::open() const { return conn_ && conn_->core_->open(*conn_, seq_); }

Status HttpResponder::respond(int status, HttpHeaders headers, std::string body) {
  if (!conn_) return internal::cancelled("an empty responder");
  return conn_->core_->respond(*conn_, seq_, status, headers, std::move(body));
}

Status HttpResponder::start_stream(int status, HttpHeaders headers) {
  if (!conn_) return internal::cancelled("an empty responder");
  return conn_->core_->start_stream(*conn_, seq_, status, headers);
}

Status HttpResponder::write(std::string_view chunk) {
  if (!conn_) return internal::cancelled("an empty responder");
  return conn_->core_->write(*conn_, seq_, chunk);
}

Status HttpResponder::end() {
  if (!conn_) return internal::cancelled("an empty responder");
  return conn_->core_->end(*conn_, seq_);
}

void HttpResponder::abort() {
  if (conn_) conn_->core_->abort(*conn_, seq_);
}

std::size_t HttpResponder::buffered_bytes() const { return conn_ ? conn_->core_->buffered(*conn_) : 0; }

// ---------------------------------------------------------------- HttpServer

namespace {

Status validate(const HttpServerOptions& o, const HttpHandler& handler) {
  auto bad = [](std::string what) { return Error(ErrorKind::kInvalidArgument, "HttpServerOptions: " + what); };
  if (!handler) return Error(ErrorKind::kInvalidArgument, "HttpServer: no handler");
  if (o.max_connections == 0) return bad("max_connections must be at least 1");
  if (o.max_header_bytes == 0 || o.max_header_bytes > internal::kMaxHeadBytes) {
    return bad("max_header_bytes " + std::to_string(o.max_header_bytes) + " is outside 1.." +
               std::to_string(internal::kMaxHeadBytes) + " (the server's bound on a whole head)");
  }
  if (o.max_output_bytes == 0) return bad("max_output_bytes must be at least 1");
  if (o.backlog < 1) return bad("backlog must be at least 1");
  for (auto [name, d] : {std::pair{"header_timeout", o.header_timeout}, std::pair{"idle_timeout", o.idle_timeout},
                         std::pair{"io_timeout", o.io_timeout}}) {
    if (d <= Duration::zero()) return bad(std::string(name) + " must be positive (kInfinite turns it off)");
  }
  return ok_status();
}

}  // namespace

Result<std::unique_ptr<HttpServer>> HttpServer::create(Environment& env, HttpServerOptions options,
                                                       HttpHandler handler) {
  if (auto s = validate(options, handler); !s.ok()) return std::move(s).error();
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (::inet_pton(AF_INET, options.bind_address.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(options.port);
    addr_len = sizeof *v4;
  } else if (::inet_pton(AF_INET6, options.bind_address.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(options.port);
    addr_len = sizeof *v6;
  } else {
    return Error(ErrorKind::kInvalidArgument, "HttpServerOptions: bind_address '" + options.bind_address +
                                                  "' is not a numeric IPv4 or IPv6 address");
  }
  bool ipv6 = addr.ss_family == AF_INET6;
  std::string where =
      (ipv6 ? "[" + options.bind_address + "]" : options.bind_address) + ":" + std::to_string(options.port);
  auto fail = [&](const char* op, int e, int fd) -> Error {
    if (fd >= 0) ::close(fd);
    ErrorKind kind = e == EADDRINUSE      ? ErrorKind::kAlreadyExists
                     : e == EADDRNOTAVAIL ? ErrorKind::kInvalidArgument
                     : e == EACCES        ? ErrorKind::kPermanent
                                          : ErrorKind::kInternal;
    return Error(kind, std::string("HttpServer: ") + op + " " + where + ": " + internal::errno_text(e));
  };
  int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail("socket for", errno, -1);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0) return fail("bind", errno, fd);
  if (::listen(fd, options.backlog) != 0) return fail("listen on", errno, fd);
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof bound;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len) != 0) return fail("getsockname", errno, fd);
  std::uint16_t port = ntohs(ipv6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                  : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  auto core = std::make_shared<internal::ServerCore>(env, std::move(options), std::move(handler), fd);
  core->start();
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(core), port));
}

HttpServer::~HttpServer() {
  if (core_) core_->stop();
}

std::string HttpServer::base_url() const {
  const std::string& a = core_->options().bind_address;
  bool ipv6 = a.find(':') != std::string::npos;
  std::string host = a;
  if (a == "0.0.0.0") host = "127.0.0.1";
  if (ipv6) {
    sockaddr_in6 probe{};
    bool any = ::inet_pton(AF_INET6, a.c_str(), &probe.sin6_addr) == 1 && IN6_IS_ADDR_UNSPECIFIED(&probe.sin6_addr);
    host = "[" + (any ? std::string("::1") : a) + "]";
  }
  return "http://" + host + ":" + std::to_string(port_);
}

void HttpServer::stop() { core_->stop(); }
HttpServerStats HttpServer::stats() const { return core_->stats(); }
const HttpServerOptions& HttpServer::options() const { return core_->options(); }

}  // namespace nines::net
