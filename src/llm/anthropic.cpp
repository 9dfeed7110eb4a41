#include "nines/llm/anthropic.hpp"

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "llm/codec_common.hpp"
#include "llm/json_util.hpp"

namespace nines::llm {

using internal::CodecCounters;
using internal::count;
using internal::invalid_argument;
using internal::Json;
using internal::member;
using internal::str;

namespace {

constexpr std::int64_t kMaxBlocks = 1024;  // content blocks per response; an index beyond is malformed

FinishReason finish_from(std::string_view raw) {
  if (raw == "end_turn" || raw == "stop_sequence") return FinishReason::kStop;
  if (raw == "max_tokens" || raw == "model_context_window_exceeded") return FinishReason::kLength;
  if (raw == "tool_use") return FinishReason::kToolCalls;
  if (raw == "refusal") return FinishReason::kContentFilter;
  return FinishReason::kOther;  // pause_turn, and whatever comes next
}

// "data:image/png;base64,AAAA" -> base64 source; anything else -> url source.
Json image_block(const std::string& url) {
  constexpr std::string_view kData = "data:";
  constexpr std::string_view kBase64 = ";base64,";
  if (url.compare(0, kData.size(), kData) == 0) {
    std::size_t b = url.find(kBase64);
    if (b != std::string::npos) {
      return {{"type", "image"},
              {"source",
               {{"type", "base64"},
                {"media_type", url.substr(kData.size(), b - kData.size())},
                {"data", url.substr(b + kBase64.size())}}}};
    }
  }
  return {{"type", "image"}, {"source", {{"type", "url"}, {"url", url}}}};
}

void append_parts(Json& blocks, const std::vector<ContentPart>& parts) {
  for (const ContentPart& p : parts) {
    if (p.type == ContentPart::Type::kText) {
      if (!p.text.empty()) blocks.push_back({{"type", "text"}, {"text", p.text}});
    } else {
      blocks.push_back(image_block(p.image_url));
    }
  }
}

// The tool_use input: the arguments if they are a JSON object, else {} (the API requires an
// object; a model's invalid arguments stay visible in the tool result that answered them).
Json tool_input(const std::string& arguments_json) {
  std::optional<Json> args = internal::parse_json(arguments_json);
  if (args && args->is_object()) return std::move(*args);
  return Json::object();
}

// One turn's content blocks for a message (not a system message).
Result<Json> blocks_for(const Message& m, std::size_t index) {
  Json blocks = Json::array();
  switch (m.role) {
    case Role::kUser: append_parts(blocks, m.content); break;
    case Role::kAssistant:
      append_parts(blocks, m.content);
      for (const ToolCall& c : m.tool_calls) {
        blocks.push_back(
            {{"type", "tool_use"}, {"id", c.id}, {"name", c.name}, {"input", tool_input(c.arguments_json)}});
      }
      break;
    case Role::kTool: {
      if (m.tool_call_id.empty()) {
        return invalid_argument("anthropic: message " + std::to_string(index) + ": a tool result without tool_call_id");
      }
      Json result = {{"type", "tool_result"}, {"tool_use_id", m.tool_call_id}};
      Json content = Json::array();
      append_parts(content, m.content);
      if (!content.empty()) result["content"] = std::move(content);
      if (m.is_error) result["is_error"] = true;
      blocks.push_back(std::move(result));
      break;
    }
    case Role::kSystem: break;
  }
  return blocks;
}

struct Block {
  enum class Kind { kText, kToolUse, kOther } kind = Kind::kOther;
  std::string text;  // kText: the text; kToolUse: the input JSON pieces
  ToolCall call;     // kToolUse: id and name
  bool stopped = false;
};

class AnthropicStream final : public internal::StreamBase<Provider::kAnthropic> {
 public:
  using StreamBase::StreamBase;

