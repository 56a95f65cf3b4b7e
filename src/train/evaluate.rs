//! The held-out rows, evaluated after every epoch: accuracy and mean loss
//! of the first task, accuracy of the second, and the model's speed on
//! them (rows a second of forward passes, reading and batching left out);
//! through a quantiser when one is given (fake-quantised or int8). Each rank evaluates its share
//! of the held-out rows and the counts are summed over the ranks.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::batch::tensors;
use super::collective::Peer;
use super::config::TrainFile;
use super::loader::Dataset;
use super::model::{Dims, Fusion};
use super::quant::Quantizer;
use super::run::loader;
use super::shape::Columns;
use super::tap::Tap;
use crate::error::Result;

/// What the held-out samples say: accuracy and mean loss of the first
/// task, accuracy of the second.
pub(super) struct Evaluation {
    pub(super) rows: u64,
    /// The training rows skipped so far, all ranks together.
    pub(super) skipped: u64,
    pub(super) accuracy: Option<f64>,
    pub(super) loss: Option<f64>,
    pub(super) accuracy2: Option<f64>,
    /// Held-out rows through the model a second (this rank's).
    pub(super) samples_per_s: Option<f64>,
}

/// Accuracy and mean loss on the held-out samples: each rank its share,
/// summed over the ranks.
#[allow(clippy::too_many_arguments)]
pub(super) fn evaluate<B: Backend>(
    model: &Fusion<B>,
    ds: &Arc<Dataset>,
    file: &TrainFile,
    cols: &Columns,
    d: &Dims,
    columns: &[String],
    ranks: (usize, usize),
    peer: Option<&mut Peer>,
    train_skipped: u64,
    mut quant: Option<&mut Quantizer>,
) -> Result<Evaluation> {
    use burn::tensor::ElementConversion;
    let device = model.devices().into_iter().next().unwrap_or_default();
    let mut loader = loader(ds, file, columns, 64, ranks, true)?;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (mut right, mut right2, mut total, mut loss_sum) = (0u64, 0u64, 0u64, 0.0f64);
    // Held-out rows that cannot be evaluated are left out of the counts.
    let mut held_skipped = 0;
    let (mut busy, mut local) = (0.0f64, 0u64);
    while let Some(b) = loader.next_batch()? {
        let Some((x, y)) = tensors::<B>(&b, cols, d, &device, &mut held_skipped, None)? else {
            continue;
        };
        let mut y = y.into_iter();
        let y1 = y.next().expect("a target a task").hard()?;
        let n = y1.dims()[0] as u64;
        let started = std::time::Instant::now();
        let mut tap = Tap {
            quant: quant.as_deref_mut(),
            stats: None,
        };
        let (logits, second) = model.forward_with(x, &mut tap);
        // One read of the device ends the pass.
        let _ = logits.clone().sum().into_scalar();
        busy += started.elapsed().as_secs_f64();
        local += n;
        loss_sum += loss_fn
            .forward(logits.clone(), y1.clone())
            .into_scalar()
            .elem::<f64>()
            * n as f64;
        let correct = |logits: Tensor<B, 2>, y: Tensor<B, 1, Int>| {
            let predicted = logits.argmax(1).squeeze_dim::<1>(1);
            predicted.equal(y).int().sum().into_scalar().elem::<i64>() as u64
        };
        right += correct(logits, y1);
        if let (Some(l2), Some(y2)) = (second, y.next()) {
            right2 += correct(l2, y2.hard()?);
        }
        total += n;
    }
    let mut skipped = train_skipped;
    if let Some(p) = peer {
        let all = p.sum(&[
            right as f64,
            right2 as f64,
            total as f64,
            loss_sum,
            train_skipped as f64,
        ])?;
        (right, right2, total, loss_sum) = (all[0] as u64, all[1] as u64, all[2] as u64, all[3]);
        skipped = all[4] as u64;
    }
    let share = |r: u64| (total > 0).then(|| r as f64 / total as f64);
    Ok(Evaluation {
        rows: total,
        skipped,
        accuracy: share(right),
        loss: (total > 0).then(|| loss_sum / total as f64),
        accuracy2: (d.classes2 > 0).then(|| share(right2)).flatten(),
        samples_per_s: (busy > 0.0).then(|| local as f64 / busy),
    })
}
