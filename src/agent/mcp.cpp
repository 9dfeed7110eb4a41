// MCP tool servers as agent tools (agent/mcp.hpp): the owner process, the stdio transport and
// the tools.
#include "nines/agent/mcp.hpp"

#include <nlohmann/json.hpp>

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <utility>

#include "agent/child_process.hpp"
#include "nines/core/check.hpp"
#include "nines/core/log.hpp"
#include "nines/runtime/runtime.hpp"

namespace nines::agent {

namespace {

using json = nlohmann::json;
using internal::ChildExit;
using internal::ChildOptions;
using internal::ChildProcess;

constexpr const char* kProtocolVersion = "2025-06-18";
constexpr std::string_view kKnownVersions[] = {"2024-11-05", "2025-03-26", "2025-06-18"};
// How long a failed or stopped child may take to die after SIGKILL (it is reaped at once).
constexpr Duration kReapTimeout = std::chrono::seconds(10);
// How long a child that closed its stdout may take to exit by itself before it is killed.
constexpr Duration kExitGrace = std::chrono::seconds(2);
// How long the stderr reader may take to log what a dead child left in the pipe.
constexpr Duration kStderrDrain = std::chrono::seconds(1);
// A caller waits this much longer than its call's deadline, so the owner's answer comes first.
constexpr Duration kReplyGrace = std::chrono::seconds(2);

constexpr std::string_view kClosedStdout = "closed its stdout";

// ---- messages to the owner ----

struct CallRequest {
  std::string tool;
  std::string arguments_json;
  std::string idempotency_key;
  TimePoint deadline;
  Duration timeout;
};
struct CallReply {
  Result<std::string> result;
};
struct StatusRequest {};
struct StopRequest {};
struct OutLine {
  std::uint64_t gen;
  std::string line;
};
struct OutEnd {
  std::uint64_t gen;
  std::string why;  // "closed its stdout", or the read error
};
struct StartOutcome {
  Result<std::vector<McpToolInfo>> tools;
};

std::string quote_text(std::string_view s, std::size_t max = 200) {
  std::string out(s.substr(0, max));
  if (s.size() > max) out += "...";
  return "'" + out + "'";
}

std::string millis(Duration d) { return std::to_string(to_millis(d)) + " ms"; }

// `text` cut at `max` bytes (on a UTF-8 boundary) with a marker saying how much was left out.
std::string cut(std::string text, std::size_t max) {
  if (text.size() <= max) return text;
  std::size_t at = max;
  while (at > 0 && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) --at;
  std::size_t rest = text.size() - at;
  text.resize(at);
  text += "\n[... cut: " + std::to_string(rest) + " more bytes]";
  return text;
}

// The text the model sees from a tools/call result's content.
std::string content_text(const json& result) {
  std::string text;
  const json* content = result.is_object() && result.contains("content") ? &result["content"] : nullptr;
  if (content != nullptr && content->is_array()) {
    for (const json& item : *content) {
      if (!item.is_object()) continue;
      std::string type = item.value("type", std::string("?"));
      std::string piece;
      if (type == "text" && item.contains("text") && item["text"].is_string()) {
        piece = item["text"].get<std::string>();
      } else if (type == "image" || type == "audio") {
        std::size_t n =
            item.contains("data") && item["data"].is_string() ? item["data"].get_ref<const std::string&>().size() : 0;
        piece = "[" + type + " " + item.value("mimeType", std::string("?")) + ", " + std::to_string(n) +
                " bytes of base64]";
      } else if (type == "resource" && item.contains("resource") && item["resource"].is_object()) {
        const json& r = item["resource"];
        if (r.contains("text") && r["text"].is_string()) {
          piece = r["text"].get<std::string>();
        } else {
          piece = "[resource " + r.value("uri", std::string("?")) + "]";
        }
      } else if (type == "resource_link") {
        piece = "[resource link " + item.value("uri", std::string("?")) + "]";
      } else {
        piece = "[" + type + "]";
      }
      if (!text.empty() && !piece.empty()) text += "\n";
      text += piece;
    }
  }
  if (text.empty() && result.is_object() && result.contains("structuredContent")) {
    text = result["structuredContent"].dump();
  }
  return text;
}

std::string sanitize_tool_name(const std::string& prefix, const std::string& name) {
  std::string out = prefix + name;
  for (char& c : out) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) c = '_';
  }
  if (out.size() > 64) out.resize(64);
  return out;
}

// ---- the owner ----

// The resident memory of the processes of group `pgid`, from /proc/<pid>/stat (pgrp is field 5,
// rss field 24, in pages). 0 if none is found.
std::uint64_t group_resident_bytes(int pgid) {
  static const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  std::uint64_t total = 0;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return 0;
  while (const dirent* e = ::readdir(proc)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char path[300];
    std::snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    std::FILE* f = std::fopen(path, "re");
    if (f == nullptr) continue;  // gone meanwhile
    char buf[1024];
    const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    // After the last ')' (the command may hold anything): state ppid pgrp ... rss is the 22nd
    // field from there.
    const char* p = std::strrchr(buf, ')');
    if (p == nullptr) continue;
    long long fields[22] = {};
    int got = 0;
    for (++p; got < 22 && *p != '\0';) {
      while (*p == ' ') ++p;
      if (got == 0) {  // the state letter
        while (*p != ' ' && *p != '\0') ++p;
        ++got;
        continue;
      }
      char* end = nullptr;
      fields[got++] = std::strtoll(p, &end, 10);
      if (end == p) break;
      p = end;
    }
    if (got == 22 && fields[2] == pgid && fields[21] > 0) total += static_cast<std::uint64_t>(fields[21]) * page;
  }
  ::closedir(proc);
  return total;
}

