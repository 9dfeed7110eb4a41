// The API's request parsing (src/service/api_request.hpp): what each route accepts and how each
// bad request is refused, before the service reads or changes anything.
#include "service/api_request.hpp"

#include <gtest/gtest.h>

#include <variant>

namespace nines::service::internal {
namespace {

template <class T>
const RequestError& refused(const Parsed<T>& p) {
  static const RequestError none{.status = 0, .message = "accepted"};
  const RequestError* e = std::get_if<RequestError>(&p);
  return e != nullptr ? *e : none;
}

TEST(ApiRequest, RoutesAndScopes) {
  EXPECT_EQ(match_route("/v1/tasks")->name, "/v1/tasks");
  std::optional<Route> r = match_route("/v1/tasks/a%2Fb/cancel");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->task_id, "a/b");
  EXPECT_EQ(r->action, "cancel");
  EXPECT_EQ(r->scope, Scope::kOperator);
  EXPECT_EQ(match_route("/v1/tasks/x/events")->scope, Scope::kRead);
  EXPECT_FALSE(match_route("/v1/tasks/"));
  EXPECT_FALSE(match_route("/v1/tasks/x/delete"));
  EXPECT_FALSE(match_route("/v2/tasks"));
  EXPECT_EQ(required_scope(*match_route("/v1/tasks"), "POST"), Scope::kOperator);
  EXPECT_EQ(required_scope(*match_route("/v1/tasks"), "GET"), Scope::kRead);
  EXPECT_EQ(required_scope(*match_route("/healthz"), "GET"), Scope::kNone);
}

TEST(ApiRequest, SubmitAcceptsTheDocumentedFields) {
  Parsed<SubmitRequest> p = parse_submit(
      R"({"agent":"support","input":"hi","budget":{"max_steps":3,"max_cost_usd":0.5,"max_wall_time_s":2}})", "k1");
  ASSERT_TRUE(std::holds_alternative<SubmitRequest>(p)) << refused(p).message;
  const SubmitRequest& s = std::get<SubmitRequest>(p);
  EXPECT_EQ(s.agent, "support");
  EXPECT_EQ(s.input, "hi");
  ASSERT_TRUE(s.cap);
  EXPECT_EQ(s.cap->max_steps, 3);
  EXPECT_EQ(s.cap->max_model_calls, 0);  // no limit unless given
  EXPECT_DOUBLE_EQ(s.cap->max_cost_usd, 0.5);
  EXPECT_EQ(s.cap->max_wall_time, std::chrono::seconds(2));
  EXPECT_EQ(s.idempotency_key, "k1");
}

TEST(ApiRequest, SubmitRefusesWithTheField) {
  struct Case {
    const char* body;
    std::optional<std::string_view> key;
    const char* field;
  };
  for (const Case& c : {
           Case{"{not json", std::nullopt, ""},
           Case{"[]", std::nullopt, ""},
           Case{R"({"input":"x"})", std::nullopt, "agent"},
           Case{R"({"agent":"a"})", std::nullopt, "input"},
           Case{R"({"agent":1,"input":"x"})", std::nullopt, "agent"},
           Case{R"({"agent":"a","input":"x","extra":1})", std::nullopt, "extra"},
           Case{R"({"agent":"a","input":"x","id":""})", std::nullopt, "id"},
           Case{R"({"agent":"a","input":"x","id":"has space"})", std::nullopt, "id"},
           Case{R"({"agent":"a","input":"x","budget":[]})", std::nullopt, "budget"},
           Case{R"({"agent":"a","input":"x","budget":{"max_steps":-1}})", std::nullopt, "budget.max_steps"},
           Case{R"({"agent":"a","input":"x","budget":{"max_steps":1.5}})", std::nullopt, "budget.max_steps"},
           Case{R"({"agent":"a","input":"x","budget":{"max_steps":18446744073709551615}})", std::nullopt,
                "budget.max_steps"},
           Case{R"({"agent":"a","input":"x","budget":{"max_cost_usd":-0.1}})", std::nullopt, "budget.max_cost_usd"},
           Case{R"({"agent":"a","input":"x","budget":{"steps":1}})", std::nullopt, "budget.steps"},
           Case{R"({"agent":"a","input":"x"})", "", "Idempotency-Key"},
           Case{R"({"agent":"a","input":"x"})", "bad\x01key", "Idempotency-Key"},
           Case{R"({"agent":"a","input":"x","id":"t1"})", "k", "id"},
       }) {
    Parsed<SubmitRequest> p = parse_submit(c.body, c.key);
    const RequestError& e = refused(p);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.field, c.field) << c.body << ": " << e.message;
    EXPECT_FALSE(e.message.empty());
  }
}

