// nines/llm/sim.hpp: `sim`, a deterministic simulated model with seeded fault injection.
//
// sim follows a scenario (which tools to call with which arguments, then which answer) and
// injects the failures real model APIs have (429 with a retry time, 500, 503, 529, hangs,
// latency, streams cut mid-answer, malformed JSON, hallucinated tool names, invalid tool
// arguments, repeated calls, context overflow) with configured, seeded probabilities. The
// config format, every fault and what a client sees: docs/sim.md.
//
// It runs two ways with the same bytes:
//  - In-process: SimChatModel (a ChatModel) renders each decision as the OpenAI-compatible
//    HTTP reply and reads it back through the OpenAI codec, sleeping the latencies on the
//    process's clock (the virtual clock in tests).
//  - Over HTTP: SimModel::handle_http(method, target, body) turns a request into a
//    SimHttpReply (status, headers, body or SSE chunks with delays, and whether to cut or
//    hang) that an HTTP server plays back on loopback, so tests, benchmarks and the demo
//    exercise the real HTTP client path.
//
//   auto sim = llm::SimModel::from_json(R"({"seed": 7, "scenario": [...],
//                                           "faults": {"rate_limited": {"probability": 0.1}}})").value();
//   llm::SimChatModel model(sim);                    // in-process
//   SimHttpReply r = sim->handle_http("POST", "/v1/chat/completions", body);   // server side
//
// Determinism: the scenario turn of a request is the number of assistant messages already
// in it (see SimModel::decide), and faults are drawn from a PRNG keyed by (seed, a
// fingerprint of the request (or, with fault_key kPosition, of its logical position: first
// user message, assistant turns, tool results), how many times that key was seen before), so the same
// sequence of requests gets the same faults whatever the thread interleaving, and an
// identical retry draws again (it may succeed). Only the `schedule` counts calls globally.
//
// Ownership and thread-safety: a SimModel is shared (std::shared_ptr) by any number of
// threads and SimChatModels; its config is immutable, its counters are atomics and its
// per-fingerprint table is sharded under mutexes and bounded (max_tracked_requests).
// parse_sim_config, parse_openai_chat_request and render_openai are pure functions.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/llm/codec.hpp"
#include "nines/llm/message.hpp"
#include "nines/llm/model.hpp"
#include "nines/llm/wire.hpp"

