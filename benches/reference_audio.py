#!/usr/bin/env python3
"""The Python reference of the audio benchmark, kiln's audio job done with
the libraries a Python user reaches for: soundfile reads each clip (float32),
the channels are averaged, `librosa.resample` (soxr_hq) takes it to 16 kHz,
it is cut or padded with zeros at the end to 4.0 s, then
`librosa.feature.melspectrogram` (n_fft 400, hop 160, 80 mels) and
`librosa.power_to_db` (ref 1.0, top_db 80). SpecAugment policy LB (W 80,
F 27, mF 1, T 100, p 1.0, mT 1, masks of zeros) in NumPy makes 2 augmented
copies of each clip, kept beside the original (augment 0, 1, 2), from a
generator seeded per file. Rows (sample_id, label: the class id of the
parent folder, augment, mel: n_mels lists of float32, mel_frames) are
written with pyarrow, one Parquet file per chunk of (up to) 32 clips, into a
temporary folder beside DIR (removed after). On all cores with
multiprocessing (imap_unordered over the chunks), one thread each; librosa
and the Parquet writer are warmed up before the workers are forked, so they
do not each load them.

    reference_audio.py DIR

Prints one line: `reference <files> files <seconds> s <rows> rows`, the time
of everything after listing the files, pool start-up included.
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = "1"

import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import librosa
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

folder = sys.argv[1]
SR, SECONDS, N_FFT, HOP, N_MELS = 16000, 4.0, 400, 160, 80
W, F, MF, T, P, MT = 80, 27, 1, 100, 1.0, 1
COPIES, SEED, CHUNK = 2, 0, 32
SAMPLES = int(SR * SECONDS)


def features(y, sr):
    # The mean of the channels as a matrix-vector product: `y.mean(axis=1)`
    # on (samples, channels) is a strided reduction, 30 times slower.
    y = y @ np.full(y.shape[1], 1 / y.shape[1], np.float32)
    y = librosa.resample(y, orig_sr=sr, target_sr=SR)
    y = y[:SAMPLES] if len(y) >= SAMPLES else np.pad(y, (0, SAMPLES - len(y)))
    S = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
    return librosa.power_to_db(S, ref=1.0, top_db=80.0).astype(np.float32)


def time_warp(mel, a, a2):
    frames = mel.shape[1]
    last = frames - 1
    t = np.arange(frames, dtype=np.float64)
    src = np.where(t <= a2, t * a / a2, a + (t - a2) * (last - a) / (last - a2))
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, last)
    frac = (src - i0).astype(np.float32)
    return mel[:, i0] + (mel[:, i1] - mel[:, i0]) * frac


def spec_augment(mel, rng):
    n_mels, frames = mel.shape
    if frames > 2 * W + 1:
        a = int(rng.integers(W + 1, frames - W - 1, endpoint=True))
        w = int(rng.integers(-W, W, endpoint=True))
        mel = time_warp(mel, a, a + w)
    else:
        mel = mel.copy()
    for _ in range(MF):
        f = min(int(rng.integers(0, F, endpoint=True)), n_mels)
        f0 = int(rng.integers(0, n_mels - f, endpoint=True))
        mel[f0 : f0 + f, :] = 0.0
    cap = min(T, int(np.floor(P * frames)))
    for _ in range(MT):
        t = min(int(rng.integers(0, cap, endpoint=True)), frames)
        t0 = int(rng.integers(0, frames - t, endpoint=True))
        mel[:, t0 : t0 + t] = 0.0
    return mel


def mel_column(mels):
    """`list<list<float32>>` from equal-shaped (n_mels, frames) arrays,
    built from the flat values and offsets, without Python lists."""
    n_mels, frames = mels[0].shape
    values = pa.array(np.concatenate([m.reshape(-1) for m in mels]), type=pa.float32())
    inner = pa.ListArray.from_arrays(pa.array(np.arange(len(mels) * n_mels + 1, dtype=np.int32) * frames), values)
    return pa.ListArray.from_arrays(pa.array(np.arange(len(mels) + 1, dtype=np.int32) * n_mels), inner)


def work(job):
    k, items, out = job
    ids, labels, augments, mels = [], [], [], []
    for index, path, label in items:
        rng = np.random.default_rng([SEED, index])
        mel = features(*sf.read(path, dtype="float32", always_2d=True))
        for copy in range(COPIES + 1):
            ids.append(path)
            labels.append(label)
            augments.append(copy)
            mels.append(mel if copy == 0 else spec_augment(mel, rng))
    table = pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "label": pa.array(labels, pa.int64()),
            "augment": pa.array(augments, pa.uint32()),
            "mel": mel_column(mels),
            "mel_frames": pa.array([m.shape[1] for m in mels], pa.uint32()),
        }
    )
    # Dictionary encoding only where it can pay (not on the spectrograms).
    pq.write_table(table, os.path.join(out, f"part-{k:05d}.parquet"), use_dictionary=["sample_id"])
    return table.num_rows


# librosa loads its modules (scipy.signal...) and pyarrow its Parquet writer
# on first use, which takes seconds: once here, before the workers are
# forked, rather than once in each of them.
features(np.zeros((4410, 2), np.float32), 44100)
pq.write_table(pa.table({"mel": mel_column([np.zeros((N_MELS, 2), np.float32)])}), pa.BufferOutputStream())


if __name__ == "__main__":
    files = sorted(str(p) for p in Path(folder).rglob("*.wav"))
    classes = {c: i for i, c in enumerate(sorted({Path(f).parent.name for f in files}))}
    start = time.perf_counter()
    items = [(i, f, classes[Path(f).parent.name]) for i, f in enumerate(files)]
    out = tempfile.mkdtemp(prefix="ref-audio-", dir=Path(folder).resolve().parent)
    try:
        # Chunks of 32 clips, smaller when there are too few clips to give
        # every worker some.
        size = max(1, min(CHUNK, -(-len(items) // os.cpu_count())))
        jobs = [(k, items[i : i + size], out) for k, i in enumerate(range(0, len(items), size))]
        with Pool(os.cpu_count()) as pool:
            rows = sum(pool.imap_unordered(work, jobs, chunksize=1))
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"reference {len(files)} files {seconds:.3f} s {rows} rows")
