#!/usr/bin/env python3
"""Plot one or more training runs from their JSON-lines logs, overlaid.

    plot_run.py RUN_DIR [RUN_DIR ...] [--out PNG]

Each RUN_DIR/log.jsonl holds training records (step, loss, ce, [kd, kl, teacher_entropy,]
student_entropy, lr, grad_norm, ...; loss terms are means over the logging window) and eval records
(step, val_loss[, teacher_val_loss, val_kl]). Four panels, one colour per run:

  cross-entropy   training CE (hard labels, the same quantity as the held-out loss) as a line,
                  held-out CE as dots, and the teacher's held-out CE as a dashed line. The blended
                  training loss (ce_weight*CE + kd_weight*s(T)*D) is not drawn here: it is not a
                  cross-entropy and would sit below the teacher's for no good reason.
  distillation    the KD term D(p_T, q_T) during training and KL(teacher||student) on held-out
                  data, for runs with a teacher only (a CE-only run has no such curve, not a 0 line)
  learning rate, gradient norm

Writes RUN_DIR/curves.png (the first run's folder) unless --out is given. Logs written before the
trainer omitted KD terms for teacher-less runs (they logged kd = 0) are read the same way.
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


def has_teacher(rows):
    """A teacher is there when an eval record names its loss or a KD value is not 0."""
    if any("teacher_val_loss" in r or "val_kl" in r for r in rows):
        return True
    return any(v != 0 for v in series(rows, "kd")[1])


def run_label(run_dir, seen):
    name = os.path.basename(os.path.normpath(run_dir)) or run_dir
    if name in seen:  # two runs with the same folder name: add the parent
        name = os.path.join(os.path.basename(os.path.dirname(os.path.normpath(run_dir))), name)
    seen.add(name)
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--out", help="PNG to write (default FIRST_RUN_DIR/curves.png)")
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

    runs, seen = [], set()
    for d in args.run_dirs:
        log_path = os.path.join(d, "log.jsonl")
        if not os.path.isfile(log_path):
            print(f"plot_run: no log.jsonl in {d}", file=sys.stderr)
            return 2
        rows = load(log_path)
        if not rows:
            print(f"plot_run: {log_path} has no records", file=sys.stderr)
            return 2
        runs.append((run_label(d, seen), rows))
    out = args.out or os.path.join(args.run_dirs[0], "curves.png")

    fig, ax = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    fig.suptitle(" vs ".join(label for label, _ in runs))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    teacher_drawn = set()

    ce_ax, kd_ax, lr_ax, gn_ax = ax[0][0], ax[0][1], ax[1][0], ax[1][1]
    any_kd = False
    for i, (label, rows) in enumerate(runs):
        c = colors[i % len(colors)]
        ce_ax.plot(*series(rows, "ce"), color=c, lw=1, alpha=0.8, label=f"{label}: train CE")
        vx, vy = series(rows, "val_loss")
        if vx:
            ce_ax.plot(vx, vy, "o", color=c, ms=5, label=f"{label}: held-out CE")
        tx, ty = series(rows, "teacher_val_loss")
        if tx and ty[-1] not in teacher_drawn:  # runs sharing a teacher draw it once
            teacher_drawn.add(ty[-1])
            ce_ax.axhline(ty[-1], ls="--", color=c, lw=1,
                          label=f"{label}: teacher held-out CE ({ty[-1]:.3f})")
        if has_teacher(rows):
            any_kd = True
            kd_ax.plot(*series(rows, "kd"), color=c, lw=1, label=f"{label}: KD term D(p_T, q_T), train")
            kx, ky = series(rows, "val_kl")
            if kx:
                kd_ax.plot(kx, ky, "o", color=c, ms=5, label=f"{label}: KL(teacher||student), held-out")
        lr_ax.plot(*series(rows, "lr"), color=c, lw=1, label=label)
        gn_ax.plot(*series(rows, "grad_norm"), color=c, lw=1, label=label)

    ce_ax.set_title("cross-entropy (nats per token)")
    ce_ax.set_ylabel("CE")
    kd_ax.set_title("distillation")
    if not any_kd:
        kd_ax.text(0.5, 0.5, "no run here has a teacher:\nno KD term", ha="center", va="center",
                   transform=kd_ax.transAxes, color="gray")
        kd_ax.set_xticks([])
        kd_ax.set_yticks([])
    lr_ax.set_title("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    gn_ax.set_title("gradient norm (before clipping)")
    for a in ax.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.savefig(out, dpi=110)
    print(f"plot_run: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
