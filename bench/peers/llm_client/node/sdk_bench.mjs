// The peer side of bench/peers/llm_client: the official openai npm SDK driving the sim
// server (an OpenAI-compatible server on loopback) with `concurrency` chat calls in flight
// all the time: WARMUP_S seconds of warm-up, then a window of MEASURE_S seconds. Prints JSON
// lines like the nines side:
//   calls_per_cpu_s   calls completed in the window / CPU seconds (user + system) of this
//                     process in the window
//   calls_per_s       calls completed in the window / MEASURE_S
//   (latencies: the calls that started and ended inside the window)
//   e2e_p50_us, e2e_p99_us         latency of one call as the caller sees it
//   server_p50_us, server_p99_us   the server's own time per request (its /sim/stats)
//   added_p50_us, added_p99_us     per call: e2e minus the server's own time for that call
//                                  (its x-sim-server-us response header)
// Usage: node sdk_bench.mjs BASE_URL CONCURRENCY WARMUP_S MEASURE_S [stream:0|1]
import OpenAI from 'openai';
import { performance } from 'node:perf_hooks';

const [baseURL, concArg, warmArg, measureArg, streamArg] = process.argv.slice(2);
if (!baseURL || !concArg || !warmArg || !measureArg) {
  console.error('usage: node sdk_bench.mjs BASE_URL CONCURRENCY WARMUP_S MEASURE_S [stream:0|1]');
  process.exit(2);
}
const concurrency = Number(concArg);
const warmupMs = Number(warmArg) * 1000;
const measureMs = Number(measureArg) * 1000;
const stream = streamArg === '1';
const tag = process.env.NINES_BENCH_TAG;  // a suffix for the metric names, as the nines side's
const label = `c${concurrency}${stream ? '_stream' : ''}${tag ? `_${tag}` : ''}`;

// The SDK's own resilience (2 retries with backoff, a timeout) is on, as in real use.
const client = new OpenAI({ baseURL, apiKey: 'sk-bench-not-a-key', maxRetries: 2, timeout: 60_000 });
const messages = [
  { role: 'system', content: 'You are a benchmark.' },
  { role: 'user', content: 'Say hello in a short sentence.' },
];

// One call; the server's own time for it (its x-sim-server-us header), in microseconds.
async function one() {
  if (!stream) {
    const { data, response } = await client.chat.completions
      .create({ model: 'sim', messages, max_tokens: 64 })
      .withResponse();
    if (!data.choices?.[0]?.message) throw new Error('no message');
    return Number(response.headers.get('x-sim-server-us'));
  }
  const { data: s, response } = await client.chat.completions
    .create({ model: 'sim', messages, max_tokens: 64, stream: true })
    .withResponse();
  let text = '';
  for await (const chunk of s) text += chunk.choices?.[0]?.delta?.content ?? '';
  if (!text) throw new Error('empty stream');
  return Number(response.headers.get('x-sim-server-us'));
}

// `concurrency` workers call until the window ends; latencies of calls inside the window.
async function run(windowStart, windowEnd, latencies, added, counts) {
  async function worker() {
    for (let t0 = performance.now(); t0 < windowEnd; t0 = performance.now()) {
      let serverUs;
      try {
        serverUs = await one();
      } catch (e) {
        counts.failed++;
        if (counts.failed <= 3) console.error(`sdk: call failed: ${e.message}`);
        continue;
      }
      const t1 = performance.now();
      if (t1 >= windowStart && t1 <= windowEnd) counts.completed++;
      if (t0 < windowStart || t1 > windowEnd) continue;
      const e2e = (t1 - t0) * 1000;
      latencies.push(e2e);
      added.push(e2e - serverUs);
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
}

// Nearest rank, the method of the nines side (include/nines/core/percentile.hpp).
function pct(sorted, p) {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p * sorted.length) / 100);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

function emit(metric, value, unit) {
  console.log(JSON.stringify({ bench: 'llm_client', system: 'openai-sdk', metric: `${metric}_${label}`, value, unit }));
}

const root = baseURL.replace(/\/v1\/?$/, '');
const latencies = [];
const added = [];
const counts = { completed: 0, failed: 0 };
const windowStart = performance.now() + warmupMs;
const windowEnd = windowStart + measureMs;
let cpu0, cpu;
const sampler = (async () => {
  await new Promise((r) => setTimeout(r, windowStart - performance.now()));
  cpu0 = process.cpuUsage();
  await fetch(`${root}/sim/stats/reset`, { method: 'POST' });
  await new Promise((r) => setTimeout(r, windowEnd - performance.now()));
  cpu = process.cpuUsage(cpu0);
})();
await run(windowStart, windowEnd, latencies, added, counts);
await sampler;
const stats = await (await fetch(`${root}/sim/stats`)).json();
const cpuSeconds = (cpu.user + cpu.system) / 1e6;
latencies.sort((a, b) => a - b);
added.sort((a, b) => a - b);
emit('calls_per_cpu_s', counts.completed / cpuSeconds, 'calls/cpu-s');
emit('calls_per_s', counts.completed / (measureMs / 1000), 'calls/s');
emit('e2e_p50_us', pct(latencies, 50), 'us');
emit('e2e_p99_us', pct(latencies, 99), 'us');
emit('server_p50_us', stats.latency_p50_us, 'us');
emit('server_p99_us', stats.latency_p99_us, 'us');
emit('added_p50_us', pct(added, 50), 'us');
emit('added_p99_us', pct(added, 99), 'us');
if (counts.failed > 0) emit('failed_calls', counts.failed, 'calls');
