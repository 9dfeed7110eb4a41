// Tool-call argument checks: JSON, schema (valijson, draft 7), unknown tools; tool specs.
#include "nines/agent/validation.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "nines/agent/tool.hpp"
#include "support/status_matchers.hpp"

namespace nines::agent {
namespace {

using test::IsOk;
using test::StatusIs;
using ::testing::HasSubstr;

constexpr const char* kOrderSchema = R"({
  "type": "object",
  "properties": {
    "id": {"type": "string", "minLength": 3},
    "qty": {"type": "integer", "minimum": 1},
    "tags": {"type": "array", "items": {"type": "string"}}
  },
  "required": ["id"],
  "additionalProperties": false
})";

std::shared_ptr<const ArgumentSchema> order_schema() {
  auto s = ArgumentSchema::compile(kOrderSchema);
  EXPECT_THAT(s, IsOk());
  return *s;
}

TEST(ArgumentSchema, AcceptsValidArguments) {
  auto s = order_schema();
  EXPECT_EQ(s->check(R"({"id":"A-42","qty":2,"tags":["x"]})"), std::nullopt);
  EXPECT_EQ(s->check(R"({"id":"A-42"})"), std::nullopt);
}

TEST(ArgumentSchema, NotJsonIsNamed) {
  auto p = order_schema()->check(R"({"id": "A-4)");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->kind, ArgumentProblemKind::kNotJson);
  EXPECT_THAT(p->message, HasSubstr("not valid JSON"));
}

TEST(ArgumentSchema, NonObjectIsNotJsonObject) {
  auto p = order_schema()->check(R"(["A-42"])");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->kind, ArgumentProblemKind::kNotJson);
  EXPECT_THAT(p->message, HasSubstr("must be a JSON object, got array"));
}

TEST(ArgumentSchema, MissingRequiredPropertyNamesTheRule) {
  auto p = order_schema()->check(R"({"qty":2})");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->kind, ArgumentProblemKind::kSchemaViolation);
  EXPECT_EQ(p->rule, "required");
  EXPECT_THAT(p->message, HasSubstr("id"));
}

TEST(ArgumentSchema, WrongTypeNamesThePathAndRule) {
  auto p = order_schema()->check(R"({"id":"A-42","qty":"two"})");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->kind, ArgumentProblemKind::kSchemaViolation);
  EXPECT_EQ(p->path, "/qty");
  EXPECT_EQ(p->rule, "type");
  EXPECT_THAT(p->message, HasSubstr("/qty"));
}

TEST(ArgumentSchema, NestedPathIsAJsonPointer) {
  auto p = order_schema()->check(R"({"id":"A-42","tags":["ok", 7]})");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->path, "/tags/1");
  EXPECT_EQ(p->rule, "type");
}

TEST(ArgumentSchema, RangeAndLengthRules) {
  auto s = order_schema();
  auto p = s->check(R"({"id":"A-42","qty":0})");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->path, "/qty");
  EXPECT_EQ(p->rule, "minimum");
  p = s->check(R"({"id":"A"})");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->path, "/id");
  EXPECT_EQ(p->rule, "minLength");
}

TEST(ArgumentSchema, AdditionalPropertiesRefused) {
  auto p = order_schema()->check(R"({"id":"A-42","color":"red"})");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->rule, "additionalProperties");
}

TEST(ArgumentSchema, Draft7KeywordsWork) {
  // const and if/then are draft 7 (not in draft 4).
  auto s = ArgumentSchema::compile(R"({"type":"object","properties":{"mode":{"const":"fast"}},
      "if":{"properties":{"mode":{"const":"fast"}}},"then":{"required":["limit"]}})");
  ASSERT_THAT(s, IsOk());
  auto p = (*s)->check(R"({"mode":"slow"})");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->path, "/mode");
  EXPECT_EQ(p->rule, "const");
  p = (*s)->check(R"({"mode":"fast"})");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->rule, "required");
  EXPECT_EQ((*s)->check(R"({"mode":"fast","limit":3})"), std::nullopt);
}

TEST(ArgumentSchema, BadSchemasAreRefusedWithTheReason) {
  EXPECT_THAT(ArgumentSchema::compile("{not json"), StatusIs(ErrorKind::kInvalidArgument, "not valid JSON"));
  EXPECT_THAT(ArgumentSchema::compile("[1]"), StatusIs(ErrorKind::kInvalidArgument, "must be a JSON object"));
  EXPECT_THAT(ArgumentSchema::compile(R"({"type": 7})"), StatusIs(ErrorKind::kInvalidArgument, "JSON Schema"));
  EXPECT_THAT(ArgumentSchema::compile(R"({"$ref": "https://example.com/s.json"})"),
              StatusIs(ErrorKind::kInvalidArgument));
}

TEST(UnknownTool, NamesTheValidTools) {
  ArgumentProblem p = unknown_tool_problem("serach", {"search", "fetch"});
  EXPECT_EQ(p.kind, ArgumentProblemKind::kUnknownTool);
  EXPECT_THAT(p.message, HasSubstr("'serach'"));
  EXPECT_THAT(p.message, HasSubstr("search, fetch"));
}

TEST(ToolSpec, ValidatesNameTimeoutSchemaFallback) {
  EXPECT_THAT(validate_tool_spec({.name = "ok_name-1"}), IsOk());
  EXPECT_THAT(validate_tool_spec({.name = ""}), StatusIs(ErrorKind::kInvalidArgument, "name"));
  EXPECT_THAT(validate_tool_spec({.name = "has space"}), StatusIs(ErrorKind::kInvalidArgument, "letters"));
  EXPECT_THAT(validate_tool_spec({.name = std::string(65, 'a')}), StatusIs(ErrorKind::kInvalidArgument, "64"));
  EXPECT_THAT(validate_tool_spec({.name = "t", .timeout = Duration::zero()}),
              StatusIs(ErrorKind::kInvalidArgument, "timeout"));
  EXPECT_THAT(validate_tool_spec({.name = "t", .parameters_schema_json = "{"}),
              StatusIs(ErrorKind::kInvalidArgument, "schema"));
  EXPECT_THAT(validate_tool_spec({.name = "t", .fallback = "t"}), StatusIs(ErrorKind::kInvalidArgument, "itself"));
}

TEST(NativeTool, CheckableNeedsACheck) {
  auto fn = [](Context&, const ToolInvocation&) -> Task<Result<std::string>> { co_return std::string("x"); };
  EXPECT_THAT(make_native_tool({.name = "t", .nature = EffectNature::kCheckable}, fn),
              StatusIs(ErrorKind::kInvalidArgument, "check"));
  EXPECT_THAT(make_native_tool({.name = "t", .nature = EffectNature::kReadOnly}, fn), IsOk());
  EXPECT_THAT(make_native_tool({.name = "t"}, nullptr), StatusIs(ErrorKind::kInvalidArgument, "no function"));
}

}  // namespace
}  // namespace nines::agent
