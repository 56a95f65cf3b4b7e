#!/usr/bin/env python3
"""The Python reference of the image benchmarks: Pillow decode, resize
(shorter side 256, bicubic) and centre crop 224, optionally followed by
EfficientNet-Lite0 features with onnxruntime (same ONNX model as kiln,
batches of 32, `(p - 127) / 128`), on all cores with multiprocessing.

    reference_image.py decode|features DIR [MODEL]

Prints one line: `images N seconds S`.
"""

import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

mode, folder = sys.argv[1], sys.argv[2]
model = sys.argv[3] if len(sys.argv) > 3 else None
BATCH = int(os.environ.get("REF_BATCH", "32"))


def load(path):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    if w <= h:
        nw, nh = 256, int(256 * h / w)
    else:
        nw, nh = int(256 * w / h), 256
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - 224) / 2.0)), int(round((nh - 224) / 2.0))
    return np.asarray(im.crop((left, top, left + 224, top + 224)))


session = None


def init():
    global session
    if mode == "features":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def work(paths):
    arrays = [load(p) for p in paths]
    if mode == "decode":
        return len(arrays)
    x = (np.stack(arrays).astype(np.float32) - 127.0) / 128.0
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return session.run(["features"], {"input": x})[0]


if __name__ == "__main__":
    files = sorted(str(p) for p in Path(folder).rglob("*.jpg"))
    chunks = [files[i : i + BATCH] for i in range(0, len(files), BATCH)]
    start = time.perf_counter()
    with Pool(os.cpu_count(), initializer=init) as pool:
        results = pool.map(work, chunks, chunksize=1)
    seconds = time.perf_counter() - start
    n = sum(r if isinstance(r, int) else len(r) for r in results)
    print(f"images {n} seconds {seconds:.3f}")
