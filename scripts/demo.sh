#!/usr/bin/env bash
# The main job from a fresh clone: install what building nines needs (setup.sh --demo: the build
# tools and libraries, and node with the MCP tool server the demo's agent uses; no test servers,
# peers or fuzzing tools), build the `app` preset (release; libraries and the nines command only),
# then run `nines demo service`: nines serve on the embedded SQLite store with a flaky simulated
# model (rate limits, 5xx, hallucinated tools, loops, an outage) and its fallback, an MCP tool
# server from npm and a ledger tool; tasks submitted through its HTTP API while the tool server
# is killed and the service itself is killed with kill -9 and restarted; a live progress line a
# second and a final report (exit 0 only if every task reached an outcome and no effect was
# applied twice). Extra arguments go to it (e.g. --tasks 1000). The two library demos stay
# available: nines demo runtime, nines demo models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
cmake --preset app >/dev/null
cmake --build --preset app --target nines
exec build/app/apps/nines/nines demo service "$@"
