// nines/agent/validation.hpp: checking a model's tool call before anything runs.
//
//   auto schema = agent::ArgumentSchema::compile(R"({"type":"object","required":["id"],
//                                                   "properties":{"id":{"type":"string"}}})").value();
//   std::optional<agent::ArgumentProblem> p = schema->check(R"({"id": 7})");
//   // p->kind == kSchemaViolation, p->path == "/id", p->rule == "type",
//   // p->message == "arguments violate the schema at /id: expected type string (rule: type)"
//
// A model's tool call is checked in three ways before it may run: the tool exists (the agent's
// registry answers), the arguments are JSON (an object), and they satisfy the tool's JSON
// Schema, checked by valijson (Debian's libvalijson-dev, JSON Schema draft 7). A problem is
// described for the model: what is wrong and where (the property path as a JSON Pointer, the
// schema rule), so that it can correct the call.
//
// Thread-safety: a compiled ArgumentSchema is immutable; check() may run in many processes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nines/core/result.hpp"

namespace nines::agent {

enum class ArgumentProblemKind : std::uint8_t {
  kUnknownTool,      // the model called a tool the agent does not have
  kNotJson,          // the arguments are not JSON, or not a JSON object
  kSchemaViolation,  // valid JSON that the tool's schema rejects
};
std::string_view to_string(ArgumentProblemKind kind);

struct ArgumentProblem {
  ArgumentProblemKind kind = ArgumentProblemKind::kNotJson;
  std::string path;     // kSchemaViolation: JSON Pointer of the failing value ("" = the whole object)
  std::string rule;     // kSchemaViolation: the schema keyword that failed ("required", "type", ...)
  std::string message;  // for the model: what is wrong, where, and what is expected
};

class ArgumentSchema {
 public:
  // kInvalidArgument naming the problem when the text is not JSON, not a JSON object, or not
  // a schema valijson can compile (draft 7; remote $refs are refused: nothing is fetched).
  static Result<std::shared_ptr<const ArgumentSchema>> compile(std::string_view schema_json);
  ~ArgumentSchema();

  // nullopt when the arguments are a JSON object the schema accepts. At most 8 violations are
  // named in the message (the first one in path/rule).
  std::optional<ArgumentProblem> check(std::string_view arguments_json) const;

 private:
  struct Impl;
  explicit ArgumentSchema(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The problem for a call to `name` that no tool has: names the valid tools (at most 32).
ArgumentProblem unknown_tool_problem(std::string_view name, const std::vector<std::string>& valid_names);

}  // namespace nines::agent
