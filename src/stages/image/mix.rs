//! `mix`: CutMix and MixUp as offline augmentation, with timm's parameters.
//!
//! Every sample is written as itself (`augment = 0`, `lam = 1`) followed by
//! `copies` mixed copies (`augment = K`, sample id `ID#mixK`). Copy K of
//! sample ID draws from a generator seeded by (run seed, `ID#mixK`,
//! stage), in this order:
//!
//! 1. `u < prob` decides whether the copy is mixed at all;
//! 2. the partner: another row of the same batch, uniformly (batches are a
//!    function of the plan, so the group is fixed);
//! 3. CutMix or MixUp: CutMix with probability `switch_prob` when both are
//!    on (`mixup_alpha > 0` and `cutmix_alpha > 0` or `cutmix_minmax`);
//! 4. lambda: `Beta(alpha, alpha)`; for CutMix then the box, as timm's
//!    `rand_bbox` (or `rand_bbox_minmax`), and with `correct_lam` (always
//!    with `cutmix_minmax`) lambda becomes `1 - box area / image area`.
//!
//! MixUp pixels are `rint(a * f32(lam) + b * f32(1 - lam))` in float32, as
//! timm's uint8 collate computes them; CutMix pastes the partner's box
//! `[y0, y1) x [x0, x1)`. Labels: `label` stays the sample's own,
//! `label_b` is the partner's, `lam` the weight of `label`; `label_mixed` is
//! `onehot(label) * lam + onehot(label_b) * (1 - lam)` with label smoothing
//! (`off = smoothing / classes`, `on = 1 - smoothing + off`), in float32.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, FixedSizeListArray, Float32Array, Int64Array,
    RecordBatch, StringArray, UInt32Array, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Int64Type, SchemaRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    PIXELS, Pixels, f32_list, fixed_list_field, fixed_list_type, require_fixed_size, schema_with,
};
use crate::error::{Error, Result};
use crate::mixing::{MixParams, Mixing, draw_mixing, mix_pixels, mixed_target};
use crate::schema::class_names;
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};
use serde::{Deserialize, Serialize};

/// CutMix and MixUp as offline augmentation, with timm's parameters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// Augmented copies per sample, written after the sample itself.
    #[serde(default = "default_copies")]
    pub copies: u32,
    #[serde(default = "default_mixup_alpha")]
    pub mixup_alpha: f64,
    #[serde(default)]
    pub cutmix_alpha: f64,
    /// Box size as fractions of the image (`[min, max]`); overrides `cutmix_alpha`.
    #[serde(default)]
    pub cutmix_minmax: Option<[f64; 2]>,
    /// Probability that a copy is mixed at all.
    #[serde(default = "default_one")]
    pub prob: f64,
    /// Probability of CutMix instead of MixUp when both are on.
    #[serde(default = "default_switch_prob")]
    pub switch_prob: f64,
    /// Recompute lambda from the clipped CutMix box.
    #[serde(default = "default_true")]
    pub correct_lam: bool,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Also store the mixed, smoothed one-hot target `label_mixed`.
    #[serde(default)]
    pub one_hot: bool,
    /// Classes of the one-hot target; by default the number of class names.
    #[serde(default)]
    pub num_classes: Option<usize>,
}

fn default_copies() -> u32 {
    1
}
fn default_mixup_alpha() -> f64 {
    1.0
}
fn default_one() -> f64 {
    1.0
}
fn default_switch_prob() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}

impl MixConfig {
    /// The mixing parameters, which the trainer's online mixing holds too.
    pub fn params(&self) -> MixParams {
        MixParams {
            mixup_alpha: self.mixup_alpha,
            cutmix_alpha: self.cutmix_alpha,
            cutmix_minmax: self.cutmix_minmax,
            prob: self.prob,
            switch_prob: self.switch_prob,
            correct_lam: self.correct_lam,
            label_smoothing: self.label_smoothing,
        }
    }
}

pub struct Mix {
    cfg: MixConfig,
    size: (u32, u32),
    classes: Option<usize>,
    label_field: Field,
}

