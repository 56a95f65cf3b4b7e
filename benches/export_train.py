#!/usr/bin/env python3
"""A kiln text dataset as NumPy arrays for the PyTorch reference trainer:
`ids` (int64, [rows, max_tokens], padded with 0), `pad` (bool, true where
padded; the first position is never padding, as kiln's trainer keeps it) and
`label` (int64 class ids, the string labels sorted, as kiln sorts them).

    export_train.py --data bench-data/train-ds --max-tokens 64 --out bench-data/train.npz
"""

import argparse

import numpy as np
from datasets import load_from_disk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ds = load_from_disk(args.data)
    t = args.max_tokens
    names = sorted(set(ds["label"]))
    ids = np.zeros((len(ds), t), dtype=np.int64)
    pad = np.ones((len(ds), t), dtype=bool)
    for i, row in enumerate(ds["input_ids"]):
        row = row[:t]
        ids[i, : len(row)] = row
        pad[i, : len(row)] = False
        pad[i, 0] = False
    label = np.array([names.index(x) for x in ds["label"]], dtype=np.int64)
    np.savez(args.out, ids=ids, pad=pad, label=label, vocab=int(ids.max()) + 1,
             classes=len(names))


if __name__ == "__main__":
    main()
