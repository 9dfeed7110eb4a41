// libFuzzer target: the server-sent-events parser (nines/net/sse.hpp).
// Input: byte 0 picks where to cut the stream; the rest is the stream. The parser must give
// the same events, the same verdict and the same end-of-stream answer whether the bytes come
// in one piece, in two pieces cut anywhere, or one byte at a time (a network delivers them
// any way it likes); and it must not crash, leak or hang.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "nines/net/sse.hpp"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

struct Outcome {
  bool ok = true;
  std::vector<nines::net::SseEvent> events;
  bool dropped = false;
};

template <class Feed>
Outcome parse(Feed feed) {
  nines::net::SseParser parser({.max_event_bytes = 4096});
  Outcome out;
  out.ok = feed(parser, out.events);
  if (out.ok) out.dropped = parser.finish();
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::size_t cut = in.empty() ? 0 : data[0] % (in.size() + 1);

  Outcome whole =
      parse([&](nines::net::SseParser& p, std::vector<nines::net::SseEvent>& ev) { return p.feed(in, ev).ok(); });
  Outcome two = parse([&](nines::net::SseParser& p, std::vector<nines::net::SseEvent>& ev) {
    return p.feed(in.substr(0, cut), ev).ok() && p.feed(in.substr(cut), ev).ok();
  });
  check(whole.ok == two.ok);
  if (whole.ok) {
    check(whole.events == two.events);
    check(whole.dropped == two.dropped);
  }
  if (in.size() <= 2048) {
    Outcome bytes = parse([&](nines::net::SseParser& p, std::vector<nines::net::SseEvent>& ev) {
      for (std::size_t i = 0; i < in.size(); ++i) {
        if (!p.feed(in.substr(i, 1), ev).ok()) return false;
      }
      return true;
    });
    check(whole.ok == bytes.ok);
    if (whole.ok) {
      check(whole.events == bytes.events);
      check(whole.dropped == bytes.dropped);
    }
  }
  return 0;
}