impl Mix {
    /// Check the config against the input; `Err((key, message))`.
    pub fn build(cfg: &MixConfig, input: &SchemaRef) -> std::result::Result<Mix, (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        let size =
            require_fixed_size(input, "mix").map_err(|e| ("type".to_string(), e.to_string()))?;
        let Ok(label) = input.field_with_name("label") else {
            return err(
                "type",
                "mix needs a `label` column (image folders, `.cls` members or `label_column`)",
            );
        };
        if label.data_type() != &DataType::Int64 {
            return err("type", "mix needs integer class ids in `label`");
        }
        if cfg.copies == 0 {
            return err("copies", "copies must be at least 1");
        }
        if cfg.num_classes == Some(0) {
            return err("num_classes", "num_classes must be at least 1");
        }
        cfg.params().check()?;
        let named = class_names(label).map(|n| n.len()).filter(|&n| n > 0);
        let classes = cfg.num_classes.or(named);
        if cfg.one_hot && classes.is_none() {
            return err(
                "num_classes",
                "one_hot needs the number of classes: set num_classes",
            );
        }
        Ok(Mix {
            cfg: cfg.clone(),
            size,
            classes,
            label_field: label.clone(),
        })
    }

    /// The mixing of one copy and its partner row, from its generator.
    pub fn draw(&self, rng: &mut ChaCha8Rng, row: usize, rows: usize) -> (Mixing, usize) {
        let mixed = rng.random::<f64>() < self.cfg.prob;
        let partner = if rows > 1 {
            let j = rng.random_range(0..rows - 1);
            if j >= row { j + 1 } else { j }
        } else {
            row
        };
        if !mixed {
            return (Mixing::None, partner);
        }
        (draw_mixing(&self.cfg.params(), self.size, rng), partner)
    }
}

