#!/usr/bin/env bash
# The img2dataset job, kiln beside Pillow and OpenCV on the same generated
# photos in the same run: decode a JPEG, shorter side to 256, centre crop
# 224, re-encode as JPEG quality 90, write the dataset. The references run on
# all cores (multiprocessing, chunks of 32) and write the bytes as Arrow IPC:
# Pillow (bicubic) and OpenCV (cv2.imread, cv2.resize INTER_AREA,
# cv2.imencode), the faster of the two being the one to beat. At 500 x 375
# and at 1600 x 1200.
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
    echo "== $n images of $w x $h"
    for round in 1 2; do
        rm -rf "$DATA/kiln-reencode" "$DATA/ref-reencode" "$DATA/cv2-reencode"
        k=$($PY benches/peak_rss.py $KILN run "$DATA/reencode.toml" -q | awk '/WALL/ {print $2}')
        p=$($PY benches/reference_image.py reencode "$dir" "$DATA/ref-reencode" | awk '{print $4}')
        c=$($PY benches/reference_image.py reencode-cv2 "$dir" "$DATA/cv2-reencode" | awk '{print $4}')
        $PY -c "n, k, p, c = $n, $k, $p, $c; print(f'round $round (load $(cut -d' ' -f1 /proc/loadavg)): kiln {n / k:.0f} img/s, Pillow {n / p:.0f} img/s, OpenCV {n / c:.0f} img/s: {p / k:.2f}x Pillow, {c / k:.2f}x OpenCV, {min(p, c) / k:.2f}x the faster')"
    done
done
rm -rf "$DATA/kiln-reencode" "$DATA/ref-reencode" "$DATA/cv2-reencode"
