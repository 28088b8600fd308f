#!/usr/bin/env python3
"""Plot a training run from its JSON-lines log.

    plot_run.py RUN_DIR [--out PNG]

Reads RUN_DIR/log.jsonl (one JSON object per line: training records with step, loss, ce, kd, lr,
grad_norm, ...; eval records with step, val_loss, teacher_val_loss) and draws four panels: train
and validation loss (with the teacher's validation loss as a reference line), CE vs KD, learning
rate, gradient norm. Writes RUN_DIR/curves.png unless --out is given.
"""

import argparse
import json
import os
import sys


def load(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"plot_run: {path}:{n}: not JSON: {e}")
            if isinstance(rec, dict) and "step" in rec:
                rows.append(rec)
    return rows


def series(rows, key):
    pts = [(r["step"], r[key]) for r in rows
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [p[0] for p in pts], [p[1] for p in pts]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", help="PNG to write (default RUN_DIR/curves.png)")
    ap.add_argument("--skip-code", type=int, default=None,
                    help="exit with this code when matplotlib is not installed")
    args = ap.parse_args()

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"plot_run: matplotlib is not installed ({e})", file=sys.stderr)
        return args.skip_code if args.skip_code is not None else 2

    log_path = os.path.join(args.run_dir, "log.jsonl")
    if not os.path.isfile(log_path):
        print(f"plot_run: no log.jsonl in {args.run_dir}", file=sys.stderr)
        return 2
    rows = load(log_path)
    if not rows:
        print(f"plot_run: {log_path} has no records", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.run_dir, "curves.png")

    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    fig.suptitle(os.path.basename(os.path.normpath(args.run_dir)))

    a = ax[0][0]
    a.plot(*series(rows, "loss"), label="train loss", lw=1)
    vx, vy = series(rows, "val_loss")
    if vx:
        a.plot(vx, vy, "o-", label="val loss", ms=3)
    tx, ty = series(rows, "teacher_val_loss")
    if tx:
        a.plot(tx, ty, "--", color="gray", label="teacher val loss")
    a.set_title("loss")
    a.set_xlabel("step")
    a.legend()

    a = ax[0][1]
    a.plot(*series(rows, "ce"), label="CE (hard labels)", lw=1)
    a.plot(*series(rows, "kd"), label="KD (soft targets)", lw=1)
    a.set_title("CE vs KD")
    a.set_xlabel("step")
    a.legend()

    a = ax[1][0]
    a.plot(*series(rows, "lr"), lw=1)
    a.set_title("learning rate")
    a.set_xlabel("step")
    a.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    a = ax[1][1]
    a.plot(*series(rows, "grad_norm"), lw=1)
    a.set_title("gradient norm")
    a.set_xlabel("step")

    for a in ax.flat:
        a.grid(alpha=0.3)
    fig.savefig(out, dpi=110)
    print(f"plot_run: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
