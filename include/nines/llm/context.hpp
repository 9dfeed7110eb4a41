// nines/llm/context.hpp: making a prompt fit a model's context window.
//
// Two levels. fit_messages is pure: it shortens and drops messages until the estimate
// (tokens.hpp) fits a budget, by fixed rules. ContextManager adds memory: when a task's
// history grows past a share of the budget, a summarizer model folds the oldest turns into a
// summary checkpoint that is committed to the durable store (Store::put_summary) before the
// prompt uses it, so a restarted task loads the summary and the tail (Store::load_history)
// instead of its whole history. The router calls prepare() before each model call and, when
// the provider still answers context_overflow, compact() and retries once.
//
// fit_messages rules, in order, applied only while the prompt is over budget:
//   1. tool results over max_tool_output_tokens are shortened, oldest first, to that size:
//      head and tail kept, with a marker in between saying how much was elided;
//   2. the oldest turns are dropped: before the last user message a turn is a user message
//      with every message up to the next user message; after it, an assistant message with
//      its tool results (so a tool call is never separated from its results, and the prompt
//      never starts with a tool result); messages before the first user message form the
//      oldest unit;
//   3. never dropped: system messages, pinned messages (Message::pinned; a pinned tool result
//      or call keeps its whole call-and-results group), the last user message;
//   4. still over: kContextOverflow naming what the kept messages need and the budget.
//
// Prompt built by ContextManager: leading system messages of live_tail, the system and
// pinned messages the summary stands in for, the summary (a pinned user message beginning
// with summary_heading, cut to a quarter of the target if longer), the history after the
// summary, the rest of live_tail; then fit_messages. The summary is a user message, not a
// system one, so that the turns after it read as a conversation to every provider.
//
// Storage: each history message is one Store history record (encode_message JSON) at seq 0,
// 1, 2, ...; a summary is one summary record whose value is JSON {"v":1,"text":...,
// "model":...,"kept":[messages]} covering seq <= covers_through_seq. read_history still
// returns every message: summarizing never deletes history.
//
// Ownership: ContextManager shares the estimator and the summarizer. A Conversation owns its
// in-memory view and its commit function (which may borrow a Store or a committer: those
// must outlive it).
// Thread-safety: fit_messages and shorten_text are pure. ContextManager is immutable after
// create(): any number of processes may use it at once. A Conversation belongs to one
// process at a time (not synchronized); two Conversations over one task id would write the
// same seqs (the first write wins, the store keeps it), so keep one per task.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/llm/message.hpp"
#include "nines/llm/model.hpp"
#include "nines/llm/tokens.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"
#include "nines/store/store.hpp"

