#include "nines/llm/tokens.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace nines::llm {
namespace {

// ---- the scanner ----------------------------------------------------------------------

// A letter run longer than this costs long_word_letter per further letter (BPE vocabularies
// hold most short words whole and split long ones).
constexpr std::int64_t kLongWordLetters = 6;

enum ByteClass : std::uint8_t {
  kLower,
  kUpper,
  kDigit,
  kSpace,    // ' '
  kNewline,  // '\n', '\r'
  kTab,      // '\t', '\v', '\f'
  kPunct,    // ASCII punctuation and control characters
  kLead2,
  kLead3,
  kLead4,
  kInvalid,  // continuation byte without a lead, 0xF8..0xFF
};

constexpr std::array<ByteClass, 256> make_byte_classes() {
  std::array<ByteClass, 256> t{};
  for (int b = 0; b < 256; ++b) {
    ByteClass c = kPunct;
    if (b >= 'a' && b <= 'z')
      c = kLower;
    else if (b >= 'A' && b <= 'Z')
      c = kUpper;
    else if (b >= '0' && b <= '9')
      c = kDigit;
    else if (b == ' ')
      c = kSpace;
    else if (b == '\n' || b == '\r')
      c = kNewline;
    else if (b == '\t' || b == '\v' || b == '\f')
      c = kTab;
    else if (b >= 0x80 && b <= 0xBF)
      c = kInvalid;
    else if (b >= 0xC0 && b <= 0xDF)
      c = kLead2;
    else if (b >= 0xE0 && b <= 0xEF)
      c = kLead3;
    else if (b >= 0xF0 && b <= 0xF7)
      c = kLead4;
    else if (b >= 0xF8)
      c = kInvalid;
    t[static_cast<std::size_t>(b)] = c;
  }
  return t;
}

constexpr std::array<ByteClass, 256> kByteClass = make_byte_classes();

bool is_continuation(unsigned char b) { return (b & 0xC0) == 0x80; }

enum class Run : std::uint8_t { kNone, kWord, kDigits, kPunct, kSpace };

// Han, CJK symbols and punctuation, fullwidth forms: about a token per character or more.
bool is_cjk(std::uint32_t cp) {
  return (cp >= 0x3000 && cp <= 0x303F) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x4E00 && cp <= 0x9FFF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0xFF00 && cp <= 0xFFEF);
}
// Kana and Hangul syllables: vocabularies merge common sequences of them.
bool is_kana(std::uint32_t cp) {
  return (cp >= 0x3040 && cp <= 0x30FF) || (cp >= 0x31F0 && cp <= 0x31FF) || (cp >= 0xAC00 && cp <= 0xD7AF) ||
         (cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0x3130 && cp <= 0x318F);
}

class Scanner {
 public:
  TextFeatures scan(std::string_view text) {
    f_.bytes = static_cast<std::int64_t>(text.size());
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const std::size_t n = text.size();
    std::size_t i = 0;
    while (i < n) {
      const unsigned char b = p[i];
      switch (kByteClass[b]) {
        case kLower:
          letter(false);
          ++i;
          break;
        case kUpper:
          letter(true);
          ++i;
          break;
        case kDigit:
          if (run_ != Run::kDigits) start(Run::kDigits);
          ++run_len_;
          ++i;
          break;
        case kSpace:
        case kTab:
          space(false, kByteClass[b] == kSpace);
          ++i;
          break;
        case kNewline:
          space(true, false);
          ++i;
          break;
        case kPunct:
          if (run_ != Run::kPunct) {
            start(Run::kPunct);
            ++f_.punct_runs;
          }
          ++f_.punct;
          ++i;
          break;
        case kLead2:
          if (i + 1 < n && is_continuation(p[i + 1])) {
            letter(false, false);
            ++f_.nonascii_letters;
            i += 2;
          } else {
            i = invalid(p, i, n, 2);
          }
          break;
        case kLead3:
          if (i + 2 < n && is_continuation(p[i + 1]) && is_continuation(p[i + 2])) {
            const std::uint32_t cp = ((b & 0x0Fu) << 12) | ((p[i + 1] & 0x3Fu) << 6) | (p[i + 2] & 0x3Fu);
            start(Run::kNone);
            if (is_cjk(cp))
              ++f_.cjk;
            else if (is_kana(cp))
              ++f_.kana;
            else if ((cp >= 0x2000 && cp <= 0x206F) || (cp >= 0xFE00 && cp <= 0xFE0F))
              ++f_.typography;
            else
              ++f_.symbols;
            i += 3;
          } else {
            i = invalid(p, i, n, 3);
          }
          break;
        case kLead4:
          if (i + 3 < n && is_continuation(p[i + 1]) && is_continuation(p[i + 2]) && is_continuation(p[i + 3])) {
            start(Run::kNone);
            ++f_.astral;
            i += 4;
          } else {
            i = invalid(p, i, n, 4);
          }
          break;
        case kInvalid: i = invalid(p, i, n, 1); break;
      }
    }
    start(Run::kNone);
    return f_;
  }

