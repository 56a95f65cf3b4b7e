#!/usr/bin/env python3
"""Real English text as JSONL (`{"id": ..., "text": ...}`) for the text
benchmarks: documents of 1 to 12 glosses of WordNet 3.0 (the definitions and
example sentences of /usr/share/wordnet/data.*, 117,659 glosses, 9.3 MB,
about 80,000 distinct words), drawn from a fixed seed until --mb megabytes.
Same arguments, same bytes; available offline wherever the tests run.

    gen_glosses.py --mb 60 --seed 0 --out bench-data/glosses.jsonl
"""

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_sentences import glosses  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    args = ap.parse_args()
    found = [g.strip() for g, _ in glosses(args.wordnet) if g.strip()]
    rng = random.Random(args.seed)
    target = int(args.mb * 1_000_000)
    written = 0
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        i = 0
        while written < target:
            text = " ".join(rng.choice(found) for _ in range(rng.randint(1, 12)))
            line = json.dumps({"id": i, "text": text}) + "\n"
            f.write(line)
            written += len(line)
            i += 1


if __name__ == "__main__":
    main()
