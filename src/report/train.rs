//! The page of a training run (a `kiln train` output folder): the run's
//! device, precision and speed, then loss, validation accuracy, learning
//! rate, gradient norm and task weight against the step, with the epochs
//! marked, validation accuracy against the epoch, compression events and
//! the checkpoints. Everything comes from `metrics.jsonl` (a step logged
//! twice, by a run resumed from an earlier checkpoint, counts once: its
//! last line) and the `checkpoints/` folder.
//!
//! `plot.svg`, which `kiln train` writes at the end of a run, is the loss
//! and learning-rate charts of this page in one picture
//! ([`crate::train::plot`]).

use std::path::Path;

use serde_json::Value;

use super::Outcome;
use super::html::Page;
use crate::chart::{self, Lines, Series};
use crate::error::Result;
use crate::train::plot::{Metrics, line_chart, loss_chart, lr_chart};

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub fn report(dir: &Path) -> Result<Outcome> {
    let m = Metrics::read(dir)?;
    let mut page = Page::new(&format!("kiln report: training run {}", dir.display()));
    let mut problems = Vec::new();
    if m.steps.is_empty() {
        problems.push("metrics.jsonl has no training step yet".to_string());
        page.problem(&problems[0]);
    }
    let last_eval = m
        .evals
        .values()
        .rfind(|v| v["precision"].as_str() != Some("int8"));
    let sum = |k: &str| m.steps.values().filter_map(|v| v[k].as_f64()).sum::<f64>();
    let (data, step) = (sum("data_s"), sum("step_s"));
    let epochs = m
        .steps
        .values()
        .filter_map(|v| v["epoch"].as_u64())
        .max()
        .map_or(0, |e| e + 1);
    let accuracy = |v: Option<&Value>| {
        v.and_then(|v| v["val_accuracy"].as_f64())
            .map_or("-".into(), |a| format!("{a:.3}"))
    };
    let best = m
        .evals
        .values()
        .filter_map(|v| v["val_accuracy"].as_f64())
        .fold(f64::NAN, f64::max);
    let rates: Vec<f64> = m
        .steps
        .values()
        .filter_map(|v| v["samples_per_s"].as_f64())
        .collect();
    let text = |v: Option<&Value>, k: &str| {
        v.map(|v| match &v[k] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            o => o.to_string(),
        })
        .unwrap_or_else(|| "-".into())
    };
    page.h2("Run", "run");
    page.table(
        &["", ""],
        &[
            vec!["device".into(), text(last_eval, "device")],
            vec!["precision".into(), text(last_eval, "precision")],
            vec!["processes".into(), text(last_eval, "ranks")],
            vec!["parameters".into(), text(last_eval, "params")],
            vec![
                "steps".into(),
                m.steps.keys().last().map_or("0".into(), |s| s.to_string()),
            ],
            vec!["epochs".into(), epochs.to_string()],
            vec![
                "training / validation rows".into(),
                format!(
                    "{} / {}",
                    text(last_eval, "train_rows"),
                    text(last_eval, "val_rows")
                ),
            ],
            vec![
                "validation accuracy (last, best)".into(),
                format!(
                    "{}, {}",
                    accuracy(last_eval),
                    if best.is_nan() {
                        "-".into()
                    } else {
                        format!("{best:.3}")
                    }
                ),
            ],
            vec![
                "samples/s (mean over steps)".into(),
                if rates.is_empty() {
                    "-".into()
                } else {
                    format!("{:.1}", rates.iter().sum::<f64>() / rates.len() as f64)
                },
            ],
            vec![
                "data wait share".into(),
                if step > 0.0 {
                    format!(
                        "{:.1}% of step time waiting for batches",
                        100.0 * data / step
                    )
                } else {
                    "-".into()
                },
            ],
            vec![
                "peak memory".into(),
                m.steps
                    .values()
                    .filter_map(|v| v["peak_rss_mb"].as_f64())
                    .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
                    .map_or("-".into(), |v| format!("{v:.0} MiB")),
            ],
        ],
    );
    page.h2("Charts", "charts");
    page.note("Hover a point for its value. Dashed lines mark where an epoch starts.");
    let markers = m.epoch_markers();
    let mut charts = vec![
        loss_chart(&m),
        line_chart(
            "Validation accuracy",
            "accuracy (share of validation rows)",
            vec![
                Series {
                    name: "validation accuracy".into(),
                    points: m.eval_series("val_accuracy"),
                },
                Series {
                    name: "second task".into(),
                    points: m.eval_series("val_accuracy_2"),
                },
            ],
            markers.clone(),
        ),
        chart::lines(&Lines {
            title: "Validation accuracy by epoch",
            x_label: "epoch",
            y_label: "accuracy (share of validation rows)",
            series: vec![Series {
                name: "validation accuracy".into(),
                points: m
                    .evals
                    .values()
                    .filter(|v| v["precision"].as_str() != Some("int8"))
                    .filter_map(|v| Some((v["epoch"].as_f64()? + 1.0, v["val_accuracy"].as_f64()?)))
                    .collect(),
            }],
            markers: Vec::new(),
        }),
        lr_chart(&m),
        line_chart(
            "Gradient norm",
            "gradient L2 norm (before clipping)",
            vec![Series {
                name: "gradient norm".into(),
                points: m.series("grad_norm"),
            }],
            markers.clone(),
        ),
    ];
    let weights = m.series("task_weight");
    if !weights.is_empty() {
        charts.push(line_chart(
            "Task weight",
            "weight of the second task",
            vec![Series {
                name: "task weight".into(),
                points: weights,
            }],
            markers.clone(),
        ));
    }
    let kl = m.series("distill_kl");
    if !kl.is_empty() {
        charts.push(line_chart(
            "Distillation",
            "KL(teacher || student)",
            vec![Series {
                name: "distill_kl".into(),
                points: kl,
            }],
            markers,
        ));
    }
    for c in charts {
        match c {
            Ok(svg) => page.raw(&svg),
            Err(e) => page.problem(&e),
        }
    }
    let events: Vec<Vec<String>> = m
        .events
        .iter()
        .filter(|v| v.get("activations").is_none())
        .map(|v| {
            vec![
                v["step"].as_u64().map_or("-".into(), |s| s.to_string()),
                v.to_string(),
            ]
        })
        .collect();
    if !events.is_empty() {
        page.h2("Events", "events");
        page.note("Pruning rounds, the int8 model's evaluation, warnings: the lines of metrics.jsonl that are not steps or evaluations.");
        page.table(&["step", "line"], &events);
    }
    page.h2("Checkpoints", "checkpoints");
    let mut checkpoints: Vec<(String, u64)> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        dir_bytes(&e.path()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    checkpoints.sort();
    if checkpoints.is_empty() {
        page.p("No checkpoint.");
    } else {
        let rows: Vec<Vec<String>> = checkpoints
            .iter()
            .map(|(n, b)| vec![n.clone(), b.to_string()])
            .collect();
        page.table(&["checkpoint", "bytes"], &rows);
    }
    Ok(Outcome {
        html: page.finish(),
        bytes_read: 0,
        shards_read: Vec::new(),
        problems,
    })
}