 private:
  void letter(bool upper, bool ascii = true) {
    if (run_ != Run::kWord) {
      start(Run::kWord);
      ++f_.words;
      prev_lower_ = false;
    }
    if (++run_len_ > kLongWordLetters && ascii) ++f_.long_word_letters;
    if (upper && prev_lower_) ++f_.case_changes;
    prev_lower_ = !upper;
  }

  // Whitespace: one ' ' joins the next word (" the" is one token), and newlines alone right
  // after punctuation join it ("{\n", ");\n"); other runs cost.
  void space(bool newline, bool plain_space) {
    if (run_ != Run::kSpace) {
      after_punct_ = run_ == Run::kPunct;
      start(Run::kSpace);
      space_plain_ = true;
      space_only_newlines_ = true;
    }
    ++run_len_;
    if (!plain_space) space_plain_ = false;
    if (!newline) space_only_newlines_ = false;
  }

  // A byte that starts no valid character, with the continuation bytes a lead byte claims
  // (at most `length` - 1): one unit, so a character cut at the end of a text costs about
  // what the whole one does. Returns the index after it.
  std::size_t invalid(const unsigned char* p, std::size_t i, std::size_t n, std::size_t length) {
    start(Run::kNone);
    ++f_.astral;
    std::size_t end = i + 1;
    while (end < n && end < i + length && is_continuation(p[end])) ++end;
    return end;
  }

  // Ends the current run (counting what it cost) and starts one of kind `next`.
  void start(Run next) {
    switch (run_) {
      case Run::kDigits: f_.digit_groups += (run_len_ + 2) / 3; break;
      case Run::kSpace: {
        const bool single_space = space_plain_ && run_len_ == 1;
        const bool newlines_after_punct = after_punct_ && space_only_newlines_;
        if (!single_space && !newlines_after_punct) ++f_.space_runs;
        break;
      }
      default: break;
    }
    run_ = next;
    run_len_ = 0;
  }

  TextFeatures f_;
  Run run_ = Run::kNone;
  std::int64_t run_len_ = 0;
  bool prev_lower_ = false;
  bool space_plain_ = true;
  bool space_only_newlines_ = false;
  bool after_punct_ = false;
};

// ---- the coefficients -------------------------------------------------------------------
//
// Text weights: fitted by bench/peers/tokens/run --fit against js-tiktoken's exact counts
// (least squares on relative error, under-estimates weighted 10x, so the fit leans high),
// rounded to two decimals. On that corpus and on held-out files the estimate is 0.96-1.4x the
// exact count (bench/README.md, "tokens"); refit when a feature or the corpus changes.
// Overheads: OpenAI's cookbook (3 tokens per message, 3 for the reply priming; function
// definitions about 7 + 12 tokens around the schema); Anthropic's tool-use system prompt
// (docs: 346 tokens with tool_choice auto on current models); Llama 3's chat template (5
// special tokens per message header and end). Images: the size is not known from a URL, so
// an upper figure of what a large image costs (Anthropic: about 1,600 tokens at 1.15
// megapixels; OpenAI high detail 2048 px: 1,105).

