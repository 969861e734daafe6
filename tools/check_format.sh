#!/bin/sh
# Fails when a C or C++ source of the repository differs from what clang-format makes of it
# (.clang-format at the root; Debian 12's clang-format 14). Lists each such file and how many
# places differ; `clang-format -i FILE` fixes one. Run by meson test (`format`, release build).
set -u
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "error: clang-format is not installed (tools/install-deps.sh)"; exit 1; }
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    files=$(git ls-files '*.c' '*.cpp' '*.h' '*.hpp' '*.cu' '*.cuh')
else  # an unpacked source tree: every source outside build and virtualenv folders
    files=$(find . -path './build*' -prune -o -path './.git' -prune -o -type f \
        \( -name '*.c' -o -name '*.cpp' -o -name '*.h' -o -name '*.hpp' -o -name '*.cu' -o -name '*.cuh' \) -print)
fi
checked=0 bad=0
for f in $files; do
    checked=$((checked + 1))
    n=$(clang-format --dry-run "$f" 2>&1 | grep -c 'warning:')
    if [ "$n" -ne 0 ]; then
        echo "$f: $n places differ from clang-format"
        bad=$((bad + 1))
    fi
done
echo "clang-format: $checked files checked, $bad differ"
[ "$bad" -eq 0 ]
