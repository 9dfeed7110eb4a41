#!/usr/bin/env bash
# The main job from a fresh clone: install what is missing, build the release preset, run the
# demos: `nines demo runtime` (a supervision tree under a crash storm), then `nines demo
# models` (agents calling a flaky simulated model provider through the router, on loopback).
# Extra arguments go to the runtime demo (e.g. --workers 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release --target nines
build/release/apps/nines/nines demo runtime "$@"
echo
exec build/release/apps/nines/nines demo models
