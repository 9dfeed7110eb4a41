#!/usr/bin/env bash
# Consuming nines from another project, as a user would (examples/consumer):
#  1. `cmake --install` the current build into a temporary prefix; check the tree it made;
#  2. build examples/consumer against it with find_package(nines CONFIG) and run both programs;
#  3. build and run supervised.cpp with nothing but `pkg-config --cflags --libs nines`;
#  4. add nines' sources as a subdirectory with only the lower layers (NINES_WITH_NET, _LLM,
#     _SQLITE and _POSTGRES off): the build must configure and link without libcurl, SQLite or
#     libpq, build no tests, and run supervised.
# usage: install_test.sh SOURCE_DIR BUILD_DIR CXX_COMPILER [SANITIZERS]
set -euo pipefail
src=$1 build=$2 cxx=$3 sanitize=${4:-}
work="$build/install_test"  # under the build tree: a fixed path keeps ccache hits across runs
rm -rf "$work/prefix" "$work/find_package" "$work/pkg_config" "$work/subdirectory/bin"
mkdir -p "$work"
fail() { echo "install_test: FAIL: $*" >&2; exit 1; }
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)

echo "== 1. cmake --install into $work/prefix"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
p="$work/prefix"
for f in include/nines/nines.hpp include/nines/version.hpp include/nines/features.hpp \
         include/nines/runtime/supervisor.hpp include/nines/llm/router.hpp \
         lib/libnines_core.a lib/libnines_runtime.a lib/libnines_llm.a \
         lib/cmake/nines/ninesConfig.cmake lib/cmake/nines/ninesConfigVersion.cmake \
         lib/cmake/nines/ninesTargets.cmake lib/pkgconfig/nines.pc bin/nines; do
  [[ -e "$p/$f" ]] || fail "cmake --install did not install $f"
done
# No private header (src/) and no third-party header leaked into the installed tree.
if grep -rlE '#include [<"](curl/|sqlite3\.h|libpq-fe\.h|llhttp\.h|nlohmann/)' "$p/include"; then
  fail "an installed header includes a third-party C library header (listed above)"
fi
want=$(sed -n 's/^#define NINES_VERSION "\(.*\)"/\1/p' "$p/include/nines/version.hpp")
[[ -n "$want" ]] || fail "version.hpp has no NINES_VERSION"
version=$("$p/bin/nines" --version) || fail "the installed nines --version failed"
[[ "$version" == "nines $want" ]] || fail "nines --version says '$version', not 'nines $want'"

echo "== 2. examples/consumer with find_package(nines CONFIG)"
cmake -S "$src/examples/consumer" -B "$work/find_package" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
      -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_PREFIX_PATH="$p" "${launcher[@]}" >/dev/null
cmake --build "$work/find_package" -j2 >/dev/null || { cmake --build "$work/find_package" -j1; fail "find_package build"; }
"$work/find_package/supervised" || fail "supervised (find_package build) exited $?"
"$work/find_package/model_call" || fail "model_call (find_package build) exited $?"

echo "== 3. supervised.cpp with pkg-config only"
mkdir -p "$work/pkg_config"
export PKG_CONFIG_PATH="$p/lib/pkgconfig"
pkg-config --exists --print-errors nines || fail "pkg-config cannot read nines.pc"
[[ "$(pkg-config --modversion nines)" == "$want" ]] ||
  fail "nines.pc's version differs from NINES_VERSION"
# shellcheck disable=SC2046
"$cxx" -std=c++20 -o "$work/pkg_config/supervised" "$src/examples/consumer/supervised.cpp" \
  $(pkg-config --cflags --libs nines) || fail "compiling with pkg-config's flags"
"$work/pkg_config/supervised" || fail "supervised (pkg-config build) exited $?"

echo "== 4. add_subdirectory with the runtime layers only"
sub="$work/subdirectory"
cmake -S "$src/examples/consumer" -B "$sub" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$cxx" \
      -DNINES_SOURCE_DIR="$src" -DNINES_WITH_NET=OFF -DNINES_WITH_LLM=OFF -DNINES_WITH_SQLITE=OFF \
      -DNINES_WITH_POSTGRES=OFF "${launcher[@]}" >/dev/null
if grep -E 'nines_[a-z]+_test|gtest|benchmark' "$sub/build.ninja" | grep -q 'build '; then
  fail "nines built as a subdirectory declares test or benchmark targets"
fi
if grep -qE -- '-lcurl|libcurl|-lsqlite3|libsqlite3|-lpq\b|libpq' "$sub/build.ninja"; then
  fail "the runtime-only build links libcurl, SQLite or libpq"
fi
if grep -qE '^(CURL_|SQLite3_|PostgreSQL_)[A-Za-z_]*:' "$sub/CMakeCache.txt"; then
  fail "the runtime-only configure looked for libcurl, SQLite or libpq"
fi
grep -q -- '-Werror' "$sub/build.ninja" && fail "nines as a subdirectory turned -Werror on"
cmake --build "$sub" -j2 --target supervised >/dev/null || { cmake --build "$sub" -j1 --target supervised; fail "subdirectory build"; }
"$sub/supervised" || fail "supervised (subdirectory build) exited $?"
[[ -e "$sub/model_call" ]] && fail "model_call was built without the llm layer"

echo "install_test: OK ($version)"
