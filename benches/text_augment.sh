#!/usr/bin/env bash
# Text augmentation, kiln beside the Python reference, on the same generated
# sentences in the same run.
#
# 1. Synonym replacement: every sentence and one WordNet synonym copy
#    (aug_p 0.3, aug_min 1, aug_max 10, the same stopwords), both rows
#    tokenized with the same tokenizer.json and written as Arrow. kiln:
#    `augment_text` + `tokenize`; the reference: nlpaug's SynonymAug in a
#    multiprocessing pool over all cores, tokenizers' encode_batch, pyarrow.
#    Prints the ratio, then the row counts of both.
#    Then kiln with parts of speech from Apertium's tagger, alone, and
#    kiln's peak memory on 1x and 4x the sentences.
# 2. Back-translation throughput through Apertium (eng -> spa -> eng):
#    kiln's `augment_text` with back_translation on the first M sentences,
#    in words/s, beside the `apertium` command on the same text.
#
#   benches/text_augment.sh [N] [M]   (default 20000 sentences, 2000 translated)
#
# Needs a release build (cargo build --release) and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
M=${2:-2000}
KILN=target/release/kiln
PY=.venv/bin/python
DATA=bench-data
STOP=fixtures/text_augment/stopwords.txt
TOK=fixtures/text/tokenizer.json
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -x "$PY" ] || { echo "set up first: scripts/setup.sh" >&2; exit 2; }
$PY benches/gen_sentences.py --n "$N" --out "$DATA/sentences.jsonl"
head -n "$M" "$DATA/sentences.jsonl" > "$DATA/sentences_bt.jsonl"

cat > "$DATA/synonym.toml" <<TOML
[[inputs]]
path = "$DATA/sentences.jsonl"
columns = ["label"]
[[stages]]
type = "augment_text"
copies = 1
[stages.synonym]
aug_p = 0.3
aug_min = 1
aug_max = 10
stopwords_file = "$STOP"
[[stages]]
type = "tokenize"
tokenizer = "$TOK"
keep_text = true
[output]
path = "$DATA/kiln-synonym"
TOML
sed -e 's|^stopwords_file = .*|&\npos = "apertium"|' -e 's|kiln-synonym|kiln-synonym-pos|' \
    "$DATA/synonym.toml" > "$DATA/synonym_pos.toml"
cat > "$DATA/backtranslate.toml" <<TOML
[[inputs]]
path = "$DATA/sentences_bt.jsonl"
[[stages]]
type = "augment_text"
copies = 1
[stages.back_translation]
backend = "apertium"
lang = "eng"
pivot = "spa"
[[stages]]
type = "tokenize"
tokenizer = "$TOK"
[output]
path = "$DATA/kiln-bt"
TOML

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $N sentences, $(du -sh "$DATA/sentences.jsonl" | cut -f1)"
echo "== synonym replacement + tokenize + Arrow: kiln vs nlpaug SynonymAug"
for round in 1 2 3; do
    rm -rf "$DATA/kiln-synonym" "$DATA/ref-synonym"
    k=$($PY benches/peak_rss.py $KILN run "$DATA/synonym.toml" -q | awk '/WALL/ {print $2}')
    ref=$($PY benches/reference_text_augment.py --input "$DATA/sentences.jsonl" --tokenizer "$TOK" \
        --stopwords "$STOP" --output "$DATA/ref-synonym")
    r=$(echo "$ref" | awk '{print $5}')
    $PY -c "n, k, r = $N, $k, $r; print(f'round $round: kiln {k:.2f}s ({n / k:.0f} sentences/s), nlpaug {r:.2f}s ({n / r:.0f} sentences/s): {r / k:.2f}x')"
done
$PY - "$DATA/kiln-synonym" "$DATA/ref-synonym" "$N" <<'PY'
import glob, json, sys
import pyarrow as pa
kiln, ref, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
shards = [f for f in glob.glob(f"{kiln}/data-*.arrow")]
k = pa.concat_tables([pa.ipc.open_stream(f).read_all() for f in shards])
r = pa.ipc.open_stream(f"{ref}/data.arrow").read_all()
def changed(t):
    texts = t.column("text").to_pylist()
    return sum(a != b for a, b in zip(texts[0::2], texts[1::2]))
print(f"rows: kiln {k.num_rows}, reference {r.num_rows}, expected {2 * n}; "
      f"copies that differ from their sentence: kiln {changed(k)}, reference {changed(r)}")
assert k.num_rows == r.num_rows == 2 * n
PY

echo "== kiln's synonym replacement with parts of speech from Apertium's tagger (work the reference does not do)"
rm -rf "$DATA/kiln-synonym-pos"
k=$($PY benches/peak_rss.py $KILN run "$DATA/synonym_pos.toml" -q | awk '/WALL/ {print $2}')
$PY -c "n, k = $N, $k; print(f'kiln with pos = apertium: {k:.2f}s ({n / k:.0f} sentences/s)')"

echo "== kiln peak memory, synonym job on 1x and 4x the sentences"
$PY benches/gen_sentences.py --n $((N * 4)) --out "$DATA/sentences4x.jsonl"
sed -e "s|sentences.jsonl|sentences4x.jsonl|" -e "s|kiln-synonym|kiln-synonym4x|" "$DATA/synonym.toml" > "$DATA/synonym4x.toml"
for x in synonym synonym4x; do
    rm -rf "$DATA/kiln-$x"
    $PY benches/peak_rss.py $KILN run "$DATA/$x.toml" -q 2>/dev/null | tr '\n' ' ' | sed "s/^/$x: /"; echo
done

echo "== back-translation through Apertium (eng -> spa -> eng), $M sentences"
words=$(cut -d'"' -f4 "$DATA/sentences_bt.jsonl" | wc -w)
for round in 1 2; do
    rm -rf "$DATA/kiln-bt"
    k=$($PY benches/peak_rss.py $KILN run "$DATA/backtranslate.toml" -q | awk '/WALL/ {print $2}')
    a=$($PY benches/peak_rss.py bash -c "cut -d'\"' -f4 $DATA/sentences_bt.jsonl | apertium eng-spa | apertium spa-eng > /dev/null" | awk '/WALL/ {print $2}')
    $PY -c "w, k, a = $words, $k, $a; print(f'round $round: kiln {k:.2f}s ({w / k:.0f} words/s), apertium CLI one process chain {a:.2f}s ({w / a:.0f} words/s)')"
done
