"""kiln's datasets read by the tools users train with: HuggingFace `datasets`
and `tokenizers`, pyarrow, DuckDB. Runs the real `kiln` binary ($KILN_BIN)."""

import glob
import json
import os
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, Features, List, Value, load_from_disk
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
KILN = os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln"))

PIPELINE = """
seed = 3

[[inputs]]
path = "{root}/fixtures/text/*.jsonl"
columns = ["lang"]

[[stages]]
type = "tokenize"
keep_text = true
domain_vocab = "{root}/fixtures/text/domain_terms.txt"

[stages.train]
vocab_size = 1000
min_frequency = 2
special_tokens = ["<|endoftext|>"]

[output]
path = "{out}"
max_shard_rows = 50
"""


def kiln(*args, cwd=None):
    return subprocess.run([KILN, *args], cwd=cwd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kiln")
    out = {}
    for fmt in ("arrow", "parquet"):
        p = tmp / f"{fmt}.toml"
        p.write_text(PIPELINE.format(root=ROOT, out=tmp / fmt))
        r = kiln("run", str(p), "--format", fmt, "-q")
        assert r.returncode == 0, r.stderr
        out[fmt] = tmp / fmt
    return out


def manifest(d):
    return json.loads((d / "manifest.json").read_text())


def test_load_from_disk_sees_the_declared_features(built):
    ds = load_from_disk(str(built["arrow"]))
    m = manifest(built["arrow"])
    assert len(m["shards"]) > 1
    assert ds.num_rows == m["totals"]["rows"] == 120
    assert ds.features == Features(
        {
            "sample_id": Value("string"),
            "window": Value("uint32"),
            "input_ids": List(Value("uint32")),
            "length": Value("uint32"),
            "text": Value("string"),
            "lang": Value("string"),
        }
    )
    row = ds[0]
    assert row["sample_id"].endswith("part-0.jsonl:0")
    assert row["length"] == len(row["input_ids"])


def test_python_tokenizers_gives_the_same_ids(built):
    tok = Tokenizer.from_file(str(built["arrow"] / "tokenizer.json"))
    ds = load_from_disk(str(built["arrow"]))
    encs = tok.encode_batch(ds["text"], add_special_tokens=False)
    assert [e.ids for e in encs] == [list(ids) for ids in ds["input_ids"]]
    # The domain terms are single tokens in both.
    term = tok.token_to_id("gradient descent")
    assert term is not None
    assert term in tok.encode("the gradient descent step", add_special_tokens=False).ids


def wordnet_sentences():
    """The example sentences of WordNet's glosses (real English, about
    23,000 distinct words), as benches/gen_sentences.py reads them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_sentences", ROOT / "benches" / "gen_sentences.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen.examples("/usr/share/wordnet")


@pytest.mark.parametrize("add_prefix_space", [False, True])
def test_a_trained_tokenizer_is_the_one_python_trains(tmp_path, add_prefix_space):
    # Real text, and lines whose splits are unusual.
    texts = wordnet_sentences() + [
        "  double  spaces\tand tabs\n\nand newlines ",
        "café naïve 東京タワー 한국어 🔥🔥 e\u0301 ١٢٣ ½",
        "aaaa aaa aa a abab ababab <|endoftext|> x",
        "",
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    special = ["<|endoftext|>", "<pad>"]
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        f"""
[[inputs]]
path = "{data}"
[[stages]]
type = "tokenize"
[stages.train]
vocab_size = 5000
min_frequency = 2
special_tokens = {json.dumps(special)}
add_prefix_space = {str(add_prefix_space).lower()}
[output]
path = "{tmp_path / "out"}"
"""
    )
    r = kiln("run", str(pipeline), "-q", "--threads", "2")
    assert r.returncode == 0, r.stderr
    from tokenizers import ByteLevelBPETokenizer

    py = ByteLevelBPETokenizer(add_prefix_space=add_prefix_space)
    py.train_from_iterator(texts, vocab_size=5000, min_frequency=2, special_tokens=special)
    ours = json.loads((tmp_path / "out" / "tokenizer.json").read_text())
    theirs = json.loads(py.to_str())
    assert ours["model"]["vocab"] == theirs["model"]["vocab"]
    assert ours["model"]["merges"] == theirs["model"]["merges"]
    assert ours == theirs


def test_parquet_shards_read_by_pyarrow_and_duckdb(built):
    pdir = built["parquet"]
    m = manifest(pdir)
    files = sorted(glob.glob(str(pdir / "data-*.parquet")))
    assert [os.path.basename(f) for f in files] == [s["file"] for s in m["shards"]]
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert table.num_rows == m["totals"]["rows"]
    arrow_rows = load_from_disk(str(built["arrow"])).to_dict()
    assert table.column("input_ids").to_pylist() == arrow_rows["input_ids"]
    assert table.column("sample_id").to_pylist() == arrow_rows["sample_id"]
    ((n, tokens),) = duckdb.sql(f"SELECT count(*), sum(length) FROM read_parquet('{pdir}/data-*.parquet')").fetchall()
    assert (n, tokens) == (m["totals"]["rows"], m["totals"]["tokens"])


def test_manifest_checksums_match_the_files(built):
    import hashlib

    for d in built.values():
        for s in manifest(d)["shards"]:
            data = (d / s["file"]).read_bytes()
            assert len(data) == s["bytes"]
            assert hashlib.sha256(data).hexdigest() == s["sha256"]


def test_rejects_table_is_readable(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\nnot json\n')
    p = tmp_path / "p.toml"
    p.write_text(PIPELINE.format(root=ROOT, out=tmp_path / "out").replace(f"{ROOT}/fixtures/text/*.jsonl", str(tmp_path / "in" / "*.jsonl")))
    r = kiln("run", str(p), "-q", "--strict")
    assert r.returncode == 1, r.stderr
    rejects = pa.ipc.open_stream(tmp_path / "out" / "rejects.arrow").read_all()
    assert rejects.column_names == ["sample_id", "source", "position", "stage", "kind", "message"]
    assert sorted(rejects.column("kind").to_pylist()) == ["invalid_json", "invalid_utf8"]
    assert Dataset.from_file(str(tmp_path / "out" / "rejects.arrow")).num_rows == 2


def test_a_dataset_whose_every_sample_was_rejected_still_loads(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(b'{"body": "no text"}\n[1]\n')
    p = tmp_path / "p.toml"
    p.write_text(
        PIPELINE.format(root=ROOT, out=tmp_path / "out")
        .replace(f"{ROOT}/fixtures/text/*.jsonl", str(tmp_path / "in" / "*.jsonl"))
        .replace("[stages.train]", f'tokenizer = "{ROOT}/fixtures/text/tokenizer.json"\n#')
        .replace("vocab_size = 1000", "")
        .replace("min_frequency = 2", "")
        .replace('special_tokens = ["<|endoftext|>"]', "")
    )
    r = kiln("run", str(p), "-q")
    assert r.returncode == 0, r.stderr
    ds = load_from_disk(str(tmp_path / "out"))
    assert ds.num_rows == 0
    assert ds.features["input_ids"] == List(Value("uint32"))
    assert manifest(tmp_path / "out")["totals"]["rejected"] == 2
