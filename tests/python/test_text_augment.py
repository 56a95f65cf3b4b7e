"""Text augmentation checked against the library it replaces and read by
`datasets`: every word kiln's synonym method puts in is one nlpaug's
SynonymAug could have drawn for that word (its WordNet model through NLTK,
reading the same WordNet 3.0 files), and pipelines/text_augment.toml loads
with `load_from_disk`, its provenance columns filtering the augmented rows
out. Runs the real `kiln` binary ($KILN_BIN)."""

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from datasets import load_from_disk

ROOT = Path(__file__).resolve().parents[2]
KILN = os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln"))

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Our teacher finally opened the old window in the morning.",
    "A strong wind broke every small branch near the river.",
    "They bought fresh bread and hot coffee before the long train ride.",
    "The committee will consider the proposal after the meeting.",
    "My brother writes short stories about distant cities.",
    "Heavy rain fell on the quiet village all night.",
    "She carefully repaired the broken chair with simple tools.",
]


def kiln(*args, cwd=ROOT):
    return subprocess.run([KILN, *args], cwd=cwd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def nlpaug_wordnet(tmp_path_factory):
    """nlpaug's WordNet model, reading /usr/share/wordnet offline."""
    warnings.simplefilter("ignore")
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    tmp = tmp_path_factory.mktemp("nltk")
    wn = tmp / "corpora" / "wordnet"
    wn.mkdir(parents=True)
    for f in Path("/usr/share/wordnet").glob("*.*"):
        if f.is_file():
            shutil.copy(f, wn)
    (wn / "lexnames").write_text("".join(f"{i:02d} lex{i} 0\n" for i in range(45)))
    nltk.data.path.insert(0, str(tmp))
    WordNetCorpusReader.map_wn = lambda self, *a, **k: None
    import nlpaug.model.word_dict as nmw

    return nmw.WordNet(lang="eng", is_synonym=True)


def test_every_synonym_is_one_nlpaug_could_draw(tmp_path, nlpaug_wordnet):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES))
    out = tmp_path / "out"
    (tmp_path / "p.toml").write_text(
        f"""
seed = 11
[[inputs]]
path = "{inp}"
[[stages]]
type = "augment_text"
copies = 6
[stages.synonym]
aug_p = 0.1
aug_min = 1
aug_max = 1
[[stages]]
type = "tokenize"
tokenizer = "{ROOT}/fixtures/text/tokenizer.json"
keep_text = true
[output]
path = "{out}"
"""
    )
    r = kiln("run", str(tmp_path / "p.toml"), "-q")
    assert r.returncode == 0, r.stderr
    ds = load_from_disk(str(out))
    originals = {row["sample_id"]: row["text"] for row in ds if row["augment"] == 0}
    assert len(originals) == len(SENTENCES)
    checked = 0
    for row in ds:
        if row["augment"] == 0:
            continue
        src = originals[row["augmented_from"]]
        new = row["text"]
        assert row["augmentation"] == "synonym" and row["augment_note"] is None
        # One word replaced, by one or more words: every split of the two
        # word lists into the same start, one old word and what replaced
        # it, and the same end (`rain fell` -> `rain down fell` is `rain`
        # -> `rain down`, or `fell` -> `down fell`); one of them must be a
        # synonym nlpaug knows.
        a, b = src.split(), new.split()
        splits = []
        for k in range(len(a)):
            end = len(b) - (len(a) - k - 1)
            if end > k and a[:k] == b[:k] and a[k + 1 :] == b[end:]:
                splits.append((a[k].strip(".,"), " ".join(b[k:end]).strip(".,")))
        assert splits, (src, new)

        def known(old, replacement):
            candidates = {
                c.replace("_", " ").replace("-", " ").lower()
                for c in nlpaug_wordnet.predict(old)
                if c.lower() != old.lower()
            }
            return replacement.lower() in candidates

        assert any(known(o, r) for o, r in splits), (splits, src, new)
        checked += 1
    assert checked == 6 * len(SENTENCES)


def test_the_example_loads_and_filters_to_its_samples(tmp_path):
    out = tmp_path / "ta"
    r = kiln("run", "pipelines/text_augment.toml", "--output", str(out), "-q")
    assert r.returncode == 0, r.stderr
    ds = load_from_disk(str(out))
    for col in ("augment", "augmentation", "augmented_from", "augment_note", "label"):
        assert col in ds.features
    originals = ds.filter(lambda row: row["augment"] == 0)
    m = json.loads((out / "manifest.json").read_text())
    assert originals.num_rows == m["totals"]["samples_out"] == 25
    copies = ds.filter(lambda row: row["augmentation"] is not None)
    assert copies.num_rows == ds.num_rows - 25
    assert set(copies["augmentation"]) == {"synonym", "back_translation"}
    assert set(copies["augmented_from"]) <= set(originals["sample_id"])
