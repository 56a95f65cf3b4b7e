//! The trainer's epochs, batches and resumes as PyTorch users count them,
//! and at scale: data-parallel ranks as local processes (`--nproc`) take
//! the steps one process takes with the accumulation times the ranks;
//! ZeRO stage 1 gives the same weights; a killed rank stops the others and
//! the job resumes to the weights of an uninterrupted run; sliding-window
//! attention trains a 32K-token text in bounded memory.

use std::path::Path;

use crate::common::*;
use crate::train::{last_checkpoint, metrics, tensors, topics, train, train_file};

/// The step lines and the evaluation lines of a run.
fn lines(dir: &Path) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    metrics(dir)
        .into_iter()
        .partition(|l| l.get("loss").is_some())
}

#[test]
fn an_epoch_is_every_training_row_once_in_full_batches() {
    let s = Scratch::new();
    let data = topics(&s);
    for (name, extra) in [("keep", ""), ("drop", "\ndrop_last = true")] {
        let f = train_file(
            &s,
            name,
            &data,
            &format!("epochs = 3\nbatch_size = 16{extra}"),
        );
        assert_ok(&train(&s, &f, &[]));
        let (steps, evals) = lines(&s.path(name));
        assert_eq!(evals.len(), 3, "{name}: one evaluation an epoch");
        let t = evals[0]["train_rows"].as_u64().unwrap();
        // Training and held-out rows make the dataset.
        assert_eq!(t + evals[0]["val_rows"].as_u64().unwrap(), 400);
        assert!((300..=340).contains(&t), "{t}");
        let per_epoch = match name {
            "keep" => t.div_ceil(16),
            _ => t / 16,
        };
        assert_eq!(steps.len() as u64, 3 * per_epoch, "{name}");
        for epoch in 0..3 {
            let rows: Vec<u64> = steps
                .iter()
                .filter(|l| l["epoch"] == epoch)
                .map(|l| l["rows"].as_u64().unwrap())
                .collect();
            assert_eq!(rows.len() as u64, per_epoch);
            // Full batches of 16, but the last of an epoch.
            assert!(rows[..rows.len() - 1].iter().all(|&r| r == 16), "{rows:?}");
            match name {
                "keep" => assert_eq!(rows.iter().sum::<u64>(), t),
                _ => assert_eq!(*rows.last().unwrap(), 16),
            }
        }
    }
}

#[test]
fn a_resume_with_another_seed_data_or_model_is_refused_naming_it() {
    let s = Scratch::new();
    let data = topics(&s);
    let f = train_file(&s, "a", &data, "max_steps = 4\nbatch_size = 8");
    assert_ok(&train(&s, &f, &[]));
    let a = s.path("a");
    let resume = ["--resume", a.to_str().unwrap()];
    for (body, says) in [
        (
            "max_steps = 4\nbatch_size = 16",
            "optim.batch_size: 8 in the checkpoint, 16 in this file",
        ),
        ("max_steps = 4\nbatch_size = 8\nlr = 0.5", "optim.lr"),
    ] {
        let g = train_file(&s, "b", &data, body);
        let o = train(&s, &g, &resume);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }
    let text = std::fs::read_to_string(&f).unwrap();
    let g = s.write("seed.toml", text.replace("seed = 3", "seed = 4"));
    let o = train(&s, &g, &resume);
    assert!(
        stderr(&o).contains("seed: 3 in the checkpoint, 4 in this file"),
        "{}",
        stderr(&o)
    );
    let g = s.write(
        "tokens.toml",
        text.replace("max_tokens = 16", "max_tokens = 12"),
    );
    let o = train(&s, &g, &resume);
    assert!(stderr(&o).contains("data.max_tokens: 16"), "{}", stderr(&o));
    // Another number of ranks.
    let o = train(
        &s,
        &f,
        &["--resume", s.path("a").to_str().unwrap(), "--nproc", "2"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("ranks: 1 in the checkpoint, 2 now"),
        "{}",
        stderr(&o)
    );
    // Nothing was trained on: the checkpoint is the one of step 4.
    assert!(last_checkpoint(&s.path("a")).ends_with("step-00000004"));
}

/// Final weights of two runs agree within `tol` (relative to 1 + |w|).
fn close(a: &Path, b: &Path, tol: f32) {
    let a = tensors(&last_checkpoint(a).join("model.safetensors"));
    let b = tensors(&last_checkpoint(b).join("model.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, x) in &a {
        for (u, v) in x.iter().zip(&b[name]) {
            assert!((u - v).abs() <= tol * (1.0 + u.abs()), "{name}: {u} vs {v}");
        }
    }
}

#[test]
fn ranks_take_the_steps_of_one_process_with_their_accumulation() {
    let s = Scratch::new();
    let data = topics(&s);
    let optim = "epochs = 2\nbatch_size = 8\nlr = 0.01";
    for ranks in [2usize, 3] {
        let one = train_file(
            &s,
            &format!("one{ranks}"),
            &data,
            &format!("{optim}\ngrad_accum = {ranks}"),
        );
        assert_ok(&train(&s, &one, &[]));
        let many = train_file(&s, &format!("many{ranks}"), &data, optim);
        let n = ranks.to_string();
        assert_ok(&train(&s, &many, &["--nproc", &n]));
        let (a, ea) = lines(&s.path(&format!("one{ranks}")));
        let (b, eb) = lines(&s.path(&format!("many{ranks}")));
        // The same steps of the same rows, the same loss curve.
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["rows"], y["rows"]);
            let (u, v) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
            assert!(
                (u - v).abs() < 1e-4 * (1.0 + u),
                "step {}: {u} vs {v}",
                x["step"]
            );
        }
        // Every training row once an epoch, across the ranks.
        let t = ea[0]["train_rows"].as_u64().unwrap();
        let rows: u64 = b
            .iter()
            .filter(|l| l["epoch"] == 0)
            .map(|l| l["rows"].as_u64().unwrap())
            .sum();
        assert_eq!(rows, t);
        assert_eq!(
            ea.last().unwrap()["val_rows"],
            eb.last().unwrap()["val_rows"]
        );
        assert_eq!(eb[0]["ranks"], ranks);
        close(
            &s.path(&format!("one{ranks}")),
            &s.path(&format!("many{ranks}")),
            2e-4,
        );
    }
}

