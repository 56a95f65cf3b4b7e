#!/usr/bin/env python3
"""English sentences as JSONL (`text`, `label`) for the text augmentation
benchmark: the example sentences of WordNet 3.0's glosses (the quoted parts
of /usr/share/wordnet/data.*, at least 6 words; 23,658 of them with about
23,000 distinct words), in an order shuffled from a fixed seed, repeated when
more are asked for. Real sentences, with a real vocabulary, available
offline on every machine the tests run on.

    gen_sentences.py --n 20000 --out bench-data/sentences.jsonl

The label is random (`c0`..`c4`) unless `--label lexfile`: then it is the
lexicographer file of the synset whose gloss holds the sentence (`lex00`
adj.all, `lex02` adv.all, `lex04` noun.act, ...), a label a model can learn
from the words, kept to the `--classes` most common files.
"""

import argparse
import glob
import json
import os
import random
import re


def glosses(wordnet):
    """Each synset's gloss (definitions and quoted examples) and its
    lexicographer file number, in file order."""
    for path in sorted(glob.glob(os.path.join(wordnet, "data.*"))):
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue
                yield line.split("|", 1)[1], line.split()[1]


def examples(wordnet, with_lexfile=False):
    out = []
    for gloss, lexfile in glosses(wordnet):
        for m in re.findall(r'"([^"]+)"', gloss):
            if len(m.split()) >= 6:
                if with_lexfile:
                    out.append((m.strip(), "lex" + lexfile))
                else:
                    out.append(m.strip())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    ap.add_argument("--label", choices=["random", "lexfile"], default="random")
    ap.add_argument("--classes", type=int, default=6)
    args = ap.parse_args()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    if args.label == "lexfile":
        found = examples(args.wordnet, with_lexfile=True)
        counts = {}
        for _, lex in found:
            counts[lex] = counts.get(lex, 0) + 1
        keep = set(sorted(counts, key=lambda k: (-counts[k], k))[: args.classes])
        found = [f for f in found if f[1] in keep]
        r = random.Random(args.seed)
        r.shuffle(found)
        with open(args.out, "w") as f:
            for i in range(args.n):
                text, lex = found[i % len(found)]
                f.write(json.dumps({"text": text, "label": lex}) + "\n")
        return
    sentences = examples(args.wordnet)
    r = random.Random(args.seed)
    r.shuffle(sentences)
    with open(args.out, "w") as f:
        for i in range(args.n):
            text = sentences[i % len(sentences)]
            f.write(json.dumps({"text": text, "label": f"c{r.randrange(5)}"}) + "\n")


if __name__ == "__main__":
    main()
