#!/bin/sh
# Installs a build into a temporary directory, builds examples/generate.c and examples/generate.cpp
# against the installed package with pkg-config (shared library; the C one also static), runs them
# on the installed model and checks their text against the installed itera-run with the same seed;
# builds examples/convert.c against libitera_convert and checks its file against itera-convert's.
#   tools/test_install.sh BUILD_DIR [SANITIZERS]   (SANITIZERS: the build's b_sanitize, e.g. none)
# Ends with "N passed, N failed"; exit status 0 only when nothing failed.
set -u
[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR [SANITIZERS]" >&2; exit 2; }
build=$(cd "$1" && pwd) || exit 2
sanitize=${2:-none}
src=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/itera-install-XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
cc=${CC:-cc}
cxx=${CXX:-c++}
san=
[ "$sanitize" = none ] || san="-fsanitize=$sanitize"
passed=0
failed=0

check() {  # name, command...: passes when the command exits 0
    name=$1
    shift
    if "$@" >"$tmp/log" 2>&1; then
        passed=$((passed + 1))
        echo "ok   $name"
    else
        failed=$((failed + 1))
        echo "FAIL $name"
        sed 's/^/     /' "$tmp/log"
    fi
}

finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

check "meson install --destdir" meson install -C "$build" --no-rebuild --quiet --destdir "$root"
pc=$(find "$root" -name itera.pc | head -n 1)
check "itera.pc installed" test -n "$pc"
[ -n "$pc" ] || finish
# The .pc names the configured prefix; point it at the staged copy.
prefix=$(sed -n 's/^prefix=//p' "$pc")
export PKG_CONFIG_PATH="$(dirname "$pc")"
pkg() { pkg-config --define-variable=prefix="$root$prefix" "$@" itera; }
libdir=$(pkg --variable=libdir)
bindir=$root$prefix/bin
model=$(pkg --variable=modeldir)/itera-kjv.itl

installed() {
    for f in "$@"; do
        [ -e "$f" ] || { echo "missing $f"; return 1; }
    done
}
check "headers, libraries, CLIs and model installed" installed "$(pkg --variable=includedir)/itera.h" \
    "$(pkg --variable=includedir)/itera.hpp" "$libdir/libitera.so" "$libdir/libitera.a" "$bindir/itera-run" \
    "$bindir/itera-convert" "$model"

exports_the_c_api() {  # exactly the functions the installed itera.h declares
    nm -D --defined-only "$libdir/libitera.so" | awk '{print $3}' | sort >"$tmp/exported"
    sed -n 's/^ITERA_API [^(]*[ *]\(itera_[a-z_0-9]*\)(.*/\1/p' "$(pkg --variable=includedir)/itera.h" | sort >"$tmp/declared"
    [ -s "$tmp/declared" ] && diff "$tmp/declared" "$tmp/exported"
}
check "libitera.so exports exactly the C API" exports_the_c_api

check "generate.c builds (shared)" $cc -std=c99 -Wall -Wextra -Werror -pedantic $san "$src/examples/generate.c" \
    $(pkg --cflags --libs) -o "$tmp/generate-c"
check "generate.cpp builds (shared)" $cxx -std=c++17 -Wall -Wextra -Werror -pedantic $san "$src/examples/generate.cpp" \
    $(pkg --cflags --libs) -o "$tmp/generate-cpp"
# Static: the same flags with libitera.a named explicitly, plus what `--static` adds.
static_libs=$(pkg --static --libs | sed 's/-litera\( \|$\)/-l:libitera.a /')
check "generate.c builds (static)" $cc -std=c99 -Wall -Wextra -Werror $san "$src/examples/generate.c" \
    $(pkg --cflags) $static_libs -o "$tmp/generate-static"
not_linked_to_libitera() { ! readelf -d "$1" | grep -q 'libitera\.so'; }
check "static build does not need libitera.so" not_linked_to_libitera "$tmp/generate-static"

# The converter's C API: its own library, header and .pc, exporting exactly itera_convert.h.
pkgc() { pkg-config --define-variable=prefix="$root$prefix" "$@" itera_convert; }
check "itera_convert.h, libitera_convert and itera_convert.pc installed" installed \
    "$(pkgc --variable=includedir)/itera_convert.h" "$libdir/libitera_convert.so" "$libdir/libitera_convert.a"
exports_the_convert_api() {
    nm -D --defined-only "$libdir/libitera_convert.so" | awk '{print $3}' | sort >"$tmp/exported"
    sed -n 's/^ITERA_API [^(]*[ *]\(itera_[a-z_0-9]*\)(.*/\1/p' "$(pkgc --variable=includedir)/itera_convert.h" | sort >"$tmp/declared"
    [ -s "$tmp/declared" ] && diff "$tmp/declared" "$tmp/exported"
}
check "libitera_convert.so exports exactly itera_convert.h" exports_the_convert_api
# The converter never links the CUDA backend (kernels_cuda/): neither the library nor the CLI.
no_cuda() { for f in "$@"; do ! nm -C "$f" | grep -q 'itera::cuda::' || { echo "$f has itera::cuda symbols"; return 1; }; done; }
check "itera-convert and libitera_convert hold no CUDA backend" no_cuda "$bindir/itera-convert" "$libdir/libitera_convert.so"
check "convert.c builds (shared)" $cc -std=c99 -Wall -Wextra -Werror -pedantic $san "$src/examples/convert.c" \
    $(pkgc --cflags --libs) -o "$tmp/convert-c"
same_file_as_itera_convert() {  # the same output path for both: the provenance records the command line
    ck=$src/models/itera_lite_kjv.pt
    tok=$src/models/tokenizer_kjv.json
    LD_LIBRARY_PATH="$libdir" "$tmp/convert-c" "$ck" "$tok" "$tmp/kjv.itl" q4 && mv "$tmp/kjv.itl" "$tmp/kjv-c.itl" &&
        "$bindir/itera-convert" "$ck" --tokenizer "$tok" -o "$tmp/kjv.itl" --quant q4 && cmp "$tmp/kjv.itl" "$tmp/kjv-c.itl"
}
check "convert.c writes itera-convert's file byte for byte" same_file_as_itera_convert

prompt="and god said"
n=24
seed=7
"$bindir/itera-run" -m "$model" -p "$prompt" -n $n --seed $seed >"$tmp/want.txt" 2>"$tmp/want.err"
runs_and_matches() {  # program: exit 0, text longer than the prompt, equal to itera-run's
    LD_LIBRARY_PATH="$libdir" "$1" "$model" "$prompt" $n $seed >"$tmp/got.txt" || return 1
    cat "$tmp/got.txt"
    case $(head -n 1 "$tmp/got.txt") in
        "$prompt"?*) ;;
        *) echo "output does not continue the prompt '$prompt'"; return 1 ;;
    esac
    cmp "$tmp/got.txt" "$tmp/want.txt" || { echo "itera-run printed:"; cat "$tmp/want.txt" "$tmp/want.err"; return 1; }
}
check "generate.c (shared) generates itera-run's text" runs_and_matches "$tmp/generate-c"
check "generate.cpp generates itera-run's text" runs_and_matches "$tmp/generate-cpp"
check "generate.c (static) generates itera-run's text" runs_and_matches "$tmp/generate-static"

