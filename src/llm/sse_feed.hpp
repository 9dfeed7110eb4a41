// Internal: one piece of a server-sent event stream fed through the SSE parser into a codec's
// StreamAccumulator, the text handed to the caller's sink. Shared by ModelClient (bytes from
// the network) and SimChatModel (bytes the sim rendered), so both read streams the same way.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

#include "nines/core/result.hpp"
#include "nines/llm/codec.hpp"
#include "nines/llm/model.hpp"
#include "nines/net/sse.hpp"

namespace nines::llm::internal {

// The error that ends the stream, if any: the accumulator's (an error event, a malformed
// event) first, else the parser's ("reading the event stream: ..."). `events` is scratch.
inline std::optional<Error> feed_sse(net::SseParser& parser, StreamAccumulator& acc, std::string_view piece,
                                     const TextSink& on_text, std::vector<net::SseEvent>& events) {
  events.clear();
  Status fed = parser.feed(piece, events);
  for (const net::SseEvent& ev : events) {
    std::string_view name = ev.type == "message" ? std::string_view{} : std::string_view{ev.type};
    Result<StreamDelta> d = acc.on_event(name, ev.data);
    if (!d.ok()) return std::move(d).error();
    if (!d->text.empty() && on_text) on_text(d->text);
  }
  if (!fed.ok()) return fed.error().with_context("reading the event stream");
  return std::nullopt;
}

}  // namespace nines::llm::internal
