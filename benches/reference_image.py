#!/usr/bin/env python3
"""The Python reference of the image benchmarks: Pillow decode, resize
(shorter side 256, bicubic) and centre crop 224, optionally followed by
EfficientNet-Lite0 features with onnxruntime (same ONNX model as kiln,
batches of 32, `(p - 127) / 128`), on all cores with multiprocessing.

`reencode` is the img2dataset job: the same decode, resize and crop, then
JPEG quality 90, the bytes written as Arrow IPC (one file a chunk, in a
folder given as MODEL's place). `reencode-cv2` does it with OpenCV, as fast
as Python gets: `cv2.imread`, `cv2.resize(INTER_AREA)`, `cv2.imencode`.

    reference_image.py decode|features|reencode|reencode-cv2 DIR [MODEL|OUT]

Prints one line: `images N seconds S`.
"""

import hashlib
import io
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


def load_cv2(path):
    import cv2

    im = cv2.imread(path, cv2.IMREAD_COLOR)
    h, w = im.shape[:2]
    if w <= h:
        nw, nh = 256, int(256 * h / w)
    else:
        nw, nh = int(256 * w / h), 256
    im = cv2.resize(im, (nw, nh), interpolation=cv2.INTER_AREA)
    left, top = int(round((nw - 224) / 2.0)), int(round((nh - 224) / 2.0))
    return im[top : top + 224, left : left + 224]


def write(paths, encoded):
    import pyarrow as pa

    # Named by the chunk's first path: unique, and the same in every worker
    # process (str hashes are salted per process).
    out = Path(model) / (hashlib.sha1(paths[0].encode()).hexdigest()[:16] + ".arrow")
    table = pa.table({"path": paths, "image": pa.array(encoded, pa.binary())})
    with pa.OSFile(str(out), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    return len(encoded)


def work(paths):
    if mode == "reencode":
        encoded = []
        for p in paths:
            buf = io.BytesIO()
            Image.fromarray(load(p)).save(buf, format="JPEG", quality=90)
            encoded.append(buf.getvalue())
        return write(paths, encoded)
    if mode == "reencode-cv2":
        import cv2

        encoded = [cv2.imencode(".jpg", load_cv2(p), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for p in paths]
        return write(paths, encoded)
    arrays = [load(p) for p in paths]
    if mode == "decode":
        return len(arrays)
    x = (np.stack(arrays).astype(np.float32) - 127.0) / 128.0
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return session.run(["features"], {"input": x})[0]


if __name__ == "__main__":
    files = sorted(str(p) for p in Path(folder).rglob("*.jpg"))
    if mode.startswith("reencode"):
        os.makedirs(model, exist_ok=True)
    chunks = [files[i : i + BATCH] for i in range(0, len(files), BATCH)]
    start = time.perf_counter()
    with Pool(os.cpu_count(), initializer=init) as pool:
        results = pool.map(work, chunks, chunksize=1)
    seconds = time.perf_counter() - start
    n = sum(r if isinstance(r, int) else len(r) for r in results)
    print(f"images {n} seconds {seconds:.3f}")