namespace nines::llm {

// ---- configuration -----------------------------------------------------------------------

// The faults sim injects. The config names them by to_string ("rate_limited", ...).
enum class SimFault : std::uint8_t {
  kNone,              // no fault (the schedule's "none" forces a normal answer)
  kRateLimited,       // 429, retry-after-ms + retry-after headers, OpenAI rate-limit body
  kServerError,       // 500, OpenAI server_error body
  kUnavailable,       // 503
  kOverloaded,        // 529 (Anthropic's overloaded status, as some proxies pass it on)
  kTimeout,           // no answer at all for hang_ms
  kCutStream,         // a stream cut after some chunks, before data: [DONE] (streams only)
  kMalformedJson,     // 200 whose body (or one stream event) is not the expected JSON
  kHallucinatedTool,  // a call to a tool that is not among the request's tools
  kInvalidToolArgs,   // arguments that are not JSON or violate the tool's schema
  kLoop,              // the previous assistant turn's tool calls again, exactly
  kContextOverflow,   // 400 context_length_exceeded (also fired, always, by the window)
};
inline constexpr std::size_t kSimFaultCount = 12;  // including kNone

std::string_view to_string(SimFault fault);
// The fault named `name` ("none", "rate_limited", ...), if any.
std::optional<SimFault> sim_fault_from_string(std::string_view name);

// A latency distribution, in milliseconds.
struct SimLatency {
  enum class Distribution : std::uint8_t { kFixed, kUniform, kLogNormal };
  Distribution distribution = Distribution::kFixed;
  double ms = 0;         // kFixed
  double min_ms = 0;     // kUniform: [min_ms, max_ms]
  double max_ms = 0;     // kUniform: upper bound; kLogNormal: cap (0: kMaxLatencyMs)
  double median_ms = 0;  // kLogNormal: exp(mu)
  double sigma = 0;      // kLogNormal: standard deviation of the log, in [0, 10]
};
inline constexpr double kMaxLatencyMs = 3'600'000;  // one hour: the bound on any one delay

// One scripted turn: tool calls (when tool_calls is not empty) or a final answer.
struct SimToolCallSpec {
  std::string name;
  std::string arguments_json = "{}";  // JSON text (the config gives a JSON value)
};
struct SimTurn {
  std::vector<SimToolCallSpec> tool_calls;
  std::string answer;  // when tool_calls is empty
};

// What a request past the scenario's last turn gets.
enum class SimAfterLastTurn : std::uint8_t {
  kRepeatFinal,  // the last final answer of the scenario (default)
  kRepeatLast,   // the last turn, whatever it is (tool calls again: a scripted loop)
  kError,        // 400 invalid_request_error, code "sim_scenario_exhausted"
};

// How invalid_tool_args breaks the arguments.
enum class SimArgsBreak : std::uint8_t {
  kSyntax,  // not valid JSON (cut before its end)
  kSchema,  // valid JSON that violates the tool's schema (a required property missing, a
            // property of the wrong type, or not an object); syntax when the tool's schema is
            // not known
  kEither,  // drawn per call (default)
};

// What keys the draws (fault, latency, ...) of a call, with the number of earlier calls that
// had the same key (so a retry draws anew).
enum class SimFaultKey : std::uint8_t {
  kRequest,   // a fingerprint of the whole request: model, messages, tools, max_tokens, stream
              // (default): byte-level differences give other draws
  kPosition,  // the request's logical position in its task: the first user message's text
              // and the numbers of assistant messages and tool results so far. Two clients
              // that serialize the same conversation differently (tool schemas, error texts,
              // ids) get the same draws at the same point of the same task.
};

struct SimFaults {
  // By SimFault; probability[kNone] is unused. Each call gets at most one fault, so the
  // probabilities add up to at most 1.
  std::array<double, kSimFaultCount> probability{};
  std::int64_t retry_after_ms = 1000;            // rate_limited: the retry time announced
  std::int64_t hang_ms = 120'000;                // timeout: how long no answer comes
  std::optional<std::int64_t> cut_after_chunks;  // cut_stream: SSE events sent before the cut
  double cut_after_fraction = 0.5;               // cut_stream, when cut_after_chunks is unset
  SimArgsBreak invalid_args = SimArgsBreak::kEither;

