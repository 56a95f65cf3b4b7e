//! Random kills: each example pipeline is killed with SIGKILL at random
//! moments (planning, tokenizer training and label counting, tasks, the
//! commit), run again after each kill (a run that finished before its kill
//! is compared, and the next starts afresh), and its final bytes compared
//! with an uninterrupted run's.
//!
//! `KILN_KILLS` kills per pipeline (2 by default, as in CI;
//! `scripts/kill_harness.sh` runs 20). The moments come from a seed that is
//! printed; `KILN_KILL_SEED` replays it.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::*;

/// Batches and commit renames are slowed by this much, so that the phases
/// last long enough for a random moment to fall in each.
const THROTTLE_MS: &str = "5";

fn run(out: &Path, pipeline: &str) -> std::process::Command {
    let mut c = kiln();
    c.current_dir(root())
        .env("KILN_THROTTLE_MS", THROTTLE_MS)
        .args([
            "run",
            &format!("pipelines/{pipeline}"),
            "-q",
            "--threads",
            "2",
        ])
        .arg("--output")
        .arg(out);
    c
}

/// What a kill interrupted, read from what it left.
fn phase(out: &Path) -> String {
    let plan = out.join(".kiln/plan.json");
    if out.join("manifest.json").exists() {
        return "after the end".into();
    }
    let Ok(plan) = std::fs::read(&plan) else {
        return "planning".into();
    };
    let tasks = serde_json::from_slice::<serde_json::Value>(&plan).unwrap()["tasks"]
        .as_array()
        .map_or(0, Vec::len);
    let done = std::fs::read_dir(out.join(".kiln/tasks")).map_or(0, |r| {
        r.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    });
    match done == tasks {
        true => "commit".into(),
        // Fits (tokenizer training, label counting) run after planning,
        // before the tasks.
        false => format!("fitting or tasks ({done} of {tasks} tasks done)"),
    }
}

fn killed_runs_end_with_the_clean_bytes(pipeline: &str) {
    let kills: usize = std::env::var("KILN_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(2);
    let seed: u64 = std::env::var("KILN_KILL_SEED")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{pipeline}: {kills} kills, seed {seed} (KILN_KILL_SEED={seed} replays them)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = Scratch::new();
    let clean = s.path("clean");
    let started = Instant::now();
    assert_ok(&run(&clean, pipeline).output().unwrap());
    let span = started.elapsed();
    let out = s.path("killed");
    for k in 0..kills {
        let at = span.mul_f64(rng.random_range(0.0..1.1));
        let mut child = run(&out, pipeline)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + at;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let alive = child.try_wait().unwrap().is_none();
        child.kill().ok();
        child.wait().unwrap();
        let what = match alive {
            true => phase(&out),
            false => "after the end".into(),
        };
        eprintln!(
            "{pipeline}: kill {} at {:.3}s: {what}",
            k + 1,
            at.as_secs_f64()
        );
        if out.join("manifest.json").exists() {
            // Finished (resumed runs have less left to do): its bytes are
            // checked, and the next kill starts from nothing.
            assert_same_dataset(&clean, &out);
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
    let o = run(&out, pipeline).output().unwrap();
    assert_ok(&o);
    assert_same_dataset(&clean, &out);
}

#[test]
fn text() {
    killed_runs_end_with_the_clean_bytes("text.toml");
}

#[test]
fn image_features() {
    killed_runs_end_with_the_clean_bytes("image_features.toml");
}

#[test]
fn image_mix() {
    killed_runs_end_with_the_clean_bytes("image_mix.toml");
}

#[test]
fn audio_specaug() {
    killed_runs_end_with_the_clean_bytes("audio_specaug.toml");
}

#[test]
fn text_augment() {
    killed_runs_end_with_the_clean_bytes("text_augment.toml");
}

#[test]
fn multimodal() {
    killed_runs_end_with_the_clean_bytes("multimodal.toml");
}
