#!/usr/bin/env bash
# The main job from a fresh clone: install what building nines needs (setup.sh --demo: no test
# servers, peers or fuzzing tools), build the `app` preset (release; libraries and the nines
# command only), run the demos: `nines demo runtime` (a supervision tree under a crash storm),
# then `nines demo models` (agents calling a flaky simulated model provider through the router,
# on loopback). Extra arguments go to the runtime demo (e.g. --workers 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
cmake --preset app >/dev/null
cmake --build --preset app --target nines
build/app/apps/nines/nines demo runtime "$@"
echo
exec build/app/apps/nines/nines demo models