  double& of(SimFault f) { return probability[static_cast<std::size_t>(f)]; }
  double of(SimFault f) const { return probability[static_cast<std::size_t>(f)]; }
};

struct SimScheduledFault {
  std::uint64_t call = 0;  // 1-based call number on this SimModel
  SimFault fault = SimFault::kNone;
};

struct SimConfig {
  std::uint64_t seed = 0;
  std::string model;  // the model name reported; empty: the request's
  // Empty: one turn answering kDefaultSimAnswer.
  std::vector<SimTurn> scenario;
  SimAfterLastTurn after_last_turn = SimAfterLastTurn::kRepeatFinal;
  SimFaultKey fault_key = SimFaultKey::kRequest;  // config "fault_key": "request" | "position"
  // A prompt estimate (sim_estimate_prompt_tokens) plus the request's max_output_tokens above
  // this is a context overflow, always.
  std::int64_t context_window_tokens = 128'000;
  std::int64_t tokens_per_chunk = 4;  // stream granularity: estimate tokens per SSE event
  SimLatency first_byte;              // before the status line (every outcome but a hang)
  SimLatency per_chunk;               // before each stream event after the first
  SimFaults faults;
  // Forced faults by call number (kNone forces a normal answer); they override the draw.
  std::vector<SimScheduledFault> schedule;
  // Bound on the per-fingerprint occurrence counters; beyond it the least recently seen are
  // forgotten (a forgotten request counts as new).
  std::size_t max_tracked_requests = 1u << 16;
};

inline constexpr std::string_view kDefaultSimAnswer = "This is a simulated answer.";

// Parses the JSON config (docs/sim.md). kInvalidArgument naming the field path and what is
// wrong, e.g. "sim config: faults.rate_limited: probability must be in [0, 1], got 1.5";
// unknown fields are rejected.
Result<SimConfig> parse_sim_config(std::string_view json);
// The same checks for a config built in code.
Status validate_sim_config(const SimConfig& config);

// ---- decisions -----------------------------------------------------------------------------

// The sim's token estimates (deterministic; the usage it reports). Every text, image URL,
// tool name, argument text, tool_call_id, description and schema counts ceil(bytes / 4) tokens; each
// message adds 4, each tool call 3, each tool definition 8, and the prompt 3 for the reply
// priming. The output counts its text and tool calls the same way, at least 1.
std::int64_t sim_estimate_prompt_tokens(const ChatRequest& request);
std::int64_t sim_estimate_output_tokens(const Message& message);

enum class SimOutcome : std::uint8_t {
  kResponse,   // a normal 200 answer (possibly carrying a tool-call fault)
  kError,      // an error status with headers and body
  kHang,       // nothing for `hang`, then the connection is dropped
  kMalformed,  // 200 with a body (or one stream event) that is not the expected JSON
  kCutStream,  // a stream cut before its end
};

struct SimPlan {
  std::uint64_t call = 0;         // 1-based call number on the SimModel
  std::uint64_t fingerprint = 0;  // the draw key: of the request, or of its position (fault_key)
  std::uint64_t occurrence = 0;   // times this key was seen before
  std::size_t turn = 0;           // scenario turn (may be past the end)
  std::int64_t prompt_tokens = 0;
  SimFault fault = SimFault::kNone;
  std::string fault_detail;  // what the fault did, e.g. "tool 'get_weather': required property
                             // 'location' left out"
  SimOutcome outcome = SimOutcome::kResponse;
  Duration first_byte_delay{0};

  // kResponse, kMalformed, kCutStream: the answer (usage = the sim's estimates).
  ChatResponse response;
  std::int64_t tokens_per_chunk = 4;
  SimLatency per_chunk;
  std::uint64_t chunk_seed = 0;  // per-chunk delays are drawn from it, in order
  // kCutStream: SSE events sent before the cut (cut_after_chunks, else the fraction of the
  // events before data: [DONE]).
  std::optional<std::int64_t> cut_after_chunks;
  double cut_after_fraction = 0.5;

  // kError
  int status = 200;
  Headers headers;
  std::string body;

  // kHang
  Duration hang{0};
};

// ---- the HTTP side -------------------------------------------------------------------------

// How a reply ends after its body or chunks.
enum class SimReplyEnd : std::uint8_t {
  kComplete,  // the response is finished normally
  kAbort,     // after the chunks, the connection is closed without finishing the response
  kHang,      // nothing is sent; after `hang` the connection is closed
};

// What the HTTP server plays back: wait first_byte_delay, send status + headers, then the
// body (!stream) or each chunk after its delay (stream, chunked encoding), then end as `end`
// says.
struct SimHttpReply {
  int status = 200;
  Headers headers;
  Duration first_byte_delay{0};
  bool stream = false;
  std::string body;                    // !stream
  std::vector<std::string> chunks;     // stream: "data: {...}\n\n" events, in order
  std::vector<Duration> chunk_delays;  // stream: before each chunk (the first is 0)
  SimReplyEnd end = SimReplyEnd::kComplete;
  Duration hang{0};  // kHang
};

// The Chat Completions request JSON (what the openai codec builds, and what the official
// SDKs and other clients send): model, messages (system/developer, user, assistant with
// tool_calls, tool; string, null or array-of-parts content), tools (function), stream,
// max_tokens / max_completion_tokens, temperature. tool_choice, stream_options and other
// sampling fields are ignored; n other than 1 is refused. A tool message whose text starts
// with "[tool error] " (the codec's mark) comes back with is_error. kInvalidArgument naming
// the field, e.g. "messages[2].tool_call_id: required for a tool message".
Result<ChatRequest> parse_openai_chat_request(std::string_view body);

// The OpenAI-compatible reply for a plan: a whole chat.completion body, or SSE chunks (a
// role chunk, content or tool-call pieces of tokens_per_chunk tokens each, a finish chunk
// carrying usage, data: [DONE]); errors as their status, headers and body. Deterministic.
SimHttpReply render_openai(const SimPlan& plan, bool stream);

// ---- the model -----------------------------------------------------------------------------

struct SimCounters {
  std::uint64_t calls = 0;                             // decide() calls
  std::array<std::uint64_t, kSimFaultCount> faults{};  // by SimFault; [kNone]: calls without
  std::uint64_t scenario_exhausted = 0;                // after_last_turn: error replies
  std::uint64_t bad_requests = 0;                      // handle_http: 400, 404, 405
  std::uint64_t of(SimFault f) const { return faults[static_cast<std::size_t>(f)]; }
};

class SimModel {
 public:
  // kInvalidArgument for a config that validate_sim_config refuses.
  static Result<std::shared_ptr<SimModel>> create(SimConfig config);
  static Result<std::shared_ptr<SimModel>> from_json(std::string_view json);