constexpr TokenCoefficients kO200k{
    .word = 0.97,
    .long_word_letter = 0.29,
    .case_change = 0.7,
    .nonascii_letter = 0.13,
    .digit_group = 1.85,
    .punct = 0.01,
    .punct_run = 0.83,
    .space_run = 1.36,
    .cjk = 0.74,
    .kana = 0.75,
    .typography = 1.07,
    .symbol = 2.22,
    .astral = 2.0,
    .per_message = 3,
    .per_tool_call = 12,
    .per_tool_result = 8,
    .per_image = 1600,
    .per_tool_definition = 12,
    .tools_preamble = 16,
    .reply_priming = 3,
};

constexpr TokenCoefficients kCl100k{
    .word = 0.98,
    .long_word_letter = 0.54,
    .case_change = 0.27,
    .nonascii_letter = 0.37,
    .digit_group = 1.75,
    .punct = 0.0,
    .punct_run = 0.8,
    .space_run = 1.09,
    .cjk = 1.07,
    .kana = 1.0,
    .typography = 2.98,
    .symbol = 1.57,
    .astral = 2.7,
    .per_message = 3,
    .per_tool_call = 12,
    .per_tool_result = 8,
    .per_image = 1600,
    .per_tool_definition = 12,
    .tools_preamble = 16,
    .reply_priming = 3,
};

constexpr TokenCoefficients scaled(const TokenCoefficients& c, double text_scale, double per_message,
                                   double per_tool_call, double per_tool_result, double per_tool_definition,
                                   double tools_preamble, double reply_priming) {
  return TokenCoefficients{
      .word = c.word * text_scale,
      .long_word_letter = c.long_word_letter * text_scale,
      .case_change = c.case_change * text_scale,
      .nonascii_letter = c.nonascii_letter * text_scale,
      .digit_group = c.digit_group * text_scale,
      .punct = c.punct * text_scale,
      .punct_run = c.punct_run * text_scale,
      .space_run = c.space_run * text_scale,
      .cjk = c.cjk * text_scale,
      .kana = c.kana * text_scale,
      .typography = c.typography * text_scale,
      .symbol = c.symbol * text_scale,
      .astral = c.astral * text_scale,
      .per_message = per_message,
      .per_tool_call = per_tool_call,
      .per_tool_result = per_tool_result,
      .per_image = c.per_image,
      .per_tool_definition = per_tool_definition,
      .tools_preamble = tools_preamble,
      .reply_priming = reply_priming,
  };
}

// Claude: no public tokenizer for Claude 3 and later; its counts run above cl100k's
// (Anthropic: newer tokenizers use up to 1.35x as many tokens for the same text), so cl100k
// x 1.25, with the tool-use system prompt; usage correction refines it per model.
constexpr TokenCoefficients kClaude = scaled(kCl100k, 1.25, 5, 25, 15, 20, 350, 5);
// Llama 3 (128k vocabulary built on cl100k's) counts like cl100k or below; Llama 2, Mistral
// (32k SentencePiece) count more: cl100k x 1.15 covers both.
constexpr TokenCoefficients kLlama = scaled(kCl100k, 1.15, 5, 15, 10, 15, 80, 5);
// Unknown: the largest of every weight.
constexpr TokenCoefficients kGeneric = scaled(kCl100k, 1.35, 6, 25, 15, 20, 350, 6);

std::int64_t saturating_round(double raw) {
  if (!(raw > 0)) return 0;
  if (raw >= 9.0e18) return std::numeric_limits<std::int64_t>::max();
  return static_cast<std::int64_t>(std::ceil(raw));
}

char lower_ascii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool starts_with_ci(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (lower_ascii(s[i]) != lower_ascii(prefix[i])) return false;
  }
  return true;
}

struct FamilyPrefix {
  std::string_view prefix;
  TokenizerFamily family;
};

