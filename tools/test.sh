#!/usr/bin/env bash
# The test command: set up (packages, build), then run every test. GPU tests skip where no GPU is
# usable. The TensorBoard check uses TensorBoard's own reader from a virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import tensorboard" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check tensorboard
fi
export KD_PYTHON="$PWD/.venv/bin/python"
ctest --test-dir "${KD_BUILD_DIR:-build}" --output-on-failure -j"$(nproc)" "$@"
