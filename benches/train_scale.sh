#!/usr/bin/env bash
# The trainer at scale, on this machine's CPU, in fp32:
#   1. data-parallel overhead: one process against `--nproc 2` (the same
#      global batch of 32: 32 rows on one rank, 16 on each of two), per-step
#      time and the seconds a step spends exchanging gradients;
#   2. optimizer-state memory per rank with ZeRO stage 1 at 1, 2 and 4 ranks
#      (and without it): the size of each rank's optimizer file, AdamW's two
#      moments of the parameters it owns;
#   3. step time and peak memory of sliding-window (W = 256) against full
#      attention on one text of 1K, 4K, 16K and 32K tokens (full attention is
#      run under a 12 GiB address-space limit, and reported as over it when
#      it does not fit).
# The dataset of 1 and 2: N WordNet example sentences (benches/train.sh's).
#
#   benches/train_scale.sh [N] [STEPS]   (default 8000 sentences, 60 steps)
#
# Needs a release build (cargo build --release) and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-8000}
STEPS=${2:-60}
KILN=target/release/kiln
PY=.venv/bin/python
DATA=bench-data/scale
TOK=fixtures/text/tokenizer.json
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -x "$PY" ] || { echo "set up first: scripts/setup.sh" >&2; exit 2; }
mkdir -p "$DATA"
$PY benches/gen_sentences.py --n "$N" --out "$DATA/sentences.jsonl"
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

# train NAME D BATCH STEPS EXTRA_OPTIM [DATA MAX_TOKENS MODEL_EXTRA]
train_file() {
    cat > "$DATA/$1.toml" <<TOML
seed = 0
[data]
path = "${6:-$DATA/ds}"
validation = 0.0
max_tokens = ${7:-64}
[model]
d_model = $2
heads = $(($2 / 16))
${8:-}
[optim]
max_steps = $4
batch_size = $3
lr = 0.001
warmup_steps = 10
clip_norm = 1.0
$5
[checkpoint]
every = 1000000
[output]
path = "$DATA/out-$1"
device = "cpu"
TOML
    rm -rf "$DATA/out-$1"
}

# Median step_s and exchange_s (after the first 5 steps), samples/s, peak MiB.
summary() {
    $PY - "$DATA/out-$1/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in rows if "loss" in r]
tail = steps[5:] or steps
med = lambda k: statistics.median(r.get(k) or 0.0 for r in tail)
print(f"{1000 * med('step_s'):.1f} ms/step, exchange {1000 * med('exchange_s'):.1f} ms, "
      f"{steps[-1]['samples_per_s']:.0f} samples/s, peak {max(r['peak_rss_mb'] for r in steps):.0f} MiB/rank")
PY
}

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== 1. data-parallel overhead, global batch 32, $STEPS steps"
for D in 64 256; do
    for round in 1 2; do
        train_file "one$D" "$D" 32 "$STEPS" ""
        $KILN train "$DATA/one$D.toml" -q
        train_file "two$D" "$D" 16 "$STEPS" ""
        $KILN train "$DATA/two$D.toml" -q --nproc 2
        echo "d_model $D round $round: 1 rank: $(summary "one$D"); 2 ranks: $(summary "two$D")"
    done
done

echo "== 2. optimizer state a rank (d_model 256), 3 steps"
for ranks in 1 2 4; do
    for zero in false true; do
        [ "$ranks" = 1 ] && [ "$zero" = true ] && continue
        name="z$ranks$zero"
        train_file "$name" 256 8 3 "zero = $zero"
        if [ "$ranks" = 1 ]; then $KILN train "$DATA/$name.toml" -q; else $KILN train "$DATA/$name.toml" -q --nproc "$ranks"; fi
        sizes=$(ls -l "$DATA/out-$name"/checkpoints/step-*/optimizer*.mpk | awk '{printf "%s%.2f", sep, $5 / 1048576; sep=" / "}')
        echo "$ranks ranks, zero = $zero: optimizer file MiB a rank: $sizes"
    done
done

echo "== 3. sliding (window 256) against full attention, one text, d_model 64, 4 heads, 3 steps"
for len in 1024 4096 16384 32768; do
    $PY - "$DATA/long-$len.jsonl" "$len" <<'PY'
import json, random, sys
random.seed(0)
words = ["goal", "match", "team", "bread", "oven", "salt", "rain", "cloud", "storm", "code"]
with open(sys.argv[1], "w") as f:
    for i in range(4):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(int(sys.argv[2]) + 16)),
                            "label": i % 2}) + "\n")
PY
    cat > "$DATA/long-$len.toml" <<TOML
[[inputs]]
path = "$DATA/long-$len.jsonl"
columns = ["label"]
[[stages]]
type = "tokenize"
tokenizer = "$TOK"
[output]
path = "$DATA/long-$len"
TOML
    rm -rf "$DATA/long-$len"
    $KILN run "$DATA/long-$len.toml" -q
    for attn in sliding full; do
        train_file "$attn$len" 64 1 3 "" "$DATA/long-$len" "$len" "attention = \"$attn\""
        if (ulimit -v $((12 * 1024 * 1024)); $KILN train "$DATA/$attn$len.toml" -q) 2>/dev/null; then
            echo "$len tokens, $attn: $(summary "$attn$len")"
        else
            echo "$len tokens, $attn: does not fit in 12 GiB"
        fi
    done
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