  const SimConfig& config() const { return config_; }

  // Decides one call. The scenario turn is the number of assistant messages in the request,
  // not counting those whose tool calls the sim injected as faults (ids "call_simfault_..."),
  // so an agent that answers an injected call with a tool error gets the intended turn again.
  // Order: a prompt over context_window_tokens is a context overflow (always); else a
  // scheduled fault for this call number; else one drawn by probability. A fault that does
  // not apply (cut_stream on a non-stream, loop without an earlier tool call, invalid_tool_args
  // without any tool call to break) is skipped: the call answers normally.
  SimPlan decide(const ChatRequest& request);

  // The whole server side: POST /v1/chat/completions (or /chat/completions) -> the decided
  // reply; GET /v1/models (or /models) -> the model list; 405 (with allow) for another method
  // on those; 404 for any other path; 400 with an OpenAI error body for a request that
  // parse_openai_chat_request refuses. A query string is ignored.
  SimHttpReply handle_http(std::string_view method, std::string_view target, std::string_view body);

  SimCounters counters() const;

  ~SimModel();

 private:
  struct Tracker;
  explicit SimModel(SimConfig config);
  std::uint64_t occurrence_of(std::uint64_t fingerprint);

  SimConfig config_;
  std::unique_ptr<Tracker> tracker_;
  std::atomic<std::uint64_t> calls_{0};
  std::array<std::atomic<std::uint64_t>, kSimFaultCount> fault_counts_{};
  std::atomic<std::uint64_t> exhausted_{0};
  std::atomic<std::uint64_t> bad_requests_{0};
};

// The in-process model: each call goes through the openai codec's build_call, handle_http,
// and back through the codec (parse_response, or start_stream + on_event per SSE event,
// or map_error), so its results are those a ModelClient gets from the sim over HTTP:
// kRateLimited with retry_at, kTransient for 500/503/529, kContextOverflow, is_malformed,
// is_truncated_stream, ... The delays are slept with ctx.sleep (virtual time in a
// SimEnvironment). A hang (timeout fault) sleeps hang_ms and then fails with kTimeout
// ("no response within hang_ms", what a client timeout of that length reports); when the
// process deadline comes first, the sleep ends there with kDeadlineExceeded. Over HTTP, the
// server instead drops the connection after hang_ms (kTransient), unless the client's own
// timeout (kTimeout) or deadline came first.
class SimChatModel final : public ChatModel {
 public:
  explicit SimChatModel(std::shared_ptr<SimModel> sim);

  SimModel& sim() const { return *sim_; }
  const Codec& codec() const { return *codec_; }

  Task<ChatOutcome> complete(Context& ctx, const ChatRequest& req, TextSink on_text) override;

 private:
  Task<ChatOutcome> play(Context& ctx, Result<SimHttpReply> reply, TextSink on_text);

  std::shared_ptr<SimModel> sim_;
  std::unique_ptr<Codec> codec_;
};

}  // namespace nines::llm
