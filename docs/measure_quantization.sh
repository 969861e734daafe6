#!/bin/sh
# Reproduces the tables of docs/quantization.md: every storage type, with and without calibration,
# for the shipped model and the upstream micro checkpoint. Usage (from the repository root, after
# `meson setup build && meson compile -C build`):
#   sh docs/measure_quantization.sh build [../shared/upstream] [lowbit]
# `lowbit` gives the sub-4-bit table instead: q4 (for comparison), q3, q2 and q3 with delta_proj
# at q2, each round-to-nearest and calibrated.
# The KJV corpus is regenerated with models/make_corpus.py (needs `apt-get install bible-kjv`).
set -eu
build=$1
upstream=${2:-../shared/upstream}
mode=${3:-main}
work=$(mktemp -d)
convert=$build/itera-convert
run=$build/itera-run

row() {  # label model.itl reference.itl eval.txt
    info=$($run info -m "$2" --json)
    ppl=$($run ppl -m "$2" --file "$4" --kld-ref "$3" --json)
    /usr/bin/python3 - "$1" "$info" "$ppl" <<'PY'
import json, sys
label, info, ppl = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"| {label} | {info['file_bytes']:,} | {info['bits_per_weight']:.2f} | {ppl['ppl']:.3f} | "
      f"{ppl['kld']:.6f} | {100 * ppl['top1']:.2f}% |")
PY
}

main_rows() {  # the q8 / q4 / nf4 table
    row "fp32 (untrimmed, the reference)" "$work/ref.itl" "$work/ref.itl" "$5"
    for q in fp32 fp16 q8 q4 nf4; do
        $convert "$2" -o "$work/$q.itl" --tokenizer "$3" --quant $q >/dev/null
        row "$q" "$work/$q.itl" "$work/ref.itl" "$5"
        case $q in q8|q4|nf4)
            $convert "$2" -o "$work/$q-cal.itl" --tokenizer "$3" --quant $q --calib "$4" >/dev/null
            row "$q calibrated" "$work/$q-cal.itl" "$work/ref.itl" "$5" ;;
        esac
    done
    $convert "$2" -o "$work/q4b.itl" --tokenizer "$3" --quant q4 --calib "$4" --keep 'layers.*.ssm.ssm.B=fp16' >/dev/null
    row "q4 calibrated, B fp16 (--keep)" "$work/q4b.itl" "$work/ref.itl" "$5"
}

lowbit_rows() {  # the sub-4-bit table: q4 for comparison, q3, q2, q3 with delta_proj q2
    for spec in "q4:--quant q4" "q3:--quant q3" "q2:--quant q2" \
                "q3, delta_proj q2:--quant q3 --keep *.delta_proj.weight=q2"; do
        label=${spec%%:*}
        args=${spec#*:}
        set -f  # $args is split into words, its glob left to --keep
        $convert "$2" -o "$work/m.itl" --tokenizer "$3" $args >/dev/null
        row "$label" "$work/m.itl" "$work/ref.itl" "$5"
        $convert "$2" -o "$work/m.itl" --tokenizer "$3" $args --calib "$4" >/dev/null
        set +f
        row "$label calibrated" "$work/m.itl" "$work/ref.itl" "$5"
    done
}

table() {  # name checkpoint tokenizer calib.txt eval.txt
    echo "### $1"
    echo
    echo "| file | bytes | bits/weight | ppl | KLD vs fp32 (nats) | top-1 vs fp32 |"
    echo "|---|---:|---:|---:|---:|---:|"
    $convert "$2" -o "$work/ref.itl" --tokenizer "$3" --no-trim-vocab >/dev/null
    if [ "$mode" = lowbit ]; then
        lowbit_rows "$@"
    else
        main_rows "$@"
    fi
    echo
}

/usr/bin/python3 models/make_corpus.py "$work/kjv" >/dev/null
head -c 200000 "$work/kjv/train.txt" > "$work/kjv-calib.txt"
head -c 100000 "$work/kjv/heldout.txt" > "$work/kjv-eval.txt"
table "Shipped model (models/itera_lite_kjv.pt), held-out KJV text (first 100 kB of heldout.txt)" \
    models/itera_lite_kjv.pt models/tokenizer_kjv.json "$work/kjv-calib.txt" "$work/kjv-eval.txt"

if [ -d "$upstream/checkpoints" ]; then
    stories=$upstream/data/datasets/tinystories_train.txt
    head -c 50000 "$stories" > "$work/stories-calib.txt"
    tail -c +50001 "$stories" > "$work/stories-eval.txt"
    table "Upstream micro (itera_lite_micro_distilled.pt), TinyStories text after its first 50 kB" \
        "$upstream/checkpoints/distilled/itera_lite_micro_distilled.pt" "$upstream/data/tokenizer_2000.json" \
        "$work/stories-calib.txt" "$work/stories-eval.txt"
fi
rm -rf "$work"
