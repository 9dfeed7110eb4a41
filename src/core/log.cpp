// The logging seam: formatting, sinks, redaction and the rate-limited Logger (core/log.hpp).
#include "nines/core/log.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>

#include "core/ascii.hpp"
#include "nines/core/check.hpp"
#include "nines/core/environment.hpp"

namespace nines {

namespace {

constexpr std::string_view kRedacted = "[redacted]";

using internal::icontains;
using internal::iequals;

// ---- UTF-8 ----------------------------------------------------------------------------------

// Length of the valid UTF-8 sequence starting at s[i] (1 for ASCII), or 0 if it is invalid
// (bad lead byte, truncated, overlong, a surrogate or beyond U+10FFFF).
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  std::size_t n;
  std::uint32_t cp;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    n = 2;
    cp = b0 & 0x1f;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    n = 3;
    cp = b0 & 0x0f;
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    n = 4;
    cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
    return 0;
  }
  return n;
}

constexpr std::string_view kReplacement = "\xef\xbf\xbd";  // U+FFFD

void append_hex_escape(std::string& out, unsigned char c) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += "\\x";
  out += kHex[c >> 4];
  out += kHex[c & 15];
}

// Appends the UTF-8 sequence that starts at s[i] (a byte >= 0x80), or U+FFFD for an invalid
// one. Returns the bytes consumed (at least 1).
std::size_t append_utf8_sequence(std::string& out, std::string_view s, std::size_t i) {
  const std::size_t n = utf8_sequence(s, i);
  if (n == 0) {
    out += kReplacement;
    return 1;
  }
  out.append(s.substr(i, n));
  return n;
}

// Appends `s` for the human format: control characters escaped, invalid UTF-8 replaced;
// inside quotes, '"' and '\' escaped too.
void append_human_text(std::string& out, std::string_view s, bool quoted) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      i += append_utf8_sequence(out, s, i);
      continue;
    }
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '"':
      case '\\':
        if (quoted) out += '\\';
        out += static_cast<char>(c);
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          append_hex_escape(out, c);
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
}

bool needs_quotes(std::string_view s) {
  if (s.empty()) return true;
  return std::any_of(s.begin(), s.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f;
  });
}

void append_human_value(std::string& out, std::string_view s) {
  if (!needs_quotes(s)) {
    append_human_text(out, s, false);
    return;
  }
  out += '"';
  append_human_text(out, s, true);
  out += '"';
}

void append_human_key(std::string& out, std::string_view key) {
  if (key.empty()) {
    out += '_';
    return;
  }
  for (char c : key) {
    const bool keep =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    out += keep ? c : '_';
  }
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      i += append_utf8_sequence(out, s, i);
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
}

std::string double_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::array<char, 64> buf;
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  if (ec != std::errc()) return "nan";
  return std::string(buf.data(), end);
}

template <class T>
std::string integer_text(T v) {
  std::array<char, 24> buf;
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  (void)ec;  // 24 bytes hold any 64-bit integer
  return std::string(buf.data(), end);
}

void append_json_value(std::string& out, const LogField& f) {
  switch (f.type()) {
    case LogField::Type::kInt: out += integer_text(f.int_value()); break;
    case LogField::Type::kUint: out += integer_text(f.uint_value()); break;
    case LogField::Type::kBool: out += f.bool_value() ? "true" : "false"; break;
    case LogField::Type::kDouble:
      if (std::isfinite(f.double_value())) {
        out += double_text(f.double_value());
      } else {
        append_json_string(out, double_text(f.double_value()));
      }
      break;
    case LogField::Type::kString: append_json_string(out, f.string_value()); break;
  }
}

constexpr std::array<std::string_view, 4> kReservedJsonKeys = {"ts", "level", "event", "msg"};

// The JSON key of fields[index]: unique among the reserved keys and the keys given before it.
std::string json_key(std::span<const LogField> fields, std::size_t index, const std::vector<std::string>& taken) {
  std::string_view key = fields[index].key();
  std::string candidate(key);
  if (std::find(kReservedJsonKeys.begin(), kReservedJsonKeys.end(), key) != kReservedJsonKeys.end()) {
    candidate = "field_" + candidate;
  }
  auto clashes = [&](const std::string& k) {
    return std::find(kReservedJsonKeys.begin(), kReservedJsonKeys.end(), k) != kReservedJsonKeys.end() ||
           std::find(taken.begin(), taken.end(), k) != taken.end();
  };
  if (!clashes(candidate)) return candidate;
  for (int n = 2;; ++n) {
    std::string numbered = candidate + "_" + std::to_string(n);
    if (!clashes(numbered)) return numbered;
  }
}