std::string mib(std::uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

class Owner {
 public:
  Owner(McpServerOptions options, Pid starter) : o_(std::move(options)), starter_(starter) {}

  Task<> run(Context& ctx);

 private:
  enum class Kind : std::uint8_t { kCall, kPing };
  struct Pending {
    Kind kind = Kind::kCall;
    Message request;  // kCall: answered with a CallReply
    MonitorRef monitor;
    bool monitored = false;
    TimePoint deadline;
    Duration timeout{};
    std::string tool;
  };

  std::string who() const { return "mcp server '" + o_.name + "'"; }

  Task<Result<std::vector<McpToolInfo>>> start_child(Context& ctx, bool list);
  Task<Result<std::vector<McpToolInfo>>> start_child_inner(Context& ctx, bool list);
  Task<Result<json>> request(Context& ctx, const std::string& method, json params, TimePoint deadline);
  Task<Status> send_line(Context& ctx, const json& message);
  // Answers a request from the server; ignores a notification.
  Task<Status> on_server_message(Context& ctx, const json& message);
  Task<> on_call(Context& ctx, Message m);
  Task<> on_line(Context& ctx, const std::string& line);
  void on_response(Context& ctx, std::int64_t id, const json& message);
  void on_down(Context& ctx, const Down& down);
  Task<> expire(Context& ctx);
  Task<> fail_child(Context& ctx);
  Task<bool> restart(Context& ctx);
  // The resident-memory watchdog (McpLimits::max_resident_bytes).
  bool watching() const { return o_.limits.max_resident_bytes > 0 && child_ != nullptr && !starting_; }
  void check_resident(Context& ctx);
  Task<bool> recycle(Context& ctx);
  Task<> discard_child(Context& ctx);
  // Kills and reaps the child that failed to start; the error for start(), with its last stderr line.
  Task<Error> fail_start(Context& ctx, Error e);
  Task<> stop(Context& ctx, const Message& m);
  void reply(Context& ctx, Pending& p, Result<std::string> result);
  McpServerStatus status() const;

  McpServerOptions o_;
  Pid starter_;
  std::shared_ptr<ChildProcess> child_;
  Pid reader_, err_reader_;
  std::uint64_t gen_ = 0;
  TimePoint child_started_{};
  std::map<std::int64_t, Pending> pending_;
  std::size_t calls_in_flight_ = 0;
  std::int64_t next_id_ = 1;
  bool ping_out_ = false;
  std::optional<std::string> failure_;   // why the child failed; handled by the main loop
  std::optional<Message> stop_request_;  // a stop that came during a start
  std::vector<json> cancelled_;          // notifications/cancelled to send (callers that exited)
  std::uint64_t restarts_ = 0;
  int attempt_ = 0;
  Duration previous_delay_{};
  std::string protocol_version_;
  std::string last_failure_;
  std::string last_stderr_;  // the last stderr line of the last child discarded
  bool starting_ = false;    // initialize not answered yet
  // The child closed its stdout or stdin: it most likely exited, and its exit status says more.
  bool pipe_closed_ = false;
  TimePoint next_resident_check_ = TimePoint::max();
  std::uint64_t resident_bytes_ = 0;
  std::uint64_t recycles_ = 0;
  std::optional<std::string> recycle_;  // over the limit: why; new calls wait, then recycle()
};

Task<Status> Owner::send_line(Context& ctx, const json& message) {
  if (failure_) co_return Error(ErrorKind::kTransient, *failure_);  // the child is being replaced
  std::string line = message.dump(-1, ' ', false, json::error_handler_t::replace);
  line += '\n';
  Status s = co_await child_->write_all(ctx, line, o_.write_timeout);
  if (!s.ok()) {
    if (s.error().kind() == ErrorKind::kTransient) pipe_closed_ = true;  // broken, not stuck
    if (!failure_) failure_ = s.error().message();
  }
  co_return s;
}

Task<Status> Owner::on_server_message(Context& ctx, const json& message) {
  if (!message.contains("id")) co_return ok_status();  // a notification: ignored
  json answer = {{"jsonrpc", "2.0"}, {"id", message["id"]}};
  if (message.value("method", std::string()) == "ping") {
    answer["result"] = json::object();
  } else {
    answer["error"] = {{"code", -32601}, {"message", "method not supported by the nines client"}};
  }
  co_return co_await send_line(ctx, answer);
}

Task<Result<json>> Owner::request(Context& ctx, const std::string& method, json params, TimePoint deadline) {
  const std::int64_t id = next_id_++;
  json message = {{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}};
  Status sent = co_await send_line(ctx, message);
  if (!sent.ok()) co_return sent.error();
  const std::uint64_t gen = gen_;
  for (;;) {
    TimePoint now = ctx.now();
    if (now >= deadline) co_return Error(ErrorKind::kTimeout, "no answer to " + method);
    auto pred = [gen](const Message& m) {
      if (const auto* l = m.get<OutLine>()) return l->gen == gen;
      if (const auto* e = m.get<OutEnd>()) return e->gen == gen;
      return m.is<StopRequest>() || m.is<StatusRequest>();
    };
    std::optional<Message> m = co_await ctx.receive_if(pred, deadline - now);
    if (!m) continue;
    if (m->is<StatusRequest>()) {
      McpServerStatus s = status();
      ctx.reply(*m, std::move(s));
      continue;
    }
    if (m->is<StopRequest>()) {
      stop_request_ = std::move(*m);
      co_return Error(ErrorKind::kCancelled, "stopped while waiting for the answer to " + method);
    }
    if (const auto* e = m->get<OutEnd>()) {
      if (e->why == kClosedStdout) pipe_closed_ = true;
      co_return Error(ErrorKind::kTransient, e->why);
    }
    const std::string& line = m->get<OutLine>()->line;
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      co_return Error(ErrorKind::kTransient,
                      "wrote garbage on stdout (not a JSON-RPC message): " + quote_text(line, 100));
    }
    if (j.contains("method")) {
      Status s = co_await on_server_message(ctx, j);
      if (!s.ok()) co_return s.error();
      continue;
    }
    if (!j.contains("id") || !j["id"].is_number_integer() || j["id"].get<std::int64_t>() != id) continue;
    if (j.contains("error")) {
      co_return Error(ErrorKind::kPermanent, "answered " + method + " with an error: " + j["error"].dump());
    }
    if (!j.contains("result")) co_return Error(ErrorKind::kTransient, "answered " + method + " without a result");
    co_return j["result"];
  }
}

