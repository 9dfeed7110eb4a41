// ledger.mjs -- the side-effect tool's server for bench/peers/agents: a payment ledger on
// loopback that counts how often each charge was applied, so duplicates show.
//
// Run:  node ledger.mjs [--port N] [--hold REF[,REF...]]
// Prints "ledger listening on http://127.0.0.1:PORT" once it listens; stops on SIGINT/SIGTERM.
//
// Routes (bodies are JSON):
//   POST /charges {"reference": "...", ...}
//       Applies a charge for the reference and answers 200 {"id": "ch_<n>", "reference",
//       "applied": <times this reference has now been applied>}. With an Idempotency-Key header
//       it behaves as Stripe's API does: the first request with a key is applied and its answer
//       stored; a later request with the same key and the same body gets the stored answer again
//       (header Idempotent-Replayed: true) and applies nothing; the same key with another body is
//       a 400 (idempotency_key_reused). A charge is applied as soon as its request is read, so
//       a key is never "in progress" (Stripe's 409): a retry of a held request (below) gets the
//       stored answer. Keys are kept for the server's life (Stripe: 24 hours).
//       Without the header every request is applied. A body without a string "reference" is a
//       400 and applies nothing.
//   GET /charges/<reference>   {"reference", "applied": n}: lets a worker check whether its
//       charge went through (a "checkable" effect) before applying it again.
//   GET /stats   {"requests", "applied" (charges applied), "references" (distinct references
//       applied), "duplicates" (references applied more than once), "extra_applications"
//       (applications past the first, summed), "replayed" (answered from an idempotency key),
//       "held"}
//   POST /stats/reset   forgets everything (counts and keys).
//
// --hold: the crash points of the benchmark. The first time a listed reference is applied, the
// ledger applies it (counts it, stores its idempotency key) and prints "held <reference>" on
// stdout, but does not answer: the driver (bench/peers/agents/run) sees the line and kills the
// worker with SIGKILL, so the worker dies after the effect happened and before it heard of it,
// the window an exactly-once effect has to survive. A held request is answered normally if its
// connection is still open after 30 s (nobody killed the worker); later applications of a held
// reference are never held.
import http from 'node:http';

function parseArgs(argv) {
  const o = { port: 0, hold: new Set() };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') o.port = Number(argv[++i]);
    else if (a === '--hold') for (const r of (argv[++i] ?? '').split(',')) { if (r) o.hold.add(r); }
    else {
      process.stderr.write(`ledger: unknown argument ${a}\nusage: node ledger.mjs [--port N] [--hold REF[,REF...]]\n`);
      process.exit(2);
    }
  }
  return o;
}

const opts = parseArgs(process.argv.slice(2));
let counts = new Map();     // reference -> times applied
let keys = new Map();       // idempotency key -> {body, status, reply}
let stats = { requests: 0, applied: 0, replayed: 0, held: 0 };
let nextId = 1;

function send(res, status, obj, headers = {}) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

function statsReply() {
  let duplicates = 0, extra = 0;
  for (const n of counts.values()) {
    if (n > 1) { duplicates++; extra += n - 1; }
  }
  return { ...stats, references: counts.size, duplicates, extra_applications: extra };
}

function handleCharge(req, res, raw) {
  let body;
  try { body = JSON.parse(raw); } catch { body = null; }
  if (!body || typeof body.reference !== 'string') {
    return send(res, 400, { error: { type: 'invalid_request_error', message: 'body must be JSON with a string "reference"' } });
  }
  const key = req.headers['idempotency-key'];
  if (key !== undefined) {
    const seen = keys.get(key);
    if (seen) {
      if (seen.body !== raw) {
        return send(res, 400, { error: { type: 'idempotency_error', code: 'idempotency_key_reused',
          message: `Keys for idempotent requests can only be used with the same parameters they were first used with (key ${key})` } });
      }
      stats.replayed++;
      return send(res, seen.status, seen.reply, { 'idempotent-replayed': 'true' });
    }
  }
  const n = (counts.get(body.reference) ?? 0) + 1;
  counts.set(body.reference, n);
  stats.applied++;
  const reply = { id: `ch_${nextId++}`, reference: body.reference, applied: n };
  if (key !== undefined) keys.set(key, { body: raw, status: 200, reply });
  if (n === 1 && opts.hold.has(body.reference)) {
    stats.held++;
    process.stdout.write(`held ${body.reference}\n`);
    const timer = setTimeout(() => { if (!res.writableEnded && !res.destroyed) send(res, 200, reply); }, 30000);
    res.on('close', () => clearTimeout(timer));
    return;
  }
  send(res, 200, reply);
}

const server = http.createServer((req, res) => {
  stats.requests++;
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const raw = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url, 'http://ledger');
    if (req.method === 'POST' && url.pathname === '/charges') return handleCharge(req, res, raw);
    if (req.method === 'GET' && url.pathname.startsWith('/charges/')) {
      const reference = decodeURIComponent(url.pathname.slice('/charges/'.length));
      return send(res, 200, { reference, applied: counts.get(reference) ?? 0 });
    }
    if (req.method === 'GET' && url.pathname === '/stats') return send(res, 200, statsReply());
    if (req.method === 'POST' && url.pathname === '/stats/reset') {
      counts = new Map(); keys = new Map(); stats = { requests: 0, applied: 0, replayed: 0, held: 0 };
      return send(res, 200, { ok: true });
    }
    send(res, 404, { error: { type: 'invalid_request_error', message: `no route ${req.method} ${url.pathname}` } });
  });
});
server.keepAliveTimeout = 60000;
server.listen(opts.port, '127.0.0.1', () => {
  process.stdout.write(`ledger listening on http://127.0.0.1:${server.address().port}\n`);
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    process.stderr.write(`ledger stopping: ${JSON.stringify(statsReply())}\n`);
    process.exit(0);
  });
}