// ---- sinks ----------------------------------------------------------------------------------

class FileSink final : public LogSink {
 public:
  FileSink(std::FILE* out, LogFormat format, bool owned) : out_(out), format_(format), owned_(owned) {}
  ~FileSink() override {
    if (owned_) std::fclose(out_);
  }
  void write(const LogRecord& record) override {
    std::string line = format_log_line(record, format_);
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), out_);
    std::fflush(out_);
  }

 private:
  std::FILE* out_;
  LogFormat format_;
  bool owned_;
};

// ---- redaction ------------------------------------------------------------------------------

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_upper_or_digit(char c) { return (c >= 'A' && c <= 'Z') || is_digit(c); }
// Characters of a name ("x-api-key", "api_key").
bool name_char(char c) { return is_alpha(c) || is_digit(c) || c == '_' || c == '-'; }
// Characters of an API key (providers mask the middle with '*').
bool key_char(char c) { return is_alpha(c) || is_digit(c) || c == '-' || c == '_' || c == '*'; }
// Characters of a token or a credential value (base64url, JWTs, cookies).
bool token_char(char c) { return key_char(c) || c == '.' || c == '/' || c == '+' || c == '=' || c == '~' || c == '%'; }

// A value after "<secret name>:" that is kept: a number, or an ordinary word ("invalid_api_key:
// Incorrect API key provided" is an error code and a message, not a key and its value).
bool is_plain_value(std::string_view v) {
  if (std::all_of(v.begin(), v.end(), is_digit)) return true;
  if (v.size() >= 16 || !std::all_of(v.begin(), v.end(), is_alpha)) return false;
  return std::none_of(v.begin() + 1, v.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
}

std::size_t run_of(std::string_view s, std::size_t from, bool (*pred)(char)) {
  std::size_t j = from;
  while (j < s.size() && pred(s[j])) ++j;
  return j;
}

bool starts_with_ci(std::string_view s, std::size_t at, std::string_view prefix) {
  return s.size() - at >= prefix.size() && iequals(s.substr(at, prefix.size()), prefix);
}

// Builds the redacted text lazily: nothing is allocated until the first redaction.
class Redactor {
 public:
  explicit Redactor(std::string_view text) : text_(text) {}

  // Replaces text_[from, to) by "[redacted]" (ranges come in increasing order).
  void redact(std::size_t from, std::size_t to) {
    if (!out_) {
      out_.emplace();
      out_->reserve(text_.size());
    }
    out_->append(text_.substr(copied_, from - copied_));
    out_->append(kRedacted);
    copied_ = to;
  }

  std::optional<std::string> finish() {
    if (!out_) return std::nullopt;
    out_->append(text_.substr(copied_));
    return std::move(out_);
  }

 private:
  std::string_view text_;
  std::size_t copied_ = 0;
  std::optional<std::string> out_;
};

// Where the credential that starts a word at `i` ends, or i if none does.
std::size_t credential_at(std::string_view s, std::size_t i) {
  // sk-..., sk-ant-..., sk-proj-... (OpenAI, Anthropic and compatible providers).
  if (s.compare(i, 3, "sk-") == 0) {
    const std::size_t j = run_of(s, i + 3, key_char);
    if (j - (i + 3) >= 6) return j;
  }
  // GitHub tokens.
  for (std::string_view prefix : {std::string_view("ghp_"), std::string_view("gho_"), std::string_view("ghs_"),
                                  std::string_view("ghu_"), std::string_view("github_pat_")}) {
    if (s.compare(i, prefix.size(), prefix) == 0) {
      const std::size_t j = run_of(s, i + prefix.size(), key_char);
      if (j - (i + prefix.size()) >= 16) return j;
    }
  }
  // Slack tokens: xoxb-, xoxp-, xoxa-, xoxr-, xoxs-.
  if (s.size() - i >= 5 && s.compare(i, 3, "xox") == 0 && is_alpha(s[i + 3]) && s[i + 4] == '-') {
    const std::size_t j = run_of(s, i + 5, key_char);
    if (j - (i + 5) >= 10) return j;
  }
  // AWS access key ids (AKIA + 16) and Google API keys (AIza + 35).
  if (s.compare(i, 4, "AKIA") == 0) {
    const std::size_t j = run_of(s, i + 4, is_upper_or_digit);
    if (j - (i + 4) >= 16) return j;
  }
  if (s.compare(i, 4, "AIza") == 0) {
    const std::size_t j = run_of(s, i + 4, key_char);
    if (j - (i + 4) >= 30) return j;
  }
  return i;
}

}  // namespace