#[test]
fn zero_shards_the_optimizer_and_gives_the_same_weights() {
    let s = Scratch::new();
    let data = topics(&s);
    let optim = "max_steps = 30\nbatch_size = 8\nlr = 0.01\nclip_norm = 1.0";
    let plain = train_file(&s, "plain", &data, optim);
    assert_ok(&train(&s, &plain, &["--nproc", "2"]));
    let zero = train_file(&s, "zero", &data, &format!("{optim}\nzero = true"));
    assert_ok(&train(&s, &zero, &["--nproc", "2"]));
    let (a, b) = (
        last_checkpoint(&s.path("plain")),
        last_checkpoint(&s.path("zero")),
    );
    // Each parameter is stepped on its own: the same bits.
    let bytes = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert!(bytes(&a) == bytes(&b), "ZeRO changed the weights");
    // Each rank holds about half the optimizer state.
    let size = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().len() as f64;
    let whole = size(a.join("optimizer.mpk"));
    for r in 0..2 {
        let part = size(b.join(format!("optimizer-rank-{r}.mpk")));
        assert!(
            part < 0.7 * whole && part > 0.3 * whole,
            "rank {r}: {part} of {whole}"
        );
    }
    // A ZeRO run resumes on its ranks' own state.
    let stop = train_file(
        &s,
        "stop",
        &data,
        &format!("{optim}\nzero = true\nstop_after = 14"),
    );
    assert_ok(&train(&s, &stop, &["--nproc", "2"]));
    let o = train(
        &s,
        &zero,
        &["--nproc", "2", "--resume", s.path("stop").to_str().unwrap()],
    );
    assert_ok(&o);
    let resumed = last_checkpoint(&s.path("stop")).join("model.safetensors");
    assert!(std::fs::read(b.join("model.safetensors")).unwrap() == std::fs::read(resumed).unwrap());
}

/// The pids of `parent`'s children, and each one's RANK.
fn ranks_of(parent: u32) -> Vec<(u32, String)> {
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|p| {
            let pid: u32 = p.parse().ok()?;
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let rank = env
                .split(|&b| b == 0)
                .find_map(|v| v.strip_prefix(b"RANK="))
                .map(|v| String::from_utf8_lossy(v).into_owned())?;
            Some((pid, rank))
        })
        .collect()
}

