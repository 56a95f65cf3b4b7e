//! The command line: exit codes, messages, refusals.

use std::time::{Duration, Instant};

use crate::common::*;

fn bad_config(s: &Scratch, pipeline: &str) -> String {
    s.write("bad.toml", pipeline);
    let o = s.kiln(&["run", "bad.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        !s.path("out").exists(),
        "nothing is written for a bad pipeline"
    );
    let v = s.kiln(&["validate", "bad.toml"]);
    assert_eq!(v.status.code(), Some(2));
    stderr(&o)
}

#[test]
fn bad_pipeline_files_are_refused_naming_file_key_and_line() {
    let s = Scratch::new();
    corpus(&s, "in", 1, 10);
    let good = text_pipeline("in/*.jsonl", "out", "", "");

    let e = bad_config(&s, &good.replace("min_frequency = 1", "min_frequncy = 1"));
    assert!(
        e.contains("bad.toml") && e.contains("min_frequncy") && e.contains("line 13"),
        "{e}"
    );

    let e = bad_config(
        &s,
        &good.replace("vocab_size = 400", "vocab_size = \"big\""),
    );
    assert!(e.contains("vocab_size") && e.contains("line 12"), "{e}");

    let e = bad_config(&s, &good.replace("in/*.jsonl", "missing/*.jsonl"));
    assert!(
        e.contains("inputs[0].path") && e.contains("line 5") && e.contains("matches no files"),
        "{e}"
    );

    let e = bad_config(
        &s,
        &good.replace(
            "seed = 1",
            "seed = 1\nsql = \"SELECT sample_id, body FROM input\"",
        ),
    );
    assert!(
        e.contains("key `sql`") && e.contains("line 2") && e.contains("body"),
        "{e}"
    );

    let e = bad_config(
        &s,
        &good.replace(
            "seed = 1",
            "seed = 1\nsql = \"SELECT sample_id FROM input\"",
        ),
    );
    assert!(e.contains("text"), "schema mismatch names the column: {e}");

    let chunk = good.replace(
        "[output]",
        "[[stages]]\ntype = \"chunk\"\nmax_tokens = 4\nstride = 4\n\n[output]",
    );
    let e = bad_config(&s, &chunk);
    assert!(e.contains("stages[1]") && e.contains("stride"), "{e}");

    let e = bad_config(
        &s,
        &good.replace("type = \"tokenize\"", "type = \"tokenise\""),
    );
    assert!(e.contains("tokenise") && e.contains("line 8"), "{e}");
}

#[test]
fn validate_reads_no_data_and_prints_the_schema() {
    let s = Scratch::new();
    s.write("in/a.jsonl", b"not even json\xff");
    s.write("p.toml", text_pipeline("in/*.jsonl", "out", "", ""));
    let o = s.kiln(&["validate", "p.toml"]);
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("input_ids: List(UInt32)"), "{out}");
    assert!(!s.path("out").exists());
}

#[test]
fn rerun_of_a_finished_job_does_nothing_and_says_so() {
    let s = Scratch::new();
    corpus(&s, "in", 2, 20);
    s.write("p.toml", text_pipeline("in/*.jsonl", "out", "", ""));
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    let before = dataset_files(&s.path("out"));
    let o = s.kiln(&["run", "p.toml", "-q"]);
    assert_ok(&o);
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
    assert_eq!(before, dataset_files(&s.path("out")));
    // A different plan into the same output is refused, not mixed in.
    let o = s.kiln(&["run", "p.toml", "-q", "--seed", "9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("different plan"), "{}", stderr(&o));
}

#[test]
fn second_run_on_the_same_output_is_refused() {
    let s = Scratch::new();
    corpus(&s, "in", 4, 50);
    let p = text_pipeline("in/*.jsonl", "out", "", "")
        .replace("[output]", "[plan]\nbatch_rows = 8\n\n[output]");
    s.write("p.toml", p);
    let mut first = kiln()
        .current_dir(s.dir.path())
        .env("KILN_THROTTLE_MS", "50")
        .args(["run", "p.toml", "-q", "--threads", "1"])
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !s.path("out/.kiln/plan.json").exists() {
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = s.kiln(&["run", "p.toml", "-q"]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("another kiln process is writing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn input_and_output_override_the_pipeline_file() {
    let s = Scratch::new();
    corpus(&s, "other", 1, 15);
    s.write("p.toml", text_pipeline("nowhere/*.jsonl", "never", "", ""));
    assert_ok(&s.kiln(&[
        "run",
        "p.toml",
        "-q",
        "--input",
        "other/*.jsonl",
        "--output",
        "elsewhere",
    ]));
    assert_eq!(manifest(&s.path("elsewhere"))["totals"]["samples_out"], 15);
    assert!(!s.path("never").exists());
    let o = s.kiln(&["inspect", "elsewhere"]);
    assert_ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("tokens per row") && text.contains("part-000.jsonl:0"),
        "{text}"
    );
}
