#!/usr/bin/env bash
# Copies the shared libraries that a build's executables need but a bare GPU machine lacks (gtest,
# Google Benchmark, OpenBLAS, toml++, OpenMP, ...) into BUILD_DIR/lib, for tools/gpu_check.sh.
#
#   tools/bundle_libs.sh [BUILD_DIR]        (default ./build-gpu; run on the machine that built it)
#
# Left out: the C/C++ runtime (libc, libm, libstdc++, libgcc_s, ld-linux, libpthread, libdl,
# librt) and the CUDA libraries (libcuda, libcudart, libcublas*), which the GPU machine provides.
# Prints the bundle's total size; fails if it exceeds 48 MiB (the transfer allows 64 MiB in all).
set -euo pipefail
BUILD=${1:-build-gpu}
LIB="$BUILD/lib"
mkdir -p "$LIB"
exes=()
while IFS= read -r f; do
  exes+=("$f")
done < <(find "$BUILD" -maxdepth 2 -type f -executable \( -name kdengine -o -name 'gpu_test_*' \
  -o -name 'gpu_bench_*' -o -name 'test_*' -o -name 'bench_*' \) | sort)
if [ ${#exes[@]} -eq 0 ]; then
  echo "bundle_libs: no executables in $BUILD" >&2
  exit 1
fi
skip='^(libc|libm|libstdc\+\+|libgcc_s|ld-linux.*|libpthread|libdl|librt|libcuda|libcudart|libcublas.*|libnvidia.*|linux-vdso)\.so'
ldd "${exes[@]}" 2>/dev/null | awk '/=> \// {print $1, $3}' | sort -u | while read -r name path; do
  if [[ "$name" =~ $skip ]]; then continue; fi
  cp -L "$path" "$LIB/$name"
  echo "bundled $name ($path)"
done
total=$(du -sb "$LIB" | cut -f1)
echo "bundle_libs: $LIB holds $(ls "$LIB" | wc -l) libraries, $((total / 1024)) KiB"
if [ "$total" -gt $((48 * 1024 * 1024)) ]; then
  echo "bundle_libs: bundle larger than 48 MiB" >&2
  exit 1
fi
