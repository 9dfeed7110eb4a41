// nines/net/http_client.hpp: an HTTP(S) client for nines processes, on libcurl's multi
// interface driven by the environment's event loop.
//
// One HttpClient owns one curl multi handle (and so one connection cache, DNS cache and TLS
// session cache): create one per client pool and share it. Every curl call runs on the
// environment's event-loop thread (the real environment) or inside the driving call (the
// sim); a process that makes a request only hands it over and suspends in
// Context::await_external, so no worker thread blocks and thousands of requests can be in
// flight from the one loop thread. See docs/net.md.
//
// Ownership: the client and the transfers it runs are freed on the loop thread. A process
// killed (or timed out, or past its deadline) mid-request cancels its transfer: the easy
// handle is removed from the multi handle and freed, and nothing refers to the process
// afterwards.
//
// Errors (Result): a response with any status (200, 404, 429, 500) is a value, not an error;
// the caller maps statuses. Errors name the method and the URL without its query, fragment
// or user info, and never contain header values (Authorization, x-api-key, ...):
//   kTransient         connection refused or reset, DNS failure, TLS handshake failure, a
//                      response cut short
//   kTimeout           the connect, first-byte, idle or total timeout (the message says which)
//   kDeadlineExceeded  the process deadline (Context::deadline()) passed first
//   kBulkheadFull      max_in_flight requests are already in flight
//   kPermanent         the response body or headers exceed their bound; TLS peer verification
//                      failed; too many redirects
//   kInvalidArgument   a malformed URL, method or header, or an unsupported scheme
//   kCancelled         the client was destroyed while the request was in flight
//
// Proxies: when HttpClientOptions::proxy is unset, libcurl takes the proxy from the standard
// environment variables (http_proxy, HTTPS_PROXY, ALL_PROXY, NO_PROXY; lower case wins, and
// HTTP_PROXY in upper case is ignored for safety, as in every libcurl program).
//
// Thread-safety: HttpClient's members may be called from any process on any worker. An
// HttpStream belongs to the process that opened it.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/net/http_headers.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines::net {

namespace internal {
class HttpCore;
struct Transfer;
}  // namespace internal

// Every timeout: kInfinite turns it off.
struct HttpTimeouts {
  // TCP connect plus the TLS handshake (libcurl's connect timeout).
  Duration connect = std::chrono::seconds(10);
  // From the start of the request until the first byte of the response arrives. Covers
  // connecting and sending the request.
  Duration first_byte = std::chrono::seconds(60);
  // Longest silence between two pieces of the response after its first byte (a stalled
  // stream). Time during which a stream's reader is slow (its buffer is full) does not count.
  Duration idle = std::chrono::seconds(30);
  // The whole request, from start to the last byte.
  Duration total = std::chrono::minutes(10);
};

struct HttpRequest {
  std::string method = "GET";            // any token; HEAD sends no body and expects none
  std::string url;                       // http:// or https://
  HttpHeaders headers;                   // no CR/LF in names or values (kInvalidArgument)
  std::string body;                      // sent with Content-Length when non-empty (or method is POST/PUT/PATCH)
  std::optional<HttpTimeouts> timeouts;  // nullopt: the client's defaults
};

struct HttpResponse {
  int status = 0;
  HttpHeaders headers;  // of the final response (not of a 100 Continue or followed redirect)
  std::string body;
};

