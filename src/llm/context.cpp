#include "nines/llm/context.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include "llm/json_util.hpp"
#include "llm/message_json.hpp"

namespace nines::llm {
namespace {

using internal::Json;

TokenCounter counter_for(const TokenEstimator* estimator, std::string_view model) {
  return estimator ? estimator->counter(model) : TokenCounter(family_for_model(model));
}

bool is_tool_call(const Message& m) { return m.role == Role::kAssistant && !m.tool_calls.empty(); }

std::string quote_name(std::string_view s) { return "'" + std::string(s) + "'"; }

// ---- shortening -----------------------------------------------------------------------------

bool is_utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// A cut at or before `pos` that does not split a UTF-8 character, moved back to just after
// a newline if one is in the last fifth of [0, pos).
std::size_t head_cut(std::string_view text, std::size_t pos) {
  pos = std::min(pos, text.size());
  while (pos > 0 && pos < text.size() && is_utf8_continuation(text[pos])) --pos;
  const std::size_t nl = text.rfind('\n', pos == 0 ? 0 : pos - 1);
  if (nl != std::string_view::npos && nl + 1 >= pos - pos / 5 && nl + 1 <= pos) return nl + 1;
  return pos;
}

// A cut at or after `pos` that does not split a UTF-8 character, moved forward to just after
// a newline if one is in the first fifth of [pos, end).
std::size_t tail_cut(std::string_view text, std::size_t pos) {
  pos = std::min(pos, text.size());
  while (pos < text.size() && is_utf8_continuation(text[pos])) ++pos;
  const std::size_t window = (text.size() - pos) / 5;
  const std::size_t nl = text.find('\n', pos);
  if (nl != std::string_view::npos && nl < pos + window) return nl + 1;
  return pos;
}

std::string elision_marker(std::size_t bytes, std::int64_t tokens) {
  return "\n[... " + std::to_string(bytes) + " bytes (about " + std::to_string(tokens) + " tokens) elided ...]\n";
}

// Replaces the text of a tool result by one shortened text part (other parts kept after it).
void shorten_message_text(Message& m, std::int64_t max_tokens, const TokenCounter& counter) {
  std::string shortened = shorten_text(m.text(), max_tokens, counter);
  std::vector<ContentPart> parts;
  parts.push_back(ContentPart::from_text(std::move(shortened)));
  for (ContentPart& p : m.content) {
    if (p.type != ContentPart::Type::kText) parts.push_back(std::move(p));
  }
  m.content = std::move(parts);
}

// ---- summary records --------------------------------------------------------------------------

std::string encode_summary(const SummaryCheckpoint& s) {
  Json j = Json::object();
  j["v"] = 1;
  j["text"] = s.text;
  if (!s.model.empty()) j["model"] = s.model;
  Json kept = Json::array();
  for (const Message& m : s.kept) kept.push_back(internal::message_to_json(m));
  j["kept"] = std::move(kept);
  return internal::dump_json(j);
}

Result<SummaryCheckpoint> decode_summary(const SummaryRecord& record) {
  auto fail = [&](std::string what) {
    return Error(ErrorKind::kPermanent, "summary through seq " + std::to_string(record.covers_through_seq) +
                                            " of task " + quote_name(record.task_id) + ": " + std::move(what));
  };
  auto j = internal::parse_for_decode(record.summary, "summary JSON");
  if (!j.ok()) return fail(j.error().message());
  if (!j->is_object()) return fail("summary JSON: expected an object");
  const Json* v = internal::member(*j, "v");
  if (auto version = internal::integer(v); !version || *version != 1) {
    return fail("summary JSON: v: expected 1 (the version this binary reads)");
  }
  const Json* text = internal::member(*j, "text");
  if (!text || !text->is_string()) return fail("summary JSON: text: expected a string");
  SummaryCheckpoint s{.covers_through_seq = record.covers_through_seq, .text = text->get<std::string>()};
  s.model = std::string(internal::str(internal::member(*j, "model")));
  if (const Json* kept = internal::member(*j, "kept")) {
    if (!kept->is_array()) return fail("summary JSON: kept: expected an array");
    for (std::size_t i = 0; i < kept->size(); ++i) {
      auto m = internal::message_from_json((*kept)[i], "kept[" + std::to_string(i) + "]");
      if (!m.ok()) return fail(m.error().message());
      s.kept.push_back(std::move(*m));
    }
  }
  return s;
}

Result<HistoryEntry> decode_entry(const HistoryRecord& record) {
  auto m = decode_message(record.message);
  if (!m.ok()) {
    return Error(ErrorKind::kPermanent, "history message " + std::to_string(record.seq) + " of task " +
                                            quote_name(record.task_id) + ": " + m.error().message());
  }
  return HistoryEntry{.seq = record.seq, .message = std::move(*m)};
}

Task<Status> commit_batch(Store* store, WriteBatch batch) { co_return store->commit(batch); }

// ---- transcripts for the summarizer ---------------------------------------------------------

// Limits of one message in a transcript: tool results to max_tool_output_tokens, other text
// to half a summarizer call.
struct RenderLimits {
  std::int64_t tool_tokens = 0;  // 0: unbounded
  std::int64_t text_tokens = 0;
};

std::string render_for_summary(const Message& m, const RenderLimits& limits, const TokenCounter& counter) {
  std::string out;
  std::string text = m.text();
  const std::int64_t cap = m.role == Role::kTool ? limits.tool_tokens : limits.text_tokens;
  if (cap > 0) text = shorten_text(text, cap, counter);
  switch (m.role) {
    case Role::kSystem: out = "[system] "; break;
    case Role::kUser: out = "[user] "; break;
    case Role::kAssistant: out = "[assistant] "; break;
    case Role::kTool: out = std::string(m.is_error ? "[tool error " : "[tool result ") + m.tool_call_id + "] "; break;
  }
  out += text;
  for (const ContentPart& p : m.content) {
    if (p.type == ContentPart::Type::kImageUrl) out += " [image]";
  }
  for (const ToolCall& c : m.tool_calls) {
    out += "\n[assistant called " + c.name + "(" + c.arguments_json + ") id " + c.id + "]";
  }
  out += '\n';
  return out;
}

}  // namespace

// ---- shorten_text ---------------------------------------------------------------------------

std::string shorten_text(std::string_view text, std::int64_t max_tokens, const TokenCounter& counter) {
  const std::int64_t total = counter.text(text);
  if (total <= max_tokens) return std::string(text);
  // The marker costs about 16 tokens; what is left is shared 2:1 by head and tail.
  const std::int64_t room = std::max<std::int64_t>(max_tokens - 16, 0);
  double keep_bytes = static_cast<double>(text.size()) * static_cast<double>(room) / static_cast<double>(total);
  for (int attempt = 0; attempt < 8 && keep_bytes >= 1; ++attempt, keep_bytes *= 0.8) {
    const auto keep = static_cast<std::size_t>(keep_bytes);
    const std::size_t head_end = head_cut(text, keep * 2 / 3);
    const std::size_t tail_start = std::max(head_end, tail_cut(text, text.size() - (keep - keep * 2 / 3)));
    const std::string_view elided = text.substr(head_end, tail_start - head_end);
    std::string out(text.substr(0, head_end));
    out += elision_marker(elided.size(), counter.text(elided));
    out += text.substr(tail_start);
    if (counter.text(out) <= max_tokens) return out;
  }
  return elision_marker(text.size(), total);
}

// ---- fit_messages ---------------------------------------------------------------------------

namespace {

// Checked first, so that a bad budget is reported as the caller's mistake, not as an overflow.
Status check_fit_options(const FitOptions& options) {
  if (options.budget_tokens <= 0) {
    return Error(ErrorKind::kInvalidArgument,
                 "fit_messages: budget_tokens must be > 0, got " + std::to_string(options.budget_tokens));
  }
  if (options.max_tool_output_tokens < 0) {
    return Error(ErrorKind::kInvalidArgument, "fit_messages: max_tool_output_tokens must be >= 0, got " +
                                                  std::to_string(options.max_tool_output_tokens));
  }
  return ok_status();
}

// Per-message estimates and their total, kept in step so each rule stops as soon as it fits.
struct Costs {
  std::vector<std::int64_t> of;
  std::int64_t total = 0;
};

Costs costs_of(const std::vector<Message>& messages, const TokenCounter& counter) {
  Costs c{.of = std::vector<std::int64_t>(messages.size()), .total = counter.reply_priming()};
  for (std::size_t i = 0; i < messages.size(); ++i) c.total += c.of[i] = counter.message(messages[i]);
  return c;
}

// Rule 1, before anything is dropped: a long tool result keeps its head and tail, which say
// most. Returns how many were shortened.
std::size_t shorten_tool_results(std::vector<Message>& messages, Costs& costs, const FitOptions& options,
                                 const TokenCounter& counter) {
  if (options.max_tool_output_tokens <= 0) return 0;
  std::size_t shortened = 0;
  for (std::size_t i = 0; i < messages.size() && costs.total > options.budget_tokens; ++i) {
    Message& m = messages[i];
    if (m.role != Role::kTool || m.pinned) continue;
    if (counter.text(m.text()) <= options.max_tool_output_tokens) continue;
    shorten_message_text(m, options.max_tool_output_tokens, counter);
    const std::int64_t c = counter.message(m);
    costs.total -= costs.of[i] - c;
    costs.of[i] = c;
    ++shortened;
  }
  return shortened;
}

// The first and the last user message: rule 2's units are cut around them.
struct UserSpan {
  std::optional<std::size_t> first, last;
};

UserSpan user_span(const std::vector<Message>& messages) {
  UserSpan u;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role != Role::kUser) continue;
    if (!u.first) u.first = i;
    u.last = i;
  }
  return u;
}

