#include "nines/llm/errors.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "core/ascii.hpp"
#include "llm/json_util.hpp"

namespace nines::llm {

using internal::Json;
using internal::member;
using internal::str;

namespace {

constexpr std::string_view kAuthMarker = "[auth]";
constexpr std::string_view kQuotaMarker = "[quota]";
constexpr std::string_view kMalformedMarker = "[malformed]";
constexpr std::string_view kTruncatedMarker = "[truncated]";
constexpr std::string_view kRedacted = "[redacted]";
constexpr std::size_t kMaxQuotedBytes = 400;

using ::nines::internal::iequals;
using ::nines::internal::to_lower;

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// A non-negative decimal number ("30", "1.5"); nullopt for anything else.
std::optional<double> parse_decimal(std::string_view s) {
  s = trim(s);
  if (s.empty() || s.size() > 32) return std::nullopt;
  double whole = 0, scale = 1;
  bool dot = false, digits = false;
  for (char c : s) {
    if (c == '.' && !dot) {
      dot = true;
    } else if (is_digit(c)) {
      digits = true;
      if (dot) {
        scale /= 10;
        whole += (c - '0') * scale;
      } else {
        whole = whole * 10 + (c - '0');
      }
    } else {
      return std::nullopt;
    }
  }
  if (!digits) return std::nullopt;
  return whole;
}

// Nanoseconds as a Duration, or nullopt when not finite, negative or absurdly far (> 10 years).
std::optional<Duration> ns_duration(double ns) {
  if (!std::isfinite(ns) || ns < 0 || ns > 3.2e17) return std::nullopt;
  return Duration(static_cast<std::int64_t>(ns));
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

bool valid_date(int y, int mo, int d, int h, int mi, int s) {
  return y >= 1970 && y <= 9999 && mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h >= 0 && h <= 23 && mi >= 0 &&
         mi <= 59 && s >= 0 && s <= 60;
}

std::int64_t unix_seconds(int y, int mo, int d, int h, int mi, int s) {
  return days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) * 86400 + h * 3600 + mi * 60 + s;
}

// Reads exactly n digits at s[pos]; advances pos.
std::optional<int> digits_at(std::string_view s, std::size_t& pos, std::size_t n) {
  if (pos + n > s.size()) return std::nullopt;
  int v = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!is_digit(s[pos + i])) return std::nullopt;
    v = v * 10 + (s[pos + i] - '0');
  }
  pos += n;
  return v;
}

bool expect(std::string_view s, std::size_t& pos, char c) {
  if (pos >= s.size() || s[pos] != c) return false;
  ++pos;
  return true;
}

std::optional<int> month_from_name(std::string_view name) {
  static constexpr std::array<std::string_view, 12> kMonths = {"jan", "feb", "mar", "apr", "may", "jun",
                                                               "jul", "aug", "sep", "oct", "nov", "dec"};
  for (std::size_t i = 0; i < kMonths.size(); ++i) {
    if (iequals(name, kMonths[i])) return static_cast<int>(i) + 1;
  }
  return std::nullopt;
}

// "HH:MM:SS" at pos.
bool parse_clock(std::string_view s, std::size_t& pos, int& h, int& mi, int& sec) {
  auto hh = digits_at(s, pos, 2);
  if (!hh || !expect(s, pos, ':')) return false;
  auto mm = digits_at(s, pos, 2);
  if (!mm || !expect(s, pos, ':')) return false;
  auto ss = digits_at(s, pos, 2);
  if (!ss) return false;
  h = *hh, mi = *mm, sec = *ss;
  return true;
}

std::vector<std::string_view> split_spaces(std::string_view s) {
  std::vector<std::string_view> parts;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') ++i;
    std::size_t j = i;
    while (j < s.size() && s[j] != ' ') ++j;
    if (j > i) parts.push_back(s.substr(i, j - i));
    i = j;
  }
  return parts;
}

