// langgraph_agent.mjs -- the LangGraph.js worker of bench/peers/agents: runs the benchmark's
// agent tasks with LangGraph's prebuilt ReAct agent, the way a LangGraph user would, and
// resumes the unfinished ones when started again after a kill -9.
//
// Run:  node langgraph_agent.mjs --spec SPEC.json --sim URL --ledger URL --db FILE
//                                --progress FILE --tasks N [--concurrency C]
//   --sim       the OpenAI-compatible base URL of `nines sim-server` (http://127.0.0.1:P/v1)
//   --ledger    the ledger's base URL (ledger.mjs)
//   --db        the SqliteSaver file (kept across restarts: it is how LangGraph resumes)
//   --progress  a file this worker appends "done task-<k> ok|failed ..." to (kept across
//               restarts, so a restarted worker skips the tasks that already ended)
//   --tasks N   tasks task-0 .. task-(N-1); --concurrency C of them in flight at once
//               (default 20: C async runners on the one JS thread pull from the list)
//
// stdout, one line each: "worker start pid=<pid> todo=<n>", "resume task-<k>" (a thread that
// was in flight at the kill), "done task-<k> ok" or "done task-<k> failed <reason>", and at the end "summary {json}" with the worker's CPU time
// (process.cpuUsage() from before the first task to after the last, user + system), wall time,
// tool calls made, and tasks ended ok/failed in this run. Exit 0 once every task has ended
// (ok or failed); a kill -9 ends it at any point, and the next start picks up from the files.
//
// The agent: createReactAgent (@langchain/langgraph/prebuilt) with
//   - llm: ChatOpenAI (@langchain/openai) on the sim server (Chat Completions, not streamed),
//     maxRetries 6, LangChain's default: its AsyncCaller retries a failed call up to 6 times
//     with p-retry's exponential backoff (1 s * 2^n, times a random factor in [1, 2]), on every
//     error but a 400/401/402/403/404/405/406/407/409/413 or an abort. That is the retry policy
//     here (the openai SDK inside has maxRetries 0; createReactAgent takes no node RetryPolicy).
//     A 500/503 and a malformed body (a JSON SyntaxError) are both retried.
//   - tools: 9 read-only lookups that answer from their argument, and `charge`, which POSTs
//     {"reference": "<thread_id>/<reference the model gave>"} to the ledger's /charges with no
//     Idempotency-Key: LangGraph has no idempotency of its own for tool calls, and its
//     ToolNode gives the tool nothing stable to build one from (the tool call id is the
//     model's), so a LangGraph user's tool sends none.
//   - ToolNode's defaults: an unknown tool (the sim's hallucinated call) or a throwing tool
//     becomes an error ToolMessage the model sees, and the loop goes on.
//   - checkpointSaver: SqliteSaver (@langchain/langgraph-checkpoint-sqlite) on --db, with
//     LangGraph's default durability ("async": a step's checkpoint is written while the next
//     step starts).
//   - recursionLimit 50 per invoke (the default 25 would stop a task that needs 21 steps after
//     two hallucinated tool calls).
// Each task is thread_id task-<k>. Resuming is LangGraph's documented way: if the thread has a
// checkpoint on the same checkpointer (getState() shows messages), invoke(null, {configurable:
// {thread_id}}) continues from the last saved checkpoint: the writes of nodes that finished in
// the step that was running at the kill (pending writes) are kept, the nodes that had not
// finished run again; on a thread that had already finished it runs nothing and returns the
// final state. Without a checkpoint the task starts from the user message. (getState().next
// cannot tell "finished" from "to resume": it is [] for a thread killed after the tools node
// saved its pending writes but before the step's checkpoint, which invoke(null) completes.)
// A task ends ok when the final message is the scenario's answer with no tool calls; it ends
// failed when invoke() throws (a model call that failed 7 times, the recursion limit) or the
// answer is not the scenario's.
import fs from 'node:fs';
import { ChatOpenAI } from '@langchain/openai';
import { tool } from '@langchain/core/tools';
import { HumanMessage } from '@langchain/core/messages';
import { createReactAgent } from '@langchain/langgraph/prebuilt';
import { SqliteSaver } from '@langchain/langgraph-checkpoint-sqlite';

function parseArgs(argv) {
  const o = { concurrency: 20 };
  const names = { '--spec': 'spec', '--sim': 'sim', '--ledger': 'ledger', '--db': 'db', '--progress': 'progress',
    '--tasks': 'tasks', '--concurrency': 'concurrency' };
  for (let i = 0; i < argv.length; i += 2) {
    const k = names[argv[i]];
    if (!k || i + 1 >= argv.length) {
      process.stderr.write(`langgraph_agent: bad argument ${argv[i]}\n`);
      process.exit(2);
    }
    o[k] = argv[i + 1];
  }
  for (const k of ['spec', 'sim', 'ledger', 'db', 'progress', 'tasks']) {
    if (o[k] === undefined) {
      process.stderr.write(`langgraph_agent: --${k} is required\n`);
      process.exit(2);
    }
  }
  o.tasks = Number(o.tasks);
  o.concurrency = Number(o.concurrency);
  return o;
}