#[test]
fn a_killed_rank_stops_the_job_and_a_resume_ends_with_the_same_weights() {
    let s = Scratch::new();
    let data = topics(&s);
    let optim = "epochs = 12\nbatch_size = 8\nlr = 0.003";
    let whole = train_file(&s, "whole", &data, optim);
    assert_ok(&train(&s, &whole, &["--nproc", "2"]));
    let killed = train_file(&s, "killed", &data, optim);
    let mut job = kiln()
        .args(["train", killed.to_str().unwrap(), "-q", "--nproc", "2"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let checkpointed = || {
        std::fs::read_dir(s.path("killed/checkpoints")).is_ok_and(|r| {
            r.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
    };
    while !checkpointed() {
        assert!(started.elapsed().as_secs() < 120 && job.try_wait().unwrap().is_none());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (pid, _) = ranks_of(job.id())
        .into_iter()
        .find(|(_, r)| r == "1")
        .expect("rank 1 is running");
    let killed_at = std::time::Instant::now();
    unsafe_kill(pid);
    let out = job.wait_with_output().unwrap();
    // Rank 0 learns at once and the job ends with an error, not a hang.
    assert!(
        killed_at.elapsed().as_secs() < 20,
        "{:?}",
        killed_at.elapsed()
    );
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("rank 1 went away") && e.contains("rank 1 was killed"),
        "{e}"
    );
    assert!(!last_checkpoint(&s.path("killed")).ends_with("step-00000240"));
    let o = train(
        &s,
        &killed,
        &[
            "--nproc",
            "2",
            "--resume",
            s.path("killed").to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    let (a, b) = (
        last_checkpoint(&s.path("whole")),
        last_checkpoint(&s.path("killed")),
    );
    assert_eq!(a.file_name(), b.file_name());
    // The reduction is in a fixed order: the same bytes.
    let bytes = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert!(bytes(&a) == bytes(&b), "the resumed job's weights differ");
}

fn unsafe_kill(pid: u32) {
    let o = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn ranks_that_cannot_meet_are_refused_or_time_out() {
    let s = Scratch::new();
    let data = topics(&s);
    let f = train_file(&s, "a", &data, "max_steps = 2\nbatch_size = 8");
    // Rank 1 of 2 with nobody listening: a bounded wait, then an error.
    let o = kiln()
        .args(["train", f.to_str().unwrap(), "-q"])
        .env("WORLD_SIZE", "2")
        .env("RANK", "1")
        .env("MASTER_PORT", "9")
        .env("KILN_DIST_TIMEOUT", "2")
        .output()
        .unwrap();
    // Retriable: rank 0 may only be late.
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot reach rank 0"), "{}", stderr(&o));
    let o = kiln()
        .args(["train", f.to_str().unwrap(), "-q"])
        .env("WORLD_SIZE", "2")
        .env("RANK", "two")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("RANK=\"two\""), "{}", stderr(&o));
}

#[test]
fn a_32k_token_text_trains_in_a_sliding_window_within_bounded_memory() {
    let s = Scratch::new();
    let words = ["goal", "match", "team", "bread", "oven", "salt"];
    let mut jsonl = String::new();
    for i in 0..2 {
        let text: Vec<&str> = (0..33000)
            .map(|j| words[(i * 7 + j * j) % words.len()])
            .collect();
        jsonl.push_str(&format!(
            "{{\"text\": \"{}\", \"label\": {i}}}\n",
            text.join(" ")
        ));
    }
    s.write("long.jsonl", jsonl);
    let pipeline = format!(
        "[[inputs]]\npath = \"{}\"\ncolumns = [\"label\"]\n\n[[stages]]\ntype = \"tokenize\"\ntokenizer = \"{}\"\n\n[output]\npath = \"{}\"\n",
        s.path("long.jsonl").display(),
        fixture_path("text/tokenizer.json"),
        s.path("long").display()
    );
    let p = s.write("long.toml", pipeline);
    assert_ok(&s.kiln(&["run", p.to_str().unwrap(), "-q"]));
    let f = s.write(
        "t.toml",
        format!(
            "[data]\npath = \"{}\"\nvalidation = 0.0\nmax_tokens = 32768\n\n[model]\nd_model = 16\nheads = 2\nattention = \"sliding\"\nwindow = 64\n\n[optim]\nmax_steps = 2\nbatch_size = 1\n\n[output]\npath = \"{}\"\n",
            s.path("long").display(),
            s.path("t").display()
        ),
    );
    assert_ok(&train(&s, &f, &[]));
    let (steps, _) = lines(&s.path("t"));
    assert_eq!(steps.len(), 2);
    // Full attention's scores alone would be 32768^2 x 2 heads x 4 bytes
    // = 8 GiB; the sliding window's whole step stays under 1 GiB.
    let peak = steps[1]["peak_rss_mb"].as_f64().unwrap();
    assert!(peak < 1024.0, "peak {peak} MiB");
    // Refused: more than 32768 tokens, a window of 0.
    let bad = s.write(
        "bad.toml",
        std::fs::read_to_string(&f)
            .unwrap()
            .replace("max_tokens = 32768", "max_tokens = 40000"),
    );
    let o = train(&s, &bad, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("data.max_tokens = 40000 is not in 1..=32768"),
        "{}",
        stderr(&o)
    );
}
