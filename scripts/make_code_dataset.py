#!/usr/bin/env python3
"""Turns source files into an mlx-lm style dataset folder of {"text": ...} jsonl lines.

Usage: make_code_dataset.py --out DIR [--lines N] [--valid-every K] FILE...
Each file is cut into chunks of N lines (default 24); every K-th chunk (default 10) goes
to valid.jsonl, the rest to train.jsonl. Deterministic: same files, same dataset.
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lines", type=int, default=24)
    ap.add_argument("--valid-every", type=int, default=10)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    chunks = []
    for path in sorted(a.files):
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines(keepends=True)
        for i in range(0, len(lines), a.lines):
            text = "".join(lines[i:i + a.lines])
            if text.strip():
                chunks.append(text)
    n_train = n_valid = 0
    with open(os.path.join(a.out, "train.jsonl"), "w") as tr, \
         open(os.path.join(a.out, "valid.jsonl"), "w") as va:
        for i, text in enumerate(chunks):
            line = json.dumps({"text": text}) + "\n"
            if (i + 1) % a.valid_every == 0:
                va.write(line)
                n_valid += 1
            else:
                tr.write(line)
                n_train += 1
    print(f"{a.out}: {n_train} training and {n_valid} validation examples "
          f"from {len(a.files)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