// One past the tool results that follow the call at `i`: a call without its results (or the
// reverse) is a prompt the APIs reject.
std::size_t end_of_call(const std::vector<Message>& messages, std::size_t i) {
  std::size_t end = i + 1;
  while (end < messages.size() && messages[end].role == Role::kTool) ++end;
  return end;
}

// What rule 2 never drops: system and pinned messages and the last user message (the
// question being answered), with the whole call group of any of them.
std::vector<bool> must_keep(const std::vector<Message>& messages, const UserSpan& users) {
  const std::size_t n = messages.size();
  std::vector<bool> keep(n, false);
  for (std::size_t i = 0; i < n; ++i) keep[i] = messages[i].role == Role::kSystem || messages[i].pinned;
  if (users.last) keep[*users.last] = true;
  // A call and its results stay or go together.
  for (std::size_t i = 0; i < n; ++i) {
    if (!is_tool_call(messages[i])) continue;
    const std::size_t end = end_of_call(messages, i);
    const auto first = keep.begin() + static_cast<std::ptrdiff_t>(i);
    const auto last = keep.begin() + static_cast<std::ptrdiff_t>(end);
    if (std::any_of(first, last, [](bool b) { return b; })) std::fill(first, last, true);
    i = end - 1;
  }
  return keep;
}