  Result<StreamDelta> on_event(std::string_view event, std::string_view data) override {
    if (error_) return *error_;
    if (done_) return StreamDelta{};
    ++events_;
    data = internal::trim_space(data);
    if (data.empty()) return StreamDelta{};
    std::optional<Json> doc = internal::parse_json(data);
    if (!doc || !doc->is_object()) return fail_malformed("a stream event is not a JSON object");
    std::string_view type = str(member(*doc, "type"));
    if (type.empty()) type = event;  // the data names its type; the event line is a copy

    if (type == "ping") return StreamDelta{};
    if (type == "error") return fail(map_api_error(Provider::kAnthropic, 0, {}, data, Now{}, api_key_).error);
    if (type == "message_start") return on_message_start(*doc);
    if (!started_) {
      if (type == "message_stop" || type == "message_delta" || type.rfind("content_block_", 0) == 0) {
        return fail_malformed("'" + std::string(type) + "' before message_start");
      }
      return StreamDelta{};
    }
    if (type == "content_block_start") return on_block_start(*doc);
    if (type == "content_block_delta") return on_block_delta(*doc);
    if (type == "content_block_stop") {
      Block* b = block_at(*doc);
      if (!b) return fail_malformed("content_block_stop for an unknown block");
      b->stopped = true;
      return StreamDelta{};
    }
    if (type == "message_delta") {
      const Json* delta = member(*doc, "delta");
      if (std::string_view stop = str(member(delta, "stop_reason")); !stop.empty()) response_.raw_finish_reason = stop;
      read_usage(member(*doc, "usage"));
      return StreamDelta{};
    }
    if (type == "message_stop") {
      done_ = true;
      return StreamDelta{.done = true};
    }
    return StreamDelta{};  // an event type added after this was written: skipped, as the API asks
  }

  Result<ChatResponse> finish() override {
    if (error_) return *error_;
    if (!done_) {
      Error e = internal::truncated_error(Provider::kAnthropic, "message_stop", events_, text_bytes_);
      counters_->truncated.fetch_add(1, std::memory_order_relaxed);
      error_ = e;
      return e;
    }
    ChatResponse r = response_;
    r.message = Message{.role = Role::kAssistant};
    std::string text;
    for (auto& [index, b] : blocks_) {
      if (b.kind == Block::Kind::kText) text += b.text;
      if (b.kind == Block::Kind::kToolUse) {
        ToolCall c = b.call;
        c.arguments_json = b.text.empty() ? c.arguments_json : b.text;
        if (c.arguments_json.empty()) c.arguments_json = "{}";
        r.message.tool_calls.push_back(std::move(c));
      }
    }
    if (!text.empty()) r.message.content.push_back(ContentPart::from_text(std::move(text)));
    r.finish_reason = finish_from(r.raw_finish_reason);
    return r;
  }

  bool done() const override { return done_; }

 private:
  Result<StreamDelta> on_message_start(const Json& doc) {
    if (started_) return fail_malformed("a second message_start");
    const Json* message = member(doc, "message");
    if (!message || !message->is_object()) return fail_malformed("message_start without a message object");
    started_ = true;
    response_.id = std::string(str(member(message, "id")));
    response_.model = std::string(str(member(message, "model")));
    read_usage(member(message, "usage"));
    return StreamDelta{};
  }

  Result<StreamDelta> on_block_start(const Json& doc) {
    std::optional<std::int64_t> index = internal::integer(member(doc, "index"));
    const Json* cb = member(doc, "content_block");
    if (!index || *index < 0 || *index >= kMaxBlocks || !cb || !cb->is_object()) {
      return fail_malformed("content_block_start without a valid index and content_block");
    }
    if (blocks_.count(*index)) return fail_malformed("content_block_start for a block already started");
    Block& b = blocks_[*index];
    StreamDelta out;
    std::string_view type = str(member(cb, "type"));
    if (type == "text") {
      b.kind = Block::Kind::kText;
      b.text = str(member(cb, "text"));  // normally empty
      out.text = b.text;
      text_bytes_ += b.text.size();
    } else if (type == "tool_use") {
      b.kind = Block::Kind::kToolUse;
      b.call.id = std::string(str(member(cb, "id")));
      b.call.name = std::string(str(member(cb, "name")));
      // The input arrives in input_json_delta pieces; a non-empty start input is kept in
      // case no piece follows.
      const Json* input = member(cb, "input");
      b.call.arguments_json = input && input->is_object() && !input->empty() ? internal::dump_json(*input) : "";
    }
    return grow(out, b.text.size());
  }