impl Stage for Mix {
    fn name(&self) -> &str {
        "mix"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        require_fixed_size(input, "mix")?;
        let mut add = vec![
            Field::new("augment", DataType::UInt32, false),
            Field::new("label_b", DataType::Int64, false)
                .with_metadata(self.label_field.metadata().clone()),
            Field::new("lam", DataType::Float32, false),
            Field::new("mix_mode", DataType::Utf8, false),
            Field::new("mix_partner", DataType::Utf8, true),
            Field::new("mix_box", fixed_list_type(DataType::UInt32, 4), true),
        ];
        if self.cfg.one_hot {
            add.push(fixed_list_field(
                "label_mixed",
                DataType::Float32,
                self.classes.unwrap_or(0),
            ));
        }
        Ok(schema_with(input, &[], &add))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        // A sample without a label cannot be mixed.
        let labels = batch
            .column_by_name("label")
            .ok_or_else(|| Error::Internal("mix: no `label` column".into()))?
            .as_primitive::<Int64Type>()
            .clone();
        let checked: Vec<_> = (0..batch.num_rows())
            .map(|row| {
                let bad = |m: &str| Err(("no_label", m.to_string()));
                if labels.is_null(row) {
                    bad("the sample has no label to mix")
                } else if self
                    .classes
                    .is_some_and(|c| labels.value(row) as usize >= c)
                {
                    bad("the label is not below num_classes")
                } else {
                    Ok(())
                }
            })
            .collect();
        let (batch, _) = super::keep_ok(batch, checked, cx)?;
        let labels = batch
            .column_by_name("label")
            .expect("checked")
            .as_primitive::<Int64Type>()
            .clone();
        let ids = batch
            .column_by_name("sample_id")
            .ok_or_else(|| Error::Internal("mix: no `sample_id` column".into()))?
            .as_string::<i32>()
            .clone();
        let px = Pixels::of(&batch)?;
        let rows = batch.num_rows();
        let copies = self.cfg.copies as usize;
        let per = copies + 1;
        let mut take = Vec::with_capacity(rows * per);
        let mut new_ids = Vec::with_capacity(rows * per);
        let mut pixels = BinaryBuilder::new();
        let mut augment = UInt32Builder::new();
        let (mut label_b, mut lams, mut modes, mut partners) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut boxes: Vec<Option<[u32; 4]>> = Vec::new();
        let mut targets: Vec<f32> = Vec::new();
        let classes = self.classes.unwrap_or(0);
        for row in 0..rows {
            let id = ids.value(row);
            let a = labels.value(row);
            for k in 0..per {
                let (mixing, partner) = if k == 0 {
                    (Mixing::None, row)
                } else {
                    let copy_id = format!("{id}#mix{k}");
                    let mut rng = ChaCha8Rng::seed_from_u64(cx.sample_seed(&copy_id));
                    self.draw(&mut rng, row, rows)
                };
                let b = if mixing == Mixing::None {
                    a
                } else {
                    labels.value(partner)
                };
                let (rgb, w, _) = px.get(row);
                pixels.append_value(mix_pixels(rgb, px.get(partner).0, w, &mixing));
                take.push(row as u32);
                new_ids.push(if k == 0 {
                    id.to_string()
                } else {
                    format!("{id}#mix{k}")
                });
                augment.append_value(k as u32);
                label_b.push(b);
                lams.push(mixing.lam() as f32);
                modes.push(mixing.mode());
                partners.push((mixing != Mixing::None).then(|| ids.value(partner).to_string()));
                boxes.push(match mixing {
                    Mixing::CutMix { bbox, .. } => Some(bbox),
                    _ => None,
                });
                if self.cfg.one_hot {
                    targets.extend(mixed_target(
                        a as usize,
                        b as usize,
                        mixing.lam(),
                        classes,
                        self.cfg.label_smoothing,
                    ));
                }
            }
        }
        // Every column but the pixels, repeated for the copies.
        let schema = self.output_schema(&batch.schema())?;
        let mut rest = batch.clone();
        if let Ok(i) = rest.schema().index_of(PIXELS) {
            rest.remove_column(i);
        }
        let taken = arrow::compute::take_record_batch(&rest, &UInt32Array::from(take))?;
        let box_values: Vec<u32> = boxes.iter().flat_map(|b| b.unwrap_or([0; 4])).collect();
        let box_nulls: Vec<bool> = boxes.iter().map(Option::is_some).collect();
        let box_array = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::UInt32, true)),
            4,
            Arc::new(UInt32Array::from(box_values)),
            Some(box_nulls.into()),
        )?;
        let mut added: Vec<(&str, ArrayRef)> = vec![
            ("sample_id", Arc::new(StringArray::from(new_ids))),
            (PIXELS, Arc::new(pixels.finish())),
            ("augment", Arc::new(augment.finish())),
            ("label_b", Arc::new(Int64Array::from(label_b))),
            ("lam", Arc::new(Float32Array::from(lams))),
            ("mix_mode", Arc::new(StringArray::from(modes))),
            ("mix_partner", Arc::new(StringArray::from(partners))),
            ("mix_box", Arc::new(box_array)),
        ];
        if self.cfg.one_hot {
            added.push(("label_mixed", f32_list(targets, classes)?));
        }
        super::batch_with(&taken, &schema, added)
    }
}

impl BuildStage for MixConfig {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        Ok(Built::Ready(Arc::new(Mix::build(self, cx.input)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixup_rounds_half_to_even_in_float32() {
        let out = mix_pixels(&[1, 2, 255], &[2, 3, 0], 1, &Mixing::MixUp { lam: 0.5 });
        assert_eq!(out, [2, 2, 128]);
    }

    #[test]
    fn cutmix_pastes_the_box_end_exclusive() {
        let a = vec![0u8; 3 * 2 * 3];
        let b = vec![9u8; 3 * 2 * 3];
        let out = mix_pixels(
            &a,
            &b,
            3,
            &Mixing::CutMix {
                lam: 0.0,
                bbox: [1, 2, 0, 2],
            },
        );
        let red: Vec<u8> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(red, [0, 0, 0, 9, 9, 0]);
    }

    #[test]
    fn smoothed_target_sums_to_one() {
        let t = mixed_target(0, 2, 0.25, 4, 0.1);
        assert!((t.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(t[0] < t[2]);
    }
}
