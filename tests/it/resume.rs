//! Killed runs resume to the same bytes; tasks split over processes commit to
//! the same bytes as one process.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;

fn setup() -> Scratch {
    let s = Scratch::new();
    corpus(&s, "in", 5, 240);
    s.write("in/bad.jsonl", b"{\"text\": \"\xff\"}\n{oops}\n");
    let p = text_pipeline("in/*.jsonl", "unused", "", "").replace(
        "[output]",
        "[plan]\ntask_bytes = 12000\nbatch_rows = 32\n\n[output]\nmax_shard_rows = 100",
    );
    s.write("p.toml", p);
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--output", "reference"]));
    s
}

fn spawn_slow(s: &Scratch, out: &str, extra: &[&str]) -> Child {
    let mut args = vec!["run", "p.toml", "-q", "--output", out];
    args.extend_from_slice(extra);
    kiln()
        .current_dir(s.dir.path())
        .env("KILN_THROTTLE_MS", "15")
        .args(&args)
        .spawn()
        .unwrap()
}

fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn count(dir: &Path, pred: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| pred(&e.file_name().to_string_lossy()))
                .count()
        })
        .unwrap_or(0)
}

fn tmp_shards(out: &Path) -> usize {
    let tasks = out.join(".kiln/tasks");
    std::fs::read_dir(&tasks)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| count(&e.path(), |n| n.ends_with(".tmp")))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_at_any_point_then_rerun_gives_the_same_bytes() {
    let s = setup();
    let out = s.path("killed");
    let tasks = out.join(".kiln/tasks");
    // Kill points: while planning/training, with a shard half written, after
    // some tasks finished, in the middle of the commit.
    type KillPoint<'a> = (&'a str, Box<dyn Fn() -> bool + 'a>);
    let points: Vec<KillPoint> = vec![
        (
            "plan written",
            Box::new(|| out.join(".kiln/plan.json").exists()),
        ),
        ("shard half written", Box::new(|| tmp_shards(&out) > 0)),
        (
            "two tasks done",
            Box::new(|| count(&tasks, |n| n.ends_with(".json")) >= 2),
        ),
        (
            "commit started",
            Box::new(|| count(&out, |n| n.starts_with("data-")) >= 1),
        ),
    ];
    let mut kills = 0;
    for (name, cond) in &points {
        let mut child = spawn_slow(&s, "killed", &["--threads", "2"]);
        let hit = wait_for(|| cond() || child.try_wait().unwrap().is_some());
        assert!(hit, "reached `{name}`");
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 3, "the run was really killed ({kills} times)");
    // What a writer killed mid-write leaves behind is swept at commit.
    std::fs::write(out.join("tokenizer.json.tmp.99999"), b"{\"half").unwrap();
    let o = s.kiln(&["run", "p.toml", "-q", "--output", "killed"]);
    assert_ok(&o);
    assert_same_dataset(&s.path("reference"), &out);
    let m = manifest(&out);
    let t = &m["totals"];
    assert_eq!(t["samples_in"].as_u64().unwrap(), 5 * 240 + 2);
    assert_eq!(
        t["samples_in"].as_u64().unwrap(),
        t["samples_out"].as_u64().unwrap() + t["rejected"].as_u64().unwrap()
    );
}

#[test]
fn tasks_on_several_processes_commit_to_the_same_bytes() {
    let s = setup();
    // Three slots at once; the last to finish writes the manifest.
    let children: Vec<Child> = (0..3)
        .map(|i| {
            let (i, n) = (i.to_string(), "3".to_string());
            kiln()
                .current_dir(s.dir.path())
                .args([
                    "run", "p.toml", "-q", "--output", "spread", "--task", &i, "--tasks", &n,
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_same_dataset(&s.path("reference"), &s.path("spread"));

    // Slots run one after another; `kiln commit` refuses until all are done.
    for i in 0..2 {
        assert_ok(&s.kiln(&[
            "run",
            "p.toml",
            "-q",
            "--output",
            "later",
            "--task",
            &i.to_string(),
            "--tasks",
            "3",
        ]));
    }
    let o = s.kiln(&["commit", "later"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not finished"), "{}", stderr(&o));
    assert_ok(&s.kiln(&[
        "run", "p.toml", "-q", "--output", "later", "--task", "2", "--tasks", "3",
    ]));
    let o = s.kiln(&["commit", "later"]);
    assert_ok(&o);
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
    assert_same_dataset(&s.path("reference"), &s.path("later"));
}
