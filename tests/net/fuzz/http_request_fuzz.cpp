// libFuzzer target: the HTTP server's request parser (src/net/http_request_parser.hpp: llhttp
// plus the server's rules), the code HttpServer runs on every byte a client sends.
// Input: byte 0 seeds how the rest is cut into pieces; the rest is what a client sent on one
// connection. The parser is driven as the server drives it (bytes not consumed are fed again
// with the next piece; after each request the rest waits; nothing after a request that ends
// the connection). It must give the same requests and the same verdict whether the bytes
// come whole, in pieces of random sizes, or one at a time; every request it hands over must
// be within the bounds, have a version of 1.0 or 1.1 and header fields that cannot inject a
// line (names are tokens; values have no CR, LF or NUL); and it must not crash, leak or hang.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "net/http_request_parser.hpp"
#include "net/http_util.hpp"

namespace {

using nines::net::HttpServerRequest;
using nines::net::internal::HttpRequestParser;
using Event = HttpRequestParser::Event;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

// Small bounds, so that inputs reach them.
constexpr HttpRequestParser::Limits kLimits{
    .max_header_bytes = 512, .max_raw_head_bytes = 1024, .max_body_bytes = 2048};

struct Outcome {
  std::vector<HttpServerRequest> requests;
  std::vector<bool> keep_alive;
  std::vector<bool> continues;
  bool failed = false;
  std::string rest;
};

bool same_request(const HttpServerRequest& a, const HttpServerRequest& b) {
  if (a.method != b.method || a.target != b.target || a.body != b.body) return false;
  if (a.version_major != b.version_major || a.version_minor != b.version_minor) return false;
  const auto& fa = a.headers.fields();
  const auto& fb = b.headers.fields();
  if (fa.size() != fb.size()) return false;
  for (std::size_t i = 0; i < fa.size(); ++i) {
    if (fa[i].name != fb[i].name || fa[i].value != fb[i].value) return false;
  }
  return true;
}

void check_request(const HttpServerRequest& r) {
  check(r.version_major == 1 && (r.version_minor == 0 || r.version_minor == 1));
  check(r.body.size() <= kLimits.max_body_bytes);
  std::size_t head = r.target.size();
  for (const auto& f : r.headers.fields()) {
    check(nines::net::internal::is_token(f.name));
    check(f.value.find_first_of(std::string_view("\r\n\0", 3)) == std::string::npos);
    head += f.name.size() + f.value.size();
  }
  check(head <= kLimits.max_header_bytes);  // trimmed values: at most what the bound counted
}

// Feeds `in` in pieces whose sizes `next_piece` picks.
template <class NextPiece>
Outcome run(std::string_view in, NextPiece next_piece) {
  HttpRequestParser parser(kLimits);
  Outcome out;
  std::string buffered;
  std::size_t fed = 0;
  std::size_t steps = 0;
  while (fed < in.size()) {
    std::size_t n = std::min(next_piece(), in.size() - fed);
    buffered.append(in.substr(fed, n));
    fed += n;
    for (;;) {
      check(++steps < 4 * in.size() + 16);  // every stop but the last consumes or completes
      HttpRequestParser::Step step = parser.execute(buffered.data(), buffered.size());
      check(step.consumed <= buffered.size());
      buffered.erase(0, step.consumed);
      if (step.event == Event::kNeedMore) {
        check(buffered.empty());
        break;
      }
      if (step.event == Event::kError) {
        int status = parser.error_status();
        check(status == 400 || status == 413 || status == 417 || status == 431 || status == 505);
        check(!parser.error_reason().empty());
        check(parser.execute(buffered.data(), buffered.size()).event == Event::kError);  // stays refused
        out.failed = true;
        return out;
      }
      if (step.event == Event::kHead) {
        out.continues.push_back(parser.expects_continue());
        continue;
      }
      out.requests.push_back(parser.take_request());
      check_request(out.requests.back());
      out.keep_alive.push_back(parser.keep_alive());
      if (!parser.keep_alive()) {
        out.rest = buffered + std::string(in.substr(fed));
        return out;
      }
    }
  }
  return out;
}

void check_same(const Outcome& a, const Outcome& b) {
  check(a.failed == b.failed);
  check(a.requests.size() == b.requests.size());
  for (std::size_t i = 0; i < a.requests.size(); ++i) check(same_request(a.requests[i], b.requests[i]));
  check(a.keep_alive == b.keep_alive);
  check(a.continues == b.continues);
  check(a.rest == b.rest);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  Outcome whole = run(in, [&] { return in.size(); });
  // Pieces of 1 .. max_piece bytes from a small generator seeded by byte 0.
  std::uint32_t state = data[0] * 2654435761u + 1;
  const std::uint32_t max_piece = 1 + data[0] % 97;
  Outcome pieces = run(in, [&] {
    state = state * 1664525u + 1013904223u;
    return std::size_t{1} + (state >> 8) % max_piece;
  });
  check_same(whole, pieces);
  if (in.size() <= 4096) check_same(whole, run(in, [] { return std::size_t{1}; }));
  return 0;
}
