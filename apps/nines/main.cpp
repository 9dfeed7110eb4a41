// The nines command line, on CLI11.
//   nines demo                                  lists the demos
//   nines demo runtime [--workers N] [--shards N] [--seconds S] [--threads N]
//   nines demo models [--agents N] [--calls N]
//   nines sim-server [--config FILE] [--port N] [--bind ADDR] [--fault-key request|position]
//   nines sim agents --seed N [--seeds K] [--trace] [--faults SPEC] [--unjournaled]
//   nines check FILE [--print]
//   nines serve [-c FILE] [--port N]
//   nines tasks list|show|events|cancel|approve|deny|resolve|fork ... [--url URL] [--token T] [--store S] [--json]
//   nines run AGENT INPUT [--id ID] [--idempotency-key K] [--max-cost-usd X] [--max-steps N] [--cancel-on-interrupt]
//   nines --version, nines --help, nines COMMAND --help
//
// Each command is one add_* function below: it declares the command and its options, bound to
// the options struct its header exposes, and sets the action that runs it once the whole line
// parsed. A new command is one more such function and one call in main(). This is the only file
// that includes CLI11 (a large header): the command files stay free of it.
//
// Exit status: the command's own; 0 for --help, --version and `nines demo`; 2 for every usage
// error (unknown command or option, a bad or missing value), with the message on stderr.
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include <CLI/CLI.hpp>

#include "check_cmd.hpp"
#include "demo_models.hpp"
#include "demo_runtime.hpp"
#include "demo_service.hpp"
#include "nines/version.hpp"
#include "run_cmd.hpp"
#include "serve_cmd.hpp"
#include "sim_agents_cmd.hpp"
#include "sim_server_cmd.hpp"
#include "tasks_cmd.hpp"

namespace {

constexpr int kUsageError = 2;

// What the command line asked for: set by the chosen command's callback, run after parsing.
using Action = std::function<int()>;

// ---- values ----------------------------------------------------------------------------------

// A whole number in [lo, hi], in decimal. Checked here rather than left to CLI11's conversion,
// which reads "010" as octal and "0x10" as hex and wraps "-1" around for unsigned options, and
// rather than with CLI::Range, whose message prints the bounds as doubles ("0.000000") and does not
// say that a fraction is the problem. The text is rewritten in plain decimal for the conversion.
CLI::Validator whole_number(std::uint64_t lo, std::uint64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        std::uint64_t v = 0;
        const char* end = text.data() + text.size();
        auto [ptr, ec] = std::from_chars(text.data(), end, v);
        if (text.empty() || ec != std::errc() || ptr != end || v < lo || v > hi) {
          return "expected a whole number from " + std::to_string(lo) + " to " + std::to_string(hi) + ", got '" + text +
                 "'";
        }
        text = std::to_string(v);
        return {};
      },
      "");
}

// A number of seconds in (0, max], fractions allowed.
CLI::Validator positive_seconds(double max) {
  return CLI::Validator(
      [max](std::string& text) -> std::string {
        double v = 0;
        const char* end = text.data() + text.size();
        auto [ptr, ec] = std::from_chars(text.data(), end, v);
        if (text.empty() || ec != std::errc() || ptr != end || !(v > 0 && v <= max)) {
          return "expected a number of seconds above 0 and at most " + std::to_string(static_cast<long>(max)) +
                 ", got '" + text + "'";
        }
        return {};
      },
      "");
}

// A number >= 0, fractions allowed (an amount of money).
CLI::Validator non_negative_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double v = 0;
        const char* end = text.data() + text.size();
        auto [ptr, ec] = std::from_chars(text.data(), end, v);
        if (text.empty() || ec != std::errc() || ptr != end || !(v >= 0 && v <= 1e12)) {
          return "expected a number from 0 to 1e12, got '" + text + "'";
        }
        return {};
      },
      "");
}

// `--flag N`: a count in [lo, hi]; the help line shows the range and the default.
template <class T>
void add_count(CLI::App& cmd, const std::string& flag, T& value, std::uint64_t lo, std::uint64_t hi,
               const std::string& what) {
  cmd.add_option(flag, value, what + " (" + std::to_string(lo) + ".." + std::to_string(hi) + ")")
      ->type_name("N")
      ->check(whole_number(lo, hi))
      ->capture_default_str();
}

