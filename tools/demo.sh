#!/usr/bin/env bash
# The main job, on the CPU, with no download: set up, gather the fortunes corpus, train a teacher,
# distil a smaller student from it, train the same student with CE only for the same steps, and
# print the held-out losses of all three.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo runs on the CPU: a CPU-only build of the one binary it needs keeps set-up short.
BUILD="${KD_BUILD_DIR:-build-cpu}"
KD_BUILD_DIR="$BUILD" KD_CUDA="${KD_CUDA:-OFF}" KD_BUILD_TARGET=kdengine bash tools/setup.sh

# The corpus: every text file of the fortunes package (not the .dat indexes or .u8 links).
SRC=/usr/share/games/fortunes
CORPUS=runs/demo/corpus
mkdir -p "$CORPUS"
for f in "$SRC"/*; do
  case "$f" in *.dat|*.u8) continue ;; esac
  [ -f "$f" ] && [ ! -L "$f" ] && cp "$f" "$CORPUS/"
done

start=$(date +%s)
for part in teacher kd ce; do
  t0=$(date +%s)
  echo "== demo_$part =="
  "$BUILD/kdengine" train "recipes/demo_$part.toml" --overwrite "$@"  # a rerun starts over
  echo "$(( $(date +%s) - t0 ))" > "runs/demo/$part/wall_seconds"
done
python3 tools/demo_table.py runs/demo "$(( $(date +%s) - start ))"
