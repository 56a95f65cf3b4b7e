#!/usr/bin/env bash
# The text job as users run it (a byte-level BPE of 30,000 trained on the
# input, then encode and write), read from and written to local disk and to
# an S3-compatible server (moto on 127.0.0.1), side by side in one run:
# wall time, throughput, peak memory, and remote/local as a ratio. Then the
# same job as 1, 2 and 4 task processes under the Slurm launcher (a
# single-node Slurm on 127.0.0.1), with what prepare and commit cost.
#
#   benches/object_store.sh [MB]     (default 50)
#
# Needs a release build (cargo build --release), scripts/setup.sh, and root
# for Slurm (the scaling part is skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-50}
KILN=$PWD/target/release/kiln
PY=.venv/bin/python
DATA=$PWD/bench-data/store
mkdir -p "$DATA/in"
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
for s in 0 1 2 3; do
    f="$DATA/in/part-$s.jsonl"
    [ -s "$f" ] || python3 benches/gen_corpus.py --mb $((MB / 4)) --seed "$s" --out "$f"
done

port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto=$!
cleanup() { kill "$moto" 2>/dev/null || true; [ -n "${slurm:-}" ] && kill $slurm 2>/dev/null || true; }
trap cleanup EXIT
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
until $PY -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null; do sleep 0.2; done
$PY tests/support/s3.py put "$DATA/in" s3://bench/in

cat > "$DATA/job.toml" <<TOML
[[inputs]]
path = "$DATA/in/*.jsonl"
[[stages]]
type = "tokenize"
[stages.train]
vocab_size = 30000
min_frequency = 2
[output]
path = "$DATA/out"
[plan]
task_bytes = 8388608
TOML

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); ${MB} MB of JSONL in 4 files"
run() { # INPUT OUTPUT -> "seconds peak_mb"
    $PY benches/peak_rss.py "$KILN" run "$DATA/job.toml" -q --input "$1" --output "$2" 2>/dev/null \
        | awk '/^WALL/{w=$2} /^PEAK/{p=$2} END{print w, p}'
}
best() { python3 -c "import sys; v=[tuple(map(float,l.split())) for l in sys.argv[1:]]; print(*min(v))" "$@"; }
l=(); r=()
for round in 1 2; do
    rm -rf "$DATA/out"
    l+=("$(run "$DATA/in/*.jsonl" "$DATA/out")")
    r+=("$(run "s3://bench/in/*.jsonl" "s3://bench/out-$round")")
    echo "round $round: local ${l[-1]% *}s, store ${r[-1]% *}s"
done
read -r lw lm <<<"$(best "${l[@]}")"
read -r rw rm_ <<<"$(best "${r[@]}")"
python3 - "$MB" "$lw" "$lm" "$rw" "$rm_" <<'PY'
import sys
mb, lw, lm, rw, rm = map(float, sys.argv[1:])
print(f"local disk:   {mb/lw:6.1f} MB/s ({lw:.2f}s), peak RSS {lm:.0f} MB")
print(f"object store: {mb/rw:6.1f} MB/s ({rw:.2f}s), peak RSS {rm:.0f} MB")
print(f"RATIO store/local throughput: {lw/rw:.2f} (target >= 0.70)")
PY

echo "== peak memory with one large shard (one task, text kept): multipart uploads from the spool file"
sed 's/task_bytes = 8388608/task_bytes = 1073741824/; s/^type = "tokenize"$/type = "tokenize"\nkeep_text = true/' \
    "$DATA/job.toml" > "$DATA/big.toml"
rm -rf "$DATA/big-out"
bl=$($PY benches/peak_rss.py "$KILN" run "$DATA/big.toml" -q --output "$DATA/big-out" 2>/dev/null | awk '/^PEAK/{print $2}')
br=$($PY benches/peak_rss.py "$KILN" run "$DATA/big.toml" -q --input "s3://bench/in/*.jsonl" \
    --output s3://bench/big 2>/dev/null | awk '/^PEAK/{print $2}')
size=$(stat -c %s "$DATA"/big-out/data-00000-of-00001.*)
python3 -c "print(f'shard of {$size/2**20:.0f} MiB: peak RSS local {$bl:.0f} MB, store {$br:.0f} MB')"

if [ "$(id -u)" != 0 ] || ! command -v slurmctld >/dev/null; then
    echo "== Slurm scaling skipped: needs root and slurmctld"; exit 0
fi
echo "== the same job under the Slurm launcher: 1, 2 and 4 task processes"
S=$DATA/slurm; rm -rf "$S"
$PY tests/support/slurm_conf.py "$S" "$(nproc)" >/dev/null
export SLURM_CONF=$S/slurm.conf
slurmctld -D -i -f "$SLURM_CONF" >/dev/null 2>&1 & slurm=$!
slurmd -D -N localhost -f "$SLURM_CONF" >/dev/null 2>&1 & slurm="$slurm $!"
until sinfo -h -o %T 2>/dev/null | grep -q idle; do sleep 0.2; done
# Every kiln process of a job logs its step, wall and CPU seconds.
cat > "$S/kiln-timed" <<SH
#!/bin/sh
exec /usr/bin/time -a -o "$S/times" -f "%C|%e|%U|%S" "$KILN" "\$@"
SH
chmod +x "$S/kiln-timed"
for n in 1 2 4; do
    : > "$S/times"
    t0=$(date +%s.%N)
    KILN="$S/kiln-timed" KILN_ARGS="--threads $(( $(nproc) / n > 0 ? $(nproc) / n : 1 ))" \
        launchers/slurm/kiln-slurm.sh "$DATA/job.toml" "s3://bench/slurm-$n" "$n" -- --chdir="$S" >/dev/null
    while [ -n "$(squeue -h)" ]; do sleep 0.2; done
    t1=$(date +%s.%N)
    python3 - "$n" "$t0" "$t1" "$S/times" <<'PY'
import sys
n, t0, t1, path = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows = []
for line in open(path):
    if line.count("|") == 3:
        cmd, w, u, s = line.strip().split("|")
        step = ("prepare" if "--prepare" in cmd else "commit" if " commit " in cmd
                else "status" if " status " in cmd else "task")
        rows.append((step, float(w), float(u) + float(s)))
def of(step): return [r for r in rows if r[0] == step]
cpu = sum(r[2] for r in rows)
print(f"{n} task processes: wall {t1-t0:6.1f}s (with Slurm's scheduling), CPU {cpu:6.1f}s; "
      f"prepare {sum(r[1] for r in of('prepare')):.1f}s, "
      f"tasks {max([r[1] for r in of('task')] or [0]):.1f}s (longest), "
      f"commit {sum(r[1] for r in of('commit')):.1f}s + status {sum(r[1] for r in of('status')):.1f}s")
PY
done
