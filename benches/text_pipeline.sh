#!/usr/bin/env bash
# The text job of pipelines/text.toml as users run it, kiln beside the
# Python reference on the same real English corpus (WordNet glosses,
# benches/gen_glosses.py) in the same run:
#   1. the whole job: train a byte-level BPE of 30,000 on the input, encode,
#      write a `load_from_disk` dataset (the reference: `datasets` reads the
#      JSONL, ByteLevelBPETokenizer().train_from_iterator, map(num_proc =
#      cores), save_to_disk); both tokenizer.json files must be equal;
#   2. the training alone: kiln's fit (reading the JSONL, counting words,
#      learning merges) against train_from_iterator on texts already in
#      memory;
#   3. encoding alone, with the trained tokenizer;
#   4. kiln's peak memory on the whole job at 1x and 10x the corpus.
#
#   benches/text_pipeline.sh [MB]     (default 60 MB for 1x)
#
# Needs a release build (cargo build --release) and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-60}
CORES=$(nproc)
KILN=target/release/kiln
PY=.venv/bin/python
DATA=bench-data/text-$MB
mkdir -p "$DATA/1x" "$DATA/10x"
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }

for s in $(seq 0 9); do
    f="$DATA/10x/part-$s.jsonl"
    [ -s "$f" ] || python3 benches/gen_glosses.py --mb "$MB" --seed "$s" --out "$f"
done
ln -sf ../10x/part-0.jsonl "$DATA/1x/part-0.jsonl"

train_toml() { # INPUT_GLOB OUT
    cat <<TOML
[[inputs]]
path = "$1"
[[stages]]
type = "tokenize"
[stages.train]
vocab_size = 30000
min_frequency = 2
[output]
path = "$2"
[plan]
task_bytes = 8388608
TOML
}
train_toml "$DATA/1x/*.jsonl" "$DATA/kiln-train" > "$DATA/train.toml"
train_toml "$DATA/10x/*.jsonl" "$DATA/kiln-train-10x" > "$DATA/train10.toml"
cat > "$DATA/job.toml" <<TOML
[[inputs]]
path = "$DATA/1x/*.jsonl"
[[stages]]
type = "tokenize"
tokenizer = "$DATA/tokenizer.json"
[output]
path = "$DATA/kiln-out"
[plan]
task_bytes = 8388608
TOML

load() { cut -d' ' -f1-3 /proc/loadavg; }
min() { python3 -c "import sys; print(min(float(x) for x in sys.argv[1:] if x))" "$@"; }
echo "== machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load $(load)"
DOCS=$(wc -l < "$DATA/1x/part-0.jsonl")
echo "== corpus: $MB MB of WordNet glosses, $DOCS documents"

echo "== 1. the whole job (train 30000, encode, write), $CORES processes/threads"
k_all=(); r_all=(); k_fit=(); r_fit=()
for round in 1 2; do
    rm -rf "$DATA/kiln-train" "$DATA/ref-train"
    out=$($PY benches/peak_rss.py $KILN run "$DATA/train.toml" 2>&1)
    k=$(awk '/^WALL/{print $2}' <<<"$out")
    kf=$(sed -n 's/^kiln: fitted in \([0-9.]*\)s.*/\1/p' <<<"$out")
    ref=$($PY benches/reference_text.py --input "$DATA/1x/part-0.jsonl" --train 30000 \
          --tokenizer "$DATA/ref-tokenizer.json" --output "$DATA/ref-train" --num-proc "$CORES" 2>/dev/null)
    r=$(awk '/^SECONDS/{print $2}' <<<"$ref")
    rf=$(awk '/^TRAIN_SECONDS/{print $2}' <<<"$ref")
    echo "round $round (load $(load)): kiln ${k}s (fit ${kf}s), reference ${r}s (train_from_iterator ${rf}s)"
    k_all+=("$k"); r_all+=("$r"); k_fit+=("$kf"); r_fit+=("$rf")
done
$PY - "$DATA/kiln-train/tokenizer.json" "$DATA/ref-tokenizer.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert a["model"]["vocab"] == b["model"]["vocab"], "vocabularies differ"
assert a["model"]["merges"] == b["model"]["merges"], "merges differ"
assert a == b, "tokenizer.json differs"
print(f"check: the same tokenizer.json ({len(a['model']['merges'])} merges, in the same order)")
PY
cp "$DATA/kiln-train/tokenizer.json" "$DATA/tokenizer.json"
python3 - "$DOCS" "$MB" "$(min "${k_all[@]}")" "$(min "${r_all[@]}")" "$(min "${k_fit[@]}")" "$(min "${r_fit[@]}")" <<'PY'
import sys
docs, mb, k, r, kf, rf = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"whole job  kiln {mb/k:6.1f} MB/s ({k:.2f}s)   reference {mb/r:6.1f} MB/s ({r:.2f}s)   RATIO {r/k:.2f}x (target >= 5x)")
print(f"training   kiln {kf:.2f}s (reading included)   train_from_iterator {rf:.2f}s (texts in memory)   RATIO {rf/kf:.2f}x (target >= 3x)")
PY

echo "== 3. encoding alone, the trained tokenizer"
k_enc=(); r_enc=()
for round in 1 2; do
    rm -rf "$DATA/kiln-out" "$DATA/ref-out"
    k=$($PY benches/peak_rss.py $KILN run "$DATA/job.toml" -q 2>/dev/null | awk '/^WALL/{print $2}')
    r=$($PY benches/reference_text.py --input "$DATA/1x/part-0.jsonl" --tokenizer "$DATA/tokenizer.json" \
          --output "$DATA/ref-out" --num-proc "$CORES" 2>/dev/null | awk '/^SECONDS/{print $2}')
    echo "round $round (load $(load)): kiln ${k}s, reference ${r}s"
    k_enc+=("$k"); r_enc+=("$r")
done
python3 - "$MB" "$(min "${k_enc[@]}")" "$(min "${r_enc[@]}")" <<'PY'
import sys
mb, k, r = map(float, sys.argv[1:])
print(f"encode     kiln {mb/k:6.1f} MB/s ({k:.2f}s)   reference {mb/r:6.1f} MB/s ({r:.2f}s)   RATIO {r/k:.2f}x")
PY
# Same ids on both sides (spot check of the first rows).
$PY - "$DATA" <<'PY'
import sys
from datasets import load_from_disk
d = sys.argv[1]
a, b = load_from_disk(f"{d}/kiln-out"), load_from_disk(f"{d}/ref-out")
assert a.num_rows == b.num_rows, (a.num_rows, b.num_rows)
assert a[:200]["input_ids"] == b[:200]["input_ids"]
print(f"check: same {a.num_rows} rows, same ids on the first 200")
PY

echo "== 4. peak memory of the whole job, 1x vs 10x the corpus"
rm -rf "$DATA/kiln-train" "$DATA/kiln-train-10x"
m1=$($PY benches/peak_rss.py $KILN run "$DATA/train.toml" -q 2>/dev/null | awk '/^PEAK/{print $2}')
out10=$($PY benches/peak_rss.py $KILN run "$DATA/train10.toml" 2>&1)
m10=$(awk '/^PEAK/{print $2}' <<<"$out10")
w10=$(awk '/^WALL/{print $2}' <<<"$out10")
python3 -c "print(f'peak RSS: 1x {$m1:.0f} MB, 10x {$m10:.0f} MB ({$w10:.1f}s), RATIO {$m10/$m1:.2f}')"
rm -rf "$DATA/kiln-train" "$DATA/kiln-train-10x" "$DATA/kiln-out" "$DATA/ref-out" "$DATA/ref-train"
