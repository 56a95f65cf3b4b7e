#!/usr/bin/env bash
# The img2dataset job, kiln beside Pillow and OpenCV on the same generated
# photos in the same run: decode a JPEG, shorter side to 256, centre crop
# 224, re-encode as JPEG quality 90, write the dataset. The references run on
# all cores (multiprocessing, chunks of 32) and write the bytes as Arrow IPC:
# Pillow (bicubic) and OpenCV (cv2.imread, cv2.resize INTER_AREA,
# cv2.imencode), the faster of the two being the one to beat. At 500 x 375
# and at 1600 x 1200. kiln runs twice: decoding in full, and with
# `draft = true` (JPEGs decoded at the smallest DCT scale that keeps the
# shorter side at least 256, as Pillow's `draft`), whose difference from
# full decoding is printed as the PSNR of its output images against those
# of full decoding.
#
#   benches/img2dataset.sh [N_SMALL] [N_LARGE]   (default 1000 and 300)
#
# Needs a release build (cargo build --release) and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=target/release/kiln
PY=.venv/bin/python
DATA=bench-data
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load $(cut -d' ' -f1-3 /proc/loadavg)"
for size in "500 375 ${1:-1000}" "1600 1200 ${2:-300}"; do
    set -- $size
    w=$1 h=$2 n=$3 dir="$DATA/photos-${1}x${2}-$3"
    [ -d "$dir" ] || $PY benches/gen_images.py --n "$n" --width "$w" --height "$h" --out "$dir" >/dev/null
    cat > "$DATA/reencode.toml" <<TOML
[[inputs]]
path = "$dir"
[[stages]]
type = "decode_image"
[[stages]]
type = "resize_image"
size = 256
crop = 224
filter = "bicubic"
[[stages]]
type = "encode_image"
format = "jpeg"
quality = 90
[output]
path = "$DATA/kiln-reencode"
TOML
    sed -e 's/^type = "decode_image"$/type = "decode_image"\ndraft = true/' \
        -e "s#kiln-reencode#kiln-draft#" "$DATA/reencode.toml" > "$DATA/draft.toml"
    echo "== $n images of $w x $h"
    for round in 1 2; do
        rm -rf "$DATA/kiln-reencode" "$DATA/kiln-draft" "$DATA/ref-reencode" "$DATA/cv2-reencode"
        k=$($PY benches/peak_rss.py $KILN run "$DATA/reencode.toml" -q | awk '/WALL/ {print $2}')
        d=$($PY benches/peak_rss.py $KILN run "$DATA/draft.toml" -q | awk '/WALL/ {print $2}')
        p=$($PY benches/reference_image.py reencode "$dir" "$DATA/ref-reencode" | awk '{print $4}')
        c=$($PY benches/reference_image.py reencode-cv2 "$dir" "$DATA/cv2-reencode" | awk '{print $4}')
        $PY -c "n, k, d, p, c = $n, $k, $d, $p, $c; print(f'round $round (load $(cut -d' ' -f1 /proc/loadavg)): kiln {n / k:.0f} img/s, Pillow {n / p:.0f} img/s, OpenCV {n / c:.0f} img/s: {p / k:.2f}x Pillow, {c / k:.2f}x OpenCV, {min(p, c) / k:.2f}x the faster; with draft: kiln {n / d:.0f} img/s, {min(p, c) / d:.2f}x the faster')"
    done
    $PY - "$DATA/kiln-reencode" "$DATA/kiln-draft" <<'PY'
import io, json, sys
import numpy as np, pyarrow as pa
from PIL import Image
def images(d):
    shards = json.load(open(f"{d}/manifest.json"))["shards"]
    t = pa.concat_tables(pa.ipc.open_stream(f"{d}/{s['file']}").read_all() for s in shards)
    return {p: np.asarray(Image.open(io.BytesIO(c["bytes"])), dtype=np.float64)
            for p, c in zip(t.column("path").to_pylist(), t.column("image").to_pylist())}
full, draft = images(sys.argv[1]), images(sys.argv[2])
assert full.keys() == draft.keys() and all(full[p].shape == draft[p].shape for p in full)
psnr = [10 * np.log10(255 ** 2 / max(((full[p] - draft[p]) ** 2).mean(), 1e-12)) for p in full]
print(f"draft against full decoding, {len(psnr)} images: PSNR mean {np.mean(psnr):.1f} dB, min {np.min(psnr):.1f} dB")
PY
done
rm -rf "$DATA/kiln-reencode" "$DATA/kiln-draft" "$DATA/ref-reencode" "$DATA/cv2-reencode"
