// nines/llm/message.hpp: the provider-neutral message model.
//
// One shape for every provider: a ChatRequest (model, messages, tools, limits) goes in, a
// ChatResponse (the assistant message, why it stopped, usage, which model answered) comes
// out. The provider codecs (openai.hpp, anthropic.hpp) translate to and from each API's
// JSON; nothing here knows any API.
//
// JSON travels as text (a tool's parameter schema, a tool call's arguments), so no JSON
// library appears in public headers. Text given to a codec is inserted as JSON, not as a
// string: a schema that is not valid JSON fails request building with kInvalidArgument.
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nines/llm/wire.hpp"

#include "nines/core/result.hpp"

namespace nines::llm {

enum class Role : std::uint8_t { kSystem, kUser, kAssistant, kTool };

std::string_view to_string(Role role);

// One piece of a message's content. Text today; images are carried as a URL (https: or a
// data: URL with base64 bytes), which both codecs translate to their image parts.
struct ContentPart {
  enum class Type : std::uint8_t { kText, kImageUrl };
  Type type = Type::kText;
  std::string text;       // kText
  std::string image_url;  // kImageUrl: "https://..." or "data:image/png;base64,...."

  static ContentPart from_text(std::string text) { return {.type = Type::kText, .text = std::move(text)}; }
  static ContentPart from_image_url(std::string url) { return {.type = Type::kImageUrl, .image_url = std::move(url)}; }
  friend bool operator==(const ContentPart&, const ContentPart&) = default;
};

// A tool the model may call. parameters_schema_json is a JSON Schema (an object schema,
// e.g. {"type":"object","properties":{...},"required":[...]}), stored as JSON text.
struct ToolDefinition {
  std::string name;
  std::string description;
  std::string parameters_schema_json = R"({"type":"object","properties":{}})";
  friend bool operator==(const ToolDefinition&, const ToolDefinition&) = default;
};

// A call the model asked for. arguments_json is the JSON text the model produced, as
// received: it may be invalid JSON or violate the schema (models hallucinate); validating it
// is the caller's job (the agent layer's guards). An empty argument text is given as "{}".
struct ToolCall {
  std::string id;  // the provider's call id; a tool result names it
  std::string name;
  std::string arguments_json = "{}";
  friend bool operator==(const ToolCall&, const ToolCall&) = default;
};

struct Message {
  Role role = Role::kUser;
  std::vector<ContentPart> content;
  std::vector<ToolCall> tool_calls;  // kAssistant only: the calls it asked for, in order
  std::string tool_call_id;          // kTool only: the call this result answers
  bool is_error = false;             // kTool only: the tool failed; content says how
  // Kept whole by context fitting and summarization (context.hpp): never dropped, shortened
  // or folded into a summary. Not part of any provider request (the codecs ignore it);
  // encode_message keeps it.
  bool pinned = false;

  static Message system(std::string text);
  static Message user(std::string text);
  static Message assistant(std::string text, std::vector<ToolCall> calls = {});
  static Message tool_result(std::string call_id, std::string text, bool is_error = false);

  // The text parts concatenated (images skipped).
  std::string text() const;

  friend bool operator==(const Message&, const Message&) = default;
};

// A message as JSON text, the form the context manager stores in a task's history:
//   {"v":1,"role":"assistant","content":[{"type":"text","text":"..."},
//    {"type":"image_url","url":"https://..."}],"tool_calls":[{"id":"c1","name":"search",
//    "arguments":"{\"q\":\"x\"}"}],"tool_call_id":"c1","is_error":true,"pinned":true}
// Fields at their default are left out. Invalid UTF-8 in any text is replaced by U+FFFD.
std::string encode_message(const Message& message);
// The message encode_message wrote. Unknown fields are ignored (a later version may add
// some); a newer "v" is refused. kInvalidArgument naming what is wrong and where
// ("message JSON: content[1].type: expected \"text\" or \"image_url\", got \"audio\"").
Result<Message> decode_message(std::string_view json);

// Tokens as the provider counted them. Zero when the provider did not say.
struct Usage {
  std::int64_t input_tokens = 0;
  std::int64_t output_tokens = 0;
  friend bool operator==(const Usage&, const Usage&) = default;
};

enum class FinishReason : std::uint8_t {
  kStop,           // the model finished its answer (or hit a stop sequence)
  kLength,         // the output limit (max_output_tokens) cut it off
  kToolCalls,      // it stopped to have tools called
  kContentFilter,  // the provider withheld or cut the content (filter, refusal)
  kOther,          // anything else (raw value in ChatResponse::raw_finish_reason)
};

std::string_view to_string(FinishReason reason);

struct ChatRequest {
  std::string model;
  std::vector<Message> messages;
  std::vector<ToolDefinition> tools;
  std::optional<std::int64_t> max_output_tokens;  // unset: the provider's default (Anthropic
                                                  // requires one: the codec's default is used)
  std::optional<double> temperature;              // unset: the provider's default
  bool stream = false;                            // ask for server-sent events
};

struct ChatResponse {
  std::string id;     // the provider's response id
  std::string model;  // the model that actually answered (may differ from the one asked)
  Message message;    // role kAssistant: text and tool calls
  FinishReason finish_reason = FinishReason::kOther;
  std::string raw_finish_reason;  // as the provider spelled it ("end_turn", "stop", ...)
  Usage usage;
  // The HTTP response's header fields (request id, rate-limit state, processing time), as
  // received; empty for a model not reached over HTTP. Never holds the request's credential.
  Headers headers;
};

}  // namespace nines::llm
