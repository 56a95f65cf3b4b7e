#!/usr/bin/env python3
"""Generate a benchmark audio folder from a fixed seed: N speech-like WAV
clips (16-bit PCM, 44.1 kHz, stereo): syllables that are harmonic chirps
on a fundamental of 100-300 Hz under a smooth envelope, with low noise,
the right channel a delayed, quieter copy of the left with its own noise.
Clips alternate between the class folders `a/` and `b/`. Each clip has its
own generator (seed, index), so a clip is the same whatever N is; a folder
that already holds N clips is left as it is.

    gen_audio.py --n 1000 --out bench-data/audio [--seconds 4] [--seed 0]
"""

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--seconds", type=float, default=4.0)
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()

SR = 44100
HARMONICS = np.arange(1, 11, dtype=np.float32)[:, None]
out = Path(a.out)
if out.is_dir() and sum(1 for _ in out.rglob("clip-*.wav")) == a.n:
    raise SystemExit(0)
n = int(round(a.seconds * SR))
for i in range(a.n):
    d = out / ("a" if i % 2 == 0 else "b")
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"clip-{i:06d}.wav"
    if f.exists():
        continue
    rng = np.random.default_rng([a.seed, i])
    left = np.zeros(n)
    # About three syllables a second, 0.12-0.4 s each, each a chirp of 10
    # harmonics (spectral tilt and a formant-like bump) under a Hann envelope.
    for _ in range(rng.integers(int(2 * a.seconds), int(4 * a.seconds) + 1)):
        length = int(rng.uniform(0.12, 0.4) * SR)
        start = int(rng.integers(0, max(1, n - length)))
        length = min(length, n - start)
        t = np.arange(length) / SR
        f0 = rng.uniform(100, 300) * rng.uniform(0.8, 1.25) ** (t / t[-1])
        # Wrapped in f64, then f32: harmonic k of a phase under 2 pi is exact
        # enough in f32, whose sin is many times faster.
        phase = np.mod(2 * np.pi * np.cumsum(f0) / SR, 2 * np.pi).astype(np.float32)
        formant = rng.uniform(300, 2500)
        gains = (1 / HARMONICS) * (1 + 2 * np.exp(-(((HARMONICS * f0.mean() - formant) / 400) ** 2)))
        voiced = (gains * np.sin(HARMONICS * phase + rng.uniform(0, 2 * np.pi, size=HARMONICS.shape).astype(np.float32))).sum(axis=0)
        left[start : start + length] += rng.uniform(0.3, 1.0) * np.sin(np.pi * t / t[-1]) ** 2 * voiced
    left *= 0.5 / max(np.abs(left).max(), 1e-9)
    delay = int(rng.integers(0, 24))
    right = rng.uniform(0.8, 1.0) * np.concatenate([np.zeros(delay), left[: n - delay]])
    left += rng.normal(0, 0.003, size=n)
    right += rng.normal(0, 0.003, size=n)
    sf.write(f, np.clip(np.stack([left, right], axis=1), -1, 1), SR, subtype="PCM_16")