Task<Result<std::vector<McpToolInfo>>> Owner::start_child(Context& ctx, bool list) {
  starting_ = true;
  auto r = co_await start_child_inner(ctx, list);
  starting_ = false;
  co_return r;
}

Task<Result<std::vector<McpToolInfo>>> Owner::start_child_inner(Context& ctx, bool list) {
  ++gen_;
  failure_.reset();
  pipe_closed_ = false;
  ping_out_ = false;
  ChildOptions co{.argv = o_.command,
                  .env = o_.env,
                  .working_dir = o_.working_dir,
                  .limits = {.cpu_seconds = o_.limits.cpu_seconds,
                             .address_space_bytes = o_.limits.address_space_bytes,
                             .open_files = o_.limits.open_files},
                  .name = o_.name,
                  .max_line_bytes = o_.max_line_bytes};
  auto spawned = co_await ChildProcess::spawn(ctx, co);
  if (!spawned.ok()) co_return Error(ErrorKind::kStartFailed, who() + ": " + spawned.error().message());
  child_ = std::move(spawned).value();
  child_started_ = ctx.now();
  next_resident_check_ = add_saturating(ctx.now(), o_.limits.resident_check_interval);
  recycle_.reset();

  const Pid self = ctx.self();
  const std::uint64_t gen = gen_;
  std::shared_ptr<ChildProcess> child = child_;
  Behavior read_out = [child, self, gen](Context& c) -> Task<> {
    for (;;) {
      auto line = co_await child->read_line(c);
      if (!line.ok() || !*line) {
        OutEnd end{gen, line.ok() ? std::string(kClosedStdout) : line.error().message()};
        (void)co_await c.send(self, std::move(end));
        co_return;
      }
      OutLine out{gen, std::move(**line)};
      if (!(co_await c.send(self, std::move(out))).ok()) co_return;
    }
  };
  std::string server = o_.name;
  Behavior read_err = [child, server](Context& c) -> Task<> {
    for (;;) {
      std::optional<std::string> line = co_await child->read_stderr_line(c);
      if (!line) co_return;
      NINES_LOG(c.env().logger(), LogLevel::kInfo, "mcp_server_stderr", *line, {"server", server});
    }
  };
  auto r1 = ctx.spawn_link(std::move(read_out));
  auto r2 = ctx.spawn_link(std::move(read_err));
  if (!r1.ok() || !r2.ok()) {
    co_await discard_child(ctx);
    co_return Error(ErrorKind::kStartFailed, who() + ": could not spawn its reader processes");
  }
  reader_ = *r1;
  err_reader_ = *r2;

  const TimePoint deadline = add_saturating(ctx.now(), o_.initialize_timeout);
  json params = {{"protocolVersion", kProtocolVersion},
                 {"capabilities", json::object()},
                 {"clientInfo", {{"name", "nines"}, {"version", "0.1"}}}};
  auto init = co_await request(ctx, "initialize", std::move(params), deadline);
  if (!init.ok()) {
    Error e = init.error().kind() == ErrorKind::kTimeout
                  ? Error(ErrorKind::kTimeout, "did not answer initialize within " + millis(o_.initialize_timeout))
                  : init.error();
    co_return co_await fail_start(ctx, e);
  }
  std::string version = init->is_object() ? init->value("protocolVersion", std::string()) : std::string();
  if (std::find(std::begin(kKnownVersions), std::end(kKnownVersions), version) == std::end(kKnownVersions)) {
    co_return co_await fail_start(
        ctx, Error(ErrorKind::kStartFailed,
                   "answered initialize with protocol version " + quote_text(version) +
                       ", which nines does not speak (it knows 2024-11-05, 2025-03-26 and 2025-06-18)"));
  }
  protocol_version_ = version;
  json initialized = {{"jsonrpc", "2.0"}, {"method", "notifications/initialized"}};
  if (Status s = co_await send_line(ctx, initialized); !s.ok()) {
    co_return co_await fail_start(ctx, s.error());
  }

  std::vector<McpToolInfo> tools;
  if (!list) co_return tools;
  std::optional<std::string> cursor;
  for (std::size_t page = 0;; ++page) {
    if (page >= o_.max_list_pages) {
      co_return co_await fail_start(
          ctx,
          Error(ErrorKind::kStartFailed, "tools/list has more than " + std::to_string(o_.max_list_pages) + " pages"));
    }
    json p = json::object();
    if (cursor) p["cursor"] = *cursor;
    const TimePoint page_deadline = add_saturating(ctx.now(), o_.initialize_timeout);
    auto listed = co_await request(ctx, "tools/list", std::move(p), page_deadline);
    if (!listed.ok()) {
      co_return co_await fail_start(ctx, listed.error());
    }
    if (!listed->is_object() || !listed->contains("tools") || !(*listed)["tools"].is_array()) {
      co_return co_await fail_start(ctx, Error(ErrorKind::kStartFailed, "answered tools/list without a tools array"));
    }
    for (const json& t : (*listed)["tools"]) {
      if (!t.is_object() || !t.contains("name") || !t["name"].is_string()) continue;
      McpToolInfo info;
      info.name = t["name"].get<std::string>();
      info.description = t.value("description", std::string());
      info.input_schema_json = t.contains("inputSchema") && t["inputSchema"].is_object()
                                   ? t["inputSchema"].dump()
                                   : std::string(R"({"type":"object","properties":{}})");
      if (t.contains("annotations") && t["annotations"].is_object()) {
        const json& a = t["annotations"];
        info.read_only_hint = a.value("readOnlyHint", false);
        info.idempotent_hint = a.value("idempotentHint", false);
      }
      tools.push_back(std::move(info));
    }
    if (!listed->contains("nextCursor") || !(*listed)["nextCursor"].is_string()) break;
    cursor = (*listed)["nextCursor"].get<std::string>();
  }
  co_return tools;
}

