#!/bin/bash
# The CUDA check for a GPU machine that has the driver but not this project's build dependencies
# (docs/cuda.md): build here, carry the binaries, run there.
#
#   tools/gpu_bundle.sh pack BUILD_DIR OUT.tar.xz   here: BUILD_DIR configured with -Dgpu=enabled;
#       packs itera-run, itera-bench, the test binaries, the shared libraries they need beyond
#       glibc, and the built-in model as FP32, q8 and q4 .itl files (plus the upstream micro model
#       as FP32 and trimmed q4 when ../shared/upstream is beside the checkout).
#   tools/gpu_bundle.sh run OUT.tar.xz [LOG_DIR]    there, from the source root: the GPU tests,
#       --device cuda against the CPU from the command line, itera-bench --device cuda per model
#       and, when its python3 has PyTorch with CUDA, tools/torch_cuda_bench.py in the same run.
#       Ends with "N passed, N failed".
set -u
case "${1:-}" in
pack)
    build=$2 out=$3
    src=$(cd "$(dirname "$0")/.." && pwd)
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage/pkg/bin" "$stage/pkg/lib" "$stage/pkg/models"
    ninja -C "$build" itera-run itera-bench itera-convert tests/itera_tests tests/itera_cuda_tests || exit 1
    for f in itera-run itera-bench tests/itera_tests tests/itera_cuda_tests; do
        strip -o "$stage/pkg/bin/$(basename $f)" "$build/$f" || exit 1
    done
    ldd "$stage"/pkg/bin/* | awk '$3 ~ /^\// {print $3}' | sort -u |
        grep -v -e '/libc\.so' -e '/libm\.so' -e '/ld-linux' -e '/libstdc++' -e '/libgcc_s' |
        xargs -I{} cp -L {} "$stage/pkg/lib/"
    convert() { "$build/itera-convert" "$@" >/dev/null || exit 1; }
    m=$stage/pkg/models
    for q in f32 q8 q4; do
        quant=(); [ $q != f32 ] && quant=(--quant $q)
        convert "$src/models/itera_lite_kjv.pt" --tokenizer "$src/models/tokenizer_kjv.json" "${quant[@]}" -o "$m/kjv-$q.itl"
    done
    up=$src/../shared/upstream
    if [ -f "$up/checkpoints/distilled/itera_lite_micro_distilled.pt" ]; then
        convert "$up/checkpoints/distilled/itera_lite_micro_distilled.pt" --tokenizer "$up/data/tokenizer_2000.json" \
            --no-trim-vocab -o "$m/micro-f32.itl"
        convert "$up/checkpoints/distilled/itera_lite_micro_distilled.pt" --tokenizer "$up/data/tokenizer_2000.json" \
            --quant q4 -o "$m/micro-q4.itl"
    fi
    tar cJf "$out" -C "$stage" pkg && ls -l "$out"
    ;;
run)
    bundle=$2 logs=${3:-.}
    dir=$(mktemp -d)
    tar xJf "$bundle" -C "$dir" || exit 1
    p=$dir/pkg r=$dir/pkg/bin/itera-run
    export LD_LIBRARY_PATH=$p/lib
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
    passed=0 failed=0
    step() {
        echo "==== $1"
        if "${@:2}"; then passed=$((passed + 1)); echo "==== ok   $1"; else failed=$((failed + 1)); echo "==== FAIL $1"; fi
    }
    same() {  # the command's output on the GPU equals its output on the CPU
        local a b
        a=$("$@" --device cuda) && b=$("$@") || return 1
        echo "cuda: ${a:0:160}"
        [ "$a" == "$b" ]
    }
    step "CUDA against the CPU (tests/test_cuda_device.cpp)" "$p/bin/itera_cuda_tests"
    step "host-side CUDA units" "$p/bin/itera_tests" -tc='cuda*'
    step "built-in model: 200 greedy tokens on the GPU equal the CPU's" same "$r" -p "and the lord said unto moses ," -n 200 --greedy
    step "FP32 micro model: 300 sampled ids equal the CPU's" same "$r" -m "$p/models/micro-f32.itl" --ids 4,5,6 -n 300 --seed 7 --temp 1.0 --print-ids
    for m in "$p"/models/*.itl; do
        name=$(basename "$m" .itl)
        step "itera-bench --device cuda $name" bash -c "set -o pipefail; '$p/bin/itera-bench' -m '$m' --device cuda --json | tee '$logs/bench-$name.json'"
    done
    if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        step "PyTorch eager CUDA, built-in model" bash -c "set -o pipefail; python3 '$(dirname "$0")/torch_cuda_bench.py' --checkpoint '$(dirname "$0")/../models/itera_lite_kjv.pt' --json | tee '$logs/torch-kjv.json'"
    fi
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    ;;
*)
    echo "usage: tools/gpu_bundle.sh pack BUILD_DIR OUT.tar.xz | run OUT.tar.xz [LOG_DIR]" >&2
    exit 2
    ;;
esac
