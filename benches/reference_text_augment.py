#!/usr/bin/env python3
"""The synonym augmentation job done the way users do it in Python today:
nlpaug's SynonymAug (WordNet through NLTK) on every sentence, in a
multiprocessing pool over all cores, then the sentence and its augmented
copy tokenized with the same tokenizer.json (`tokenizers`' encode_batch) and
written as an Arrow file with pyarrow.

NLTK reads the same WordNet 3.0 files kiln reads (/usr/share/wordnet),
copied beside a generated `lexnames` with the 3.0 offset mapping skipped
(see fixtures/make_wordnet_reference.py). NLTK's part-of-speech tagger is a
download that is not available offline, so nlpaug is given no tags: like
kiln's synonym method, it draws synonyms from every part of speech.

Prints `reference: ROWS rows in SECS s`.
"""

import argparse
import json
import os
import random
import shutil
import tempfile
import time
import warnings
from multiprocessing import Pool
from pathlib import Path

AUG = None


def init(nltk_dir, stopwords, seed):
    global AUG
    warnings.simplefilter("ignore")
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    nltk.data.path.insert(0, nltk_dir)
    WordNetCorpusReader.map_wn = lambda self, *a, **k: None
    import nlpaug.augmenter.word as naw
    import nlpaug.model.word_dict as nmw

    nmw.WordNet.pos_tag = classmethod(lambda cls, tokens: [(t, "") for t in tokens])
    AUG = naw.SynonymAug(aug_src="wordnet", aug_p=0.3, aug_min=1, aug_max=10, stopwords=stopwords)
    random.seed(seed + os.getpid())


def augment(texts):
    return [AUG.augment(t)[0] for t in texts]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--stopwords", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--num-proc", type=int, default=os.cpu_count())
    args = ap.parse_args()
    stopwords = [
        l.strip() for l in open(args.stopwords) if l.strip() and not l.startswith("#")
    ]
    nltk_dir = tempfile.mkdtemp(prefix="kiln-nltk-")
    wn = Path(nltk_dir, "corpora", "wordnet")
    wn.mkdir(parents=True)
    for f in Path("/usr/share/wordnet").glob("*.*"):
        if f.is_file():
            shutil.copy(f, wn)
    Path(wn, "lexnames").write_text("".join(f"{i:02d} lex{i} 0\n" for i in range(45)))
    try:
        import pyarrow as pa
        from tokenizers import Tokenizer

        t0 = time.perf_counter()
        rows = [json.loads(l) for l in open(args.input)]
        texts = [r["text"] for r in rows]
        chunks = [texts[i : i + 256] for i in range(0, len(texts), 256)]
        with Pool(args.num_proc, initializer=init, initargs=(nltk_dir, stopwords, 0)) as pool:
            augmented = [t for c in pool.map(augment, chunks) for t in c]
        tok = Tokenizer.from_file(args.tokenizer)
        out_texts, augment_col, labels = [], [], []
        for r, a in zip(rows, augmented):
            out_texts += [r["text"], a]
            augment_col += [0, 1]
            labels += [r["label"], r["label"]]
        ids = [e.ids for e in tok.encode_batch(out_texts, add_special_tokens=False)]
        table = pa.table(
            {
                "input_ids": pa.array(ids, pa.list_(pa.uint32())),
                "length": pa.array([len(i) for i in ids], pa.uint32()),
                "text": out_texts,
                "augment": pa.array(augment_col, pa.uint32()),
                "label": labels,
            }
        )
        os.makedirs(args.output, exist_ok=True)
        with pa.OSFile(os.path.join(args.output, "data.arrow"), "wb") as f:
            with pa.ipc.new_stream(f, table.schema) as w:
                w.write_table(table)
        secs = time.perf_counter() - t0
    finally:
        shutil.rmtree(nltk_dir, ignore_errors=True)
    changed = sum(a != t for a, t in zip(augmented, texts))
    print(f"reference: {table.num_rows} rows in {secs:.2f} s ({changed} of {len(texts)} sentences changed)")


if __name__ == "__main__":
    main()