// Order matters: "gpt-4o" before "gpt-4".
constexpr std::array kFamilyTable{
    FamilyPrefix{"gpt-4o", TokenizerFamily::kOpenAiO200k},
    FamilyPrefix{"chatgpt-4o", TokenizerFamily::kOpenAiO200k},
    FamilyPrefix{"gpt-4.1", TokenizerFamily::kOpenAiO200k},
    FamilyPrefix{"gpt-4.5", TokenizerFamily::kOpenAiO200k},
    FamilyPrefix{"gpt-5", TokenizerFamily::kOpenAiO200k},
    FamilyPrefix{"gpt-oss", TokenizerFamily::kOpenAiO200k},
    FamilyPrefix{"o1", TokenizerFamily::kOpenAiO200k},
    FamilyPrefix{"o3", TokenizerFamily::kOpenAiO200k},
    FamilyPrefix{"o4", TokenizerFamily::kOpenAiO200k},
    FamilyPrefix{"gpt-4", TokenizerFamily::kOpenAiCl100k},
    FamilyPrefix{"gpt-3.5", TokenizerFamily::kOpenAiCl100k},
    FamilyPrefix{"gpt-35", TokenizerFamily::kOpenAiCl100k},
    FamilyPrefix{"text-embedding-3", TokenizerFamily::kOpenAiCl100k},
    FamilyPrefix{"text-embedding-ada", TokenizerFamily::kOpenAiCl100k},
    FamilyPrefix{"claude", TokenizerFamily::kClaude},
    FamilyPrefix{"llama", TokenizerFamily::kLlama},
    FamilyPrefix{"codellama", TokenizerFamily::kLlama},
    FamilyPrefix{"mistral", TokenizerFamily::kLlama},
    FamilyPrefix{"mixtral", TokenizerFamily::kLlama},
    FamilyPrefix{"ministral", TokenizerFamily::kLlama},
    FamilyPrefix{"codestral", TokenizerFamily::kLlama},
};

std::string_view after_last_slash(std::string_view model) {
  const std::size_t slash = model.rfind('/');
  return slash == std::string_view::npos ? model : model.substr(slash + 1);
}

}  // namespace

std::string_view to_string(TokenizerFamily family) {
  switch (family) {
    case TokenizerFamily::kOpenAiO200k: return "openai_o200k";
    case TokenizerFamily::kOpenAiCl100k: return "openai_cl100k";
    case TokenizerFamily::kClaude: return "claude";
    case TokenizerFamily::kLlama: return "llama";
    case TokenizerFamily::kGeneric: return "generic";
  }
  return "unknown";
}

TokenizerFamily family_for_model(std::string_view model) {
  const std::string_view name = after_last_slash(model);
  for (const FamilyPrefix& row : kFamilyTable) {
    if (starts_with_ci(name, row.prefix)) return row.family;
  }
  return TokenizerFamily::kGeneric;
}

TextFeatures text_features(std::string_view text) { return Scanner().scan(text); }

const TokenCoefficients& coefficients_for(TokenizerFamily family) {
  switch (family) {
    case TokenizerFamily::kOpenAiO200k: return kO200k;
    case TokenizerFamily::kOpenAiCl100k: return kCl100k;
    case TokenizerFamily::kClaude: return kClaude;
    case TokenizerFamily::kLlama: return kLlama;
    case TokenizerFamily::kGeneric: return kGeneric;
  }
  return kGeneric;
}

double raw_text_tokens(const TokenCoefficients& c, std::string_view text) {
  if (text.empty()) return 0;
  const TextFeatures f = text_features(text);
  return c.word * static_cast<double>(f.words) + c.long_word_letter * static_cast<double>(f.long_word_letters) +
         c.case_change * static_cast<double>(f.case_changes) +
         c.nonascii_letter * static_cast<double>(f.nonascii_letters) +
         c.digit_group * static_cast<double>(f.digit_groups) + c.punct * static_cast<double>(f.punct) +
         c.punct_run * static_cast<double>(f.punct_runs) + c.space_run * static_cast<double>(f.space_runs) +
         c.cjk * static_cast<double>(f.cjk) + c.kana * static_cast<double>(f.kana) +
         c.typography * static_cast<double>(f.typography) + c.symbol * static_cast<double>(f.symbols) +
         c.astral * static_cast<double>(f.astral);
}

