"""kiln's audio datasets checked against the libraries they are meant to
match: librosa for the mel spectrograms and the resampling, soundfile for the
stored waveforms, NumPy for SpecAugment's time warp and masks, HuggingFace
`datasets` for the features. Runs the real `kiln` binary ($KILN_BIN) on
pipeline files written into tmp_path, from the repository root."""

import io
import json
import os
import subprocess
from pathlib import Path

import librosa
import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from datasets import Audio, ClassLabel, load_from_disk

ROOT = Path(__file__).resolve().parents[2]
KILN = os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln"))
AUDIO = ROOT / "fixtures" / "audio"
# The 16 kHz clips: no resampling between the file and the spectrogram.
AT_16K = ["folder/yes/yes_pcm16.wav", "folder/no/no_s32.wav", "folder/no/no_f32.wav"]


def kiln(*args, cwd=ROOT):
    return subprocess.run([KILN, *args], cwd=cwd, capture_output=True, text=True, check=False)


def build(tmp_path, name, pipeline):
    """Write `pipeline` (TOML with `{out}` for the output folder), run it,
    return the dataset folder."""
    out = tmp_path / name
    p = tmp_path / f"{name}.toml"
    p.write_text(pipeline.format(out=out))
    r = kiln("run", str(p), "-q")
    assert r.returncode == 0, f"kiln run {p} exited {r.returncode}:\n{r.stderr}"
    return out


def table(d):
    m = json.loads((d / "manifest.json").read_text())
    return pa.concat_tables([pa.ipc.open_stream(d / s["file"]).read_all() for s in m["shards"]])


def clips_table(tmp_path, files):
    """A JSONL table naming `files` (relative to fixtures/audio)."""
    t = tmp_path / "clips.jsonl"
    t.write_text("".join(json.dumps({"audio": f}) + "\n" for f in files))
    return t


def mel_pipeline(table_path, mel_keys):
    return f"""
[[inputs]]
path = "{table_path}"
audio_column = "audio"
audio_root = "{AUDIO}"

[[stages]]
type = "decode_audio"
sample_rate = 16000

[[stages]]
type = "mel_spectrogram"
{mel_keys}

[output]
path = "{{out}}"
"""


MEL_CASES = {
    "librosa defaults, power to dB": ("", {}, "db"),
    "speech: 400/160, 80 bands, power to dB": (
        "n_fft = 400\nhop_length = 160\nn_mels = 80",
        dict(n_fft=400, hop_length=160, n_mels=80),
        "db",
    ),
    "speech: 400/160, 80 bands, power": (
        'n_fft = 400\nhop_length = 160\nn_mels = 80\nlog = "none"',
        dict(n_fft=400, hop_length=160, n_mels=80),
        None,
    ),
    "htk scale, no norm, magnitude, reflect, fmin/fmax": (
        'n_fft = 512\nhop_length = 128\nwin_length = 400\nn_mels = 40\nscale = "htk"\nnorm = "none"\n'
        'power = 1.0\npad_mode = "reflect"\nfmin = 60.0\nfmax = 7600.0\nlog = "none"',
        dict(n_fft=512, hop_length=128, win_length=400, n_mels=40, htk=True, norm=None,
             power=1.0, pad_mode="reflect", fmin=60.0, fmax=7600.0),
        None,
    ),
    "hamming window, log(x + eps)": (
        'n_fft = 256\nhop_length = 100\nn_mels = 32\nwindow = "hamming"\nlog = "log"\neps = 1e-6',
        dict(n_fft=256, hop_length=100, n_mels=32, window="hamming"),
        "log",
    ),
}


@pytest.mark.parametrize("case", list(MEL_CASES))
def test_mel_matches_librosa_on_the_same_waveforms(tmp_path, case):
    keys, kwargs, log = MEL_CASES[case]
    out = build(tmp_path, "mel", mel_pipeline(clips_table(tmp_path, AT_16K), keys))
    t = table(out).to_pylist()
    assert len(t) == len(AT_16K)
    for row, rel in zip(t, AT_16K):
        y, sr = sf.read(AUDIO / rel, dtype="float32")
        assert sr == 16000
        # librosa in float64 on the same float32 samples: the exact values.
        ref = librosa.feature.melspectrogram(y=y.astype(np.float64), sr=sr, **kwargs)
        got = np.array(row["mel"], dtype=np.float64)
        assert got.shape == ref.shape and row["mel_frames"] == ref.shape[1], rel
        if log is None:
            # Relative error cell by cell; cells under 1e-6 of the peak
            # (silence, where float32 rounding dominates) count absolutely.
            scale = np.maximum(np.abs(ref), 1e-6 * np.abs(ref).max())
            err = np.max(np.abs(got - ref) / scale)
        elif log == "db":
            # Every cell within 0.01 dB (the cells the 80 dB floor keeps
            # and the floor itself).
            ref = librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=80.0)
            err = np.max(np.abs(got - ref))
            assert err <= 0.01, f"{rel}: max error {err:.2e} dB"
            continue
        else:
            ref = np.log(ref + 1e-6)
            err = np.exp(np.max(np.abs(got - ref))) - 1
        assert err <= 1e-4, f"{rel}: max relative error {err:.2e}"


