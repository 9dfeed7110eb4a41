// The HTTP server's request parser on llhttp (see http_request_parser.hpp).
#include "net/http_request_parser.hpp"

#include <algorithm>
#include <cstring>
#include <string_view>
#include <utility>

#include "net/http_util.hpp"

namespace nines::net::internal {

const llhttp_settings_t& HttpRequestParser::settings() {
  static const llhttp_settings_t s = [] {
    llhttp_settings_t init;
    llhttp_settings_init(&init);
    init.on_message_begin = &HttpRequestParser::on_message_begin;
    init.on_url = &HttpRequestParser::on_url;
    init.on_header_field = &HttpRequestParser::on_header_field;
    init.on_header_value = &HttpRequestParser::on_header_value;
    init.on_header_value_complete = &HttpRequestParser::on_header_value_complete;
    init.on_headers_complete = &HttpRequestParser::on_headers_complete;
    init.on_body = &HttpRequestParser::on_body;
    init.on_chunk_header = &HttpRequestParser::on_chunk_header;
    init.on_message_complete = &HttpRequestParser::on_message_complete;
    return init;
  }();
  return s;
}

HttpRequestParser::HttpRequestParser(Limits limits) : limits_(limits) {
  // llhttp's lenient flags stay off: Content-Length with Transfer-Encoding, a
  // Transfer-Encoding whose last coding is not chunked, bad header characters and unknown
  // versions are errors (request smuggling needs one of them).
  llhttp_init(&parser_, HTTP_REQUEST, &settings());
  parser_.data = this;
}

HttpRequestParser::Step HttpRequestParser::execute(const char* data, std::size_t len) {
  if (error_status_ != 0) return {Event::kError, 0};
  if (finished_) {
    return fail(400, "malformed request: bytes after the request that ends the connection", 0);
  }
  static constexpr char kNothing[1] = {};
  if (data == nullptr) data = kNothing;  // llhttp computes error_pos from it
  std::size_t done = 0;
  for (;;) {
    if (paused_) {
      llhttp_resume(&parser_);
      paused_ = false;
    }
    stop_ = Stop::kNone;
    const char* at = data + done;
    const std::size_t left = len - done;
    const llhttp_errno_t err = llhttp_execute(&parser_, at, left);
    if (error_status_ != 0) return {Event::kError, done};  // refused by a callback
    std::size_t n = left;
    if (err == HPE_PAUSED && stop_ != Stop::kNone) {
      paused_ = true;
      // Where the callback stopped it: the bytes before belong to what stopped.
      n = static_cast<std::size_t>(llhttp_get_error_pos(&parser_) - at);
    } else if (err == HPE_PAUSED_H2_UPGRADE) {
      return fail(505, "HTTP/2 is not supported (1.0 and 1.1 are)", done);
    } else if (err == HPE_INVALID_VERSION && reason_is("Invalid HTTP version")) {
      // Well-formed, but a version llhttp does not know (it hands 0.9 and 2.0 over).
      return fail(505,
                  "HTTP version " + std::to_string(parser_.http_major) + "." + std::to_string(parser_.http_minor) +
                      " is not supported (1.0 and 1.1 are)",
                  done);
    } else if (err != HPE_OK) {
      const char* why = llhttp_get_error_reason(&parser_);
      return fail(400, std::string("malformed request: ") + (why != nullptr ? why : llhttp_errno_name(err)), done);
    }
    if (in_raw_ && !check_raw(at, n)) return {Event::kError, done};
    done += n;
    switch (stop_) {
      case Stop::kNone: return {Event::kNeedMore, done};
      case Stop::kLastChunk:  // the trailers follow: count and check them like a head
        in_raw_ = true;
        in_trailers_ = true;
        raw_bytes_ = 0;
        prev_ = '\n';
        continue;
      case Stop::kHead:
        in_raw_ = false;
        if (!check_head()) return {Event::kError, done};
        return {Event::kHead, done};
      case Stop::kMessage:
        in_raw_ = true;  // the next request's head
        in_trailers_ = false;
        raw_bytes_ = 0;
        prev_ = '\n';
        finished_ = !keep_alive_;
        return {Event::kRequest, done};
    }
  }
}

bool HttpRequestParser::reason_is(const char* text) const {
  const char* why = llhttp_get_error_reason(&parser_);
  return why != nullptr && std::strcmp(why, text) == 0;
}

HttpRequestParser::Step HttpRequestParser::fail(int status, std::string reason, std::size_t consumed) {
  error_status_ = status;
  error_reason_ = std::move(reason);
  return {Event::kError, consumed};
}

int HttpRequestParser::refuse(int status, std::string reason) {
  error_status_ = status;
  error_reason_ = std::move(reason);
  return HPE_USER;
}

bool HttpRequestParser::check_raw(const char* data, std::size_t len) {
  const char* end = data + len;
  if (len > 0 && prev_ == '\n' && (data[0] == ' ' || data[0] == '\t')) {
    fail(400, "malformed request: obsolete line folding (a header line starting with whitespace)", 0);
    return false;
  }
  for (const char* p = data; p < end;) {
    const auto* lf = static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
    if (lf == nullptr) break;
    if ((lf > data ? lf[-1] : prev_) != '\r') {
      fail(400, "malformed request: a line ends in a bare LF (CRLF is required)", 0);
      return false;
    }
    if (lf + 1 < end && (lf[1] == ' ' || lf[1] == '\t')) {
      fail(400, "malformed request: obsolete line folding (a header line starting with whitespace)", 0);
      return false;
    }
    p = lf + 1;
  }
  if (len > 0) prev_ = end[-1];
  raw_bytes_ += len;
  if (raw_bytes_ > limits_.max_raw_head_bytes) {
    fail(431,
         std::string("request ") + (in_trailers_ ? "trailers" : "head") + " larger than " +
             std::to_string(limits_.max_raw_head_bytes) + " bytes as received",
         0);
    return false;
  }
  return true;
}

bool HttpRequestParser::check_head() {
  const llhttp_t& p = parser_;
  if (p.http_major != 1 || p.http_minor > 1) {
    fail(505,
         "HTTP version " + std::to_string(p.http_major) + "." + std::to_string(p.http_minor) +
             " is not supported (1.0 and 1.1 are)",
         0);
    return false;
  }
  http10_ = p.http_minor == 0;
  head_method_ = p.method == HTTP_HEAD;
  // No protocol switch: after an Upgrade or CONNECT request the bytes are not HTTP.
  keep_alive_ = llhttp_should_keep_alive(&p) != 0 && p.upgrade == 0;
  const bool has_length = (p.flags & F_CONTENT_LENGTH) != 0;
  const bool chunked = (p.flags & F_CHUNKED) != 0;
  if (has_length && p.content_length > limits_.max_body_bytes) {
    fail(413,
         "request body of " + std::to_string(p.content_length) + " bytes is larger than " +
             std::to_string(limits_.max_body_bytes) + " bytes (max_body_bytes)",
         0);
    return false;
  }
  if (auto expect = req_.headers.get("expect")) {
    if (!iequals(*expect, "100-continue")) {
      fail(417, "unsupported Expect (only 100-continue is)", 0);
      return false;
    }
    const bool body_follows = chunked || (has_length && p.content_length > 0);
    expects_continue_ = !http10_ && body_follows;
  }
  return true;
}

bool HttpRequestParser::head_grew(std::size_t len) {
  head_bytes_ += len;
  if (head_bytes_ <= limits_.max_header_bytes) return true;
  refuse(431, "request head larger than " + std::to_string(limits_.max_header_bytes) + " bytes (max_header_bytes)");
  return false;
}

// ---------------------------------------------------------------- llhttp callbacks

int HttpRequestParser::on_message_begin(llhttp_t* p) {
  HttpRequestParser& r = of(p);
  r.req_ = HttpServerRequest{};
  r.head_bytes_ = 0;
  r.field_.clear();
  r.value_.clear();
  r.keep_alive_ = true;
  r.head_method_ = false;
  r.http10_ = false;
  r.expects_continue_ = false;
  return 0;
}

int HttpRequestParser::on_url(llhttp_t* p, const char* at, std::size_t len) {
  HttpRequestParser& r = of(p);
  if (!r.head_grew(len)) return HPE_USER;
  r.req_.target.append(at, len);
  return 0;
}

int HttpRequestParser::on_header_field(llhttp_t* p, const char* at, std::size_t len) {
  HttpRequestParser& r = of(p);
  if (!r.head_grew(len)) return HPE_USER;  // trailers count towards the bound too
  if (r.in_trailers_) return 0;            // a trailer field: dropped
  r.field_.append(at, len);
  return 0;
}

int HttpRequestParser::on_header_value(llhttp_t* p, const char* at, std::size_t len) {
  HttpRequestParser& r = of(p);
  if (!r.head_grew(len)) return HPE_USER;
  if (r.in_trailers_) return 0;
  r.value_.append(at, len);
  return 0;
}

int HttpRequestParser::on_header_value_complete(llhttp_t* p) {
  HttpRequestParser& r = of(p);
  if (r.in_trailers_) return 0;
  // llhttp refuses such names itself; kept so that a name that is not a token can never
  // pass as another field ("Transfer-Encoding : chunked").
  if (!is_token(r.field_)) {
    return r.refuse(400, "malformed request: header name '" + r.field_.substr(0, 64) + "' is not a token");
  }
  r.req_.headers.add(std::move(r.field_), std::string(trim(r.value_)));
  r.field_.clear();
  r.value_.clear();
  return 0;
}

int HttpRequestParser::on_headers_complete(llhttp_t* p) {
  HttpRequestParser& r = of(p);
  r.req_.method = llhttp_method_name(static_cast<llhttp_method_t>(p->method));
  r.req_.version_major = p->http_major;
  r.req_.version_minor = p->http_minor;
  // Stop: execute() checks the head (version, Content-Length, Expect) and reports it before
  // a byte of the body is parsed; where llhttp stopped is where the head ends.
  r.stop_ = Stop::kHead;
  return HPE_PAUSED;
}

int HttpRequestParser::on_body(llhttp_t* p, const char* at, std::size_t len) {
  HttpRequestParser& r = of(p);
  const std::size_t max = r.limits_.max_body_bytes;
  if (r.req_.body.size() + len > max) {
    return r.refuse(413, "request body larger than " + std::to_string(max) + " bytes (max_body_bytes)");
  }
  r.req_.body.append(at, len);
  return 0;
}

int HttpRequestParser::on_chunk_header(llhttp_t* p) {
  HttpRequestParser& r = of(p);
  if (p->content_length == 0) {  // the last chunk: stop where the trailers start
    r.stop_ = Stop::kLastChunk;
    return HPE_PAUSED;
  }
  // Refuse a chunk that cannot fit before reading it.
  const std::size_t max = r.limits_.max_body_bytes;
  if (p->content_length > max - std::min(max, r.req_.body.size())) {
    return r.refuse(413, "request body larger than " + std::to_string(max) + " bytes (max_body_bytes)");
  }
  return 0;
}

int HttpRequestParser::on_message_complete(llhttp_t* p) {
  // Stop: the bytes after this request wait until it is answered (pipelining).
  of(p).stop_ = Stop::kMessage;
  return HPE_PAUSED;
}

}  // namespace nines::net::internal
