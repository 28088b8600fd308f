#!/usr/bin/env bash
# Installs what kdengine needs on a fresh Debian machine and builds it into ./build.
# Uses sudo for apt-get when not root. The CUDA toolkit is optional: without nvcc the CUDA backend
# is skipped (KD_CUDA=AUTO); with it, the kernels are compiled for KD_CUDA_ARCH (default 90a).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PACKAGES=(cmake g++ make libtomlplusplus-dev libgtest-dev libgmock-dev libbenchmark-dev
          libopenmpi-dev openmpi-bin
          libopenblas-dev fortunes fortunes-min python3 python3-venv)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# nvcc is usually outside PATH in a default CUDA install.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

# With KD_TEST_VENV=1 (the test command sets it): a virtual environment in .venv with TensorBoard
# (whose own reader checks our event files), matplotlib (tools/plot_run.py), and transformers +
# tokenizers (tools/check_hf_tokenizer.py: HF's AutoTokenizer reads our checkpoints; no torch).
PYTHON_ARGS=()
if [ "${KD_TEST_VENV:-0}" = "1" ]; then
  if ! .venv/bin/python -c "import tensorboard, matplotlib, transformers, tokenizers" 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check tensorboard matplotlib transformers tokenizers
  fi
  PYTHON_ARGS=(-DKD_PYTHON="$PWD/.venv/bin/python")
fi

BUILD="${KD_BUILD_DIR:-build}"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKD_CUDA="${KD_CUDA:-AUTO}" \
  -DCMAKE_CUDA_ARCHITECTURES="${KD_CUDA_ARCH:-90a}" "${PYTHON_ARGS[@]}" >/dev/null
# KD_BUILD_TARGET builds one target only (the demo needs just the kdengine binary).
cmake --build "$BUILD" -j"$(nproc)" ${KD_BUILD_TARGET:+--target "$KD_BUILD_TARGET"}
