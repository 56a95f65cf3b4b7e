//! Smaller models from `kiln train`: quantisation-aware training and
//! post-training quantisation ending in an int8 model evaluated on
//! integers, channels pruned out of the saved model, a student distilled
//! from a larger teacher (alpha = 0 is plain training, to the byte),
//! activation statistics with warnings, all of them in one run resumed
//! after a SIGKILL to the same bytes, and the examples in pipelines/.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::train::{last_checkpoint, metrics, tensors, topics, train, train_file};

const OPTIM: &str =
    "max_steps = 80\nbatch_size = 16\nlr = 0.003\nwarmup_steps = 5\nclip_norm = 1.0";

/// A safetensors file's header.
fn header(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

fn int8_line(dir: &Path) -> serde_json::Value {
    metrics(dir)
        .into_iter()
        .find(|l| l["precision"] == "int8")
        .expect("the int8 model's evaluation")
}

#[test]
fn qat_writes_an_int8_model_that_integers_evaluate_as_well_as_float() {
    let s = Scratch::new();
    let data = topics(&s);
    let f = train_file(
        &s,
        "qat",
        &data,
        &format!("{OPTIM}\n\n[quant]\nqat = true\ncalibration_steps = 5"),
    );
    assert_ok(&train(&s, &f, &[]));
    let lines = metrics(&s.path("qat"));
    // Evaluations after the calibration are of the fake-quantised model.
    let fake = lines
        .iter()
        .rfind(|l| l["precision"] == "fake_int8")
        .expect("a fake-quantised evaluation");
    let int8 = int8_line(&s.path("qat"));
    let (a, b) = (
        fake["val_accuracy"].as_f64().unwrap(),
        int8["val_accuracy"].as_f64().unwrap(),
    );
    assert!(b >= 0.9, "int8 accuracy {b}");
    assert!((a - b).abs() <= 0.03, "fake-quantised {a}, int8 {b}");
    assert_eq!(int8["qat"], true);
    // Integer weights with their scales, a quarter of the float size and
    // less (the embeddings stay float).
    let h = header(&s.path("qat/model-int8.safetensors"));
    assert_eq!(h["attention.query.weight"]["dtype"], "I8");
    assert_eq!(
        h["attention.query.weight"]["shape"],
        serde_json::json!([32, 32])
    );
    assert_eq!(
        h["attention.query.weight_scale"]["shape"],
        serde_json::json!([32])
    );
    assert_eq!(h["attention.query.input_zero_point"]["dtype"], "U8");
    assert_eq!(h["tokens.weight"]["dtype"], "F32");
    assert!(
        h["__metadata__"]["dims"]
            .as_str()
            .unwrap()
            .contains("\"d_model\":32")
    );
    assert!(int8["model_bytes"].as_u64().unwrap() < int8["float_bytes"].as_u64().unwrap());
}

#[test]
fn post_training_quantisation_calibrates_the_trained_model() {
    let s = Scratch::new();
    let data = topics(&s);
    let f = train_file(
        &s,
        "ptq",
        &data,
        &format!("{OPTIM}\n\n[quant]\nqat = false\ncalibration_steps = 4"),
    );
    assert_ok(&train(&s, &f, &[]));
    let lines = metrics(&s.path("ptq"));
    // Training evaluations are float; the last is the int8 model's.
    assert!(
        lines
            .iter()
            .filter(|l| l.get("val_accuracy").is_some())
            .rev()
            .skip(1)
            .all(|l| l["precision"] == "fp32")
    );
    let int8 = int8_line(&s.path("ptq"));
    assert_eq!(int8["qat"], false);
    assert!(int8["val_accuracy"].as_f64().unwrap() >= 0.85, "{int8}");
}

#[test]
fn pruning_removes_the_channels_from_the_saved_model_in_rounds() {
    let s = Scratch::new();
    let data = topics(&s);
    let f = train_file(
        &s,
        "pruned",
        &data,
        &format!(
            "{OPTIM}\n\n[prune]\nratio = 0.5\nrounds = 2\nscore_steps = 5\nstart = 20\nevery = 15"
        ),
    );
    assert_ok(&train(&s, &f, &[]));
    let lines = metrics(&s.path("pruned"));
    let rounds: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("pruned").is_some()).collect();
    assert_eq!(rounds.len(), 2);
    // 4 heads of 8: a quarter of each head after round 1, half after 2.
    assert_eq!(
        (rounds[0]["step"].as_u64(), rounds[0]["qk"].as_u64()),
        (Some(20), Some(6))
    );
    assert_eq!(
        (rounds[1]["step"].as_u64(), rounds[1]["qk"].as_u64()),
        (Some(35), Some(4))
    );
    assert!(rounds[1]["params"].as_u64() < rounds[0]["params"].as_u64());
    let w = tensors(&last_checkpoint(&s.path("pruned")).join("model.safetensors"));
    assert_eq!(w["attention.query.weight"].len(), 32 * 16);
    assert_eq!(w["attention.output.weight"].len(), 16 * 32);
    let acc = lines
        .iter()
        .rev()
        .find_map(|l| l["val_accuracy"].as_f64())
        .unwrap();
    assert!(acc >= 0.9, "accuracy after pruning {acc}");
}

