// nines/net/http_server.hpp: an HTTP/1.1 server on the environment's event loop.
//
// The server listens on one TCP address, parses requests with llhttp (C sources compiled into
// the net layer, private to the implementation) and hands each complete request to a handler. It
// starts no thread: the listening socket and every connection are non-blocking and watched
// with Environment::watch_fd, and its timeouts run on Environment::add_timer, so it works on
// the real environment (the loop thread) and on SimEnvironment (inside poll_fds and
// fire_due_timers, on virtual time). See docs/net.md.
//
// HTTP: keep-alive by default for HTTP/1.1, `Connection: close` and HTTP/1.0 honoured
// (1.0 keeps the connection only with `Connection: keep-alive`); pipelined requests are
// answered in order (a connection is not read while its response is pending); request bodies
// with Content-Length or chunked encoding; `Expect: 100-continue` answered with 100 before
// the body is read. No protocol switch: an Upgrade or CONNECT request is handed over as an
// ordinary one and the connection closes after its answer. The server answers on its own,
// and then closes the connection:
//   400  a malformed request (the parser's reason is the body): among others an ambiguous
//        body framing (Content-Length with Transfer-Encoding, a Transfer-Encoding whose
//        last coding is not chunked), an obsolete line folding, a line ending in a bare LF
//   408  the request head did not arrive within header_timeout, or a body stalled for
//        io_timeout
//   413  a body larger than max_body_bytes (seen from Content-Length before any of the body
//        is read, or while a chunked body arrives)
//   417  an Expect other than 100-continue
//   431  a request head larger than max_header_bytes, or a head (or the trailers) larger
//        than 80 KiB as received
//   500  the handler threw before responding
//   503  a connection beyond max_connections (accepted, answered, closed at once)
//   505  an HTTP version other than 1.0 and 1.1 (HTTP/2's preface included)
// Every response carries Content-Length or chunked encoding, except 204 and 304 (no body)
// and a stream to an HTTP/1.0 client (ended by closing the connection).
//
// Ownership: HttpServer owns the listening socket and its connections. A responder refers
// to its connection (shared), so it may outlive the request, the connection and the server;
// calls on it then fail with kCancelled and change nothing. A request whose responder is
// never used keeps its connection until the client closes it or stop() runs: nothing leaks.
//
// Thread-safety: the handler is called on the loop thread (one request at a time, server
// wide). HttpResponder calls, stop(), the destructor and the counters may be used from any
// thread, including from inside the handler and from timers (a server-wide mutex, held
// while the server's callbacks and the handler run, serializes them). After stop() returns
// the handler is not running and will not be called again. The handler must not block: it
// holds up every connection of the server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/net/http_headers.hpp"

namespace nines::net {

namespace internal {
class ServerCore;
class ServerConn;
}  // namespace internal

struct HttpServerOptions {
  // Numeric IPv4 or IPv6 address to listen on ("127.0.0.1", "0.0.0.0", "::1"); no host names.
  std::string bind_address = "127.0.0.1";
  // 0: an ephemeral port chosen by the kernel (read it with port()).
  std::uint16_t port = 0;
  // Open connections at most; one more is answered 503 and closed at once. >= 1.
  std::size_t max_connections = 4096;
  // Request target plus header names and values, in bytes; beyond: 431. 1 .. 80 KiB (the
  // server's bound on a whole head as received, whitespace included).
  std::size_t max_header_bytes = 64u << 10;
  // Request body in bytes (after chunked decoding); beyond: 413.
  std::size_t max_body_bytes = 16u << 20;
  // The whole request head must arrive within this time from its first byte (from the
  // accept for a new connection); beyond: 408 and close (slow-loris). kInfinite: off.
  Duration header_timeout = std::chrono::seconds(10);
  // A keep-alive connection waiting for its next request is closed (silently) after this.
  // kInfinite: off.
  Duration idle_timeout = std::chrono::seconds(60);
  // Longest silence while a request body arrives (beyond: 408 and close) or while a response
  // waits for the client to read it (beyond: close). kInfinite: off.
  Duration io_timeout = std::chrono::seconds(30);
  // Response bytes a connection may hold that the kernel has not taken (the client reads
  // slower than a stream is written). A streamed write beyond it closes the connection and
  // fails with kCancelled. A whole response (respond) is accepted whatever its size: its
  // body is in memory already. >= 1.
  std::size_t max_output_bytes = 4u << 20;
  // listen(2) backlog (the kernel caps it at net.core.somaxconn). >= 1.
  int backlog = 1024;
};

// A request as received. `target` is the request-target as sent (origin form: path and
// query, e.g. "/v1/chat/completions?stream=true").
struct HttpServerRequest {
  std::string method;  // "GET", "POST", ... (as the parser knows them)
  std::string target;
  int version_major = 1;
  int version_minor = 1;
  HttpHeaders headers;  // in order received; values without surrounding whitespace
  std::string body;     // de-chunked

