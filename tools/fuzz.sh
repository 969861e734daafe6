#!/bin/sh
# Builds the libFuzzer targets of fuzz/ with clang (ASan + UBSan, build-fuzz/), makes seed corpora
# from real files, and runs the targets one after another, each until SECONDS (default 600) or
# RUNS executions (default 1000000), whichever comes first.
#
#   tools/fuzz.sh [SECONDS] [TARGET...]     TARGET: pt_reader checkpoint_to_spec itl_loader
#                                           itl_loader_nochecksum tokenizer_json saved_state
#                                           saved_state_fixsum (default: all)
#   RUNS=N  JOBS=N (ninja)  ITERA_UPSTREAM_DIR=DIR (default ../shared/upstream, used when present)
#
# Per target: build-fuzz/fuzz-logs/T.log (the last lines are printed), new inputs in
# build-fuzz/fuzz-corpus/T/ (kept: a rerun resumes; delete it to start over), crashes in
# build-fuzz/fuzz-artifacts/T/. Exits 1 when any target reported a finding. docs/fuzzing.md
# records the runs; a finding, once fixed, goes to tests/fuzz_regressions/.
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-600}
[ $# -gt 0 ] && shift
targets=${*:-pt_reader checkpoint_to_spec itl_loader itl_loader_nochecksum tokenizer_json saved_state saved_state_fixsum}
runs=${RUNS:-1000000}
upstream=${ITERA_UPSTREAM_DIR:-../shared/upstream}
b=build-fuzz
py=/usr/bin/python3

[ -f $b/build.ninja ] ||
    CC=clang CXX=clang++ meson setup $b -Dfuzz=true -Db_lundef=false --buildtype=debugoptimized >/dev/null
nice -n 10 meson compile -C $b ${JOBS:+-j $JOBS} >/dev/null || meson compile -C $b -j 1

# ---- seed corpora: real files, one folder per target ----
seeds=$b/fuzz-seeds
src=$seeds/src
rm -rf $seeds
mkdir -p $src
$py tests/pt/make_pt_fixtures.py $src/pt >/dev/null        # every dtype, protocols 1-5, refused files
$py tests/golden/make_golden.py $src/golden >/dev/null     # small models in every checkpoint layout
$py fuzz/make_tiny_checkpoints.py $src/tiny                # a few KB each
add() {  # folder, files... (missing files, e.g. without the upstream data, are skipped)
    dir=$seeds/$1
    shift
    mkdir -p $dir
    for f in "$@"; do
        [ -f "$f" ] && cp "$f" "$dir/$(echo "$f" | sed "s|^$src/||; s|^$upstream/||" | tr / _)"
    done
    return 0
}
add pt_reader $src/pt/*.pt $src/golden/*/model.pt $src/tiny/*.pt models/*.pt "$upstream"/checkpoints/*/*.pt
add checkpoint_to_spec $src/golden/*/model.pt $src/tiny/*.pt models/*.pt "$upstream"/checkpoints/*/*.pt
add tokenizer_json $src/tiny/*.json $src/golden/*/cfg.json models/*.json "$upstream"/data/*.json \
    "$upstream"/checkpoints/*/*.json
# .itl files from the converter: every storage type, with and without a (trimmed) tokenizer.
convert() {  # name, itera-convert arguments...
    name=$1
    shift
    $b/itera-convert "$@" -o $src/$name.itl >/dev/null
    add itl_loader $src/$name.itl
}
tiny=$src/tiny
convert tiny_fp32_tok $tiny/tiny_moe.pt --tokenizer $tiny/tiny_tokenizer.json --no-trim-vocab
convert tiny_trimmed $tiny/tiny_moe.pt --tokenizer $tiny/tiny_tokenizer.json --dtype q8
for q in fp16 q4 nf4 q3 q2; do convert tiny_$q $tiny/tiny_moe.pt --dtype $q; done
convert tiny_dense $tiny/tiny_dense_fp16.pt --tokenizer $tiny/tiny_tokenizer.json
convert golden_b $src/golden/b/model.pt --top-k 1
convert golden_d $src/golden/d/model.pt --config $src/golden/d/cfg.json --dtype q4
convert kjv_q4 models/itera_lite_kjv.pt --tokenizer models/tokenizer_kjv.json --dtype q4
[ -f "$upstream/data/tokenizer_tiny.json" ] && [ -f "$upstream/checkpoints/int4/itera_lite_int4.pt" ] &&
    convert upstream_int4 "$upstream/checkpoints/int4/itera_lite_int4.pt" --tokenizer "$upstream/data/tokenizer_tiny.json"
# Saved context states of the two models fuzz_saved_state is built with (it writes them itself).
mkdir -p $seeds/saved_state
ITERA_FUZZ_WRITE_SEEDS=$seeds/saved_state $b/fuzz_saved_state
# Saved findings and edge cases seed their target too.
for t in pt_reader checkpoint_to_spec itl_loader tokenizer_json saved_state; do add $t tests/fuzz_regressions/$t/*; done
cp -r $seeds/itl_loader $seeds/itl_loader_nochecksum
cp -r $seeds/saved_state $seeds/saved_state_fixsum

# ---- the runs, one at a time ----
status=0
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
mkdir -p $b/fuzz-logs
for t in $targets; do
    mkdir -p $b/fuzz-corpus/$t $b/fuzz-artifacts/$t
    # Whole seeds: libFuzzer would otherwise cut inputs (the checkpoints among them) at 1 MiB.
    max_len=$(wc -c $seeds/$t/* | sort -n | tail -2 | head -1 | awk '{print $1}')
    echo "== fuzz_$t: $(ls $seeds/$t | wc -l) seeds (up to $max_len bytes), up to $runs runs or $seconds s"
    # -malloc_limit_mb: no input of these sizes justifies a single allocation of 128 MiB.
    if ! nice -n 10 $b/fuzz_$t -runs="$runs" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
        -malloc_limit_mb=128 -max_len="$max_len" -print_final_stats=1 -artifact_prefix=$b/fuzz-artifacts/$t/ \
        $b/fuzz-corpus/$t $seeds/$t >$b/fuzz-logs/$t.log 2>&1; then
        status=1
        echo "   FINDING: see $b/fuzz-logs/$t.log and $b/fuzz-artifacts/$t/"
    fi
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^Done|^stat::|SUMMARY|ERROR' $b/fuzz-logs/$t.log | sed 's/^/   /'
done
exit $status
