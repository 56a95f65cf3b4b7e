//! Structured pruning (`[prune]`): channels scored by gradient importance
//! and removed from the model, in one shot or in rounds with training in
//! between.
//!
//! A channel's importance is the article's `G_c = ||dL/dW_c||_2` (`method
//! = "grad_norm"`, the root mean square over the `score_steps` steps
//! before a pruning), or `|dL/dW_c * W_c|` summed over the channel's
//! weights (`"grad_weight"`, the mean over those steps). Channels are
//! removed in groups that must go together for the model to stay whole,
//! as torch-pruning's dependency groups:
//! - `qk`: an output channel of the attention's query and the same channel
//!   of its key (their dot product is the score);
//! - `v`: an output channel of the value projection and the input it feeds
//!   in the output projection;
//! - `memory`: an output channel of the image, audio and patch projections
//!   and the key and value inputs it feeds (only when the model has text:
//!   without it those tokens pass the layer norm, which couples every
//!   channel).
//!
//! A group's importance sums its members' (squared, for `grad_norm`).
//! The model's width (`d_model`) is not pruned: it passes the layer norm
//! too. Heads keep equal widths, so the attention groups remove the same
//! number from each head (the lowest of each head).
//!
//! `ratio` removes, by the last round, that share of each group's
//! channels (round `k` of `n` reaches `ratio * k / n`, as
//! `torch.nn.utils.prune.ln_structured`'s `amount` applied per layer);
//! `tau` removes the channels whose importance is below it (in the
//! attention groups, the smallest count below `tau` over the heads, so no
//! channel at or above `tau` is removed). A group keeps at least one
//! channel. Pruned channels are removed, not masked: the model is rebuilt
//! narrower (its [`Dims`] say how), and checkpoints and the final model
//! hold the smaller tensors. The optimiser's state starts afresh after
//! each pruning (the removed channels' moments have nowhere to go).
//! Scores are summed in f64 in a fixed order and checkpointed exactly, so
//! every rank, and a resumed run, prunes the same channels.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::model::{Dims, Fusion};
use super::params;
use crate::error::{Error, Result};

/// `[prune]` in the training file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    #[serde(default)]
    pub method: Method,
    /// The share of each group's channels removed by the last round.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Remove the channels whose importance is below this.
    #[serde(default)]
    pub tau: Option<f64>,
    #[serde(default = "one")]
    pub rounds: u64,
    /// Steps scored before each pruning.
    #[serde(default = "ten")]
    pub score_steps: u64,
    /// The step of the first pruning (by default a third of the run).
    #[serde(default)]
    pub start: Option<u64>,
    /// Steps between rounds (by default a third of the run over the
    /// rounds).
    #[serde(default)]
    pub every: Option<u64>,
}

fn one() -> u64 {
    1
}
fn ten() -> u64 {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    GradNorm,
    GradWeight,
}

impl PruneConfig {
    /// What is refused before any data is read: `(key, why)`.
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        match (self.ratio, self.tau) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(("prune.ratio", "[prune] takes one of ratio and tau".into()));
            }
            (Some(r), None) if !(r > 0.0 && r < 1.0) => {
                return Err(("prune.ratio", format!("prune.ratio = {r} is not in (0, 1)")));
            }
            (None, Some(t)) if !(t > 0.0 && t.is_finite()) => {
                return Err((
                    "prune.tau",
                    format!("prune.tau = {t} is not a positive number"),
                ));
            }
            _ => {}
        }
        if self.rounds == 0 {
            return Err(("prune.rounds", "prune.rounds must be at least 1".into()));
        }
        if self.score_steps == 0 {
            return Err((
                "prune.score_steps",
                "prune.score_steps must be at least 1".into(),
            ));
        }
        if let Some(s) = self.start.filter(|s| *s < self.score_steps) {
            return Err((
                "prune.start",
                format!(
                    "prune.start = {s} leaves fewer than score_steps = {} steps to score",
                    self.score_steps
                ),
            ));
        }
        if let Some(e) = self.every.filter(|e| *e < self.score_steps) {
            return Err((
                "prune.every",
                format!(
                    "prune.every = {e} is shorter than score_steps = {}",
                    self.score_steps
                ),
            ));
        }
        Ok(())
    }

    /// The steps after which a round prunes, in a run of `total` steps.
    pub fn steps(&self, total: u64) -> Result<Vec<u64>> {
        let start = self.start.unwrap_or((total / 3).max(self.score_steps));
        let every = self
            .every
            .unwrap_or((total / (3 * self.rounds)).max(self.score_steps));
        let steps: Vec<u64> = (0..self.rounds).map(|k| start + k * every).collect();
        let last = *steps.last().expect("a round");
        if last >= total {
            return Err(Error::Config(format!(
                "[prune]: the last of {} rounds would prune after step {last}, but the run has {total} steps (prune.start, prune.every)",
                self.rounds
            )));
        }
        Ok(steps)
    }
}