  // The target up to '?' ("/v1/chat/completions").
  std::string_view path() const;
  // After '?', without it; empty if none.
  std::string_view query() const;
};

// Counters since create(); read from any thread (each is exact, a snapshot of all is not
// atomic).
struct HttpServerStats {
  std::uint64_t connections_accepted = 0;  // including those refused at the limit
  std::uint64_t connections_open = 0;
  std::uint64_t requests = 0;       // complete requests handed to the handler
  std::uint64_t responses_1xx = 0;  // 100 Continue
  std::uint64_t responses_2xx = 0;  // by status class, the server's own answers included
  std::uint64_t responses_3xx = 0;
  std::uint64_t responses_4xx = 0;
  std::uint64_t responses_5xx = 0;
  std::uint64_t rejected_connection_limit = 0;  // 503 at accept
  std::uint64_t rejected_malformed = 0;         // 400, 417, 505
  std::uint64_t rejected_too_large = 0;         // 413, 431
  std::uint64_t rejected_timeout = 0;           // 408
  std::uint64_t closed_idle = 0;                // keep-alive connections closed by idle_timeout
  std::uint64_t closed_slow_reader = 0;         // io_timeout while writing, or max_output_bytes
  std::uint64_t closed_by_client = 0;           // the client closed while its request was handled
  std::uint64_t handler_errors = 0;             // the handler threw
  std::uint64_t aborted = 0;                    // responses ended by abort()
};

// The handle through which a request is answered. Cheap to copy and move (a shared pointer
// and a number); copies answer the same request. Any thread (see the header comment).
//
// Calls that fail change nothing:
//   kCancelled        the connection is closed (client gone, abort(), stop(), a timeout),
//                     or the server stopped
//   kInvalidArgument  misuse: a second response, write/end without start_stream, a status
//                     outside 200..599, a header name that is not a token or a value with
//                     CR, LF or NUL, a Content-Length or Transfer-Encoding header (the server
//                     frames the body), a body with 204 or 304
// `Connection: close` among the headers closes the connection after the response; other
// Connection values are not sent.
class HttpResponder {
 public:
  // An empty responder: open() is false, every call fails with kCancelled.
  HttpResponder() = default;

  // True while a response to this request can still be sent or continued.
  bool open() const;

  // A whole response, with Content-Length (to HEAD: the headers only).
  Status respond(int status, HttpHeaders headers, std::string body);

  // Starts a streamed response (chunked; to an HTTP/1.0 client: the body ends when the
  // connection closes). The status line and headers are sent at once.
  Status start_stream(int status, HttpHeaders headers);
  // One piece of a started stream (an empty piece is a no-op). If the bytes the kernel has
  // not taken would exceed max_output_bytes, the connection is closed: kCancelled.
  Status write(std::string_view chunk);
  // Ends a started stream (the last chunk); the connection then serves its next request.
  Status end();

  // Closes the connection at once without finishing the response (bytes not yet taken by
  // the kernel are dropped): the client sees a cut response, or no response. A no-op when
  // the response is complete or the connection closed.
  void abort();

  // Response bytes held for a client that has not read them yet (0 when closed).
  std::size_t buffered_bytes() const;

 private:
  friend class internal::ServerCore;
  friend class internal::ServerConn;
  HttpResponder(std::shared_ptr<internal::ServerConn> conn, std::uint64_t seq) : conn_(std::move(conn)), seq_(seq) {}
  std::shared_ptr<internal::ServerConn> conn_;
  std::uint64_t seq_ = 0;  // the request's number on its connection
};

// Called on the loop thread for each complete request. It answers through the responder,
// now or later (from a timer, a process, another thread). If it throws before a response
// has started, the client gets 500; after a stream started, the connection is aborted.
using HttpHandler = std::function<void(HttpServerRequest&& request, HttpResponder responder)>;

class HttpServer {
 public:
  // Binds, listens and starts accepting. Fails with kInvalidArgument for bad options (which
  // one and why), a missing handler, or an address that is not this machine's; with
  // kAlreadyExists when the port is taken; kPermanent when binding is not permitted
  // (a privileged port); kInternal for other socket failures. Socket errors name
  // address:port and the system's reason ("bind 127.0.0.1:8080: Address already in use").
  static Result<std::unique_ptr<HttpServer>> create(Environment& env, HttpServerOptions options, HttpHandler handler);
  // Stops (see stop()). Call it before the environment is destroyed.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The port listened on (the kernel's choice when options.port was 0).
  std::uint16_t port() const { return port_; }
  // "http://<address>:<port>" (IPv6 addresses in brackets; for a wildcard bind address, the
  // loopback address of its family).
  std::string base_url() const;

  // Stops accepting (the port is released) and closes every connection, responses in flight
  // included (their responders turn to kCancelled). Idempotent; any thread, the handler
  // included.
  void stop();

  HttpServerStats stats() const;
  const HttpServerOptions& options() const;

 private:
  HttpServer(std::shared_ptr<internal::ServerCore> core, std::uint16_t port) : core_(std::move(core)), port_(port) {}
  std::shared_ptr<internal::ServerCore> core_;
  std::uint16_t port_ = 0;
};

}  // namespace nines::net
