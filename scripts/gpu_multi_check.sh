#!/usr/bin/env bash
# Data-parallel training on two or more NVIDIA GPUs of one machine: builds
# scripts/topics_dataset.sh (40,000 sentences of four topics), then trains it
#   * on one GPU with batch B x N (one process),
#   * on N GPUs with `--nproc N` (one rank a GPU, LOCAL_RANK choosing it),
#     batch B a rank: the same global batch,
#   * the same with `optim.zero = true` (ZeRO stage 1),
# in bf16 mixed precision, and prints for each the samples/s of the last
# step, the seconds a step spends exchanging gradients, the validation
# accuracy, the largest difference of the final weights from the one-GPU
# run, and each GPU's memory at its peak (nvidia-smi).
#
#   scripts/gpu_multi_check.sh [N] [STEPS] [B]   (default: every GPU, 300 steps, 128)
#
# KILN names the binary (default target/release/kiln, built with the default
# `cuda` feature); WORK the scratch folder. Needs a driver and NVRTC at run
# time (see scripts/gpu_check.sh). The gradients travel through host memory
# and rank 0 (kiln's exchange, see README "Data parallelism and ZeRO"), so
# expect the exchange's share to grow with N and with the model.
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
N=${1:-$GPUS}
STEPS=${2:-300}
B=${3:-128}
KILN=${KILN:-target/release/kiln}
WORK=${WORK:-/tmp/kiln-gpu-multi-check}
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
if [ "$GPUS" -lt 2 ] || [ "$N" -lt 2 ] || [ "$N" -gt "$GPUS" ]; then
    echo "needs 2 or more GPUs (found $GPUS, asked for $N)" >&2
    exit 2
fi
rm -rf "$WORK" && mkdir -p "$WORK"
KILN="$KILN" scripts/topics_dataset.sh "$WORK" 40000

run() { # name batch zero [kiln args...]
    local name=$1 batch=$2 zero=$3
    shift 3
    cat > "$WORK/$name.toml" <<TOML
seed = 1
[data]
path = "$WORK/topics"
validation = 0.1
max_tokens = 64
[model]
d_model = 256
heads = 8
[optim]
max_steps = $STEPS
batch_size = $batch
lr = 0.001
warmup_steps = 20
clip_norm = 1.0
precision = "bf16"
zero = $zero
[checkpoint]
every = 1000000
[output]
path = "$WORK/$name"
device = "cuda"
TOML
    nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > "$WORK/$name.smi" &
    local smi=$! rc=0
    "$KILN" train "$WORK/$name.toml" -q "$@" 2> "$WORK/$name.err" || rc=$?
    kill "$smi" 2>/dev/null || true
    if [ $rc -ne 0 ]; then
        echo "$name: kiln train failed ($rc): $(tail -3 "$WORK/$name.err")"
        return 0
    fi
    python3 - "$WORK" "$name" <<'PY'
import json, struct, sys
work, name = sys.argv[1:]
rows = [json.loads(l) for l in open(f"{work}/{name}/metrics.jsonl")]
steps = [r for r in rows if "loss" in r]
val = [r for r in rows if "val_accuracy" in r][-1]
ex = sorted((r.get("exchange_s") or 0.0) for r in steps[5:])
peak = {}
for line in open(f"{work}/{name}.smi"):
    i, m = (int(x) for x in line.split(","))
    peak[i] = max(peak.get(i, 0), m)

def weights(n):
    import glob
    path = sorted(glob.glob(f"{work}/{n}/checkpoints/step-*/model.safetensors"))[-1]
    b = open(path, "rb").read()
    k = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + k])
    out = {}
    for t, v in head.items():
        if t == "__metadata__":
            continue
        a, z = v["data_offsets"]
        out[t] = struct.unpack(f"<{(z - a) // 4}f", b[8 + k + a:8 + k + z])
    return out

one, this = weights("one"), weights(name)
diff = max(abs(x - y) for t in one for x, y in zip(one[t], this[t]))
print(f"{name}: {val['device']}, {val.get('ranks', 1)} ranks, {steps[-1]['samples_per_s']:.0f} samples/s, "
      f"exchange {1000 * (ex[len(ex) // 2] if ex else 0):.1f} ms/step, val_accuracy {val['val_accuracy']:.3f}, "
      f"max |w - w_one| {diff:.2e}, GPU MiB at peak {peak}")
PY
}

echo "== $(nproc) cores; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1) x $GPUS"
run one "$((B * N))" false
run ddp "$B" false --nproc "$N"
run zero "$B" true --nproc "$N"
