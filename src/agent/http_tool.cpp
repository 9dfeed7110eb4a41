// HTTP tools (agent/http_tool.hpp): templates compiled at make time, filled per call; one
// streamed request per call or check, read up to the response bound; statuses mapped to kinds.
#include "nines/agent/http_tool.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/ascii.hpp"
#include "nines/llm/errors.hpp"

namespace nines::agent {

using Json = nlohmann::json;

std::string_view to_string(HttpMethod method) {
  switch (method) {
    case HttpMethod::kGet: return "GET";
    case HttpMethod::kPost: return "POST";
    case HttpMethod::kPut: return "PUT";
    case HttpMethod::kPatch: return "PATCH";
    case HttpMethod::kDelete: return "DELETE";
  }
  return "GET";
}

namespace {

constexpr std::size_t kQuotedBodyBytes = 512;
constexpr std::size_t kMinRedactedBytes = 8;
constexpr std::string_view kRedacted = "[redacted]";

// --- templates ---------------------------------------------------------------------------

struct Segment {
  bool placeholder = false;
  std::string text;     // the literal text (braces unescaped), or the argument's name
  std::size_t pos = 0;  // where it starts in the template
};

struct Template {
  std::vector<Segment> segments;
  bool empty() const { return segments.empty(); }
};

// Where a template's values go: how they are written.
enum class Where { kUrl, kHeader, kBody };

// `{name}` placeholders, `{{` and `}}` for literal braces. `what` names the template in errors.
Result<Template> compile_template(std::string_view text, const std::string& what) {
  Template t;
  std::string literal;
  std::size_t literal_pos = 0;
  auto flush = [&] {
    if (!literal.empty()) t.segments.push_back(Segment{false, std::move(literal), literal_pos});
    literal.clear();
  };
  auto bad = [&](std::string reason, std::size_t pos) {
    return Error(ErrorKind::kInvalidArgument, what + ": " + reason + " at position " + std::to_string(pos));
  };
  for (std::size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (c == '{' && i + 1 < text.size() && text[i + 1] == '{') {
      if (literal.empty()) literal_pos = i;
      literal.push_back('{');
      i += 2;
    } else if (c == '}' && i + 1 < text.size() && text[i + 1] == '}') {
      if (literal.empty()) literal_pos = i;
      literal.push_back('}');
      i += 2;
    } else if (c == '}') {
      return bad("unmatched '}' (write '}}' for a literal '}')", i);
    } else if (c == '{') {
      std::size_t end = i + 1;
      while (end < text.size() && text[end] != '}' && text[end] != '{') ++end;
      if (end == text.size()) return bad("unmatched '{' (write '{{' for a literal '{')", i);
      if (text[end] == '{') return bad("'{' inside the placeholder opened at position " + std::to_string(i), end);
      if (end == i + 1) return bad("empty placeholder '{}'", i);
      std::string_view name = text.substr(i + 1, end - i - 1);
      for (char n : name) {
        if (static_cast<unsigned char>(n) < 0x20 || n == 0x7f) return bad("control character in a placeholder", i);
      }
      flush();
      t.segments.push_back(Segment{true, std::string(name), i});
      i = end + 1;
    } else {
      if (literal.empty()) literal_pos = i;
      literal.push_back(c);
      ++i;
    }
  }
  flush();
  return t;
}

bool unreserved(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

std::string percent_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (unreserved(c)) {
      out.push_back(c);
    } else {
      const auto b = static_cast<unsigned char>(c);
      out.push_back('%');
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 0xf]);
    }
  }
  return out;
}

std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// A value as text: strings as they are, the rest as JSON.
std::string text_of(const Json& v) { return v.is_string() ? v.get<std::string>() : dump(v); }

bool is_token_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool has_line_break(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
}

// --- messages ----------------------------------------------------------------------------

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  for (std::size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) {
    s.replace(pos, from.size(), to);
  }
}

