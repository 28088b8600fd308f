#!/usr/bin/env bash
# The test command: set up (packages, a Python environment for the TensorBoard check, the build),
# then run every test. GPU tests skip where no GPU is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
KD_TEST_VENV=1 bash tools/setup.sh
# The corpora the shipped recipes read (downloaded, or copied from ../shared/data).
bash tools/get_data.sh || echo "test: data/ is incomplete; the shipped-recipe test will skip"
ctest --test-dir "${KD_BUILD_DIR:-build}" --output-on-failure -j"$(nproc)" "$@"
