#!/usr/bin/env bash
# The image features job, kiln beside the Python reference, on the same
# generated images in the same run: decode, resize 256, centre crop 224,
# EfficientNet-Lite0 features. kiln also writes the dataset; the reference
# (Pillow + onnxruntime, multiprocessing on all cores, batches of 32, its
# fastest: REF_BATCH=1 is slower) only computes the features. kiln
# runs it twice: with the fp32 model (the reference's model) and with
# `precision = "int8"`, both against the fp32 reference. Then kiln's peak
# memory on 1x and 4x the images.
#
#   benches/image_pipeline.sh [N]     (default 2000 images of 500 x 375)
#
# Needs a release build (cargo build --release) and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
KILN=target/release/kiln
PY=.venv/bin/python
DATA=bench-data
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
$PY benches/gen_images.py --n "$N" --out "$DATA/images"
$PY benches/gen_images.py --n $((N * 4)) --out "$DATA/images4x"

job() {
cat <<TOML
[[inputs]]
path = "$1"
[[stages]]
type = "decode_image"
[[stages]]
type = "resize_image"
size = 256
crop = 224
filter = "bicubic"
[[stages]]
type = "image_features"
precision = "${3:-fp32}"
[output]
path = "$2"
TOML
}
job "$DATA/images" "$DATA/kiln-images" > "$DATA/images.toml"
job "$DATA/images" "$DATA/kiln-images-int8" int8 > "$DATA/images-int8.toml"
job "$DATA/images4x" "$DATA/kiln-images4x" > "$DATA/images4x.toml"

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $N images, $(du -sh "$DATA/images" | cut -f1)"
echo "== int8 instructions: $(grep -o -w 'avx512_vnni\|avx_vnni\|avx512bw\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
for round in 1 2; do
    rm -rf "$DATA/kiln-images" "$DATA/kiln-images-int8"
    k=$($PY benches/peak_rss.py $KILN run "$DATA/images.toml" -q | awk '/WALL/ {print $2}')
    k8=$($PY benches/peak_rss.py $KILN run "$DATA/images-int8.toml" -q | awk '/WALL/ {print $2}')
    r=$($PY benches/reference_image.py features "$DATA/images" models/efficientnet_lite0.onnx | awk '{print $4}')
    $PY -c "n, k, k8, r = $N, $k, $k8, $r; print(f'round $round (load $(cut -d' ' -f1 /proc/loadavg)): kiln fp32 {k}s ({n / k:.1f} img/s), kiln int8 {k8}s ({n / k8:.1f} img/s), reference fp32 {r}s ({n / r:.1f} img/s): fp32 {r / k:.2f}x, int8 {r / k8:.2f}x')"
done
echo "== kiln peak memory, 1x and 4x the images"
for x in images images4x; do
    rm -rf "$DATA/kiln-$x"
    $PY benches/peak_rss.py $KILN run "$DATA/$x.toml" -q | tr '\n' ' ' | sed "s/^/$x: /"; echo
done
