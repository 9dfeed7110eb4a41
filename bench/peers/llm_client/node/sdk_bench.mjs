// The peer side of bench/peers/llm_client: the official openai npm SDK driving the sim
// server (an OpenAI-compatible server on loopback) with `concurrency` chat calls in flight
// until `calls` have completed, after a warm-up. Prints JSON lines like the nines side:
//   calls_per_cpu_s   completed calls / CPU seconds (user + system) of this process
//   calls_per_s       completed calls / wall seconds
//   e2e_p50_us, e2e_p99_us         latency of one call as the caller sees it
//   server_p50_us, server_p99_us   the server's own time per request (its /sim/stats)
//   added_p50_us, added_p99_us     e2e minus server, percentile by percentile
// Usage: node sdk_bench.mjs BASE_URL CONCURRENCY CALLS [stream:0|1]
import OpenAI from 'openai';
import { performance } from 'node:perf_hooks';

const [baseURL, concArg, callsArg, streamArg] = process.argv.slice(2);
if (!baseURL || !concArg || !callsArg) {
  console.error('usage: node sdk_bench.mjs BASE_URL CONCURRENCY CALLS [stream:0|1]');
  process.exit(2);
}
const concurrency = Number(concArg);
const calls = Number(callsArg);
const stream = streamArg === '1';
const label = `c${concurrency}${stream ? '_stream' : ''}`;

// The SDK's own resilience (2 retries with backoff, a timeout) is on, as in real use.
const client = new OpenAI({ baseURL, apiKey: 'sk-bench-not-a-key', maxRetries: 2, timeout: 60_000 });
const messages = [
  { role: 'system', content: 'You are a benchmark.' },
  { role: 'user', content: 'Say hello in a short sentence.' },
];

async function one() {
  if (!stream) {
    const r = await client.chat.completions.create({ model: 'sim', messages, max_tokens: 64 });
    if (!r.choices?.[0]?.message) throw new Error('no message');
    return;
  }
  const s = await client.chat.completions.create({ model: 'sim', messages, max_tokens: 64, stream: true });
  let text = '';
  for await (const chunk of s) text += chunk.choices?.[0]?.delta?.content ?? '';
  if (!text) throw new Error('empty stream');
}

async function run(n, latencies) {
  let next = 0;
  let failed = 0;
  async function worker() {
    while (next < n) {
      next++;
      const t0 = performance.now();
      try {
        await one();
        if (latencies) latencies.push((performance.now() - t0) * 1000);
      } catch (e) {
        failed++;
        if (failed <= 3) console.error(`sdk: call failed: ${e.message}`);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return failed;
}

function pct(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function emit(metric, value, unit) {
  console.log(JSON.stringify({ bench: 'llm_client', system: 'openai-sdk', metric: `${metric}_${label}`, value, unit }));
}

const root = baseURL.replace(/\/v1\/?$/, '');
await run(Math.min(calls, Math.max(200, concurrency)), null);  // warm-up: connections, JIT
await fetch(`${root}/sim/stats/reset`, { method: 'POST' });
const latencies = [];
const cpu0 = process.cpuUsage();
const t0 = performance.now();
const failed = await run(calls, latencies);
const wall = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
const stats = await (await fetch(`${root}/sim/stats`)).json();
const cpuSeconds = (cpu.user + cpu.system) / 1e6;
latencies.sort((a, b) => a - b);
const ok = latencies.length;
emit('calls_per_cpu_s', ok / cpuSeconds, 'calls/cpu-s');
emit('calls_per_s', ok / wall, 'calls/s');
emit('e2e_p50_us', pct(latencies, 50), 'us');
emit('e2e_p99_us', pct(latencies, 99), 'us');
emit('server_p50_us', stats.latency_p50_us, 'us');
emit('server_p99_us', stats.latency_p99_us, 'us');
emit('added_p50_us', pct(latencies, 50) - stats.latency_p50_us, 'us');
emit('added_p99_us', pct(latencies, 99) - stats.latency_p99_us, 'us');
if (failed > 0) emit('failed_calls', failed, 'calls');
