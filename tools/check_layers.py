#!/usr/bin/env python3
"""Checks that every include in the engine goes down the layer stack, never up or sideways.

The layers, lowest first (see CMakeLists.txt and docs/architecture.md):
  base (engine/base) -> io (engine/io) -> ops (engine/ops; its backends engine/ops/cpu and cuda/)
  -> model (model/) -> train (engine/train) -> cli (engine/cli)
A file may include headers of its own layer and of the layers below. The two op backends are
siblings: engine/ops/cpu and cuda/ do not include each other. Prints every violation as
file:line and exits 1 if there is any.

Usage: check_layers.py [REPO_ROOT]
"""
import pathlib
import re
import sys

LAYERS = [  # (folder prefix, layer rank, sibling group)
    ("engine/base/", 0, None),
    ("engine/io/", 1, None),
    ("engine/ops/cpu/", 2, "cpu"),
    ("cuda/", 2, "cuda"),
    ("engine/ops/", 2, None),
    ("model/", 3, None),
    ("engine/train/", 4, None),
    ("engine/cli/", 5, None),
]
NAMES = ["base", "io", "ops", "model", "train", "cli"]
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def layer_of(path):
    for prefix, rank, group in LAYERS:
        if path.startswith(prefix):
            return rank, group
    return None


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    sources = [p for d in ("engine", "cuda", "model") for p in (root / d).rglob("*")
               if p.suffix in (".h", ".cpp", ".cu", ".cuh", ".inc")]
    if not sources:
        print(f"check_layers: no sources under {root}")
        return 1
    bad = checked = 0
    for src in sorted(sources):
        rel = src.relative_to(root).as_posix()
        mine = layer_of(rel)
        if mine is None:
            print(f"{rel}: error: not in any layer folder")
            bad += 1
            continue
        for n, line in enumerate(src.read_text(errors="replace").splitlines(), 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            target = layer_of(m.group(1))
            if target is None:
                continue  # a system or toolkit header
            checked += 1
            (r, g), (tr, tg) = mine, target
            if tr > r:
                print(f"{rel}:{n}: error: {NAMES[r]} layer includes \"{m.group(1)}\" from the "
                      f"{NAMES[tr]} layer above it")
                bad += 1
            elif tr == r and g and tg and g != tg:
                print(f"{rel}:{n}: error: op backend {g} includes \"{m.group(1)}\" of its sibling "
                      f"backend {tg}")
                bad += 1
    print(f"check_layers: {len(sources)} files, {checked} project includes, {bad} violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