// The longest prefix of s of at most n bytes that does not end inside a UTF-8 sequence.
std::string_view utf8_prefix(std::string_view s, std::size_t n) {
  if (s.size() <= n) return s;
  std::size_t end = n;
  // Back off over continuation bytes (10xxxxxx) to the start of the cut character.
  std::size_t back = 0;
  while (end > 0 && back < 4 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end, ++back;
  return s.substr(0, end);
}

// --- the tool ----------------------------------------------------------------------------

struct Fetched {
  int status = 0;
  net::HttpHeaders headers;
  std::string body;   // at most the limit it was read with, plus what the last piece brought
  bool more = false;  // the body went on beyond the limit (not read)
};

class HttpTool final : public Tool {
 public:
  HttpTool(ToolSpec spec, HttpToolOptions options, std::shared_ptr<net::HttpClient> client, Template url,
           std::vector<std::pair<std::string, Template>> headers, Template body, Template check_url)
      : spec_(std::move(spec)),
        options_(std::move(options)),
        client_(std::move(client)),
        url_(std::move(url)),
        headers_(std::move(headers)),
        body_(std::move(body)),
        check_url_(std::move(check_url)) {}

  const ToolSpec& spec() const override { return spec_; }

  Task<Result<std::string>> call(Context& ctx, const ToolInvocation& invocation) override {
    const std::string_view method = to_string(options_.method);
    Result<Json> args = parse_arguments(invocation.arguments_json);
    if (!args.ok()) co_return std::move(args).error();
    Result<std::string> url = render(url_, *args, Where::kUrl, "the URL template");
    if (!url.ok()) co_return std::move(url).error();
    Result<net::HttpRequest> req = base_request(std::string(method), std::move(*url), *args, invocation);
    if (!req.ok()) co_return std::move(req).error();
    if (!body_.empty()) {
      Result<std::string> body = render(body_, *args, Where::kBody, "the body template");
      if (!body.ok()) co_return std::move(body).error();
      req->body = std::move(*body);
    } else if (options_.method == HttpMethod::kPost || options_.method == HttpMethod::kPut ||
               options_.method == HttpMethod::kPatch) {
      req->body = invocation.arguments_json.empty() ? "{}" : invocation.arguments_json;
    }
    if (!req->body.empty() && !req->headers.contains("content-type")) {
      req->headers.set("Content-Type", "application/json");
    }
    std::vector<std::string> secrets = secrets_of(req->headers);
    const std::string where = "tool '" + spec_.name + "': " + std::string(method) + " " + net::redact_url(req->url);

    Result<Fetched> got = co_await fetch(ctx, std::move(*req), options_.max_response_bytes);
    if (!got.ok()) co_return std::move(got).error().with_context("tool '" + spec_.name + "'");
    if (got->status >= 200 && got->status <= 299) co_return result_text(std::move(*got));
    co_return status_error(ctx, *got, where, secrets);
  }

  Task<Result<std::optional<std::string>>> check(Context& ctx, const ToolInvocation& invocation) override {
    if (check_url_.empty()) co_return co_await Tool::check(ctx, invocation);
    if (invocation.idempotency_key.empty()) {
      co_return Error(ErrorKind::kPermanent,
                      "tool '" + spec_.name + "': cannot check a call without an idempotency key");
    }
    Result<Json> args = parse_arguments(invocation.arguments_json);
    if (!args.ok()) co_return std::move(args).error();
    Result<std::string> url = render(check_url_, *args, Where::kUrl, "the check URL template");
    if (!url.ok()) co_return std::move(url).error();
    Result<net::HttpRequest> req = base_request("GET", std::move(*url), *args, invocation);
    if (!req.ok()) co_return std::move(req).error();
    std::vector<std::string> secrets = secrets_of(req->headers);
    const std::string where = "tool '" + spec_.name + "': check GET " + net::redact_url(req->url);

    Result<Fetched> got = co_await fetch(ctx, std::move(*req), options_.max_response_bytes);
    if (!got.ok()) co_return std::move(got).error().with_context("tool '" + spec_.name + "': check");
    if (got->status == 200) co_return std::optional<std::string>(result_text(std::move(*got)));
    if (got->status == 404) co_return std::optional<std::string>();
    if (got->status >= 200 && got->status <= 299) {
      co_return Error(ErrorKind::kTransient,
                      where + ": http " + std::to_string(got->status) + ": cannot tell whether the call was applied");
    }
    co_return status_error(ctx, *got, where, secrets);
  }

 private:
  Error invalid(const std::string& what) const {
    return Error(ErrorKind::kInvalidArgument, "tool '" + spec_.name + "': " + what);
  }

  Result<Json> parse_arguments(const std::string& text) const {
    if (text.empty()) return Json::object();
    Json args = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (args.is_discarded() || !args.is_object()) return invalid("the arguments are not a JSON object");
    return args;
  }

  Result<std::string> render(const Template& t, const Json& args, Where where, const std::string& what) const {
    std::string out;
    for (const Segment& s : t.segments) {
      if (!s.placeholder) {
        out.append(s.text);
        continue;
      }
      auto it = args.find(s.text);
      if (it == args.end()) return invalid("argument '" + s.text + "' is needed by " + what);
      const Json& v = *it;
      if (where == Where::kBody) {
        out.append(dump(v));
        continue;
      }
      if (v.is_null()) return invalid("argument '" + s.text + "' is null; " + what + " needs a value");
      std::string text = text_of(v);
      if (where == Where::kUrl) {
        out.append(percent_encode(text));
      } else {
        if (has_line_break(text)) {
          return invalid("argument '" + s.text + "' holds a line break or NUL, which cannot go in " + what);
        }
        out.append(text);
      }
    }
    return out;
  }

  // The method, URL, headers (filled), Idempotency-Key and timeouts of a request.
  Result<net::HttpRequest> base_request(std::string method, std::string url, const Json& args,
                                        const ToolInvocation& invocation) const {
    net::HttpRequest req;
    req.method = std::move(method);
    req.url = std::move(url);
    for (const auto& [name, value] : headers_) {
      Result<std::string> v = render(value, args, Where::kHeader, "the header '" + name + "' template");
      if (!v.ok()) return std::move(v).error();
      req.headers.add(name, std::move(*v));
    }
    if (!invocation.idempotency_key.empty()) {
      if (has_line_break(invocation.idempotency_key)) return invalid("the idempotency key holds a line break");
      req.headers.set("Idempotency-Key", invocation.idempotency_key);
    }
    net::HttpTimeouts t = client_->options().timeouts;
    t.connect = std::min(t.connect, spec_.timeout);
    t.first_byte = std::min(t.first_byte, spec_.timeout);
    t.idle = std::min(t.idle, spec_.timeout);
    t.total = spec_.timeout;
    req.timeouts = t;
    return req;
  }

  // Every header value (and each of its words) long enough to be recognised: redacted from
  // quoted bodies.
  static std::vector<std::string> secrets_of(const net::HttpHeaders& headers) {
    std::vector<std::string> out;
    for (const auto& f : headers.fields()) {
      if (internal::iequals(f.name, "content-type") || internal::iequals(f.name, "idempotency-key")) continue;
      if (f.value.size() >= kMinRedactedBytes) out.push_back(f.value);
      // Each word too: a server may echo the token of "Bearer <token>" without the scheme.
      std::string_view rest = f.value;
      while (!rest.empty()) {
        const std::size_t sp = rest.find(' ');
        const std::string_view word = rest.substr(0, sp);
        if (word.size() >= kMinRedactedBytes && word.size() < f.value.size()) out.emplace_back(word);
        rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
      }
    }
    // Longest first, so that a value containing another is redacted whole.
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.size() > b.size(); });
    return out;
  }

  // Opens the response and reads at most `limit` bytes of its body (plus the piece that
  // crossed it); the rest is not read (the transfer is cancelled when the stream goes).
  Task<Result<Fetched>> fetch(Context& ctx, net::HttpRequest req, std::size_t limit) {
    Result<net::HttpStream> stream = co_await client_->stream(ctx, std::move(req));
    if (!stream.ok()) co_return std::move(stream).error();
    Fetched out;
    out.status = stream->status();
    out.headers = stream->headers();
    // Error statuses: only the quoted part of the body is needed.
    if (out.status < 200 || out.status > 299) limit = std::min(limit, kQuotedBodyBytes);
    while (out.body.size() <= limit) {
      Result<std::optional<std::string>> piece = co_await stream->next(ctx);
      if (!piece.ok()) co_return std::move(piece).error();
      if (!piece->has_value()) co_return out;
      out.body.append(**piece);
    }
    out.more = true;
    co_return out;
  }

  std::string result_text(Fetched got) const {
    const std::size_t bound = options_.max_response_bytes;
    if (!got.more && got.body.size() <= bound) return std::move(got.body);
    std::string text(utf8_prefix(got.body, bound));
    text.append("\n[cut: the response is longer than ").append(std::to_string(bound)).append(" bytes]");
    return text;
  }

  // Text from the other side made safe for an error message: no header values, nothing that
  // looks like a key, no line breaks, at most kQuotedBodyBytes (plus "...").
  static std::string quote(const Fetched& got, const std::vector<std::string>& secrets) {
    std::string s(utf8_prefix(got.body, kQuotedBodyBytes));
    const bool cut = got.more || s.size() < got.body.size();
    for (const std::string& secret : secrets) replace_all(s, secret, kRedacted);
    s = llm::redact_secrets(s);
    for (char& c : s) {
      if (c == '\n' || c == '\r' || c == '\t') c = ' ';
    }
    if (cut) s.append("...");
    return s;
  }

  Error status_error(Context& ctx, const Fetched& got, const std::string& where,
                     const std::vector<std::string>& secrets) const {
    const int status = got.status;
    std::string m = where + ": http " + std::to_string(status);
    std::string body = quote(got, secrets);
    const std::string tail = body.empty() ? " (empty body)" : ": " + body;
    if (status == 401 || status == 403) {
      return Error(ErrorKind::kPermanent, std::string(kAuthFailurePrefix) + m + tail);
    }
    if (status == 429 || status == 408 || status >= 500) {
      const ErrorKind kind = status == 429 ? ErrorKind::kRateLimited : ErrorKind::kTransient;
      Error e(kind, m + tail);
      if (status == 429 || status == 503) {
        llm::Headers headers;
        for (const net::HttpHeaders::Field& f : got.headers.fields()) headers.push_back({f.name, f.value});
        if (auto at = llm::retry_after_from_headers(headers, {ctx.now(), ctx.env().unix_time_ns()})) {
          e = std::move(e).with_retry_at(*at);
        }
      }
      return e;
    }
    if (status >= 300 && status <= 399) m.append(" (redirects are not followed)");
    return Error(ErrorKind::kPermanent, m + tail);
  }

  ToolSpec spec_;
  HttpToolOptions options_;
  std::shared_ptr<net::HttpClient> client_;
  Template url_;
  std::vector<std::pair<std::string, Template>> headers_;
  Template body_;
  Template check_url_;
};

