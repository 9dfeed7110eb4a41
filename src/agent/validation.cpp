// Tool-call argument checks (agent/validation.hpp) with valijson on nlohmann::json.
#include "nines/agent/validation.hpp"

// valijson aborts on a bad schema unless told to throw: a model-supplied or configured schema
// must never take the program down.
#define VALIJSON_USE_EXCEPTIONS 1
#include <nlohmann/json.hpp>
#include <valijson/adapters/nlohmann_json_adapter.hpp>
#include <valijson/schema.hpp>
#include <valijson/schema_parser.hpp>
#include <valijson/validation_results.hpp>
#include <valijson/validator.hpp>

#include <exception>
#include <string>
#include <utility>

namespace nines::agent {

namespace {

constexpr std::size_t kMaxNamedViolations = 8;
constexpr std::size_t kMaxNamedTools = 32;

// valijson names a value's place as {"<root>", "[name]", "[0]", ...}; a JSON Pointer reads
// "/name/0" ('~' and '/' escaped as RFC 6901 says).
std::string json_pointer(const std::vector<std::string>& context) {
  std::string out;
  for (const std::string& part : context) {
    if (part == "<root>") continue;
    std::string_view p = part;
    if (p.size() >= 2 && p.front() == '[' && p.back() == ']') p = p.substr(1, p.size() - 2);
    if (p.size() >= 2 && p.front() == '"' && p.back() == '"') p = p.substr(1, p.size() - 2);
    out += '/';
    for (char c : p) {
      if (c == '~') {
        out += "~0";
      } else if (c == '/') {
        out += "~1";
      } else {
        out += c;
      }
    }
  }
  return out;
}

// The schema keyword a valijson description is about (valijson names it in words, not as a
// field): the first pattern found wins, so the longer phrases come first.
std::string rule_of(const std::string& description) {
  static const std::pair<const char*, const char*> kPatterns[] = {
      {"'type' constraint", "type"},
      {"Missing required property", "required"},
      {"additional properties", "additionalProperties"},
      {"Object contains a property", "additionalProperties"},
      {"additional items", "additionalItems"},
      {"more items than allowed", "additionalItems"},
      {"less than or equal", "maximum"},
      {"less than", "exclusiveMaximum"},
      {"greater than or equal", "minimum"},
      {"greater than", "exclusiveMinimum"},
      {"String should be no more than", "maxLength"},
      {"String should be no fewer than", "minLength"},
      {"Array should contain no more than", "maxItems"},
      {"Array should contain no fewer than", "minItems"},
      {"Object should have no more than", "maxProperties"},
      {"Object should have no fewer than", "minProperties"},
      {"uniqueness", "uniqueItems"},
      {"multiple of", "multipleOf"},
      {"'pattern'", "pattern"},
      {"associated with pattern", "patternProperties"},
      {"String should be a valid", "format"},
      {"enum values", "enum"},
      {"'const'", "const"},
      {"'contains'", "contains"},
      {"dependen", "dependencies"},
      {"if-then-else", "if"},
      {"anyOf", "anyOf"},
      {"oneOf", "oneOf"},
      {"exactly one child", "oneOf"},
      {"child schema #", "allOf"},
      {"'not'", "not"},
      {"property name", "properties"},
      {"item #", "items"},
  };
  for (const auto& [pattern, keyword] : kPatterns) {
    if (description.find(pattern) != std::string::npos) return keyword;
  }
  return "schema";
}

std::string cut(std::string_view s, std::size_t n) {
  if (s.size() <= n) return std::string(s);
  return std::string(s.substr(0, n)) + "...";
}

}  // namespace

std::string_view to_string(ArgumentProblemKind kind) {
  switch (kind) {
    case ArgumentProblemKind::kUnknownTool: return "unknown_tool";
    case ArgumentProblemKind::kNotJson: return "invalid_json";
    case ArgumentProblemKind::kSchemaViolation: return "schema_violation";
  }
  return "unknown";
}

struct ArgumentSchema::Impl {
  nlohmann::json document;  // the adapter refers to it while parsing only; kept for clarity
  valijson::Schema schema;
};

ArgumentSchema::ArgumentSchema(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ArgumentSchema::~ArgumentSchema() = default;

Result<std::shared_ptr<const ArgumentSchema>> ArgumentSchema::compile(std::string_view schema_json) {
  auto impl = std::make_unique<Impl>();
  impl->document = nlohmann::json::parse(schema_json, nullptr, /*allow_exceptions=*/false);
  if (impl->document.is_discarded()) {
    return Error(ErrorKind::kInvalidArgument, "tool schema: not valid JSON: " + cut(schema_json, 80));
  }
  if (!impl->document.is_object()) {
    return Error(ErrorKind::kInvalidArgument,
                 "tool schema: must be a JSON object, got " + std::string(impl->document.type_name()));
  }
  try {
    valijson::SchemaParser parser(valijson::SchemaParser::kDraft7);
    valijson::adapters::NlohmannJsonAdapter adapter(impl->document);
    // No fetch function: a remote $ref is an error, never a download.
    parser.populateSchema(adapter, impl->schema);
  } catch (const std::exception& e) {
    return Error(ErrorKind::kInvalidArgument,
                 std::string("tool schema: not a valid JSON Schema (draft 7): ") + e.what());
  }
  return std::shared_ptr<const ArgumentSchema>(new ArgumentSchema(std::move(impl)));
}

std::optional<ArgumentProblem> ArgumentSchema::check(std::string_view arguments_json) const {
  nlohmann::json args = nlohmann::json::parse(arguments_json, nullptr, /*allow_exceptions=*/false);
  if (args.is_discarded()) {
    return ArgumentProblem{.kind = ArgumentProblemKind::kNotJson,
                           .message = "arguments are not valid JSON: " + cut(arguments_json, 120) +
                                      " (send one JSON object that matches the tool's schema)"};
  }
  if (!args.is_object()) {
    return ArgumentProblem{.kind = ArgumentProblemKind::kNotJson,
                           .message = std::string("arguments must be a JSON object, got ") + args.type_name()};
  }
  valijson::Validator validator(valijson::Validator::kStrongTypes);
  valijson::ValidationResults results;
  valijson::adapters::NlohmannJsonAdapter adapter(args);
  if (validator.validate(impl_->schema, adapter, &results)) return std::nullopt;

  ArgumentProblem p{.kind = ArgumentProblemKind::kSchemaViolation};
  std::string details;
  std::size_t named = 0;
  std::size_t total = results.numErrors();
  valijson::ValidationResults::Error e;
  bool first = true;
  while (results.popError(e)) {
    std::string path = json_pointer(e.context);
    std::string rule = rule_of(e.description);
    // valijson reports the enclosing object too ("Failed to validate against schema associated
    // with property name 'id'"): the deepest violation is the useful one, so prefer it.
    if (first || path.size() > p.path.size()) {
      p.path = path;
      p.rule = rule;
    }
    first = false;
    if (named < kMaxNamedViolations) {
      if (!details.empty()) details += "; ";
      details += (path.empty() ? std::string("(the arguments object)") : path) + ": " + e.description;
      ++named;
    }
  }
  p.message = "arguments violate the schema at " + (p.path.empty() ? std::string("the top level") : p.path) +
              " (rule: " + p.rule + "): " + details;
  if (total > named) p.message += "; and " + std::to_string(total - named) + " more";
  return p;
}

ArgumentProblem unknown_tool_problem(std::string_view name, const std::vector<std::string>& valid_names) {
  std::string names;
  for (std::size_t i = 0; i < valid_names.size() && i < kMaxNamedTools; ++i) {
    if (i) names += ", ";
    names += valid_names[i];
  }
  if (valid_names.size() > kMaxNamedTools) names += ", ...";
  if (valid_names.empty()) names = "(none: answer without tools)";
  return ArgumentProblem{.kind = ArgumentProblemKind::kUnknownTool,
                         .message = "there is no tool named '" + cut(name, 64) + "'; the tools are: " + names};
}

}  // namespace nines::agent
