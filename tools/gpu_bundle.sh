#!/usr/bin/env bash
# Prepares what a GPU machine needs to run tools/gpu_check.sh, from a build made here:
#
#   tools/gpu_bundle.sh [BUILD_DIR] [BUNDLE_DIR]     (defaults: build-gpu, gpu-bundle)
#
# BUILD_DIR is configured and built for Hopper if it does not exist yet. BUNDLE_DIR receives the
# executables the check runs (kdengine, tests/gpu_test_*, bench/gpu_bench_*), stripped, and the
# shared libraries the GPU machine lacks (tools/bundle_libs.sh), with the layout gpu_check.sh
# expects, and is packed as BUNDLE_DIR.tar.xz (about 8 MB; the folder itself is about 60 MB, close
# to the 64 MiB a transfer allows). Then, on the GPU machine:
#
#   tar -xJf gpu-bundle.tar.xz && bash tools/gpu_check.sh OUTDIR gpu-bundle
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-gpu}
BUNDLE=${2:-gpu-bundle}
if [ ! -d "$BUILD" ]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a
fi
cmake --build "$BUILD" -j"$(nproc)"
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/tests" "$BUNDLE/bench"
cp "$BUILD/kdengine" "$BUNDLE/"
find "$BUILD/tests" -maxdepth 1 -type f -executable -name 'gpu_test_*' -exec cp {} "$BUNDLE/tests/" \;
find "$BUILD/bench" -maxdepth 1 -type f -executable -name 'gpu_bench_*' -exec cp {} "$BUNDLE/bench/" \;
strip "$BUNDLE/kdengine" "$BUNDLE"/tests/* "$BUNDLE"/bench/*
bash tools/bundle_libs.sh "$BUNDLE"
echo "gpu_bundle: $BUNDLE is $(du -sh "$BUNDLE" | cut -f1)"
tar -cJf "$BUNDLE.tar.xz" "$BUNDLE"
echo "gpu_bundle: $BUNDLE.tar.xz is $(du -sh "$BUNDLE.tar.xz" | cut -f1)"
