#!/usr/bin/env bash
# On an NVIDIA GPU: the trainer, then the image-features job (at the end).
# The trainer: builds a text dataset of four topics with
# kiln, trains on it with `--device cuda` in bf16 (fp32 master weights) and
# in fp32, then on the CPU, and prints for each the device kiln reports, the
# samples/s of the last step, the final validation accuracy, and the GPU's
# utilisation and memory sampled by nvidia-smi during the run.
#
#   scripts/gpu_check.sh [STEPS] [BATCH]   (default 300 steps of 256)
#
# KILN names the binary (default target/release/kiln, built with the default
# `cuda` feature); WORK the scratch folder. Needs an NVIDIA driver and
# NVRTC at run time, nothing at build time: where the CUDA toolkit is not
# installed, PyPI's nvidia-cuda-nvrtc-cu12 wheel has libnvrtc; put its lib/
# folder on LD_LIBRARY_PATH.
#
# The release binary is about 150 MB stripped and 48 MB gzipped: to run this
# on a machine without a Rust toolchain, copy `gzip -c target/release/kiln`
# there and set KILN to it once unpacked.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
BATCH=${2:-256}
KILN=${KILN:-target/release/kiln}
WORK=${WORK:-/tmp/kiln-gpu-check}
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
rm -rf "$WORK" && mkdir -p "$WORK"

KILN="$KILN" scripts/topics_dataset.sh "$WORK"

# nvidia-smi's utilisation and memory every 500 ms while a run lasts.
smi_start() { # name
    SMI=""
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
            > "$WORK/$1.smi" 2>/dev/null &
        SMI=$!
    fi
}
smi_stop() { # name; prints the summary
    [ -n "$SMI" ] && kill "$SMI" 2>/dev/null || true
    if [ -s "$WORK/$1.smi" ]; then
        awk -F', ' '{u += $1; if ($2 > m) m = $2; n++} END {printf "GPU busy %.0f%% on average, %d MiB at most (%d samples)", u / n, m, n}' "$WORK/$1.smi"
    else
        echo "no nvidia-smi"
    fi
}

train() { # name device precision steps
    cat > "$WORK/$1.toml" <<TOML
seed = 1
[data]
path = "$WORK/topics"
validation = 0.1
max_tokens = 64
[model]
d_model = 256
heads = 8
[optim]
max_steps = $4
batch_size = $BATCH
lr = 0.001
warmup_steps = 20
clip_norm = 1.0
precision = "$3"
[checkpoint]
every = 1000000
[output]
path = "$WORK/$1"
device = "$2"
TOML
    smi_start "$1"
    local t0=$(date +%s.%N) rc=0
    "$KILN" train "$WORK/$1.toml" -q 2> "$WORK/$1.err" || rc=$?
    local t1=$(date +%s.%N) gpu=$(smi_stop "$1")
    if [ $rc -ne 0 ]; then
        echo "$1: kiln train failed ($rc): $(tail -3 "$WORK/$1.err")"
        return 0
    fi
    local last=$(grep '"samples_per_s"' "$WORK/$1/metrics.jsonl" | tail -1)
    local val=$(grep '"val_accuracy"' "$WORK/$1/metrics.jsonl" | tail -1)
    echo "$1: $(echo "$val" | grep -o '"device":"[^"]*"') $(echo "$last" | grep -o '"samples_per_s":[0-9.]*') $(echo "$val" | grep -o '"val_accuracy":[0-9.]*') wall $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")s; $gpu"
}

echo "== $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
train cuda-bf16 cuda bf16 "$STEPS"
train cuda-fp32 cuda fp32 "$STEPS"
train cpu cpu fp32 "$((STEPS / 10))"

# The image-features job on CUDA: decode and resize on the CPU threads,
# EfficientNet-Lite0 on the GPU behind the inference queue (batches of 64
# and 256 gathered from every task), against the CPU. Prints images/s, the
# share of the time the model was busy (kiln's summary) and nvidia-smi's.
N_IMAGES=${N_IMAGES:-4000}
.venv/bin/python benches/gen_images.py --n "$N_IMAGES" --out "$WORK/images" >/dev/null
features() { # name device batch
    cat > "$WORK/$1.toml" <<TOML
[[inputs]]
path = "$WORK/images"
[[stages]]
type = "decode_image"
[[stages]]
type = "resize_image"
size = 256
crop = 224
filter = "bicubic"
[[stages]]
type = "image_features"
device = "$2"
batch_size = $3
[output]
path = "$WORK/$1"
TOML
    smi_start "$1"
    local t0=$(date +%s.%N) rc=0
    "$KILN" run "$WORK/$1.toml" 2> "$WORK/$1.err" || rc=$?
    local t1=$(date +%s.%N) gpu=$(smi_stop "$1")
    if [ $rc -ne 0 ]; then
        echo "$1: kiln run failed ($rc): $(tail -3 "$WORK/$1.err")"
        return 0
    fi
    echo "$1: $(awk "BEGIN {printf \"%.0f\", $N_IMAGES / ($t1 - $t0)}") images/s; $(grep -o 'on [A-Za-z]*ExecutionProvider.*' "$WORK/$1.err"); $gpu"
}
features features-cuda-64 cuda 64
features features-cuda-256 cuda 256
features features-cpu cpu 1
