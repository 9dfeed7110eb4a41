// nines/llm/tokens.hpp: token estimation per model family, corrected by reported usage.
//
// The router skips a model whose context window cannot hold the prompt plus the reserved
// output, and the context manager (context.hpp) shortens a prompt before it is sent; both need
// a token count before the call, when no provider has counted anything yet. nines ships no
// BPE vocabulary, so the count is an estimate: one pass over the text counting character
// classes (ASCII words, long-word letters, case changes, digit groups, punctuation, whitespace
// runs, CJK, other non-ASCII), weighted by coefficients per tokenizer family. The
// coefficients were fitted against exact counts (js-tiktoken o200k_base and cl100k_base) on
// the corpus of bench/peers/tokens (prose, code, JSON tool outputs, German, Chinese,
// Japanese, emoji); bench/README.md has the error distribution. The estimate errs high: a
// model skipped or a prompt shortened a little early costs less than a 400 from the
// provider.
//
// Families (family_for_model; a name like "openai/gpt-4o" or "meta-llama/Llama-3-8b" is
// matched on the part after the last '/'; case-insensitive prefixes, first match wins):
//
//   gpt-4o, chatgpt-4o, gpt-4.1, gpt-4.5, gpt-5, gpt-oss, o1, o3, o4      kOpenAiO200k
//   gpt-4, gpt-3.5, gpt-35, text-embedding-3, text-embedding-ada          kOpenAiCl100k
//   claude                                                                kClaude
//   llama, codellama, mistral, mixtral, ministral, codestral              kLlama
//   anything else                                                         kGeneric
//
// kClaude, kLlama and kGeneric have no exact tokenizer here: they are the cl100k fit scaled
// up (Claude's tokenizer counts more than cl100k; Llama 2 and Mistral's SentencePiece
// vocabularies are smaller than cl100k; generic is the most conservative of all). The
// usage correction below makes up the rest after a few calls.
//
// Usage correction: after each call, observe(model, estimated, reported) with the estimate
// made for the request and the input tokens the provider reported. Per model a factor f
// (start 1.0) multiplies later estimates of that model:
//   raw   = estimated / f_then        (the estimate without correction; f_then: f now)
//   r     = reported / raw * (1 + headroom)
//   f    += alpha_up * (r - f)    if r > f   (under-estimates are corrected fast)
//   f    += alpha_down * (r - f)  otherwise  (over-estimates slowly)
//   f     = clamp(f, min_correction, max_correction)
// Observations with reported <= 0 (the provider did not say) or an estimate under
// min_observed_tokens (fixed overheads dominate small prompts) are ignored. At most
// max_models models are tracked; a new one beyond that evicts the least recently observed.
//
// Ownership: TokenEstimator is owned by its creator (the router usually shares it).
// Thread-safety: every member of TokenEstimator may be called from any thread (one mutex,
// taken once per call); TokenCounter and the free functions are plain values / pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nines/core/result.hpp"
#include "nines/llm/message.hpp"

namespace nines::llm {

enum class TokenizerFamily : std::uint8_t { kOpenAiO200k, kOpenAiCl100k, kClaude, kLlama, kGeneric };

std::string_view to_string(TokenizerFamily family);

// The family of a model name, by the table above.
TokenizerFamily family_for_model(std::string_view model);

// What the estimate of a text is computed from: counts by character class, one pass, no
// allocation. Exposed for the calibration tool (bench/peers/tokens) and tests.
struct TextFeatures {
  std::int64_t bytes = 0;
  std::int64_t words = 0;              // runs of letters (ASCII or 2-byte UTF-8 letters)
  std::int64_t long_word_letters = 0;  // ASCII letters beyond the 6th of each run
  std::int64_t case_changes = 0;       // lower->upper inside a run (camelCase splits)
  std::int64_t nonascii_letters = 0;   // 2-byte UTF-8 letters (Latin-1..., Greek, Cyrillic)
  std::int64_t digit_groups = 0;       // runs of digits, per 3 digits (BPE splits numbers so)
  std::int64_t punct = 0;              // ASCII punctuation characters
  std::int64_t punct_runs = 0;         // runs of them
  std::int64_t space_runs = 0;         // whitespace runs other than one ' ' (newlines, indent)
  std::int64_t cjk = 0;                // Han, CJK punctuation, fullwidth forms
  std::int64_t kana = 0;               // hiragana, katakana, Hangul syllables
  std::int64_t typography = 0;         // U+2000..206F (quotes, dashes, ZWJ), U+FE00..FE0F
  std::int64_t symbols = 0;            // other 3-byte characters (arrows, dingbats, scripts)
  std::int64_t astral = 0;             // 4-byte characters (emoji) and invalid bytes
};

TextFeatures text_features(std::string_view text);

// Per-family weights of the features (tokens per unit) and per-message overheads. Values in
// tokens.cpp, with where each came from.
struct TokenCoefficients {
  double word = 0;
  double long_word_letter = 0;
  double case_change = 0;
  double nonascii_letter = 0;
  double digit_group = 0;
  double punct = 0;
  double punct_run = 0;
  double space_run = 0;
  double cjk = 0;
  double kana = 0;
  double typography = 0;
  double symbol = 0;
  double astral = 0;
  double per_message = 0;      // role markers around each message
  double per_tool_call = 0;    // an assistant's tool call beyond its name and arguments
  double per_tool_result = 0;  // a tool result's wrapping beyond its text and call id
  double per_image = 0;        // an image part (its size is unknown here: an upper figure)
  double per_tool_definition = 0;
  double tools_preamble = 0;  // once when a request has tools (Anthropic's tool prompt)
  double reply_priming = 0;   // once per request (the assistant turn the reply starts)
};

const TokenCoefficients& coefficients_for(TokenizerFamily family);

// The uncorrected estimate (in tokens, not rounded) of a text under a family's coefficients.
double raw_text_tokens(const TokenCoefficients& c, std::string_view text);

// The estimate for one model: its family and its correction factor at the time it was made.
// A value; cheap to copy. Every count is rounded up and at least 0.
class TokenCounter {
 public:
  explicit TokenCounter(TokenizerFamily family, double correction = 1.0)
      : family_(family), c_(&coefficients_for(family)), correction_(correction) {}