// The schema's property names, or nullopt when it lists none ("properties" absent).
std::optional<std::set<std::string>> schema_properties(const std::string& schema_json) {
  Json schema = Json::parse(schema_json, nullptr, /*allow_exceptions=*/false);
  if (schema.is_discarded() || !schema.is_object()) return std::nullopt;
  auto it = schema.find("properties");
  if (it == schema.end() || !it->is_object()) return std::nullopt;
  std::set<std::string> names;
  for (auto p = it->begin(); p != it->end(); ++p) names.insert(p.key());
  return names;
}

// A URL template: http(s), an authority without placeholders.
Status check_url_template(const Template& t, const std::string& what) {
  auto bad = [&](const std::string& reason) { return Error(ErrorKind::kInvalidArgument, what + ": " + reason); };
  if (t.empty() || t.segments[0].placeholder) return bad("must start with http:// or https://");
  const std::string lower = internal::to_lower(t.segments[0].text);
  std::size_t authority = 0;
  if (lower.starts_with("http://")) {
    authority = 7;
  } else if (lower.starts_with("https://")) {
    authority = 8;
  } else {
    return bad("must start with http:// or https://");
  }
  const std::string& first = t.segments[0].text;
  const std::size_t end = first.find_first_of("/?#", authority);
  if (end == authority) return bad("has no host");
  if (end == std::string::npos && t.segments.size() > 1) {
    return bad("placeholder at position " + std::to_string(t.segments[1].pos) +
               " is in the host; placeholders may stand only in the path, query or fragment");
  }
  if (end == std::string::npos && first.size() == authority) return bad("has no host");
  return ok_status();
}