std::optional<TimePoint> at_unix_ns(const Now& now, std::int64_t target_unix_ns) {
  std::int64_t delta = target_unix_ns - now.unix_time_ns;
  if (delta < 0) delta = 0;
  auto d = ns_duration(static_cast<double>(delta));
  if (!d) return std::nullopt;
  return add_saturating(now.monotonic, *d);
}

// --- redaction ---------------------------------------------------------------------------

// Characters of an API key as providers print them (OpenAI masks the middle with '*').
bool key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-' || c == '_' || c == '*';
}

// Characters of a bearer token (base64url, JWTs).
bool token_char(char c) { return key_char(c) || c == '.' || c == '/' || c == '+' || c == '=' || c == '~'; }

bool word_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' || c == '-';
}

// Redacts the tokens after "sk-" (at a word start) and after "Bearer ".
std::string redact_patterns(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const bool word_start = i == 0 || !word_char(text[i - 1]);
    if (word_start && text.size() - i >= 3 && text.compare(i, 3, "sk-") == 0) {
      std::size_t j = i + 3;
      while (j < text.size() && key_char(text[j])) ++j;
      if (j - (i + 3) >= 6) {
        out.append(kRedacted);
        i = j;
        continue;
      }
    }
    if (word_start && text.size() - i >= 7 && iequals(text.substr(i, 7), "bearer ")) {
      std::size_t j = i + 7;
      while (j < text.size() && text[j] == ' ') ++j;
      std::size_t k = j;
      while (k < text.size() && token_char(text[k])) ++k;
      if (k > j) {
        out.append(text.substr(i, 7)).append(kRedacted);
        i = k;
        continue;
      }
    }
    out.push_back(text[i]);
    ++i;
  }
  return out;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
}

// Text from the other side, made safe to put in an error message: no keys, no markers that
// is_auth_failure & co. would misread, no line breaks, bounded length.
std::string quote(std::string_view text, std::string_view api_key) {
  if (text.size() > 4 * kMaxQuotedBytes) text = text.substr(0, 4 * kMaxQuotedBytes);
  std::string s = redact_secrets(text, api_key);
  for (std::string_view marker : {kAuthMarker, kQuotaMarker, kMalformedMarker, kTruncatedMarker}) {
    std::string neutral(marker);
    neutral.front() = '(';
    neutral.back() = ')';
    replace_all(s, marker, neutral);
  }
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  if (s.size() > kMaxQuotedBytes) {
    s.resize(kMaxQuotedBytes);
    s.append("...");
  }
  return s;
}

// --- error bodies --------------------------------------------------------------------------

struct ErrorBody {
  std::string type;
  std::string code;
  std::string message;
  std::string request_id;
  std::optional<int> status_in_body;  // vLLM and others put the HTTP status in "code"
  bool parsed = false;                // the body was JSON carrying an error
};

// Reads the error shapes seen in the wild:
//   OpenAI:    {"error":{"message","type","param","code"}}
//   Anthropic: {"type":"error","error":{"type","message"},"request_id"}
//   vLLM:      {"object":"error","message","type","code":400}
//   Ollama, llama.cpp (some paths): {"error":"text"}
ErrorBody read_error_body(std::string_view body) {
  ErrorBody out;
  auto doc = internal::parse_json(body);
  if (!doc || !doc->is_object()) return out;
  const Json* err = member(*doc, "error");
  const Json* src = nullptr;
  if (err && err->is_object()) {
    src = err;
  } else if (err && err->is_string()) {
    out.message = err->get<std::string>();
    out.parsed = true;
  } else if (str(member(*doc, "object")) == "error" || member(*doc, "message")) {
    src = &*doc;
  }
  if (src) {
    out.parsed = true;
    out.type = std::string(str(member(src, "type")));
    out.message = std::string(str(member(src, "message")));
    const Json* code = member(src, "code");
    if (code && code->is_string()) {
      out.code = code->get<std::string>();
    } else if (auto n = internal::integer(code); n && *n >= 100 && *n <= 599) {
      out.status_in_body = static_cast<int>(*n);
    }
  }
  out.request_id = std::string(str(member(*doc, "request_id")));
  return out;
}

