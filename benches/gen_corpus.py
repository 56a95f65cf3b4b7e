#!/usr/bin/env python3
"""Deterministic synthetic text corpus for kiln's benchmarks.

Writes JSONL (`{"id": ..., "text": ...}`) of about --mb megabytes from --seed:
words drawn from a Zipf distribution over a vocabulary of syllable
combinations, documents of 20 to 600 words, so BPE has real work to do.
Same arguments, same bytes.
"""

import argparse
import itertools
import json
import random

SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ["a", "e", "i", "o", "u", "ai", "ou", "ei"]]


def vocabulary(rng, n):
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    vocab = vocabulary(random.Random(12345), 40000)
    weights = [1.0 / (r + 1) ** 1.1 for r in range(len(vocab))]
    cum = list(itertools.accumulate(weights))
    rng = random.Random(args.seed)
    target = int(args.mb * 1e6)
    written = 0
    i = 0
    with open(args.out, "w") as f:
        while written < target:
            n = rng.randint(20, 600)
            words = rng.choices(vocab, cum_weights=cum, k=n)
            sentences = []
            for s in range(0, n, 12):
                part = words[s : s + 12]
                sentences.append(" ".join(part).capitalize() + rng.choice([".", ".", ".", "?", "!"]))
            line = json.dumps({"id": f"{args.seed}-{i}", "text": " ".join(sentences)}) + "\n"
            f.write(line)
            written += len(line)
            i += 1


if __name__ == "__main__":
    main()
