// cockatiel_bench.mjs -- cockatiel (npm, Node) peer of nines_resilience_bench.
//
// Measures what a full resilience pipeline costs around a call that does nothing, and prints
// one JSON line per metric on stdout (progress notes go to stderr):
//   {"bench":"pipeline_1thread","system":"cockatiel","metric":"ns_per_call","value":...,"unit":"ns"}
//   {"bench":"pipeline_2threads","system":"cockatiel","metric":"calls_per_s","value":...,"unit":"1/s"}
//
// Run:  node cockatiel_bench.mjs [N]      (N defaults to 1,000,000)
// Exit status 1 if any call did not return the expected value (nothing should fail here).
//
// cockatiel 4 (pinned in package.json) is ESM only and declares engines node >= 22, so npm
// warns (EBADENGINE) on this machine's Node 20 (and would on Debian's Node 18) but installs
// it; it runs on Node 20 (the newest runtime API its code uses is structuredClone, Node 17).
// This file imports it as an ES module already; the API used here is unchanged from 3.x.
//
// The pipeline, outermost first, in the order of nines' Pipeline (pipeline.hpp: retry ->
// breaker -> bulkhead -> rate limiter -> attempt timeout -> call), built with cockatiel's
// wrap(retry, breaker, bulkhead, rate limiter, timeout):
//   retry     handleAll, maxAttempts 2, ExponentialBackoff (no jitter, 100 ms first delay, 10 s
//             cap: nines' Backoff::exponential(100ms, 10s)). cockatiel's maxAttempts counts
//             retries after the first attempt, nines' max_attempts counts every attempt: both
//             mean at most 3 attempts. No call fails in this benchmark, so no retry happens.
//   breaker   circuitBreaker(handleAll, ConsecutiveBreaker(5), halfOpenAfter 10 s)
//   bulkhead  bulkhead(1000 concurrent, queue 1000)
//   timeout   timeout(1 s, {strategy: TimeoutStrategy.Cooperative, abortOnReturn: false}).
//             Cooperative because that is what a nines attempt timeout is: a deadline scope
//             the callee's own waits honour (Context::with_deadline), not a race that abandons
//             the callee.
//             abortOnReturn: false because a nines deadline scope signals nothing when the
//             call returns (it just restores the previous deadline). Both choices are also
//             the cheapest for cockatiel, so the comparison leans its way: every timeout call
//             creates an AbortController and arms a setTimeout, which on Node 20 is most of
//             the pipeline's cost; Aggressive adds a Promise.race and another async wrapper,
//             and the default abortOnReturn: true adds dispatching an abort event on every
//             return (the timeout policy alone: 12-19 us per call instead of about 9 us here).
//   rate limiter: cockatiel has none. A minimal token bucket (TokenBucket below: lazy refill
//             from performance.now() at each call, like nines' RateLimiter reads its clock) is
//             checked by a plain function in the same call path, so the work per call is
//             comparable: the execute() of a bare object passed to wrap() between the
//             bulkhead and the timeout, where nines has its limiter. Its limit (burst 1e9,
//             refill 1e9 per second) never binds here: no call is rate limited.
//   the call: an async function that does nothing and returns a resolved value (42).
//
// (a) pipeline_1thread / ns_per_call: on the main thread, warm up (max(10,000, N/5) calls),
//     then N sequential `await policy.execute(fn)`; wall time (process.hrtime.bigint) / N.
// (b) pipeline_2threads / calls_per_s: two worker_threads, each builds its own pipeline, warms
//     up like (a), reports ready; the main thread then releases both at once and waits until
//     both have run N sequential calls. Value = 2N / wall time measured on the main thread
//     (from the release to the last "done" message).
//     Per-isolate: cockatiel policies are plain JS objects living in one isolate and cannot be
//     shared between worker_threads, so each worker has its own retry, breaker, bulkhead,
//     timeout and token bucket (no contention between them). In nines both threads share one
//     pipeline (one breaker, one bulkhead, one rate limiter), which is the harder case.
// "One thread" means one JS thread: V8 also runs GC helper threads, and so uses more CPU time
// than that on this 2-core machine.

import { performance } from 'node:perf_hooks';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import {
  ConsecutiveBreaker,
  ExponentialBackoff,
  TimeoutStrategy,
  bulkhead,
  circuitBreaker,
  handleAll,
  noJitterGenerator,
  retry,
  timeout,
  wrap,
} from 'cockatiel';

const EXPECTED = 42;

class RateLimitedError extends Error {}

// Token bucket: at most `capacity` units; refills continuously at `perSecond`, computed lazily
// from the clock on each call (no timers).
class TokenBucket {
  constructor(capacity, perSecond) {
    this.capacity = capacity;
    this.perMs = perSecond / 1000;
    this.tokens = capacity;
    this.last = performance.now();
  }

  tryTake(units) {
    const now = performance.now();
    const tokens = Math.min(this.capacity, this.tokens + (now - this.last) * this.perMs);
    this.last = now;
    if (tokens < units) {
      this.tokens = tokens;
      return false;
    }
    this.tokens = tokens - units;
    return true;
  }
}

