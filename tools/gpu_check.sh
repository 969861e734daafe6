#!/bin/sh
# One-shot check of the CUDA backend on a machine with an NVIDIA GPU (docs/cuda.md): builds with
# the CUDA kernels, runs the GPU-against-CPU tests, the CLI test (--device cuda against the CPU),
# the host-side CUDA unit tests, then itera-bench --device cuda and, when PyTorch with CUDA is
# importable, the PyTorch eager baseline (tools/torch_cuda_bench.py). Prints everything; ends with
# "N passed, N failed".
#   tools/gpu_check.sh [BUILD_DIR]     (default: build-gpu in the source tree)
# Needs the project's build dependencies (tools/install-deps.sh) and the CUDA toolkit (nvcc).
set -u
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build-gpu}
passed=0
failed=0

step() {  # name, command...
    name=$1
    shift
    echo "==== $name: $*"
    if "$@"; then
        passed=$((passed + 1))
        echo "==== ok   $name"
    else
        failed=$((failed + 1))
        echo "==== FAIL $name (exit $?)"
    fi
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
command -v nvcc >/dev/null || PATH=/usr/local/cuda/bin:$PATH
nvcc --version | tail -n 2

if [ -f "$build/build.ninja" ]; then
    step "configure" meson setup --reconfigure "$build" "$src" -Dgpu=enabled
else
    step "configure" meson setup "$build" "$src" -Dgpu=enabled --buildtype=release
fi
step "build" ninja -C "$build" itera-run itera-convert itera-bench tests/itera_tests tests/itera_cuda_tests
step "CUDA against the CPU (tests/test_cuda_device.cpp)" "$build/tests/itera_cuda_tests"
step "host-side CUDA units" "$build/tests/itera_tests" -tc='cuda:*'
if /usr/bin/python3 -c 'import torch, numpy' 2>/dev/null; then
    step "CLI test (--device cuda against the CPU)" meson test -C "$build" --no-rebuild --print-errorlogs cli
    grep -- '--device cuda' "$build/meson-logs/testlog.txt"
fi
step "itera-run --device cuda" "$build/itera-run" --device cuda -p "and the lord said unto moses ," -n 30 --greedy
step "itera-run (CPU, same prompt)" "$build/itera-run" -p "and the lord said unto moses ," -n 30 --greedy
step "itera-bench --device cuda" "$build/itera-bench" --device cuda
step "itera-bench --device cuda --json" "$build/itera-bench" --device cuda --json
for py in /usr/bin/python3 python3; do
    if "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        step "PyTorch eager CUDA baseline" "$py" "$src/tools/torch_cuda_bench.py" --checkpoint "$src/models/itera_lite_kjv.pt"
        break
    fi
    "$py" "$src/tools/torch_cuda_bench.py" --checkpoint "$src/models/itera_lite_kjv.pt" 2>&1 | tail -n 1
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
