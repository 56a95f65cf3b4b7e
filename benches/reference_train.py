#!/usr/bin/env python3
"""The PyTorch equivalent of `kiln train` on a text dataset, for the training
benchmark: the same model (token + position embeddings, multi-head
self-attention with the padding mask, residual + LayerNorm, masked mean, a
linear head), AdamW with weight decay, gradient clipping by norm, linear
warmup then cosine, the same batch size and number of steps, on the CPU in
fp32. Batches are drawn from a permutation per epoch, as kiln's loader does.
Prints `samples_per_s <v> loss <first> <last>` for the timed loop.

Runs on Debian's CPU build of PyTorch (python3-torch) with OpenBLAS
(libopenblas0-pthread), with the system python3: PyPI's torch pulls several
GB of CUDA wheels.

    python3 reference_train.py --data bench-data/train.npz --steps 200 --batch 32
"""

import argparse
import math
import os
import time

import numpy as np
import torch
from torch import nn


class Fusion(nn.Module):
    def __init__(self, vocab, max_tokens, d, heads, classes):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Embedding(max_tokens, d)
        self.attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, ids, pad):
        at = torch.arange(ids.shape[1]).unsqueeze(0)
        x = self.tokens(ids) + self.positions(at)
        a, _ = self.attention(x, x, x, key_padding_mask=pad, need_weights=False)
        h = self.norm(x + a)
        keep = (~pad).float().unsqueeze(2)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(pooled)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    z = np.load(args.data)
    ids, pad, label = (torch.from_numpy(z[k]) for k in ("ids", "pad", "label"))
    model = Fusion(int(z["vocab"]), ids.shape[1], args.d_model, args.heads, int(z["classes"]))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def lr_at(step):
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_fn = nn.CrossEntropyLoss()
    n = ids.shape[0]
    order, at, epoch = torch.randperm(n), 0, 0
    losses = []
    start = time.perf_counter()
    for step in range(args.steps):
        if at + args.batch > n:
            epoch += 1
            order, at = torch.randperm(n), 0
        rows = order[at : at + args.batch]
        at += args.batch
        logits = model(ids[rows], pad[rows])
        loss = loss_fn(logits, label[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    took = time.perf_counter() - start
    print(f"samples_per_s {args.steps * args.batch / took:.1f} loss {losses[0]:.4f} {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
