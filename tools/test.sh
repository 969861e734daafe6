#!/bin/sh
# Builds and runs every test twice: a release build, and a build under AddressSanitizer and
# UndefinedBehaviorSanitizer; then the threaded tests (the server's scheduler and load, the C API's
# threads, batches on several threads) a third time under ThreadSanitizer. Ends with one
# "N passed, N failed" line over all three.
set -u
cd "$(dirname "$0")/.."
status=0
build() {  # dir, extra meson options...
    dir=$1
    shift
    if [ -f "$dir/build.ninja" ]; then
        meson configure "$dir" "$@" >/dev/null || return 1
    else
        meson setup "$dir" "$@" >/dev/null || return 1
    fi
    meson compile -C "$dir" >/dev/null || meson compile -C "$dir"
}
# The Python package is built for, and tested with, the virtualenv of tools/python_env.sh (Debian's
# python3 with its numpy and torch, plus the pinned PyPI packages of tools/requirements-test.txt).
python=$(tools/python_env.sh) || { status=1; python=; }
build build-test --buildtype=release -Dpython="$python" || status=1
build build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false -Dpython="$python" || status=1
# ThreadSanitizer: only what the "threads" suite runs is built (tests/meson.build).
tsan_targets="itera-server itera-run itera_server_tests itera_tests"
if [ -f build-tsan/build.ninja ] || meson setup build-tsan --buildtype=debugoptimized -Db_sanitize=thread -Db_lundef=false >/dev/null; then
    meson compile -C build-tsan $tsan_targets >/dev/null || meson compile -C build-tsan $tsan_targets || status=1
else
    status=1
fi
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
for dir in build-test build-asan; do
    echo "== meson test -C $dir"
    meson test -C "$dir" --print-errorlogs --num-processes 2 || status=1
done
echo "== meson test -C build-tsan --suite threads"
meson test -C build-tsan --no-rebuild --suite threads --print-errorlogs --num-processes 2 || status=1
/usr/bin/python3 tools/count_tests.py build-test/meson-logs/testlog.json build-asan/meson-logs/testlog.json \
    build-tsan/meson-logs/testlog.json || status=1
exit $status
