#!/usr/bin/env bash
# Runs every command of README.md's ```sh blocks, in order, in a fresh clone of this repository's
# HEAD, with the corpora's local copy ../shared beside the clone and, where the kernel allows a
# private network namespace (unshare -rn), no network: what a new user meets. Long jobs are
# shortened so the whole check takes a few minutes on 2 cores:
#   - `kdengine train` and `tools/demo.sh` get   --set train.max_steps=4 --set schedule.warmup_steps=1
#     --set train.eval_every=2 --set train.eval_batches=1
#   - `tools/test.sh` builds only the command-line tests and runs two of them, without CUDA (CI runs
#     the whole suite itself).
# Everything else runs as written. Builds go through ccache when it is installed.
#
#   bash tools/check_readme.sh [--keep]
#
# Environment: KD_SHARED (default ../shared next to the repository), KD_VENV (a Python environment
# with tensorboard and matplotlib for tools/test.sh, default .venv of this checkout; linked into the
# clone, since pip cannot install without a network). Exit status: 0 every command passed, 1 one
# failed (its output is shown), 77 nothing to check against (no ../shared).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

SHARED="${KD_SHARED:-$ROOT/../shared}"
if [ ! -d "$SHARED/data" ]; then
  echo "check_readme: no $SHARED/data to stand in for the network; skipped" >&2
  exit 77
fi
SHARED="$(cd "$SHARED" && pwd -P)"
VENV="${KD_VENV:-$ROOT/.venv}"
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]; then
  echo "check_readme: note: uncommitted changes are not checked (the clone is of HEAD)"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kd_readme.XXXXXX")"
cleanup() { if [ "$KEEP" = 1 ]; then echo "check_readme: kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
git clone -q --no-hardlinks "$ROOT" "$WORK/kdengine"
ln -s "$SHARED" "$WORK/shared"
[ -d "$VENV" ] && ln -s "$(cd "$VENV" && pwd -P)" "$WORK/kdengine/.venv"

# The commands: each ```sh block's lines, continuation lines joined, comments dropped.
python3 - "$WORK/kdengine/README.md" >"$WORK/commands" <<'PY'
import sys

def strip_comment(s):
    """The command without its trailing comment: a '#' after a blank and outside quotes."""
    quote = None
    for i, ch in enumerate(s):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or s[i - 1].isspace()):
            return s[:i].rstrip()
    return s.rstrip()

commands, block, cur = [], False, ""
for raw in open(sys.argv[1], encoding="utf-8"):
    line = raw.rstrip("\n")
    if line.strip().startswith("```"):
        block = (not block) and line.strip() in ("```sh", "```bash")
        continue
    if not block:
        continue
    if line.endswith("\\"):
        cur += line[:-1]
        continue
    cmd = strip_comment(cur + line).strip()
    cur = ""
    if cmd:
        commands.append(" ".join(cmd.split()) if "'" not in cmd and '"' not in cmd else cmd)
print("\n".join(commands))
PY

QUICK="--set train.max_steps=4 --set schedule.warmup_steps=1 --set train.eval_every=2 --set train.eval_batches=1"
cat >"$WORK/run.sh" <<INNER
set -uo pipefail
cd "$WORK/kdengine"
if command -v ccache >/dev/null; then
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR="$WORK/kdengine" CCACHE_NOHASHDIR=1
fi
# No route anywhere: downloads fail at once instead of waiting.
export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9
n=0; failed=0
while IFS= read -r cmd; do
  n=\$((n + 1))
  run="\$cmd"
  case "\$cmd" in
    *tools/test.sh*) run="KD_CUDA=OFF KD_BUILD_TARGET=test_cli \$cmd -R '^CliTest\\.(HelpOnEveryCommand|VersionNamesCommitAndCuda)\$'" ;;
    *tools/demo.sh*|*"kdengine train "*) run="\$cmd $QUICK" ;;
  esac
  t0=\$(date +%s)
  if bash -c "\$run" >"$WORK/out.\$n" 2>&1 </dev/null; then
    echo "check_readme: ok   (\$(( \$(date +%s) - t0 )) s) \$cmd"
  else
    echo "check_readme: FAILED (exit \$?) \$cmd"
    [ "\$run" = "\$cmd" ] || echo "  ran as: \$run"
    tail -n 30 "$WORK/out.\$n" | sed 's/^/  | /'
    failed=1
    break
  fi
done <"$WORK/commands"
exit \$failed
INNER

start=$(date +%s)
if unshare -rn true 2>/dev/null; then
  echo "check_readme: $(wc -l <"$WORK/commands") commands from README.md, in a clone of $(git -C "$ROOT" rev-parse --short HEAD), without network"
  unshare -rn bash "$WORK/run.sh"
else
  echo "check_readme: $(wc -l <"$WORK/commands") commands from README.md, in a clone of $(git -C "$ROOT" rev-parse --short HEAD) (no network namespace available: network not cut)"
  bash "$WORK/run.sh"
fi
rc=$?
echo "check_readme: $([ $rc = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
exit $rc