// Units as [begin, end) ranges in age order, so dropping from the front drops the oldest
// context first: what precedes the first user message, whole turns before the last user
// message, then after it a call with its results or one message.
std::vector<std::pair<std::size_t, std::size_t>> units_by_age(const std::vector<Message>& messages,
                                                              const UserSpan& users) {
  const std::size_t n = messages.size();
  std::vector<std::pair<std::size_t, std::size_t>> units;
  std::size_t pos = 0;
  if (users.first && *users.first > 0) {
    units.emplace_back(0, *users.first);
    pos = *users.first;
  }
  if (users.last) {
    while (pos < *users.last) {
      std::size_t end = pos + 1;
      while (end < *users.last && messages[end].role != Role::kUser) ++end;
      units.emplace_back(pos, end);
      pos = end;
    }
    pos = *users.last + 1;
  }
  while (pos < n) {
    const std::size_t end = is_tool_call(messages[pos]) ? end_of_call(messages, pos) : pos + 1;
    units.emplace_back(pos, end);
    pos = end;
  }
  return units;
}

// The error says how much cannot be dropped, so the caller can tell a small budget from a huge system prompt.
Error overflow_error(const FitOptions& options, std::int64_t total, const std::vector<bool>& keep) {
  const auto kept = static_cast<std::size_t>(std::count(keep.begin(), keep.end(), true));
  return Error(ErrorKind::kContextOverflow,
               "prompt for model " + quote_name(options.model) + " needs at least " + std::to_string(total) +
                   " tokens for what cannot be dropped (" + std::to_string(kept) +
                   " system, pinned or last-user messages and their tool calls) but the budget is " +
                   std::to_string(options.budget_tokens) + " tokens");
}

