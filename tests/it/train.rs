//! `kiln train` on a dataset kiln built: a separable text classification
//! task learned well above chance; a run stopped at a checkpoint and
//! resumed ends with the same weights as one never stopped; two
//! micro-batches of b make the same update as one batch of 2b; training
//! files, datasets and checkpoints that do not fit are refused before
//! training.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::*;

/// 400 sentences of two topics with disjoint words, tokenized with the
/// fixture tokenizer; `label` is the topic's name.
pub(crate) fn topics(s: &Scratch) -> PathBuf {
    let sport = [
        "goal", "match", "team", "player", "score", "coach", "ball", "league", "win", "referee",
    ];
    let kitchen = [
        "bread", "oven", "salt", "butter", "recipe", "flour", "soup", "pan", "sugar", "knife",
    ];
    let mut lines = String::new();
    let mut x: u64 = 7;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    for i in 0..400 {
        let (words, label) = match i % 2 {
            0 => (&sport, "sport"),
            _ => (&kitchen, "kitchen"),
        };
        let n = 5 + next() % 6;
        let text: Vec<&str> = (0..n).map(|_| words[next() % words.len()]).collect();
        // A second task: does the sentence hold its topic's first word?
        let key = match text.contains(&words[0]) {
            true => "key",
            false => "nokey",
        };
        lines.push_str(&format!(
            "{{\"text\": \"{}\", \"label\": \"{label}\", \"key\": \"{key}\"}}\n",
            text.join(" ")
        ));
    }
    s.write("topics.jsonl", lines);
    let pipeline = format!(
        "[[inputs]]\npath = \"{}\"\ncolumns = [\"label\", \"key\"]\n\n[[stages]]\ntype = \"tokenize\"\ntokenizer = \"{}\"\n\n[output]\npath = \"{}\"\nmax_shard_rows = 50\n",
        s.path("topics.jsonl").display(),
        fixture_path("text/tokenizer.json"),
        s.path("topics").display()
    );
    let p = s.write("topics.toml", pipeline);
    assert_ok(&s.kiln(&["run", p.to_str().unwrap(), "-q"]));
    s.path("topics")
}

pub(crate) fn train_file(s: &Scratch, name: &str, data: &Path, optim: &str) -> PathBuf {
    train_file_with(s, name, data, optim, "")
}

pub(crate) fn train_file_with(
    s: &Scratch,
    name: &str,
    data: &Path,
    optim: &str,
    data_extra: &str,
) -> PathBuf {
    s.write(
        &format!("{name}.toml"),
        format!(
            "seed = 3\n\n[data]\npath = \"{}\"\nvalidation = 0.2\nmax_tokens = 16\n{data_extra}\n\n[model]\nd_model = 32\nheads = 4\n\n[optim]\n{optim}\n\n[checkpoint]\nevery = 10\nkeep = 2\n\n[output]\npath = \"{}\"\n",
            data.display(),
            s.path(name).display()
        ),
    )
}

/// `kiln train` on `NAME.toml` (`body` and an `[output]` in `NAME`) is
/// refused (exit 2) before anything is written: its message.
fn refused(s: &Scratch, name: &str, body: &str, args: &[&str]) -> String {
    let f = s.write(
        &format!("{name}.toml"),
        format!(
            "{body}\n\n[output]\npath = \"{}\"\n",
            s.path(name).display()
        ),
    );
    let o = train(s, &f, args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!s.path(name).exists(), "refused before anything is written");
    stderr(&o)
}

pub(crate) fn train(s: &Scratch, file: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["train", file.to_str().unwrap(), "-q"];
    args.extend_from_slice(extra);
    s.kiln(&args)
}

/// The f32 tensors of a safetensors file, by name.
pub(crate) fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(t["dtype"], "F32", "{name}");
        let [a, b] = [
            t["data_offsets"][0].as_u64().unwrap() as usize,
            t["data_offsets"][1].as_u64().unwrap() as usize,
        ];
        let v = data[a..b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.insert(name.clone(), v);
    }
    out
}