void add_seconds(CLI::App& cmd, const std::string& flag, double& value, double max, const std::string& what) {
  cmd.add_option(flag, value, what + " (above 0, at most " + std::to_string(static_cast<long>(max)) + ")")
      ->type_name("SECONDS")
      ->check(positive_seconds(max))
      ->capture_default_str();
}

// ---- commands --------------------------------------------------------------------------------

// A command that only groups others (`nines demo`): alone, it lists them and exits 0.
CLI::App& add_group(CLI::App& parent, const std::string& name, const std::string& description, const std::string& noun,
                    Action& action) {
  CLI::App* group = parent.add_subcommand(name, description);
  group->require_subcommand(0, 1);
  const std::string usage = "nines " + name + " NAME";
  group->footer("Run '" + usage + " --help' for a " + noun + "'s options.");
  group->callback([group, noun, usage, &action] {
    if (!group->get_subcommands().empty()) return;
    action = [group, noun, usage] {
      std::printf("%ss (run one with '%s', its options: '%s --help'):\n", noun.c_str(), usage.c_str(), usage.c_str());
      for (const CLI::App* sub : group->get_subcommands([](const CLI::App*) { return true; })) {
        std::printf("  %-10s %s\n", sub->get_name().c_str(), sub->get_description().c_str());
      }
      return 0;
    };
  });
  return *group;
}