// ---- TokenCounter -------------------------------------------------------------------------

std::int64_t TokenCounter::round(double raw) const { return saturating_round(raw * correction_); }

std::int64_t TokenCounter::text(std::string_view text) const { return round(raw_text_tokens(*c_, text)); }

double TokenCounter::raw_message(const Message& m) const {
  double t = c_->per_message;
  for (const ContentPart& part : m.content) {
    if (part.type == ContentPart::Type::kText)
      t += raw_text_tokens(*c_, part.text);
    else
      t += c_->per_image;
  }
  for (const ToolCall& call : m.tool_calls) {
    t += c_->per_tool_call + raw_text_tokens(*c_, call.id) + raw_text_tokens(*c_, call.name) +
         raw_text_tokens(*c_, call.arguments_json);
  }
  if (m.role == Role::kTool) t += c_->per_tool_result + raw_text_tokens(*c_, m.tool_call_id);
  return t;
}

double TokenCounter::raw_tools(const std::vector<ToolDefinition>& tools) const {
  if (tools.empty()) return 0;
  double t = c_->tools_preamble;
  for (const ToolDefinition& tool : tools) {
    t += c_->per_tool_definition + raw_text_tokens(*c_, tool.name) + raw_text_tokens(*c_, tool.description) +
         raw_text_tokens(*c_, tool.parameters_schema_json);
  }
  return t;
}

std::int64_t TokenCounter::message(const Message& message) const { return round(raw_message(message)); }

std::int64_t TokenCounter::tools(const std::vector<ToolDefinition>& tools) const { return round(raw_tools(tools)); }

std::int64_t TokenCounter::reply_priming() const { return round(c_->reply_priming); }

std::int64_t TokenCounter::request(const ChatRequest& request) const {
  double t = c_->reply_priming + raw_tools(request.tools);
  for (const Message& m : request.messages) t += raw_message(m);
  return round(t);
}

// ---- overflow_counts -----------------------------------------------------------------------

namespace {

// The number right after `text[pos]` (skipping spaces), advancing pos past it.
std::optional<std::int64_t> read_number(std::string_view text, std::size_t& pos) {
  while (pos < text.size() && text[pos] == ' ') ++pos;
  std::int64_t v = 0;
  const std::size_t start = pos;
  while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9' && pos - start < 15) {
    v = v * 10 + (text[pos] - '0');
    ++pos;
  }
  if (pos == start) return std::nullopt;
  return v;
}

// The number after the first occurrence of `prefix`, or nullopt; pos is left after it.
std::optional<std::int64_t> number_after(std::string_view text, std::string_view prefix, std::size_t& pos) {
  const std::size_t at = text.find(prefix, pos);
  if (at == std::string_view::npos) return std::nullopt;
  pos = at + prefix.size();
  return read_number(text, pos);
}

bool skip(std::string_view text, std::size_t& pos, std::string_view expected) {
  while (pos < text.size() && text[pos] == ' ') ++pos;
  if (text.substr(pos, expected.size()) != expected) return false;
  pos += expected.size();
  return true;
}

}  // namespace