// Rule 2: whole units, oldest first, until the rest fits. Returns which messages are dropped.
Result<std::vector<bool>> drop_oldest(const std::vector<Message>& messages, Costs& costs, const FitOptions& options) {
  std::vector<bool> dropped(messages.size(), false);
  if (costs.total <= options.budget_tokens) return dropped;
  const UserSpan users = user_span(messages);
  const std::vector<bool> keep = must_keep(messages, users);
  for (const auto& [begin, end] : units_by_age(messages, users)) {
    if (costs.total <= options.budget_tokens) break;
    for (std::size_t i = begin; i < end; ++i) {
      if (keep[i]) continue;
      dropped[i] = true;
      costs.total -= costs.of[i];
    }
  }
  if (costs.total > options.budget_tokens) return overflow_error(options, costs.total, keep);
  return dropped;
}

}  // namespace

Result<FitResult> fit_messages(std::vector<Message> messages, const FitOptions& options) {
  if (Status s = check_fit_options(options); !s.ok()) return std::move(s).error();
  const TokenCounter counter = counter_for(options.estimator, options.model);
  Costs costs = costs_of(messages, counter);
  FitResult r;
  r.tokens_before = costs.total;

  // 1. Large tool results, oldest first.
  r.shortened = shorten_tool_results(messages, costs, options, counter);

  // 2. The oldest units, never what must stay.
  Result<std::vector<bool>> dropped = drop_oldest(messages, costs, options);
  if (!dropped.ok()) return std::move(dropped).error();
  r.dropped = static_cast<std::size_t>(std::count(dropped->begin(), dropped->end(), true));
  r.messages.reserve(messages.size() - r.dropped);
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (!(*dropped)[i]) r.messages.push_back(std::move(messages[i]));
  }
  r.tokens_after = costs.total;
  return r;
}

// ---- Conversation -----------------------------------------------------------------------------

CommitFn commit_to_store(Store& store) {
  Store* s = &store;
  return [s](Context&, WriteBatch batch) { return commit_batch(s, std::move(batch)); };
}

Result<Conversation> Conversation::load(Store& store, std::string task_id, CommitFn commit,
                                        ConversationOptions options) {
  if (task_id.empty()) return Error(ErrorKind::kInvalidArgument, "Conversation::load: empty task id");
  if (!commit) return Error(ErrorKind::kInvalidArgument, "Conversation::load: no commit function");
  if (options.page_messages < 1 || options.max_loaded_messages < 1) {
    return Error(ErrorKind::kInvalidArgument, "Conversation::load: page_messages and max_loaded_messages must be >= 1");
  }
  Conversation c(std::move(task_id), std::move(commit), options);
  auto view = store.load_history(c.task_id_, options.page_messages);
  if (!view.ok()) return std::move(view).error().with_context("loading the history of task " + quote_name(c.task_id_));
  if (view->summary) {
    auto s = decode_summary(*view->summary);
    if (!s.ok()) return std::move(s).error();
    c.next_seq_ = s->covers_through_seq + 1;
    c.summary_ = std::move(*s);
  }
  std::vector<HistoryRecord> page = std::move(view->tail);
  bool more = view->more;
  while (true) {
    for (const HistoryRecord& rec : page) {
      auto e = decode_entry(rec);
      if (!e.ok()) return std::move(e).error();
      c.next_seq_ = std::max(c.next_seq_, e->seq + 1);
      c.tail_.push_back(std::move(*e));
    }
    c.trim_to_bound();
    if (!more || page.empty()) break;
    auto next = store.read_history(c.task_id_, page.back().seq + 1, options.page_messages);
    if (!next.ok())
      return std::move(next).error().with_context("loading the history of task " + quote_name(c.task_id_));
    more = next->size() == options.page_messages;
    page = std::move(*next);
  }
  return c;
}

void Conversation::trim_to_bound() {
  if (tail_.size() <= options_.max_loaded_messages) return;
  const std::size_t excess = tail_.size() - options_.max_loaded_messages;
  tail_.erase(tail_.begin(), tail_.begin() + static_cast<std::ptrdiff_t>(excess));
  skipped_ += excess;
}

