#include "nines/llm/openai.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "llm/codec_common.hpp"
#include "llm/json_util.hpp"
#include "llm/simdjson_util.hpp"

namespace nines::llm {

using internal::CodecCounters;
using internal::count;
using internal::Element;
using internal::invalid_argument;
using internal::Json;
using internal::member;
using internal::str;

namespace {

constexpr std::int64_t kMaxToolCalls = 256;  // per response; an index beyond is malformed

FinishReason finish_from(std::string_view raw) {
  if (raw == "stop") return FinishReason::kStop;
  if (raw == "length") return FinishReason::kLength;
  if (raw == "tool_calls" || raw == "function_call") return FinishReason::kToolCalls;
  if (raw == "content_filter") return FinishReason::kContentFilter;
  return FinishReason::kOther;
}

bool text_only(const Message& m) {
  return std::all_of(m.content.begin(), m.content.end(),
                     [](const ContentPart& p) { return p.type == ContentPart::Type::kText; });
}

// A message's "content": a string when it is text only (prefix + text), else an array of parts.
void write_content(std::string& out, const Message& m, std::string_view prefix = {}) {
  using internal::append_json_string;
  if (text_only(m)) {
    if (prefix.empty() && m.content.size() == 1) {
      append_json_string(out, m.content.front().text);
    } else {
      append_json_string(out, std::string(prefix) + m.text());
    }
    return;
  }
  out += '[';
  bool first = true;
  if (!prefix.empty()) {
    out += R"({"type":"text","text":)";
    append_json_string(out, prefix);
    out += '}';
    first = false;
  }
  for (const ContentPart& p : m.content) {
    if (!first) out += ',';
    first = false;
    if (p.type == ContentPart::Type::kText) {
      out += R"({"type":"text","text":)";
      append_json_string(out, p.text);
      out += '}';
    } else {
      out += R"({"type":"image_url","image_url":{"url":)";
      append_json_string(out, p.image_url);
      out += "}}";
    }
  }
  out += ']';
}

// Message `index` of a request as the API's JSON object, appended to `out`.
Status write_message(std::string& out, const Message& m, std::size_t index) {
  using internal::append_json_string;
  out += R"({"role":)";
  append_json_string(out, to_string(m.role));
  switch (m.role) {
    case Role::kSystem:
    case Role::kUser:
      out += R"(,"content":)";
      write_content(out, m);
      break;
    case Role::kAssistant: {
      out += R"(,"content":)";
      if (m.tool_calls.empty() || !m.text().empty()) {
        write_content(out, m);
      } else {
        out += "null";
      }
      if (!m.tool_calls.empty()) {
        out += R"(,"tool_calls":[)";
        for (std::size_t i = 0; i < m.tool_calls.size(); ++i) {
          const ToolCall& c = m.tool_calls[i];
          if (i > 0) out += ',';
          out += R"({"id":)";
          append_json_string(out, c.id);
          out += R"(,"type":"function","function":{"name":)";
          append_json_string(out, c.name);
          out += R"(,"arguments":)";
          append_json_string(out, c.arguments_json);
          out += "}}";
        }
        out += ']';
      }
      break;
    }
    case Role::kTool:
      if (m.tool_call_id.empty()) {
        return invalid_argument("message " + std::to_string(index) + ": a tool result without tool_call_id");
      }
      out += R"(,"tool_call_id":)";
      append_json_string(out, m.tool_call_id);
      out += R"(,"content":)";
      write_content(out, m, m.is_error ? "[tool error] " : "");
      break;
  }
  out += '}';
  return ok_status();
}

bool is_error_object(const Json& doc) {
  const Json* e = member(doc, "error");
  return (e && (e->is_object() || e->is_string())) || str(member(doc, "object")) == "error";
}

class OpenAiStream final : public internal::StreamBase<Provider::kOpenAi> {
 public:
  using StreamBase::StreamBase;

