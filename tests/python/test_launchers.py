"""The launchers in launchers/, run for real: a single-node Slurm (Debian's
slurmctld and slurmd on 127.0.0.1), the Kubernetes manifest's commands as
the pods of an Indexed Job would run them, and the Ray driver on a local
Ray. Each job reads from and writes to an S3-compatible server (moto) on
127.0.0.1, and each dataset must have the shards of a one-process local run
of the same pipeline."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest
import yaml

from jobs import KILN, ROOT, PIPELINE, corpus as make_corpus, free_port, same_dataset, wait_port

sys.path.insert(0, str(ROOT / "tests" / "support"))
import slurm_conf  # noqa: E402

VENV = ROOT / ".venv" / "bin"
TASKS = 3


@pytest.fixture(scope="module")
def store():
    """moto on a free port; the environment kiln and boto3 read."""
    port = free_port()
    p = subprocess.Popen([VENV / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, "moto")
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ALLOW_HTTP="true",
               AWS_ACCESS_KEY_ID="kiln-test", AWS_SECRET_ACCESS_KEY="kiln-test",
               AWS_REGION="us-east-1")
    os.environ.update({k: env[k] for k in env if k.startswith("AWS_")})
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket="data")
    yield s3
    p.kill()
    p.wait()


@pytest.fixture(scope="module")
def corpus(store, tmp_path_factory):
    """A corpus in the bucket and on disk, and the local one-process dataset."""
    tmp = tmp_path_factory.mktemp("corpus")
    want = make_corpus(tmp, lambda path, key: store.upload_file(str(path), "data", key))
    assert want["tasks"] >= TASKS, want["tasks"]
    remote = tmp / "remote.toml"
    remote.write_text(PIPELINE.format(input="s3://data/in/*.jsonl"))
    return remote, want


def committed(store, prefix):
    """The manifest of a committed remote dataset; no work area is left."""
    keys = [o["Key"] for o in store.list_objects_v2(Bucket="data", Prefix=prefix + "/")
            .get("Contents", [])]
    assert not [k for k in keys if "/.kiln/" in k], keys
    body = store.get_object(Bucket="data", Key=f"{prefix}/manifest.json")["Body"].read()
    return json.loads(body)


# ---------------------------------------------------------------- Slurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """slurmctld and slurmd on 127.0.0.1, as root, with no authentication."""
    if os.geteuid() != 0 or not shutil.which("slurmctld"):
        pytest.fail("the Slurm test needs root and Debian's slurmctld/slurmd (scripts/setup.sh)")
    tmp = tmp_path_factory.mktemp("slurm")
    conf, ctld = slurm_conf.write(tmp, 2)
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for cmd in (["slurmctld", "-D", "-i", "-f", conf],
                           ["slurmd", "-D", "-N", "localhost", "-f", conf])]
    wait_port(ctld, "slurmctld")
    start = time.time()
    while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                       text=True).stdout:
        assert time.time() - start < 30, (tmp / "slurmd.log").read_text()
        time.sleep(0.2)
    yield env, tmp
    for p in daemons:
        p.send_signal(signal.SIGTERM)
    for p in daemons:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def test_slurm_array_job_resubmits_a_failed_slot_and_commits_the_same_bytes(store, corpus, slurm):
    remote, want = corpus
    env, tmp = slurm
    # Slot 1 fails once with kiln's retriable exit code, as a node lost
    # mid-task would; the commit job resubmits it.
    flag = tmp / "failed-once"
    wrapper = tmp / "kiln-flaky"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "${{SLURM_ARRAY_TASK_ID:-}}" = 1 ] && [ ! -e {flag} ]; then touch {flag}; exit 3; fi
        exec {KILN} "$@"
        """))
    wrapper.chmod(0o755)
    r = subprocess.run([ROOT / "launchers/slurm/kiln-slurm.sh", remote, "s3://data/slurm", str(TASKS),
                        "2", "--", f"--chdir={tmp}"],
                       env=dict(env, KILN=str(wrapper), KILN_ARGS="--threads 1"),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    prepare, array, commit = r.stdout.split()
    start = time.time()
    while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
        assert time.time() - start < 180, subprocess.run(["squeue"], env=env, capture_output=True,
                                                          text=True).stdout
        time.sleep(0.5)
    logs = "\n".join(f"{p.name}: {p.read_text()}" for p in sorted(tmp.glob("slurm-*.out")))
    assert flag.exists(), logs
    same_dataset(committed(store, "slurm"), want)


def test_slurm_trains_data_parallel_with_one_task_a_rank(slurm, tmp_path):
    """launchers/slurm/kiln-train.sh: two tasks on the node, srun setting
    RANK and WORLD_SIZE, the same weights as `--nproc 2`."""
    env, _ = slurm
    lines = [json.dumps({"text": ("goal match team " if i % 2 else "bread oven salt ") * (1 + i % 5),
                         "label": "sport" if i % 2 else "kitchen"}) for i in range(120)]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "ds.toml").write_text(textwrap.dedent(f"""\
        [[inputs]]
        path = "{tmp_path}/t.jsonl"
        columns = ["label"]
        [[stages]]
        type = "tokenize"
        tokenizer = "{ROOT}/fixtures/text/tokenizer.json"
        [output]
        path = "{tmp_path}/ds"
        """))
    subprocess.run([KILN, "run", tmp_path / "ds.toml", "-q"], check=True)
    for name in ("slurm", "local"):
        (tmp_path / f"{name}.toml").write_text(textwrap.dedent(f"""\
            seed = 1
            [data]
            path = "{tmp_path}/ds"
            max_tokens = 16
            [model]
            d_model = 16
            heads = 2
            [optim]
            max_steps = 12
            batch_size = 4
            [output]
            path = "{tmp_path}/{name}"
            device = "cpu"
            """))
    r = subprocess.run(["sbatch", "--parsable", "--ntasks=2", "--cpus-per-task=1", f"--chdir={tmp_path}",
                        ROOT / "launchers/slurm/kiln-train.sh", tmp_path / "slurm.toml", "-q"],
                       env=dict(env, KILN=str(KILN)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    start = time.time()
    while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
        assert time.time() - start < 180
        time.sleep(0.5)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    metrics = [json.loads(l) for l in (tmp_path / "slurm/metrics.jsonl").read_text().splitlines()]
    assert [m["ranks"] for m in metrics if "val_accuracy" in m] == [2], logs
    subprocess.run([KILN, "train", tmp_path / "local.toml", "-q", "--nproc", "2"], check=True)
    weights = [(tmp_path / n / "checkpoints/step-00000012/model.safetensors").read_bytes()
               for n in ("slurm", "local")]
    assert weights[0] == weights[1], logs


# ----------------------------------------------------------- Kubernetes


MANIFEST = ROOT / "launchers/kubernetes/kiln-job.yaml"


def test_kubernetes_manifest_has_the_fields_an_indexed_job_needs():
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}
    assert set(docs) == {"kiln-job", "kiln-prepare", "kiln-tasks", "kiln-commit"}
    config = docs["kiln-job"]
    assert config["kind"] == "ConfigMap" and set(config["data"]) == {
        "KILN_PIPELINE", "KILN_OUTPUT", "KILN_TASKS"}
    tasks = docs["kiln-tasks"]
    assert tasks["apiVersion"] == "batch/v1" and tasks["kind"] == "Job"
    spec = tasks["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == int(config["data"]["KILN_TASKS"])
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1
    rules = spec["podFailurePolicy"]["rules"]
    fail_index = [r for r in rules if r["action"] == "FailIndex"]
    assert fail_index and fail_index[0]["onExitCodes"] == {
        "containerName": "kiln", "operator": "In", "values": [2]}
    for name in ("kiln-prepare", "kiln-tasks", "kiln-commit"):
        pod = docs[name]["spec"]["template"]["spec"]
        # podFailurePolicy needs pods that are never restarted in place.
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        assert container["name"] == "kiln"
        assert {"configMapRef": {"name": "kiln-job"}} in container["envFrom"]


def test_kubernetes_jobs_run_as_their_pods_would_commit_the_same_bytes(store, corpus):
    """Each Job's command, run as its pods would (one process per index,
    JOB_COMPLETION_INDEX set, all at once), with the ConfigMap's
    environment pointed at this test's pipeline and bucket."""
    remote, want = corpus
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}
    env = dict(os.environ, KILN_PIPELINE=str(remote), KILN_OUTPUT="s3://data/k8s",
               KILN_TASKS=str(TASKS))
    bin_dir = Path(KILN).parent

    def command(name):
        (container,) = docs[name]["spec"]["template"]["spec"]["containers"]
        return container["command"]

    path = f"{bin_dir}:{env['PATH']}"
    r = subprocess.run(command("kiln-prepare"), env=dict(env, PATH=path), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    pods = [subprocess.Popen(command("kiln-tasks"), stderr=subprocess.PIPE, text=True,
                             env=dict(env, PATH=path, JOB_COMPLETION_INDEX=str(i)))
            for i in range(TASKS)]
    for p in pods:
        _, err = p.communicate()
        assert p.returncode == 0, err
    r = subprocess.run(command("kiln-commit"), env=dict(env, PATH=path), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    same_dataset(committed(store, "k8s"), want)


# ------------------------------------------------------------------ Ray


def test_ray_driver_skips_finished_slots_and_commits_the_same_bytes(store, corpus):
    remote, want = corpus
    out = "s3://data/ray"
    # Slot 0 done beforehand: the driver must not run it again.
    for args in (["--prepare"], ["--task", "0", "--tasks", str(TASKS), "--no-commit"]):
        r = subprocess.run([KILN, "run", remote, "--output", out, "-q", *args],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, ROOT / "launchers/ray/kiln_ray.py", remote, out, str(TASKS),
                        "--num-cpus", "2", "--kiln", KILN, "--", "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"2 of {TASKS} slots to run: [1, 2]" in r.stderr, r.stderr
    same_dataset(committed(store, "ray"), want)