  Result<StreamDelta> on_block_delta(const Json& doc) {
    Block* b = block_at(doc);
    if (!b) return fail_malformed("content_block_delta for an unknown block");
    if (b->stopped) return fail_malformed("content_block_delta after content_block_stop");
    const Json* delta = member(doc, "delta");
    std::string_view type = str(member(delta, "type"));
    StreamDelta out;
    if (type == "text_delta") {
      if (b->kind != Block::Kind::kText) return fail_malformed("text_delta for a block that is not text");
      std::string_view t = str(member(delta, "text"));
      b->text.append(t);
      out.text = t;
      text_bytes_ += t.size();
      return grow(out, t.size());
    }
    if (type == "input_json_delta") {
      if (b->kind != Block::Kind::kToolUse) return fail_malformed("input_json_delta for a block that is not tool_use");
      std::string_view piece = str(member(delta, "partial_json"));
      b->text.append(piece);
      return grow(out, piece.size());
    }
    return out;  // thinking_delta, signature_delta, citations_delta, ...: not collected
  }

  Block* block_at(const Json& doc) {
    std::optional<std::int64_t> index = internal::integer(member(doc, "index"));
    if (!index) return nullptr;
    auto it = blocks_.find(*index);
    return it == blocks_.end() ? nullptr : &it->second;
  }

  void read_usage(const Json* usage) {
    if (!usage || !usage->is_object()) return;
    // Counts are cumulative; message_delta repeats only some of them.
    if (member(usage, "input_tokens") || member(usage, "cache_creation_input_tokens") ||
        member(usage, "cache_read_input_tokens")) {
      std::int64_t in = count(member(usage, "input_tokens")) + count(member(usage, "cache_creation_input_tokens")) +
                        count(member(usage, "cache_read_input_tokens"));
      if (in > 0) response_.usage.input_tokens = in;
    }
    if (const Json* out = member(usage, "output_tokens")) response_.usage.output_tokens = count(out);
  }

  Result<StreamDelta> grow(StreamDelta out, std::size_t added) {
    bytes_ += added;
    if (bytes_ > max_bytes_) return fail_malformed("the response exceeds max_response_bytes");
    return out;
  }

  ChatResponse response_;
  std::map<std::int64_t, Block> blocks_;  // by the stream's index
  std::size_t bytes_ = 0;
  std::size_t text_bytes_ = 0;
  std::size_t events_ = 0;
  bool started_ = false;
  bool done_ = false;
};

class AnthropicCodec final : public internal::CodecBase<AnthropicOptions, AnthropicStream, Provider::kAnthropic> {
 public:
  using CodecBase::CodecBase;

