#!/usr/bin/env bash
# Smaller models from `kiln train`, side by side on one dataset in one run:
# accuracy, parameters, file size and CPU inference rows/s of
#   - the float model;
#   - its int8 model after quantisation-aware training ([quant] qat = true)
#     and after post-training quantisation (qat = false, the baseline);
#   - the model pruned by 20%, 50% and 80% ([prune], two rounds, gradient
#     norm), its checkpoint holding the narrower tensors;
#   - a student of half the width trained alone, and distilled from a
#     teacher of twice the width ([distill], alpha 0.5, T 2), the same data
#     and steps.
#
# The dataset: N WordNet example sentences labelled with the lexicographer
# file of their synset (benches/gen_sentences.py --label lexfile, the 6
# most common: a label the words tell), tokenized by kiln; 20% held out.
# The model: text only, d_model D (64) with 4 heads, 64 tokens, batch 32,
# STEPS steps (each run its own). Accuracy is the held-out rows'. The
# inference rate is the held-out evaluation's (rows through the model a
# second, batches of 64, reading left out): burn's float kernels on the
# CPU for float models, kiln's integer kernels (int8 x uint8 into int32) for
# int8 ones. File size: the float checkpoint's model.safetensors, or
# model-int8.safetensors.
#
#   benches/train_compress.sh [N] [STEPS] [D]   (default 8000, 1200, 64)
#
# Needs a release build (cargo build --release) and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-8000}
STEPS=${2:-1200}
D=${3:-64}
KILN=target/release/kiln
PY=.venv/bin/python
DATA=bench-data/compress
TOK=fixtures/text/tokenizer.json
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -x "$PY" ] || { echo "set up first: scripts/setup.sh" >&2; exit 2; }
mkdir -p "$DATA"
$PY benches/gen_sentences.py --n "$N" --label lexfile --classes 6 --out "$DATA/sentences.jsonl"
cat > "$DATA/ds.toml" <<TOML
[[inputs]]
path = "$DATA/sentences.jsonl"
columns = ["label"]
[[stages]]
type = "tokenize"
tokenizer = "$TOK"
[output]
path = "$DATA/ds"
max_shard_rows = 1000
TOML
rm -rf "$DATA/ds"
$KILN run "$DATA/ds.toml" -q
write() { # NAME D_MODEL EXTRA_TOML
cat > "$DATA/$1.toml" <<TOML
seed = 0
[data]
path = "$DATA/ds"
validation = 0.2
max_tokens = 64
[model]
d_model = $2
heads = 4
[optim]
max_steps = $STEPS
batch_size = 32
lr = 0.002
lr_min = 0.00002
warmup_steps = 20
weight_decay = 0.01
clip_norm = 1.0
[checkpoint]
every = 1000000
keep = 1
[output]
path = "$DATA/$1-out"
device = "cpu"
$3
TOML
}
third=$((STEPS / 3))
write float "$D" ""
write qat "$D" $'[quant]\nqat = true\ncalibration_steps = 20'
write ptq "$D" $'[quant]\nqat = false\ncalibration_steps = 20'
for r in 20 50 80; do
    write "prune$r" "$D" "[prune]
ratio = 0.$r
rounds = 2
score_steps = 10
start = $third
every = $((third / 2))"
done
write teacher $((D * 2)) ""
write student $((D / 2)) ""
write distilled $((D / 2)) "[distill]
teacher = \"$DATA/teacher-out\"
temperature = 2.0
alpha = 0.5"

vnni=$(grep -o -m1 -w 'avx512_vnni\|avx_vnni' /proc/cpuinfo || echo none)
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), int8 dot-product instructions: $vnni; $N sentences, $STEPS steps of 32, d_model $D"
for run in float qat ptq prune20 prune50 prune80 teacher student distilled; do
    rm -rf "$DATA/$run-out"
    /usr/bin/time -f "%e" -o "$DATA/$run.time" $KILN train "$DATA/$run.toml" -q
done
$PY - "$DATA" <<'PY'
import glob, json, os, sys
data = sys.argv[1]
def lines(run):
    return [json.loads(l) for l in open(f"{data}/{run}-out/metrics.jsonl")]
def float_row(run):
    ev = [l for l in lines(run) if "val_accuracy" in l and l.get("precision") != "int8"][-1]
    ckpt = sorted(glob.glob(f"{data}/{run}-out/checkpoints/step-*"))[-1]
    return ev["val_accuracy"], ev["params"], os.path.getsize(f"{ckpt}/model.safetensors"), ev["val_samples_per_s"]
def int8_row(run):
    ev = [l for l in lines(run) if l.get("precision") == "int8"][-1]
    return ev["val_accuracy"], ev["params"], ev["model_bytes"], ev["val_samples_per_s"]
rows = [
    ("float", *float_row("float")),
    ("int8 after QAT", *int8_row("qat")),
    ("  (QAT's float weights, fake-quantised)", *float_row("qat")),
    ("int8 after PTQ (no QAT)", *int8_row("ptq")),
    ("pruned 20%", *float_row("prune20")),
    ("pruned 50%", *float_row("prune50")),
    ("pruned 80%", *float_row("prune80")),
    ("teacher (2x width)", *float_row("teacher")),
    ("student (1/2 width) alone", *float_row("student")),
    ("student distilled", *float_row("distilled")),
]
base = rows[0]
print(f"{'model':42} {'accuracy':>8} {'params':>8} {'bytes':>9} {'rows/s':>8} {'speed':>6}")
for name, acc, params, size, rate in rows:
    print(f"{name:42} {acc:8.3f} {params:8d} {size:9d} {rate:8.0f} {rate / base[4]:5.2f}x")
for run in ["float", "qat", "ptq", "prune20", "prune50", "prune80", "teacher", "student", "distilled"]:
    print(f"  {run}: {open(f'{data}/{run}.time').read().strip()} s to train")
PY
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
