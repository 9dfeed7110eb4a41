// langgraph_bench.mjs -- LangGraph.js (npm, Node) peer of nines_durable_bench (sqlite mode).
//
// Run:  node langgraph_bench.mjs DIR S R1 R16 R256
// Prints one JSON line per metric on stdout (notes go to stderr):
//   {"bench":"sqlite_cC","system":"langgraph","metric":"steps_per_s","value":...,"unit":"1/s"}
//   {"bench":"sqlite_cC","system":"langgraph","metric":"commit_p50_us", ...}  (and commit_p99_us)
// Exit status 1 if any invocation fails or returns the wrong state.
//
// The graph: a StateGraph with state {value: string, count: number} (default last-value
// channels) and S nodes in a chain, START -> n0 -> n1 -> ... -> n(S-1) -> END; node i returns
// {value: <the same 100-byte string>, count: state.count + 1}: a small state update and no
// other work, like a nines step that returns a 100-byte string. Compiled with a SqliteSaver
// checkpointer (@langchain/langgraph-checkpoint-sqlite, SqliteSaver.fromConnString) on a new
// file DIR/langgraph_cC.db for each concurrency C, with every default left as it is:
//   - SqliteSaver.setup() sets journal_mode=WAL and nothing else; better-sqlite3 12 is
//     compiled with SQLITE_DEFAULT_WAL_SYNCHRONOUS=1, so synchronous is NORMAL: a commit
//     writes the WAL but does not fsync it (the WAL is synced at checkpoints only). A
//     checkpoint survives the process being killed, not power loss or an OS crash. The values
//     actually in effect are read back from the connection and printed on stderr.
//   - durability: LangGraph's default ("async": the checkpoint of a step is saved while the
//     next step starts; invoke() returns after all are saved).
//   - recursionLimit is raised to S + 10 (the default, 25, stops a graph after 25 steps); it
//     only bounds the number of steps.
// For each C in {1, 16, 256}: one invocation warms up, then C concurrent "runners" (async
// loops on the one JS thread) each invoke the graph R_C times one after another, each
// invocation with its own thread_id, so C invocations are in flight at any time. Timed from
// the start of the runners until all have finished:
//   steps_per_s       C * R_C * S / elapsed
//   commit_p50_us/_p99_us  the time of each step as the graph sees it: from node i starting to
//                     node i+1 starting (and from the last node starting to invoke() returning),
//                     which includes the step's writes and checkpoint (better-sqlite3 is
//                     synchronous: they run on this thread) and the scheduling between steps,
//                     interleaved with the other invocations in flight. The comparable nines
//                     figure is the time of one `co_await wf.step(...)`.

import { performance } from 'node:perf_hooks';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { Annotation, END, START, StateGraph } from '@langchain/langgraph';
import { SqliteSaver } from '@langchain/langgraph-checkpoint-sqlite';

const require = createRequire(import.meta.url);
const CONCURRENCY = [1, 16, 256];
const PAYLOAD = 'p'.repeat(100);

function emit(bench, metric, value, unit) {
  process.stdout.write(JSON.stringify({ bench, system: 'langgraph', metric, value, unit }) + '\n');
}

// Nearest rank (p in [0, 100]), the method of the nines side (include/nines/core/percentile.hpp).
function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  const rank = Math.ceil((p * sorted.length) / 100);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

function removeDb(file) {
  for (const suffix of ['', '-wal', '-shm']) fs.rmSync(file + suffix, { force: true });
}

// starts: thread_id -> array of node start times (ms, performance.now()).
function buildGraph(steps, starts) {
  const State = Annotation.Root({
    value: Annotation(),
    count: Annotation(),
  });
  const g = new StateGraph(State);
  for (let i = 0; i < steps; i++) {
    g.addNode(`n${i}`, (state, config) => {
      starts.get(config.configurable.thread_id).push(performance.now());
      return { value: PAYLOAD, count: state.count + 1 };
    });
  }
  g.addEdge(START, 'n0');
  for (let i = 1; i < steps; i++) g.addEdge(`n${i - 1}`, `n${i}`);
  g.addEdge(`n${steps - 1}`, END);
  return g;
}

async function invokeOnce(app, threadId, steps, starts, latencies) {
  starts.set(threadId, []);
  const out = await app.invoke(
    { value: '', count: 0 },
    { configurable: { thread_id: threadId }, recursionLimit: steps + 10 },
  );
  const end = performance.now();
  if (out.count !== steps || out.value !== PAYLOAD) {
    throw new Error(`invocation ${threadId}: count ${out.count}, expected ${steps}`);
  }
  const s = starts.get(threadId);
  starts.delete(threadId);
  if (s.length !== steps) throw new Error(`invocation ${threadId}: ${s.length} node starts, expected ${steps}`);
  if (latencies) {
    for (let i = 1; i < s.length; i++) latencies.push((s[i] - s[i - 1]) * 1000);
    latencies.push((end - s[s.length - 1]) * 1000);
  }
}

async function runConfig(dir, c, steps, reps) {
  const bench = `sqlite_c${c}`;
  const file = path.join(dir, `langgraph_c${c}.db`);
  removeDb(file);
  const saver = SqliteSaver.fromConnString(file);
  const starts = new Map();
  const app = buildGraph(steps, starts).compile({ checkpointer: saver });

  await invokeOnce(app, `warm-c${c}`, steps, starts, null);  // also runs saver.setup()
  if (c === 1) {
    const jm = saver.db.pragma('journal_mode', { simple: true });
    const sync = saver.db.pragma('synchronous', { simple: true });
    const names = ['OFF', 'NORMAL', 'FULL', 'EXTRA'];
    console.error(`langgraph: SqliteSaver connection: journal_mode=${jm} synchronous=${sync} ` +
                  `(${names[sync] ?? '?'}); LangGraph durability: default ("async")`);
  }

  const latencies = [];
  const t0 = performance.now();
  const runners = [];
  for (let p = 0; p < c; p++) {
    runners.push((async () => {
      for (let r = 0; r < reps; r++) await invokeOnce(app, `c${c}-${p}-${r}`, steps, starts, latencies);
    })());
  }
  await Promise.all(runners);
  const elapsed = (performance.now() - t0) / 1000;
  const total = c * reps * steps;
  latencies.sort((a, b) => a - b);
  emit(bench, 'steps_per_s', total / elapsed, '1/s');
  emit(bench, 'commit_p50_us', percentile(latencies, 50), 'us');
  emit(bench, 'commit_p99_us', percentile(latencies, 99), 'us');
  saver.db.close();
  removeDb(file);
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length !== 5) {
    console.error('usage: node langgraph_bench.mjs DIR S R1 R16 R256');
    process.exit(2);
  }
  const [dir, ...nums] = args;
  const [steps, ...reps] = nums.map((x) => Number.parseInt(x, 10));
  if (!(steps > 0) || reps.some((r) => !(r > 0))) {
    console.error('S and R must be > 0');
    process.exit(2);
  }
  const version = (name) => require(`${name}/package.json`).version;
  console.error(`langgraph: node ${process.version}, @langchain/langgraph ${version('@langchain/langgraph')}, ` +
                `@langchain/langgraph-checkpoint-sqlite ${version('@langchain/langgraph-checkpoint-sqlite')}, ` +
                `better-sqlite3 ${version('better-sqlite3')}`);
  for (let i = 0; i < CONCURRENCY.length; i++) await runConfig(dir, CONCURRENCY[i], steps, reps[i]);
}

main().catch((e) => {
  console.error(`langgraph_bench: ${e.stack ?? e}`);
  process.exit(1);
});
