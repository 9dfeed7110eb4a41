// Joins nines' estimates (nines_tokens_estimate) with the exact counts (count_tokens.mjs) of
// the same files and either reports the error or fits the estimator's text coefficients.
//
//   node analyze.mjs report NINES.jsonl EXACT.jsonl [OUT.jsonl]
//   node analyze.mjs fit NINES.jsonl EXACT.jsonl
//
// report: per file and per category the ratio estimate/exact for o200k and cl100k (> 1: nines
// over-estimates, the side it should err on), then the distribution over all files (min, p10,
// median, mean, max) with the targets (never under by more than ~10%, mean over by
// less than ~15%) checked; bench lines {"bench":"tokens","system":"nines",...} appended to
// OUT.jsonl when given. Also checks that the claude, llama and generic estimates are at least
// the larger of the two exact counts on every file (they have no exact tokenizer here).
//
// fit (on files cut into chunks of a few lines: run --fit passes --chunk-lines to both sides,
// which gives the rarer features, emoji and symbols, rows of their own): for each family,
// the text coefficients (tokens.hpp TokenCoefficients, word .. astral) minimising the squared
// relative error per chunk, each weighted by its share of its file's tokens, under-estimates
// weighted 10x and every category weighted equally (code has many more files than the
// others); weights are kept >= 0 (projected coordinate descent). Prints the coefficients and
// the per-file ratios they would give (a sum over chunks: the estimate is additive, BPE
// nearly so at line breaks); tokens.cpp takes them, rounded, by hand.
import { readFileSync, appendFileSync } from "node:fs";

const FEATURES = ["words", "long_word_letters", "case_changes", "nonascii_letters", "digit_groups", "punct",
  "punct_runs", "space_runs", "cjk", "kana", "typography", "symbols", "astral"];
const COEFF_NAMES = ["word", "long_word_letter", "case_change", "nonascii_letter", "digit_group", "punct",
  "punct_run", "space_run", "cjk", "kana", "typography", "symbol", "astral"];
const FAMILIES = ["o200k", "cl100k"];

const readJsonl = (path) =>
  readFileSync(path, "utf8").split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));

function category(file) {
  if (/\/corpus\/[^/]*\.json$/.test(file) || /tests\/llm\/fixtures\//.test(file) || /package-lock\.json$/.test(file))
    return "json";
  const m = /\/corpus\/([a-z]+)\.txt$/.exec(file);
  if (m) return m[1];
  if (/\.json$|\.sse$/.test(file)) return "json";
  if (/\.(cpp|hpp|h|cc)$/.test(file)) return "code";
  return "prose";
}

function join(ninesPath, exactPath) {
  const key = (r) => `${r.file}#${r.chunk ?? ""}`;
  const exact = new Map(readJsonl(exactPath).filter((r) => r.file).map((r) => [key(r), r]));
  const rows = [];
  for (const n of readJsonl(ninesPath)) {
    if (!n.file) continue;
    const e = exact.get(key(n));
    if (!e) throw new Error(`no exact count for ${key(n)}`);
    if (e.bytes !== n.bytes) throw new Error(`${key(n)}: ${n.bytes} bytes for nines, ${e.bytes} for js-tiktoken`);
    if (e.o200k === 0 || e.cl100k === 0) continue;
    rows.push({ file: n.file, cat: category(n.file), bytes: n.bytes, nines: n, exact: e });
  }
  return rows;
}

function quantile(sorted, q) {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i];
}
const mean = (a) => a.reduce((s, x) => s + x, 0) / a.length;
const f3 = (x) => x.toFixed(3);

function stats(ratios) {
  const s = [...ratios].sort((a, b) => a - b);
  return { n: s.length, min: s[0], p10: quantile(s, 0.1), median: quantile(s, 0.5), mean: mean(s), max: s[s.length - 1] };
}

