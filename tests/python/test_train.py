"""`kiln train` checkpoints read by HuggingFace `safetensors`: the weights of
the fusion model trained on pipelines/multimodal.toml, with the shapes the
training file and the dataset give them, and a header in canonical order.
Runs the real `kiln` binary ($KILN_BIN)."""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
KILN = os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln"))


def run(*args):
    r = subprocess.run([KILN, *args, "-q"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_checkpoint_weights_load_with_safetensors(tmp_path):
    data, out = tmp_path / "mm", tmp_path / "train"
    # The committed rows only: the shapes do not depend on the row count.
    run("run", "pipelines/multimodal.toml", "--input", "fixtures/multimodal/rows.jsonl",
        "--output", str(data))
    run("train", "pipelines/train.toml", "--data", str(data), "--output", str(out))
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    weights = load_file(newest / "model.safetensors")
    d = 64  # pipelines/train.toml's d_model
    assert weights["image.weight"].shape == (1280, d)  # EfficientNet-Lite0 features
    assert weights["audio.weight"].shape == (80, d)  # mel bands
    assert weights["head.weight"].shape == (d, 3)  # bird, cat, dog
    assert weights["positions.weight"].shape == (64, d)  # max_tokens
    for name in ("query", "key", "value", "output"):
        assert weights[f"attention.{name}.weight"].shape == (d, d)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in weights.values())
    state = json.loads((newest / "state.json").read_text())
    assert newest.name == f"step-{state['step']:08d}"
    assert state["dims"]["d_model"] == d and state["dims"]["classes"] == 3
    # The header's keys are sorted, so the same weights are the same bytes.
    raw = (newest / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    keys = list(json.loads(raw[8 : 8 + n]))
    assert keys == sorted(keys)