  Result<HttpCall> build_call(const ChatRequest& request) const override {
    if (request.model.empty()) return invalid_argument("anthropic: the request names no model");
    if (request.messages.empty()) return invalid_argument("anthropic: the request has no messages");
    std::string system;
    Json messages = Json::array();
    std::optional<Role> last_role;  // kUser or kAssistant (a tool result is a user turn)
    for (std::size_t i = 0; i < request.messages.size(); ++i) {
      const Message& m = request.messages[i];
      if (m.role == Role::kSystem) {
        if (!system.empty()) system += "\n\n";
        system += m.text();
        continue;
      }
      Result<Json> blocks = blocks_for(m, i);
      if (!blocks.ok()) return std::move(blocks).error();
      if (blocks->empty()) continue;
      const Role turn = m.role == Role::kAssistant ? Role::kAssistant : Role::kUser;
      if (last_role == turn) {
        Json& content = messages.back()["content"];
        for (Json& b : *blocks) content.push_back(std::move(b));
      } else {
        messages.push_back({{"role", turn == Role::kUser ? "user" : "assistant"}, {"content", std::move(*blocks)}});
        last_role = turn;
      }
    }
    if (messages.empty()) return invalid_argument("anthropic: the request has no user or assistant content");

    Json body = {{"model", request.model},
                 {"max_tokens", request.max_output_tokens.value_or(options_.default_max_tokens)},
                 {"messages", std::move(messages)}};
    if (!system.empty()) body["system"] = system;
    if (!request.tools.empty()) {
      Json tools = Json::array();
      for (const ToolDefinition& t : request.tools) {
        if (t.name.empty()) return invalid_argument("anthropic: a tool has no name");
        std::optional<Json> schema = internal::parse_json(t.parameters_schema_json);
        if (!schema || !schema->is_object()) {
          return invalid_argument("anthropic: tool '" + t.name + "': parameters_schema_json is not a JSON object");
        }
        Json tool = {{"name", t.name}, {"input_schema", std::move(*schema)}};
        if (!t.description.empty()) tool["description"] = t.description;
        tools.push_back(std::move(tool));
      }
      body["tools"] = std::move(tools);
    }
    if (request.temperature) body["temperature"] = *request.temperature;
    if (request.stream) body["stream"] = true;

    HttpCall call{.url = options_.base_url + "/v1/messages", .stream = request.stream};
    call.headers.push_back({"content-type", "application/json"});
    call.headers.push_back({"accept", request.stream ? "text/event-stream" : "application/json"});
    if (!options_.api_key.empty()) call.headers.push_back({"x-api-key", options_.api_key});
    call.headers.push_back({"anthropic-version", options_.version});
    call.headers.insert(call.headers.end(), options_.extra_headers.begin(), options_.extra_headers.end());
    call.body = internal::dump_json(body);
    return call;
  }

  Result<ChatResponse> parse_response(std::string_view body) const override {
    std::optional<Json> doc = internal::parse_json(body);
    if (!doc || !doc->is_object()) return malformed("the response body is not a JSON object");
    std::string_view type = str(member(*doc, "type"));
    if (type == "error" || (type.empty() && member(*doc, "error"))) {
      return map_api_error(Provider::kAnthropic, 0, {}, body, Now{}, options_.api_key).error;
    }
    const Json* content = member(*doc, "content");
    if (type != "message" || !content || !content->is_array())
      return malformed("the response is not a message with content");

    ChatResponse r;
    r.id = std::string(str(member(*doc, "id")));
    r.model = std::string(str(member(*doc, "model")));
    r.message.role = Role::kAssistant;
    std::string text;
    for (const Json& block : *content) {
      if (!block.is_object()) return malformed("a content block is not an object");
      std::string_view bt = str(member(block, "type"));
      if (bt == "text") {
        text += str(member(block, "text"));
      } else if (bt == "tool_use") {
        const Json* input = member(block, "input");
        r.message.tool_calls.push_back({.id = std::string(str(member(block, "id"))),
                                        .name = std::string(str(member(block, "name"))),
                                        .arguments_json = input ? internal::dump_json(*input) : "{}"});
      }
    }
    if (!text.empty()) r.message.content.push_back(ContentPart::from_text(std::move(text)));
    r.raw_finish_reason = std::string(str(member(*doc, "stop_reason")));
    r.finish_reason = finish_from(r.raw_finish_reason);
    const Json* usage = member(*doc, "usage");
    r.usage.input_tokens = count(member(usage, "input_tokens")) + count(member(usage, "cache_creation_input_tokens")) +
                           count(member(usage, "cache_read_input_tokens"));
    r.usage.output_tokens = count(member(usage, "output_tokens"));
    return r;
  }
};

}  // namespace

Result<std::unique_ptr<Codec>> make_anthropic_codec(AnthropicOptions options) {
  if (internal::trim_slashes(options.base_url).empty()) return invalid_argument("anthropic: base_url is empty");
  if (options.version.empty()) return invalid_argument("anthropic: version is empty");
  if (options.default_max_tokens < 1) return invalid_argument("anthropic: default_max_tokens must be at least 1");
  return std::unique_ptr<Codec>(std::make_unique<AnthropicCodec>(std::move(options)));
}

}  // namespace nines::llm