// The HTTP status an error type stands for, when no status came with it (an error object
// in a 2xx body or inside a stream).
int status_for_type(std::string_view type, std::string_view code) {
  if (code == "invalid_api_key") return 401;
  if (code == "context_length_exceeded") return 400;
  if (type == "insufficient_quota" || code == "insufficient_quota") return 429;
  if (type == "rate_limit_error" || type == "rate_limit_exceeded" || code == "rate_limit_exceeded" ||
      type == "requests" || type == "tokens") {
    return 429;
  }
  if (type == "overloaded_error") return 529;
  if (type == "api_error" || type == "server_error" || type == "internal_server_error") return 500;
  if (type == "timeout_error") return 504;
  if (type == "authentication_error") return 401;
  if (type == "permission_error") return 403;
  if (type == "not_found_error") return 404;
  if (type == "request_too_large") return 413;
  if (type == "billing_error") return 402;
  if (type == "invalid_request_error" || type == "BadRequestError") return 400;
  return 500;  // an unknown error inside an accepted request: the server's side
}

bool is_context_overflow(const ErrorBody& b) {
  if (b.code == "context_length_exceeded" || b.type == "exceed_context_size_error") return true;
  const std::string m = to_lower(b.message);
  return contains(m, "maximum context length") || contains(m, "context_length_exceeded") ||
         contains(m, "prompt is too long") || contains(m, "exceed context limit") ||
         contains(m, "exceeds the available context size") || contains(m, "context window") ||
         contains(m, "too many tokens");
}

// A 429 that waiting cannot fix: out of money, not out of rate.
bool is_quota(Provider provider, const ErrorBody& b) {
  if (b.type == "insufficient_quota" || b.code == "insufficient_quota" || b.type == "billing_error") return true;
  if (provider != Provider::kAnthropic) return false;
  const std::string m = to_lower(b.message);
  return contains(m, "usage limit") || contains(m, "spend limit") || contains(m, "spending limit") ||
         contains(m, "credit balance") || contains(m, "credits are required");
}

// "Please try again in 6s" / "in 20ms" / "in 1.5s" (OpenAI rate-limit messages).
std::optional<Duration> delay_from_message(std::string_view message) {
  constexpr std::string_view kCue = "try again in ";
  std::size_t pos = to_lower(message).find(kCue);
  if (pos == std::string::npos) return std::nullopt;
  std::string_view rest = message.substr(pos + kCue.size());
  std::size_t end = 0;
  while (end < rest.size() && (is_digit(rest[end]) || rest[end] == '.' || (rest[end] >= 'a' && rest[end] <= 'z')))
    ++end;
  while (end > 0 && rest[end - 1] == '.') --end;  // the sentence's full stop
  return parse_go_duration(rest.substr(0, end));
}

std::string_view kind_tag(int status) {
  if (status == 408) return "request timeout";
  if (status == 409) return "conflict";
  if (status == 529) return "overloaded";
  if (status >= 500) return "server error";
  return {};
}

}  // namespace

std::optional<std::string_view> find_header(const Headers& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (iequals(h.name, name)) return std::string_view(h.value);
  }
  return std::nullopt;
}

std::string redact_secrets(std::string_view text, std::string_view api_key) {
  std::string s(text);
  if (api_key.size() >= 8) replace_all(s, api_key, kRedacted);
  return redact_patterns(s);
}

bool is_auth_failure(const Error& error) { return contains(error.message(), kAuthMarker); }
bool is_malformed(const Error& error) { return contains(error.message(), kMalformedMarker); }
bool is_truncated_stream(const Error& error) { return contains(error.message(), kTruncatedMarker); }

Error malformed_error(Provider provider, std::string_view what, std::string_view api_key) {
  std::string m(to_string(provider));
  m.append(": ").append(kMalformedMarker).append(" ").append(quote(what, api_key));
  return Error(ErrorKind::kTransient, std::move(m));
}

