#!/usr/bin/env bash
# The whole test suite, from a fresh clone: setup, the environment-seam and format checks, then every
# test under ASan+UBSan (debug preset) and under TSan (tsan preset), then a short libFuzzer
# run of the model-API parsers (clang). Warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

bash scripts/setup.sh
bash scripts/check_env_seam.sh
bash scripts/check_format.sh

echo "== debug build (ASan + UBSan)"
cmake --preset debug >/dev/null
cmake --build --preset debug
ctest --preset debug

echo "== tsan build (ThreadSanitizer)"
cmake --preset tsan >/dev/null
cmake --build --preset tsan
ctest --preset tsan

echo "== fuzz: the llm parsers, a short run (scripts/fuzz.sh; longer runs: docs/llm.md)"
bash scripts/fuzz.sh 5

echo "== all tests passed in $((SECONDS - start)) s"
