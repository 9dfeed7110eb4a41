#!/usr/bin/env bash
# Fails when a C++ file differs from what clang-format-14 makes of it with the repository's
# .clang-format. Fix with: scripts/check_format.sh --fix
set -euo pipefail
cd "$(dirname "$0")/.."
cf=$(command -v clang-format-14 || true)
if [[ -z "$cf" ]]; then
  echo "format check: clang-format-14 not found (scripts/setup.sh installs it)" >&2
  exit 1
fi
mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.h')
if [[ "${1:-}" == "--fix" ]]; then
  "$cf" -i "${files[@]}"
  exit 0
fi
if ! "$cf" --dry-run --Werror "${files[@]}" 2>/tmp/nines-format.$$; then
  grep -E '^[^ ].*: (error|warning):' /tmp/nines-format.$$ | cut -d: -f1 | sort -u | sed 's/^/  /' >&2
  echo "format check: the files above differ from .clang-format; run scripts/check_format.sh --fix" >&2
  rm -f /tmp/nines-format.$$
  exit 1
fi
rm -f /tmp/nines-format.$$
echo "format check: ${#files[@]} files match .clang-format"