/// Channels removed together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Memory,
    Qk,
    V,
}

/// The weights a group's channels live in: path and the channel's axis.
fn members(g: Group) -> &'static [(&'static str, usize)] {
    match g {
        Group::Memory => &[
            ("image.weight", 1),
            ("audio.weight", 1),
            ("patches.weight", 0),
            ("attention.key.weight", 0),
            ("attention.value.weight", 0),
        ],
        Group::Qk => &[("attention.query.weight", 1), ("attention.key.weight", 1)],
        Group::V => &[
            ("attention.value.weight", 1),
            ("attention.output.weight", 0),
        ],
    }
}

/// Every parameter a pruning slices: its path and, per axis, the group
/// whose kept channels it keeps.
fn slices(path: &str) -> &'static [(usize, Group)] {
    use Group::*;
    match path {
        "image.weight" | "audio.weight" | "patch_positions.weight" => &[(1, Memory)],
        "image.bias" | "audio.bias" | "patches.weight" | "patches.bias" => &[(0, Memory)],
        "attention.query.weight" => &[(1, Qk)],
        "attention.query.bias" | "attention.key.bias" => &[(0, Qk)],
        "attention.key.weight" => &[(0, Memory), (1, Qk)],
        "attention.value.weight" => &[(0, Memory), (1, V)],
        "attention.value.bias" => &[(0, V)],
        "attention.output.weight" => &[(0, V)],
        _ => &[],
    }
}

/// The groups a model of `d` can prune.
pub fn groups(d: &Dims) -> Vec<Group> {
    let memory = d.image > 0 || d.mels > 0 || d.patches() > 0;
    let mut g = Vec::new();
    if d.vocab > 0 && memory {
        g.push(Group::Memory);
    }
    g.extend([Group::Qk, Group::V]);
    g
}

/// One step's importance of each channel of `groups`, from `grads` of
/// `model`.
pub fn score<B: AutodiffBackend>(
    model: &Fusion<B>,
    grads: &GradientsParams,
    method: Method,
    groups: &[Group],
) -> BTreeMap<Group, Vec<f64>> {
    struct V<'a, B: AutodiffBackend> {
        path: Vec<String>,
        grads: &'a GradientsParams,
        method: Method,
        groups: &'a [Group],
        out: BTreeMap<Group, Vec<f64>>,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for V<'_, B> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let path = self.path.join(".");
            for &g in self.groups {
                for &(m, axis) in members(g) {
                    if m != path {
                        continue;
                    }
                    let Some(grad) = self.grads.get::<B::InnerBackend, D>(p.id) else {
                        continue;
                    };
                    let per = match self.method {
                        Method::GradNorm => grad.powi_scalar(2),
                        Method::GradWeight => (grad * p.val().inner()).abs(),
                    };
                    let c = per.dims()[axis];
                    let n = per.shape().num_elements();
                    let sums = per.swap_dims(0, axis).reshape([c, n / c]).sum_dim(1);
                    let v = sums
                        .into_data()
                        .convert::<f64>()
                        .to_vec::<f64>()
                        .unwrap_or_default();
                    let acc = self.out.entry(g).or_insert_with(|| vec![0.0; c]);
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += x;
                    }
                }
            }
        }
    }
    let mut v = V::<B> {
        path: Vec::new(),
        grads,
        method,
        groups,
        out: BTreeMap::new(),
        _b: Default::default(),
    };
    model.visit(&mut v);
    v.out
}

/// The importances accumulated over a round's scoring steps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Scores {
    pub steps: u64,
    /// f64 bits, so a checkpoint holds them exactly.
    pub sums: BTreeMap<Group, Vec<u64>>,
}

impl Scores {
    pub fn add(&mut self, step: BTreeMap<Group, Vec<f64>>) {
        self.steps += 1;
        for (g, v) in step {
            let acc = self
                .sums
                .entry(g)
                .or_insert_with(|| vec![0f64.to_bits(); v.len()]);
            for (a, x) in acc.iter_mut().zip(v) {
                *a = (f64::from_bits(*a) + x).to_bits();
            }
        }
    }

    /// Each channel's importance.
    pub fn importance(&self, method: Method) -> BTreeMap<Group, Vec<f64>> {
        let n = self.steps.max(1) as f64;
        self.sums
            .iter()
            .map(|(g, v)| {
                let v = v
                    .iter()
                    .map(|b| {
                        let m = f64::from_bits(*b) / n;
                        match method {
                            Method::GradNorm => m.sqrt(),
                            Method::GradWeight => m,
                        }
                    })
                    .collect();
                (*g, v)
            })
            .collect()
    }
}