void Owner::reply(Context& ctx, Pending& p, Result<std::string> result) {
  if (p.monitored) ctx.demonitor(p.monitor);
  if (p.kind == Kind::kCall) {
    --calls_in_flight_;
    CallReply r{std::move(result)};
    ctx.reply(p.request, std::move(r));
  }
}

Task<> Owner::on_call(Context& ctx, Message m) {
  const CallRequest& req = *m.get<CallRequest>();
  auto refuse = [&](Error e) {
    CallReply r{std::move(e)};
    ctx.reply(m, std::move(r));
  };
  if (ctx.now() >= req.deadline) {
    refuse(Error(ErrorKind::kTimeout, who() + ": tool '" + req.tool + "' timed out before it was sent"));
    co_return;
  }
  if (calls_in_flight_ >= o_.max_in_flight) {
    refuse(Error(ErrorKind::kBulkheadFull,
                 who() + ": " + std::to_string(o_.max_in_flight) + " calls are in flight already (max_in_flight)"));
    co_return;
  }
  json args = json::parse(req.arguments_json, nullptr, false);
  if (args.is_discarded() || !args.is_object()) {
    refuse(
        Error(ErrorKind::kInvalidArgument, who() + ": tool '" + req.tool + "': the arguments are not a JSON object"));
    co_return;
  }
  const std::int64_t id = next_id_++;
  json params = {{"name", req.tool}, {"arguments", std::move(args)}};
  if (!req.idempotency_key.empty()) params["_meta"] = {{"nines/idempotencyKey", req.idempotency_key}};
  json message = {{"jsonrpc", "2.0"}, {"id", id}, {"method", "tools/call"}, {"params", std::move(params)}};
  Pending p;
  p.kind = Kind::kCall;
  p.deadline = req.deadline;
  p.timeout = req.timeout;
  p.tool = req.tool;
  if (m.from().valid()) {
    p.monitor = ctx.monitor(m.from());
    p.monitored = true;
  }
  p.request = std::move(m);
  pending_.emplace(id, std::move(p));
  ++calls_in_flight_;
  co_await send_line(ctx, message);  // a failure sets failure_: the main loop fails the call
}

void Owner::on_response(Context& ctx, std::int64_t id, const json& j) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;  // late: timed out or cancelled already
  Pending p = std::move(it->second);
  pending_.erase(it);
  if (p.kind == Kind::kPing) {
    ping_out_ = false;
    if (p.monitored) ctx.demonitor(p.monitor);
    return;
  }
  const std::string tool = "tool '" + p.tool + "'";
  if (j.contains("error")) {
    const json& e = j["error"];
    int code = e.is_object() ? e.value("code", 0) : 0;
    std::string msg = e.is_object() ? e.value("message", std::string()) : e.dump();
    ErrorKind kind = code == -32602 ? ErrorKind::kInvalidArgument : ErrorKind::kPermanent;
    reply(ctx, p,
          Error(kind,
                who() + ": " + tool + " failed: " + cut(msg, 4096) + " (JSON-RPC error " + std::to_string(code) + ")"));
    return;
  }
  if (!j.contains("result") || !j["result"].is_object()) {
    reply(ctx, p, Error(ErrorKind::kPermanent, who() + ": " + tool + ": the answer has no result object"));
    return;
  }
  const json& result = j["result"];
  std::string text = cut(content_text(result), o_.max_result_bytes);
  if (result.value("isError", false)) {
    reply(ctx, p, Error(ErrorKind::kPermanent, text.empty() ? who() + ": " + tool + " failed (no message)" : text));
    return;
  }
  reply(ctx, p, std::move(text));
}

