"""Prints the demo's table of held-out losses from each run's summary.json."""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1])
total = sys.argv[2] if len(sys.argv) > 2 else "?"
rows = [("teacher (CE)", "teacher"), ("student, KD", "kd"), ("student, CE only", "ce")]
print(f"\n{'model':<18} {'params':>10} {'steps':>6} {'held-out loss':>14} {'time (s)':>9}")
for label, name in rows:
    s = json.loads((root / name / "summary.json").read_text())
    wall = (root / name / "wall_seconds").read_text().strip()
    print(f"{label:<18} {s['parameters']:>10} {s['steps']:>6} {s['final_val_loss']:>14.4f} {wall:>9}")
print(f"total wall time: {total} s")
