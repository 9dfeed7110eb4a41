// The exact side of bench/peers/tokens: BPE token counts of each file with js-tiktoken
// (OpenAI's o200k_base and cl100k_base ranks, pure JS, no network).
//
//   node count_tokens.mjs [--repeat SECS] [--chunk-lines K] FILE...
//
// One JSON line per file: {"file":"...","bytes":N,"o200k":N,"cl100k":N}; with --chunk-lines K
// (K > 0) one per chunk of K lines (each with its "\n"), with "chunk":I added, cut as
// nines_tokens_estimate cuts them. Special-token
// strings in a file ("<|endoftext|>") are counted as ordinary text, as a provider does for
// user content. Then, timed: every file encoded with o200k_base over and over for SECS
// seconds (default 1; 0 skips it), reported per KiB as a bench line
// {"bench":"tokens","system":"js-tiktoken","metric":"exact_ns_per_kib",...}.
import { readFileSync } from "node:fs";
import { getEncoding } from "js-tiktoken";

let repeatSecs = 1;
let chunkLines = 0;
const paths = [];
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--repeat" && i + 1 < args.length) repeatSecs = Number(args[++i]);
  else if (args[i] === "--chunk-lines" && i + 1 < args.length) chunkLines = Number(args[++i]);
  else paths.push(args[i]);
}
if (paths.length === 0) {
  console.error("usage: node count_tokens.mjs [--repeat SECS] [--chunk-lines K] FILE...");
  process.exit(2);
}

const o200k = getEncoding("o200k_base");
const cl100k = getEncoding("cl100k_base");
const count = (enc, text) => enc.encode(text, [], []).length;

const texts = [];
let totalBytes = 0;
for (const path of paths) {
  const buf = readFileSync(path);
  const text = buf.toString("utf8");
  texts.push(text);
  totalBytes += buf.length;
  const line = (chunk, t) => ({
    file: path, ...(chunk === undefined ? {} : { chunk }), bytes: Buffer.byteLength(t, "utf8"),
    o200k: count(o200k, t), cl100k: count(cl100k, t),
  });
  if (chunkLines <= 0) {
    console.log(JSON.stringify(line(undefined, text)));
    continue;
  }
  const lines = text.split(/(?<=\n)/);
  for (let c = 0; c * chunkLines < lines.length; c++) {
    console.log(JSON.stringify(line(c, lines.slice(c * chunkLines, (c + 1) * chunkLines).join(""))));
  }
}

if (repeatSecs > 0 && totalBytes > 0) {
  let bytes = 0;
  let sink = 0;
  const t0 = process.hrtime.bigint();
  let secs = 0;
  do {
    for (const t of texts) sink += count(o200k, t);
    bytes += totalBytes;
    secs = Number(process.hrtime.bigint() - t0) / 1e9;
  } while (secs < repeatSecs);
  if (sink === 42) process.stderr.write(" ");
  const emit = (metric, value, unit) =>
    console.log(JSON.stringify({ bench: "tokens", system: "js-tiktoken", metric, value, unit }));
  emit("exact_ns_per_kib", (secs * 1e9) / (bytes / 1024), "ns/KiB");
  emit("exact_mib_per_s", bytes / (1 << 20) / secs, "MiB/s");
}
