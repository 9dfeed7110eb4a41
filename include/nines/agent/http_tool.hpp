// nines/agent/http_tool.hpp: a tool that is an HTTP endpoint. Each call fills the request's
// templates from the call's arguments, sends it with the shared HttpClient and turns the
// response into the text the model sees, or into an error the resilience policies act on.
//
//   agent::ToolSpec spec{.name = "refund",
//                        .description = "Refunds an order",
//                        .parameters_schema_json = R"({"type":"object","required":["id","amount"],
//                          "properties":{"id":{"type":"string"},"amount":{"type":"number"}}})",
//                        .nature = EffectNature::kCheckable,
//                        .timeout = std::chrono::seconds(10)};
//   auto tool = agent::make_http_tool(spec,
//       {.method = agent::HttpMethod::kPost,
//        .url_template = "https://shop.example/orders/{id}/refunds",
//        .headers = {{"Authorization", "Bearer " + token}},
//        .body_template = R"({{"amount": {amount}, "currency": "EUR"}})",
//        .check_url_template = "https://shop.example/orders/{id}/refunds/by-key"},
//       http_client);
//
// Templates (url_template, check_url_template, header values, body_template): `{name}` is
// replaced by the top-level argument `name` of the call's arguments object; `{{` and `}}`
// stand for a literal `{` and `}` (as in Python's str.format, so a JSON body template doubles
// its own braces, as above). How a value is written depends on where it goes:
//   URL (path, query, fragment)  its text, percent-encoded (RFC 3986 unreserved characters
//                                kept): strings as they are, numbers and booleans as JSON
//                                text, objects and arrays as JSON; null is refused
//   header value                 its text as for URLs, not encoded; a value holding CR, LF or
//                                NUL, and null, are refused
//   body template                its JSON encoding ("a \"b\"" for a string, 12.5, true, null,
//                                {...}), so that the template stays JSON
// Placeholders may stand only after the URL's authority (in the path, query or fragment): the
// model never chooses the host. With no body_template, POST, PUT and PATCH send the arguments
// object itself as the body; GET and DELETE send none. A request with a body carries
// Content-Type: application/json unless `headers` sets one.
//
// Every request (the call and the check, all methods) carries the invocation's idempotency
// key as the Idempotency-Key header (when the key is not empty), so a retried or resumed call
// reaches the target with the same key.
//
// Results and errors (see agent/tool.hpp for how each kind is treated):
//   2xx            the response body is the result text; a body longer than
//                  max_response_bytes is cut there (at a UTF-8 character boundary) and ends
//                  with "\n[cut: the response is longer than N bytes]"; the rest is not read
//   429            kRateLimited; retry_at from retry-after-ms (milliseconds) or Retry-After
//                  (seconds or an HTTP date) when present
//   408, 5xx       kTransient (a 503 with Retry-After also carries retry_at)
//   401, 403       kPermanent, the message starting with kAuthFailurePrefix (never retried)
//   other 3xx/4xx  kPermanent naming the status and the first 512 bytes of the body
//                  (redirects are not followed unless the client follows them)
//   a missing or null argument a template needs, an argument that cannot go in a header:
//                  kInvalidArgument ("argument 'id' is needed by the URL template"); the
//                  model sees it and may call again with the argument
//   transport errors from the HttpClient keep their kinds (kTransient for a refused or reset
//                  connection, kTimeout, kDeadlineExceeded, kBulkheadFull, ...)
// spec.timeout bounds each request (connect, first byte, idle and total): beyond it kTimeout.
// Messages name the tool, the method and the URL without user info, query or fragment.
//
// Secrets: header values (Authorization, API keys) are never logged and never put in an
// error message; quoted response bodies have every header value of the request and each
// space-separated word of one (8 bytes or longer) and anything that looks like a key (sk-..., "Bearer ...") replaced by
// "[redacted]". Template errors at make time name the template (a header's by the header's
// name) and the position, never the template's text. Do not put secrets in the URL.
//
// check() (kCheckable tools): GETs check_url_template (filled from the same arguments) with the
// Idempotency-Key header: 200 means the call with that key was applied and the body is its
// outcome (cut as above); 404 means it was not applied (nullopt); any other answer means the
// target cannot tell now: the mapping above for errors (kTransient for other 2xx).
//
// No retry, breaker or concurrency limit here: the registry wraps every tool in the spec's
// resilience policies.
//
// Ownership: the tool shares the HttpClient (which must outlive every call in flight).
// Thread-safety: call() and check() may run in many processes at once (the tool is immutable).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "nines/agent/tool.hpp"
#include "nines/core/result.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/http_headers.hpp"

namespace nines::agent {

enum class HttpMethod { kGet, kPost, kPut, kPatch, kDelete };

std::string_view to_string(HttpMethod method);

struct HttpToolOptions {
  HttpMethod method = HttpMethod::kGet;
  // "http://" or "https://", then the authority (no placeholder), then path and query with
  // placeholders: "http://127.0.0.1:8080/orders/{id}?verbose={verbose}".
  std::string url_template;
  // Header name -> value template. Names are HTTP tokens; Idempotency-Key is set by the tool.
  net::HttpHeaders headers;
  // Empty: the arguments object for POST, PUT and PATCH, no body for GET and DELETE. Not
  // allowed with GET.
  std::string body_template;
  // Bytes of a response body the model sees (> 0); beyond, the body is cut with a marker.
  std::size_t max_response_bytes = 64u << 10;
  // kCheckable tools (required for them): the URL asked whether a call was applied.
  std::string check_url_template;
};

// kInvalidArgument for a bad spec (validate_tool_spec), no client, an empty or malformed URL
// template (not http(s), a placeholder in the authority), a malformed template (an unmatched
// `{` or `}`, an empty placeholder; the message names the template and the 0-based position),
// a placeholder naming no property of the schema (when the schema has "properties"), a bad
// header name or a header template with CR/LF, a body template with GET,
// max_response_bytes == 0, or a kCheckable spec without check_url_template.
Result<std::shared_ptr<Tool>> make_http_tool(ToolSpec spec, HttpToolOptions options,
                                             std::shared_ptr<net::HttpClient> client);

}  // namespace nines::agent
