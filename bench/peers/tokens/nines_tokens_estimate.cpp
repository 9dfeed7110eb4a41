// nines' side of bench/peers/tokens: the token estimate (llm/tokens.hpp) of each file named
// on the command line, for every tokenizer family, with the character-class features it was
// computed from (what run --fit fits the coefficients on).
//
//   nines_tokens_estimate [--repeat SECS] [--chunk-lines K] FILE...
//
// One JSON line per file:
//   {"file":"...","bytes":N,"o200k":E,"cl100k":E,"claude":E,"llama":E,"generic":E,
//    "features":{"words":N,...}}
// or, with --chunk-lines K (K > 0), one per chunk of K lines (each with its '\n'), with
// "chunk":I added: more data points for run --fit (count_tokens.mjs cuts them the same way).
// then, timed: every file estimated (o200k coefficients, text_features + weights, which is
// what TokenCounter::text does) over and over for SECS seconds (default 1; 0 skips it); the
// time per KiB of text as a bench line {"bench":"tokens","system":"nines",
// "metric":"estimate_ns_per_kib",...}. Files are read into memory first: only estimation is
// timed.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nines/core/environment.hpp"
#include "nines/llm/tokens.hpp"
#include "peers/bench_json.hpp"

namespace {

using nines::llm::TokenizerFamily;

long long estimate(TokenizerFamily family, const std::string& text) {
  return static_cast<long long>(nines::llm::TokenCounter(family).text(text));
}

void print_estimate(const std::string& path, long chunk, const std::string& t) {
  const nines::llm::TextFeatures f = nines::llm::text_features(t);
  // ordered_json: the fields in the order they have always been printed in.
  nlohmann::ordered_json line;
  line["file"] = path;
  if (chunk >= 0) line["chunk"] = chunk;
  line["bytes"] = t.size();
  line["o200k"] = estimate(TokenizerFamily::kOpenAiO200k, t);
  line["cl100k"] = estimate(TokenizerFamily::kOpenAiCl100k, t);
  line["claude"] = estimate(TokenizerFamily::kClaude, t);
  line["llama"] = estimate(TokenizerFamily::kLlama, t);
  line["generic"] = estimate(TokenizerFamily::kGeneric, t);
  line["features"] = {{"words", f.words},
                      {"long_word_letters", f.long_word_letters},
                      {"case_changes", f.case_changes},
                      {"nonascii_letters", f.nonascii_letters},
                      {"digit_groups", f.digit_groups},
                      {"punct", f.punct},
                      {"punct_runs", f.punct_runs},
                      {"space_runs", f.space_runs},
                      {"cjk", f.cjk},
                      {"kana", f.kana},
                      {"typography", f.typography},
                      {"symbols", f.symbols},
                      {"astral", f.astral}};
  // A file name that is not UTF-8 gets U+FFFD for its bad bytes rather than an exception.
  std::printf("%s\n", line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  double repeat_secs = 1.0;
  long chunk_lines = 0;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--repeat" && i + 1 < argc) {
      repeat_secs = std::atof(argv[++i]);
    } else if (arg == "--chunk-lines" && i + 1 < argc) {
      chunk_lines = std::atol(argv[++i]);
    } else {
      paths.push_back(arg);
    }
  }
  if (paths.empty()) {
    std::fprintf(stderr, "usage: %s [--repeat SECS] [--chunk-lines K] FILE...\n", argv[0]);
    return 2;
  }
  std::vector<std::string> texts;
  std::size_t total_bytes = 0;
  for (const std::string& path : paths) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", path.c_str());
      return 1;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    texts.push_back(ss.str());
    total_bytes += texts.back().size();
  }

  for (std::size_t i = 0; i < paths.size(); ++i) {
    if (chunk_lines <= 0) {
      print_estimate(paths[i], -1, texts[i]);
      continue;
    }
    const std::string& text = texts[i];
    std::size_t start = 0;
    long chunk = 0;
    while (start < text.size()) {
      std::size_t end = start;
      for (long line = 0; line < chunk_lines && end < text.size(); ++line) {
        const std::size_t nl = text.find('\n', end);
        end = nl == std::string::npos ? text.size() : nl + 1;
      }
      print_estimate(paths[i], chunk++, text.substr(start, end - start));
      start = end;
    }
  }
  std::fflush(stdout);

  if (repeat_secs <= 0 || total_bytes == 0) return 0;
  auto env = nines::make_real_environment({.workers = 1});
  const nines::llm::TokenCounter counter(TokenizerFamily::kOpenAiO200k);
  std::size_t bytes = 0;
  long long sink = 0;
  const nines::TimePoint t0 = env->now();
  double secs = 0;
  do {
    for (const std::string& t : texts) sink += static_cast<long long>(counter.text(t));
    bytes += total_bytes;
    secs = nines::to_seconds(env->now() - t0);
  } while (secs < repeat_secs);
  if (sink == 42) std::fprintf(stderr, " ");  // keeps the loop from being optimised away
  nines::bench::emit("tokens", "estimate_ns_per_kib", secs * 1e9 / (static_cast<double>(bytes) / 1024.0), "ns/KiB");
  nines::bench::emit("tokens", "estimate_mib_per_s", static_cast<double>(bytes) / (1 << 20) / secs, "MiB/s");
  return 0;
}
