#!/usr/bin/env bash
# The main job from a fresh clone: install what is missing, build the release preset, run the
# demo (`nines demo runtime`). Extra arguments go to the demo (e.g. --workers 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release --target nines
exec build/release/apps/nines/nines demo runtime "$@"