/// A teacher of twice the width on the topics, trained once a test.
fn teacher(s: &Scratch, data: &Path) -> PathBuf {
    let f = train_file(s, "teacher", data, OPTIM);
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("d_model = 32", "d_model = 64");
    std::fs::write(&f, text).unwrap();
    assert_ok(&train(s, &f, &[]));
    s.path("teacher")
}

#[test]
fn a_student_learns_from_its_teacher_and_alpha_zero_is_plain_training() {
    let s = Scratch::new();
    let data = topics(&s);
    let t = teacher(&s, &data);
    let distill = |alpha: f64| {
        format!(
            "{OPTIM}\n\n[distill]\nteacher = \"{}\"\ntemperature = 2.0\nalpha = {alpha}",
            t.display()
        )
    };
    let alone = train_file(&s, "alone", &data, OPTIM);
    let zero = train_file(&s, "zero", &data, &distill(0.0));
    let taught = train_file(&s, "taught", &data, &distill(0.7));
    for f in [&alone, &zero, &taught] {
        assert_ok(&train(&s, f, &[]));
    }
    let bytes =
        |n: &str| std::fs::read(last_checkpoint(&s.path(n)).join("model.safetensors")).unwrap();
    assert!(
        bytes("alone") == bytes("zero"),
        "alpha = 0 trains as if no teacher were there"
    );
    assert!(bytes("alone") != bytes("taught"));
    let lines = metrics(&s.path("taught"));
    let kl: Vec<f64> = lines
        .iter()
        .filter_map(|l| l["distill_kl"].as_f64())
        .collect();
    assert_eq!(kl.len(), 80);
    assert!(kl.iter().all(|k| k.is_finite() && *k >= 0.0));
    assert!(
        kl[79] < kl[0],
        "the student moves toward the teacher: {} -> {}",
        kl[0],
        kl[79]
    );
    // A teacher of other classes is refused, naming them.
    let other =
        crate::train::train_file_with(&s, "other", &data, &distill(0.5), "second_label = \"key\"");
    let o = train(&s, &other, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("second task's classes: 0 in the teacher, 2 in this run"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn activation_statistics_are_logged_and_explosions_warned_of() {
    let s = Scratch::new();
    let data = topics(&s);
    let f = train_file(
        &s,
        "watched",
        &data,
        "max_steps = 12\nbatch_size = 16\nlr = 0.003",
    );
    let text = std::fs::read_to_string(&f).unwrap() + "monitor_every = 4\n";
    std::fs::write(&f, text).unwrap();
    let o = train(&s, &f, &[]);
    assert_ok(&o);
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = metrics(&s.path("watched"))
        .into_iter()
        .filter(|l| l.get("activations").is_some())
        .collect();
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![4, 8, 12]);
    let layers = lines[0]["activations"].as_object().unwrap();
    for layer in [
        "attention.query",
        "attention.key",
        "attention.value",
        "attention.output",
        "head",
    ] {
        let l = &layers[layer];
        for k in ["mean", "std", "max_abs", "zero", "saturated"] {
            assert!(l[k].as_f64().is_some(), "{layer}.{k}: {l}");
        }
        assert!(l["std"].as_f64().unwrap() > 0.0 && l["zero"].as_f64().unwrap() < 0.5);
    }
    // A learning rate that blows the weights up is warned of.
    let f = train_file(
        &s,
        "blown",
        &data,
        "max_steps = 12\nbatch_size = 16\nlr = 1000000.0\nweight_decay = 0.0",
    );
    let text = std::fs::read_to_string(&f).unwrap() + "monitor_every = 1\n";
    std::fs::write(&f, text).unwrap();
    let o = train(&s, &f, &[]);
    let e = stderr(&o);
    assert!(
        e.contains("kiln: warning: step ") && e.contains(" activations: "),
        "{e}"
    );
}

#[test]
fn qat_pruning_and_distillation_killed_mid_run_resume_to_the_same_bytes() {
    let s = Scratch::new();
    let data = topics(&s);
    let t = teacher(&s, &data);
    let optim = format!(
        "{OPTIM}\n\n[quant]\ncalibration_steps = 5\n\n[prune]\nratio = 0.5\nrounds = 2\nscore_steps = 10\nstart = 20\nevery = 15\n\n[distill]\nteacher = \"{}\"\nalpha = 0.5",
        t.display()
    );
    let write = |name: &str| {
        let f = train_file(&s, name, &data, &optim);
        let text = std::fs::read_to_string(&f)
            .unwrap()
            .replace("every = 10", "every = 7")
            + "monitor_every = 10\n";
        std::fs::write(&f, text).unwrap();
        f
    };
    let whole = write("whole");
    assert_ok(&train(&s, &whole, &[]));
    // Killed once step 28 is written: after the first pruning, inside the
    // second round's scoring.
    let killed = write("killed");
    let mut child = kiln()
        .args(["train", killed.to_str().unwrap(), "-q"])
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !s.path("killed/checkpoints/step-00000028").exists()
        && child.try_wait().unwrap().is_none()
    {
        assert!(started.elapsed().as_secs() < 300);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let running = child.try_wait().unwrap().is_none();
    child.kill().ok();
    child.wait().unwrap();
    assert!(running, "the run was killed before it finished");
    assert!(!s.path("killed/model-int8.safetensors").exists());
    assert_ok(&train(
        &s,
        &killed,
        &["--resume", s.path("killed").to_str().unwrap()],
    ));
    let (a, b) = (
        last_checkpoint(&s.path("whole")),
        last_checkpoint(&s.path("killed")),
    );
    assert!(b.ends_with("step-00000080"));
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    assert!(
        read(a.join("model.safetensors")) == read(b.join("model.safetensors")),
        "the same final weights"
    );
    assert!(
        read(s.path("whole/model-int8.safetensors"))
            == read(s.path("killed/model-int8.safetensors")),
        "the same int8 model"
    );
    // Pruned twice, quantised, distilled: all in the one int8 file.
    let h = header(&s.path("whole/model-int8.safetensors"));
    assert_eq!(
        h["attention.query.weight"]["shape"],
        serde_json::json!([16, 32])
    );
}

#[test]
fn compression_settings_that_cannot_work_are_refused_at_their_key() {
    let s = Scratch::new();
    for (name, table, key) in [
        ("ratio", "[prune]\nratio = 1.5", "prune.ratio"),
        ("both", "[prune]\nratio = 0.5\ntau = 0.1", "prune.ratio"),
        (
            "start",
            "[prune]\nratio = 0.5\nscore_steps = 10\nstart = 5",
            "prune.start",
        ),
        (
            "alpha",
            "[distill]\nteacher = \"nowhere\"\nalpha = 2.0",
            "distill.alpha",
        ),
        (
            "teacher",
            "[distill]\nteacher = \"nowhere\"",
            "distill.teacher",
        ),
        (
            "calibration",
            "[quant]\ncalibration_steps = 0",
            "quant.calibration_steps",
        ),
        (
            "method",
            "[prune]\nratio = 0.5\nmethod = \"magnitude\"",
            "prune.method",
        ),
    ] {
        let f = s.write(
            &format!("{name}.toml"),
            format!(
                "[data]\npath = \"nowhere\"\n\n{table}\n\n[output]\npath = \"{}\"\n",
                s.path(name).display()
            ),
        );
        let o = train(&s, &f, &[]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(&format!("key `{key}`")), "{name}: {e}");
        assert!(!s.path(name).exists());
    }
}

#[test]
fn the_compression_examples_train_on_the_multimodal_example() {
    // From a scratch directory, as the README runs them from the root:
    // the teacher is `out/train`.
    // The committed rows only, which keep the five trainings short.
    let s = Scratch::new();
    let o = kiln()
        .current_dir(root())
        .args(["run", "pipelines/multimodal.toml", "-q", "--input"])
        .arg("fixtures/multimodal/rows.jsonl")
        .arg("--output")
        .arg(s.path("out/multimodal"))
        .output()
        .unwrap();
    assert_ok(&o);
    let example = |file: &str, output: &str| {
        let o = kiln()
            .current_dir(s.path(""))
            .args([
                "train",
                root().join("pipelines").join(file).to_str().unwrap(),
                "-q",
                "--output",
                output,
            ])
            .output()
            .unwrap();
        assert_ok(&o);
    };
    example("train.toml", "out/train");
    for (file, out) in [
        ("train_qat.toml", "out/qat"),
        ("train_prune.toml", "out/prune"),
        ("train_distill.toml", "out/distill"),
        ("train_compress.toml", "out/compress"),
    ] {
        example(file, out);
        let lines = metrics(&s.path(out));
        assert!(
            lines.iter().any(|l| l.get("val_accuracy").is_some()),
            "{file}"
        );
    }
    assert!(s.path("out/qat/model-int8.safetensors").exists());
    assert!(s.path("out/compress/model-int8.safetensors").exists());
    assert!(
        metrics(&s.path("out/prune"))
            .iter()
            .any(|l| l.get("pruned").is_some())
    );
}

#[test]
fn ranks_quantise_and_prune_as_one_process_does() {
    let s = Scratch::new();
    let data = topics(&s);
    let tables =
        "\n\n[quant]\ncalibration_steps = 5\n\n[prune]\nratio = 0.5\nscore_steps = 5\nstart = 20";
    let one = train_file(
        &s,
        "one",
        &data,
        &format!("max_steps = 40\nbatch_size = 8\ngrad_accum = 2\nlr = 0.003{tables}"),
    );
    let two = train_file(
        &s,
        "two",
        &data,
        &format!("max_steps = 40\nbatch_size = 8\nlr = 0.003\nzero = true{tables}"),
    );
    assert_ok(&train(&s, &one, &[]));
    assert_ok(&train(&s, &two, &["--nproc", "2"]));
    let (a, b) = (int8_line(&s.path("one")), int8_line(&s.path("two")));
    assert_eq!(a["params"], b["params"], "the same channels pruned");
    assert_eq!(
        a["val_rows"], b["val_rows"],
        "every held-out row evaluated once"
    );
    let (x, y) = (
        a["val_accuracy"].as_f64().unwrap(),
        b["val_accuracy"].as_f64().unwrap(),
    );
    assert!((x - y).abs() <= 0.05, "{x} vs {y}");
    let (h1, h2) = (
        header(&s.path("one/model-int8.safetensors")),
        header(&s.path("two/model-int8.safetensors")),
    );
    assert_eq!(
        h1["attention.query.weight"]["shape"],
        h2["attention.query.weight"]["shape"]
    );
}
