#!/usr/bin/env python3
"""Generate English sentences as JSONL (`text`, `label`) from a fixed seed,
for the text augmentation benchmark: common nouns, verbs, adjectives and
adverbs in simple patterns, 8 to 25 words a sentence.

    gen_sentences.py --n 20000 --out bench-data/sentences.jsonl
"""

import argparse
import json
import os
import random

NOUNS = """time year people way day man thing woman life child world school state
family student group country problem hand part place case week company system
program question work government number night point home water room mother area
money story fact month lot right study book eye job word business issue side
kind head house service friend father power hour game line end member law car
city community name president team minute idea kid body information back parent
face others level office door health person art war history party result change
morning reason research girl guy moment air teacher force education dog river
garden bread coffee train road market town bridge window letter song""".split()
VERBS = """see make take give find tell ask work seem feel try leave call keep
provide hold bring begin write stand hear let mean set meet run pay sit speak
lie lead read grow lose fall send build stay cut reach kill remain suggest raise
pass sell require report decide pull open walk win offer remember love consider
appear buy wait serve die expect carry break""".split()
ADJS = """good new first last long great little own other old right big high
different small large next early young important few public bad same able
late hard major better economic strong possible whole free military true
federal international full special easy clear recent certain personal open red
difficult available likely short single medical current wrong private past
foreign fine common poor natural significant similar hot dead central happy
serious ready simple left physical general environmental financial blue
democratic dark various entire close legal religious cold final main green nice
huge popular traditional cultural quick brown lazy quiet warm bright""".split()
ADVS = """quickly slowly often never always really very quite rather almost
soon still already together clearly simply finally""".split()
DETS = ["the", "a", "this", "that", "every", "our", "their", "my"]
PREPS = ["in", "on", "over", "under", "near", "after", "before", "with", "from"]


def phrase(r):
    words = [r.choice(DETS)]
    if r.random() < 0.6:
        words.append(r.choice(ADJS))
    words.append(r.choice(NOUNS))
    return words


def sentence(r):
    words = phrase(r)
    if r.random() < 0.3:
        words.append(r.choice(ADVS))
    v = r.choice(VERBS)
    words.append(v + ("s" if r.random() < 0.5 else ""))
    words += phrase(r)
    while len(words) < 8 or (len(words) < 25 and r.random() < 0.5):
        words.append(r.choice(PREPS))
        words += phrase(r)
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    r = random.Random(args.seed)
    with open(args.out, "w") as f:
        for i in range(args.n):
            f.write(json.dumps({"text": sentence(r), "label": f"c{r.randrange(5)}"}) + "\n")


if __name__ == "__main__":
    main()
