"""What the object-store and launcher tests share: the small text job, its
corpus, a one-process local run to compare with, free ports."""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KILN = os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln"))

PIPELINE = """
seed = 9

[[inputs]]
path = "{input}"

[[stages]]
type = "tokenize"

[stages.train]
vocab_size = 300
min_frequency = 1

[output]
path = "unused"

[plan]
task_bytes = 6000
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, seconds=30):
    start = time.time()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.time() - start < seconds, f"{what} did not start"
            time.sleep(0.05)


def corpus(tmp, upload, files=3, lines=150):
    """Write the corpus under tmp/in, hand each file to upload(path, key),
    run the job locally in one process; the pipeline files for a remote
    input `{remote}` and the local manifest."""
    words = "kiln fires clay into pots while the arrow flies over parquet floors".split()
    for f in range(files):
        rows = [json.dumps({"text": " ".join(words[(f * 7 + i * j) % len(words)] for j in range(12))})
                for i in range(lines)]
        path = tmp / "in" / f"part-{f}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(rows) + "\n")
        upload(path, f"in/part-{f}.jsonl")
    local = tmp / "local.toml"
    local.write_text(PIPELINE.format(input=tmp / "in" / "*.jsonl"))
    r = subprocess.run([KILN, "run", local, "--output", tmp / "local", "-q", "--threads", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads((tmp / "local" / "manifest.json").read_text())


def same_dataset(got, want):
    assert got["shards"] == want["shards"]
    assert got["totals"] == want["totals"]