Status check_placeholders(const Template& t, const std::string& what,
                          const std::optional<std::set<std::string>>& known) {
  if (!known) return ok_status();
  for (const Segment& s : t.segments) {
    if (s.placeholder && !known->contains(s.text)) {
      return Error(ErrorKind::kInvalidArgument, what + ": placeholder '{" + s.text + "}' at position " +
                                                    std::to_string(s.pos) +
                                                    " names no property of the parameters schema");
    }
  }
  return ok_status();
}

}  // namespace

Result<std::shared_ptr<Tool>> make_http_tool(ToolSpec spec, HttpToolOptions options,
                                             std::shared_ptr<net::HttpClient> client) {
  if (Status s = validate_tool_spec(spec); !s.ok()) return std::move(s).error();
  const std::string tool = "tool '" + spec.name + "': ";
  auto bad = [&](const std::string& what) { return Error(ErrorKind::kInvalidArgument, tool + what); };
  if (!client) return bad("no HTTP client");
  if (options.max_response_bytes == 0) return bad("max_response_bytes must be > 0");
  if (options.method == HttpMethod::kGet && !options.body_template.empty()) {
    return bad("a GET request has no body: body_template must be empty");
  }
  if (spec.nature == EffectNature::kCheckable && options.check_url_template.empty()) {
    return bad("a checkable tool needs a check_url_template");
  }
  const auto known = schema_properties(spec.parameters_schema_json);

  auto compile = [&](const std::string& text, const std::string& what) -> Result<Template> {
    Result<Template> t = compile_template(text, tool + what);
    if (!t.ok()) return t;
    if (Status s = check_placeholders(*t, tool + what, known); !s.ok()) return std::move(s).error();
    return t;
  };

  Result<Template> url = compile(options.url_template, "url_template");
  if (!url.ok()) return std::move(url).error();
  if (Status s = check_url_template(*url, tool + "url_template"); !s.ok()) return std::move(s).error();

  Template check_url;
  if (!options.check_url_template.empty()) {
    Result<Template> c = compile(options.check_url_template, "check_url_template");
    if (!c.ok()) return std::move(c).error();
    if (Status s = check_url_template(*c, tool + "check_url_template"); !s.ok()) return std::move(s).error();
    check_url = std::move(*c);
  }

  std::vector<std::pair<std::string, Template>> headers;
  for (const auto& f : options.headers.fields()) {
    if (f.name.empty() || !std::all_of(f.name.begin(), f.name.end(), is_token_char)) {
      const bool printable = std::all_of(f.name.begin(), f.name.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
      return bad("header name '" + (printable ? f.name : std::string("?")) + "' is not an HTTP token");
    }
    if (internal::iequals(f.name, "idempotency-key")) {
      return bad("header 'Idempotency-Key' is set by the tool (the effect journal's key)");
    }
    const std::string what = "header '" + f.name + "' template";
    if (has_line_break(f.value)) return bad(what + ": holds a line break or NUL");
    Result<Template> t = compile(f.value, what);
    if (!t.ok()) return std::move(t).error();
    headers.emplace_back(f.name, std::move(*t));
  }

  Template body;
  if (!options.body_template.empty()) {
    Result<Template> b = compile(options.body_template, "body_template");
    if (!b.ok()) return std::move(b).error();
    body = std::move(*b);
  }

  return std::shared_ptr<Tool>(std::make_shared<HttpTool>(std::move(spec), std::move(options), std::move(client),
                                                          std::move(*url), std::move(headers), std::move(body),
                                                          std::move(check_url)));
}

}  // namespace nines::agent
