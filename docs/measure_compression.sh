#!/bin/sh
# Reproduces the measurements of docs/compression.md on the upstream micro checkpoint: uniform
# calibrated q4 / q3 / q2 files, then `--target-size` from 30 kB to 120 kB (with pruning allowed),
# each scored against the untrimmed FP32 file on the evaluation text; writes the curve and the
# 60 kB report, and draws docs/compression.svg from them. Usage (from the repository root, after
# `meson setup build && meson compile -C build`):
#   sh docs/measure_compression.sh build [../shared/upstream]
# Calibration = the first 50 kB of tinystories_train.txt, evaluation = the rest (as in
# docs/quantization.md). The chart needs Debian's python3-matplotlib.
set -eu
build=$1
upstream=${2:-../shared/upstream}
work=$(mktemp -d)
convert=$build/itera-convert
run=$build/itera-run
ck=$upstream/checkpoints/distilled/itera_lite_micro_distilled.pt
tok=$upstream/data/tokenizer_2000.json
stories=$upstream/data/datasets/tinystories_train.txt
head -c 50000 "$stories" > "$work/calib.txt"
tail -c +50001 "$stories" > "$work/eval.txt"
$convert "$ck" -o "$work/ref.itl" --tokenizer "$tok" --no-trim-vocab >/dev/null
echo "[" > "$work/curve.json"

row() {  # label target model.itl extra-json
    ppl=$($run ppl -m "$3" --file "$work/eval.txt" --kld-ref "$work/ref.itl" --json)
    info=$($run info -m "$3" --json)
    /usr/bin/python3 - "$1" "$2" "$ppl" "$info" "$4" "$work/curve.json" "$(wc -c < "$ck")" <<'PY'
import json, sys
label, target, ppl, info, extra, curve, ck_bytes = sys.argv[1:]
ppl, info, extra = json.loads(ppl), json.loads(info), json.loads(extra)
size = info["file_bytes"]
row = {"label": label, "target": int(target) or None, "file_bytes": size, "kld": ppl["kld"], "top1": ppl["top1"],
       "ppl": ppl["ppl"], "parameters": info["parameters"], **extra}
with open(curve, "a") as f:
    f.write(json.dumps(row) + ",\n")
pruned = f"{100 * extra['prune_ratio']:.0f}%" if "prune_ratio" in extra else "-"
print(f"| {label} | {size:,} | {int(ck_bytes) / size:.0f}x | {info['parameters']:,} | {pruned} | "
      f"{ppl['kld']:.4f} | {100 * ppl['top1']:.2f}% | "
      f"{format(extra['calib_kld'], '.4f') if 'calib_kld' in extra else '-'} |")
PY
}

echo "| file | bytes | vs checkpoint | parameters | pruned | KLD vs fp32 (eval) | top-1 vs fp32 (eval) | KLD (calibration, converter) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for q in q4 q3 q2; do
    $convert "$ck" -o "$work/$q.itl" --tokenizer "$tok" --quant $q --calib "$work/calib.txt" >/dev/null
    row "uniform $q, calibrated" 0 "$work/$q.itl" '{"kind": "uniform"}'
done
for kb in 30 40 50 60 70 80 100 120; do
    target=$((kb * 1000))
    if $convert "$ck" -o "$work/t$kb.itl" --tokenizer "$tok" --calib "$work/calib.txt" --target-size $target \
        --prune-scope moe,ffn,ssm --report "$work/t$kb.json" > "$work/t$kb.log" 2> "$work/t$kb.err"; then
        extra=$(/usr/bin/python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({'kind': 'target', 'prune_ratio': r['prune_ratio'], 'calib_kld': r['measured_kld'], 'predicted_kld': r['predicted_kld']}))" "$work/t$kb.json")
        row "--target-size $target" $target "$work/t$kb.itl" "$extra"
    else
        echo "| --target-size $target | $(cat "$work/t$kb.err") |"
    fi
done
/usr/bin/python3 - "$work/curve.json" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read().rstrip().rstrip(",")
open(path, "w").write(text + "\n]\n")
PY
echo
echo "60 kB conversion:"
cat "$work/t60.log"
$run info -m "$work/t60.itl" | sed -n '/^part /,/^other /p'
cp "$work/curve.json" docs/compression_curve.json
cp "$work/t60.json" docs/compression_60k_report.json
/usr/bin/python3 docs/plot_compression.py docs/compression_curve.json docs/compression_60k_report.json docs/compression.svg
rm -rf "$work"
