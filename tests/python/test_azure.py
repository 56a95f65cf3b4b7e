"""Azure Blob Storage through Azurite (the emulator, from npm, started on
127.0.0.1 by the test): a text job read from and written to `az://`, as one
process and as separate task slots with a commit, gives the shards of a
local run. Azure's create-only writes (`If-None-Match: *`) decide which
attempt owns a task there."""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

ROOT = Path(__file__).resolve().parents[2]
KILN = os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln"))
AZURITE = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account.
ACCOUNT = "devstoreaccount1"
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
       "KBHBeksoGMGw==")

PIPELINE = """
seed = 4

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


@pytest.fixture(scope="module")
def azure(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("azurite")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([AZURITE, "--blobHost", "127.0.0.1", "--blobPort", str(port),
                          "--location", tmp, "--silent", "--skipApiVersionCheck"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.time()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.time() - start < 30, "azurite did not start"
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}/{ACCOUNT}"
    client = BlobServiceClient(account_url=url, credential={"account_name": ACCOUNT,
                                                            "account_key": KEY})
    client.create_container("data")
    env = dict(os.environ, AZURE_STORAGE_USE_EMULATOR="true",
               AZURITE_BLOB_STORAGE_URL=f"http://127.0.0.1:{port}")
    yield client.get_container_client("data"), env
    # Azurite ignores SIGTERM.
    p.kill()
    p.wait()


def names(container, prefix):
    return [b.name for b in container.list_blobs(name_starts_with=prefix + "/")]


def manifest(container, prefix):
    assert not [n for n in names(container, prefix) if "/.kiln/" in n], names(container, prefix)
    return json.loads(container.download_blob(f"{prefix}/manifest.json").readall())


def test_a_job_on_azure_gives_the_bytes_of_a_local_run(azure, tmp_path):
    container, env = azure
    words = "kiln fires clay into pots while the arrow flies over parquet floors".split()
    for f in range(3):
        lines = [json.dumps({"text": " ".join(words[(f * 5 + i * j) % len(words)] for j in range(10))})
                 for i in range(120)]
        path = tmp_path / "in" / f"part-{f}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        container.upload_blob(f"in/part-{f}.jsonl", path.read_bytes())
    local = tmp_path / "local.toml"
    local.write_text(PIPELINE.format(input=tmp_path / "in" / "*.jsonl"))
    remote = tmp_path / "remote.toml"
    remote.write_text(PIPELINE.format(input="az://data/in/*.jsonl"))

    def kiln(*args):
        r = subprocess.run([KILN, *map(str, args)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r

    kiln("run", local, "--output", tmp_path / "local", "-q")
    want = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert want["tasks"] >= 3

    kiln("run", remote, "--output", "az://data/one", "-q")
    got = manifest(container, "one")
    assert got["shards"] == want["shards"] and got["totals"] == want["totals"]

    kiln("run", remote, "--output", "az://data/slots", "--prepare", "-q")
    slots = [subprocess.Popen([KILN, "run", remote, "--output", "az://data/slots", "--task", str(i),
                               "--tasks", "2", "--no-commit", "-q"], env=env,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1, 1)]
    for p in slots:
        _, err = p.communicate()
        assert p.returncode == 0, err
    kiln("commit", "az://data/slots")
    got = manifest(container, "slots")
    assert got["shards"] == want["shards"] and got["totals"] == want["totals"]
