//! Text augmentation end to end: pipelines/text_augment.toml balances its
//! labels with synonym and back-translated copies that say where they came
//! from, hard inputs pass through with notes, the output is the same at any
//! thread count and after a killed run, a translator that keeps dying
//! rejects its samples, and bad configurations are refused naming key and
//! line.

use std::collections::HashMap;

use crate::common::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::UInt32Type;

/// One output row's columns that augmentation fills.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    text: String,
    label: Option<String>,
    augment: u32,
    augmentation: Option<String>,
    from: Option<String>,
    note: Option<String>,
}

fn rows(dir: &std::path::Path) -> Vec<Row> {
    let mut out = Vec::new();
    for b in read_dataset(dir) {
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (id, text, label) = (s("sample_id"), s("text"), s("label"));
        let (augmentation, from, note) =
            (s("augmentation"), s("augmented_from"), s("augment_note"));
        let opt = |c: &arrow::array::StringArray, i: usize| {
            (!c.is_null(i)).then(|| c.value(i).to_string())
        };
        let augment = b
            .column_by_name("augment")
            .unwrap()
            .as_primitive::<UInt32Type>()
            .clone();
        for i in 0..b.num_rows() {
            out.push(Row {
                id: id.value(i).into(),
                text: text.value(i).into(),
                label: opt(&label, i),
                augment: augment.value(i),
                augmentation: opt(&augmentation, i),
                from: opt(&from, i),
                note: opt(&note, i),
            });
        }
    }
    out
}

#[test]
fn the_example_balances_labels_and_records_provenance() {
    let out = tempfile::tempdir().unwrap();
    let one = out.path().join("one");
    let four = out.path().join("four");
    let a = run_example("text_augment.toml", &one, "1");
    let b = run_example("text_augment.toml", &four, "4");
    assert_eq!(a, b, "byte-identical at 1 and 4 threads");

    let rows = rows(&one);
    let originals: HashMap<&str, &Row> = rows
        .iter()
        .filter(|r| r.augment == 0)
        .map(|r| (r.id.as_str(), r))
        .collect();
    // 26 lines: 25 samples and one broken JSON line, rejected.
    assert_eq!(originals.len(), 25);
    assert_eq!(rejects(&one).len(), 1);
    let mut per_label: HashMap<Option<String>, (usize, usize)> = HashMap::new();
    for r in &rows {
        let e = per_label.entry(r.label.clone()).or_default();
        e.0 += 1;
        if r.augment == 0 {
            assert!(r.augmentation.is_none() && r.from.is_none() && r.note.is_none());
            e.1 += 1;
            continue;
        }
        // A copy: its source exists, has its label, and the method
        // alternates back_translation, synonym, back_translation...
        let src = originals[r.from.as_deref().unwrap()];
        assert_eq!(r.id, format!("{}#aug{}", src.id, r.augment));
        assert_eq!(r.label, src.label);
        let want = if r.augment % 2 == 1 {
            "back_translation"
        } else {
            "synonym"
        };
        assert_eq!(r.augmentation.as_deref(), Some(want), "{r:?}");
        match &r.note {
            None => assert_ne!(r.text, src.text, "a copy without a note differs: {r:?}"),
            Some(n) if n.starts_with("back-translation is deterministic") => {}
            Some(_) => assert_eq!(r.text, src.text, "a copy with a note is unchanged: {r:?}"),
        }
    }
    // positive 14, negative 7, neutral 3 samples; the target is 14 and a
    // sample makes at most 4 rows: negative reaches 14, neutral is capped at
    // 12; unlabelled samples get no copies.
    let label = |l: &str| per_label[&Some(l.to_string())];
    assert_eq!(label("positive"), (14, 14));
    assert_eq!(label("negative"), (14, 7));
    assert_eq!(label("neutral"), (12, 3));
    assert_eq!(per_label[&None], (1, 1));

    // Hard inputs pass through unchanged, each with the reason.
    let notes_of = |text_start: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r.augment > 0 && r.text.starts_with(text_start))
            .filter_map(|r| r.note.clone())
            .collect()
    };
    let tokyo = notes_of("東京");
    assert!(
        tokyo.iter().any(|n| n == "no word has a WordNet synonym"),
        "{tokyo:?}"
    );
    assert!(
        tokyo
            .iter()
            .any(|n| n == "back-translation returned the text unchanged"),
        "{tokyo:?}"
    );
    // Apertium's stream characters survive the round trip.
    let meta = rows
        .iter()
        .find(|r| r.augmentation.as_deref() == Some("back_translation") && r.text.contains("[see"))
        .map(|r| r.text.clone());
    if let Some(t) = meta {
        assert!(
            t.contains('^') && t.contains("{today}") && t.contains('\\'),
            "{t}"
        );
    }
    let translated = rows
        .iter()
        .filter(|r| r.augmentation.as_deref() == Some("back_translation") && r.note.is_none())
        .count();
    assert!(
        translated >= 6,
        "Apertium changed most sentences: {translated}"
    );
    // A second back-translated copy repeats the first, and says so.
    assert!(rows.iter().any(|r| r.augment == 3
        && r.note.as_deref()
            == Some("back-translation is deterministic: the same text as copy 1")));
}

