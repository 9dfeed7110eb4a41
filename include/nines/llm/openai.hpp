// nines/llm/openai.hpp: the OpenAI Chat Completions wire format (POST {base_url}/chat/completions),
// as spoken by OpenAI and by the servers that copy it (vLLM, llama.cpp server, Ollama, ...).
//
// Request: messages in order (system, user, assistant with tool_calls, tool with
// tool_call_id); text-only content as a string (what every compatible server accepts),
// content with images as an array of parts; tools as {"type":"function","function":{...}}.
// A tool result with is_error gets "[tool error] " in front of its text: the API has no flag.
// Headers: content-type, accept, and "authorization: Bearer <key>" when a key is set.
//
// Response: choices[0] only (the request never asks for n > 1). Streams: `data: {chunk}`
// events, tool-call pieces joined by their index (arguments arrive in pieces), usage from the
// last chunk (stream_options.include_usage), the end at `data: [DONE]`.
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

struct OpenAiOptions {
  // Up to and including the version path: "https://api.openai.com/v1",
  // "http://127.0.0.1:8000/v1" (vLLM), "http://127.0.0.1:11434/v1" (Ollama). A trailing
  // slash is ignored. Required.
  std::string base_url = "https://api.openai.com/v1";
  // Empty: no authorization header (local servers). Never appears in errors.
  std::string api_key;
  // Sent as given, after the standard headers (e.g. OpenAI-Organization).
  Headers extra_headers;
  // Send the output limit as max_completion_tokens (OpenAI's current name, required by its
  // reasoning models) instead of max_tokens (what every compatible server understands).
  bool use_max_completion_tokens = false;
  // Streams ask for a final usage chunk (stream_options.include_usage). Turn off for a
  // server that rejects the field.
  bool stream_include_usage = true;
  // Bound on one response: text plus tool-call arguments, in bytes. A stream that goes past
  // it fails ([malformed]). Default 16 MiB.
  std::size_t max_response_bytes = std::size_t{16} << 20;
};

// kInvalidArgument if base_url is empty.
Result<std::unique_ptr<Codec>> make_openai_codec(OpenAiOptions options);

}  // namespace nines::llm
