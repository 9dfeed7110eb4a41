#!/usr/bin/env bash
# Fails when nines code reaches time, randomness or threads around the Environment seam
# (docs/architecture.md, decision 1), or when a public header includes an internal one.
# Only src/core/environment_real.cpp may use real clocks, std::random_device and std::thread.
# Not nines code, so not checked: the CAF peer and the llm benchmark's floor client (raw
# sockets and the monotonic clock by design: the least a client can add, without nines).
set -uo pipefail
cd "$(dirname "$0")/.."

allowed='src/core/environment_real.cpp'
files=$(git ls-files 'include/*.hpp' 'src/*.cpp' 'src/*.hpp' 'apps/*.cpp' 'apps/*.hpp' 'tests/*.cpp' 'tests/*.hpp' \
          'bench/*.cpp' 'bench/*.hpp' | grep -v -e "^$allowed\$" -e '^bench/peers/.*/caf/' \
          -e '^bench/peers/llm_client/floor_client.cpp$' || true)

pattern='std::chrono::(steady_clock|system_clock|high_resolution_clock|utc_clock|tai_clock|file_clock)'
pattern+='|\bstd::(thread|jthread)\b|\bpthread_create\b|std::this_thread::sleep'
pattern+='|\bstd::random_device\b|(^|[^_[:alnum:]:.])s?rand[[:space:]]*\('
pattern+='|\b(clock_gettime|gettimeofday|timespec_get)[[:space:]]*\('
pattern+='|(^|[^_[:alnum:]:.>])time[[:space:]]*\([[:space:]]*(NULL|nullptr|0)?[[:space:]]*\)'

status=0
if [[ -n "$files" ]]; then
  # Comments are stripped first: only code counts.
  hits=$(awk '{ line = $0; sub(/\/\/.*$/, "", line); print FILENAME ":" FNR ": " line }' $files \
           | grep -E "$pattern" || true)
  if [[ -n "$hits" ]]; then
    echo "env seam: real time, randomness or threads outside src/core/environment_real.cpp:" >&2
    echo "$hits" >&2
    echo "use Environment::now(), random_u64(), start_thread() or the runtime's timers instead" >&2
    status=1
  fi
fi

# Public headers never include internals (CAF's forbidden-includes check).
internal=$(grep -nE '#include[[:space:]]+"(core|runtime|resilience|store|workflow|net|llm|agent|service)/' \
             $(git ls-files 'include/*.hpp') || true)
if [[ -n "$internal" ]]; then
  echo "public headers include internal headers:" >&2
  echo "$internal" >&2
  status=1
fi

((status == 0)) && echo "env seam: ok ($(echo "$files" | wc -l) files checked)"
exit $status