namespace nines::llm {

// ---- fitting ------------------------------------------------------------------------------

struct FitOptions {
  std::int64_t budget_tokens = 0;              // what the messages may take: window - reserved output -
                                               // tools (TokenCounter::tools); > 0
  std::string model;                           // selects the tokenizer family and the usage correction
  const TokenEstimator* estimator = nullptr;   // nullptr: family_for_model(model), uncorrected
  std::int64_t max_tool_output_tokens = 4096;  // rule 1; 0: never shorten
};

struct FitResult {
  std::vector<Message> messages;
  std::int64_t tokens_before = 0;  // estimate of the messages given (plus the reply priming)
  std::int64_t tokens_after = 0;   // ... of `messages`; <= budget_tokens
  std::size_t dropped = 0;         // messages dropped
  std::size_t shortened = 0;       // tool results shortened
};

// Errors: kInvalidArgument (budget_tokens <= 0, max_tool_output_tokens < 0),
// kContextOverflow ("prompt for model 'm' needs at least N tokens (system, pinned and the
// last user message) but the budget is B").
Result<FitResult> fit_messages(std::vector<Message> messages, const FitOptions& options);

// `text` cut to about max_tokens (as `counter` counts): the head (2/3) and the tail (1/3)
// kept, cut at line or UTF-8 boundaries, with "[... N characters (about T tokens) elided
// ...]" between them. Returned unchanged if it already fits.
std::string shorten_text(std::string_view text, std::int64_t max_tokens, const TokenCounter& counter);

// ---- conversation history in the store ---------------------------------------------------

// Commits one batch durably (ok) or fails. The workflow engine's group commit fits here; so
// does commit_to_store.
using CommitFn = std::function<Task<Status>(Context& ctx, WriteBatch batch)>;

// Commits straight to `store` (Store::commit on the calling worker). The store must outlive
// the function.
CommitFn commit_to_store(Store& store);

struct HistoryEntry {
  std::int64_t seq = 0;
  Message message;
};

struct SummaryCheckpoint {
  std::int64_t covers_through_seq = -1;  // stands in for history seq <= this
  std::string text;                      // the summary
  std::string model;                     // the summarizer that wrote it
  std::vector<Message> kept;             // system and pinned messages at seq <= covers_through_seq
};

struct ConversationOptions {
  std::size_t page_messages = 512;          // messages per store read, >= 1
  std::size_t max_loaded_messages = 10000;  // tail held in memory, >= 1; older ones beyond it
                                            // are left out of the view (skipped(); still in
                                            // the store, but neither prompted nor summarized)
};

class Conversation {
 public:
  // Reads the task's newest summary and every message after it (Store reads on the calling
  // thread, page_messages at a time). Errors: the store's, and
  // kPermanent naming the record for a message or summary that does not decode;
  // kInvalidArgument for an empty task id or bad options.
  static Result<Conversation> load(Store& store, std::string task_id, CommitFn commit,
                                   ConversationOptions options = {});

  const std::string& task_id() const { return task_id_; }
  const std::optional<SummaryCheckpoint>& summary() const { return summary_; }
  const std::vector<HistoryEntry>& tail() const { return tail_; }
  std::int64_t next_seq() const { return next_seq_; }
  std::size_t skipped() const { return skipped_; }

  // Commits the messages at next_seq(), next_seq() + 1, ... in one batch, then adds them to
  // the view. On an error nothing is added and the same seqs are used next time (appending a
  // seq that is already stored keeps the stored message: a retry after an unknown outcome is
  // safe).
  Task<Status> append(Context& ctx, std::vector<Message> messages);

  // Commits a summary checkpoint (covers_through_seq must be within the view's tail, after
  // the current summary: else kInvalidArgument), then drops what it covers from the view.
  // Nothing changes on an error. The context manager calls this; so may an importer.
  Task<Status> checkpoint(Context& ctx, SummaryCheckpoint summary);

 private:
  Conversation(std::string task_id, CommitFn commit, ConversationOptions options)
      : task_id_(std::move(task_id)), commit_(std::move(commit)), options_(options) {}
  void trim_to_bound();

