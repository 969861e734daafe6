#!/bin/sh
# One-shot check of the CUDA backend on a machine with an NVIDIA GPU and this project's build
# dependencies (tools/install-deps.sh, the CUDA toolkit; docs/cuda.md): builds with the CUDA
# kernels, runs the CLI test (--device cuda against the CPU) when PyTorch is importable, then the
# checks of tools/gpu_bundle.sh on that build (GPU tests, CLI comparisons, itera-bench --device cuda,
# the PyTorch CUDA baseline), which end with "N passed, N failed".
#   tools/gpu_check.sh [BUILD_DIR]     (default: build-gpu in the source tree)
set -u
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build-gpu}
command -v nvcc >/dev/null || PATH=/usr/local/cuda/bin:$PATH
nvcc --version | tail -n 2

if [ -f "$build/build.ninja" ]; then
    meson setup --reconfigure "$build" "$src" -Dgpu=enabled || exit 1
else
    meson setup "$build" "$src" -Dgpu=enabled --buildtype=release || exit 1
fi
"$src/tools/gpu_bundle.sh" pack "$build" "$build/gpu-bundle.tar.xz" || exit 1
status=0
if /usr/bin/python3 -c 'import torch, numpy' 2>/dev/null; then
    meson test -C "$build" --print-errorlogs cli || status=1
    grep -- '--device cuda' "$build/meson-logs/testlog.txt"
fi
(cd "$src" && tools/gpu_bundle.sh run "$build/gpu-bundle.tar.xz" "$build") || status=1
exit $status
