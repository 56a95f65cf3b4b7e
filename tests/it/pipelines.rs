//! End-to-end runs of pipelines (the examples are in examples.rs): bad
//! input, the sample invariant, determinism across thread counts, chunking, SQL, formats.

use std::path::Path;

use crate::common::*;
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt32Type;

fn totals(dir: &Path) -> (u64, u64, u64, u64) {
    let t = &manifest(dir)["totals"];
    let g = |k: &str| t[k].as_u64().unwrap();
    (
        g("samples_in"),
        g("samples_out"),
        g("rejected"),
        g("filtered"),
    )
}

#[test]
fn bad_input_is_rejected_with_reasons_and_nothing_is_lost() {
    let s = Scratch::new();
    let mut jsonl = Vec::new();
    jsonl.extend_from_slice(b"{\"text\": \"a good line\"}\n");
    jsonl.extend_from_slice(b"{\"text\": \"bad \xff\xfe utf8\"}\n");
    jsonl.extend_from_slice(b"{\"text\": \"unterminated\n");
    jsonl.extend_from_slice(b"{\"body\": \"no text field\"}\n");
    jsonl.extend_from_slice(b"[1, 2, 3]\n");
    jsonl.extend_from_slice(b"{\"text\": 42}\n");
    jsonl.extend_from_slice(b"\n   \n");
    jsonl.extend_from_slice(format!("{{\"text\": \"{}\"}}\n", "x".repeat(300)).as_bytes());
    jsonl.extend_from_slice(b"{\"text\": \"another good line\"}");
    s.write("in/a.jsonl", &jsonl);
    s.write("in/b.jsonl", b"");
    let dir = s.write("in/c.jsonl", b"{\"text\": \"x\"}\n");
    // A file that exists when planned but cannot be read.
    std::fs::remove_file(&dir).unwrap();
    std::os::unix::fs::symlink("/nonexistent/kiln-test", &dir).unwrap();
    s.write(
        "p.toml",
        text_pipeline("in/*.jsonl", "out", "", "")
            .replace("[output]", "[limits]\nmax_line_bytes = 200\n\n[output]"),
    );
    let o = s.kiln(&["run", "p.toml", "-q"]);
    assert_ok(&o);
    let out = s.path("out");
    let mut got: Vec<(String, String)> = rejects(&out)
        .into_iter()
        .map(|(id, _, kind)| (id, kind))
        .collect();
    got.sort();
    let mut want = vec![
        ("a.jsonl:24", "invalid_utf8"),
        ("a.jsonl:48", "invalid_json"),
        ("a.jsonl:71", "missing_field"),
        ("a.jsonl:97", "not_an_object"),
        ("a.jsonl:107", "wrong_type"),
        ("a.jsonl:125", "line_too_long"),
        ("b.jsonl:0", "empty_file"),
        ("c.jsonl:0", "unreadable"),
    ];
    want.sort();
    let want: Vec<(String, String)> = want
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    let (i, o_, r, f) = totals(&out);
    assert_eq!((i, o_, r, f), (10, 2, 8, 0));
    let ids: Vec<String> = read_dataset(&out)
        .iter()
        .flat_map(|b| {
            b.column_by_name("sample_id")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ids, ["a.jsonl:0", "a.jsonl:438"]);
    // The summary says what was rejected and why.
    let err = stderr(&o);
    assert!(err.contains("rejected read_jsonl/invalid_utf8: 1"), "{err}");
    // --strict turns rejects into exit code 1 (the dataset is complete).
    let o = s.kiln(&["run", "p.toml", "-q", "--strict"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[test]
fn same_bytes_with_one_thread_or_many() {
    let s = Scratch::new();
    corpus(&s, "in", 6, 300);
    s.write(
        "p.toml",
        text_pipeline("in/*.jsonl", "unused", "", "").replace(
            "[output]",
            "[plan]\ntask_bytes = 20000\nbatch_rows = 64\n\n[output]\nmax_shard_rows = 500",
        ),
    );
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--threads", "1", "--output", "one"]));
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--threads", "4", "--output", "four"]));
    let m = manifest(&s.path("one"));
    assert!(
        m["tasks"].as_u64().unwrap() > 4,
        "several tasks: {}",
        m["tasks"]
    );
    assert!(m["shards"].as_array().unwrap().len() > 4);
    assert_same_dataset(&s.path("one"), &s.path("four"));
}

#[test]
fn chunking_makes_overlapping_windows_and_counts_documents() {
    let s = Scratch::new();
    corpus(&s, "in", 2, 100);
    let pipeline = text_pipeline("in/*.jsonl", "out", "", "keep_text = true").replace(
        "[output]",
        "[[stages]]\ntype = \"chunk\"\nmax_tokens = 8\nstride = 3\n\n[output]",
    );
    s.write("p.toml", pipeline);
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    let out = s.path("out");
    let (i, o, r, _) = totals(&out);
    assert_eq!((i, o, r), (200, 200, 0));
    let batches = read_dataset(&out);
    let mut rows = 0;
    let mut prev: Option<(String, u32, Vec<u32>)> = None;
    for b in &batches {
        let ids = b.column_by_name("sample_id").unwrap().as_string::<i32>();
        let win = b
            .column_by_name("window")
            .unwrap()
            .as_primitive::<UInt32Type>();
        let toks = b.column_by_name("input_ids").unwrap().as_list::<i32>();
        let len = b
            .column_by_name("length")
            .unwrap()
            .as_primitive::<UInt32Type>();
        for row in 0..b.num_rows() {
            rows += 1;
            let t: Vec<u32> = toks
                .value(row)
                .as_primitive::<UInt32Type>()
                .values()
                .to_vec();
            assert!(t.len() <= 8);
            assert_eq!(t.len() as u32, len.value(row));
            let id = ids.value(row).to_string();
            if let Some((pid, pw, pt)) = &prev
                && *pid == id
            {
                assert_eq!(win.value(row), pw + 1);
                assert_eq!(
                    &pt[pt.len() - 3..],
                    &t[..3],
                    "consecutive windows share `stride` tokens"
                );
            } else {
                assert_eq!(win.value(row), 0);
            }
            prev = Some((id, win.value(row), t));
        }
    }
    assert!(rows > 200, "long documents were cut into several windows");
    assert_eq!(manifest(&out)["totals"]["rows"].as_u64().unwrap(), rows);
}

#[test]
fn sql_filters_and_projects_before_the_stages() {
    let s = Scratch::new();
    corpus(&s, "in", 2, 60);
    let top = r#"sql = "SELECT sample_id, lower(text) AS text, lang FROM input WHERE lang = 'en'""#;
    let pipeline = text_pipeline("in/*.jsonl", "out", top, "keep_text = true").replace(
        "path = \"in/*.jsonl\"",
        "path = \"in/*.jsonl\"\ncolumns = [\"lang\"]",
    );
    s.write("p.toml", pipeline);
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    let out = s.path("out");
    let (i, o, r, f) = totals(&out);
    assert_eq!((i, o, r, f), (120, 80, 0, 40));
    for b in read_dataset(&out) {
        let lang = b.column_by_name("lang").unwrap().as_string::<i32>();
        assert!(lang.iter().all(|l| l == Some("en")));
        let text = b.column_by_name("text").unwrap().as_string::<i32>();
        assert!(text.iter().all(|t| t.unwrap() == t.unwrap().to_lowercase()));
    }
}

#[test]
fn text_csv_and_parquet_inputs_in_one_pipeline() {
    let s = Scratch::new();
    s.write("in/lines.txt", "first line of text\n\nsecond line\n");
    s.write("in/docs/one.txt", "a whole file\nis one document\n");
    s.write("in/docs/two.txt", "another file");
    s.write(
        "in/table.csv",
        "id,text,label\n1,\"a csv, with comma\",pos\n2,plain csv row,neg\n",
    );
    // A Parquet table made by kiln itself.
    s.write(
        "mk.toml",
        text_pipeline("in/lines.txt", "made", "", "keep_text = true"),
    );
    assert_ok(&s.kiln(&["run", "mk.toml", "-q", "--format", "parquet"]));
    let made = std::fs::read_dir(s.path("made"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    std::fs::copy(made, s.path("in/table.parquet")).unwrap();
    let pipeline = r#"
[[inputs]]
path = "in/lines.txt"

[[inputs]]
path = "in/docs/*.txt"
document = "file"

[[inputs]]
path = "in/table.csv"
columns = ["label"]

[[inputs]]
path = "in/table.parquet"

[[stages]]
type = "tokenize"
keep_text = true
[stages.train]
vocab_size = 300
min_frequency = 1

[output]
path = "out"
"#;
    s.write("p.toml", pipeline);
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    let out = s.path("out");
    let mut texts = Vec::new();
    for b in read_dataset(&out) {
        let t = b.column_by_name("text").unwrap().as_string::<i32>();
        let id = b.column_by_name("sample_id").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            texts.push((id.value(i).to_string(), t.value(i).to_string()));
        }
    }
    let want = [
        // Several inputs: ids start with the input's index, then the
        // file's path below the input's root.
        ("0/lines.txt:0", "first line of text"),
        ("0/lines.txt:20", "second line"),
        ("1/one.txt:0", "a whole file\nis one document\n"),
        ("1/two.txt:0", "another file"),
        ("2/table.csv:14", "a csv, with comma"),
        ("2/table.csv:40", "plain csv row"),
        ("3/table.parquet:0", "first line of text"),
        ("3/table.parquet:1", "second line"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(texts, want);
}

#[test]
fn domain_terms_are_never_split() {
    let s = Scratch::new();
    corpus(&s, "in", 1, 50);
    s.write(
        "in/extra.jsonl",
        "{\"text\": \"the anti-CRISPR-Cas9 protein and CRISPR-Cas9 again\"}\n",
    );
    s.write("terms.txt", "# domain terms\nCRISPR-Cas9\n");
    s.write(
        "p.toml",
        text_pipeline(
            "in/*.jsonl",
            "out",
            "",
            "domain_vocab = \"terms.txt\"\nkeep_text = true",
        ),
    );
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    let tok = tokenizers::Tokenizer::from_file(s.path("out/tokenizer.json")).unwrap();
    let id = tok.token_to_id("CRISPR-Cas9").expect("the term is a token");
    let enc = tok.encode("we used CRISPR-Cas9 today", false).unwrap();
    assert!(enc.get_ids().contains(&id), "{:?}", enc.get_tokens());
    let ids: Vec<u32> = read_dataset(&s.path("out"))
        .iter()
        .flat_map(|b| {
            let t = b.column_by_name("input_ids").unwrap().as_list::<i32>();
            (0..b.num_rows())
                .flat_map(|i| t.value(i).as_primitive::<UInt32Type>().values().to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(ids.contains(&id), "the dataset uses the term's id");
}

#[test]
fn shards_are_capped_by_rows_and_bytes() {
    let s = Scratch::new();
    corpus(&s, "in", 1, 400);
    let p = text_pipeline("in/*.jsonl", "rows", "", "")
        .replace("[output]", "[output]\nmax_shard_rows = 150");
    s.write("rows.toml", p);
    assert_ok(&s.kiln(&["run", "rows.toml", "-q"]));
    let rows: Vec<u64> = manifest(&s.path("rows"))["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [150, 150, 100]);
    let p = text_pipeline("in/*.jsonl", "bytes", "", "").replace(
        "[output]",
        "[plan]\nbatch_rows = 10\n\n[output]\nmax_shard_bytes = 8000",
    );
    s.write("bytes.toml", p);
    assert_ok(&s.kiln(&["run", "bytes.toml", "-q"]));
    let m = manifest(&s.path("bytes"));
    let shards = m["shards"].as_array().unwrap();
    assert!(shards.len() > 3);
    for sh in shards {
        // A shard closes at the first batch that reaches the cap.
        assert!(sh["bytes"].as_u64().unwrap() < 8000 + 4000, "{sh}");
        let bytes = std::fs::read(s.path("bytes").join(sh["file"].as_str().unwrap())).unwrap();
        assert_eq!(bytes.len() as u64, sh["bytes"].as_u64().unwrap());
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            sh["sha256"].as_str().unwrap()
        );
    }
}

/// The rows of `pipelines/text_chunked.toml` (a fixed tokenizer, a domain
/// vocabulary, windows of 32 with stride 8) pinned in a golden file.
/// Regenerate with `KILN_BLESS=1 cargo nextest run golden` and review the diff.
#[test]
fn golden_rows_of_the_chunked_pipeline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("chunked");
    let o = kiln()
        .current_dir(root)
        .args([
            "run",
            "pipelines/text_chunked.toml",
            "-q",
            "--format",
            "arrow",
            "--output",
            dest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let mut dump = String::new();
    for b in read_dataset(&dest) {
        let id = b.column_by_name("sample_id").unwrap().as_string::<i32>();
        let win = b
            .column_by_name("window")
            .unwrap()
            .as_primitive::<UInt32Type>();
        let ids = b.column_by_name("input_ids").unwrap().as_list::<i32>();
        for r in 0..b.num_rows() {
            let toks: Vec<String> = ids
                .value(r)
                .as_primitive::<UInt32Type>()
                .values()
                .iter()
                .map(|t| t.to_string())
                .collect();
            dump.push_str(&format!(
                "{}\t{}\t{}\n",
                id.value(r),
                win.value(r),
                toks.join(" ")
            ));
        }
    }
    let golden = root.join("tests/golden/text_chunked.tsv");
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &dump).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (KILN_BLESS=1 writes it)");
    assert!(
        want == dump,
        "rows differ from {}; rerun with KILN_BLESS=1 and review the diff",
        golden.display()
    );
}

#[test]
fn csv_record_without_an_end_is_rejected_not_read_whole() {
    let s = Scratch::new();
    let mut csv = b"id,text\n1,a good row\n2,\"an unclosed quote ".to_vec();
    csv.extend(std::iter::repeat_n(b'x', 400_000));
    s.write("in/t.csv", &csv);
    let p = text_pipeline("in/t.csv", "out", "", "")
        .replace("[output]", "[limits]\nmax_line_bytes = 1000\n\n[output]");
    s.write("p.toml", p);
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    let got: Vec<(String, String)> = rejects(&s.path("out"))
        .into_iter()
        .map(|(id, _, kind)| (id, kind))
        .collect();
    assert_eq!(got, [("t.csv:21".to_string(), "line_too_long".to_string())]);
    assert_eq!(totals(&s.path("out")), (2, 1, 1, 0));
}

/// Dictionary-encoded Parquet looks small on disk but decodes large: the
/// reader still cuts batches by bytes and keeps every row.
#[test]
fn parquet_rows_that_decode_large_are_batched_by_bytes() {
    use std::sync::Arc;
    let s = Scratch::new();
    let doc = "kiln ".repeat(60_000);
    let texts: Vec<&str> = (0..40).map(|_| doc.as_str()).collect();
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("text", arrow::datatypes::DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow::array::StringArray::from(texts))],
    )
    .unwrap();
    let f = std::fs::File::create(s.path("t.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    s.write("p.toml", text_pipeline("t.parquet", "out", "", ""));
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    assert_eq!(totals(&s.path("out")), (40, 40, 0, 0));
    let batches = read_dataset(&s.path("out"));
    assert!(
        batches.len() >= 2,
        "cut into several batches: {}",
        batches.len()
    );
}
