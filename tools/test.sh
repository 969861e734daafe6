#!/bin/sh
# Builds and runs every test twice: a release build, and a build under AddressSanitizer and
# UndefinedBehaviorSanitizer. Ends with one "N passed, N failed" line over both.
set -u
cd "$(dirname "$0")/.."
status=0
build() {  # dir, extra meson options...
    dir=$1
    shift
    [ -f "$dir/build.ninja" ] || meson setup "$dir" "$@" >/dev/null || return 1
    meson compile -C "$dir" >/dev/null || meson compile -C "$dir"
}
build build-test --buildtype=release || status=1
build build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false || status=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1
for dir in build-test build-asan; do
    echo "== meson test -C $dir"
    meson test -C "$dir" --print-errorlogs --num-processes 2 || status=1
done
/usr/bin/python3 tools/count_tests.py build-test/meson-logs/testlog.json build-asan/meson-logs/testlog.json || status=1
exit $status
