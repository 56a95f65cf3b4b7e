#!/usr/bin/env bash
# Training throughput: `kiln train` beside the equivalent PyTorch script, on
# the same tokenized sentences in the same run, both on the CPU in fp32.
#
# The dataset: N WordNet example sentences (benches/gen_sentences.py, five
# labels), tokenized by kiln. The model: text only (token + position
# embeddings, self-attention, LayerNorm, masked mean, head), d_model D
# (64 unless given) with D / 16 heads, 64 tokens, batch 32, AdamW, clipping, warmup + cosine; STEPS
# steps. kiln runs twice a round: one process, and `--nproc P` (P = the
# cores; batch 32 / P a rank, the same global batch of 32, the same steps).
# kiln's rate is the last step's `samples_per_s` in metrics.jsonl
# (loading and assembling batches included); the reference's is its timed
# loop (batches sliced from tensors already in memory; torch's own threads
# on every core). Prints the ratios for each round, and the share of kiln's time spent waiting for data
# (`data_s` per step: reading, splitting, assembling the batch), which shows
# whether the loader is the bottleneck.
#
#   benches/train.sh [N] [STEPS] [D]   (default 8000 sentences, 200 steps, 64)
#
# Needs a release build (cargo build --release), scripts/setup.sh, and
# Debian's python3-torch with OpenBLAS (libopenblas0-pthread), installed here
# with apt when missing and root. Without OpenBLAS, Debian's torch falls back
# to the reference BLAS and runs several times slower: not a fair reference.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-8000}
STEPS=${2:-200}
D=${3:-64}
KILN=target/release/kiln
PY=.venv/bin/python
DATA=bench-data
TOK=fixtures/text/tokenizer.json
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -x "$PY" ] || { echo "set up first: scripts/setup.sh" >&2; exit 2; }
if ! /usr/bin/python3 -c "import torch" 2>/dev/null || [ ! -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3-torch libopenblas0-pthread >/dev/null
    else
        echo "the reference needs Debian's python3-torch and libopenblas0-pthread: apt-get install them" >&2
        exit 2
    fi
fi
echo "== reference: torch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'), BLAS $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)"
$PY benches/gen_sentences.py --n "$N" --out "$DATA/train-sentences.jsonl"
cat > "$DATA/train-ds.toml" <<TOML
[[inputs]]
path = "$DATA/train-sentences.jsonl"
columns = ["label"]
[[stages]]
type = "tokenize"
tokenizer = "$TOK"
[output]
path = "$DATA/train-ds"
max_shard_rows = 1000
TOML
rm -rf "$DATA/train-ds"
$KILN run "$DATA/train-ds.toml" -q
$PY benches/export_train.py --data "$DATA/train-ds" --max-tokens 64 --out "$DATA/train.npz"
P=$(nproc)
write_file() { # NAME BATCH
cat > "$DATA/$1.toml" <<TOML
seed = 0
[data]
path = "$DATA/train-ds"
validation = 0.0
max_tokens = 64
[model]
d_model = $D
heads = $((D / 16))
[optim]
max_steps = $STEPS
batch_size = $2
lr = 0.001
warmup_steps = 10
weight_decay = 0.01
clip_norm = 1.0
[checkpoint]
every = 1000000
[output]
path = "$DATA/$1-out"
device = "cpu"
TOML
}
write_file train 32
write_file ranks $((32 / P))

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $N sentences, $STEPS steps of 32, d_model $D"
for round in 1 2 3; do
    rm -rf "$DATA/train-out" "$DATA/ranks-out"
    $KILN train "$DATA/train.toml" -q
    $KILN train "$DATA/ranks.toml" -q --nproc "$P"
    k=$($PY -c "
import json
rows = [json.loads(l) for l in open('$DATA/train-out/metrics.jsonl')]
steps = [r for r in rows if 'loss' in r]
wall = 32 * len(steps) / steps[-1]['samples_per_s']
print(steps[-1]['samples_per_s'], steps[0]['loss'], steps[-1]['loss'], sum(r['data_s'] for r in steps) / wall)")
    p=$($PY -c "
import json
rows = [json.loads(l) for l in open('$DATA/ranks-out/metrics.jsonl')]
print([r for r in rows if 'loss' in r][-1]['samples_per_s'])")
    r=$(/usr/bin/python3 benches/reference_train.py --data "$DATA/train.npz" --steps "$STEPS" --batch 32 --d-model "$D" --heads $((D / 16)))
    $PY -c "
k = '$k'.split(); r = '$r'.split(); ps = float('$p')
ks, rs = float(k[0]), float(r[1])
print(f'round $round: kiln {ks:.0f} samples/s (loss {float(k[1]):.3f} -> {float(k[2]):.3f}, '
      f'{100 * float(k[3]):.1f}% of the time waiting for data), kiln --nproc $P {ps:.0f} samples/s, '
      f'PyTorch {rs:.0f} samples/s (loss {float(r[3]):.3f} -> {float(r[4]):.3f}): '
      f'{ks / rs:.2f}x one process, {ps / rs:.2f}x --nproc $P')"
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
