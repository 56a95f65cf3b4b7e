#!/usr/bin/env bash
# The GPU checks' dataset: N sentences (default 20,000) of four topics, each
# with its own words plus shared ones, labelled t0..t3, tokenized by kiln
# into WORK/topics (Arrow shards of 2,000 rows).
#
#   scripts/topics_dataset.sh WORK [N]   (KILN: the kiln binary)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$1
N=${2:-20000}
KILN=${KILN:-target/release/kiln}
mkdir -p "$WORK"
awk -v n="$N" 'BEGIN {
    srand(7)
    t[0] = "goal match team player score coach ball league win referee"
    t[1] = "bread oven salt butter recipe flour soup pan sugar knife"
    t[2] = "rain cloud storm wind snow sun forecast cold warm fog"
    t[3] = "code compiler bug test build crate linker thread memory cache"
    shared = "the a of and to in is was it for on with as at by"
    ns = split(shared, s, " ")
    for (i = 0; i < n; i++) {
        k = i % 4; m = split(t[k], w, " "); line = ""
        len = 8 + int(rand() * 40)
        for (j = 0; j < len; j++)
            line = line (j ? " " : "") (rand() < 0.5 ? s[1 + int(rand() * ns)] : w[1 + int(rand() * m)])
        printf "{\"text\": \"%s\", \"label\": \"t%d\"}\n", line, k
    }
}' > "$WORK/topics.jsonl"
cat > "$WORK/topics.toml" <<TOML
[[inputs]]
path = "$WORK/topics.jsonl"
columns = ["label"]
[[stages]]
type = "tokenize"
tokenizer = "fixtures/text/tokenizer.json"
[output]
path = "$WORK/topics"
max_shard_rows = 2000
TOML
"$KILN" run "$WORK/topics.toml" -q
