#!/bin/bash
# Instructions per decoded token, counted by callgrind (docs/bench.md). Builds nothing.
#
# usage: bench/callgrind_decode.sh BUILD_DIR MODEL.itl [N1 N2]
#
# Runs `itera-run generate --greedy` under `valgrind --tool=callgrind` twice, for N1 and N2
# tokens (default 16 and 112) after a one-token prompt, and prints
#   (Ir(N2) - Ir(N1)) / (N2 - N1)
# so loading, checking the file and setting up cancel out. Both runs stay within the model's
# max_seq_length: past it every token re-runs the whole window and costs far more.
# ITERA_KERNELS defaults to avx2 (valgrind 3.19 cannot run AVX-512). PROMPT_ID (default 4) is
# the prompt token. A greedy run that meets <EOS> early would count fewer tokens: that is an error.
set -euo pipefail

if [ $# -ne 2 ] && [ $# -ne 4 ]; then
    echo "usage: $0 BUILD_DIR MODEL.itl [N1 N2]" >&2
    exit 2
fi
build=$1 model=$2 n1=${3:-16} n2=${4:-112}
run=$build/itera-run
export ITERA_KERNELS=${ITERA_KERNELS:-avx2}
prompt=${PROMPT_ID:-4}

fail() { echo "error: $*" >&2; exit 1; }
[ -x "$run" ] || fail "$run not found (build it: meson compile -C $build itera-run)"
[ -f "$model" ] || fail "$model not found"
command -v valgrind >/dev/null || fail "valgrind not installed (apt-get install valgrind)"
if ! [[ $n1 =~ ^[0-9]+$ && $n2 =~ ^[0-9]+$ ]] || [ "$n1" -ge "$n2" ]; then fail "need 0 <= N1 < N2, got $n1 $n2"; fi
max=$("$run" info -m "$model" --json | sed -n 's/.*"max_seq_length": \([0-9]*\).*/\1/p')
[ -n "$max" ] || fail "itera-run info printed no max_seq_length"
[ $((n2 + 1)) -le "$max" ] || fail "N2 + 1 prompt token = $((n2 + 1)) exceeds max_seq_length $max"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Total instructions (Ir) of one run generating $1 tokens.
count() {
    local out=$work/callgrind.$1
    valgrind --tool=callgrind --callgrind-out-file="$out" --log-file="$work/valgrind.$1" \
        "$run" generate -m "$model" --ids "$prompt" -n "$1" --greedy --print-ids >"$work/ids.$1" 2>"$work/log.$1" ||
        fail "valgrind $run generate -n $1 failed: $(tail -3 "$work/log.$1")"
    local got
    got=$(wc -w <"$work/ids.$1")
    [ "$got" -eq "$1" ] || fail "generate -n $1 printed $got ids (an <EOS>?); try another PROMPT_ID"
    sed -n 's/^totals: \([0-9]*\).*/\1/p' "$out"
}

ir1=$(count "$n1")
ir2=$(count "$n2")
per_token=$(((ir2 - ir1) / (n2 - n1)))
echo "model $model, ITERA_KERNELS=$ITERA_KERNELS, $(valgrind --version)"
echo "Ir($n1 tokens) = $ir1, Ir($n2 tokens) = $ir2"
echo "instructions per decoded token: $per_token"
