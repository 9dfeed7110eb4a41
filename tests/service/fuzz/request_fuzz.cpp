// libFuzzer target: the API's request parsing (src/service/api_request.hpp) on arbitrary input
// must not crash, hang or leak, and what it accepts must hold what the handlers rely on
// (scripts/fuzz.sh). The input: byte 0 picks what is parsed; then up to three parts separated
// by '\n' (the path, the query or a header value, the body).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <variant>

#include "api_request.hpp"

namespace si = nines::service::internal;

namespace {

void require(bool ok) {
  if (!ok) std::abort();  // an invariant of an accepted request is broken
}

// Every refusal says what is wrong, with a 4xx status. (The pointer is into `p`: keep it alive.)
template <class T>
const T* accepted(const si::Parsed<T>& p) {
  if (const si::RequestError* e = std::get_if<si::RequestError>(&p)) {
    require(e->status >= 400 && e->status < 500 && !e->message.empty());
    return nullptr;
  }
  return &std::get<T>(p);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t which = data[0] % 6;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::size_t a = rest.find('\n');
  std::string_view first = rest.substr(0, a);
  std::string_view second = a == std::string_view::npos ? std::string_view() : rest.substr(a + 1);
  const std::size_t b = second.find('\n');
  std::string_view body = b == std::string_view::npos ? second : second.substr(b + 1);
  second = second.substr(0, b);

  switch (which) {
    case 0: {  // routes
      std::optional<si::Route> r = si::match_route(first);
      if (r) {
        require(!r->methods.empty() && !r->name.empty());
        require(r->name.rfind("/v1/tasks/{id}", 0) != 0 || !r->task_id.empty());
        (void)si::required_scope(*r, "POST");
      }
      break;
    }
    case 1: {  // POST /v1/tasks, with or without an Idempotency-Key
      std::optional<std::string_view> key;
      if (!first.empty()) key = first;
      const si::Parsed<si::SubmitRequest> parsed = si::parse_submit(body, key);
      if (const si::SubmitRequest* s = accepted(parsed)) {
        require(s->id.empty() || si::valid_task_id(s->id));
        require(!s->idempotency_key || (!s->idempotency_key->empty() && s->idempotency_key->size() <= 256));
        require(!(s->idempotency_key && !s->id.empty()));
        if (s->cap) require(s->cap->max_steps >= 0 && s->cap->max_tokens >= 0 && s->cap->max_cost_usd >= 0);
        if (s->idempotency_key) require(si::valid_task_id(si::key_task_id(*s->idempotency_key)));
      }
      break;
    }
    case 2: {  // GET /v1/tasks?...
      const si::Parsed<si::ListQuery> parsed = si::parse_list_query(first);
      if (const si::ListQuery* q = accepted(parsed)) {
        require(q->limit >= 1 && q->limit <= si::kMaxListLimit && q->group < si::kStatusGroups);
        // A cursor this code makes reads back as itself.
        const std::string c = si::encode_cursor(q->group, q->after);
        const si::Parsed<si::ListQuery> reparsed = si::parse_list_query("cursor=" + c);
        const si::ListQuery* again = accepted(reparsed);
        require(again != nullptr && again->group == q->group && again->after == q->after);
      }
      break;
    }
    case 3: {  // POST /v1/tasks/{id}/<action>
      static constexpr std::string_view kActions[] = {"cancel", "approve", "deny", "resolve", "fork"};
      const std::string_view action = kActions[first.size() % 5];
      const si::Parsed<si::ActionRequest> parsed = si::parse_action(action, body);
      if (const si::ActionRequest* act = accepted(parsed)) {
        if (action == "approve" || action == "deny") require(!act->call_id.empty());
        if (action == "fork") require(act->new_id.empty() || si::valid_task_id(act->new_id));
        if (action == "fork") require(act->fork.at_turn >= 0);
      }
      break;
    }
    case 4: {  // auth
      std::string_view token = si::bearer_token(first);
      require(token.size() <= first.size());
      require(si::constant_time_equal(token, token));
      require(si::constant_time_equal(first, second) == (first == second));
      break;
    }
    default: {  // query strings and Last-Event-ID
      for (const auto& [k, v] : si::parse_query(first)) require(!k.empty());
      (void)si::last_event_id(second.empty() ? std::nullopt : std::optional<std::string_view>(second), first);
      break;
    }
  }
  return 0;
}
