#!/usr/bin/env bash
# Builds the libFuzzer targets (the llm parsers, the sim's request parser, the SSE parser, the HTTP server's request
# parser, the service config loader, the service API's request parsing) with clang-14 (ASan + UBSan) in build/fuzz and runs each
# for N seconds (default 10), seeded from the test fixtures. Not part of scripts/test.sh.
#   bash scripts/fuzz.sh          # 10 s per target
#   bash scripts/fuzz.sh 600      # longer runs; see docs/llm.md
# Findings (crash-*, leak-*, timeout-*) land in build/fuzz/findings/; the corpus grows in
# build/fuzz/corpus/<target>/ and is reused by the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
command -v clang++-14 >/dev/null || { echo "fuzz: clang++-14 missing (scripts/setup.sh installs it)" >&2; exit 1; }

build=build/fuzz
# clang-14 for C too: llhttp's C sources (src/net) are instrumented and sanitized with the rest.
cmake -S . -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DNINES_SANITIZE=address,undefined -DNINES_LLM_FUZZ=ON -DNINES_BUILD_TESTS=OFF -DNINES_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j2 --target nines_llm_response_fuzz nines_llm_stream_fuzz nines_llm_sim_request_fuzz nines_net_sse_fuzz \
  nines_net_http_request_fuzz nines_service_config_fuzz nines_service_request_fuzz

# Seeds: byte 0 picks the provider (0 OpenAI, 1 Anthropic); then a body, or one event per line.
seed() {  # seed <target> <provider byte> <name> <content>
  local dir="$build/corpus/$1"
  mkdir -p "$dir"
  { printf "\\x$2"; printf '%s' "$4"; } >"$dir/seed-$3"
}
fixtures=tests/llm/fixtures
for provider in openai anthropic; do
  byte=00; [[ $provider == anthropic ]] && byte=01
  for f in "$fixtures/$provider"/*.json; do
    seed response "$byte" "$provider-$(basename "$f")" "$(cat "$f")"
  done
  for f in "$fixtures/$provider"/*.sse; do
    seed stream "$byte" "$provider-$(basename "$f")" "$(sed -n 's/^data: //p' "$f")"
  done
done
# The SSE parser: byte 0 picks where the stream is cut in two; then raw SSE text.
for f in "$fixtures"/*/*.sse; do
  seed sse 07 "$(basename "$(dirname "$f")")-$(basename "$f")" "$(cat "$f")"
done

# The sim's request parser: request bodies the codec builds and an SDK-shaped one.
mkdir -p "$build/corpus/sim_request"
printf '%s' '{"model":"m","messages":[{"role":"user","content":"hi"}]}' >"$build/corpus/sim_request/seed-min"
printf '%s' '{"model":"m","stream":true,"max_tokens":50,"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"q"}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"search","arguments":"{\"q\":1}"}}]},{"role":"tool","tool_call_id":"c1","content":"r"}],"tools":[{"type":"function","function":{"name":"search","parameters":{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}}}]}' >"$build/corpus/sim_request/seed-tools"

# The HTTP server's request parser: byte 0 seeds how the bytes are cut; then what a client sends
# on one connection (pipelined requests, bodies, the framings a smuggler tries).
seed http_request 00 get $'GET /v1/models?x=1 HTTP/1.1\r\nHost: h\r\n\r\n'
seed http_request 07 pipelined $'GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nxyGET /c HTTP/1.0\r\n\r\nrest'
seed http_request 03 chunked $'POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: x\r\n\r\n'
seed http_request 11 continue $'PUT /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc'
seed http_request 05 smuggle $'POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /s HTTP/1.1\r\n\r\n'
seed http_request 02 upgrade $'GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello'
seed http_request 13 fold $'GET / HTTP/1.1\r\nX: a\r\n b\r\nConnection: close\r\n\r\n'

# The service config loader: the sample config, and small broken ones.
mkdir -p "$build/corpus/config"
cp config/nines.yaml "$build/corpus/config/seed-sample"
printf '%s' $'models:\n  m: {provider: sim}\nagents:\n  a: {models: [m], tools: [x]}\n' >"$build/corpus/config/seed-min"
printf '%s' $'a: &a [1, 2]\nb: [*a, *a]\nmodels: {m: {provider: openai, api_key: "${KEY}"}}\n' >"$build/corpus/config/seed-alias"

# The API's request parsing: byte 0 picks the parser (0 route, 1 submit, 2 list query, 3 action,
# 4 auth, 5 query); then path or key, a second part, and the body, separated by newlines.
seed request 00 route $'/v1/tasks/t-1%2Fx/cancel'
seed request 01 submit $'order-42\n\n{"agent":"support","input":"hi","budget":{"max_steps":3,"max_cost_usd":0.5}}'
seed request 02 list $'status=succeeded&agent=a&limit=10&cursor=300a742d31'
seed request 03 resolve $'xxxx\n\n{"effect_id":"3","applied":true,"outcome":"{}"}'
seed request 04 auth $'Bearer abc\nabc'
seed request 05 query $'a=%41&b=+x&&=&c\n5f2c.7'

mkdir -p "$build/findings"
status=0
for target in llm/response llm/stream llm/sim_request net/sse net/http_request service/config service/request; do
  layer="${target%%/*}"; target="${target#*/}"
  echo "fuzz: nines_${layer}_${target}_fuzz for ${seconds}s"
  log="$build/findings/$target.log"
  if ! "$build/src/$layer/nines_${layer}_${target}_fuzz" "$build/corpus/$target" -max_total_time="$seconds" \
         -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
         -artifact_prefix="$build/findings/$target-" >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: nines_${layer}_${target}_fuzz FAILED (log $log, input in $build/findings/)" >&2
    status=1
    continue
  fi
  grep -E '^#[0-9]+.*DONE|^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
done
exit $status
