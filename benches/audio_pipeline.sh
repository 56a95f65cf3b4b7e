#!/usr/bin/env bash
# The audio job, kiln beside the Python reference, on the same generated
# clips in the same run: decode (mono), resample to 16 kHz, 4.0 s, log-mel
# spectrogram (n_fft 400, hop 160, 80 mels), SpecAugment LB with 2 copies,
# 3 rows a clip. Both write the dataset: kiln its shards, the reference
# (soundfile + librosa + NumPy + pyarrow, multiprocessing on all cores,
# chunks of 32 clips) one Parquet file a chunk. After round 1, kiln's row
# count beside the reference's. Then kiln's peak memory on 1x and 4x the
# clips.
#
#   benches/audio_pipeline.sh [N]     (default 1000 clips of 4 s, 44.1 kHz stereo)
#
# Needs a release build (cargo build --release) and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
KILN=target/release/kiln
PY=.venv/bin/python
DATA=bench-data
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -x "$PY" ] || { echo "set up first: scripts/setup.sh" >&2; exit 2; }
$PY benches/gen_audio.py --n "$N" --out "$DATA/audio"
$PY benches/gen_audio.py --n $((N * 4)) --out "$DATA/audio4x"

job() {
cat <<TOML
[[inputs]]
path = "$1"
format = "audio"
[[stages]]
type = "decode_audio"
sample_rate = 16000
duration = 4.0
[[stages]]
type = "mel_spectrogram"
n_fft = 400
hop_length = 160
n_mels = 80
[[stages]]
type = "spec_augment"
policy = "LB"
copies = 2
[output]
path = "$2"
TOML
}
job "$DATA/audio" "$DATA/kiln-audio" > "$DATA/audio.toml"
job "$DATA/audio4x" "$DATA/kiln-audio4x" > "$DATA/audio4x.toml"

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $N clips, $(du -sh "$DATA/audio" | cut -f1)"
for round in 1 2; do
    rm -rf "$DATA/kiln-audio"
    k=$($PY benches/peak_rss.py $KILN run "$DATA/audio.toml" -q | awk '/WALL/ {print $2}')
    ref=$($PY benches/reference_audio.py "$DATA/audio")
    r=$(echo "$ref" | awk '{print $4}')
    $PY -c "n, k, r = $N, $k, $r; print(f'round $round: kiln {k}s ({n / k:.1f} files/s), reference {r}s ({n / r:.1f} files/s): {r / k:.2f}x')"
    if [ "$round" = 1 ]; then
        # kiln's rows: its manifest's count, and the rows in its shards.
        $PY - "$DATA/kiln-audio" "$N" "$(echo "$ref" | awk '{print $6}')" <<'PY'
import glob, json, sys
import pyarrow as pa
out, n, ref = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
listed = json.load(open(f"{out}/manifest.json"))["totals"]["rows"]
shards = [f for f in glob.glob(f"{out}/**/*.arrow", recursive=True) if not f.endswith("rejects.arrow")]
counted = sum(b.num_rows for f in shards for b in pa.ipc.open_stream(f))
print(f"rows: kiln {counted} in {len(shards)} shards (manifest {listed}), reference {ref}, expected {3 * n}")
assert counted == listed == ref == 3 * n, "row counts differ"
PY
    fi
done
echo "== kiln peak memory, 1x and 4x the clips"
for x in audio audio4x; do
    rm -rf "$DATA/kiln-$x"
    $PY benches/peak_rss.py $KILN run "$DATA/$x.toml" -q | tr '\n' ' ' | sed "s/^/$x: /"; echo
done
