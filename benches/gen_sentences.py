#!/usr/bin/env python3
"""English sentences as JSONL (`text`, `label`) for the text augmentation
benchmark: the example sentences of WordNet 3.0's glosses (the quoted parts
of /usr/share/wordnet/data.*, at least 6 words; 23,658 of them with about
23,000 distinct words), in an order shuffled from a fixed seed, repeated when
more are asked for. Real sentences, with a real vocabulary, available
offline on every machine the tests run on.

    gen_sentences.py --n 20000 --out bench-data/sentences.jsonl
"""

import argparse
import glob
import json
import os
import random
import re


def examples(wordnet):
    out = []
    for path in sorted(glob.glob(os.path.join(wordnet, "data.*"))):
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue
                for m in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                    if len(m.split()) >= 6:
                        out.append(m.strip())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    args = ap.parse_args()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    sentences = examples(args.wordnet)
    r = random.Random(args.seed)
    r.shuffle(sentences)
    with open(args.out, "w") as f:
        for i in range(args.n):
            text = sentences[i % len(sentences)]
            f.write(json.dumps({"text": text, "label": f"c{r.randrange(5)}"}) + "\n")


if __name__ == "__main__":
    main()