/// The lines of a run's metrics.jsonl.
pub(crate) fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The last validation accuracy logged.
fn last_accuracy(lines: &[serde_json::Value]) -> f64 {
    lines
        .iter()
        .rev()
        .find_map(|l| l.get("val_accuracy").and_then(|a| a.as_f64()))
        .unwrap()
}

pub(crate) fn last_checkpoint(dir: &Path) -> PathBuf {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("step-")
        })
        .collect();
    all.sort();
    all.pop().unwrap()
}

#[test]
fn a_separable_task_is_learned_well_above_chance() {
    let s = Scratch::new();
    let data = topics(&s);
    let f = train_file(
        &s,
        "run",
        &data,
        "max_steps = 150\nbatch_size = 16\nlr = 0.003\nwarmup_steps = 10\nclip_norm = 1.0",
    );
    let o = train(&s, &f, &[]);
    assert_ok(&o);
    let lines = metrics(&s.path("run"));
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    assert_eq!(steps.len(), 150);
    let accuracy = last_accuracy(&lines);
    assert!(
        accuracy >= 0.9,
        "validation accuracy {accuracy} (chance is 0.5)"
    );
    let first = steps[0]["loss"].as_f64().unwrap();
    let last = steps[149]["loss"].as_f64().unwrap();
    assert!(last < first / 2.0, "loss fell: {first} -> {last}");
    // The gradient's norm, logged each step.
    assert!(steps.iter().all(|l| l["grad_norm"].as_f64().unwrap() > 0.0));
    // The warmup and the cosine in the log.
    assert!((steps[0]["lr"].as_f64().unwrap() - 0.0003).abs() < 1e-12);
    assert!(steps[149]["lr"].as_f64().unwrap() < 1e-6);
    // The curves, for people who would rather look than read.
    // plot.svg: the loss and the learning rate with their axes, ticks and
    // hover values.
    let plot = std::fs::read_to_string(s.path("run/plot.svg")).unwrap();
    assert!(!s.path("run/plot.png").exists());
    for text in [
        "data-x-axis=\"step\" data-y-axis=\"loss (nats per sample)\"",
        "data-x-axis=\"step\" data-y-axis=\"learning rate\"",
        ">\nstep\n</text>",
        ">\n100\n</text>",
        "<title>training: step = 150, loss (nats per sample) = ",
    ] {
        assert!(plot.contains(text), "plot.svg lacks {text}");
    }
    // Two checkpoints kept, each with its weights.
    let kept: Vec<_> = std::fs::read_dir(s.path("run/checkpoints"))
        .unwrap()
        .collect();
    assert_eq!(kept.len(), 2);
    assert!(
        last_checkpoint(&s.path("run"))
            .join("model.safetensors")
            .exists()
    );
}

#[test]
fn two_tasks_share_a_learned_weight_of_their_losses() {
    let s = Scratch::new();
    let data = topics(&s);
    let f = train_file_with(
        &s,
        "multi",
        &data,
        "max_steps = 150\nbatch_size = 16\nlr = 0.003\nwarmup_steps = 10",
        "second_label = \"key\"",
    );
    assert_ok(&train(&s, &f, &[]));
    let lines = metrics(&s.path("multi"));
    let last = lines
        .iter()
        .rev()
        .find(|l| l.get("val_accuracy").is_some())
        .unwrap();
    assert!(last["val_accuracy"].as_f64().unwrap() >= 0.9);
    assert!(
        last["val_accuracy_2"].as_f64().is_some(),
        "the second head is evaluated"
    );
    // The weight is learned: w = sigmoid(...) stays in (0, 1) and moves
    // towards the task whose loss is lower (the topic), as
    // `w * loss1 + (1 - w) * loss2` makes it.
    let weights: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.get("task_weight").and_then(|w| w.as_f64()))
        .collect();
    assert_eq!(weights.len(), 150);
    assert!(weights.iter().all(|&w| w > 0.0 && w < 1.0));
    assert!(
        weights[149] > weights[0] + 0.1,
        "{} -> {}",
        weights[0],
        weights[149]
    );
}