Task<> Owner::on_line(Context& ctx, const std::string& line) {
  json j = json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    if (!failure_) failure_ = "wrote garbage on stdout (not a JSON-RPC message): " + quote_text(line, 100);
    co_return;
  }
  if (j.contains("method")) {
    co_await on_server_message(ctx, j);
    co_return;
  }
  if (j.contains("id") && j["id"].is_number_integer()) on_response(ctx, j["id"].get<std::int64_t>(), j);
}

void Owner::on_down(Context& /*ctx*/, const Down& down) {
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    if (!it->second.monitored || !(it->second.monitor == down.ref)) continue;
    const std::int64_t id = it->first;
    if (it->second.kind == Kind::kCall) --calls_in_flight_;
    pending_.erase(it);
    // Best effort, without waiting: a full pipe means the server is stuck anyway.
    json cancel = {{"jsonrpc", "2.0"},
                   {"method", "notifications/cancelled"},
                   {"params", {{"requestId", id}, {"reason", "the caller exited: " + down.reason.to_string()}}}};
    cancelled_.push_back(std::move(cancel));
    return;
  }
}

Task<> Owner::expire(Context& ctx) {
  const TimePoint now = ctx.now();
  std::vector<std::int64_t> due;
  for (auto& [id, p] : pending_) {
    if (p.deadline <= now) due.push_back(id);
  }
  for (std::int64_t id : due) {
    auto it = pending_.find(id);
    Pending p = std::move(it->second);
    pending_.erase(it);
    if (p.kind == Kind::kPing) {
      if (!failure_)
        failure_ = "did not answer a ping within " + millis(o_.ping_timeout) + " after a call timed out (hung)";
      continue;
    }
    reply(ctx, p,
          Error(ErrorKind::kTimeout, who() + ": tool '" + p.tool + "' did not answer within " + millis(p.timeout)));
    json cancel = {{"jsonrpc", "2.0"},
                   {"method", "notifications/cancelled"},
                   {"params", {{"requestId", id}, {"reason", "timed out after " + millis(p.timeout)}}}};
    co_await send_line(ctx, cancel);
    if (!ping_out_ && !failure_) {
      const std::int64_t ping_id = next_id_++;
      Pending ping;
      ping.kind = Kind::kPing;
      ping.deadline = add_saturating(ctx.now(), o_.ping_timeout);
      pending_.emplace(ping_id, std::move(ping));
      ping_out_ = true;
      json message = {{"jsonrpc", "2.0"}, {"id", ping_id}, {"method", "ping"}};
      co_await send_line(ctx, message);
    }
  }
}

Task<Error> Owner::fail_start(Context& ctx, Error e) {
  std::string msg = who() + ": " + e.message();
  if (child_ && pipe_closed_) {
    // Most likely it exited: its status says more than the closed pipe.
    auto exited = co_await child_->wait_exit(ctx, kExitGrace);
    if (exited.ok()) msg = who() + " " + exited->to_string() + " during start-up";
  }
  co_await discard_child(ctx);
  const std::string& line = last_stderr_;
  if (!line.empty()) msg += " (its last stderr line: " + quote_text(line) + ")";
  co_return Error(e.kind() == ErrorKind::kCancelled ? ErrorKind::kCancelled : ErrorKind::kStartFailed, msg);
}

Task<> Owner::discard_child(Context& ctx) {
  if (reader_.valid()) {
    ctx.unlink(reader_);
    ctx.kill_on_purpose(reader_);
  }
  reader_ = Pid{};
  if (child_) {
    child_->kill();
    auto e = co_await child_->wait_exit(ctx, kReapTimeout);
    (void)e;  // not reaped in time: the destructor of the last holder reaps it
  }
  if (err_reader_.valid()) {
    // The group is dead, so stderr reaches EOF: let its reader log the last lines first.
    MonitorRef mon = ctx.monitor(err_reader_);
    if (!co_await ctx.wait_down(mon, kStderrDrain)) {
      ctx.demonitor(mon);
      ctx.unlink(err_reader_);
      ctx.kill_on_purpose(err_reader_);
    }
  }
  err_reader_ = Pid{};
  if (child_) last_stderr_ = child_->last_stderr_line();
  child_.reset();
}

Task<> Owner::fail_child(Context& ctx) {
  const std::string why = *failure_;
  failure_.reset();
  std::string what;
  if (pipe_closed_ && child_) {
    // Most likely it exited: give it a moment to, for its real exit status.
    auto e = co_await child_->wait_exit(ctx, kExitGrace);
    what = e.ok() ? e->to_string() : why + " (and was killed)";
  } else {
    what = why + " (and was killed)";
  }
  const TimePoint started = child_started_;
  co_await discard_child(ctx);
  const std::string stderr_line = last_stderr_;
  if (ctx.now() - started >= o_.restart_backoff.cap) attempt_ = 0;

  std::string message = who() + " " + what + " while the call was in flight";
  if (!stderr_line.empty()) message += " (its last stderr line: " + quote_text(stderr_line) + ")";
  last_failure_ = who() + " " + what;
  NINES_LOG(ctx.env().logger(), LogLevel::kWarning, "mcp_server_failed", last_failure_, {"server", o_.name},
            {"in_flight", static_cast<std::uint64_t>(calls_in_flight_)});
  for (auto& [id, p] : pending_) {
    if (p.kind == Kind::kCall) {
      reply(ctx, p, Error(ErrorKind::kTransient, message));
    } else if (p.monitored) {
      ctx.demonitor(p.monitor);
    }
  }
  pending_.clear();
  calls_in_flight_ = 0;
  ping_out_ = false;
}