std::optional<Duration> parse_go_duration(std::string_view text) {
  text = trim(text);
  if (text.empty() || text.size() > 64) return std::nullopt;
  if (text == "0") return Duration(0);
  double total_ns = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    std::size_t j = i;
    while (j < text.size() && (is_digit(text[j]) || text[j] == '.')) ++j;
    auto value = parse_decimal(text.substr(i, j - i));
    if (!value) return std::nullopt;
    std::size_t k = j;
    while (k < text.size() && !is_digit(text[k]) && text[k] != '.') ++k;
    std::string_view unit = text.substr(j, k - j);
    double scale = 0;
    if (unit == "h")
      scale = 3600e9;
    else if (unit == "m")
      scale = 60e9;
    else if (unit == "s")
      scale = 1e9;
    else if (unit == "ms")
      scale = 1e6;
    else if (unit == "us" || unit == "\xC2\xB5s" || unit == "\xCE\xBCs")
      scale = 1e3;
    else if (unit == "ns")
      scale = 1;
    else
      return std::nullopt;
    total_ns += *value * scale;
    i = k;
  }
  return ns_duration(total_ns);
}

std::optional<std::int64_t> parse_http_date(std::string_view text) {
  text = trim(text);
  auto parts = split_spaces(text);
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
  if (parts.size() == 6 && parts[0].size() == 4 && parts[0][3] == ',' && parts[5] == "GMT") {
    // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
    std::size_t p = 0;
    auto dd = digits_at(parts[1], p, 2);
    auto m = month_from_name(parts[2]);
    p = 0;
    auto yy = digits_at(parts[3], p, 4);
    p = 0;
    if (!dd || parts[1].size() != 2 || !m || !yy || parts[3].size() != 4 || !parse_clock(parts[4], p, h, mi, s) ||
        p != parts[4].size()) {
      return std::nullopt;
    }
    y = *yy, mo = *m, d = *dd;
  } else if (parts.size() == 4 && !parts[0].empty() && parts[0].back() == ',' && parts[3] == "GMT") {
    // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT (two-digit years: 70..99 -> 19xx, else 20xx)
    std::string_view date = parts[1];
    if (date.size() != 9 || date[2] != '-' || date[6] != '-') return std::nullopt;
    std::size_t p = 0;
    auto dd = digits_at(date, p, 2);
    auto m = month_from_name(date.substr(3, 3));
    p = 7;
    auto yy = digits_at(date, p, 2);
    p = 0;
    if (!dd || !m || !yy || !parse_clock(parts[2], p, h, mi, s) || p != parts[2].size()) return std::nullopt;
    y = *yy >= 70 ? 1900 + *yy : 2000 + *yy, mo = *m, d = *dd;
  } else if (parts.size() == 5) {
    // asctime: Sun Nov  6 08:49:37 1994
    auto m = month_from_name(parts[1]);
    std::size_t p = 0;
    auto dd = parts[2].size() == 1 ? digits_at(parts[2], p, 1) : digits_at(parts[2], p, 2);
    if (p != parts[2].size()) return std::nullopt;
    p = 0;
    if (!m || !dd || !parse_clock(parts[3], p, h, mi, s) || p != parts[3].size()) return std::nullopt;
    p = 0;
    auto yy = digits_at(parts[4], p, 4);
    if (!yy || p != parts[4].size()) return std::nullopt;
    y = *yy, mo = *m, d = *dd;
  } else {
    return std::nullopt;
  }
  if (!valid_date(y, mo, d, h, mi, s)) return std::nullopt;
  return unix_seconds(y, mo, d, h, mi, s);
}

