// nines/core/log.hpp: the logging seam: levels, structured records, sinks and the Logger the
// Environment owns (Environment::logger()). See docs/logging.md.
//
// nines reports what an operator must know by default (a process that crashed, a supervisor
// that gave up, a breaker that opened, a model fallback, a workflow stopped for an operator),
// each as one line with a stable snake_case event name that operators grep and alert on.
//
//   NINES_LOG(env.logger(), LogLevel::kError, "process_crashed", "process crashed",
//             {"pid", pid.to_string()}, {"reason", reason.to_string()});
//
// NINES_LOG evaluates the message and the fields only when the level is enabled: a disabled
// line costs one relaxed atomic load, no formatting and no allocation.
//
// No spdlog or fmt: a record becomes one line written with one fwrite under the logger's
// lock, which needs neither, and core depends on nothing beyond the standard library.
//
// What a Logger does with a record, in order: drops it below the level; scrubs secrets from
// the message and every string field (redact_log_text(), and "[redacted]" for a string field
// whose key names a secret: is_secret_key()); rate-limits it per event name and globally
// (LogRateLimit; dropped lines are counted and reported later by one `log_suppressed` line);
// hands it to the sink. Redaction is a safety net: code must not log secrets in the first
// place.
//
// Ownership: the Environment owns its Logger; the Logger shares its sink (shared_ptr). The
// strings a LogField or a LogRecord refers to are borrowed for the duration of one call.
//
// Thread-safety: Logger and CaptureSink are thread-safe. A sink's write() is called with the
// logger's lock held, one record at a time, so lines never interleave; a sink must not log.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "nines/core/result.hpp"

namespace nines {

class Environment;

// Severity, as syslog and OTP's logger name them. kOff (as a logger level) logs nothing.
enum class LogLevel : std::uint8_t { kDebug, kInfo, kNotice, kWarning, kError, kCritical, kOff };

// "debug", "info", "notice", "warning", "error", "critical", "off".
std::string_view to_string(LogLevel level);
// The level named `text` (case-insensitive; "warn" is taken for "warning"), or
// kInvalidArgument listing the names.
Result<LogLevel> parse_log_level(std::string_view text);

// One key and value of a record. The key and a string value are borrowed, not copied: a
// LogField lives as long as the call that logs it (temporaries in the NINES_LOG arguments
// live until the line is written). Making one never allocates.
class LogField {
 public:
  enum class Type : std::uint8_t { kInt, kUint, kDouble, kBool, kString };

  template <class T>
  requires(std::is_integral_v<T> && !std::is_same_v<T, bool> &&
           !std::is_same_v<T, char>) constexpr LogField(std::string_view key, T value)
      : key_(key) {  // NOLINT: implicit by design
    if constexpr (std::is_signed_v<T>) {
      type_ = Type::kInt;
      int_ = value;
    } else {
      type_ = Type::kUint;
      uint_ = value;
    }
  }
  constexpr LogField(std::string_view key, bool value) : key_(key), type_(Type::kBool), bool_(value) {}
  constexpr LogField(std::string_view key, double value) : key_(key), type_(Type::kDouble), double_(value) {}
  constexpr LogField(std::string_view key, std::string_view value) : key_(key), type_(Type::kString), string_(value) {}
  constexpr LogField(std::string_view key, const char* value)
      : key_(key), type_(Type::kString), string_(value != nullptr ? std::string_view(value) : std::string_view()) {}
  LogField(std::string_view key, const std::string& value) : LogField(key, std::string_view(value)) {}

  std::string_view key() const { return key_; }
  Type type() const { return type_; }
  // Precondition: type() is the one read.
  std::int64_t int_value() const { return int_; }
  std::uint64_t uint_value() const { return uint_; }
  double double_value() const { return double_; }
  bool bool_value() const { return bool_; }
  std::string_view string_value() const { return string_; }

  // The value as the human format shows it, unquoted: 42, -1, 0.25, true, text.
  std::string value_text() const;

