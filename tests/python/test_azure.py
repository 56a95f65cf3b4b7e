"""Azure Blob Storage through Azurite (the emulator, from npm, started on
127.0.0.1 by the test): a text job read from and written to `az://`, as one
process and as separate task slots with a commit, gives the shards of a
local run. Azure's create-only writes (`If-None-Match: *`) decide which
attempt owns a task there."""

import json
import os
import subprocess

import pytest
from azure.storage.blob import BlobServiceClient

from jobs import KILN, PIPELINE, ROOT, corpus, free_port, same_dataset, wait_port

AZURITE = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account.
ACCOUNT = "devstoreaccount1"
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
       "KBHBeksoGMGw==")


@pytest.fixture(scope="module")
def azure(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("azurite")
    port = free_port()
    p = subprocess.Popen([AZURITE, "--blobHost", "127.0.0.1", "--blobPort", str(port),
                          "--location", tmp, "--silent", "--skipApiVersionCheck"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, "azurite")
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
    want = corpus(tmp_path, lambda path, key: container.upload_blob(key, path.read_bytes()))
    assert want["tasks"] >= 3
    remote = tmp_path / "remote.toml"
    remote.write_text(PIPELINE.format(input="az://data/in/*.jsonl"))

    def kiln(*args):
        r = subprocess.run([KILN, *map(str, args)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r

    kiln("run", remote, "--output", "az://data/one", "-q")
    same_dataset(manifest(container, "one"), want)

    kiln("run", remote, "--output", "az://data/slots", "--prepare", "-q")
    slots = [subprocess.Popen([KILN, "run", remote, "--output", "az://data/slots", "--task", str(i),
                               "--tasks", "2", "--no-commit", "-q"], env=env,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1, 1)]
    for p in slots:
        _, err = p.communicate()
        assert p.returncode == 0, err
    kiln("commit", "az://data/slots")
    same_dataset(manifest(container, "slots"), want)