Task<bool> Owner::restart(Context& ctx) {
  for (;;) {
    ++attempt_;
    Duration delay = o_.restart_backoff.next(attempt_, previous_delay_, ctx.env());
    previous_delay_ = delay;
    const TimePoint at = add_saturating(ctx.now(), delay);
    // Calls stay queued while waiting; a status request is answered, a stop ends it.
    for (;;) {
      TimePoint now = ctx.now();
      if (now >= at) break;
      auto pred = [](const Message& m) { return m.is<StatusRequest>() || m.is<StopRequest>(); };
      std::optional<Message> m = co_await ctx.receive_if(pred, at - now);
      if (!m) continue;
      if (m->is<StopRequest>()) {
        co_await stop(ctx, *m);
        co_return false;
      }
      McpServerStatus s = status();
      ctx.reply(*m, std::move(s));
    }
    auto started = co_await start_child(ctx, false);
    if (stop_request_) {
      Message m = std::move(*stop_request_);
      stop_request_.reset();
      co_await stop(ctx, m);
      co_return false;
    }
    if (started.ok()) {
      ++restarts_;
      NINES_LOG(ctx.env().logger(), LogLevel::kNotice, "mcp_server_restarted", "restarted an mcp server",
                {"server", o_.name}, {"attempt", static_cast<std::int64_t>(attempt_)});
      co_return true;
    }
    last_failure_ = started.error().message();
    NINES_LOG(ctx.env().logger(), LogLevel::kWarning, "mcp_server_restart_failed", last_failure_, {"server", o_.name},
              {"attempt", static_cast<std::int64_t>(attempt_)});
    // The calls that waited for this start fail now; later ones wait for the next.
    for (;;) {
      std::optional<Message> m =
          co_await ctx.receive_if([](const Message& x) { return x.is<CallRequest>(); }, Duration::zero());
      if (!m) break;
      CallReply r{Error(ErrorKind::kTransient, "could not restart " + last_failure_)};
      ctx.reply(*m, std::move(r));
    }
  }
}

void Owner::check_resident(Context& ctx) {
  next_resident_check_ = add_saturating(ctx.now(), o_.limits.resident_check_interval);
  resident_bytes_ = group_resident_bytes(child_->pid());
  if (recycle_ || resident_bytes_ <= o_.limits.max_resident_bytes) return;
  recycle_ = "used " + mib(resident_bytes_) + " of resident memory, over its limit of " +
             mib(o_.limits.max_resident_bytes) + " (max_resident_bytes): recycled";
  NINES_LOG(ctx.env().logger(), LogLevel::kWarning, "mcp_server_over_memory", *recycle_, {"server", o_.name},
            {"resident_bytes", resident_bytes_}, {"in_flight", static_cast<std::uint64_t>(calls_in_flight_)});
}

Task<bool> Owner::recycle(Context& ctx) {
  NINES_DCHECK(recycle_.has_value() && calls_in_flight_ == 0);
  last_failure_ = who() + " " + *recycle_;
  recycle_.reset();
  for (auto& [id, p] : pending_) {
    if (p.monitored) ctx.demonitor(p.monitor);
  }
  pending_.clear();  // a ping at most
  ping_out_ = false;
  co_await discard_child(ctx);
  ++recycles_;
  attempt_ = 0;
  auto started = co_await start_child(ctx, false);
  if (stop_request_) {
    Message m = std::move(*stop_request_);
    stop_request_.reset();
    co_await stop(ctx, m);
    co_return false;
  }
  if (started.ok()) {
    ++restarts_;
    NINES_LOG(ctx.env().logger(), LogLevel::kNotice, "mcp_server_recycled", last_failure_, {"server", o_.name});
    co_return true;
  }
  last_failure_ = started.error().message();
  NINES_LOG(ctx.env().logger(), LogLevel::kWarning, "mcp_server_restart_failed", last_failure_, {"server", o_.name},
            {"attempt", static_cast<std::int64_t>(attempt_)});
  co_return co_await restart(ctx);
}

McpServerStatus Owner::status() const {
  McpServerStatus s;
  s.up = child_ != nullptr && !failure_ && !starting_;
  s.child_pid = child_ ? child_->pid() : 0;
  s.restarts = restarts_;
  s.in_flight = calls_in_flight_;
  s.protocol_version = protocol_version_;
  s.last_failure = last_failure_;
  s.recycles = recycles_;
  s.resident_bytes = resident_bytes_;
  return s;
}

Task<> Owner::stop(Context& ctx, const Message& m) {
  for (auto& [id, p] : pending_) {
    if (p.kind == Kind::kCall) reply(ctx, p, Error(ErrorKind::kCancelled, who() + " was stopped"));
  }
  pending_.clear();
  calls_in_flight_ = 0;
  co_await discard_child(ctx);
  if (m.is_call()) ctx.reply(m, true);
}