def warp_reference(mel, anchor, shift):
    """SpecAugment's time warp in NumPy: input frame `anchor` lands on
    `anchor + shift`, each side stretched linearly, the ends kept; values
    between frames interpolated linearly in float32."""
    n_mels, frames = mel.shape
    a, a2, last = anchor, anchor + shift, frames - 1
    t = np.arange(frames, dtype=np.float64)
    src = np.where(t <= a2, t * a / a2 if a2 else 0.0, a + (t - a2) * (last - a) / (last - a2))
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, last)
    frac = (src - i0).astype(np.float32)
    return mel[:, i0] + (mel[:, i1] - mel[:, i0]) * frac


def test_specaugment_copies_equal_a_numpy_reference_of_their_recorded_draws(tmp_path):
    out = tmp_path / "sa"
    r = kiln("run", "pipelines/audio_specaug.toml", "--output", str(out), "-q")
    assert r.returncode == 0, r.stderr
    rows = table(out).to_pylist()
    originals = {r["sample_id"]: np.array(r["mel"], dtype=np.float32) for r in rows if r["augment"] == 0}
    # The waveform once, on the original (1 s at 16 kHz); datasets gives
    # None for a copy.
    ds = load_from_disk(str(out)).cast_column("audio", Audio(decode=False))
    for row in ds:
        if row["augment"] == 0:
            y, sr = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
            assert (sr, len(y)) == (16000, 16000)
        else:
            assert row["audio"] is None, row["sample_id"]
    copies = [r for r in rows if r["augment"] > 0]
    assert len(copies) == 2 * len(originals) == 18
    warped = 0
    for c in copies:
        mel = originals[c["sample_id"].split("#specaug")[0]]
        want = mel.copy()
        if c["warp_anchor"] is not None:
            warped += 1
            want = warp_reference(want, c["warp_anchor"], c["warp_shift"])
            assert want.shape == mel.shape
        for f0, f in c["freq_masks"]:
            want[f0:f0 + f, :] = c["mask_value"]
        for t0, t in c["time_masks"]:
            want[:, t0:t0 + t] = c["mask_value"]
        got = np.array(c["mel"], dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=c["sample_id"])
    assert warped > 0


def test_waveforms_are_stored_as_datasets_audio_and_match_the_resampled_clip(tmp_path):
    out = build(tmp_path, "wave", f"""
[[inputs]]
path = "{AUDIO / 'folder'}"
format = "audio"

[[stages]]
type = "decode_audio"
sample_rate = 16000

[[stages]]
type = "encode_audio"
sample_format = "float32"

[output]
path = "{{out}}"
""")
    ds = load_from_disk(str(out))
    assert ds.features["audio"] == Audio(sampling_rate=16000)
    assert ds.features["label"] == ClassLabel(names=["no", "yes"])
    # Decoding an Audio column needs torchcodec (and torch); read the bytes.
    ds = ds.cast_column("audio", Audio(decode=False))
    # Paths are stored relative to the input folder.
    by_path = {r["path"]: r for r in ds}
    assert len(by_path) == 9 and all(not Path(p).is_absolute() for p in by_path), list(by_path)
    for rel, row in by_path.items():
        y, sr = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert sr == 16000 and y.ndim == 1 and len(y) == row["num_samples"], rel
        src, src_sr = sf.read(AUDIO / "folder" / rel, dtype="float32", always_2d=True) if rel.endswith(
            (".wav", ".flac", ".ogg")) else (None, None)
        if src is None:
            continue
        mono = src.mean(axis=1)
        if src_sr == 16000:
            # Decoded the same way: the very same samples.
            np.testing.assert_array_equal(y, mono, err_msg=rel)
            continue
        # Another band-limited resampler (soxr, librosa's default): the
        # same signal within the filters' differences.
        ref = librosa.resample(mono, orig_sr=src_sr, target_sr=16000)
        n = min(len(ref), len(y))
        assert abs(len(ref) - len(y)) <= 1, rel
        snr = 10 * np.log10(np.sum(ref[:n] ** 2) / np.sum((ref[:n] - y[:n]) ** 2))
        assert snr > 30, f"{rel}: {snr:.1f} dB against librosa.resample"


def test_rejects_name_every_bad_file_and_are_readable(tmp_path):
    out = build(tmp_path, "bad", f"""
[[inputs]]
path = "{AUDIO / 'bad'}"
format = "audio"
labels = "none"

[[stages]]
type = "decode_audio"

[limits]
max_audio_seconds = 20

[output]
path = "{{out}}"
""")
    rej = pa.ipc.open_stream(out / "rejects.arrow").read_all().to_pylist()
    kinds = {Path(r["sample_id"].rsplit(":", 1)[0]).name: r["kind"] for r in rej}
    assert kinds == {
        "adpcm.wav": "unsupported_codec",
        "empty.wav": "empty_file",
        "garbage.wav": "unknown_format",
        "huge_header.wav": "too_long",
        "image.wav": "unknown_format",
        "long.flac": "too_long",
        "truncated.flac": "truncated",
        "truncated.wav": "truncated",
        "zero_frames.wav": "empty_audio",
    }
    assert all(r["message"] for r in rej)
