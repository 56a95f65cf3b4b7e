"""pipelines/multimodal.toml read by `datasets`: text, image features,
spectrogram and label in one row, with the ClassLabel names. Runs the real
`kiln` binary ($KILN_BIN)."""

import os
import subprocess
from pathlib import Path

from datasets import ClassLabel, load_from_disk

ROOT = Path(__file__).resolve().parents[2]
KILN = os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln"))


def test_multimodal_rows_load_with_their_features(tmp_path):
    out = tmp_path / "mm"
    r = subprocess.run([KILN, "run", "pipelines/multimodal.toml", "--output", str(out), "-q"],
                       cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    ds = load_from_disk(str(out))
    # 17 committed rows (4 of them rejected) and the 300 setup generates.
    assert ds.num_rows == 313
    assert ds.features["label"] == ClassLabel(names=["bird", "cat", "dog"])
    row = ds.with_format("numpy")[0]
    assert row["image_features"].shape == (1280,)
    assert len(row["mel"]) == 80 and len(row["mel"][0]) == row["mel_frames"] == 101
    assert row["sample_rate"] == 16000 and row["num_samples"] == 16000
    assert len(row["input_ids"]) == row["length"] > 0
    assert str(row["path"]).endswith((".jpg", ".png", ".webp", ".tiff", ".gif", ".bmp"))
    assert str(row["audio_path"]).endswith((".wav", ".flac", ".mp3", ".ogg"))
