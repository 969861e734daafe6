#!/bin/sh
# Reproduces the structured-pruning measurements of docs/compression.md on the shipped model.
# Usage (from the repository root, after `meson setup build && meson compile -C build` and
# `/usr/bin/python3 models/make_corpus.py /tmp/kjv`):
#   sh docs/measure_pruning.sh build /tmp/kjv [noft|recover|all]
# Calibration = the first 60,000 bytes of train.txt; every perplexity is `itera-run ppl` on the
# whole of heldout.txt. `recover` fine-tunes with models/recover.py (300 or 1000 steps; with
# OpenBLAS as in models/README.md about 0.5 s a step on a free core).
set -eu
build=$1
corpus=$2
what=${3:-all}
work=$(mktemp -d)
convert=$build/itera-convert
run=$build/itera-run
ck=models/itera_lite_kjv.pt
tok=models/tokenizer_kjv.json
head -c 60000 "$corpus/train.txt" > "$work/calib.txt"
$convert $ck -o "$work/base.itl" --tokenizer $tok >/dev/null
echo "work directory: $work"

noft() {  # name, itera-convert options: held-out perplexity and KL divergence from the FP32 file
    name=$1
    shift
    $convert $ck -o "$work/$name.itl" --tokenizer $tok "$@" >/dev/null
    echo "$name | $* | $(wc -c < "$work/$name.itl") bytes | $($run ppl -m "$work/$name.itl" --file "$corpus/heldout.txt" --kld-ref "$work/base.itl" --json)"
}

recover() {  # name ratio scope quant steps: before (itera-convert, GPTQ) and after models/recover.py
    name=$1 ratio=$2 scope=$3 quant=$4 steps=$5
    plan=""
    if [ "$ratio" != 0 ]; then
        $convert $ck -o "$work/$name.before.itl" --tokenizer $tok --prune "$ratio" --prune-scope "$scope" \
            --calib "$work/calib.txt" --quant "$quant" --report "$work/$name.json" >/dev/null
        plan="--prune-report $work/$name.json"
    else
        $convert $ck -o "$work/$name.before.itl" --tokenizer $tok --calib "$work/calib.txt" --quant "$quant" >/dev/null
    fi
    before=$($run ppl -m "$work/$name.before.itl" --file "$corpus/heldout.txt" --json)
    # shellcheck disable=SC2086
    /usr/bin/python3 models/recover.py "$corpus" $plan --quant "$quant" --steps "$steps" --out "$work/$name.pt" \
        > "$work/$name.log"
    $convert "$work/$name.pt" -o "$work/$name.after.itl" --tokenizer $tok --quant "$quant" >/dev/null
    after=$($run ppl -m "$work/$name.after.itl" --file "$corpus/heldout.txt" --json)
    echo "$name | --prune $ratio --prune-scope $scope --quant $quant, $steps steps | before $(wc -c < "$work/$name.before.itl") bytes $before | after $(wc -c < "$work/$name.after.itl") bytes $after"
}

if [ "$what" != recover ]; then
    for r in 0.3 0.5; do
        noft "magnitude-uniform-$r" --prune $r
        noft "magnitude-sensitivity-$r" --prune $r --calib "$work/calib.txt" --prune-importance magnitude
        noft "activation-uniform-$r" --prune $r --calib "$work/calib.txt" --prune-uniform
        noft "activation-sensitivity-$r" --prune $r --calib "$work/calib.txt"
        noft "taylor-sensitivity-$r" --prune $r --calib "$work/calib.txt" --prune-importance taylor
        noft "activation-sensitivity-ssm-$r" --prune $r --calib "$work/calib.txt" --prune-scope moe,ffn,ssm
    done
fi
if [ "$what" != noft ]; then
    recover q4 0 - q4 300
    recover p50-q4 0.5 moe,ffn q4 300
    recover p50ssm-q4 0.5 moe,ffn,ssm q4 300
    recover p50ssm-q3 0.5 moe,ffn,ssm q3 300
    recover p50ssm-q3-long 0.5 moe,ffn,ssm q3 1000
    recover q2 0 - q2 300
    recover p50ssm-q2 0.5 moe,ffn,ssm q2 300
    recover p50ssm-q2-long 0.5 moe,ffn,ssm q2 1000
    # hidden 96 -> 64 (recipe only), then half of moe,ffn,ssm chosen on that model, q2, 600 steps
    /usr/bin/python3 models/recover.py "$corpus" --hidden 64 --steps 0 --out "$work/h64.pt" > "$work/h64.log"
    $convert "$work/h64.pt" -o "$work/h64p.before.itl" --tokenizer $tok --prune 0.5 --prune-scope moe,ffn,ssm \
        --calib "$work/calib.txt" --quant q2 --report "$work/h64p.json" >/dev/null
    /usr/bin/python3 models/recover.py "$corpus" --ckpt "$work/h64.pt" --prune-report "$work/h64p.json" --quant q2 \
        --steps 600 --out "$work/h64p.pt" >> "$work/h64.log"
    $convert "$work/h64p.pt" -o "$work/h64p.after.itl" --tokenizer $tok --quant q2 >/dev/null
    echo "h64p | before $(wc -c < "$work/h64p.before.itl") bytes $($run ppl -m "$work/h64p.before.itl" --file "$corpus/heldout.txt" --json) | after $(wc -c < "$work/h64p.after.itl") bytes $($run ppl -m "$work/h64p.after.itl" --file "$corpus/heldout.txt" --json)"
    /usr/bin/python3 models/recover.py "$corpus" --quant fp32 --steps 300 --out "$work/control.pt" > "$work/control.log"
    $convert "$work/control.pt" -o "$work/control.itl" --tokenizer $tok >/dev/null
    echo "control: the same 300 steps on the unpruned FP32 model | $($run ppl -m "$work/control.itl" --file "$corpus/heldout.txt" --json)"
fi