std::optional<std::int64_t> parse_rfc3339(std::string_view text) {
  text = trim(text);
  std::size_t p = 0;
  auto y = digits_at(text, p, 4);
  if (!y || !expect(text, p, '-')) return std::nullopt;
  auto mo = digits_at(text, p, 2);
  if (!mo || !expect(text, p, '-')) return std::nullopt;
  auto d = digits_at(text, p, 2);
  if (!d || p >= text.size() || (text[p] != 'T' && text[p] != 't' && text[p] != ' ')) return std::nullopt;
  ++p;
  int h = 0, mi = 0, s = 0;
  if (!parse_clock(text, p, h, mi, s)) return std::nullopt;
  std::int64_t frac_ns = 0;
  if (p < text.size() && text[p] == '.') {
    ++p;
    std::int64_t scale = 100'000'000;
    std::size_t n = 0;
    while (p < text.size() && is_digit(text[p])) {
      if (scale > 0) frac_ns += (text[p] - '0') * scale;
      scale /= 10;
      ++p, ++n;
    }
    if (n == 0) return std::nullopt;
  }
  if (p >= text.size()) return std::nullopt;
  std::int64_t offset_s = 0;
  if (text[p] == 'Z' || text[p] == 'z') {
    ++p;
  } else if (text[p] == '+' || text[p] == '-') {
    const int sign = text[p] == '+' ? 1 : -1;
    ++p;
    auto oh = digits_at(text, p, 2);
    if (!oh || !expect(text, p, ':')) return std::nullopt;
    auto om = digits_at(text, p, 2);
    if (!om || *oh > 23 || *om > 59) return std::nullopt;
    offset_s = sign * (*oh * 3600 + *om * 60);
  } else {
    return std::nullopt;
  }
  if (p != text.size() || !valid_date(*y, *mo, *d, h, mi, s)) return std::nullopt;
  return (unix_seconds(*y, *mo, *d, h, mi, s) - offset_s) * 1'000'000'000 + frac_ns;
}