 private:
  std::string_view key_;
  Type type_;
  union {
    std::int64_t int_;
    std::uint64_t uint_;
    double double_;
    bool bool_;
    std::string_view string_;
  };
};

// One line to write. Everything is borrowed for the duration of LogSink::write.
struct LogRecord {
  LogLevel level = LogLevel::kInfo;
  std::string_view event;    // stable snake_case name, e.g. "process_crashed"
  std::string_view message;  // human text
  std::span<const LogField> fields;
  std::int64_t unix_time_ns = 0;  // from the environment (virtual in the simulation)
};

// Where records go. write() is called with the logger's lock held, one record at a time.
class LogSink {
 public:
  virtual ~LogSink() = default;
  virtual void write(const LogRecord& record) = 0;
};

enum class LogFormat : std::uint8_t {
  kHuman,      // 2026-01-01T00:00:00.000Z error process_crashed: process crashed pid=<0.12> reason="..."
  kJsonLines,  // {"ts":"...","level":"error","event":"process_crashed","msg":"...","pid":"<0.12>",...}
};

// One line per record, always (a line break in any text is escaped), newline-terminated.
// Human: values with a space, '"', '=', a control character or nothing at all are quoted and
// escaped (\" \\ \n \r \t \xHH); keys keep [A-Za-z0-9_.-] and turn anything else into '_'.
// JSON: strings escaped as JSON requires; numbers as numbers (a non-finite double as a
// string), bools as bools; a field whose key is ts, level, event or msg, or repeats an
// earlier field's key, is renamed (field_<key>, then <key>_2, _3, ...) so keys are unique.
// Invalid UTF-8 becomes U+FFFD in both.
std::string format_log_line(const LogRecord& record, LogFormat format);
// "2026-01-01T00:00:00.123Z".
std::string format_log_time(std::int64_t unix_time_ns);

// Sinks writing format_log_line() to `out` with one fwrite each, then fflush. `out` is not
// owned and must outlive the sink.
std::shared_ptr<LogSink> make_human_sink(std::FILE* out = stderr);
std::shared_ptr<LogSink> make_json_lines_sink(std::FILE* out = stderr);
// Appends to the file at `path` (created if missing; the sink owns and closes it).
Result<std::shared_ptr<LogSink>> make_file_sink(const std::string& path, LogFormat format = LogFormat::kHuman);

// Keeps owned copies of the records (for tests and the simulation), at most `max_records`:
// beyond that the oldest are dropped and counted.
class CaptureSink final : public LogSink {
 public:
  struct Captured {
    LogLevel level = LogLevel::kInfo;
    std::string event;
    std::string message;
    std::vector<std::pair<std::string, std::string>> fields;  // values as value_text() gives them
    std::int64_t unix_time_ns = 0;
    std::string human;  // the line as the human sink writes it (without the newline)
    std::string json;   // the line as the JSON lines sink writes it (without the newline)

    // The value of field `key`, if the record has one.
    std::optional<std::string> field(std::string_view key) const;
  };

  explicit CaptureSink(std::size_t max_records = 10'000) : max_records_(max_records == 0 ? 1 : max_records) {}

  void write(const LogRecord& record) override;

  std::vector<Captured> records() const;
  // The records of one event, oldest first.
  std::vector<Captured> records(std::string_view event) const;
  std::size_t count(std::string_view event) const;
  std::size_t size() const;
  // Records dropped because the bound was reached.
  std::uint64_t dropped() const;
  void clear();
  // True if any kept record's human or JSON line contains `text`.
  bool contains(std::string_view text) const;
  // Every kept line in the human format, one per line (for test failure messages).
  std::string dump() const;

 private:
  const std::size_t max_records_;
  mutable std::mutex mu_;
  std::vector<Captured> records_;  // a ring once full: oldest at head_
  std::size_t head_ = 0;
  std::uint64_t dropped_ = 0;
};

// Rate limits: a token bucket per event name (burst lines at once, then `per_second`), and one
// for all events together. A line must find a token in both. Lines beyond the limits are
// dropped and counted per event; the next line of that event that passes is preceded by one
// `log_suppressed` line (fields: event, dropped), and so is any line that passes while
// another event's bucket has refilled; Logger::flush_suppressed() reports the rest. At most
// `max_events` event names have a bucket of their own; further names share one (reported as
// event "*"). burst == 0 turns that limit off. A record with a string field named in
// `source_fields` (the first found) is limited per event *and* that field's value, so that in a
// storm one supervisor's child_restarted lines are not drowned by another's; the report then
// carries `source` ("supervisor=pool") too. The buckets still number at most max_events.
struct LogRateLimit {
  double burst = 20;
  double per_second = 10;
  double global_burst = 200;
  double global_per_second = 100;
  std::size_t max_events = 256;
  std::vector<std::string> source_fields = {"supervisor", "server"};

