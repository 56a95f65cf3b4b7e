#!/usr/bin/env bash
# The text job, kiln beside the Python reference, on the same generated
# corpus in the same run; then kiln's peak memory on 1x and 10x that corpus.
#
#   benches/text_pipeline.sh [MB]     (default 50 MB for 1x)
#
# Needs a release build (cargo build --release) and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-50}
CORES=$(nproc)
KILN=target/release/kiln
PY=.venv/bin/python
DATA=bench-data
mkdir -p "$DATA/1x" "$DATA/10x"
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }

for s in $(seq 0 9); do
    f="$DATA/10x/part-$s.jsonl"
    [ -s "$f" ] || python3 benches/gen_corpus.py --mb "$MB" --seed "$s" --out "$f"
done
ln -sf ../10x/part-0.jsonl "$DATA/1x/part-0.jsonl"

cat > "$DATA/train.toml" <<TOML
[[inputs]]
path = "$DATA/1x/*.jsonl"
[[stages]]
type = "tokenize"
[stages.train]
vocab_size = 30000
min_frequency = 2
[output]
path = "$DATA/trained"
TOML
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

echo "== machine: $CORES cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== training the tokenizer once (vocab 30000) on the 1x corpus"
rm -rf "$DATA/trained"
$PY benches/peak_rss.py $KILN run "$DATA/train.toml" -q | sed 's/^/kiln train: /'
cp "$DATA/trained/tokenizer.json" "$DATA/tokenizer.json"

echo "== end to end, ${MB} MB JSONL, $CORES processes/threads"
DOCS=$(wc -l < "$DATA/1x/part-0.jsonl")
best_kiln=""; best_ref=""
for round in 1 2; do
    rm -rf "$DATA/kiln-out" "$DATA/ref-out"
    k=$($PY benches/peak_rss.py $KILN run "$DATA/job.toml" -q 2>/dev/null | awk '/^WALL/{print $2}')
    r=$($PY benches/reference_text.py --input "$DATA/1x/part-0.jsonl" --tokenizer "$DATA/tokenizer.json" \
          --output "$DATA/ref-out" --num-proc "$CORES" 2>/dev/null | awk '/^SECONDS/{print $2}')
    echo "round $round: kiln ${k}s, reference ${r}s"
    best_kiln=$(python3 -c "print(min(x for x in [$k, ${best_kiln:-1e9}]))")
    best_ref=$(python3 -c "print(min(x for x in [$r, ${best_ref:-1e9}]))")
done
python3 - "$DOCS" "$MB" "$best_kiln" "$best_ref" <<'PY'
import sys
docs, mb, k, r = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"kiln:      {docs/k:10.0f} docs/s {mb/k:7.1f} MB/s ({k:.2f}s)")
print(f"reference: {docs/r:10.0f} docs/s {mb/r:7.1f} MB/s ({r:.2f}s)")
print(f"RATIO kiln/reference end to end: {r/k:.2f}x (target >= 4x)")
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

echo "== peak memory, 1x vs 10x the corpus"
sed "s#$DATA/1x/\*.jsonl#$DATA/10x/*.jsonl#; s#kiln-out#kiln-out-10x#" "$DATA/job.toml" > "$DATA/job10.toml"
rm -rf "$DATA/kiln-out" "$DATA/kiln-out-10x"
m1=$($PY benches/peak_rss.py $KILN run "$DATA/job.toml" -q 2>/dev/null | awk '/^PEAK/{print $2}')
m10=$($PY benches/peak_rss.py $KILN run "$DATA/job10.toml" -q 2>/dev/null | awk '/^PEAK/{print $2}')
python3 -c "print(f'peak RSS: 1x {$m1:.0f} MB, 10x {$m10:.0f} MB, RATIO {$m10/$m1:.2f} (target <= 1.20)')"