struct HttpClientOptions {
  HttpTimeouts timeouts;                       // defaults for requests that set none
  std::size_t max_in_flight = 10'000;          // requests + open streams; beyond: kBulkheadFull
  std::size_t max_body_bytes = 64u << 20;      // per response body (also per stream); beyond: kPermanent
  std::size_t max_header_bytes = 64u << 10;    // all header lines of a response; beyond: kPermanent
  std::size_t stream_buffer_bytes = 1u << 20;  // a stream's unread bytes before the transfer pauses
  // libcurl's receive buffer (CURLOPT_BUFFERSIZE), allocated per request in flight: the most
  // one read from a socket takes. 1 KiB..512 KiB (else create fails with kInvalidArgument).
  // Default 1 KiB, libcurl's minimum (its own default is 16 KiB): what a model's answer needs
  // (a streamed event, or a few KiB read in a few reads), and at 10,000 calls in flight every
  // KiB here is 10 MiB. A client that downloads large bodies (files through an HTTP tool)
  // should raise it: a 64 KiB body costs ~80 us more CPU at 1 KiB than at 4 KiB (134 reads
  // instead of 39; bench/README.md, "memory per call").
  std::size_t receive_buffer_bytes = 1u << 10;
  std::size_t max_connections = 0;       // open connections in total; 0: no limit (queued beyond)
  std::size_t max_host_connections = 0;  // per host; 0: no limit
  std::optional<std::string> proxy;      // nullopt: from the environment variables; "": none
  bool verify_tls = true;                // verify the peer's certificate and host name
  // HTTP/2 over TLS where the server offers it (ALPN, as the model providers' APIs do):
  // concurrent requests to one host are multiplexed as streams of one connection (per 64
  // requests in flight, up to the server's limit of concurrent streams) instead of a TLS
  // connection each, and a burst of https requests waits for the first connection's handshake
  // to learn whether it can share it (libcurl's PIPEWAIT). Plaintext http:// stays HTTP/1.1.
  // false: HTTP/1.1 everywhere.
  bool http2 = true;
  std::string ca_file;            // PEM bundle; empty: the system's
  bool follow_redirects = false;  // at most 5 when on
  std::string user_agent = "nines/0.1";
};

class HttpClient;

// A response whose body is read piece by piece as it arrives (server-sent events). Opened by
// HttpClient::stream once the status line and headers are in. Destroying it, or the process
// holding it, cancels the transfer if it has not finished. Movable, not copyable.
class HttpStream {
 public:
  HttpStream(HttpStream&&) noexcept;
  HttpStream& operator=(HttpStream&&) noexcept;
  ~HttpStream();

  int status() const { return status_; }
  const HttpHeaders& headers() const { return headers_; }

  // The body bytes that arrived since the last call (waits for some if none are buffered),
  // or nullopt at the end of the body. After an error (a timeout, a reset, a too large body)
  // the bytes received before it are delivered first, then the error, once per call.
  Task<Result<std::optional<std::string>>> next(Context& ctx);

 private:
  friend class HttpClient;
  HttpStream(std::shared_ptr<internal::HttpCore> core, std::shared_ptr<internal::Transfer> t, int status,
             HttpHeaders headers);
  std::shared_ptr<internal::HttpCore> core_;
  std::shared_ptr<internal::Transfer> t_;
  int status_ = 0;
  HttpHeaders headers_;
};

class HttpClient {
 public:
  // Fails with kInternal if libcurl cannot be initialised.
  static Result<std::unique_ptr<HttpClient>> create(Environment& env, HttpClientOptions options = {});
  // Cancels every request still in flight (kCancelled) and frees the multi handle. Must be
  // called outside the event loop's callbacks and before the environment is destroyed; with
  // the real environment it waits for the loop thread to do the work.
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends `req` and waits for the whole response. Bounded by the request's timeouts and the
  // process deadline.
  Task<Result<HttpResponse>> request(Context& ctx, HttpRequest req);

  // Sends `req` and waits for the status line and headers; the body is then read from the
  // stream as it arrives. The first-byte and total timeouts and the process deadline bound
  // the opening; idle, total and the deadline in force at the opening bound the reads.
  Task<Result<HttpStream>> stream(Context& ctx, HttpRequest req);

  // Requests and streams in flight now.
  std::size_t in_flight() const;
  // Connections the client has opened so far (a reused connection counts once).
  std::size_t connections_opened() const;

  const HttpClientOptions& options() const;

 private:
  explicit HttpClient(std::shared_ptr<internal::HttpCore> core) : core_(std::move(core)) {}
  std::shared_ptr<internal::HttpCore> core_;
};

// The URL as it may appear in errors and logs: scheme, host, port and path, without user
// info, query or fragment ("https://api.example.com/v1/chat").
std::string redact_url(std::string_view url);

}  // namespace nines::net
