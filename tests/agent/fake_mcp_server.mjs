// A tiny, deliberately misbehaving MCP server over stdio for tests/agent/mcp_test.cpp: the
// failures the real reference servers never show on demand. No dependencies (node only).
//
//   node fake_mcp_server.mjs [--version V] [--pages N] [--ledger URL]
//     --version V:  answer initialize with protocol version V (default: the client's)
//     --pages N:    list the tools over N tools/list pages (nextCursor), default 1
//     --ledger URL: also list three tools that call the HTTP ledger at URL
//                   (tests/agent/kill/http_ledger.hpp), passing the call's
//                   _meta["nines/idempotencyKey"] as the Idempotency-Key header, for the crash
//                   tests (tests/agent/crash_test.cpp):
//       lookup {reference}              readOnlyHint    GET  URL/lookup/<reference>
//       charge_idem {reference, amount} idempotentHint  POST URL/charge/idem
//       charge_unsafe {reference, amount}               POST URL/charge/unsafe
//     each answers with the ledger's body, or isError with its status.
//
// Tools (by name):
//   echo {text}         -> text
//   sleep               -> never answers (until cancelled: nothing is sent then either)
//   cancels             -> the notifications/cancelled seen so far ("id:reason" lines); waits
//                          for the first one if there is none yet
//   freeze              -> stops answering anything, ping included (a hung server)
//   garbage             -> writes a line that is not JSON
//   long_line {bytes}   -> writes one JSON line of about `bytes` bytes
//   exit {code}         -> exits with `code` while the call is in flight
//   ask_client          -> sends the client a ping and a roots/list request, answers with what
//                          came back ("ping:ok roots/list:-32601")
//   fail                -> a result with isError=true
//   grow {mb, hold_ms}  -> keeps `mb` MiB more of touched memory for good (a leak), answers
//                          "grew" after hold_ms
// Every received line is also written to stderr, as "got <method or id>".
import readline from 'node:readline';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const forcedVersion = opt('--version', null);
const pages = Number(opt('--pages', '1'));
const ledger = opt('--ledger', null);

const toolNames = ['echo', 'sleep', 'cancels', 'freeze', 'garbage', 'long_line', 'exit', 'ask_client', 'fail', 'grow'];
const leaked = [];
const tools = toolNames.map((name) => ({
  name,
  description: `fake ${name}`,
  inputSchema: { type: 'object', properties: {} },
  annotations: name === 'echo' ? { readOnlyHint: true } : {},
}));
const chargeSchema = {
  type: 'object',
  properties: { reference: { type: 'string' }, amount: { type: 'integer', minimum: 1 } },
  required: ['reference', 'amount'],
};
if (ledger !== null) {
  tools.push(
    { name: 'lookup', description: 'Looks up a record', inputSchema: chargeSchema, annotations: { readOnlyHint: true } },
    { name: 'charge_idem', description: 'Charges once per key', inputSchema: chargeSchema,
      annotations: { idempotentHint: true } },
    { name: 'charge_unsafe', description: 'Charges every time', inputSchema: chargeSchema, annotations: {} });
}

async function ledgerCall(id, name, a, key) {
  const [method, path] = name === 'lookup' ? ['GET', `/lookup/${encodeURIComponent(String(a.reference))}`]
                       : name === 'charge_idem' ? ['POST', '/charge/idem'] : ['POST', '/charge/unsafe'];
  try {
    const r = await fetch(ledger + path, {
      method,
      headers: { 'Idempotency-Key': key },
      body: method === 'POST' ? JSON.stringify(a) : undefined,
    });
    const text = await r.text();
    return result(id, r.ok ? text : `ledger answered ${r.status}: ${text}`, !r.ok);
  } catch (e) {
    return result(id, `ledger unreachable: ${e.message}`, true);
  }
}

let frozen = false;
const cancels = [];
let cancelWaiter = null;  // the id of a `cancels` call waiting for the first one
const clientAnswers = new Map();  // our request id -> resolve
let nextOwnId = 1;

const send = (m) => process.stdout.write(JSON.stringify(m) + '\n');
const result = (id, text, isError = false) =>
  send({ jsonrpc: '2.0', id, result: { content: [{ type: 'text', text }], ...(isError ? { isError: true } : {}) } });

const askClient = (method) =>
  new Promise((resolve) => {
    const id = `s${nextOwnId++}`;
    clientAnswers.set(id, resolve);
    send({ jsonrpc: '2.0', id, method, params: {} });
  });

async function onCall(id, name, a, meta) {
  if (ledger !== null && ['lookup', 'charge_idem', 'charge_unsafe'].includes(name)) {
    return ledgerCall(id, name, a, String(meta?.['nines/idempotencyKey'] ?? ''));
  }
  switch (name) {
    case 'echo': return result(id, String(a.text ?? ''));
    case 'sleep': return;
    case 'cancels':
      if (cancels.length > 0) return result(id, cancels.join('\n'));
      cancelWaiter = id;
      return;
    case 'freeze': frozen = true; return;
    case 'garbage': process.stdout.write('this is not json\n'); return;
    case 'long_line': return result(id, 'x'.repeat(Number(a.bytes ?? 1000)));
    case 'exit': process.exit(Number(a.code ?? 3));
    case 'ask_client': {
      const ping = await askClient('ping');
      const roots = await askClient('roots/list');
      const show = (m) => (m.error ? String(m.error.code) : 'ok');
      return result(id, `ping:${show(ping)} roots/list:${show(roots)}`);
    }
    case 'fail': return result(id, 'the fake tool failed on purpose', true);
    case 'grow':
      leaked.push(Buffer.alloc(Number(a.mb ?? 1) << 20, 1));
      return setTimeout(() => result(id, 'grew'), Number(a.hold_ms ?? 0));
    default: send({ jsonrpc: '2.0', id, error: { code: -32602, message: `unknown tool ${name}` } });
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (frozen) return;
  let m;
  try {
    m = JSON.parse(line);
  } catch {
    return;
  }
  process.stderr.write(`got ${m.method ?? m.id}\n`);
  if (m.method === undefined) {  // an answer to one of our requests
    const resolve = clientAnswers.get(m.id);
    if (resolve) {
      clientAnswers.delete(m.id);
      resolve(m);
    }
    return;
  }
  switch (m.method) {
    case 'initialize':
      return send({
        jsonrpc: '2.0',
        id: m.id,
        result: {
          protocolVersion: forcedVersion ?? m.params.protocolVersion,
          capabilities: { tools: {} },
          serverInfo: { name: 'fake', version: '1' },
        },
      });
    case 'tools/list': {
      const page = Number(m.params?.cursor ?? '0');
      const per = Math.ceil(tools.length / pages);
      const slice = tools.slice(page * per, (page + 1) * per);
      const res = { tools: slice };
      if (page + 1 < pages) res.nextCursor = String(page + 1);
      return send({ jsonrpc: '2.0', id: m.id, result: res });
    }
    case 'tools/call':
      return onCall(m.id, m.params.name, m.params.arguments ?? {}, m.params._meta);
    case 'ping':
      return send({ jsonrpc: '2.0', id: m.id, result: {} });
    case 'notifications/cancelled':
      cancels.push(`${m.params.requestId}:${m.params.reason}`);
      if (cancelWaiter !== null) {
        const w = cancelWaiter;
        cancelWaiter = null;
        result(w, cancels.join('\n'));
      }
      return;
    default:
      if (m.id !== undefined) send({ jsonrpc: '2.0', id: m.id, error: { code: -32601, message: 'no such method' } });
  }
});
rl.on('close', () => process.exit(0));