const fill = (template, vars) => template.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));

const opts = parseArgs(process.argv.slice(2));
const spec = JSON.parse(fs.readFileSync(opts.spec, 'utf8'));
let toolCalls = 0;

const tools = spec.tools.map((t) => {
  const schema = {
    type: 'object',
    properties: { [t.key]: { type: 'string' } },
    required: [t.key],
    additionalProperties: false,
  };
  const fn = t.name === 'charge'
    ? async (input, config) => {
      toolCalls++;
      const task = config.configurable.thread_id;
      const reference = fill(spec.charge_reference, { task, reference: input[t.key] });
      const res = await fetch(`${opts.ledger}/charges`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ reference }),
      });
      const body = await res.json();
      if (!res.ok) throw new Error(`ledger answered ${res.status}: ${JSON.stringify(body)}`);
      return fill(spec.charge_result, { reference, charge_id: body.id });
    }
    : async (input, config) => {
      toolCalls++;
      return fill(spec.lookup_result, { tool: t.name, key: input[t.key], task: config.configurable.thread_id });
    };
  return tool(fn, { name: t.name, description: t.description, schema });
});

const llm = new ChatOpenAI({
  model: 'sim-1',
  apiKey: 'sim',
  configuration: { baseURL: opts.sim },
  maxRetries: 6,
});
const checkpointer = SqliteSaver.fromConnString(opts.db);
const agent = createReactAgent({ llm, tools, prompt: spec.system_prompt, checkpointSaver: checkpointer });

// Tasks that already ended in an earlier run (ok or failed) are not run again.
const ended = new Set();
if (fs.existsSync(opts.progress)) {
  for (const line of fs.readFileSync(opts.progress, 'utf8').split('\n')) {
    const m = /^done (\S+) /.exec(line);
    if (m) ended.add(m[1]);
  }
}
const todo = [];
for (let k = 0; k < opts.tasks; k++) if (!ended.has(`task-${k}`)) todo.push(`task-${k}`);

function record(task, ok, reason) {
  const line = ok ? `done ${task} ok` : `done ${task} failed ${String(reason).replace(/\s+/g, ' ').slice(0, 200)}`;
  fs.appendFileSync(opts.progress, line + '\n');
  process.stdout.write(line + '\n');
  return ok;
}

function finalOk(messages) {
  const last = messages?.[messages.length - 1];
  if (!last || last._getType?.() !== 'ai' || (last.tool_calls?.length ?? 0) > 0) return [false, 'no final answer'];
  if (last.content !== spec.answer) return [false, `unexpected answer: ${JSON.stringify(last.content).slice(0, 80)}`];
  return [true, ''];
}

let resumed = 0;
async function runTask(task) {
  const config = { configurable: { thread_id: task }, recursionLimit: 50 };
  try {
    const state = await agent.getState(config);
    let result;
    if ((state.values?.messages?.length ?? 0) > 0) {
      // Not state.next: it is [] both for a finished thread and for one killed after a step's
      // node wrote its results (pending writes) but before the step's checkpoint, which
      // invoke(null) still has to take further. invoke(null) does the right thing for both.
      if (state.next.length > 0 || state.tasks.length > 0) {
        resumed++;
        process.stdout.write(`resume ${task}\n`);
      }
      result = await agent.invoke(null, config);
    } else {
      result = await agent.invoke({ messages: [new HumanMessage(fill(spec.user_message, { task }))] }, config);
    }
    const [ok, reason] = finalOk(result.messages);
    return record(task, ok, reason);
  } catch (e) {
    return record(task, false, `${e?.name ?? 'Error'}: ${e?.message ?? e}`);
  }
}

process.stdout.write(`worker start pid=${process.pid} todo=${todo.length}\n`);
const cpu0 = process.cpuUsage();
const t0 = performance.now();
let next = 0, nOk = 0, nFailed = 0;
async function runner() {
  while (next < todo.length) {
    const task = todo[next++];
    if (await runTask(task)) nOk++; else nFailed++;
  }
}
await Promise.all(Array.from({ length: Math.max(1, opts.concurrency) }, runner));
const cpu = process.cpuUsage(cpu0);
const summary = {
  tasks_run: todo.length,
  ok: nOk,
  failed: nFailed,
  resumed,
  tool_calls: toolCalls,
  cpu_user_us: cpu.user,
  cpu_system_us: cpu.system,
  wall_s: (performance.now() - t0) / 1000,
};
process.stdout.write(`summary ${JSON.stringify(summary)}\n`);