#[test]
fn a_stopped_run_resumed_ends_with_the_same_weights() {
    let s = Scratch::new();
    let data = topics(&s);
    let optim = "max_steps = 40\nbatch_size = 8\nlr = 0.003\nwarmup_steps = 5";
    let whole = train_file(&s, "whole", &data, optim);
    assert_ok(&train(&s, &whole, &[]));
    // Stopped after step 20 (mid-epoch: 320 training rows are 40 batches),
    // then resumed to the end.
    let parts = train_file(&s, "parts", &data, &format!("{optim}\nstop_after = 20"));
    assert_ok(&train(&s, &parts, &[]));
    assert!(last_checkpoint(&s.path("parts")).ends_with("step-00000020"));
    let rest = train_file(&s, "rest", &data, optim);
    let o = train(&s, &rest, &["--resume", s.path("parts").to_str().unwrap()]);
    assert_ok(&o);
    let a = last_checkpoint(&s.path("whole"));
    let b = last_checkpoint(&s.path("parts"));
    assert!(a.ends_with("step-00000040") && b.ends_with("step-00000040"));
    assert_eq!(
        tensors(&a.join("model.safetensors")),
        tensors(&b.join("model.safetensors")),
        "the final weights are the same"
    );
}

#[test]
fn a_killed_run_resumes_from_its_last_checkpoint_to_the_same_weights() {
    let s = Scratch::new();
    let data = topics(&s);
    let optim = "max_steps = 160\nbatch_size = 8\nlr = 0.003\nwarmup_steps = 5";
    let whole = train_file(&s, "whole", &data, optim);
    assert_ok(&train(&s, &whole, &[]));
    // SIGKILL once the first checkpoint is there, wherever the run is.
    let killed = train_file(&s, "killed", &data, optim);
    let mut child = kiln()
        .args(["train", killed.to_str().unwrap(), "-q"])
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let written = || {
        std::fs::read_dir(s.path("killed/checkpoints")).is_ok_and(|r| {
            r.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
    };
    while !written() && child.try_wait().unwrap().is_none() {
        assert!(started.elapsed().as_secs() < 120);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let running = child.try_wait().unwrap().is_none();
    child.kill().ok();
    child.wait().unwrap();
    assert!(running, "the run was killed before it finished");
    assert!(!last_checkpoint(&s.path("killed")).ends_with("step-00000160"));
    let o = train(
        &s,
        &killed,
        &["--resume", s.path("killed").to_str().unwrap()],
    );
    assert_ok(&o);
    let a = last_checkpoint(&s.path("whole"));
    let b = last_checkpoint(&s.path("killed"));
    assert!(b.ends_with("step-00000160"));
    // The same weights, and the same bytes.
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap()
    );
}

#[test]
fn two_micro_batches_make_the_update_of_one_batch_of_twice_the_size() {
    let s = Scratch::new();
    let data = topics(&s);
    let one = train_file(
        &s,
        "one",
        &data,
        "max_steps = 5\nbatch_size = 16\nlr = 0.01",
    );
    let two = train_file(
        &s,
        "two",
        &data,
        "max_steps = 5\nbatch_size = 8\ngrad_accum = 2\nlr = 0.01",
    );
    assert_ok(&train(&s, &one, &[]));
    assert_ok(&train(&s, &two, &[]));
    let a = tensors(&last_checkpoint(&s.path("one")).join("model.safetensors"));
    let b = tensors(&last_checkpoint(&s.path("two")).join("model.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, x) in &a {
        for (u, v) in x.iter().zip(&b[name]) {
            assert!(
                (u - v).abs() <= 1e-4 * (1.0 + u.abs()),
                "{name}: {u} vs {v}"
            );
        }
    }
}

#[test]
fn what_does_not_fit_is_refused_before_training() {
    let s = Scratch::new();
    let data = topics(&s);
    // A vocabulary smaller than the ids the dataset holds.
    let body = format!("[data]\npath = \"{}\"\nvocab_size = 10", data.display());
    let e = refused(&s, "small", &body, &[]);
    assert!(e.contains("vocab_size = 10"), "{e}");
    // A dataset without labels.
    let images = s.path("nolabel");
    let p = s.write(
        "nolabel.toml",
        format!(
            "[[inputs]]\npath = \"{}/*.jsonl\"\n\n[[stages]]\ntype = \"tokenize\"\ntokenizer = \"{}\"\n\n[output]\npath = \"{}\"\n",
            fixture_path("text"),
            fixture_path("text/tokenizer.json"),
            images.display()
        ),
    );
    assert_ok(&s.kiln(&["run", p.to_str().unwrap(), "-q"]));
    let e = refused(
        &s,
        "nl",
        &format!("[data]\npath = \"{}\"", images.display()),
        &[],
    );
    assert!(e.contains("no `label` column"), "{e}");
    // A checkpoint of another model.
    let a = train_file(&s, "a", &data, "max_steps = 2\nbatch_size = 8");
    assert_ok(&train(&s, &a, &[]));
    let b = s.write(
        "b.toml",
        format!(
            "[data]\npath = \"{}\"\nmax_tokens = 16\n\n[model]\nd_model = 16\nheads = 2\n\n[optim]\nmax_steps = 4\n\n[output]\npath = \"{}\"\n",
            data.display(),
            s.path("a").display()
        ),
    );
    let o = train(&s, &b, &["--resume", s.path("a").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("model.d_model: 32 in the checkpoint, 16 in this file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_bad_training_file_is_refused_at_its_key_and_line() {
    let s = Scratch::new();
    for (name, table, key) in [
        ("typed", "[model]\nheads = \"four\"", "model.heads"),
        ("unknown", "[optim]\nbatchsize = 8", "optim.batchsize"),
        ("checked", "[optim]\ngrad_accum = 0", "optim.grad_accum"),
        ("mixed", "[mix]\nprob = 2.0", "mix.prob"),
    ] {
        let body = format!(
            "seed = 1\n\n[data]\npath = \"{}\"\n\n{table}",
            s.path("none").display()
        );
        let e = refused(&s, name, &body, &[]);
        assert!(e.contains("invalid training file "), "{e}");
        assert!(
            e.contains(&format!("{name}.toml, line 7, key `{key}`: ")),
            "{e}"
        );
    }
}

#[test]
fn the_example_trains_on_the_multimodal_example() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("multimodal");
    run_example("multimodal.toml", &data, "2");
    let o = kiln()
        .current_dir(root())
        .args(["train", "pipelines/train.toml", "-q", "--data"])
        .arg(&data)
        .arg("--output")
        .arg(out.path().join("train"))
        .output()
        .unwrap();
    assert_ok(&o);
    // The README's main pair learns: three classes, each told by a caption,
    // a picture and a sound that are right two times in three.
    let metrics = std::fs::read_to_string(out.path().join("train/metrics.jsonl")).unwrap();
    let accuracy = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["val_accuracy"].as_f64())
        .next_back()
        .expect("an evaluation line");
    assert!(
        accuracy >= 0.6,
        "validation accuracy {accuracy}: chance is 0.33"
    );
    assert!(out.path().join("train/plot.svg").is_file());
    assert!(
        last_checkpoint(&out.path().join("train"))
            .join("model.safetensors")
            .exists()
    );
}

/// 48 images of two classes told apart by colour, with noise; kiln stores
/// them as 16 x 16 `pixel_values` (the folder name is the label).
fn colours(s: &Scratch) -> PathBuf {
    let mut x: u64 = 11;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as u32
    };
    for (class, base) in [("blue", [40u32, 60, 190]), ("red", [190, 50, 40])] {
        let dir = s.path(&format!("colours/{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..24 {
            let img = image::RgbImage::from_fn(20, 20, |_, _| {
                image::Rgb(base.map(|c| (c + next() % 60).min(255) as u8))
            });
            img.save(dir.join(format!("{i:02}.png"))).unwrap();
        }
    }
    let pipeline = format!(
        "[[inputs]]\npath = \"{}\"\nformat = \"images\"\n\n[[stages]]\ntype = \"decode_image\"\n\n[[stages]]\ntype = \"resize_image\"\nsize = 16\ncrop = 16\n\n[[stages]]\ntype = \"to_tensor\"\n\n[output]\npath = \"{}\"\nmax_shard_rows = 16\n",
        s.path("colours").display(),
        s.path("colours_ds").display()
    );
    let p = s.write("colours.toml", pipeline);
    assert_ok(&s.kiln(&["run", p.to_str().unwrap(), "-q"]));
    s.path("colours_ds")
}

fn pixel_file(s: &Scratch, name: &str, data: &Path, optim: &str, mix: &str) -> PathBuf {
    s.write(
        &format!("{name}.toml"),
        format!(
            "seed = 5\n\n[data]\npath = \"{}\"\nvalidation = 0.25\n\n[model]\nd_model = 16\nheads = 2\npatch = 4\n\n[optim]\n{optim}\n\n[checkpoint]\nevery = 10\n\n{mix}\n\n[output]\npath = \"{}\"\n",
            data.display(),
            s.path(name).display()
        ),
    )
}

#[test]
fn pixels_mixed_online_are_learned_and_a_resumed_run_mixes_the_same() {
    let s = Scratch::new();
    let data = colours(&s);
    let mix = "[mix]\nmode = \"elem\"\nmixup_alpha = 0.8\ncutmix_alpha = 1.0\nswitch_prob = 0.5";
    let optim = "max_steps = 40\nbatch_size = 8\nlr = 0.01\nwarmup_steps = 4";
    let whole = pixel_file(&s, "whole", &data, optim, mix);
    assert_ok(&train(&s, &whole, &[]));
    let lines = metrics(&s.path("whole"));
    let accuracy = last_accuracy(&lines);
    assert!(
        accuracy >= 0.8,
        "validation accuracy {accuracy} (chance is 0.5)"
    );
    assert!(lines.iter().any(|l| l["device"] == "cpu (fp32)"));
    // Stopped mid-epoch and resumed: the same mixing, the same weights.
    let parts = pixel_file(
        &s,
        "parts",
        &data,
        &format!("{optim}\nstop_after = 15"),
        mix,
    );
    assert_ok(&train(&s, &parts, &[]));
    let rest = pixel_file(&s, "rest", &data, optim, mix);
    assert_ok(&train(
        &s,
        &rest,
        &["--resume", s.path("parts").to_str().unwrap()],
    ));
    let a = last_checkpoint(&s.path("whole"));
    let b = last_checkpoint(&s.path("parts"));
    assert!(a.ends_with("step-00000040") && b.ends_with("step-00000040"));
    assert_eq!(
        tensors(&a.join("model.safetensors")),
        tensors(&b.join("model.safetensors"))
    );
    // Mixing changes the updates: without it the weights differ.
    let plain = pixel_file(&s, "plain", &data, optim, "");
    assert_ok(&train(&s, &plain, &[]));
    assert_ne!(
        tensors(&a.join("model.safetensors")),
        tensors(&last_checkpoint(&s.path("plain")).join("model.safetensors"))
    );
}

#[test]
fn devices_precisions_and_mixing_that_cannot_run_are_refused() {
    let s = Scratch::new();
    let data = topics(&s);
    let refused = |name: &str, optim: &str, extra: &str, args: &[&str]| {
        let body = format!(
            "[data]\npath = \"{}\"\n\n[optim]\nmax_steps = 1\n{optim}\n\n{extra}",
            data.display()
        );
        refused(&s, name, &body, args)
    };
    let e = refused("mixtext", "", "[mix]\ncutmix_alpha = 1.0", &[]);
    assert!(e.contains("[mix] mixes `pixel_values`"), "{e}");
    let e = refused("prob", "", "[mix]\nprob = 2.0", &[]);
    assert!(e.contains("mix.prob"), "{e}");
    let e = refused("bf16", "precision = \"bf16\"", "", &["--device", "cpu"]);
    assert!(e.contains("mixed precision is for the GPU"), "{e}");
    // `cuda` never falls back: on a host without a GPU it says why.
    let f = train_file(&s, "gpu", &data, "max_steps = 1");
    let o = s.kiln(&["train", f.to_str().unwrap(), "--device", "cuda"]);
    if o.status.code() == Some(2) {
        assert!(stderr(&o).contains("no GPU to train on"), "{}", stderr(&o));
    } else {
        assert_ok(&o);
        assert!(stderr(&o).contains("training on cuda:0"), "{}", stderr(&o));
    }
}
