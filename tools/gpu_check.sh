#!/usr/bin/env bash
# Runs every GPU check of a prebuilt CUDA build and writes a summary.
#
#   tools/gpu_check.sh OUTDIR [BUILD_DIR]        (from the repository root; BUILD_DIR defaults to
#                                                  $KD_BUILD or ./build-gpu)
#
# The build is made on a CPU machine:
#   cmake -S . -B build-gpu -DKD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a && cmake --build build-gpu
#   tools/bundle_libs.sh build-gpu     # copies gtest/benchmark/openblas/... into build-gpu/lib
# The GPU machine needs only the driver (and, optionally, compute-sanitizer and nvidia-smi).
#
# Steps, each with its own timeout inside an overall budget (KD_CHECK_BUDGET_S, default 460 s):
#   1. device: nvidia-smi -L (or a note that it is missing)
#   2. every gpu_test_* executable, gtest JSON into OUTDIR/tests/ (but the multi-GPU one)
#   2b. with more than one GPU visible (nvidia-smi -L): gpu_test_gpu_distributed, which trains under
#      mpirun -np <GPUs> with one rank per GPU over NCCL (docs/distributed.md); skipped otherwise
#   3. every gpu_bench_* executable, benchmark JSON into OUTDIR/bench/
#   4. the PyTorch comparison, and a short teacher + KD training run on cuda
#   5. compute-sanitizer memcheck and racecheck on the kernel tests (the large cases filtered out)
# Writes OUTDIR/summary.md, OUTDIR/summary.json, OUTDIR/steps.tsv and one log per step in
# OUTDIR/logs/. Exits 1 when any test failed, crashed, timed out or was skipped (a skipped GPU
# test means no usable GPU), when a training run failed, or when a sanitizer found errors;
# sanitizer timeouts and benchmark failures are reported in the summary only.
set -u

OUT=${1:?usage: tools/gpu_check.sh OUTDIR [BUILD_DIR]}
BUILD=${2:-${KD_BUILD:-build-gpu}}
BUDGET=${KD_CHECK_BUDGET_S:-460}
START=$(date +%s)
mkdir -p "$OUT/logs" "$OUT/tests" "$OUT/bench" "$OUT/sanitizer"
STEPS="$OUT/steps.tsv"
printf 'step\tstatus\trc\tseconds\tlog\n' >"$STEPS"

if [ ! -d "$BUILD" ]; then
  echo "gpu_check: build folder '$BUILD' not found" >&2
  printf 'build\tmissing\t1\t0\t-\n' >>"$STEPS"
fi
# The bundled libraries first, then the CUDA toolkit (cuBLASLt).
CUDA_LIB=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && CUDA_LIB="$CUDA_LIB:$d"
done
export LD_LIBRARY_PATH="$(cd "$BUILD" 2>/dev/null && pwd)/lib$CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

remaining() { echo $((BUDGET - ($(date +%s) - START))); }

# run_step NAME TIMEOUT_S CMD...: runs CMD with a timeout clipped to the remaining budget, logs its
# output to OUTDIR/logs/NAME.log and appends NAME, status (ok|fail|timeout|skipped), rc, seconds.
run_step() {
  local name=$1 limit=$2
  shift 2
  local left
  left=$(remaining)
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped\t-\t0\t(budget spent)\n' "$name" >>"$STEPS"
    echo "[gpu_check] $name: skipped (budget spent)"
    return 0
  fi
  [ "$limit" -gt $((left - 10)) ] && limit=$((left - 10))
  local log="$OUT/logs/$name.log" t0 rc status
  t0=$(date +%s)
  echo "[gpu_check] $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=fail ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" $(($(date +%s) - t0)) "$log" >>"$STEPS"
  echo "[gpu_check] $name: $status (rc $rc, $(($(date +%s) - t0)) s)"
  return 0
}

