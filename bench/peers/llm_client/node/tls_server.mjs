// An OpenAI-compatible chat endpoint over TLS for bench/peers/llm_client's TLS rows: HTTP/2 and
// HTTP/1.1 by ALPN (node:http2 with allowHTTP1, as the providers' APIs offer both), every
// answer the sim server's for the benchmark's request, after a delay drawn uniformly from
// [MIN_MS, MAX_MS], with the sim server's x-sim-server-us header (the delay, in microseconds).
//   node tls_server.mjs CERT_PEM KEY_PEM PORT MIN_MS MAX_MS
// Listens on 127.0.0.1:PORT (0: any free port) until killed and prints its base URL,
// https://127.0.0.1:N. Not a model: a TLS peer that holds calls in flight.
import fs from 'node:fs';
import http2 from 'node:http2';

const [cert, key, port, minMs, maxMs] = process.argv.slice(2);
const min = Number(minMs), max = Number(maxMs);
const body = JSON.stringify({
  id: 'chatcmpl-tls', object: 'chat.completion', created: 1735689600, model: 'sim',
  system_fingerprint: 'nines-sim',
  choices: [{index: 0, message: {role: 'assistant', content: 'Hello! This is the simulated model answering a benchmark call.', refusal: null}, logprobs: null, finish_reason: 'stop'}],
  usage: {prompt_tokens: 8, completion_tokens: 16, total_tokens: 24},
});
const server = http2.createSecureServer({
  cert: fs.readFileSync(cert), key: fs.readFileSync(key), allowHTTP1: true,
  settings: {maxConcurrentStreams: 100},
});
server.on('request', (req, res) => {
  req.resume();  // the request body is not read
  const delay = min + Math.random() * (max - min);
  setTimeout(() => {
    res.writeHead(200, {'content-type': 'application/json', 'x-sim-server-us': String(Math.round(delay * 1000))});
    res.end(body);
  }, delay);
});
server.listen(Number(port), '127.0.0.1', () => console.log(`https://127.0.0.1:${server.address().port}`));
