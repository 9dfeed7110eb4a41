// nines/llm/anthropic.hpp: the Anthropic Messages wire format (POST {base_url}/v1/messages).
//
// Request: system messages go to the top-level "system" (joined by a blank line); the rest
// become alternating user/assistant turns of content blocks: consecutive messages of the same
// role are merged into one turn, tool results become tool_result blocks of a user turn (in
// order, before any text that follows them), an assistant's tool calls become tool_use
// blocks whose input is the call's arguments JSON (an object; arguments that are not a JSON
// object are sent as {}). Empty text is left out (the API refuses empty text blocks).
// max_tokens is required by the API: the request's max_output_tokens, else
// default_max_tokens. Headers: content-type, accept, x-api-key, anthropic-version.
//
// Response: text blocks joined, tool_use blocks as tool calls (input serialized to JSON
// text); other blocks (thinking, server tools) are skipped. Usage: input_tokens includes
// cache_creation_input_tokens and cache_read_input_tokens (the whole prompt, as OpenAI
// counts it). Streams: message_start, content_block_start/delta/stop (text_delta,
// input_json_delta pieces joined), message_delta (stop reason, usage), ping, error, and the
// end at message_stop; unknown event and delta types are skipped, as the API asks.
//
// See codec.hpp for the contract shared with the other providers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "nines/core/result.hpp"
#include "nines/llm/codec.hpp"
#include "nines/llm/errors.hpp"  // is_malformed, is_truncated_stream: reading the codec's errors
#include "nines/llm/wire.hpp"

namespace nines::llm {

struct AnthropicOptions {
  // Without the version path; "/v1/messages" is appended. A trailing slash is ignored.
  std::string base_url = "https://api.anthropic.com";
  std::string api_key;                     // sent as x-api-key; never appears in errors
  std::string version = "2023-06-01";      // anthropic-version header
  Headers extra_headers;                   // e.g. anthropic-beta; sent as given
  std::int64_t default_max_tokens = 4096;  // when the request sets no max_output_tokens
  // Bound on one response: text plus tool-call input, in bytes. Default 16 MiB.
  std::size_t max_response_bytes = std::size_t{16} << 20;
};

// kInvalidArgument if base_url or version is empty or default_max_tokens < 1.
Result<std::unique_ptr<Codec>> make_anthropic_codec(AnthropicOptions options);

}  // namespace nines::llm