# ---- 1. device -------------------------------------------------------------------------------------
device_info() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 20 nvidia-smi -L
    timeout 20 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version \
      --format=csv 2>/dev/null || true
  else
    echo "nvidia-smi not found"
  fi
  command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2
  echo "build: $BUILD"
  echo "LD_LIBRARY_PATH: $LD_LIBRARY_PATH"
}
device_info >"$OUT/logs/device.log" 2>&1
printf 'device\tok\t0\t0\t%s\n' "$OUT/logs/device.log" >>"$STEPS"
cat "$OUT/logs/device.log"

# ---- 2. tests --------------------------------------------------------------------------------------
TESTS=()
# Executables live in BUILD/tests and BUILD/bench (or BUILD itself, for other layouts).
while IFS= read -r exe; do
  TESTS+=("$exe")
done < <(find "$BUILD" -maxdepth 2 -type f -executable -name 'gpu_test_*' \
  ! -name gpu_test_gpu_distributed 2>/dev/null | sort)
[ ${#TESTS[@]} -eq 0 ] && echo "[gpu_check] no gpu_test_* executables in $BUILD"
for exe in ${TESTS[@]+"${TESTS[@]}"}; do
  name=$(basename "$exe")
  run_step "test_$name" 120 "$exe" --gtest_output="json:$OUT/tests/$name.json"
done

# ---- 2b. several GPUs: data-parallel training over NCCL ---------------------------------------------
# The test launches `mpirun -np <GPUs> kdengine train` itself (one rank per GPU) and compares with
# one rank. kdengine loads libnccl.so.2 at run time: from the CUDA toolkit's lib64 (already on
# LD_LIBRARY_PATH) or from PyTorch's NCCL package, added here when python3 finds it.
NGPU=0
command -v nvidia-smi >/dev/null 2>&1 && NGPU=$(timeout 20 nvidia-smi -L 2>/dev/null | grep -c '^GPU')
MULTI="$(find "$BUILD" -maxdepth 2 -type f -executable -name gpu_test_gpu_distributed 2>/dev/null | head -n 1)"
if [ "$NGPU" -le 1 ]; then
  printf 'multi_gpu\tskipped\t-\t0\t(%s GPU visible; needs 2 or more)\n' "$NGPU" >>"$STEPS"
  echo "[gpu_check] multi_gpu: skipped ($NGPU GPU visible)"
elif [ -z "$MULTI" ] || ! command -v mpirun >/dev/null 2>&1; then
  printf 'multi_gpu\tskipped\t-\t0\t(no gpu_test_gpu_distributed in the build, or no mpirun)\n' >>"$STEPS"
  echo "[gpu_check] multi_gpu: skipped (no gpu_test_gpu_distributed or no mpirun)"
else
  NCCL_LIB=$(python3 -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "lib"))' 2>/dev/null || true)
  LD_LIBRARY_PATH="$LD_LIBRARY_PATH${NCCL_LIB:+:$NCCL_LIB}" \
    run_step test_multi_gpu 300 "$MULTI" --gtest_output="json:$OUT/tests/gpu_test_gpu_distributed.json"
fi

# ---- 3. benchmarks ---------------------------------------------------------------------------------
BENCHES=()
while IFS= read -r exe; do
  BENCHES+=("$exe")
done < <(find "$BUILD" -maxdepth 2 -type f -executable -name 'gpu_bench_*' 2>/dev/null | sort)
for exe in "${BENCHES[@]}"; do
  name=$(basename "$exe")
  run_step "bench_$name" 150 "$exe" --benchmark_min_time=0.2 --benchmark_format=json \
    --benchmark_out="$OUT/bench/$name.json" --benchmark_out_format=json
done

# ---- 4. PyTorch comparison, then a short KD training run on cuda ------------------------------------
# compare_torch.py times the same models in PyTorch (needs torch on the GPU machine) and prints
# kdengine's tokens/s over PyTorch's, read from the step benchmark's JSON.
if [ -f "$OUT/bench/gpu_bench_step.json" ] && python3 -c "import torch" 2>/dev/null; then
  run_step compare_torch 150 python3 tools/compare_torch.py --bench-json "$OUT/bench/gpu_bench_step.json"
else
  printf 'compare_torch\tskipped\t-\t0\t(no torch or no step benchmark JSON)\n' >>"$STEPS"
fi
# A teacher trained on TinyShakespeare for 50 steps, then a student distilled from it for 50 steps,
# both on the GPU (head dims set to 64, the attention kernel's smallest).
TS_DATA=${KD_SHARED_DATA:-../shared/data}/tinyshakespeare/input.txt
if [ -x "$BUILD/kdengine" ] && [ -f "$TS_DATA" ]; then
  TRUN="$OUT/train"
  mkdir -p "$TRUN"
  COMMON=(--set run.device=cuda --set "data.train=\"$(realpath "$TS_DATA")\"" --set train.max_steps=50
          --set train.eval_every=25 --set schedule.warmup_steps=5 --set log.every=5)
  run_step train_teacher_cuda 120 "$BUILD/kdengine" train recipes/tinyshakespeare_teacher.toml \
    "${COMMON[@]}" --set student.n_head=2 --set "run.out_dir=\"$TRUN/teacher\""
  run_step train_kd_cuda 120 "$BUILD/kdengine" train recipes/tinyshakespeare_kd.toml \
    "${COMMON[@]}" --set student.n_head=1 --set "run.out_dir=\"$TRUN/kd\"" \
    --set "teacher.checkpoint=\"$TRUN/teacher/final\""
else
  printf 'train_cuda\tskipped\t-\t0\t(no kdengine executable or no TinyShakespeare at %s)\n' "$TS_DATA" >>"$STEPS"
fi

# ---- 5. compute-sanitizer ----------------------------------------------------------------------------
# The largest parameterised cases (full vocabulary, 8192-token encoder) are filtered out: under the
# sanitizer they would take minutes, and the small cases take every code path.
SAN_FILTER='-Gpt2Vocab/*:Shapes/GpuEncoder.ForwardAndBackwardMatchCpu/4:Sizes/GpuElementwise.*/6'
if command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck; do
    for exe in ${TESTS[@]+"${TESTS[@]}"}; do
      name=$(basename "$exe")
      run_step "${tool}_$name" 90 compute-sanitizer --tool "$tool" --error-exitcode 99 \
        "$exe" --gtest_filter="$SAN_FILTER"
    done
  done
else
  printf 'sanitizer\tskipped\t-\t0\t(compute-sanitizer not found)\n' >>"$STEPS"
  echo "[gpu_check] compute-sanitizer not found: skipped"
fi

# ---- summary -----------------------------------------------------------------------------------------
python3 - "$OUT" <<'PYEOF' || echo "[gpu_check] summary: python3 failed; see steps.tsv"
import glob, json, os, sys
out = sys.argv[1]
steps = []
with open(os.path.join(out, "steps.tsv")) as f:
    next(f)
    for line in f:
        p = line.rstrip("\n").split("\t")
        steps.append({"step": p[0], "status": p[1], "rc": p[2], "seconds": p[3], "log": p[4]})
suites = []
for path in sorted(glob.glob(os.path.join(out, "tests", "*.json"))):
    try:
        d = json.load(open(path))
    except Exception as e:
        suites.append({"executable": os.path.basename(path)[:-5], "error": str(e)})
        continue
    for s in d.get("testsuites", []):
        skipped = sum(1 for t in s.get("testsuite", []) if t.get("result") == "SKIPPED")
        suites.append({"executable": os.path.basename(path)[:-5], "suite": s["name"],
                       "tests": s.get("tests", 0), "failures": s.get("failures", 0),
                       "errors": s.get("errors", 0), "skipped": skipped})
benches = []
for path in sorted(glob.glob(os.path.join(out, "bench", "*.json"))):
    try:
        d = json.load(open(path))
    except Exception as e:
        benches.append({"executable": os.path.basename(path)[:-5], "error": str(e)})
        continue
    for b in d.get("benchmarks", []):
        benches.append({"executable": os.path.basename(path)[:-5], "name": b.get("name"),
                        "label": b.get("label", ""), "time": b.get("real_time"),
                        "unit": b.get("time_unit"), "GBps": b.get("GBps"),
                        "TFLOPps": b.get("TFLOPps"), "frac_copy": b.get("frac_copy"),
                        "error": b.get("error_message", "")})
device = open(os.path.join(out, "logs", "device.log")).read().strip() if os.path.exists(
    os.path.join(out, "logs", "device.log")) else "unknown"
failed_tests = sum(s.get("failures", 0) + s.get("errors", 0) for s in suites)
bad_steps = [s for s in steps
             if (s["step"].startswith("test_") and s["status"] in ("fail", "timeout"))
             or (s["step"].startswith(("memcheck_", "racecheck_")) and s["status"] == "fail")]
ran_tests = sum(s.get("tests", 0) - s.get("skipped", 0) for s in suites)
skipped_tests = sum(s.get("skipped", 0) for s in suites)
# The training runs are part of the check too.
bad_steps += [s for s in steps if s["step"].startswith("train_") and s["status"] in ("fail", "timeout")]
# A skipped GPU test means no GPU was usable (a few host-side tests run anywhere): not a pass.
summary = {"device": device, "steps": steps, "test_suites": suites, "benchmarks": benches,
           "failed_tests": failed_tests, "tests_run": ran_tests,
           "failed_test_steps": [s["step"] for s in bad_steps],
           "skipped_tests": skipped_tests,
           "passed": failed_tests == 0 and not bad_steps and ran_tests > 0 and skipped_tests == 0}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)

def fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) else "-"
L = ["# GPU check", "", "```", device, "```", "",
     "Overall: **%s** (%d tests ran, %d failed, %d skipped; failed steps: %s)" % (
         "PASS" if summary["passed"] else "FAIL", ran_tests, failed_tests, skipped_tests,
         ", ".join(summary["failed_test_steps"]) or "none"), "",
     "## Steps", "", "| step | status | rc | s |", "|---|---|---|---|"]
L += ["| %s | %s | %s | %s |" % (s["step"], s["status"], s["rc"], s["seconds"]) for s in steps]
L += ["", "## Test suites", "", "| executable | suite | tests | failed | skipped |",
      "|---|---|---|---|---|"]
for s in suites:
    if "error" in s:
        L.append("| %s | (unreadable: %s) | | | |" % (s["executable"], s["error"]))
    else:
        L.append("| %s | %s | %d | %d | %d |" % (s["executable"], s["suite"], s["tests"],
                                                s["failures"] + s["errors"], s["skipped"]))
L += ["", "## Benchmarks", "",
      "frac_copy: achieved GB/s over a 1 GiB device-to-device copy (read + write) in the same run.",
      "", "| benchmark | label | time | GB/s | TFLOP/s | frac_copy |", "|---|---|---|---|---|---|"]