// ---- levels ---------------------------------------------------------------------------------

std::string_view to_string(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kNotice: return "notice";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
    case LogLevel::kCritical: return "critical";
    case LogLevel::kOff: return "off";
  }
  return "unknown";
}

Result<LogLevel> parse_log_level(std::string_view text) {
  for (int l = 0; l <= static_cast<int>(LogLevel::kOff); ++l) {
    if (iequals(text, to_string(static_cast<LogLevel>(l)))) return static_cast<LogLevel>(l);
  }
  if (iequals(text, "warn")) return LogLevel::kWarning;
  std::string shown;
  append_human_value(shown, text.substr(0, 64));
  return Error(ErrorKind::kInvalidArgument,
               "log level " + shown + " is not one of debug, info, notice, warning, error, critical, off");
}

// ---- fields, records, lines -----------------------------------------------------------------

std::string LogField::value_text() const {
  switch (type_) {
    case Type::kInt: return integer_text(int_);
    case Type::kUint: return integer_text(uint_);
    case Type::kDouble: return double_text(double_);
    case Type::kBool: return bool_ ? "true" : "false";
    case Type::kString: return std::string(string_);
  }
  return {};
}

std::string format_log_time(std::int64_t unix_time_ns) {
  // Floor division, so times before 1970 come out right too.
  std::int64_t ms = unix_time_ns / 1'000'000;
  if (unix_time_ns % 1'000'000 < 0) --ms;
  std::int64_t days = ms / 86'400'000;
  std::int64_t ms_of_day = ms % 86'400'000;
  if (ms_of_day < 0) {
    ms_of_day += 86'400'000;
    --days;
  }
  // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
  const std::int64_t z = days + 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const std::int64_t d = doy - (153 * mp + 2) / 5 + 1;
  const std::int64_t m = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t y = yoe + era * 400 + (m <= 2 ? 1 : 0);
  char buf[96];  // room for any int64 in every field (the compiler checks)
  std::snprintf(buf, sizeof buf, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld.%03lldZ", static_cast<long long>(y),
                static_cast<long long>(m), static_cast<long long>(d), static_cast<long long>(ms_of_day / 3'600'000),
                static_cast<long long>(ms_of_day / 60'000 % 60), static_cast<long long>(ms_of_day / 1000 % 60),
                static_cast<long long>(ms_of_day % 1000));
  return buf;
}

std::string format_log_line(const LogRecord& r, LogFormat format) {
  std::string out;
  out.reserve(96 + r.message.size() + 24 * r.fields.size());
  if (format == LogFormat::kHuman) {
    out += format_log_time(r.unix_time_ns);
    out += ' ';
    out += to_string(r.level);
    out += ' ';
    append_human_text(out, r.event, false);
    if (!r.message.empty()) {
      out += ": ";
      append_human_text(out, r.message, false);
    }
    for (const LogField& f : r.fields) {
      out += ' ';
      append_human_key(out, f.key());
      out += '=';
      if (f.type() == LogField::Type::kString) {
        append_human_value(out, f.string_value());
      } else {
        out += f.value_text();
      }
    }
    return out;
  }
  out += "{\"ts\":";
  append_json_string(out, format_log_time(r.unix_time_ns));
  out += ",\"level\":";
  append_json_string(out, to_string(r.level));
  out += ",\"event\":";
  append_json_string(out, r.event);
  out += ",\"msg\":";
  append_json_string(out, r.message);
  std::vector<std::string> keys;
  keys.reserve(r.fields.size());
  for (std::size_t i = 0; i < r.fields.size(); ++i) {
    keys.push_back(json_key(r.fields, i, keys));
    out += ',';
    append_json_string(out, keys.back());
    out += ':';
    append_json_value(out, r.fields[i]);
  }
  out += '}';
  return out;
}

std::shared_ptr<LogSink> make_human_sink(std::FILE* out) {
  NINES_CHECK(out != nullptr);
  return std::make_shared<FileSink>(out, LogFormat::kHuman, false);
}

std::shared_ptr<LogSink> make_json_lines_sink(std::FILE* out) {
  NINES_CHECK(out != nullptr);
  return std::make_shared<FileSink>(out, LogFormat::kJsonLines, false);
}

Result<std::shared_ptr<LogSink>> make_file_sink(const std::string& path, LogFormat format) {
  std::FILE* f = std::fopen(path.c_str(), "ae");
  if (f == nullptr) {
    return Error(ErrorKind::kInvalidArgument, "log file '" + path + "': " + std::strerror(errno));
  }
  return std::shared_ptr<LogSink>(std::make_shared<FileSink>(f, format, true));
}

// ---- CaptureSink ----------------------------------------------------------------------------

std::optional<std::string> CaptureSink::Captured::field(std::string_view key) const {
  for (const auto& [k, v] : fields) {
    if (k == key) return v;
  }
  return std::nullopt;
}

void CaptureSink::write(const LogRecord& r) {
  Captured c;
  c.level = r.level;
  c.event = r.event;
  c.message = r.message;
  c.unix_time_ns = r.unix_time_ns;
  c.fields.reserve(r.fields.size());
  for (const LogField& f : r.fields) c.fields.emplace_back(std::string(f.key()), f.value_text());
  c.human = format_log_line(r, LogFormat::kHuman);
  c.json = format_log_line(r, LogFormat::kJsonLines);
  std::lock_guard lock(mu_);
  if (records_.size() < max_records_) {
    records_.push_back(std::move(c));
    return;
  }
  records_[head_] = std::move(c);
  head_ = (head_ + 1) % max_records_;
  ++dropped_;
}

std::vector<CaptureSink::Captured> CaptureSink::records() const {
  std::lock_guard lock(mu_);
  std::vector<Captured> out;
  out.reserve(records_.size());
  for (std::size_t i = 0; i < records_.size(); ++i) out.push_back(records_[(head_ + i) % records_.size()]);
  return out;
}

std::vector<CaptureSink::Captured> CaptureSink::records(std::string_view event) const {
  std::vector<Captured> all = records();
  std::erase_if(all, [&](const Captured& c) { return c.event != event; });
  return all;
}

std::size_t CaptureSink::count(std::string_view event) const {
  std::lock_guard lock(mu_);
  return static_cast<std::size_t>(
      std::count_if(records_.begin(), records_.end(), [&](const Captured& c) { return c.event == event; }));
}

std::size_t CaptureSink::size() const {
  std::lock_guard lock(mu_);
  return records_.size();
}

std::uint64_t CaptureSink::dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

void CaptureSink::clear() {
  std::lock_guard lock(mu_);
  records_.clear();
  head_ = 0;
}

bool CaptureSink::contains(std::string_view text) const {
  std::lock_guard lock(mu_);
  return std::any_of(records_.begin(), records_.end(), [&](const Captured& c) {
    return c.human.find(text) != std::string::npos || c.json.find(text) != std::string::npos;
  });
}

std::string CaptureSink::dump() const {
  std::string out;
  for (const Captured& c : records()) out.append(c.human).append("\n");
  return out;
}

// ---- redaction ------------------------------------------------------------------------------

bool is_secret_key(std::string_view key) {
  for (std::string_view word :
       {"key", "token", "secret", "password", "passwd", "authorization", "cookie", "credential"}) {
    if (icontains(key, word)) return true;
  }
  return false;
}

std::optional<std::string> redact_log_text(std::string_view s) {
  Redactor out(s);
  std::size_t i = 0;
  while (i < s.size()) {
    const bool word_start = i == 0 || !name_char(s[i - 1]);
    if (word_start) {
      // A credential by its shape.
      if (std::size_t end = credential_at(s, i); end != i) {
        out.redact(i, end);
        i = end;
        continue;
      }
      // "Bearer <token>": the scheme stays, the token goes.
      if (starts_with_ci(s, i, "bearer ")) {
        std::size_t j = i + 7;
        while (j < s.size() && s[j] == ' ') ++j;
        const std::size_t k = run_of(s, j, token_char);
        if (k > j) {
          out.redact(j, k);
          i = k;
          continue;
        }
      }
      // "<name>: <value>", "<name>=<value>", "\"<name>\": \"<value>\"" with a secret name.
      const std::size_t name_end = run_of(s, i, name_char);
      if (name_end > i && is_secret_key(s.substr(i, name_end - i))) {
        std::size_t j = name_end;
        if (j < s.size() && (s[j] == '"' || s[j] == '\'')) ++j;
        while (j < s.size() && s[j] == ' ') ++j;
        if (j < s.size() && (s[j] == ':' || s[j] == '=')) {
          ++j;
          while (j < s.size() && s[j] == ' ') ++j;
          if (j < s.size() && (s[j] == '"' || s[j] == '\'')) ++j;
          std::size_t from = j;
          // An authorization value with a scheme ("Basic abc=="): the scheme stays.
          const std::size_t scheme_end = run_of(s, j, is_alpha);
          if (scheme_end > j && scheme_end < s.size() && s[scheme_end] == ' ') {
            std::string_view scheme = s.substr(j, scheme_end - j);
            if (iequals(scheme, "basic") || iequals(scheme, "bearer") || iequals(scheme, "token") ||
                iequals(scheme, "digest")) {
              from = scheme_end;
              while (from < s.size() && s[from] == ' ') ++from;
            }
          }
          const std::size_t to = run_of(s, from, token_char);
          if (to > from && !is_plain_value(s.substr(from, to - from))) {
            out.redact(from, to);
            i = to;
            continue;
          }
        }
        i = name_end;
        continue;
      }
      if (name_end > i) {
        i = name_end;
        continue;
      }
    }
    ++i;
  }
  return out.finish();
}

// ---- Logger ---------------------------------------------------------------------------------

namespace {

struct Bucket {
  double tokens = 0;
  TimePoint refilled{};
  std::uint64_t dropped = 0;          // not reported yet
  TimePoint dropping_since{};         // when `dropped` went from 0 to 1, or the last report
  LogLevel worst = LogLevel::kDebug;  // of the dropped lines

  // Refills for the time since the last refill; true if a token is there (not taken).
  bool has_token(TimePoint now, double burst, double per_second) {
    if (burst <= 0) return true;
    if (now > refilled) {
      tokens = std::min(burst, tokens + to_seconds(now - refilled) * per_second);
      refilled = now;
    }
    return tokens >= 1.0;
  }
  void take(double burst) {
    if (burst > 0) tokens -= 1.0;
  }
};

constexpr Duration kReportEvery = std::chrono::seconds(1);
constexpr std::string_view kOtherEvents = "*";

}  // namespace

struct Logger::Impl {
  Impl(const Environment& c, std::shared_ptr<LogSink> s, const LogRateLimit& l) : clock(c), sink(std::move(s)) {
    set_limit(l);
  }

  void set_limit(const LogRateLimit& l) {
    limit = l;
    limit.max_events = std::max<std::size_t>(1, l.max_events);
    // Buckets start full: the first refill (from time zero) tops them up. The clock is not
    // read here: the environment constructing its logger is not complete yet.
    global.tokens = limit.global_burst;
  }

  // The bucket key: the event, then '\n' and "field=value" when a source field is there.
  std::string bucket_key(std::string_view event, std::span<const LogField> fields) const {
    std::string key(event);
    for (const std::string& name : limit.source_fields) {
      for (const LogField& f : fields) {
        if (f.type() == LogField::Type::kString && f.key() == name) {
          key.append("\n").append(name).append("=").append(f.string_value());
          return key;
        }
      }
    }
    return key;
  }

  Bucket& bucket_for(const std::string& key, TimePoint now) {
    if (auto it = buckets.find(key); it != buckets.end()) return it->second;
    if (buckets.size() >= limit.max_events) return other;
    Bucket b;
    b.tokens = limit.burst;
    b.refilled = now;
    return buckets.emplace(key, b).first->second;
  }

  void write(LogLevel level, std::string_view event, std::string_view message, std::span<const LogField> fields,
             std::int64_t unix_ns) {
    LogRecord r{.level = level, .event = event, .message = message, .fields = fields, .unix_time_ns = unix_ns};
    sink->write(r);
  }

  // One log_suppressed line for `b` (keyed `key`: bucket_key), and its count cleared.
  void report(std::string_view key, Bucket& b, TimePoint now, std::int64_t unix_ns) {
    const std::size_t nl = key.find('\n');
    const std::string_view event = key.substr(0, nl);
    if (nl == std::string_view::npos) {
      const LogField fields[] = {{"event", event}, {"dropped", b.dropped}};
      write(b.worst, "log_suppressed", "lines dropped by the log rate limit", fields, unix_ns);
    } else {
      const LogField fields[] = {{"event", event}, {"source", key.substr(nl + 1)}, {"dropped", b.dropped}};
      write(b.worst, "log_suppressed", "lines dropped by the log rate limit", fields, unix_ns);
    }
    b.dropped = 0;
    b.worst = LogLevel::kDebug;
    b.dropping_since = now;
    --with_drops;
  }

  // Reports every bucket whose drops are at least kReportEvery old (all of them if `all`).
  // Returns the number of lines written.
  std::uint64_t report_due(TimePoint now, std::int64_t unix_ns, bool all) {
    if (with_drops == 0) return 0;
    std::uint64_t n = 0;
    auto due = [&](const Bucket& b) { return b.dropped > 0 && (all || now - b.dropping_since >= kReportEvery); };
    for (auto& [name, b] : buckets) {
      if (due(b)) {
        report(name, b, now, unix_ns);
        ++n;
      }
    }
    if (due(other)) {
      report(kOtherEvents, other, now, unix_ns);
      ++n;
    }
    return n;
  }

  const Environment& clock;
  std::mutex mu;
  std::shared_ptr<LogSink> sink;
  LogRateLimit limit;
  std::map<std::string, Bucket, std::less<>> buckets;
  Bucket other;                // events beyond limit.max_events
  Bucket global;               // all events together
  std::size_t with_drops = 0;  // buckets with dropped > 0
};

Logger::Logger(const Environment& clock, LogLevel level, std::shared_ptr<LogSink> sink, LogRateLimit limit)
    : level_(level), impl_(std::make_unique<Impl>(clock, std::move(sink), limit)) {}

Logger::~Logger() { flush_suppressed(); }

void Logger::set_sink(std::shared_ptr<LogSink> sink) {
  std::lock_guard lock(impl_->mu);
  impl_->sink = std::move(sink);
}

std::shared_ptr<LogSink> Logger::sink() const {
  std::lock_guard lock(impl_->mu);
  return impl_->sink;
}

void Logger::set_rate_limit(const LogRateLimit& limit) {
  std::lock_guard lock(impl_->mu);
  impl_->set_limit(limit);
  for (auto& [name, b] : impl_->buckets) b.tokens = std::min(b.tokens, limit.burst);
}

void Logger::log_fields(LogLevel level, std::string_view event, std::string_view message,
                        std::span<const LogField> fields) {
  if (!enabled(level)) return;
  // Scrubbed before the lock: the sink only ever sees redacted text.
  std::optional<std::string> scrubbed_message = redact_log_text(message);
  if (scrubbed_message) message = *scrubbed_message;
  std::vector<LogField> safe;
  std::vector<std::string> scrubbed;  // reserved up front: `safe` points into it
  safe.reserve(fields.size());
  scrubbed.reserve(fields.size());
  for (const LogField& f : fields) {
    if (f.type() != LogField::Type::kString) {
      safe.push_back(f);
    } else if (is_secret_key(f.key())) {
      safe.emplace_back(f.key(), kRedacted);
    } else if (std::optional<std::string> r = redact_log_text(f.string_value())) {
      scrubbed.push_back(std::move(*r));
      safe.emplace_back(f.key(), std::string_view(scrubbed.back()));
    } else {
      safe.push_back(f);
    }
  }
  const TimePoint now = impl_->clock.now();
  const std::int64_t unix_ns = impl_->clock.unix_time_ns();

  std::lock_guard lock(impl_->mu);
  if (!impl_->sink) return;
  Impl& m = *impl_;
  Bucket& b = m.bucket_for(m.bucket_key(event, safe), now);
  const bool event_ok = b.has_token(now, m.limit.burst, m.limit.per_second);
  const bool global_ok = m.global.has_token(now, m.limit.global_burst, m.limit.global_per_second);
  if (!event_ok || !global_ok) {
    if (b.dropped++ == 0) {
      b.dropping_since = now;
      ++m.with_drops;
    }
    b.worst = std::max(b.worst, level);
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  b.take(m.limit.burst);
  m.global.take(m.limit.global_burst);
  const std::uint64_t reports = m.report_due(now, unix_ns, false);
  m.write(level, event, message, safe, unix_ns);
  written_.fetch_add(reports + 1, std::memory_order_relaxed);
}

void Logger::flush_suppressed() {
  std::lock_guard lock(impl_->mu);
  if (!impl_->sink) return;
  written_.fetch_add(impl_->report_due(impl_->clock.now(), impl_->clock.unix_time_ns(), true),
                     std::memory_order_relaxed);
}

}  // namespace nines
