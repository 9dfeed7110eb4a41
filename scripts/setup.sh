#!/usr/bin/env bash
# Installs everything nines needs to build, test and benchmark on a fresh Debian 12 machine.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get. Only the
# Debian and npm registries are used.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# usage: setup.sh          everything: build, tests, fuzzing, benchmarks and their peers
#        setup.sh --demo   only what building the libraries and the `nines` command needs (what
#                          scripts/demo.sh runs): no test servers, peers, clang or npm trees
mode=all
case "${1:-}" in
  "") ;;
  --demo) mode=demo ;;
  *) echo "setup: unknown argument '$1' (usage: setup.sh [--demo])" >&2; exit 2 ;;
esac

# Every dependency, with what it is for. Nothing is downloaded from anywhere else.
# Building nines (its libraries and the `nines` command): the demo needs these and no more.
packages=(
  g++            # C++20 compiler (g++ 12): coroutines, sanitizers (ASan, UBSan, TSan)
  cmake          # build (>= 3.25 for presets v6)
  ninja-build    # build backend used by the presets
  ccache         # recompiles only what changed
  procps         # ps/top for people watching the demo and benchmarks
  libsqlite3-dev # the embedded store backend (src/store/sqlite_store.cpp, SQLite C API)
  libpq-dev      # the PostgreSQL store backend (src/store/postgres_store.cpp, libpq)
  nlohmann-json3-dev  # JSON of the model APIs (src/llm: request bodies, responses, stream events)
  libsimdjson-dev  # the model's answers are parsed with simdjson's DOM on the hot path (src/llm/simdjson_util.hpp:
                   # ~10% of a call's CPU with nlohmann's DOM at 1,000 calls in flight; bench/README.md)
  libvalijson-dev  # the agent layer checks a model's tool-call arguments against the tool's JSON Schema (draft 7)
                   # before anything runs (src/agent/validation.cpp); header-only. Its Debian package depends on
                   # the dev packages of every JSON library it has an adapter for (Qt5, Poco, jsoncpp, ...):
                   # about 90 packages on a bare machine, none of them linked. No other draft-7 validator for
                   # C++ is in Debian, and writing one is what the issue asks us not to do.
  libyaml-cpp-dev  # the service's config file (src/service/config.cpp: YAML with line:column marks for every error)
  libcli11-dev   # the `nines` command's parser: subcommands, per-command help, validated numbers; header-only
  prometheus-cpp-dev  # the service's /metrics page (src/service/metrics.cpp): prometheus-cpp's core library (registry,
                      # text serializer); not its civetweb server: the service's own HTTP server serves the page
  libcurl4-openssl-dev  # the net layer's HTTP(S) client (src/net/http_client.cpp: libcurl multi + OpenSSL)
  node-llhttp    # the net layer's HTTP server parses requests with llhttp, the parser Node.js uses today (the nodejs
                 # http-parser it replaced is archived upstream, with no more fixes). Debian ships llhttp only as C
                 # sources (no library), so nines compiles them into the net layer (src/net/CMakeLists.txt). Not
                 # Boost.Beast, which brings Asio's event loop (the server runs on the Environment's, which the sim
                 # drives) and Boost, not otherwise a dependency. (Its package depends on Debian's nodejs.)
)
# Tests, fuzzing, benchmarks and their peers.
if [[ $mode == all ]]; then
  packages+=(
    libgtest-dev   # unit tests (GoogleTest)
    libgmock-dev   # test doubles (GoogleMock)
    pkgconf        # the install test builds a program with `pkg-config --cflags --libs nines`
    postgresql     # the server the store tests start in a temporary directory (initdb, pg_ctl)
    prometheus     # promtool checks the metrics page and alert rules; the integration test scrapes with a real server
    openssl        # the TLS server (openssl s_server) and certificate the net tests make for HTTPS
    clang-format-14  # the formatter: scripts/check_format.sh (in the test command) against .clang-format
    clang-14       # libFuzzer targets of the llm parsers (scripts/fuzz.sh); the build itself uses g++
    libclang-rt-14-dev  # clang's libFuzzer and sanitizer runtimes (only "recommended" by clang-14,
                        # and setup installs without recommends)
    erlang-base    # peer in bench/peers/runtime: Erlang/OTP processes and supervisors
    libcaf-dev     # peer in bench/peers/runtime: the C++ Actor Framework
    mawk           # the benchmark table (bench/peers/runtime/run)
    make           # node-gyp builds better-sqlite3's native addon (bench/peers/durable/node)
    python3        # node-gyp (the same)
  )
  # Node.js and npm: run the cockatiel peer in bench/peers/resilience, the LangGraph.js peer
  # in bench/peers/durable, the js-tiktoken counts in bench/peers/tokens, the openai SDK in
  # bench/peers/llm_client and mock-llm in the llm tests (npm packages below). From Debian
  # (nodejs 18, npm 9) only when there is no node at all: a newer Node already on the machine
  # (with its own npm) is kept.
  if ! command -v node >/dev/null; then
    packages+=(nodejs npm)
  elif ! command -v npm >/dev/null; then
    packages+=(npm)
  fi
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages present"
else
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
fi

