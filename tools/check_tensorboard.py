#!/usr/bin/env python3
"""Check that a run's TensorBoard scalars match its JSON-lines log.

    check_tensorboard.py RUN_DIR [--skip-code N] [--min-event-files N]

RUN_DIR holds log.jsonl (one JSON object per line, each with an integer "step") and the
events.out.tfevents.* file(s) the trainer wrote, in RUN_DIR/tb (the trainer's layout) or in RUN_DIR
itself. Every key of a log record that has a tag in TAGS
must appear as that TensorBoard scalar at the record's step with the same value (as float32), in
the same order, and TensorBoard must hold no other values for those tags. A resumed run has
several event files and log.jsonl keeps each step once: the check then shows that TensorBoard
discards the points the interrupted runs logged past their checkpoints (--min-event-files makes
sure there are that many files to read).

The events are read with TensorBoard's own EventAccumulator, so this also checks that the files
are readable by TensorBoard. Exit status: 0 match, 1 mismatch, 2 bad input; with --skip-code N,
N when the tensorboard package is not installed.
"""

import argparse
import json
import math
import os
import struct
import sys

# log.jsonl key -> TensorBoard tag (the same table as kTensorBoardTags in engine/io/tensorboard.h).
TAGS = {
    "loss": "train/loss",
    "ce": "train/ce",
    "kd": "train/kd",
    "kl": "train/kl",
    "teacher_entropy": "train/teacher_entropy",
    "student_entropy": "train/student_entropy",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "perf/tokens_per_s",
    "step_time_ms": "perf/step_time_ms",
    "peak_mem_bytes": "mem/peak_bytes",
    "val_loss": "val/loss",
    "teacher_val_loss": "val/teacher_loss",
    "val_kl": "val/kl",
}


def as_float32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def same_float32(got, want):
    w = as_float32(want)
    if math.isnan(w):
        return math.isnan(got)
    return got == w or math.isclose(got, w, rel_tol=1e-6, abs_tol=1e-30)


def expected_scalars(log_path):
    """tag -> [(step, value)] in log order."""
    want = {}
    with open(log_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{log_path}:{n}: not JSON: {e}") from e
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError(f"{log_path}:{n}: record without an integer 'step'")
            for key, tag in TAGS.items():
                v = rec.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    want.setdefault(tag, []).append((rec["step"], float(v)))
    return want


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--skip-code", type=int, default=None,
                    help="exit with this code when tensorboard is not installed")
    ap.add_argument("--min-event-files", type=int, default=1,
                    help="fail unless the run has at least this many event files")
    args = ap.parse_args()

    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as e:
        print(f"check_tensorboard: the tensorboard package is not installed ({e})", file=sys.stderr)
        return args.skip_code if args.skip_code is not None else 2

    log_path = os.path.join(args.run_dir, "log.jsonl")
    if not os.path.isfile(log_path):
        print(f"check_tensorboard: no log.jsonl in {args.run_dir}", file=sys.stderr)
        return 2
    def has_events(d):
        return os.path.isdir(d) and any(n.startswith("events.out.tfevents.") for n in os.listdir(d))

    events_dir = os.path.join(args.run_dir, "tb")
    if not has_events(events_dir):
        events_dir = args.run_dir
    if not has_events(events_dir):
        print(f"check_tensorboard: no events.out.tfevents.* file in {args.run_dir} or its tb/",
              file=sys.stderr)
        return 2
    n_files = sum(n.startswith("events.out.tfevents.") for n in os.listdir(events_dir))
    if n_files < args.min_event_files:
        print(f"check_tensorboard: {events_dir}: {n_files} event file(s), expected at least "
              f"{args.min_event_files}", file=sys.stderr)
        return 1
    try:
        want = expected_scalars(log_path)
    except ValueError as e:
        print(f"check_tensorboard: {e}", file=sys.stderr)
        return 2

    acc = EventAccumulator(events_dir, size_guidance={"scalars": 0})
    acc.Reload()
    have_tags = set(acc.Tags().get("scalars", []))

    errors = []
    for tag in sorted(set(TAGS.values())):
        exp = want.get(tag, [])
        got = [(e.step, e.value) for e in acc.Scalars(tag)] if tag in have_tags else []
        if len(got) != len(exp):
            errors.append(f"{tag}: {len(got)} values in TensorBoard, {len(exp)} in log.jsonl")
            continue
        for i, ((gs, gv), (ws, wv)) in enumerate(zip(got, exp)):
            if gs != ws:
                errors.append(f"{tag}[{i}]: step {gs} in TensorBoard, {ws} in log.jsonl")
                break
            if not same_float32(gv, wv):
                errors.append(f"{tag} step {ws}: {gv!r} in TensorBoard, {wv!r} in log.jsonl")
                break

    n = sum(len(v) for v in want.values())
    if errors:
        print(f"check_tensorboard: {args.run_dir}: {len(errors)} mismatch(es):", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    print(f"check_tensorboard: {args.run_dir}: {n} scalars in {len(want)} tags match log.jsonl "
          f"({n_files} event file(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
