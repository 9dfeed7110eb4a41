// nines/net/sse.hpp: an incremental parser for server-sent events (text/event-stream), by
// the WHATWG HTML rules ("Interpreting an event stream").
//
// Feed it the body bytes as they arrive, split anywhere (inside a line, between CR and LF,
// inside the byte order mark); it returns each event once the blank line that ends it has
// arrived. Rules: lines end with CRLF, LF or CR; a leading UTF-8 BOM is dropped; a line
// starting with ':' is a comment; "name: value" drops one space after the colon; a line
// without a colon is a field with an empty value; `data` lines are joined with '\n';
// `event` sets the type (default "message"); `id` sets the last event id (kept for later
// events; ignored if it contains NUL); `retry` with only ASCII digits sets the reconnection
// time; other fields are ignored; an event with no data is not dispatched; an unfinished
// event at the end of the stream is dropped.
//
// Bounds: an event (its data, type and the line being read) larger than max_event_bytes is
// an error (kPermanent), after which the parser refuses more input.
//
// Thread-safety: none; one parser per stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nines/core/result.hpp"

namespace nines::net {

struct SseEvent {
  std::string type = "message";  // the `event` field, or "message"
  std::string data;              // the `data` lines joined with '\n'
  std::string id;                // the last event id at dispatch (may come from an earlier event)

  friend bool operator==(const SseEvent&, const SseEvent&) = default;
};

struct SseParserOptions {
  std::size_t max_event_bytes = 1u << 20;  // data + type + the current line, per event
};

class SseParser {
 public:
  explicit SseParser(SseParserOptions options = {}) : options_(options) {}

  // Parses `bytes` and appends the events they complete to `out`. Fails (kPermanent) when an
  // event exceeds max_event_bytes; every later call fails the same way.
  Status feed(std::string_view bytes, std::vector<SseEvent>& out);

  // The end of the stream: true if an unfinished event (or line) was dropped. The parser can
  // then read a new stream (the last event id and retry time are kept, as on a reconnect).
  bool finish();

  const std::string& last_event_id() const { return last_event_id_; }
  // The reconnection time the server asked for with `retry`, in milliseconds.
  std::optional<std::uint64_t> retry_ms() const { return retry_ms_; }

 private:
  Status process_line(std::vector<SseEvent>& out);
  Status check_size() const;

  SseParserOptions options_;
  std::string line_;
  std::string data_;
  std::string type_;
  bool has_data_ = false;  // a data field was seen in this event (data_ may still be empty)
  std::string last_event_id_;
  std::optional<std::uint64_t> retry_ms_;
  std::size_t bom_matched_ = 0;  // bytes of the BOM seen at the stream's start
  bool bom_done_ = false;
  bool skip_lf_ = false;  // the previous chunk ended with CR
  bool failed_ = false;
};

}  // namespace nines::net