  Result<StreamDelta> on_event(std::string_view event, std::string_view data) override {
    if (error_) return *error_;
    if (done_) return StreamDelta{};
    ++events_;
    data = internal::trim_space(data);
    if (data.empty()) return StreamDelta{};  // a keep-alive
    if (data == "[DONE]") {
      done_ = true;
      return StreamDelta{.done = true};
    }
    std::optional<Json> doc = internal::parse_json(data);
    if (!doc || !doc->is_object()) return fail_malformed("a stream event is not a JSON object");
    if (event == "error" || is_error_object(*doc)) {
      return fail(map_api_error(Provider::kOpenAi, 0, {}, data, Now{}, api_key_).error);
    }
    return apply_chunk(*doc);
  }

  Result<ChatResponse> finish() override {
    if (error_) return *error_;
    if (!done_) {
      Error e = internal::truncated_error(Provider::kOpenAi, "data: [DONE]", events_, text_.size());
      counters_->truncated.fetch_add(1, std::memory_order_relaxed);
      error_ = e;
      return e;
    }
    ChatResponse r = response_;
    r.message = Message{.role = Role::kAssistant};
    if (!text_.empty()) r.message.content.push_back(ContentPart::from_text(text_));
    for (auto& [index, call] : calls_) {
      ToolCall c = call;
      if (c.id.empty()) c.id = "call_" + std::to_string(index);
      if (c.arguments_json.empty()) c.arguments_json = "{}";
      r.message.tool_calls.push_back(std::move(c));
    }
    r.finish_reason = finish_from(r.raw_finish_reason);
    return r;
  }

  bool done() const override { return done_; }

 private:
  Result<StreamDelta> apply_chunk(const Json& chunk) {
    if (response_.id.empty()) response_.id = std::string(str(member(chunk, "id")));
    if (response_.model.empty()) response_.model = std::string(str(member(chunk, "model")));
    if (const Json* usage = member(chunk, "usage"); usage && usage->is_object()) {
      response_.usage.input_tokens = count(member(usage, "prompt_tokens"));
      response_.usage.output_tokens = count(member(usage, "completion_tokens"));
    }
    StreamDelta out;
    const Json* choices = member(chunk, "choices");
    if (choices && !choices->is_array() && !choices->is_null()) return fail_malformed("\"choices\" is not an array");
    if (!choices || !choices->is_array()) return out;
    for (const Json& choice : *choices) {
      if (!choice.is_object()) return fail_malformed("a choice is not an object");
      if (internal::integer(member(choice, "index")).value_or(0) != 0) continue;  // n > 1 is never asked
      if (const Json* delta = member(choice, "delta"); delta && delta->is_object()) {
        if (std::string_view t = str(member(delta, "content")); !t.empty()) {
          text_.append(t);
          out.text.append(t);
          bytes_ += t.size();
        }
        if (const Json* calls = member(delta, "tool_calls"); calls && calls->is_array()) {
          for (const Json& piece : *calls) {
            if (auto s = apply_tool_call_piece(piece); !s.ok()) return fail(std::move(s).error());
          }
        }
      }
      if (std::string_view f = str(member(choice, "finish_reason")); !f.empty()) response_.raw_finish_reason = f;
    }
    if (bytes_ > max_bytes_) return fail_malformed("the response exceeds max_response_bytes");
    return out;
  }

  // One piece of a tool call: the first names it (index, id, name), the following ones add
  // pieces of its arguments. Servers that send a whole call at once fit the same path.
  Status apply_tool_call_piece(const Json& piece) {
    if (!piece.is_object()) return malformed("a tool call piece is not an object");
    std::optional<std::int64_t> index = internal::integer(member(piece, "index"));
    std::string_view id = str(member(piece, "id"));
    if (!index) {  // no index (some servers): the call with this id, a new one, or the last
      index = calls_.empty() ? 0 : calls_.rbegin()->first;
      if (!id.empty()) {
        auto same = std::find_if(calls_.begin(), calls_.end(), [&](const auto& kv) { return kv.second.id == id; });
        index = same != calls_.end() ? same->first : (calls_.empty() ? 0 : calls_.rbegin()->first + 1);
      }
    }
    if (*index < 0 || *index >= kMaxToolCalls) return malformed("a tool call index is out of range");
    auto [it, inserted] = calls_.try_emplace(*index);
    ToolCall& call = it->second;
    if (inserted) call.arguments_json.clear();  // filled from the pieces
    if (call.id.empty() && !id.empty()) call.id = id;
    const Json* fn = member(piece, "function");
    if (std::string_view name = str(member(fn, "name")); !name.empty() && call.name.empty()) call.name = name;
    const Json* args = member(fn, "arguments");
    if (args && args->is_string()) {
      const auto& a = args->get_ref<const std::string&>();
      call.arguments_json.append(a);
      bytes_ += a.size();
    } else if (args && args->is_object()) {
      std::string a = internal::dump_json(*args);
      call.arguments_json.append(a);
      bytes_ += a.size();
    }
    return ok_status();
  }