  std::string task_id_;
  CommitFn commit_;
  ConversationOptions options_;
  std::optional<SummaryCheckpoint> summary_;
  std::vector<HistoryEntry> tail_;
  std::int64_t next_seq_ = 0;
  std::size_t skipped_ = 0;
};

// ---- the context manager ------------------------------------------------------------------

inline constexpr std::string_view kDefaultSummaryPrompt =
    "You keep the running summary of a conversation between a user and an AI agent that uses tools. "
    "You are given the previous summary (if any) and the next part of the conversation. Write one "
    "updated summary that replaces the previous one. Keep every fact, decision, constraint, open "
    "task, file name, identifier, number and error the agent may still need, and what the tools "
    "returned as far as it matters. Drop pleasantries and repetition. Answer with the summary only.";

struct ContextManagerOptions {
  double summarize_at_fraction = 0.8;                       // prepare() summarizes when the prompt estimate is
                                                            // above this share of the budget, (0, 1]
  double keep_recent_fraction = 0.4;                        // recent history kept verbatim, share of the
                                                            // target, (0, 1)
  double compact_target_fraction = 0.6;                     // compact()'s target, share of the budget, (0, 1]
  std::string summarizer_model;                             // ChatRequest::model of summarizer calls; required
                                                            // when there is a summarizer
  std::int64_t max_summary_tokens = 1024;                   // max_output_tokens of a summarizer call, > 0
  std::int64_t summarizer_input_tokens = 24000;             // transcript per summarizer call, >= 1000
  int max_summarizer_calls = 4;                             // per prepare/compact, >= 1
  Duration summarizer_timeout = std::chrono::seconds(120);  // per call, > 0
  std::int64_t max_tool_output_tokens = 4096;               // FitOptions::max_tool_output_tokens (halved
                                                            // by compact); also bounds each tool result
                                                            // in a transcript
  std::string summary_prompt = std::string(kDefaultSummaryPrompt);
  std::string summary_heading = "[Summary of the earlier conversation]";
};

struct PromptBudget {
  std::string model;               // the model the prompt is for (estimates, correction)
  std::int64_t budget_tokens = 0;  // as FitOptions::budget_tokens; > 0
};

struct Prepared {
  FitResult fit;                                    // the prompt (fit.messages) and what fitting did
  std::size_t summarized_messages = 0;              // history messages folded into a summary now
  int summarizer_calls = 0;                         // that succeeded and were committed
  std::optional<std::int64_t> summary_through_seq;  // the checkpoint in the prompt, if any
  std::optional<Error> summary_failure;             // summarizing was due but a summarizer call or
                                                    // the checkpoint commit failed: fell back to
                                                    // dropping (fit says how much)
};

class ContextManager {
 public:
  // estimator may be null (family_for_model, uncorrected); summarizer may be null (then
  // prepare/compact only fit). kInvalidArgument naming a bad option.
  static Result<std::unique_ptr<ContextManager>> create(ContextManagerOptions options,
                                                        std::shared_ptr<const TokenEstimator> estimator,
                                                        std::shared_ptr<ChatModel> summarizer);

  // The prompt for the next call: conversation + live_tail (messages of this turn not in the
  // history yet, e.g. the system prompt and the new user message), summarized first when over
  // summarize_at_fraction of the budget, then fitted. Errors: kInvalidArgument (budget),
  // kContextOverflow (fit_messages); a summarizer or commit failure is not an error (see
  // Prepared::summary_failure). The conversation and live_tail must outlive the call.
  Task<Result<Prepared>> prepare(Context& ctx, Conversation& conversation, const std::vector<Message>& live_tail,
                                 const PromptBudget& budget) const;

  // After a context_overflow from the provider: summarizes whatever is older than the
  // recent window (no trigger), halves the tool-output bound, and fits to
  // compact_target_fraction of the budget. Errors as prepare.
  Task<Result<Prepared>> compact(Context& ctx, Conversation& conversation, const std::vector<Message>& live_tail,
                                 const PromptBudget& budget) const;

  const ContextManagerOptions& options() const { return options_; }

 private:
  ContextManager(ContextManagerOptions options, std::shared_ptr<const TokenEstimator> estimator,
                 std::shared_ptr<ChatModel> summarizer)
      : options_(std::move(options)), estimator_(std::move(estimator)), summarizer_(std::move(summarizer)) {}

  Task<Result<Prepared>> run(Context& ctx, Conversation& conversation, const std::vector<Message>& live_tail,
                             const PromptBudget& budget, bool compacting) const;
  Task<Status> summarize_once(Context& ctx, Conversation& conversation, std::size_t count, std::int64_t chunk_tokens,
                              const TokenCounter& counter) const;

  ContextManagerOptions options_;
  std::shared_ptr<const TokenEstimator> estimator_;
  std::shared_ptr<ChatModel> summarizer_;
};

}  // namespace nines::llm
