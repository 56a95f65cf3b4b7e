#!/usr/bin/env python3
"""Generate a benchmark image folder from a fixed seed: N JPEG photos-like
images (smooth colour fields, shapes and sensor-like noise, quality 90) in
10 class folders, so that decoding costs what real photos cost.

    gen_images.py --n 2000 --width 500 --height 375 --out bench-data/images
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=2000)
ap.add_argument("--width", type=int, default=500)
ap.add_argument("--height", type=int, default=375)
ap.add_argument("--out", required=True)
a = ap.parse_args()

rng = np.random.default_rng(1234)
out = Path(a.out)
h, w = a.height, a.width
yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
for i in range(a.n):
    d = out / f"class_{i % 10}"
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"img_{i:06d}.jpg"
    if f.exists():
        continue
    c = rng.uniform(0, 255, size=(3, 3)).astype(np.float32)
    fx, fy = rng.uniform(0.005, 0.03, size=2)
    base = np.stack(
        [c[k, 0] * (0.5 + 0.5 * np.sin(xx * fx + k)) + c[k, 1] * (0.5 + 0.5 * np.cos(yy * fy - k)) * 0.5 + c[k, 2] * 0.25 for k in range(3)],
        axis=-1,
    )
    base += rng.normal(0, 6, size=base.shape).astype(np.float32)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    img.save(f, quality=90)