if [[ $mode == demo ]]; then
  # The demo's agent reads a file through a real MCP tool server from npm
  # (@modelcontextprotocol/server-filesystem, pinned in tests/agent/mcp_servers): node and npm
  # from Debian when there is no node at all, then `npm ci` there. Warn-only: without them the
  # demo runs without its MCP tool and says so.
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    want=()
    command -v node >/dev/null || want+=(nodejs)
    command -v npm >/dev/null || want+=(npm)
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" ||
      echo "setup: WARNING: could not install ${want[*]}: the demo runs without its MCP tool server" >&2
  fi
  npm_dir="$repo/tests/agent/mcp_servers"
  if [[ -f "$npm_dir/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" ]]; then
    echo "setup: the demo's MCP tool server is present"
  elif command -v npm >/dev/null && (cd "$npm_dir" && npm ci --no-audit --no-fund --prefer-offline); then
    echo "setup: the demo's MCP tool server installed"
  else
    echo "setup: WARNING: 'npm ci' in $npm_dir failed: the demo runs without its MCP tool server" >&2
  fi
  exit 0
fi

# npm packages: cockatiel (the Node resilience library), the peer that
# bench/peers/resilience/run compares the nines pipeline with. Pinned in that folder's
# package.json and package-lock.json; installed into its node_modules/ (not committed), only
# when missing, and from npm's local cache when it has them. Nothing else uses them: builds
# and tests do not, so a failed install is reported and setup goes on (the benchmark then
# skips cockatiel, or tries `npm ci` again itself).
npm_dir="$repo/bench/peers/resilience/node"
if [[ -d "$npm_dir/node_modules/cockatiel" ]]; then
  echo "setup: npm packages for bench/peers/resilience present"
elif (cd "$npm_dir" && npm ci --no-audit --no-fund --prefer-offline); then
  echo "setup: npm packages for bench/peers/resilience installed"
else
  echo "setup: WARNING: 'npm ci' in $npm_dir failed, so cockatiel is not installed." >&2
  echo "setup: only bench/peers/resilience/run needs it (builds and tests do not); rerun" >&2
  echo "setup: scripts/setup.sh with the npm registry reachable to install it." >&2
fi

# npm packages: LangGraph.js (@langchain/langgraph, @langchain/core) with its SQLite
# checkpointer (@langchain/langgraph-checkpoint-sqlite on better-sqlite3 12: 13 crashes on
# Node 20), the peer that bench/peers/durable/run compares nines' durable workflows with.
# Pinned in bench/peers/durable/node/package.json and package-lock.json. better-sqlite3
# builds its native addon with node-gyp (make, g++, python3); it needs Node's headers, which
# it would download from nodejs.org unless npm_config_nodedir points at installed ones (the
# nodejs package ships them in /usr/include/node). As above: warn-only, nothing but that
# benchmark needs them.
npm_dir="$repo/bench/peers/durable/node"
if [[ -f "$npm_dir/node_modules/better-sqlite3/build/Release/better_sqlite3.node" &&
      -d "$npm_dir/node_modules/@langchain/langgraph-checkpoint-sqlite" ]]; then
  echo "setup: npm packages for bench/peers/durable present"
else
  if [[ -z "${npm_config_nodedir:-}" && -f /usr/include/node/node.h ]]; then
    export npm_config_nodedir=/usr
  fi
  if (cd "$npm_dir" && npm ci --no-audit --no-fund --prefer-offline); then
    echo "setup: npm packages for bench/peers/durable installed"
  else
    echo "setup: WARNING: 'npm ci' in $npm_dir failed, so LangGraph.js is not installed." >&2
    echo "setup: only bench/peers/durable/run needs it (builds and tests do not); rerun" >&2
    echo "setup: scripts/setup.sh with the npm registry reachable to install it." >&2
  fi
fi
# The same for bench/peers/agents (LangGraph.js's ReAct agent, plus @langchain/openai), warn-only.
(cd "$repo/bench/peers/agents/node" && { [[ -d node_modules/@langchain/openai && -f node_modules/better-sqlite3/build/Release/better_sqlite3.node ]] || npm_config_nodedir="${npm_config_nodedir:-$([[ -f /usr/include/node/node.h ]] && echo /usr)}" npm ci --no-audit --no-fund --prefer-offline; }) || echo "setup: WARNING: 'npm ci' in bench/peers/agents/node failed; only bench/peers/agents/run needs it" >&2