function makePipeline() {
  const bucket = new TokenBucket(1e9, 1e9);
  // Not a cockatiel policy: the token-bucket check, then the next layer (wrap() only calls
  // execute(fn, signal) on each layer).
  const rateLimit = {
    execute(fn, signal) {
      if (!bucket.tryTake(1)) throw new RateLimitedError('rate limited');
      return fn({ signal });
    },
  };
  const policy = wrap(
    retry(handleAll, {
      maxAttempts: 2,
      backoff: new ExponentialBackoff({
        generator: noJitterGenerator,
        initialDelay: 100,
        maxDelay: 10_000,
      }),
    }),
    circuitBreaker(handleAll, { halfOpenAfter: 10_000, breaker: new ConsecutiveBreaker(5) }),
    bulkhead(1000, 1000),
    rateLimit,
    timeout(1000, { strategy: TimeoutStrategy.Cooperative, abortOnReturn: false }),
  );
  // The call that does nothing.
  const call = async () => EXPECTED;
  return { policy, call };
}

// N sequential calls through the pipeline; returns how many returned the expected value.
async function loop(pipeline, n) {
  const { policy, call } = pipeline;
  let ok = 0;
  for (let i = 0; i < n; i++) {
    if ((await policy.execute(call)) === EXPECTED) ok++;
  }
  return ok;
}

const warmupCalls = (n) => Math.max(10_000, Math.floor(n / 5));

function emit(bench, metric, value, unit) {
  const v = Number(value.toPrecision(6));
  console.log(JSON.stringify({ bench, system: 'cockatiel', metric, value: v, unit }));
}

function note(msg) {
  process.stderr.write(`[cockatiel] ${msg}\n`);
}

async function workerMain() {
  const { n } = workerData;
  const pipeline = makePipeline();
  const warm = await loop(pipeline, warmupCalls(n));
  parentPort.postMessage({ type: 'ready', warm });
  await new Promise((resolve) => parentPort.once('message', resolve));
  const t0 = process.hrtime.bigint();
  const ok = await loop(pipeline, n);
  const ns = Number(process.hrtime.bigint() - t0);
  parentPort.postMessage({ type: 'done', ok, ns });
}

function startWorker(n) {
  const w = new Worker(fileURLToPath(import.meta.url), { workerData: { n } });
  const ready = new Promise((resolve, reject) => {
    w.once('error', reject);
    w.on('message', (m) => {
      if (m.type === 'ready') resolve(m);
    });
  });
  const done = new Promise((resolve, reject) => {
    w.once('error', reject);
    w.on('message', (m) => {
      if (m.type === 'done') resolve(m);
    });
  });
  done.catch(() => {}); // reported through `ready` first, or awaited below
  return { w, ready, done };
}

async function main() {
  const arg = process.argv[2];
  const n = arg === undefined ? 1_000_000 : Number(arg);
  if (!Number.isSafeInteger(n) || n <= 0) {
    process.stderr.write(`usage: node cockatiel_bench.mjs [N]  (N a positive integer, got ${arg})\n`);
    process.exit(2);
  }
  const version = createRequire(import.meta.url)('cockatiel/package.json').version;
  note(`node ${process.version}, cockatiel ${version}, N=${n}, warm-up ${warmupCalls(n)} calls`);
  let failed = 0;

  // (a) one thread
  {
    const pipeline = makePipeline();
    const warm = await loop(pipeline, warmupCalls(n));
    failed += warmupCalls(n) - warm;
    const t0 = process.hrtime.bigint();
    const ok = await loop(pipeline, n);
    const ns = Number(process.hrtime.bigint() - t0);
    failed += n - ok;
    note(`1 thread: ${n} calls in ${(ns / 1e6).toFixed(1)} ms`);
    emit('pipeline_1thread', 'ns_per_call', ns / n, 'ns');
  }

  // (b) two threads, one pipeline each (per-isolate)
  {
    const workers = [startWorker(n), startWorker(n)];
    const readies = await Promise.all(workers.map((x) => x.ready));
    for (const r of readies) failed += warmupCalls(n) - r.warm;
    const t0 = process.hrtime.bigint();
    for (const x of workers) x.w.postMessage('go');
    const dones = await Promise.all(workers.map((x) => x.done));
    const ns = Number(process.hrtime.bigint() - t0);
    for (const d of dones) failed += n - d.ok;
    note(`2 threads: ${2 * n} calls in ${(ns / 1e6).toFixed(1)} ms` +
         ` (per worker: ${dones.map((d) => (d.ns / n).toFixed(1) + ' ns/call').join(', ')})`);
    emit('pipeline_2threads', 'calls_per_s', (2 * n) / (ns / 1e9), '1/s');
    await Promise.all(workers.map((x) => x.w.terminate()));
  }

  if (failed !== 0) {
    note(`FAILED: ${failed} calls did not return ${EXPECTED}`);
    process.exit(1);
  }
}

if (isMainThread) {
  main().catch((e) => {
    note(`FAILED: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  });
} else {
  workerMain().catch((e) => {
    // An uncaught rejection would end the worker with an 'error' event; make it explicit.
    throw e;
  });
}