  ChatResponse response_;
  std::string text_;
  std::map<std::int64_t, ToolCall> calls_;  // by the stream's index
  std::size_t bytes_ = 0;
  std::size_t events_ = 0;
  bool done_ = false;
};

class OpenAiCodec final : public internal::CodecBase<OpenAiOptions, OpenAiStream, Provider::kOpenAi> {
 public:
  using CodecBase::CodecBase;

  // The body is written directly (no document first): it is built once per call.
  Result<HttpCall> build_call(const ChatRequest& request) const override {
    using internal::append_json_number;
    using internal::append_json_string;
    if (request.model.empty()) return invalid_argument("openai: the request names no model");
    if (request.messages.empty()) return invalid_argument("openai: the request has no messages");
    std::string body;
    body.reserve(256);
    body += R"({"model":)";
    append_json_string(body, request.model);
    body += R"(,"messages":[)";
    for (std::size_t i = 0; i < request.messages.size(); ++i) {
      if (i > 0) body += ',';
      if (Status s = write_message(body, request.messages[i], i); !s.ok()) return std::move(s).error();
    }
    body += ']';
    if (!request.tools.empty()) {
      body += R"(,"tools":[)";
      for (std::size_t i = 0; i < request.tools.size(); ++i) {
        const ToolDefinition& t = request.tools[i];
        if (t.name.empty()) return invalid_argument("openai: a tool has no name");
        std::optional<std::string> schema;
        internal::with_parsed_json(t.parameters_schema_json, [&](Element e) {
          if (e.is_object()) schema = internal::minified(e);
        });
        if (!schema) {
          return invalid_argument("openai: tool '" + t.name + "': parameters_schema_json is not a JSON object");
        }
        if (i > 0) body += ',';
        body += R"({"type":"function","function":{"name":)";
        append_json_string(body, t.name);
        if (!t.description.empty()) {
          body += R"(,"description":)";
          append_json_string(body, t.description);
        }
        body += R"(,"parameters":)";
        body += *schema;
        body += "}}";
      }
      body += ']';
    }
    if (request.max_output_tokens) {
      body += options_.use_max_completion_tokens ? R"(,"max_completion_tokens":)" : R"(,"max_tokens":)";
      append_json_number(body, static_cast<std::int64_t>(*request.max_output_tokens));
    }
    if (request.temperature) {
      body += R"(,"temperature":)";
      append_json_number(body, static_cast<double>(*request.temperature));
    }
    if (request.stream) {
      body += R"(,"stream":true)";
      if (options_.stream_include_usage) body += R"(,"stream_options":{"include_usage":true})";
    }
    body += '}';

    HttpCall call{.url = options_.base_url + "/chat/completions", .stream = request.stream};
    call.headers.push_back({"content-type", "application/json"});
    call.headers.push_back({"accept", request.stream ? "text/event-stream" : "application/json"});
    if (!options_.api_key.empty()) call.headers.push_back({"authorization", "Bearer " + options_.api_key});
    call.headers.insert(call.headers.end(), options_.extra_headers.begin(), options_.extra_headers.end());
    call.body = std::move(body);
    return call;
  }

  // simdjson's DOM (simdjson_util.hpp): a call's answer is parsed once per call, on the hot path.
  Result<ChatResponse> parse_response(std::string_view body) const override {
    std::optional<Result<ChatResponse>> out;
    bool error_object = false;
    const bool parsed = internal::with_parsed_json(body, [&](Element doc) {
      if (doc.type() != simdjson::dom::element_type::OBJECT) return;
      out = read_response(doc, error_object);
    });
    if (!parsed || (!out && !error_object)) return malformed("the response body is not a JSON object");
    if (error_object) return map_api_error(Provider::kOpenAi, 0, {}, body, Now{}, options_.api_key).error;
    return std::move(*out);
  }