  static LogRateLimit unlimited() { return {.burst = 0, .per_second = 0, .global_burst = 0, .global_per_second = 0}; }
};

// Case-insensitive: the key contains "key", "token", "secret", "password", "passwd",
// "authorization", "cookie" or "credential". A string field with such a key is written as
// "[redacted]" (numbers and bools are kept: input_tokens=120 is no secret).
bool is_secret_key(std::string_view key);
// `text` with whatever looks like a credential replaced by "[redacted]", or nullopt if
// nothing does (no allocation then). See docs/logging.md for the exact rules: sk-... keys,
// "Bearer <token>", well-known token prefixes (ghp_, github_pat_, xox?-, AKIA, AIza), and
// the value of "<name>: <value>" / "<name>=<value>" where is_secret_key(name), unless it is a
// number or an ordinary word.
std::optional<std::string> redact_log_text(std::string_view text);

class Logger {
 public:
  // `clock` gives the timestamps and the rate limiter's time; it must outlive the logger.
  // A null sink logs nothing (until set_sink).
  Logger(const Environment& clock, LogLevel level, std::shared_ptr<LogSink> sink, LogRateLimit limit = {});
  // Reports what is still suppressed (flush_suppressed).
  ~Logger();
  Logger(const Logger&) = delete;
  Logger& operator=(const Logger&) = delete;

  bool enabled(LogLevel level) const {
    return level != LogLevel::kOff && level >= level_.load(std::memory_order_relaxed);
  }
  LogLevel level() const { return level_.load(std::memory_order_relaxed); }
  void set_level(LogLevel level) { level_.store(level, std::memory_order_relaxed); }

  void set_sink(std::shared_ptr<LogSink> sink);
  std::shared_ptr<LogSink> sink() const;
  void set_rate_limit(const LogRateLimit& limit);

  // Writes one record if `level` is enabled and the rate limits allow it. Prefer NINES_LOG,
  // which skips evaluating the arguments when the level is off.
  void log(LogLevel level, std::string_view event, std::string_view message,
           std::initializer_list<LogField> fields = {}) {
    log_fields(level, event, message, std::span<const LogField>(fields.begin(), fields.size()));
  }
  // The same with fields chosen at run time (a name only when there is one).
  void log_fields(LogLevel level, std::string_view event, std::string_view message, std::span<const LogField> fields);

  // Writes a log_suppressed line for every event with dropped lines not reported yet,
  // whatever the limits say (at exit, or before a demo names its log file).
  void flush_suppressed();

  // Lines dropped by the rate limits so far; lines handed to the sink so far (log_suppressed
  // lines included).
  std::uint64_t suppressed() const { return suppressed_.load(std::memory_order_relaxed); }
  std::uint64_t written() const { return written_.load(std::memory_order_relaxed); }

 private:
  struct Impl;
  std::atomic<LogLevel> level_;
  std::atomic<std::uint64_t> suppressed_{0};
  std::atomic<std::uint64_t> written_{0};
  std::unique_ptr<Impl> impl_;
};

}  // namespace nines

// Logs through `logger` (a Logger&) when `level` is enabled; the message and the fields (braced
// key-value pairs: {"pid", pid.to_string()}, {"restarts", n}) are not evaluated otherwise.
#define NINES_LOG(logger, level, event, message, ...)                             \
  do {                                                                            \
    ::nines::Logger& nines_log_logger_ = (logger);                                \
    const ::nines::LogLevel nines_log_level_ = (level);                           \
    if (nines_log_logger_.enabled(nines_log_level_)) [[unlikely]] {               \
      nines_log_logger_.log(nines_log_level_, (event), (message), {__VA_ARGS__}); \
    }                                                                             \
  } while (0)