  TokenizerFamily family() const { return family_; }
  double correction() const { return correction_; }

  std::int64_t text(std::string_view text) const;
  // A message: its text parts, images, tool calls (name + arguments + overhead) or the tool
  // result wrapping (call id + overhead), plus the per-message overhead.
  std::int64_t message(const Message& message) const;
  // The tool definitions of a request (names, descriptions, schemas, preamble); 0 if none.
  std::int64_t tools(const std::vector<ToolDefinition>& tools) const;
  // Tokens every request costs beyond its messages and tools.
  std::int64_t reply_priming() const;
  // A whole request: messages + tools + reply priming (one rounding, so <= the sum of the
  // parts counted separately).
  std::int64_t request(const ChatRequest& request) const;

 private:
  double raw_message(const Message& message) const;
  double raw_tools(const std::vector<ToolDefinition>& tools) const;
  std::int64_t round(double raw) const;

  TokenizerFamily family_;
  const TokenCoefficients* c_;
  double correction_;
};

struct TokenEstimatorOptions {
  double alpha_up = 0.5;        // EWMA weight of an observation above the factor, (0, 1]
  double alpha_down = 0.1;      // ... below it, (0, 1]
  double headroom = 0.05;       // the factor aims this much above reported/raw, [0, 1]
  double min_correction = 0.5;  // clamp of the factor, 0 < min <= 1 <= max
  double max_correction = 2.0;
  std::int64_t min_observed_tokens = 32;  // smaller estimates are not observed
  std::size_t max_models = 256;           // models with a factor, >= 1
  // Checked before the built-in table: model-name prefixes (case-insensitive) of deployments
  // the table cannot know ("my-azure-gpt4o" -> kOpenAiO200k). First match wins.
  std::vector<std::pair<std::string, TokenizerFamily>> family_overrides;
};

// What a provider's context-overflow error says it counted, when it says: the router feeds
// prompt_tokens to TokenEstimator::observe (the estimate was too low by definition). Read
// from the quoted provider message (errors.hpp keeps it):
//   Anthropic  "prompt is too long: 208473 tokens > 200000 maximum"
//              "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000"
//   OpenAI     "maximum context length is 128000 tokens. However, your messages resulted in
//              130412 tokens"; vLLM "... However, you requested 5000 tokens (4000 in the
//              messages, 1000 in the completion)"
// window_tokens is the model's limit as stated (0 if not stated).
struct OverflowCounts {
  std::int64_t prompt_tokens = 0;
  std::int64_t window_tokens = 0;
};
std::optional<OverflowCounts> overflow_counts(const Error& error);

class TokenEstimator {
 public:
  // kInvalidArgument naming the option out of range.
  static Result<std::unique_ptr<TokenEstimator>> create(TokenEstimatorOptions options = {});

  TokenEstimator(const TokenEstimator&) = delete;
  TokenEstimator& operator=(const TokenEstimator&) = delete;

  // The family (overrides first, then family_for_model).
  TokenizerFamily family(std::string_view model) const;
  // The model's counter with its current correction factor (1.0 if never observed).
  TokenCounter counter(std::string_view model) const;

  std::int64_t estimate_text(std::string_view model, std::string_view text) const { return counter(model).text(text); }
  std::int64_t estimate_message(std::string_view model, const Message& message) const {
    return counter(model).message(message);
  }
  std::int64_t estimate_request(const ChatRequest& request) const { return counter(request.model).request(request); }

  // Feeds back what a provider reported for a request whose estimate (with this estimator,
  // for this model) was estimated_input. See the file comment for the rule.
  void observe(std::string_view model, std::int64_t estimated_input, std::int64_t reported_input);

  // The current factor of a model (1.0 if never observed or evicted).
  double correction(std::string_view model) const;
  // Models with a factor (<= max_models).
  std::size_t tracked_models() const;

 private:
  explicit TokenEstimator(TokenEstimatorOptions options) : options_(std::move(options)) {}

  struct Entry {
    double factor = 1.0;
    std::uint64_t last_observed = 0;
  };
  TokenEstimatorOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> factors_;
  std::uint64_t observations_ = 0;
};

}  // namespace nines::llm