TEST(ApiRequest, ListQueryStatusesAndCursors) {
  Parsed<ListQuery> p = parse_list_query("status=failed&agent=x&limit=7");
  ASSERT_TRUE(std::holds_alternative<ListQuery>(p)) << refused(p).message;
  const ListQuery& q = std::get<ListQuery>(p);
  // failed: completed with a failed outcome, or the store's failed status.
  EXPECT_FALSE(q.use[0]);
  EXPECT_TRUE(q.use[2]);
  EXPECT_TRUE(q.use[3]);
  EXPECT_EQ(q.want, "failed");
  EXPECT_EQ(q.limit, 7u);
  Parsed<ListQuery> c = parse_list_query("cursor=" + encode_cursor(3, "t-9/x\n"));
  ASSERT_TRUE(std::holds_alternative<ListQuery>(c));
  EXPECT_EQ(std::get<ListQuery>(c).group, 3u);
  EXPECT_EQ(std::get<ListQuery>(c).after, "t-9/x\n");
  EXPECT_EQ(refused(parse_list_query("limit=0")).field, "limit");
  EXPECT_EQ(refused(parse_list_query("limit=501")).field, "limit");
  EXPECT_EQ(refused(parse_list_query("limit=-1")).field, "limit");
  EXPECT_EQ(refused(parse_list_query("status=done")).field, "status");
  EXPECT_EQ(refused(parse_list_query("cursor=7a")).field, "cursor");
  EXPECT_EQ(refused(parse_list_query("cursor=350a")).field, "cursor");  // group 5 does not exist
  EXPECT_EQ(refused(parse_list_query("sort=id")).field, "sort");
}

TEST(ApiRequest, ActionBodies) {
  EXPECT_TRUE(std::holds_alternative<ActionRequest>(parse_action("cancel", "")));
  EXPECT_TRUE(std::holds_alternative<ActionRequest>(parse_action("cancel", "{}")));
  EXPECT_EQ(refused(parse_action("cancel", R"({"why":1})")).field, "why");
  EXPECT_EQ(refused(parse_action("approve", "{}")).field, "call_id");
  EXPECT_EQ(refused(parse_action("approve", R"({"call_id":""})")).field, "call_id");
  EXPECT_EQ(refused(parse_action("approve", R"({"call_id":"c","reason":"x"})")).field, "reason");
  Parsed<ActionRequest> d = parse_action("deny", R"({"call_id":"c1","reason":"no"})");
  ASSERT_TRUE(std::holds_alternative<ActionRequest>(d));
  EXPECT_EQ(std::get<ActionRequest>(d).reason, "no");
  EXPECT_EQ(refused(parse_action("resolve", R"({"effect_id":"3"})")).field, "applied");
  EXPECT_EQ(refused(parse_action("resolve", R"({"effect_id":"3","applied":"yes"})")).field, "applied");
  Parsed<ActionRequest> f = parse_action("fork", R"({"at_turn":2,"input":"again"})");
  ASSERT_TRUE(std::holds_alternative<ActionRequest>(f));
  EXPECT_EQ(std::get<ActionRequest>(f).fork.at_turn, 2);
  EXPECT_EQ(std::get<ActionRequest>(f).fork.input, "again");
  EXPECT_EQ(refused(parse_action("fork", R"({"at_turn":-1})")).field, "at_turn");
  EXPECT_EQ(refused(parse_action("fork", R"({"id":"bad id"})")).field, "id");
}

TEST(ApiRequest, AuthAndIds) {
  EXPECT_EQ(bearer_token("Bearer abc"), "abc");
  EXPECT_EQ(bearer_token("bearer abc"), "abc");
  EXPECT_EQ(bearer_token("Basic abc"), "");
  EXPECT_EQ(bearer_token("Bearer "), "");
  EXPECT_EQ(bearer_token(std::nullopt), "");
  EXPECT_TRUE(constant_time_equal("secret", "secret"));
  EXPECT_FALSE(constant_time_equal("secret", "secreT"));
  EXPECT_FALSE(constant_time_equal("secret", "secret2"));
  EXPECT_FALSE(constant_time_equal("", "x"));
  EXPECT_EQ(key_task_id("order-42"), key_task_id("order-42"));
  EXPECT_NE(key_task_id("order-42"), key_task_id("order-43"));
  EXPECT_TRUE(valid_task_id(key_task_id("any key at all")));
  EXPECT_EQ(key_task_id("x").size(), 34u);
  EXPECT_EQ(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
  EXPECT_EQ(parse_query("a=1&a=2&&b")["a"], "2");
  EXPECT_EQ(last_event_id(std::nullopt, "last_event_id=5f.3"), "5f.3");
  EXPECT_EQ(last_event_id("h.1", "last_event_id=5f.3"), "h.1");
}

}  // namespace
}  // namespace nines::service::internal
