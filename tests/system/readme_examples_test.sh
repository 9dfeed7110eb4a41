#!/usr/bin/env bash
# README.md's "Use nines in your program" code blocks are the [readme:NAME] regions of
# examples/consumer/NAME.cpp, verbatim: the examples are built and run by the tests, so the
# README's code cannot rot. And include/nines/nines.hpp includes every public header. usage: readme_examples_test.sh SOURCE_DIR
set -euo pipefail
src=$1
for name in supervised model_call; do
  file="$src/examples/consumer/$name.cpp"
  want=$(awk -v tag="// [readme:$name]" '$0 == tag {on = 1; next} $0 == "// [readme:end]" {on = 0} on' "$file")
  [[ -n "$want" ]] || { echo "readme_examples: no [readme:$name] region in $file" >&2; exit 1; }
  # The README block follows a line "<!-- readme:NAME -->" and is fenced with ```cpp.
  got=$(awk -v tag="<!-- readme:$name -->" '$0 == tag {seen = 1; next} seen && /^```cpp$/ {on = 1; next}
                                             on && /^```$/ {exit} on' "$src/README.md")
  if [[ "$want" != "$got" ]]; then
    echo "readme_examples: README.md's block <!-- readme:$name --> differs from $file:" >&2
    diff <(echo "$want") <(echo "$got") >&2 || true
    exit 1
  fi
done
# The umbrella header includes every public header (a new header cannot be forgotten).
for h in "$src"/include/nines/*/*.hpp; do
  rel=${h#"$src/include/"}
  grep -q "#include \"$rel\"" "$src/include/nines/nines.hpp" || {
    echo "readme_examples: include/nines/nines.hpp does not include $rel" >&2
    exit 1
  }
done
echo "readme_examples: OK"