for b in benches:
    if b.get("name") is None:
        L.append("| %s | (unreadable: %s) | | | | |" % (b["executable"], b["error"]))
        continue
    L.append("| %s | %s | %s %s | %s | %s | %s |" % (
        b["name"], b["label"] or b["error"], fmt(b["time"], ".1f"), b["unit"] or "",
        fmt(b["GBps"], ".0f"), fmt(b["TFLOPps"], ".2f"), fmt(b["frac_copy"], ".2f")))
open(os.path.join(out, "summary.md"), "w").write("\n".join(L) + "\n")
print("\n".join(L))
PYEOF

# ---- verdict -------------------------------------------------------------------------------------------
FAIL=0
if [ -f "$OUT/summary.json" ]; then
  grep -q '"passed": true' "$OUT/summary.json" || FAIL=1
else
  awk -F'\t' 'NR > 1 && (($1 ~ /^test_/ && ($2 == "fail" || $2 == "timeout")) || ($1 ~ /^(memcheck|racecheck)_/ && $2 == "fail")) {bad = 1}
              END {exit bad}' "$STEPS" || FAIL=1
fi
[ ${#TESTS[@]} -eq 0 ] && FAIL=1
echo "[gpu_check] done in $(($(date +%s) - START)) s: $([ $FAIL -eq 0 ] && echo PASS || echo FAIL)"
exit $FAIL