Task<Status> Conversation::append(Context& ctx, std::vector<Message> messages) {
  if (messages.empty()) co_return ok_status();
  WriteBatch batch;
  std::int64_t seq = next_seq_;
  for (const Message& m : messages) batch.append_history(task_id_, seq++, encode_message(m));
  Task<Status> commit = commit_(ctx, std::move(batch));
  Status s = co_await commit;
  if (!s.ok()) co_return std::move(s).error().with_context("appending to the history of task " + quote_name(task_id_));
  for (Message& m : messages) tail_.push_back(HistoryEntry{.seq = next_seq_++, .message = std::move(m)});
  trim_to_bound();
  co_return ok_status();
}

Task<Status> Conversation::checkpoint(Context& ctx, SummaryCheckpoint summary) {
  const std::int64_t from = summary_ ? summary_->covers_through_seq : -1;
  if (summary.covers_through_seq <= from || summary.covers_through_seq >= next_seq_) {
    co_return Error(ErrorKind::kInvalidArgument, "summary checkpoint of task " + quote_name(task_id_) +
                                                     " covers through seq " +
                                                     std::to_string(summary.covers_through_seq) + ", outside (" +
                                                     std::to_string(from) + ", " + std::to_string(next_seq_) + ")");
  }
  WriteBatch batch;
  batch.put_summary(task_id_, summary.covers_through_seq, encode_summary(summary));
  Task<Status> commit = commit_(ctx, std::move(batch));
  Status s = co_await commit;
  if (!s.ok()) co_return std::move(s).error().with_context("committing a summary of task " + quote_name(task_id_));
  const std::int64_t through = summary.covers_through_seq;
  tail_.erase(tail_.begin(),
              std::find_if(tail_.begin(), tail_.end(), [through](const HistoryEntry& e) { return e.seq > through; }));
  summary_ = std::move(summary);
  co_return ok_status();
}

// ---- ContextManager ---------------------------------------------------------------------------

Result<std::unique_ptr<ContextManager>> ContextManager::create(ContextManagerOptions options,
                                                               std::shared_ptr<const TokenEstimator> estimator,
                                                               std::shared_ptr<ChatModel> summarizer) {
  auto bad = [](std::string what) { return Error(ErrorKind::kInvalidArgument, "ContextManagerOptions: " + what); };
  const ContextManagerOptions& o = options;
  if (!(o.summarize_at_fraction > 0 && o.summarize_at_fraction <= 1))
    return bad("summarize_at_fraction must be in (0, 1]");
  if (!(o.keep_recent_fraction > 0 && o.keep_recent_fraction < 1)) return bad("keep_recent_fraction must be in (0, 1)");
  if (!(o.compact_target_fraction > 0 && o.compact_target_fraction <= 1))
    return bad("compact_target_fraction must be in (0, 1]");
  if (o.max_summary_tokens <= 0) return bad("max_summary_tokens must be > 0");
  if (o.summarizer_input_tokens < 1000) return bad("summarizer_input_tokens must be >= 1000");
  if (o.max_summarizer_calls < 1) return bad("max_summarizer_calls must be >= 1");
  if (o.summarizer_timeout <= Duration::zero()) return bad("summarizer_timeout must be > 0");
  if (o.max_tool_output_tokens < 0) return bad("max_tool_output_tokens must be >= 0");
  if (summarizer && o.summarizer_model.empty()) return bad("summarizer_model is required with a summarizer");
  if (summarizer && o.summary_prompt.empty()) return bad("summary_prompt is empty");
  return std::unique_ptr<ContextManager>(
      new ContextManager(std::move(options), std::move(estimator), std::move(summarizer)));
}

