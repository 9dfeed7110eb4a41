#include "nines/llm/message.hpp"

#include <utility>

namespace nines::llm {

std::string_view to_string(Role role) {
  switch (role) {
    case Role::kSystem: return "system";
    case Role::kUser: return "user";
    case Role::kAssistant: return "assistant";
    case Role::kTool: return "tool";
  }
  return "unknown";
}

std::string_view to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kToolCalls: return "tool_calls";
    case FinishReason::kContentFilter: return "content_filter";
    case FinishReason::kOther: return "other";
  }
  return "unknown";
}

Message Message::system(std::string text) {
  return Message{.role = Role::kSystem, .content = {ContentPart::from_text(std::move(text))}};
}

Message Message::user(std::string text) {
  return Message{.role = Role::kUser, .content = {ContentPart::from_text(std::move(text))}};
}

Message Message::assistant(std::string text, std::vector<ToolCall> calls) {
  Message m{.role = Role::kAssistant, .tool_calls = std::move(calls)};
  if (!text.empty()) m.content.push_back(ContentPart::from_text(std::move(text)));
  return m;
}

Message Message::tool_result(std::string call_id, std::string text, bool is_error) {
  return Message{.role = Role::kTool,
                 .content = {ContentPart::from_text(std::move(text))},
                 .tool_call_id = std::move(call_id),
                 .is_error = is_error};
}

std::string Message::text() const {
  std::string out;
  for (const ContentPart& p : content) {
    if (p.type == ContentPart::Type::kText) out += p.text;
  }
  return out;
}

}  // namespace nines::llm