void add_demo_runtime(CLI::App& demo, Action& action) {
  auto o = std::make_shared<nines::cli::RuntimeDemoOptions>();
  CLI::App* cmd =
      demo.add_subcommand("runtime", "a 3-level supervision tree of 100,000 workers under a crash storm, shown live");
  cmd->footer(
      "A chaos process crashes random workers all the time and, midway, so many of one shard that the\n"
      "shard gives up and escalates; the root restarts it. Exits 0 when every crash was recovered.");
  add_count(*cmd, "--workers", o->workers, 1, 10'000'000, "worker processes, spread over the shards");
  add_count(*cmd, "--shards", o->shards, 1, 100'000, "shard supervisors under the root, at most --workers");
  add_seconds(*cmd, "--seconds", o->seconds, 86'400, "how long the crash storm runs");
  add_count(*cmd, "--threads", o->threads, 0, 1024, "scheduler threads; 0: one per core");
  cmd->callback([o, &action] {
    if (o->shards > o->workers) {
      throw CLI::ValidationError(
          "--shards", std::to_string(o->shards) + " must not exceed --workers (" + std::to_string(o->workers) + ")");
    }
    action = [o] { return nines::cli::run_runtime_demo(*o); };
  });
}

void add_demo_models(CLI::App& demo, Action& action) {
  auto o = std::make_shared<nines::cli::ModelsDemoOptions>();
  CLI::App* cmd =
      demo.add_subcommand("models", "agents calling a flaky simulated model provider through the router, on loopback");
  cmd->footer(
      "The primary provider sends 429s, 5xx, hangs, cut streams and malformed JSON, then goes down for\n"
      "a while; the router retries and falls back to a backup. Exits 0 when every call got an answer.");
  add_count(*cmd, "--agents", o->agents, 1, 100'000, "agent processes, each making calls one after another");
  add_count(*cmd, "--calls", o->calls_per_agent, 1, 1'000'000, "calls per agent");
  cmd->callback([o, &action] { action = [o] { return nines::cli::run_models_demo(*o); }; });
}

void add_demo_service(CLI::App& demo, Action& action) {
  auto o = std::make_shared<nines::cli::DemoServiceOptions>();
  CLI::App* cmd =
      demo.add_subcommand("service", "nines serve under chaos, driven through its HTTP API (the main demo)");
  cmd->footer(
      "Starts nines serve on a demo config (embedded SQLite, a faulty sim model with an outage and a\n"
      "fallback, an MCP tool server from npm when node has it, a ledger tool), submits tasks through the\n"
      "API, kills the MCP server and then the service (kill -9) once, restarts it, and reports outcomes,\n"
      "recovery, retries, fallbacks and duplicate effects. With OPENAI_API_KEY or NINES_MODEL_BASE_URL set,\n"
      "the primary model is that API's (NINES_MODEL, default gpt-4o-mini).\n"
      "Exit status: 0 when every task reached an outcome and no effect was applied twice; 1 otherwise.");
  add_count(*cmd, "--tasks", o->tasks, 1, 100'000, "tasks to submit");
  add_count(*cmd, "--concurrency", o->concurrency, 1, 10'000, "tasks submitted and not yet ended, at most");
  add_count(*cmd, "--seed", o->seed, 0, UINT64_MAX, "the sim models' seed");
  cmd->add_flag_callback(
      "--no-kill", [o] { o->kill = false; }, "no kill -9 of the service, no MCP server kill");
  cmd->add_flag("--keep", o->keep, "keep the work directory (config, store, the service's log)");
  cmd->callback([o, &action] { action = [o] { return nines::cli::run_demo_service(*o); }; });
}

void add_sim_server(CLI::App& app, Action& action) {
  auto o = std::make_shared<nines::cli::SimServerCmdOptions>();
  CLI::App* cmd = app.add_subcommand(
      "sim-server", "the simulated model as an OpenAI-compatible API, with seeded faults, until Ctrl-C");
  cmd->footer(
      "Prints 'sim server listening on http://ADDR:PORT/v1' once it listens. The config format and\n"
      "the /sim/* endpoints: docs/sim.md.");
  cmd->add_option("--config", o->config_path, "the sim's JSON config (scenario, latency, faults); default: no faults")
      ->type_name("FILE")
      ->check(CLI::Validator(CLI::ExistingFile).description(""));  // not "FILE:FILE" in the help
  add_count(*cmd, "--port", o->port, 0, 65'535, "0: any free port, printed once listening");
  cmd->add_option("--bind", o->bind_address, "the address to listen on")->type_name("ADDR")->capture_default_str();
  cmd->add_option("--fault-key", o->fault_key,
                  "what keys the fault draws: request (its bytes; the default) or position (task input and turn)")
      ->check(CLI::IsMember({"request", "position"}));
  cmd->callback([o, &action] { action = [o] { return nines::cli::run_sim_server(*o); }; });
}

void add_check(CLI::App& app, Action& action) {
  auto o = std::make_shared<nines::cli::CheckCmdOptions>();
  CLI::App* cmd = app.add_subcommand("check", "validate a service config file (YAML) offline, reporting every error");
  cmd->footer(
      "Prints 'FILE: ok (N models, M tools, K agents)' for a valid config, else every error, one per\n"
      "line, as FILE:LINE:COLUMN: KEY.PATH: MESSAGE. Environment variables the file names (${VAR},\n"
      "api_key_env, auth tokens) must be set. The format: docs/service.md.\n"
      "Exit status: 0 valid; 1 invalid; 2 the file cannot be read, or a usage error.");
  cmd->add_option("FILE", o->path, "the config file")->required()->type_name("FILE");
  cmd->add_flag("--print", o->print, "also print the resolved config (secrets shown as [redacted])");
  cmd->callback([o, &action] { action = [o] { return nines::cli::run_check(*o); }; });
}

void add_serve(CLI::App& app, Action& action) {
  auto o = std::make_shared<nines::cli::ServeCmdOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "run the agents of a config file as a service with an HTTP API");
  cmd->footer(
      "Runs until SIGTERM or SIGINT, then stops gracefully: readiness goes false, running tasks stop at\n"
      "their next checkpoint (server.shutdown_grace), and the next start resumes them. The API:\n"
      "docs/api.md; the config: docs/service.md.\n"
      "Exit status: 0 after a graceful stop; 1 an invalid config or a failed start; 2 the config cannot\n"
      "be read, or a usage error.");
  cmd->add_option("-c,--config", o->config, "the config file (default nines.yaml)")->type_name("FILE");
  cmd->add_option_function<std::uint64_t>(
         "--port", [o](std::uint64_t p) { o->port = static_cast<std::uint16_t>(p); },
         "listen on this port instead of server.port (0: any free port)")
      ->type_name("N")
      ->check(whole_number(0, 65535));
  cmd->callback([o, &action] { action = [o] { return nines::cli::run_serve(*o); }; });
}

void add_sim_agents(CLI::App& sim, Action& action) {
  auto o = std::make_shared<nines::cli::SimAgentsCmdOptions>();
  CLI::App* cmd = sim.add_subcommand("agents", "the deterministic simulation of agent tasks under crashes, by seed");
  cmd->footer(
      "Several agent tasks on the sim model with seeded model, tool and crash faults; prints the\n"
      "invariant verdicts (and the trace with --trace). Exits 0 when every invariant held.");
  add_count(*cmd, "--seed", o->seed, 0, UINT64_MAX / 2, "the (first) seed");
  add_count(*cmd, "--seeds", o->seeds, 1, 1'000'000, "how many seeds from --seed");
  cmd->add_flag("--trace", o->trace, "print each seed's trace: events with their virtual times");
  cmd->add_option("--faults", o->faults, "engine fault points, e.g. store_commit_fail=0.05,timer_late=0.1")
      ->type_name("SPEC");
  cmd->add_flag("--unjournaled", o->unjournaled, "the broken variant: tool calls outside the effect journal");
  cmd->callback([o, &action] { action = [o] { return nines::cli::run_sim_agents(*o); }; });
}

// `nines tasks COMMAND`: each command is a subcommand of the group, all bound to one options
// struct (only the command given parses into it).
void add_tasks(CLI::App& app, Action& action) {
  auto o = std::make_shared<nines::cli::TasksCmdOptions>();
  CLI::App& tasks =
      add_group(app, "tasks", "a running service's tasks: list, show, follow, cancel, decide", "task command", action);
  const std::string exit_status =
      "Exit status: 0 ok; 1 the service answered an error; 2 a usage error; 3 the service (or\n"
      "--store) cannot be reached; 4 not found. The reference: docs/cli.md.";
  auto command = [&](const std::string& name, const std::string& description) {
    CLI::App* cmd = tasks.add_subcommand(name, description);
    cmd->footer(exit_status);
    // On every command, so that the others can say they need a service.
    cmd->add_option("--store", o->store,
                    "no service: read the store itself: sqlite:PATH, PATH.db or postgres://... "
                    "(list, show and resolve only)")
        ->type_name("STORE");
    // NINES_URL and NINES_TOKEN are read in the callback, not with CLI11's envname: CLI11 applies
    // an envname to the commands not given too, and these all share one options struct.
    CLI::Option* url = cmd->add_option("--url", o->url, "the service's base URL (default: $NINES_URL, else this)")
                           ->type_name("URL")
                           ->capture_default_str();
    CLI::Option* token =
        cmd->add_option("--token", o->token, "bearer token (default: $NINES_TOKEN); never printed")->type_name("TOKEN");
    cmd->add_flag("--json", o->json, "print the service's JSON as it is");
    cmd->callback([o, name, cmd, url, token, &action] {
      if (name == "resolve" && cmd->get_option("--applied")->count() + cmd->get_option("--not-applied")->count() != 1) {
        throw CLI::ParseError("one of --applied and --not-applied is required", kUsageError);
      }
      const char* env_url = std::getenv("NINES_URL");
      if (url->count() == 0 && env_url != nullptr && *env_url != '\0') o->url = env_url;
      const char* env_token = std::getenv("NINES_TOKEN");
      if (token->count() == 0 && env_token != nullptr) o->token = env_token;
      o->command = name;
      action = [o] { return nines::cli::run_tasks(*o); };
    });
    return cmd;
  };
  auto task_id = [&](CLI::App* cmd) {
    cmd->add_option("ID", o->task_id, "the task's id")->required()->type_name("ID");
  };

  CLI::App* list = command("list", "the tasks, as a table: id, agent, status, steps, cost, updated");
  list->add_option("--status", o->status, "only tasks in this status (finished: every ended one)")
      ->check(CLI::IsMember({"running", "needs_attention", "succeeded", "failed", "budget_exceeded", "loop_detected",
                             "cancelled", "finished"}));
  list->add_option("--agent", o->agent, "only this agent's tasks")->type_name("NAME");
  list->add_option("--limit", o->limit, "tasks per page, 1..500 (default: the service's, 50; 500 with --all)")
      ->type_name("N")
      ->check(whole_number(1, 500));
  list->add_option("--cursor", o->cursor, "start at this page (a previous answer's next_cursor)")->type_name("CURSOR");
  list->add_flag("--all", o->all, "every page, not only the first");

  CLI::App* show = command("show", "one task: its fields and outcome (needs_attention: what it waits for)");
  task_id(show);

  CLI::App* events = command("events", "the task's events, one a line; stops after task_finished");
  task_id(events);
  events->add_flag("--follow,-f", o->follow, "wait for new events until the task finishes (else: the held ones)");
  events->add_option("--last-event-id", o->last_event_id, "resume after this event id")->type_name("ID");

  task_id(command("cancel", "cancel the task (and the tasks it delegated)"));

  CLI::App* approve = command("approve", "approve a tool call that waits for approval");
  task_id(approve);
  approve->add_option("CALL_ID", o->call_id, "the call's id (the approval_wait event names it)")->required();

  CLI::App* deny = command("deny", "deny a tool call that waits for approval (the model is told)");
  task_id(deny);
  deny->add_option("CALL_ID", o->call_id, "the call's id (the approval_wait event names it)")->required();
  deny->add_option("--reason", o->reason, "why, for the model")->type_name("TEXT");

  CLI::App* resolve = command("resolve", "decide an effect of unknown outcome of a task in needs_attention");
  task_id(resolve);
  resolve->add_option("EFFECT_ID", o->effect_id, "the effect ('nines tasks show ID' names it)")->required();
  CLI::Option* applied = resolve->add_flag_callback(
      "--applied", [o] { o->applied = true; }, "the effect did happen");
  CLI::Option* not_applied = resolve->add_flag_callback(
      "--not-applied", [o] { o->applied = false; }, "it did not: it runs again");
  applied->excludes(not_applied);
  resolve->add_option("--outcome", o->outcome, "with --applied: what the tool returned, given to the model")
      ->type_name("TEXT");

  CLI::App* fork = command("fork", "a new task from model turn N of this one, started at once");
  task_id(fork);
  fork->add_option("--at-turn", o->at_turn, "the model turn to start from (default 0: every turn anew)")
      ->type_name("N")
      ->check(whole_number(0, 1'000'000));
  fork->add_option("--input", o->input, "a new user message in place of the old one")->type_name("TEXT");
  fork->add_option("--id", o->new_id, "the new task's id (default: a new one)")->type_name("NEW");
  // Set last: a subcommand takes its parent's footer when it is added.
  tasks.footer("Run 'nines tasks NAME --help' for a command's options.\n" + exit_status);
}

// `nines run AGENT INPUT`: one task in the foreground, followed live (run_cmd.hpp).
void add_run(CLI::App& app, Action& action) {
  auto o = std::make_shared<nines::cli::RunCmdOptions>();
  CLI::App* cmd = app.add_subcommand("run", "run one task on a running service, printing its events as they come");
  cmd->footer(
      "Submits the task (POST /v1/tasks), prints each event on one line until it finishes, then the\n"
      "outcome. Ctrl-C stops following (the task keeps running; 'nines tasks events ID --follow'\n"
      "follows it again); with --cancel-on-interrupt it cancels the task instead.\n"
      "Exit status: 0 the task succeeded; 5 it ended otherwise (or needs attention); 1 the service\n"
      "answered an error; 2 a usage error; 3 the service cannot be reached; 4 not found; 130\n"
      "interrupted. The reference: docs/cli.md.");
  cmd->add_option("AGENT", o->agent, "the agent (of the service's config)")->required()->type_name("AGENT");
  cmd->add_option("INPUT", o->input, "the user's message")->required()->type_name("INPUT");
  CLI::Option* url = cmd->add_option("--url", o->url, "the service's base URL (default: $NINES_URL, else this)")
                         ->type_name("URL")
                         ->capture_default_str();
  CLI::Option* token =
      cmd->add_option("--token", o->token, "bearer token (default: $NINES_TOKEN); never printed")->type_name("TOKEN");
  cmd->add_flag("--json", o->json, "print only the final task object on stdout (the events go to stderr)");
  cmd->add_option("--id", o->id, "the task's id (default: a new one)")->type_name("ID");
  cmd->add_option("--idempotency-key", o->idempotency_key, "sent as Idempotency-Key: the same key runs nothing again")
      ->type_name("KEY");
  cmd->add_option("--max-cost-usd", o->max_cost_usd, "cap on the task's cost, in US dollars (on top of the agent's)")
      ->type_name("USD")
      ->check(non_negative_number());
  cmd->add_option("--max-steps", o->max_steps, "cap on the task's steps (on top of the agent's)")
      ->type_name("N")
      ->check(whole_number(0, 1'000'000));
  cmd->add_flag("--cancel-on-interrupt", o->cancel_on_interrupt,
                "Ctrl-C cancels the task and waits for it to stop (instead of leaving it running)");
  cmd->callback([o, url, token, &action] {
    const char* env_url = std::getenv("NINES_URL");
    if (url->count() == 0 && env_url != nullptr && *env_url != '\0') o->url = env_url;
    const char* env_token = std::getenv("NINES_TOKEN");
    if (token->count() == 0 && env_token != nullptr) o->token = env_token;
    action = [o] { return nines::cli::run_run_interactive(*o); };
  });
}

// ---- errors ----------------------------------------------------------------------------------

// The command the error is about: the deepest one on the line.
const CLI::App& innermost(const CLI::App& app) {
  const CLI::App* at = &app;
  while (!at->get_subcommands().empty()) at = at->get_subcommands().front();
  return *at;
}

std::string command_path(const CLI::App& cmd) {
  std::string path = cmd.get_name();
  for (const CLI::App* p = cmd.get_parent(); p != nullptr; p = p->get_parent()) path = p->get_name() + " " + path;
  return path;
}

// "nines demo models: --agents: expected a whole number ..., got '0.5'" and where to read more.
std::string failure_message(const CLI::App* app, const CLI::Error& e) {
  const std::string path = command_path(innermost(*app));
  std::string what = e.what();
  // An option given last without its value: CLI11 says "--seconds: 1 required SECONDS missing".
  if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) != nullptr && what.ends_with(" missing")) {
    if (std::size_t colon = what.find(": 1 required "); colon != std::string::npos) {
      what = what.substr(0, colon) + " needs a value";
    }
  }
  return path + ": " + what + "\nRun '" + path + " --help' for the usage.\n";
}

// Arguments no command took. CLI11 would report them all at once, last first ("The following
// arguments were not expected: 1 --bogus"); this names the first one and what was expected instead.
void reject_leftovers(const CLI::App& app) {
  for (const CLI::App* at = &app;; at = at->get_subcommands().front()) {
    const std::vector<std::string> left = at->remaining();
    if (!left.empty()) {
      const std::string& arg = left.front();
      if (arg.starts_with("-")) throw CLI::ParseError("unknown option '" + arg + "'", kUsageError);
      const auto subs = at->get_subcommands([](const CLI::App*) { return true; });
      if (subs.empty()) throw CLI::ParseError("unexpected argument '" + arg + "'", kUsageError);
      std::string expected;
      for (const CLI::App* s : subs) expected += (expected.empty() ? "" : ", ") + s->get_name();
      const std::string noun = at->get_parent() == nullptr ? "command" : at->get_name();
      throw CLI::ParseError("unknown " + noun + " '" + arg + "' (expected one of: " + expected + ")", kUsageError);
    }
    if (at->get_subcommands().empty()) return;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("nines: a fault-tolerant runtime for AI agents", "nines");
  app.set_version_flag("--version", std::string("nines ") + nines::kVersion, "Print the version and exit");
  app.failure_message(failure_message);
  app.require_subcommand(0, 1);
  app.allow_extras();  // inherited by every command: reject_leftovers() reports them

  Action action;
  CLI::App& demo = add_group(app, "demo", "live demonstrations, on this machine only", "demo", action);
  add_demo_runtime(demo, action);
  add_demo_models(demo, action);
  add_demo_service(demo, action);
  add_sim_server(app, action);
  add_sim_agents(add_group(app, "sim", "deterministic simulations, by seed", "simulation", action), action);
  add_check(app, action);
  add_serve(app, action);
  add_tasks(app, action);
  add_run(app, action);
  app.footer("Run 'nines COMMAND --help' for a command's options.");

  try {
    app.parse(argc, argv);
    reject_leftovers(app);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kUsageError;  // CLI11's own codes (100+) differ per error
  }
  if (!action) {
    std::fputs(app.help().c_str(), stderr);
    return kUsageError;
  }
  return action();
}
