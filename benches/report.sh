#!/usr/bin/env bash
# `kiln report` on a large dataset: the image_mix example's pipeline over
# ROWS / 3 WebDataset samples (the fixture tars' images under new keys, in
# shards of 5,000), two mixed copies each, so ROWS rows; then the report's
# wall time and peak memory, with the default sample and with --full
# (every shard read and hashed). There is no Python reference for this
# page: the figures are absolute, with the machine's load.
#
#   benches/report.sh [ROWS]     (default 100000)
#
# Needs a release build (cargo build --release) and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-100000}
KILN=target/release/kiln
PY=.venv/bin/python
DATA=bench-data/report
[ -x "$KILN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
mkdir -p "$DATA"
$PY - "$((ROWS / 3 + 1))" "$DATA/tars" <<'PY'
import io, sys, tarfile
from pathlib import Path
n, out = int(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
samples = {}
for shard in sorted(Path("fixtures/images").glob("shard-*.tar")):
    with tarfile.open(shard) as t:
        for m in t.getmembers():
            key, ext = m.name.rsplit(".", 1)
            samples.setdefault((shard.name, key), {})[ext] = t.extractfile(m).read()
from PIL import Image
def decodes(s):
    try:
        Image.open(io.BytesIO(s.get("jpg") or s["png"])).load()
        return True
    except Exception:
        return False
good = [s for s in samples.values() if "cls" in s and ("jpg" in s or "png" in s) and decodes(s)]
per = 5000
for k in range(0, n, per):
    path = out / f"shard-{k // per:06d}.tar"
    if path.exists():
        continue
    with tarfile.open(path, "w") as t:
        for i in range(k, min(n, k + per)):
            for ext, data in sorted(good[i % len(good)].items()):
                info = tarfile.TarInfo(f"s{i:08d}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
PY
sed -e "s|fixtures/images/shard-\*.tar|$DATA/tars/shard-*.tar|" -e "s|out/image_mix|$DATA/out|" \
    pipelines/image_mix.toml > "$DATA/mix.toml"
[ -f "$DATA/out/manifest.json" ] || $KILN run "$DATA/mix.toml" -q
$KILN inspect "$DATA/out" | sed -n '2,3p'
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for args in "" "--full"; do
    for round in 1 2 3; do
        echo "kiln report $args (round $round):"
        $PY benches/peak_rss.py $KILN report "$DATA/out" -o "$DATA/report.html" $args 2>&1 | sed 's/^/  /'
    done
done
ls -l "$DATA/report.html" | awk '{print "page: " $5 " bytes"}'