# npm packages: @dwmkerr/mock-llm, a real OpenAI-compatible server nobody here wrote, which the
# llm integration tests (tests/llm/mock_llm_test.cpp) start on loopback with the rules in
# tests/llm/mock_llm/mock-llm.yaml. Pinned in that folder's package.json and lock file. If the
# install fails, those tests fail with a message saying why, unless NINES_SKIP_MOCK_LLM=1.
npm_dir="$repo/tests/llm/mock_llm"
if [[ -f "$npm_dir/node_modules/@dwmkerr/mock-llm/dist/main.js" ]]; then
  echo "setup: npm packages for tests/llm/mock_llm present"
elif (cd "$npm_dir" && npm ci --no-audit --no-fund --prefer-offline); then
  echo "setup: npm packages for tests/llm/mock_llm installed"
else
  echo "setup: WARNING: 'npm ci' in $npm_dir failed, so mock-llm is not installed and the" >&2
  echo "setup: MockLlm integration tests will fail (NINES_SKIP_MOCK_LLM=1 skips them); rerun" >&2
  echo "setup: scripts/setup.sh with the npm registry reachable to install it." >&2
fi

# npm packages: the MCP reference servers @modelcontextprotocol/server-everything and
# server-filesystem, real MCP tool servers nobody here wrote, which the agent layer's MCP tests
# (tests/agent/mcp_test.cpp) run as child processes over stdio. Pinned in tests/agent/mcp_servers/
# package.json and lock file. If the install fails, those tests fail with a message saying why,
# unless NINES_SKIP_MCP=1.
npm_dir="$repo/tests/agent/mcp_servers"
if [[ -f "$npm_dir/node_modules/@modelcontextprotocol/server-everything/dist/index.js" &&
      -f "$npm_dir/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" ]]; then
  echo "setup: npm packages for tests/agent/mcp_servers present"
elif (cd "$npm_dir" && npm ci --no-audit --no-fund --prefer-offline); then
  echo "setup: npm packages for tests/agent/mcp_servers installed"
else
  echo "setup: WARNING: 'npm ci' in $npm_dir failed, so the MCP servers are not installed and the" >&2
  echo "setup: MCP integration tests will fail (NINES_SKIP_MCP=1 skips them); rerun" >&2
  echo "setup: scripts/setup.sh with the npm registry reachable to install it." >&2
fi

# npm packages: js-tiktoken (pure JS BPE tokenizer shipping OpenAI's o200k_base and
# cl100k_base ranks), the exact counts bench/peers/tokens/run calibrates nines' token
# estimator (llm/tokens.hpp) against. Pinned in bench/peers/tokens/node/package.json and
# package-lock.json. As above: warn-only; the C++ unit tests carry their exact counts as
# constants and do not need node.
npm_dir="$repo/bench/peers/tokens/node"
if [[ -d "$npm_dir/node_modules/js-tiktoken" ]]; then
  echo "setup: npm packages for bench/peers/tokens present"
elif (cd "$npm_dir" && npm ci --no-audit --no-fund --prefer-offline); then
  echo "setup: npm packages for bench/peers/tokens installed"
else
  echo "setup: WARNING: 'npm ci' in $npm_dir failed, so js-tiktoken is not installed." >&2
  echo "setup: only bench/peers/tokens/run needs it (builds and tests do not); rerun" >&2
  echo "setup: scripts/setup.sh with the npm registry reachable to install it." >&2
fi

# npm packages: openai (the official SDK), the peer bench/peers/llm_client/run compares the nines
# model path with, against the same sim server. Pinned in bench/peers/llm_client/node/
# package.json and package-lock.json. Warn-only: nothing but that benchmark needs it.
npm_dir="$repo/bench/peers/llm_client/node"
if [[ -d "$npm_dir/node_modules/openai" ]]; then
  echo "setup: npm packages for bench/peers/llm_client present"
elif (cd "$npm_dir" && npm ci --no-audit --no-fund --prefer-offline); then
  echo "setup: npm packages for bench/peers/llm_client installed"
else
  echo "setup: WARNING: 'npm ci' in $npm_dir failed, so the openai SDK is not installed." >&2
  echo "setup: only bench/peers/llm_client/run needs it (builds and tests do not); rerun" >&2
  echo "setup: scripts/setup.sh with the npm registry reachable to install it." >&2
fi