#[test]
fn a_killed_run_resumes_to_the_same_bytes() {
    let s = Scratch::new();
    // One task per file: nine files of the fixture's reviews.
    let lines: Vec<String> = std::fs::read_to_string(fixture_path("text_augment/reviews.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for (i, chunk) in lines.chunks(3).enumerate() {
        s.write(&format!("in/part-{i}.jsonl"), chunk.join("\n") + "\n");
    }
    let pipeline = format!(
        r#"seed = 3
[[inputs]]
path = "in/*.jsonl"
columns = ["label"]

[[stages]]
type = "augment_text"
copies = 2

[stages.synonym]
stopwords_file = "{}"

[stages.back_translation]
{TOKENIZE}
[plan]
task_bytes = 400

[output]
path = "unused"
"#,
        fixture_path("text_augment/stopwords.txt")
    );
    s.write("p.toml", &pipeline);
    let resumed = kill_after_tasks_then_rerun(&s, "resumed", 2);
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--output", "whole"]));
    assert_same_dataset(&resumed, &s.path("whole"));
}

#[test]
fn a_translator_that_keeps_dying_rejects_its_samples() {
    let s = Scratch::new();
    s.write(
        "in.jsonl",
        "{\"text\": \"fine words here\"}\n{\"text\": \"this one will CRASH the translator\"}\n{\"text\": \"more fine words\"}\n",
    );
    // Upper-cases each batch; exits on any batch holding CRASH.
    let script = r#"while IFS= read -r -d '' b; do case "$b" in *CRASH*) echo 'segfault in translator' >&2; exit 139;; esac; printf '%s\0' "${b^^}"; done"#;
    let pipeline = format!(
        r#"
[[inputs]]
path = "in.jsonl"

[[stages]]
type = "augment_text"

[stages.back_translation]
backend = "command"
command = ["bash", "-c", {script:?}]
batch_size = 1
{TOKENIZE}"#
    );
    let out = build_in(&s, "out", &pipeline, &[]);
    let rows = rows_without_label(&out);
    assert_eq!(
        rows,
        [
            ("FINE WORDS HERE".to_string(), 1),
            ("MORE FINE WORDS".to_string(), 1),
            ("fine words here".to_string(), 0),
            ("more fine words".to_string(), 0),
        ]
    );
    let r = rejects(&out);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].0.ends_with("in.jsonl:28"), "{r:?}");
    assert_eq!(
        (r[0].1.as_str(), r[0].2.as_str()),
        ("augment_text", "translation_failed")
    );
    let m = manifest(&out);
    assert_eq!(m["totals"]["samples_in"], 3);
    assert_eq!(m["totals"]["samples_out"], 2);
}

/// Augmented text is tokenized, keeping the text.
const TOKENIZE: &str = concat!(
    "\n[[stages]]\ntype = \"tokenize\"\nkeep_text = true\ntokenizer = \"",
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/text/tokenizer.json\"\n"
);

#[test]
fn an_onnx_marian_model_back_translates() {
    let s = Scratch::new();
    s.write(
        "in.jsonl",
        "{\"text\": \"We read a good book.\"}\n{\"text\": \"the sun and the rain\"}\n",
    );
    let model = fixture_path("text_augment/tiny_marian");
    let pipeline = format!(
        r#"
[[inputs]]
path = "in.jsonl"

[[stages]]
type = "augment_text"

[stages.back_translation]
backend = "onnx"
model = "{model}"
back_model = "{model}"
num_beams = 2
max_new_tokens = 12
{TOKENIZE}"#
    );
    let a = build_in(&s, "a", &pipeline, &["--threads", "1"]);
    let b = build_in(&s, "b", &pipeline, &["--threads", "3"]);
    assert_same_dataset(&a, &b);
    let rows = rows_without_label(&a);
    // The tiny model copies its input, lower-cased, with the noise in its
    // weights: each word of a copy is a word of the model's vocabulary.
    let vocab =
        std::fs::read_to_string(fixture_path("text_augment/tiny_marian/tokenizer.json")).unwrap();
    let copies: Vec<&String> = rows.iter().filter(|r| r.1 == 1).map(|r| &r.0).collect();
    assert_eq!(copies.len(), 2);
    for c in copies {
        assert!(!c.is_empty());
        for w in c.split(' ') {
            assert!(vocab.contains(&format!("\"{w}\"")), "`{w}` of `{c}`");
        }
    }
}

/// (text, augment) of every row, sorted.
fn rows_without_label(dir: &std::path::Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for b in read_dataset(dir) {
        let t = b.column_by_name("text").unwrap().as_string::<i32>().clone();
        let a = b
            .column_by_name("augment")
            .unwrap()
            .as_primitive::<UInt32Type>()
            .clone();
        for i in 0..b.num_rows() {
            out.push((t.value(i).to_string(), a.value(i)));
        }
    }
    out.sort();
    out
}
