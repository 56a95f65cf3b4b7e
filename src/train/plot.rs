//! `plot.svg` at the end of training: the loss (training and validation)
//! and the learning rate against the step, with axes, ticks, units, a
//! legend and each value on hover ([`crate::chart`]); and the reader of
//! `metrics.jsonl` that `kiln report` draws the whole run from.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::chart::{self, Lines, Series};
use crate::error::{IoContext, Result};

/// `metrics.jsonl` read: step lines by step, evaluation lines by step,
/// and the other lines in order.
#[derive(Default)]
pub struct Metrics {
    pub steps: BTreeMap<u64, Value>,
    pub evals: BTreeMap<u64, Value>,
    pub events: Vec<Value>,
}

impl Metrics {
    pub fn read(dir: &Path) -> Result<Metrics> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).at("read", &path)?;
        let mut m = Metrics::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let step = v["step"].as_u64();
            match step {
                Some(s) if v.get("loss").is_some() && v.get("lr").is_some() => {
                    m.steps.insert(s, v);
                }
                Some(s) if v.get("val_accuracy").is_some() && v.get("pruned").is_none() => {
                    m.evals.insert(s, v);
                }
                _ => m.events.push(v),
            }
        }
        Ok(m)
    }

    /// `(step, value)` of a step-line field, where it is a number.
    pub fn series(&self, key: &str) -> Vec<(f64, f64)> {
        self.steps
            .iter()
            .filter_map(|(s, v)| Some((*s as f64, v[key].as_f64()?)))
            .collect()
    }

    pub fn eval_series(&self, key: &str) -> Vec<(f64, f64)> {
        self.evals
            .iter()
            .filter(|(_, v)| v["precision"].as_str() != Some("int8"))
            .filter_map(|(s, v)| Some((*s as f64, v[key].as_f64()?)))
            .collect()
    }

    /// The first step of each epoch after the first, as chart markers
    /// (none when there are too many to read).
    pub fn epoch_markers(&self) -> Vec<(f64, String)> {
        let mut markers = Vec::new();
        let mut last = None;
        for (s, v) in &self.steps {
            let e = v["epoch"].as_u64();
            if e != last && last.is_some() {
                markers.push((*s as f64 - 0.5, format!("e{}", e.unwrap_or(0))));
            }
            last = e;
        }
        if markers.len() > 25 {
            Vec::new()
        } else {
            markers
        }
    }
}

pub fn line_chart(
    title: &str,
    y_label: &str,
    series: Vec<Series>,
    markers: Vec<(f64, String)>,
) -> std::result::Result<String, String> {
    chart::lines(&Lines {
        title,
        x_label: "step",
        y_label,
        series: series
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect(),
        markers,
    })
}

pub fn loss_chart(m: &Metrics) -> std::result::Result<String, String> {
    line_chart(
        "Loss",
        "loss (nats per sample)",
        vec![
            Series {
                name: "training".into(),
                points: m.series("loss"),
            },
            Series {
                name: "validation".into(),
                points: m.eval_series("val_loss"),
            },
        ],
        m.epoch_markers(),
    )
}

pub fn lr_chart(m: &Metrics) -> std::result::Result<String, String> {
    line_chart(
        "Learning rate",
        "learning rate",
        vec![Series {
            name: "learning rate".into(),
            points: m.series("lr"),
        }],
        m.epoch_markers(),
    )
}

/// `plot.svg`: the loss and learning-rate charts, one above the other.
pub fn plot_svg(dir: &Path) -> Result<String> {
    let m = Metrics::read(dir)?;
    let err = |e: String| crate::error::Error::Execution(e);
    let (a, b) = (loss_chart(&m).map_err(err)?, lr_chart(&m).map_err(err)?);
    let h = chart::HEIGHT;
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\"><g>{}</g><g transform=\"translate(0,{h})\">{}</g></svg>\n",
        2 * h,
        2 * h,
        a.replacen("<svg ", "<svg x=\"0\" y=\"0\" ", 1),
        b.replacen("<svg ", "<svg x=\"0\" y=\"0\" ", 1),
        w = chart::WIDTH,
    ))
}