 private:
  // A tool call from a non-streaming message.
  static ToolCall tool_call_from(Element c, std::size_t index) {
    ToolCall call;
    call.id = std::string(internal::str(member(c, "id")));
    if (call.id.empty()) call.id = "call_" + std::to_string(index);
    const std::optional<Element> fn = member(c, "function");
    call.name = std::string(internal::str(member(fn, "name")));
    const std::optional<Element> args = member(fn, "arguments");
    if (args && args->is_string()) {
      call.arguments_json = std::string(internal::str(args));
    } else if (args && args->is_object()) {  // some servers send the object itself
      call.arguments_json = internal::minified(*args);
    }
    if (call.arguments_json.empty()) call.arguments_json = "{}";
    return call;
  }

  // Text of a "content" that is a string, null, or an array of text parts.
  static std::string text_of(const std::optional<Element>& content) {
    if (!content) return {};
    if (content->is_string()) return std::string(internal::str(content));
    std::string out;
    simdjson::dom::array parts;
    if (content->get(parts) == simdjson::SUCCESS) {
      for (Element part : parts) out += internal::str(member(part, "text"));
    }
    return out;
  }

  static bool is_error_object(Element doc) {
    const std::optional<Element> e = member(doc, "error");
    return (e && (e->is_object() || e->is_string())) || internal::str(member(doc, "object")) == "error";
  }

  // The response from its parsed document (an object); sets error_object instead when the
  // body is an API error object without choices.
  Result<ChatResponse> read_response(Element doc, bool& error_object) const {
    const std::optional<Element> choices = member(doc, "choices");
    if (!choices && is_error_object(doc)) {
      error_object = true;
      return Error(ErrorKind::kInternal, "an error object");  // replaced by the caller
    }
    simdjson::dom::array choice_list;
    if (!choices || choices->get(choice_list) != simdjson::SUCCESS || choice_list.size() == 0) {
      return malformed("the response has no choices");
    }
    const Element choice = *choice_list.begin();
    const std::optional<Element> message = member(choice, "message");
    if (!message || !message->is_object()) return malformed("choices[0] has no message object");
    const std::optional<Element> content = member(message, "content");
    if (content && !content->is_string() && !content->is_null() && !content->is_array()) {
      return malformed("choices[0].message.content is not a string");
    }

    ChatResponse r;
    r.id = std::string(internal::str(member(doc, "id")));
    r.model = std::string(internal::str(member(doc, "model")));
    r.message.role = Role::kAssistant;
    std::string text = text_of(content);
    if (text.empty()) text = std::string(internal::str(member(message, "refusal")));
    if (!text.empty()) r.message.content.push_back(ContentPart::from_text(std::move(text)));
    if (const std::optional<Element> calls = member(message, "tool_calls"); calls && calls->is_array()) {
      std::size_t i = 0;
      for (Element c : simdjson::dom::array(*calls)) {
        if (!c.is_object()) return malformed("a tool call is not an object");
        r.message.tool_calls.push_back(tool_call_from(c, i++));
      }
    } else if (calls && !calls->is_null()) {
      return malformed("choices[0].message.tool_calls is not an array");
    }
    r.raw_finish_reason = std::string(internal::str(member(choice, "finish_reason")));
    r.finish_reason = finish_from(r.raw_finish_reason);
    const std::optional<Element> usage = member(doc, "usage");
    r.usage.input_tokens = internal::count(member(usage, "prompt_tokens"));
    r.usage.output_tokens = internal::count(member(usage, "completion_tokens"));
    return r;
  }
};

}  // namespace

Result<std::unique_ptr<Codec>> make_openai_codec(OpenAiOptions options) {
  if (internal::trim_slashes(options.base_url).empty()) return invalid_argument("openai: base_url is empty");
  return std::unique_ptr<Codec>(std::make_unique<OpenAiCodec>(std::move(options)));
}

}  // namespace nines::llm