# The GPU through the C API: the CUDA kernels emulated on host threads give itera-run --device
# cuda's text; without a GPU (and without emulation) a clean error code and message.
ITERA_CUDA_EMULATE=1 "$bindir/itera-run" -m "$model" -p "$prompt" -n $n --seed $seed --device cuda \
    >"$tmp/want-cuda.txt" 2>"$tmp/want-cuda.err"
runs_on_cuda() {  # program: the emulated GPU gives itera-run --device cuda's text
    ITERA_CUDA_EMULATE=1 LD_LIBRARY_PATH="$libdir" "$1" "$model" "$prompt" $n $seed cuda >"$tmp/got.txt" || return 1
    cmp "$tmp/got.txt" "$tmp/want-cuda.txt" || { cat "$tmp/got.txt" "$tmp/want-cuda.txt" "$tmp/want-cuda.err"; return 1; }
}
check "generate.c on cuda (emulated) generates itera-run --device cuda's text" runs_on_cuda "$tmp/generate-c"
refuses_without_gpu() {  # exit 1 and one error line naming the code
    if nvidia-smi -L >/dev/null 2>&1; then echo "a GPU is present: nothing to refuse"; return 0; fi
    LD_LIBRARY_PATH="$libdir" "$1" "$model" "$prompt" $n $seed cuda >"$tmp/got.txt" 2>"$tmp/got.err"
    rc=$?
    cat "$tmp/got.err"
    [ $rc -eq 1 ] && [ "$(wc -l <"$tmp/got.err")" -eq 1 ] && grep -q '^error: creating a context: no CUDA device: .*(ITERA_ERR_NO_\(DEVICE\|CUDA\))$' "$tmp/got.err"
}
check "generate.c on cuda without a GPU: ITERA_ERR_NO_DEVICE / NO_CUDA and why" refuses_without_gpu "$tmp/generate-c"
finish