/// The channels kept when the `remove` least important of `scores` go (of
/// equal importance, the lower index goes first), in order.
pub fn kept(scores: &[f64], remove: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = order[remove.min(scores.len())..].to_vec();
    keep.sort_unstable();
    keep
}

/// The channels each group keeps: indices into its current channels.
pub type Keep = BTreeMap<Group, Vec<usize>>;

/// What round `round` (1-based) of `cfg` keeps of a model of `d`, given
/// each group's importance.
pub fn plan(
    cfg: &PruneConfig,
    d: &Dims,
    round: u64,
    importance: &BTreeMap<Group, Vec<f64>>,
) -> Keep {
    let a = d.attention();
    let whole = d.unpruned().attention();
    let mut keep = Keep::new();
    for g in groups(d) {
        let (heads, width, original) = match g {
            Group::Memory => (1, d.memory_width(), whole.memory),
            Group::Qk => (a.heads, a.qk, whole.qk),
            Group::V => (a.heads, a.v, whole.v),
        };
        // A group no gradient reached scores zero throughout.
        let none = vec![0.0; heads * width];
        let scores = importance.get(&g).unwrap_or(&none);
        let head = |h: usize| &scores[h * width..(h + 1) * width];
        let remove = match (cfg.ratio, cfg.tau) {
            (Some(r), _) => {
                let target =
                    (r * original as f64 * round as f64 / cfg.rounds as f64).floor() as usize;
                target.saturating_sub(original - width)
            }
            (_, Some(t)) => (0..heads)
                .map(|h| head(h).iter().filter(|s| **s < t).count())
                .min()
                .unwrap_or(0),
            _ => 0,
        }
        .min(width - 1);
        let k: Vec<usize> = (0..heads)
            .flat_map(|h| {
                kept(head(h), remove)
                    .into_iter()
                    .map(move |c| h * width + c)
            })
            .collect();
        keep.insert(g, k);
    }
    keep
}

/// `data` with only `idx` along `axis`.
fn select(data: &TensorData, axis: usize, idx: &[usize]) -> TensorData {
    let v = data.to_vec::<f32>().expect("f32");
    let shape = data.shape.to_vec();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &i in idx {
            let at = (o * shape[axis] + i) * inner;
            out.extend_from_slice(&v[at..at + inner]);
        }
    }
    let mut s = shape;
    s[axis] = idx.len();
    TensorData::new(out, s)
}

