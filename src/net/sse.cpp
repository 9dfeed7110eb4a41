#include "nines/net/sse.hpp"

namespace nines::net {

namespace {
constexpr std::string_view kBom = "\xEF\xBB\xBF";
}

Status SseParser::check_size() const {
  if (line_.size() + data_.size() + type_.size() > options_.max_event_bytes) {
    return Error(ErrorKind::kPermanent, "server-sent event larger than " + std::to_string(options_.max_event_bytes) +
                                            " bytes (max_event_bytes)");
  }
  return ok_status();
}

Status SseParser::feed(std::string_view bytes, std::vector<SseEvent>& out) {
  if (failed_) {
    return Error(ErrorKind::kPermanent, "server-sent events: the stream already failed (an event was too large)");
  }
  // The byte order mark, which may itself be split across chunks.
  while (!bom_done_ && !bytes.empty()) {
    if (bytes.front() == kBom[bom_matched_]) {
      bytes.remove_prefix(1);
      if (++bom_matched_ == kBom.size()) bom_done_ = true;
    } else {
      // Not a BOM: the bytes taken so far are text.
      line_.append(kBom.substr(0, bom_matched_));
      bom_done_ = true;
    }
  }
  while (!bytes.empty()) {
    if (skip_lf_) {
      skip_lf_ = false;
      if (bytes.front() == '\n') {
        bytes.remove_prefix(1);
        continue;
      }
    }
    std::size_t end = bytes.find_first_of("\r\n");
    if (end == std::string_view::npos) {
      line_.append(bytes);
      if (auto s = check_size(); !s.ok()) {
        failed_ = true;
        return s;
      }
      return ok_status();
    }
    line_.append(bytes.substr(0, end));
    skip_lf_ = bytes[end] == '\r';
    bytes.remove_prefix(end + 1);
    if (auto s = check_size(); !s.ok()) {
      failed_ = true;
      return s;
    }
    if (auto s = process_line(out); !s.ok()) {
      failed_ = true;
      return s;
    }
  }
  return ok_status();
}

Status SseParser::process_line(std::vector<SseEvent>& out) {
  std::string line = std::move(line_);
  line_.clear();
  if (line.empty()) {
    // Dispatch.
    if (has_data_) {
      SseEvent e;
      if (!type_.empty()) e.type = std::move(type_);
      if (!data_.empty() && data_.back() == '\n') data_.pop_back();
      e.data = std::move(data_);
      e.id = last_event_id_;
      out.push_back(std::move(e));
    }
    data_.clear();
    type_.clear();
    has_data_ = false;
    return ok_status();
  }
  if (line.front() == ':') return ok_status();  // a comment
  std::string_view field = line, value;
  if (std::size_t colon = line.find(':'); colon != std::string::npos) {
    field = std::string_view(line).substr(0, colon);
    value = std::string_view(line).substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    data_.append(value);
    data_.push_back('\n');
    has_data_ = true;
    return check_size();
  }
  if (field == "event") {
    type_.assign(value);
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos) last_event_id_.assign(value);
  } else if (field == "retry") {
    bool digits = !value.empty();
    std::uint64_t v = 0;
    for (char c : value) {
      if (c < '0' || c > '9') {
        digits = false;
        break;
      }
      v = v * 10 + static_cast<std::uint64_t>(c - '0');
      if (v > (1ULL << 53)) digits = false;  // absurd; ignored like garbage
    }
    if (digits) retry_ms_ = v;
  }
  return ok_status();
}

bool SseParser::finish() {
  bool dropped = has_data_ || !line_.empty() || !type_.empty() || (!bom_done_ && bom_matched_ > 0);
  line_.clear();
  data_.clear();
  type_.clear();
  has_data_ = false;
  bom_matched_ = 0;
  bom_done_ = false;
  skip_lf_ = false;
  return dropped;
}

}  // namespace nines::net
