// The HTTP server's request parser: llhttp 8.1 (strict: none of its lenient flags) plus the
// server's own rules and bounds, with no I/O. Internal to the net layer: HttpServer feeds it
// the bytes of a connection, and tests/net/fuzz/http_request_fuzz.cpp feeds it arbitrary
// bytes. llhttp.h stays here and in src/net/*.cpp; it never reaches include/nines.
//
// What it adds to llhttp, and why:
//  - Bounds: request target plus header names and values (trailers included) at most
//    max_header_bytes; a head, and the trailers of a chunked body, at most max_raw_head_bytes
//    as received (llhttp has no bound of its own, and skips whitespace without reporting
//    it); a body at most max_body_bytes, refused from Content-Length before any of it is
//    read, or at the chunk header that would cross it.
//  - Line endings: CRLF only. llhttp takes a bare LF after the request line and at the end
//    of the head but not after a header value; one rule is easier to reason about (and to
//    put behind a proxy) than three. An obsolete line folding (a header line that starts with
//    a space or tab) is refused: llhttp would join the pieces, and RFC 9112 5.2 prefers a
//    400.
//  - Versions: 1.0 and 1.1; any other is 505 (llhttp refuses the versions it does not know
//    as malformed, and hands 0.9 and 2.0 over; "PRI * HTTP/2.0", HTTP/2's preface, pauses it).
//  - Expect: only 100-continue (417 otherwise).
// The request in progress is reset at each request's first byte.
//
// Pipelining: execute() stops after each complete request and at the end of each head, and
// says how many bytes it consumed; the caller keeps the rest for later. llhttp is paused at
// those points (a callback returns HPE_PAUSED) and resumed by the next execute(), and
// llhttp_get_error_pos tells where it stopped.
//
// Thread-safety: none; one parser per connection, used by one thread at a time.
#pragma once

#include <llhttp.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "nines/net/http_server.hpp"

namespace nines::net::internal {

class HttpRequestParser {
 public:
  struct Limits {
    std::size_t max_header_bytes = 64u << 10;    // target + header names + values (trailers included)
    std::size_t max_raw_head_bytes = 80u << 10;  // a head, or the trailers, as received
    std::size_t max_body_bytes = 16u << 20;      // after de-chunking
  };

  // Where execute() stopped.
  enum class Event : std::uint8_t {
    kNeedMore,  // every byte was consumed; the request is not complete yet
    kHead,      // a head is complete and passed every check; its body (if any) follows
    kRequest,   // a request is complete: take_request()
    kError,     // the request is refused: error_status(), error_reason(); the parser is done
  };
  struct Step {
    Event event = Event::kNeedMore;
    std::size_t consumed = 0;  // bytes of `data` parsed (the rest belongs to what follows)
  };

  explicit HttpRequestParser(Limits limits);
  HttpRequestParser(const HttpRequestParser&) = delete;  // llhttp holds a pointer to it
  HttpRequestParser& operator=(const HttpRequestParser&) = delete;

  // Parses from the start of `data` up to the next stop. Call it again with the bytes not
  // consumed (and later ones): it resumes where it stopped. After kHead and kRequest a call
  // may consume nothing and stop again (a request without a body completes at once). Do not
  // call it after a request whose keep_alive() is false: the connection ends with that
  // request, and what follows is refused.
  Step execute(const char* data, std::size_t len);

  // Of the current request, from its kHead on (until the next request starts):
  // false when the connection ends after it (HTTP/1.0 without keep-alive, Connection: close,
  // an Upgrade or CONNECT request: no protocol switch, so nothing after it is HTTP).
  bool keep_alive() const { return keep_alive_; }
  bool head_method() const { return head_method_; }
  bool http10() const { return http10_; }
  // Expect: 100-continue on HTTP/1.1 with a body to come.
  bool expects_continue() const { return expects_continue_; }
  // The complete request (after kRequest; moved out).
  HttpServerRequest take_request() { return std::move(req_); }

  // After kError: 400, 413, 417, 431 or 505, and why (the text the client gets).
  int error_status() const { return error_status_; }
  const std::string& error_reason() const { return error_reason_; }

 private:
  enum class Stop : std::uint8_t { kNone, kHead, kLastChunk, kMessage };

  static HttpRequestParser& of(llhttp_t* p) { return *static_cast<HttpRequestParser*>(p->data); }
  static const llhttp_settings_t& settings();
  static int on_message_begin(llhttp_t* p);
  static int on_url(llhttp_t* p, const char* at, std::size_t len);
  static int on_header_field(llhttp_t* p, const char* at, std::size_t len);
  static int on_header_value(llhttp_t* p, const char* at, std::size_t len);
  static int on_header_value_complete(llhttp_t* p);
  static int on_headers_complete(llhttp_t* p);
  static int on_body(llhttp_t* p, const char* at, std::size_t len);
  static int on_chunk_header(llhttp_t* p);
  static int on_message_complete(llhttp_t* p);

  bool reason_is(const char* text) const;  // llhttp's reason for its error
  Step fail(int status, std::string reason, std::size_t consumed);
  int refuse(int status, std::string reason);  // from a callback: stops llhttp
  bool head_grew(std::size_t len);
  // Checks the bytes of a head or the trailers as received (bound, line endings); false
  // with the error set.
  bool check_raw(const char* data, std::size_t len);
  bool check_head();

  Limits limits_;
  llhttp_t parser_{};
  bool paused_ = false;      // llhttp is paused at a stop: resume before the next execute
  bool finished_ = false;    // the request after which the connection ends is complete
  Stop stop_ = Stop::kNone;  // the stop a callback asked for in this llhttp_execute

  // Raw checks: counting while in a head or in trailers (always ended by a stop).
  bool in_raw_ = true;
  bool in_trailers_ = false;
  std::size_t raw_bytes_ = 0;
  char prev_ = '\n';  // the byte before the next one checked

  HttpServerRequest req_;
  std::size_t head_bytes_ = 0;
  std::string field_, value_;  // the header field being parsed (llhttp hands it in pieces)
  bool keep_alive_ = true;
  bool head_method_ = false;
  bool http10_ = false;
  bool expects_continue_ = false;

  int error_status_ = 0;
  std::string error_reason_;
};

}  // namespace nines::net::internal