/// `model` (of `d`) without the channels `keep` leaves out: a narrower
/// model and its sizes.
pub fn apply<B: Backend>(model: &Fusion<B>, d: &Dims, keep: &Keep) -> (Fusion<B>, Dims) {
    let mut values = BTreeMap::new();
    for (path, data) in params::named(model) {
        let mut data = data;
        for &(axis, g) in slices(&path) {
            if let Some(k) = keep.get(&g) {
                data = select(&data, axis, k);
            }
        }
        values.insert(path, data);
    }
    let a = d.attention();
    let mut n = *d;
    if let Some(k) = keep.get(&Group::Memory) {
        n.memory = k.len();
    }
    if let Some(k) = keep.get(&Group::Qk) {
        n.qk = k.len() / a.heads;
    }
    if let Some(k) = keep.get(&Group::V) {
        n.v = k.len() / a.heads;
    }
    let device = model.devices().into_iter().next().unwrap_or_default();
    let fresh = Fusion::<B>::new(&n, &device);
    let (pruned, unused) = params::replaced(fresh, &values);
    assert!(
        unused.is_empty(),
        "the pruned model has every parameter: {unused:?}"
    );
    (pruned, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::device::Materialise;
    use crate::train::model::testing::{dims, inputs};
    use burn::backend::NdArray;
    use burn::backend::ndarray::NdArrayDevice;

    type B = NdArray<f32>;

    fn cfg(ratio: f64, rounds: u64) -> PruneConfig {
        PruneConfig {
            method: Method::GradNorm,
            ratio: Some(ratio),
            tau: None,
            rounds,
            score_steps: 1,
            start: None,
            every: None,
        }
    }

    #[test]
    fn the_least_important_channels_are_the_ones_removed() {
        let s = [0.5, 0.1, 0.9, 0.1, 0.3];
        assert_eq!(kept(&s, 0), vec![0, 1, 2, 3, 4]);
        assert_eq!(kept(&s, 2), vec![0, 2, 4]);
        assert_eq!(kept(&s, 3), vec![0, 2]);
        // Per head (2 heads of 4 query/key channels), half of each head.
        let d = dims();
        let mut importance = BTreeMap::new();
        importance.insert(Group::Qk, vec![4.0, 1.0, 3.0, 2.0, 0.5, 0.7, 0.6, 9.0]);
        importance.insert(Group::Memory, vec![1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0]);
        let keep = plan(&cfg(0.5, 1), &d, 1, &importance);
        assert_eq!(keep[&Group::Qk], vec![0, 2, 5, 7]);
        assert_eq!(keep[&Group::Memory], vec![1, 3, 5, 7]);
        // In two rounds: a quarter of the original, then half.
        let keep = plan(&cfg(0.5, 2), &d, 1, &importance);
        assert_eq!(keep[&Group::Qk], vec![0, 2, 3, 5, 6, 7]);
        // tau: the fewest below it over the heads (head 0 has 1, head 1 has 3).
        let tau = PruneConfig {
            ratio: None,
            tau: Some(1.5),
            ..cfg(0.5, 1)
        };
        let keep = plan(&tau, &d, 1, &importance);
        assert_eq!(keep[&Group::Qk], vec![0, 2, 3, 5, 6, 7]);
        assert_eq!(keep[&Group::Memory], vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_pruned_model_computes_what_the_model_with_those_channels_zeroed_does() {
        let device = NdArrayDevice::Cpu;
        B::seed(&device, 9);
        let d = dims();
        let model = Fusion::<B>::new(&d, &device).map(&mut Materialise);
        let mut keep = Keep::new();
        keep.insert(Group::Memory, vec![0, 2, 3, 6]);
        keep.insert(Group::Qk, vec![1, 2, 3, 4, 6, 7]);
        keep.insert(Group::V, vec![0, 1, 5, 6]);
        let (pruned, n) = apply(&model, &d, &keep);
        assert_eq!((n.memory, n.qk, n.v), (4, 3, 2));
        // The same model with the removed channels' outputs zeroed.
        let producers: [(&str, usize, Group); 10] = [
            ("image.weight", 1, Group::Memory),
            ("image.bias", 0, Group::Memory),
            ("audio.weight", 1, Group::Memory),
            ("audio.bias", 0, Group::Memory),
            ("patches.weight", 0, Group::Memory),
            ("patches.bias", 0, Group::Memory),
            ("patch_positions.weight", 1, Group::Memory),
            ("attention.query.weight", 1, Group::Qk),
            ("attention.key.weight", 1, Group::Qk),
            ("attention.value.weight", 1, Group::V),
        ];
        let mut values = BTreeMap::new();
        for (path, data) in params::named(&model) {
            let mut rules: Vec<(usize, Group)> = producers
                .iter()
                .filter(|p| p.0 == path)
                .map(|p| (p.1, p.2))
                .collect();
            match path.as_str() {
                "attention.query.bias" | "attention.key.bias" => rules.push((0, Group::Qk)),
                "attention.value.bias" => rules.push((0, Group::V)),
                _ => {}
            }
            let shape = data.shape.to_vec();
            let mut v = data.to_vec::<f32>().unwrap();
            for (axis, g) in rules {
                let inner: usize = shape[axis + 1..].iter().product();
                for (i, x) in v.iter_mut().enumerate() {
                    if !keep[&g].contains(&((i / inner) % shape[axis])) {
                        *x = 0.0;
                    }
                }
            }
            values.insert(path, TensorData::new(v, shape));
        }
        let (zeroed, _) = params::replaced(model.clone(), &values);
        let (a, a2) = pruned.forward(inputs(&device));
        let (b, b2) = zeroed.forward(inputs(&device));
        for (x, y) in [(a, b), (a2.unwrap(), b2.unwrap())] {
            let (x, y) = (
                x.into_data().to_vec::<f32>().unwrap(),
                y.into_data().to_vec::<f32>().unwrap(),
            );
            for (u, v) in x.iter().zip(&y) {
                assert!((u - v).abs() < 1e-5, "{u} vs {v}");
            }
        }
        // The tensors are smaller, not masked.
        let shapes: BTreeMap<String, Vec<usize>> = params::named(&pruned)
            .into_iter()
            .map(|(k, v)| (k, v.shape.to_vec()))
            .collect();
        assert_eq!(shapes["attention.query.weight"], vec![8, 6]);
        assert_eq!(shapes["attention.key.weight"], vec![4, 6]);
        assert_eq!(shapes["attention.value.weight"], vec![4, 4]);
        assert_eq!(shapes["attention.output.weight"], vec![4, 8]);
        assert_eq!(shapes["patches.weight"], vec![4, 3, 4, 4]);
        assert!(pruned.num_params() < model.num_params());
    }
}