Task<> Owner::run(Context& ctx) {
  const std::function<bool(const Message&)> not_a_call = [](const Message& x) { return !x.is<CallRequest>(); };
  auto started = co_await start_child(ctx, true);
  if (!started.ok()) {
    co_await discard_child(ctx);  // reaped before start() hears of it
    StartOutcome out{std::move(started).error()};
    (void)co_await ctx.send(starter_, std::move(out));
    if (stop_request_ && stop_request_->is_call()) ctx.reply(*stop_request_, true);
    co_return;
  }
  {
    StartOutcome out{std::move(started).value()};
    (void)co_await ctx.send(starter_, std::move(out));
  }
  if (stop_request_) {
    Message m = std::move(*stop_request_);
    co_await stop(ctx, m);
    co_return;
  }
  for (;;) {
    for (json& cancel : cancelled_) co_await send_line(ctx, cancel);
    cancelled_.clear();
    if (failure_) {
      co_await fail_child(ctx);
      if (!co_await restart(ctx)) co_return;
      continue;
    }
    if (recycle_ && calls_in_flight_ == 0) {
      if (!co_await recycle(ctx)) co_return;
      continue;
    }
    TimePoint next = TimePoint::max();
    for (auto& [id, p] : pending_) next = std::min(next, p.deadline);
    if (watching() && !recycle_) next = std::min(next, next_resident_check_);
    TimePoint now = ctx.now();
    std::optional<Message> m;
    const Duration wait = next == TimePoint::max() ? kInfinite : next - now;
    if (next > now && recycle_) {
      // Draining for a recycle: calls wait in the mailbox (within their deadlines) for the new child.
      m = co_await ctx.receive_if(not_a_call, wait);
    } else if (next > now) {
      m = co_await ctx.receive_for(wait);
    }
    if (m) {
      if (m->is<CallRequest>()) {
        co_await on_call(ctx, std::move(*m));
      } else if (const auto* l = m->get<OutLine>()) {
        if (l->gen == gen_) co_await on_line(ctx, l->line);
      } else if (const auto* e = m->get<OutEnd>()) {
        if (e->gen == gen_ && !failure_) {
          failure_ = e->why;
          pipe_closed_ = e->why == kClosedStdout;
        }
      } else if (const auto* d = m->get<Down>()) {
        on_down(ctx, *d);
      } else if (m->is<StatusRequest>()) {
        McpServerStatus s = status();
        ctx.reply(*m, std::move(s));
      } else if (m->is<StopRequest>()) {
        co_await stop(ctx, *m);
        co_return;
      }
    }
    co_await expire(ctx);
    if (watching() && !recycle_ && !failure_ && ctx.now() >= next_resident_check_) check_resident(ctx);
  }
}

// ---- tools ----

class McpTool final : public Tool {
 public:
  McpTool(std::shared_ptr<McpServer> server, std::string server_name, ToolSpec spec)
      : server_(std::move(server)), server_name_(std::move(server_name)), spec_(std::move(spec)) {}
  const ToolSpec& spec() const override { return spec_; }
  Task<Result<std::string>> call(Context& ctx, const ToolInvocation& invocation) override {
    co_return co_await server_->call(ctx, server_name_, invocation.arguments_json, invocation.idempotency_key,
                                     spec_.timeout);
  }

 private:
  std::shared_ptr<McpServer> server_;
  std::string server_name_;
  ToolSpec spec_;
};

Status validate_options(const McpServerOptions& o) {
  auto bad = [&](const std::string& what) {
    return Error(ErrorKind::kInvalidArgument, "mcp server '" + o.name + "': " + what);
  };
  if (o.name.empty()) return bad("name is empty");
  if (o.command.empty() || o.command[0].empty()) return bad("command is empty");
  if (o.initialize_timeout <= Duration::zero()) return bad("initialize_timeout must be > 0");
  if (o.call_timeout <= Duration::zero()) return bad("call_timeout must be > 0");
  if (o.ping_timeout <= Duration::zero()) return bad("ping_timeout must be > 0");
  if (o.write_timeout <= Duration::zero()) return bad("write_timeout must be > 0");
  if (o.max_in_flight == 0) return bad("max_in_flight must be > 0");
  if (o.max_result_bytes == 0) return bad("max_result_bytes must be > 0");
  if (o.max_line_bytes == 0) return bad("max_line_bytes must be > 0");
  if (o.max_list_pages == 0) return bad("max_list_pages must be > 0");
  if (o.limits.max_resident_bytes > 0 && o.limits.resident_check_interval <= Duration::zero()) {
    return bad("limits.resident_check_interval must be > 0 when limits.max_resident_bytes is set");
  }
  if (Status s = o.restart_backoff.validate(); !s.ok()) return bad(s.error().message());
  return ok_status();
}

}  // namespace