namespace {

// Leading system messages of live_tail go first (the call's system prompt); the rest last.
// The summary is cut to max_summary_tokens (it is pinned: it must leave room for the rest).
std::vector<Message> build_prompt(const Conversation& conv, const std::vector<Message>& live_tail,
                                  std::string_view heading, std::int64_t max_summary_tokens,
                                  const TokenCounter& counter) {
  std::vector<Message> out;
  std::size_t lead = 0;
  while (lead < live_tail.size() && live_tail[lead].role == Role::kSystem) out.push_back(live_tail[lead++]);
  if (const auto& s = conv.summary()) {
    for (const Message& m : s->kept) out.push_back(m);
    Message summary = Message::user(std::string(heading) + "\n" + shorten_text(s->text, max_summary_tokens, counter));
    summary.pinned = true;
    out.push_back(std::move(summary));
  }
  for (const HistoryEntry& e : conv.tail()) out.push_back(e.message);
  for (std::size_t i = lead; i < live_tail.size(); ++i) out.push_back(live_tail[i]);
  return out;
}

std::int64_t estimate(const std::vector<Message>& messages, const TokenCounter& counter) {
  std::int64_t t = counter.reply_priming();
  for (const Message& m : messages) t += counter.message(m);
  return t;
}

// How many of the oldest tail messages to summarize now: everything older than the recent
// window (keep_tokens, counting live_tail first), never leaving a tool result at the start of
// what stays, at most what fits one summarizer call (chunk_tokens of transcript). 0: none.
std::size_t plan_summary(const Conversation& conv, const std::vector<Message>& live_tail, std::int64_t keep_tokens,
                         std::int64_t chunk_tokens, const RenderLimits& limits, const TokenCounter& counter) {
  const auto& tail = conv.tail();
  std::int64_t recent = 0;
  for (const Message& m : live_tail) recent += counter.message(m);
  std::size_t cut = tail.size();
  while (cut > 0 && recent + counter.message(tail[cut - 1].message) <= keep_tokens) {
    recent += counter.message(tail[--cut].message);
  }
  // The first message kept must not be a tool result (its call would be summarized away).
  auto starts_with_tool = [&](std::size_t at) {
    if (at < tail.size()) return tail[at].message.role == Role::kTool;
    for (const Message& m : live_tail) {
      if (m.role != Role::kSystem) return m.role == Role::kTool;
    }
    return false;
  };
  while (cut > 0 && starts_with_tool(cut)) --cut;
  if (cut == 0) return 0;
  // One summarizer call's worth, ending where a tool result does not follow.
  std::int64_t transcript = 0;
  std::size_t chunk = 0, last_good = 0;
  while (chunk < cut) {
    const Message& m = tail[chunk].message;
    if (m.role != Role::kSystem && !m.pinned) {
      transcript += counter.text(render_for_summary(m, limits, counter));
    }
    if (transcript > chunk_tokens && last_good > 0) break;
    ++chunk;
    if (!starts_with_tool(chunk)) last_good = chunk;
  }
  return last_good;
}

}  // namespace

Task<Status> ContextManager::summarize_once(Context& ctx, Conversation& conv, std::size_t count,
                                            std::int64_t chunk_tokens, const TokenCounter& counter) const {
  const RenderLimits limits{.tool_tokens = options_.max_tool_output_tokens, .text_tokens = chunk_tokens / 2};
  const auto& tail = conv.tail();
  SummaryCheckpoint next;
  std::string transcript;
  if (const auto& prev = conv.summary()) {
    next.kept = prev->kept;
    transcript = "<previous_summary>\n" + prev->text + "\n</previous_summary>\n\n";
  }
  transcript += "<conversation>\n";
  for (std::size_t i = 0; i < count; ++i) {
    const Message& m = tail[i].message;
    if (m.role == Role::kSystem || m.pinned) {
      next.kept.push_back(m);
      continue;
    }
    transcript += render_for_summary(m, limits, counter);
  }
  transcript += "</conversation>\n";
  next.covers_through_seq = tail[count - 1].seq;
  next.model = options_.summarizer_model;

  ChatRequest req;
  req.model = options_.summarizer_model;
  req.messages = {Message::system(options_.summary_prompt), Message::user(std::move(transcript))};
  req.max_output_tokens = options_.max_summary_tokens;
  TextSink sink = [](std::string_view) {};
  std::optional<ChatOutcome> outcome;
  {
    auto scope = ctx.with_timeout(options_.summarizer_timeout);
    Task<ChatOutcome> call = summarizer_->complete(ctx, req, sink);
    outcome.emplace(co_await call);
  }
  if (!outcome->result.ok()) {
    co_return std::move(outcome->result).error().with_context("summarizer " + quote_name(options_.summarizer_model));
  }
  std::string text = outcome->result->message.text();
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) {
    co_return Error(ErrorKind::kTransient, "summarizer " + quote_name(options_.summarizer_model) + " returned no text");
  }
  text.erase(0, first);
  text.erase(text.find_last_not_of(" \t\r\n") + 1);
  // A summarizer that ignores max_output_tokens does not get to fill the prompt.
  next.text = shorten_text(text, 2 * options_.max_summary_tokens, counter);
  Status s = co_await conv.checkpoint(ctx, std::move(next));
  co_return s;
}