std::optional<TimePoint> retry_after_from_headers(const Headers& headers, const Now& now) {
  if (auto v = find_header(headers, "retry-after-ms")) {
    if (auto ms = parse_decimal(*v)) {
      if (auto d = ns_duration(*ms * 1e6)) return add_saturating(now.monotonic, *d);
    }
  }
  if (auto v = find_header(headers, "retry-after")) {
    if (auto secs = parse_decimal(*v)) {
      if (auto d = ns_duration(*secs * 1e9)) return add_saturating(now.monotonic, *d);
    } else if (auto date = parse_http_date(*v)) {
      return at_unix_ns(now, *date * 1'000'000'000);
    }
  }
  return std::nullopt;
}

std::optional<TimePoint> retry_time_from_headers(const Headers& headers, const Now& now) {
  if (auto at = retry_after_from_headers(headers, now)) return at;
  // The providers' own reset headers: a limit at 0 remaining is the one that was hit.
  struct Reset {
    TimePoint at;
    bool exhausted;
  };
  std::vector<Reset> resets;
  for (std::string_view limit : {"requests", "tokens"}) {
    auto v = find_header(headers, "x-ratelimit-reset-" + std::string(limit));
    if (!v) continue;
    std::optional<Duration> d = parse_go_duration(*v);
    if (!d) {
      if (auto secs = parse_decimal(*v)) d = ns_duration(*secs * 1e9);
    }
    if (!d) continue;
    auto remaining = find_header(headers, "x-ratelimit-remaining-" + std::string(limit));
    resets.push_back({add_saturating(now.monotonic, *d), remaining && trim(*remaining) == "0"});
  }
  for (std::string_view limit : {"requests", "tokens", "input-tokens", "output-tokens"}) {
    auto v = find_header(headers, "anthropic-ratelimit-" + std::string(limit) + "-reset");
    if (!v) continue;
    auto unix_ns = parse_rfc3339(*v);
    if (!unix_ns) continue;
    auto at = at_unix_ns(now, *unix_ns);
    if (!at) continue;
    auto remaining = find_header(headers, "anthropic-ratelimit-" + std::string(limit) + "-remaining");
    resets.push_back({*at, remaining && trim(*remaining) == "0"});
  }
  if (resets.empty()) return std::nullopt;
  const bool any_exhausted = std::any_of(resets.begin(), resets.end(), [](const Reset& r) { return r.exhausted; });
  std::optional<TimePoint> latest;
  for (const Reset& r : resets) {
    if (any_exhausted && !r.exhausted) continue;
    if (!latest || r.at > *latest) latest = r.at;
  }
  return latest;
}

ApiFailure map_api_error(Provider provider, int status, const Headers& headers, std::string_view body, const Now& now,
                         std::string_view api_key) {
  ErrorBody b = read_error_body(body);
  int effective = status;
  if (effective < 400 && !(effective >= 300 && !b.parsed)) {
    // No error status (an error object in a 2xx body or a stream): the body says which.
    effective = b.status_in_body.value_or(b.parsed ? status_for_type(b.type, b.code) : 500);
  }

  ApiFailure f{.error = Error(ErrorKind::kPermanent, {}), .status = status};
  f.error_type = quote(b.type, api_key);
  f.error_code = quote(b.code, api_key);

  ErrorKind kind = ErrorKind::kPermanent;
  std::string_view tag;
  if (effective == 401 || effective == 403) {
    f.auth = true;
    tag = kAuthMarker;
  } else if (effective == 413 || (effective >= 400 && effective < 500 && effective != 429 && is_context_overflow(b))) {
    kind = ErrorKind::kContextOverflow;
    tag = "context overflow";
  } else if (effective == 429 && is_quota(provider, b)) {
    f.quota = true;
    tag = kQuotaMarker;
  } else if (effective == 429) {
    kind = ErrorKind::kRateLimited;
    tag = "rate limited";
  } else if (effective == 408 || effective == 409 || effective >= 500) {
    kind = ErrorKind::kTransient;
    tag = kind_tag(effective);
  }

  // The server's own verdict overrides the status (as in the official SDKs), except that
  // a refused credential stays refused and an overflowing prompt stays too long.
  if (auto should = find_header(headers, "x-should-retry"); should && !f.auth && kind != ErrorKind::kContextOverflow) {
    if (trim(*should) == "true" && kind == ErrorKind::kPermanent) kind = ErrorKind::kTransient;
    if (trim(*should) == "false" && (kind == ErrorKind::kTransient || kind == ErrorKind::kRateLimited)) {
      kind = ErrorKind::kPermanent;
    }
  }

  std::string m(to_string(provider));
  m.append(status > 0 ? ": http " + std::to_string(status) : std::string(": error event"));
  if (!tag.empty()) m.append(" ").append(tag);
  m.append(":");
  if (!f.error_type.empty()) m.append(" ").append(f.error_type);
  if (!f.error_code.empty() && f.error_code != f.error_type)
    m.append(f.error_type.empty() ? " " : "/").append(f.error_code);
  if (b.parsed) {
    if (!b.message.empty())
      m.append(f.error_type.empty() && f.error_code.empty() ? " " : ": ").append(quote(b.message, api_key));
  } else {
    std::string_view snippet = trim(body);
    m.append(snippet.empty() ? " (empty body)" : " body: ").append(quote(snippet.substr(0, 200), api_key));
  }
  std::string request_id = b.request_id;
  if (request_id.empty()) {
    if (auto v = find_header(headers, "x-request-id"))
      request_id = std::string(*v);
    else if (auto w = find_header(headers, "request-id"))
      request_id = std::string(*w);
  }
  if (!request_id.empty()) m.append(" (request ").append(quote(request_id.substr(0, 100), api_key)).append(")");

  Error error(kind, std::move(m));
  if (kind == ErrorKind::kRateLimited || kind == ErrorKind::kTransient) {
    // Reset headers come with every OpenAI response; only a 429 is about them.
    std::optional<TimePoint> at = kind == ErrorKind::kRateLimited ? retry_time_from_headers(headers, now)
                                                                  : retry_after_from_headers(headers, now);
    if (!at && kind == ErrorKind::kRateLimited) {
      if (auto d = delay_from_message(b.message)) at = add_saturating(now.monotonic, *d);
    }
    if (at) error = std::move(error).with_retry_at(*at);
  }
  f.error = std::move(error);
  return f;
}

}  // namespace nines::llm
