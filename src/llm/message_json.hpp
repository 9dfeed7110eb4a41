// Internal: Message <-> nlohmann::json, shared by encode_message/decode_message and the
// context manager's summary records (which nest messages). Never included by a public header.
#pragma once

#include <string>
#include <string_view>

#include "llm/json_util.hpp"
#include "nines/core/result.hpp"
#include "nines/llm/message.hpp"

namespace nines::llm::internal {

inline constexpr int kMessageJsonVersion = 1;

Json message_to_json(const Message& message);

// `where` prefixes every error's location ("kept[2]": "kept[2].role: ...").
Result<Message> message_from_json(const Json& j, std::string_view where);

// Parses text as JSON for a decoder: kInvalidArgument "<what>: not JSON: <parser's reason>"
// (or nested too deep). Never throws.
Result<Json> parse_for_decode(std::string_view text, std::string_view what);

}  // namespace nines::llm::internal
