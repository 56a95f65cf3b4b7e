#!/usr/bin/env python3
"""The text job done the way users do it in Python today: HuggingFace
`datasets` reads the JSONL, `map(batched=True, num_proc=<cores>)` tokenizes
with the same tokenizer.json, `save_to_disk` writes the dataset.

With `--train VOCAB` the tokenizer is first trained on the dataset's texts,
as the article's code does: `ByteLevelBPETokenizer().train_from_iterator`
(min_frequency 2), which is `tokenizers`' Rust trainer on all cores; the
trained tokenizer.json is written to `--tokenizer`. TRAIN_SECONDS is that
training alone (the texts already in memory)."""

import argparse
import os
import shutil
import tempfile
import time

from datasets import disable_progress_bars, load_dataset
from tokenizers import ByteLevelBPETokenizer, Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", nargs="+", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--num-proc", type=int, default=os.cpu_count())
    ap.add_argument("--train", type=int, default=0, metavar="VOCAB")
    args = ap.parse_args()
    disable_progress_bars()
    tok = None if args.train else Tokenizer.from_file(args.tokenizer)

    def encode(batch):
        encs = tok.encode_batch(batch["text"], add_special_tokens=False)
        ids = [e.ids for e in encs]
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    cache = tempfile.mkdtemp(prefix="kiln-ref-cache-")
    try:
        t0 = time.perf_counter()
        ds = load_dataset("json", data_files=args.input, split="train", cache_dir=cache)
        if args.train:
            texts = ds["text"]
            t1 = time.perf_counter()
            bpe = ByteLevelBPETokenizer()
            bpe.train_from_iterator(texts, vocab_size=args.train, min_frequency=2)
            train_secs = time.perf_counter() - t1
            del texts
            bpe.save(args.tokenizer)
            tok = Tokenizer.from_file(args.tokenizer)
        ds = ds.map(encode, batched=True, num_proc=args.num_proc, remove_columns=["text"])
        ds.save_to_disk(args.output)
        secs = time.perf_counter() - t0
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"reference: {ds.num_rows} docs in {secs:.2f}s")
    print(f"SECONDS {secs:.3f}")
    if args.train:
        print(f"TRAIN_SECONDS {train_secs:.3f}")


if __name__ == "__main__":
    main()