Task<Result<std::shared_ptr<McpServer>>> McpServer::start(Context& ctx, McpServerOptions options) {
  if (Status s = validate_options(options); !s.ok()) co_return s.error();
  auto owner = std::make_shared<Owner>(options, ctx.self());
  Behavior body = [owner](Context& c) -> Task<> { co_await owner->run(c); };
  SpawnOptions spawn{.name = options.register_owner ? "mcp:" + options.name : std::string(),
                     .overflow = OverflowPolicy::kSuspendSender};
  auto pid = ctx.spawn(std::move(body), std::move(spawn));
  if (!pid.ok())
    co_return Error(ErrorKind::kStartFailed, "mcp server '" + options.name + "': " + pid.error().message());
  const Pid owner_pid = *pid;
  const MonitorRef mon = ctx.monitor(owner_pid);
  // Each of initialize and the list pages has initialize_timeout; the spawn and reap a little more.
  const Duration bound =
      options.initialize_timeout * static_cast<std::int64_t>(options.max_list_pages + 1) + kReapTimeout * 2;
  auto pred = [owner_pid, mon](const Message& m) {
    if (m.is<StartOutcome>()) return m.from() == owner_pid;
    if (const auto* d = m.get<Down>()) return d->ref == mon;
    return false;
  };
  std::optional<Message> m = co_await ctx.receive_if(pred, bound);
  if (!m || m->is<Down>()) {
    if (!m) {
      ctx.kill_on_purpose(owner_pid);
      (void)co_await ctx.wait_down(mon, kReapTimeout);
    }
    if (!m && ctx.now() >= ctx.deadline()) {
      co_return Error(ErrorKind::kDeadlineExceeded, "mcp server '" + options.name + "': the caller's deadline passed");
    }
    std::string why =
        m ? "its owner process exited: " + m->get<Down>()->reason.to_string() : "no outcome within " + millis(bound);
    co_return Error(ErrorKind::kStartFailed, "mcp server '" + options.name + "': " + why);
  }
  StartOutcome& out = *m->get<StartOutcome>();
  if (!out.tools.ok()) {
    (void)co_await ctx.wait_down(mon, kReapTimeout);  // the owner ends at once; consume its Down
    co_return std::move(out.tools).error();
  }
  ctx.demonitor(mon);
  std::shared_ptr<McpServer> server(
      new McpServer(ctx.runtime(), std::move(options), owner_pid, std::move(out.tools).value()));
  co_return server;
}

McpServer::~McpServer() {
  // A full mailbox would lose the stop: then a shutdown signal ends the owner, and the child is
  // killed and reaped as its frame unwinds.
  if (Status s = rt_.send(owner_, StopRequest{}); !s.ok() && s.error().kind() == ErrorKind::kMailboxFull) {
    rt_.send_exit(owner_, ExitReason::shutdown("mcp server handle dropped"));
  }
}

std::vector<std::shared_ptr<Tool>> McpServer::tools() {
  std::vector<std::shared_ptr<Tool>> out;
  for (const McpToolInfo& info : listed_) {
    ToolSpec spec;
    spec.name = sanitize_tool_name(options_.tool_prefix, info.name);
    spec.description = info.description;
    spec.parameters_schema_json = info.input_schema_json;
    if (auto it = options_.nature.find(info.name); it != options_.nature.end()) {
      spec.nature = it->second;
    } else if (info.read_only_hint) {
      spec.nature = EffectNature::kReadOnly;
    } else if (info.idempotent_hint) {
      spec.nature = EffectNature::kIdempotent;
    } else {
      spec.nature = EffectNature::kUnsafe;
    }
    spec.timeout = options_.call_timeout;
    if (std::any_of(out.begin(), out.end(), [&](const auto& t) { return t->spec().name == spec.name; })) {
      NINES_LOG(rt_.env().logger(), LogLevel::kWarning, "mcp_tool_skipped",
                "two tools have the same name once sanitized", {"server", options_.name}, {"tool", info.name});
      continue;
    }
    if (Status s = validate_tool_spec(spec); !s.ok()) {
      NINES_LOG(rt_.env().logger(), LogLevel::kWarning, "mcp_tool_skipped", s.error().message(),
                {"server", options_.name}, {"tool", info.name});
      continue;
    }
    out.push_back(std::make_shared<McpTool>(shared_from_this(), info.name, std::move(spec)));
  }
  return out;
}

Task<Result<std::string>> McpServer::call(Context& ctx, std::string tool, std::string arguments_json,
                                          std::string idempotency_key, Duration timeout) {
  if (timeout <= Duration::zero()) timeout = options_.call_timeout;
  const TimePoint now = ctx.now();
  const TimePoint deadline = std::min(add_saturating(now, timeout), ctx.deadline());
  CallRequest req{std::move(tool), std::move(arguments_json), std::move(idempotency_key), deadline, timeout};
  const std::string tool_name = req.tool;
  auto r = co_await ctx.call(owner_, std::move(req), (deadline - now) + kReplyGrace);
  const std::string where = "mcp server '" + options_.name + "': tool '" + tool_name + "'";
  if (!r.ok()) {
    switch (r.error().kind()) {
      case ErrorKind::kNoProc:
        co_return Error(ErrorKind::kTransient, where + ": the server is stopped (" + r.error().message() + ")");
      case ErrorKind::kMailboxFull: co_return Error(ErrorKind::kBulkheadFull, where + ": its owner's mailbox is full");
      default: co_return r.error().with_context(where);
    }
  }
  CallReply* reply = r->get<CallReply>();
  if (reply == nullptr) co_return Error(ErrorKind::kInternal, where + ": the owner answered something else");
  co_return std::move(reply->result);
}

Task<Result<McpServerStatus>> McpServer::status(Context& ctx) {
  auto r = co_await ctx.call(owner_, StatusRequest{}, std::chrono::seconds(5));
  if (!r.ok()) co_return Error(ErrorKind::kTransient, "mcp server '" + options_.name + "': " + r.error().message());
  const auto* s = r->get<McpServerStatus>();
  if (s == nullptr) co_return Error(ErrorKind::kInternal, "mcp server '" + options_.name + "': bad status answer");
  co_return *s;
}

Task<> McpServer::stop(Context& ctx) {
  MonitorRef mon = ctx.monitor(owner_);
  (void)co_await ctx.send(owner_, StopRequest{});
  auto down = co_await ctx.wait_down(mon, kReapTimeout * 3);
  if (!down) {
    ctx.kill_on_purpose(owner_);
    (void)co_await ctx.wait_down(mon, kReapTimeout);
  }
}

}  // namespace nines::agent
