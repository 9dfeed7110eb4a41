#!/usr/bin/env bash
# Installs everything nines needs to build, test and benchmark on a fresh Debian 12 machine.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get. Only the
# Debian (and, later, npm) registries are used.
set -euo pipefail

# Every dependency, with what it is for. Nothing is downloaded from anywhere else.
packages=(
  g++            # C++20 compiler (g++ 12): coroutines, sanitizers (ASan, UBSan, TSan)
  cmake          # build (>= 3.25 for presets v6)
  ninja-build    # build backend used by the presets
  ccache         # recompiles only what changed
  libgtest-dev   # unit tests (GoogleTest)
  libgmock-dev   # test doubles (GoogleMock)
  libbenchmark-dev  # micro-benchmarks (Google Benchmark)
  erlang-base    # peer in bench/peers/runtime: Erlang/OTP processes and supervisors
  libcaf-dev     # peer in bench/peers/runtime: the C++ Actor Framework
  mawk           # the benchmark table (bench/peers/runtime/run)
  procps         # ps/top for people watching the demo and benchmarks
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