function report(rows, outPath) {
  const short = (f) => f.replace(/^.*\/(common-licenses|corpus|fixtures)\//, "$1/").replace(/^\.\//, "");
  console.log(`${"file".padEnd(46)} ${"cat".padEnd(8)} ${"bytes".padStart(7)} ` +
    `${"o200k".padStart(7)} ${"est".padStart(7)} ${"ratio".padStart(6)}  ${"cl100k".padStart(7)} ${"est".padStart(7)} ${"ratio".padStart(6)}`);
  for (const r of rows) {
    console.log(`${short(r.file).slice(-46).padEnd(46)} ${r.cat.padEnd(8)} ${String(r.bytes).padStart(7)} ` +
      FAMILIES.map((f) => `${String(r.exact[f]).padStart(7)} ${String(r.nines[f]).padStart(7)} ${f3(r.nines[f] / r.exact[f]).padStart(6)}`).join("  "));
  }
  const lines = [];
  const emit = (metric, value, unit) => lines.push(JSON.stringify({ bench: "tokens", system: "nines", metric, value, unit }));
  let ok = true;
  for (const fam of FAMILIES) {
    console.log(`\n== ${fam}: ratio estimate/exact`);
    console.log(`${"category".padEnd(10)} ${"files".padStart(5)} ${"min".padStart(6)} ${"p10".padStart(6)} ${"median".padStart(6)} ${"mean".padStart(6)} ${"max".padStart(6)} ${"total".padStart(6)}`);
    const cats = [...new Set(rows.map((r) => r.cat))];
    for (const c of [...cats, "all"]) {
      const sel = rows.filter((r) => c === "all" || r.cat === c);
      const st = stats(sel.map((r) => r.nines[fam] / r.exact[fam]));
      const total = sel.reduce((s, r) => s + r.nines[fam], 0) / sel.reduce((s, r) => s + r.exact[fam], 0);
      console.log(`${c.padEnd(10)} ${String(st.n).padStart(5)} ${f3(st.min).padStart(6)} ${f3(st.p10).padStart(6)} ${f3(st.median).padStart(6)} ${f3(st.mean).padStart(6)} ${f3(st.max).padStart(6)} ${f3(total).padStart(6)}`);
      if (c === "all") {
        for (const k of ["min", "p10", "median", "mean", "max"]) emit(`${fam}_ratio_${k}`, st[k], "estimate/exact");
        const under = st.min < 0.9, over = st.mean - 1 >= 0.15;
        console.log(`target: never under by more than ~10% (min >= 0.90): ${under ? "MISSED" : "met"} (min ${f3(st.min)}); ` +
          `mean over by less than ~15% (mean < 1.15): ${over ? "MISSED" : "met"} (mean ${f3(st.mean)})`);
        ok = ok && !under && !over;
      }
    }
  }
  console.log("\n== families without an exact tokenizer: estimate / max(o200k, cl100k exact)");
  for (const fam of ["claude", "llama", "generic"]) {
    const st = stats(rows.map((r) => r.nines[fam] / Math.max(r.exact.o200k, r.exact.cl100k)));
    console.log(`${fam.padEnd(8)} min ${f3(st.min)}  median ${f3(st.median)}  mean ${f3(st.mean)}  max ${f3(st.max)}`);
  }
  if (outPath) appendFileSync(outPath, lines.join("\n") + "\n");
  return ok;
}

function fit(rows) {
  const cats = [...new Set(rows.map((r) => r.cat))];
  const filesPerCat = new Map(cats.map((c) => [c, new Set(rows.filter((r) => r.cat === c).map((r) => r.file)).size]));
  for (const fam of FAMILIES) {
    const X = rows.map((r) => FEATURES.map((k) => r.nines.features[k]));
    const y = rows.map((r) => r.exact[fam]);
    const fileTotal = new Map();
    rows.forEach((r, i) => fileTotal.set(r.file, (fileTotal.get(r.file) ?? 0) + y[i]));
    // relative error of each chunk, weighted by its share of its file's tokens
    const base = rows.map((r, i) => 1 / filesPerCat.get(r.cat) * (y[i] / fileTotal.get(r.file)) / (y[i] * y[i]));
    const c = FEATURES.map(() => 0.5);
    const predict = (i) => X[i].reduce((s, x, j) => s + x * c[j], 0);
    for (let sweep = 0; sweep < 4000; sweep++) {
      const w = rows.map((_, i) => base[i] * (predict(i) < y[i] ? 10 : 1));
      for (let j = 0; j < c.length; j++) {
        let g = 0, h = 0;
        for (let i = 0; i < rows.length; i++) {
          if (X[i][j] === 0) continue;
          g += w[i] * X[i][j] * (predict(i) - y[i]);
          h += w[i] * X[i][j] * X[i][j];
        }
        if (h > 0) c[j] = Math.max(0, c[j] - g / h);
      }
    }
    console.log(`\n== ${fam}: fitted coefficients`);
    COEFF_NAMES.forEach((n, j) => console.log(`    .${n} = ${c[j].toFixed(3)},`));
    const byFile = new Map();
    rows.forEach((r, i) => {
      const t = byFile.get(r.file) ?? [0, 0];
      byFile.set(r.file, [t[0] + predict(i), t[1] + y[i]]);
    });
    const files = [...byFile.entries()].map(([f, [p, e]]) => [p / e, f]);
    const st = stats(files.map(([q]) => q));
    console.log(`per-file ratios: min ${f3(st.min)} p10 ${f3(st.p10)} median ${f3(st.median)} mean ${f3(st.mean)} max ${f3(st.max)}`);
    const worst = files.sort((a, b) => a[0] - b[0]);
    console.log("lowest:", worst.slice(0, 4).map(([q, f]) => `${f3(q)} ${f}`).join(", "));
    console.log("highest:", worst.slice(-3).map(([q, f]) => `${f3(q)} ${f}`).join(", "));
  }
}

const [mode, ninesPath, exactPath, outPath] = process.argv.slice(2);
if (!["report", "fit"].includes(mode) || !ninesPath || !exactPath) {
  console.error("usage: node analyze.mjs report|fit NINES.jsonl EXACT.jsonl [OUT.jsonl]");
  process.exit(2);
}
const rows = join(ninesPath, exactPath);
if (mode === "fit") fit(rows);
else report(rows, outPath);