Task<Result<Prepared>> ContextManager::run(Context& ctx, Conversation& conv, const std::vector<Message>& live_tail,
                                           const PromptBudget& budget, bool compacting) const {
  if (budget.budget_tokens <= 0) {
    co_return Error(ErrorKind::kInvalidArgument,
                    "context manager: budget_tokens must be > 0, got " + std::to_string(budget.budget_tokens));
  }
  const TokenCounter counter = counter_for(estimator_.get(), budget.model);
  const double b = static_cast<double>(budget.budget_tokens);
  const auto target = std::max<std::int64_t>(
      1, static_cast<std::int64_t>(compacting ? std::floor(b * options_.compact_target_fraction) : b));
  const auto trigger =
      compacting ? std::int64_t{0} : static_cast<std::int64_t>(std::floor(b * options_.summarize_at_fraction));
  const auto keep_tokens =
      static_cast<std::int64_t>(std::floor(static_cast<double>(target) * options_.keep_recent_fraction));
  const std::int64_t max_tool = compacting ? options_.max_tool_output_tokens / 2 : options_.max_tool_output_tokens;
  // What one summarizer call may read: its budget minus the prompt, the previous summary
  // (up to twice max_summary_tokens) and the answer.
  const std::int64_t chunk_tokens = std::max<std::int64_t>(
      500, options_.summarizer_input_tokens - 3 * options_.max_summary_tokens - counter.text(options_.summary_prompt));

  const std::int64_t summary_cap = std::max<std::int64_t>(1, target / 4);

  Prepared out;
  std::vector<Message> prompt = build_prompt(conv, live_tail, options_.summary_heading, summary_cap, counter);
  if (summarizer_ && estimate(prompt, counter) > trigger) {
    while (out.summarizer_calls < options_.max_summarizer_calls) {
      const RenderLimits limits{.tool_tokens = options_.max_tool_output_tokens, .text_tokens = chunk_tokens / 2};
      const std::size_t count = plan_summary(conv, live_tail, keep_tokens, chunk_tokens, limits, counter);
      if (count == 0) break;
      Status s = co_await summarize_once(ctx, conv, count, chunk_tokens, counter);
      if (!s.ok()) {
        out.summary_failure = std::move(s).error();
        break;
      }
      ++out.summarizer_calls;
      out.summarized_messages += count;
      prompt = build_prompt(conv, live_tail, options_.summary_heading, summary_cap, counter);
      if (estimate(prompt, counter) <= std::min(trigger == 0 ? target : trigger, target)) break;
    }
  }
  if (const auto& s = conv.summary()) out.summary_through_seq = s->covers_through_seq;
  FitOptions fit_options{.budget_tokens = target,
                         .model = budget.model,
                         .estimator = estimator_.get(),
                         .max_tool_output_tokens = max_tool};
  auto fit = fit_messages(std::move(prompt), fit_options);
  if (!fit.ok()) {
    Error e = std::move(fit).error();
    if (compacting) e = std::move(e).with_context("compacting after a context overflow");
    co_return e;
  }
  out.fit = std::move(*fit);
  co_return out;
}

Task<Result<Prepared>> ContextManager::prepare(Context& ctx, Conversation& conversation,
                                               const std::vector<Message>& live_tail,
                                               const PromptBudget& budget) const {
  Result<Prepared> r = co_await run(ctx, conversation, live_tail, budget, false);
  co_return r;
}

Task<Result<Prepared>> ContextManager::compact(Context& ctx, Conversation& conversation,
                                               const std::vector<Message>& live_tail,
                                               const PromptBudget& budget) const {
  Result<Prepared> r = co_await run(ctx, conversation, live_tail, budget, true);
  co_return r;
}

}  // namespace nines::llm