std::optional<OverflowCounts> overflow_counts(const Error& error) {
  if (error.kind() != ErrorKind::kContextOverflow) return std::nullopt;
  const std::string_view m = error.message();
  std::size_t pos = 0;
  if (auto prompt = number_after(m, "prompt is too long:", pos)) {
    OverflowCounts c{.prompt_tokens = *prompt};
    if (skip(m, pos, "tokens >")) c.window_tokens = read_number(m, pos).value_or(0);
    return c;
  }
  pos = 0;
  if (auto input = number_after(m, "exceed context limit:", pos)) {
    OverflowCounts c{.prompt_tokens = *input};
    if (skip(m, pos, "+") && read_number(m, pos) && skip(m, pos, ">"))
      c.window_tokens = read_number(m, pos).value_or(0);
    return c;
  }
  pos = 0;
  if (auto window = number_after(m, "maximum context length is", pos)) {
    std::size_t p2 = pos;
    if (auto prompt = number_after(m, "your messages resulted in", p2)) {
      return OverflowCounts{.prompt_tokens = *prompt, .window_tokens = *window};
    }
    p2 = pos;
    if (number_after(m, "you requested", p2) && skip(m, p2, "tokens (")) {
      if (auto prompt = read_number(m, p2); prompt && skip(m, p2, "in the messages")) {
        return OverflowCounts{.prompt_tokens = *prompt, .window_tokens = *window};
      }
    }
  }
  return std::nullopt;
}

// ---- TokenEstimator -----------------------------------------------------------------------

Result<std::unique_ptr<TokenEstimator>> TokenEstimator::create(TokenEstimatorOptions options) {
  auto bad = [](std::string what) { return Error(ErrorKind::kInvalidArgument, "TokenEstimatorOptions: " + what); };
  if (!(options.alpha_up > 0 && options.alpha_up <= 1)) return bad("alpha_up must be in (0, 1]");
  if (!(options.alpha_down > 0 && options.alpha_down <= 1)) return bad("alpha_down must be in (0, 1]");
  if (!(options.headroom >= 0 && options.headroom <= 1)) return bad("headroom must be in [0, 1]");
  if (!(options.min_correction > 0 && options.min_correction <= 1)) return bad("min_correction must be in (0, 1]");
  if (!(options.max_correction >= 1 && std::isfinite(options.max_correction)))
    return bad("max_correction must be finite and >= 1");
  if (options.min_observed_tokens < 1) return bad("min_observed_tokens must be >= 1");
  if (options.max_models < 1) return bad("max_models must be >= 1");
  for (std::size_t i = 0; i < options.family_overrides.size(); ++i) {
    if (options.family_overrides[i].first.empty())
      return bad("family_overrides[" + std::to_string(i) + "] has an empty prefix");
  }
  return std::unique_ptr<TokenEstimator>(new TokenEstimator(std::move(options)));
}

TokenizerFamily TokenEstimator::family(std::string_view model) const {
  for (const auto& [prefix, fam] : options_.family_overrides) {
    if (starts_with_ci(model, prefix)) return fam;
  }
  return family_for_model(model);
}

TokenCounter TokenEstimator::counter(std::string_view model) const {
  return TokenCounter(family(model), correction(model));
}

double TokenEstimator::correction(std::string_view model) const {
  std::lock_guard lock(mu_);
  auto it = factors_.find(model);
  return it == factors_.end() ? 1.0 : it->second.factor;
}

std::size_t TokenEstimator::tracked_models() const {
  std::lock_guard lock(mu_);
  return factors_.size();
}

void TokenEstimator::observe(std::string_view model, std::int64_t estimated_input, std::int64_t reported_input) {
  if (reported_input <= 0 || estimated_input < options_.min_observed_tokens) return;
  std::lock_guard lock(mu_);
  auto it = factors_.find(model);
  if (it == factors_.end()) {
    if (factors_.size() >= options_.max_models) {
      auto oldest = std::min_element(factors_.begin(), factors_.end(), [](const auto& a, const auto& b) {
        return a.second.last_observed < b.second.last_observed;
      });
      factors_.erase(oldest);
    }
    it = factors_.emplace(std::string(model), Entry{}).first;
  }
  Entry& e = it->second;
  const double raw = static_cast<double>(estimated_input) / e.factor;
  const double target = static_cast<double>(reported_input) / raw * (1.0 + options_.headroom);
  const double alpha = target > e.factor ? options_.alpha_up : options_.alpha_down;
  e.factor = std::clamp(e.factor + alpha * (target - e.factor), options_.min_correction, options_.max_correction);
  e.last_observed = ++observations_;
}

}  // namespace nines::llm
